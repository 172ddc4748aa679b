"""Claim submission checks (domain §3.3.2–3.3.4, `hifhir.domain.claims.checks.submit`): the claim category and
every rejection reason, each produced by a real scenario — registers, price lists, products, policies and earlier
claims as the scheme would hold them — on SQLite and PostgreSQL. Each scenario's claim is also decided by
`check_submission`, the checks POST Claim runs before anything is stored, which must decide the same.

One world per module and backend (registers, two products, the facility's price lists, a family and the diagnosis
list, built through the API); each test adds its own insurees and claims, so that no test sees another's history.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from starlette.testclient import TestClient

from hifhir.api.app import HifhirApp
from hifhir.domain.claims import (
    CARE_TYPE,
    CATEGORY_LIMITATION,
    DIAGNOSIS_NOT_IN_LIST,
    DUPLICATED,
    FAMILY,
    FREQUENCY_FAILURE,
    INVALID_CLAIM,
    INVALID_ITEM_OR_SERVICE,
    MAX_ANTENATAL,
    MAX_CONSULTATIONS,
    MAX_DELIVERIES,
    MAX_HOSPITAL_ADMISSIONS,
    MAX_SURGERIES,
    MAX_VISITS,
    NO_COVERAGE,
    NO_PRODUCT_FOUND,
    NOT_IN_PRICE_LIST,
    QTY_OVER_LIMIT,
    TARGET_DATE,
    WAITING_PERIOD_FAIL,
    NewLine,
)
from hifhir.domain.claims.checks import CheckOutcome, check_submission, facts_plan, submit
from hifhir.store.codelists import DIAGNOSIS_LIST, deactivate_code, seed_diagnoses
from hifhir.store.db import transaction
from hifhir.store.fast import run_plan
from hifhir.store.tables import (
    CLAIM_CHECKED,
    CLAIM_REJECTED,
    LINE_PASSED,
    LINE_REJECTED,
    claim,
    claim_item,
    claim_service,
    insuree,
    insuree_policy,
    medical_item,
    medical_service,
    policy,
)
from tests.builders import group, patient
from tests.builders_claims import Line, entered_claim, price_lists
from tests.builders_eligibility import Places, insert_policy, new_product, places
from tests.builders_medical import activity_definition, medication
from tests.conftest import ADMIN, Api, _reset

TODAY = date.today()
NOW = 1_760_000_000_000_000  # µs
ADULT_BIRTH = "1990-01-01"
CHILD_BIRTH = date(TODAY.year - 6, 1, 1).isoformat()

# Services: code → ActivityDefinition settings. Care type B unless the scenario is about care types.
SERVICES: dict[str, dict[str, Any]] = {
    "SC": {"category": "C", "care_type": "B"},  # consultation
    "SS": {"category": "S", "care_type": "B"},  # surgery
    "SD": {"category": "D", "care_type": "B"},  # delivery
    "SA": {"category": "A", "care_type": "B"},  # antenatal care
    "SO": {"category": "O", "care_type": "B"},  # other: a visit
    "SI": {"care_type": "I"},  # in-patient care only
    "SM": {"care_type": "B", "genders": ["male"]},  # men only
    "SW": {"care_type": "B"},  # covered after a 6-month waiting period
    "SN": {"care_type": "B"},  # on the price list, covered by no product
}
# Items: code → Medication settings (care type B by default).
ITEMS: dict[str, dict[str, Any]] = {
    "I1": {},
    "IO": {"care_type": "O"},  # out-patient care only
    "IC": {"ages": ["child"]},  # children only
    "IL": {},  # at most 2 per insuree and insurance period
    "IF": {"frequency": 30},  # at most once in 30 days
    "INL": {},  # covered, but not on the facility's price list
    "IN": {},  # on the price list, covered by no product
    "IX": {},  # on the price list, covered by no product, withdrawn from the register by one test
    "IBAD": {"care_type": "I", "ages": ["child"]},  # fails everything: not listed, care type, category, product
}
NOT_LISTED = {"INL", "IBAD"}
NOT_COVERED = {"SN", "IN", "IX", "IBAD"}
MAIN_LINES: dict[str, dict[str, Any]] = {"SW": {"waitingPeriodAdult": 6}, "IL": {"maxQuantityAdult": 2}}
CAPPED_CODES = ("SC", "SS", "SD", "SA", "SO", "I1")
CAPS = {"maxNoConsultation": 1, "maxNoSurgery": 1, "maxNoDelivery": 1, "maxNoAntenatal": 1,
        "maxNoHospitalization": 1, "maxNoVisits": 1}
RETIRED_DIAGNOSIS = "R69"


@dataclass
class World:
    api: Api
    engine: Engine
    places: Places
    family: str  # Group every scenario's insuree joins
    ids: dict[str, str]  # item/service code → Medication/ActivityDefinition id
    products: dict[str, str]  # MAIN (everything covered, no maxima) | CAPPED (one claim per category)
    chf: Iterator[int]

    @property
    def facility(self) -> str:
        return self.places.facility


def _created(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


@pytest.fixture(scope="module")
def world(backend: Any) -> Iterator[World]:
    settings, engine = backend
    _reset(settings, engine)
    app = HifhirApp(settings, engine)
    with TestClient(app, base_url="http://testserver") as client:
        api = Api(client, app.tokens.issue(ADMIN[0])[0])
        p = places(api)
        ids = {code: _created(api.post("ActivityDefinition", activity_definition(code, f"Service {code}", **kw)))["id"]
               for code, kw in SERVICES.items()}
        ids |= {code: _created(api.post("Medication", medication(code, f"Item {code}", **kw)))["id"]
                for code, kw in ITEMS.items()}

        def lines(codes: Sequence[str], kinds: dict[str, Any]) -> dict[str, dict[str, Any]]:
            return {ids[c]: MAIN_LINES.get(c, {}) for c in codes if c in kinds}

        covered = [c for c in (*SERVICES, *ITEMS) if c not in NOT_COVERED]
        main = new_product(api, "MAIN", p.region, services=lines(covered, SERVICES), items=lines(covered, ITEMS))
        capped = new_product(api, "CAPPED", p.region, services={ids[c]: {} for c in CAPPED_CODES if c in SERVICES},
                             items={ids[c]: {} for c in CAPPED_CODES if c in ITEMS}, ceilings=CAPS)
        price_lists(engine, p.facility, items={c: None for c in ITEMS if c not in NOT_LISTED},
                    services={c: None for c in SERVICES if c not in NOT_LISTED})
        head = _created(api.post("Patient", patient("900000000", "Claimer", "Head", p.village, head=True)))["id"]
        family = _created(api.post("Group", group("900000000", [head], p.village)))["id"]
        with transaction(engine, write=True) as conn:
            seed_diagnoses(conn)
            deactivate_code(conn, DIAGNOSIS_LIST, RETIRED_DIAGNOSIS)
        yield World(api, engine, p, family, ids, {"MAIN": main["id"], "CAPPED": capped["id"]},
                    itertools.count(900000001))


# --- helpers ----------------------------------------------------------------------------------------------------


def member(w: World, *, gender: str = "female", birth: str = ADULT_BIRTH, product: str | None = "MAIN",
           effective: date | None = None, in_family: bool = True) -> str:
    """A new insuree of the world's family (or of none), covered by a policy of the product since `effective`
    (30 days ago by default; no policy when `product` is None); returns the Patient id."""
    code = str(next(w.chf))
    body = patient(code, "Claimer", code, w.places.village, gender=gender, birth_date=birth,
                   group_id=w.family if in_family else None)
    patient_id = _created(w.api.post("Patient", body))["id"]
    if product is not None:
        insert_policy(w.engine, w.products[product], [patient_id], effective=effective)
    return patient_id


def days_ago(n: int) -> date:
    return TODAY - timedelta(days=n)


def enter(w: World, patient_id: str, *items: Line, services: Sequence[Line] = (), **kw: Any) -> int:
    return entered_claim(w.engine, w.facility, patient_id, items=items, services=services, **kw)


def check(w: World, claim_pk: int) -> int:
    with transaction(w.engine, write=True) as conn:
        return submit(conn, claim_pk, today=TODAY, now=NOW)


@dataclass
class Outcome:
    status: int
    reason: int
    category: str | None
    approved: Decimal | None
    stamp: int | None
    lines: list[tuple[str, int, int, Decimal | None]]  # (code, status, reason, qty approved) in sequence order

    @property
    def reasons(self) -> dict[str, int]:
        return {code: reason for code, _status, reason, _qty in self.lines}


def outcome(w: World, claim_pk: int) -> Outcome:
    with transaction(w.engine, write=False) as conn:
        c = conn.execute(select(claim).where(claim.c.pk == claim_pk)).one()
        rows = []
        for lines, target, fk in ((claim_item, medical_item, "item_pk"), (claim_service, medical_service,
                                                                            "service_pk")):
            rows += conn.execute(
                select(lines.c.sequence, target.c.code, lines.c.status, lines.c.rejection_reason,
                       lines.c.qty_approved)
                .join(target, target.c.pk == lines.c[fk]).where(lines.c.claim_pk == claim_pk)).all()
    return Outcome(c.status, c.rejection_reason, c.category, c.approved, c.submit_stamp,
                   [(r.code, r.status, r.rejection_reason, r.qty_approved) for r in sorted(rows)])


def as_submission(w: World, claim_pk: int) -> tuple[CheckOutcome, dict[int, int]]:
    """What `check_submission` (POST Claim's checks, before anything is stored) decides of the same claim and lines
    as an entered claim's: the outcome and each line's reason by sequence (nothing is written)."""
    with transaction(w.engine, write=False) as conn:
        c = conn.execute(select(claim).where(claim.c.pk == claim_pk)).one()
        new_lines = []
        for kind, lines, fk in (("item", claim_item, "item_pk"), ("service", claim_service, "service_pk")):
            rows = conn.execute(select(lines).where(lines.c.claim_pk == claim_pk).order_by(lines.c.pk)).all()
            new_lines += [NewLine(kind, order, r.sequence, r._mapping[fk], r.qty_provided, r.price_asked)
                          for order, r in enumerate(rows)]
        facts = run_plan(conn, facts_plan(conn, c.hf_pk, c.insuree_pk, c.date_from, c.date_to, new_lines))
        diagnoses = [d for d in (c.icd_code, c.icd_code_1, c.icd_code_2, c.icd_code_3, c.icd_code_4) if d]
        decided = check_submission(conn, facts, date_claimed=c.date_claimed, claimed=c.claimed,
                                   diagnoses=diagnoses, new_lines=new_lines, today=TODAY)
    return decided, {n.sequence: n.reason for n in new_lines}


def submitted(w: World, patient_id: str, *items: Line, services: Sequence[Line] = (), **kw: Any) -> Outcome:
    """Enter a claim, run the checks, and return what they recorded — after asserting that the checks of a claim
    being submitted (POST Claim) decide the same before it is stored."""
    pk = enter(w, patient_id, *items, services=services, **kw)
    fresh, fresh_reasons = as_submission(w, pk)
    check(w, pk)
    out = outcome(w, pk)
    assert (fresh.status, fresh.rejection_reason, fresh.category, fresh.approved) == (
        out.status, out.reason, out.category, out.approved)
    assert [fresh_reasons[sequence] for sequence in sorted(fresh_reasons)] == [line[2] for line in out.lines]
    return out


def assert_rejected(out: Outcome, reason: int, *, line_reason: int | None = None) -> None:
    """The whole claim rejected with `reason`, every line rejected (qty approved 0) with `line_reason`."""
    assert (out.status, out.reason, out.approved) == (CLAIM_REJECTED, reason, Decimal(0))
    assert out.lines and all(line[1:] == (LINE_REJECTED, line_reason or reason, Decimal(0)) for line in out.lines), \
        out.lines


# --- the ordinary path ------------------------------------------------------------------------------------------


def test_claim_passing_every_check_is_checked_with_its_claimed_amount_approved(world):
    insuree = member(world)
    pk = enter(world, insuree, Line("I1", 3, "2.50"), services=[Line("SC", 1, 40)])

    assert check(world, pk) == CLAIM_CHECKED
    out = outcome(world, pk)
    assert (out.status, out.reason, out.category, out.approved, out.stamp) == (CLAIM_CHECKED, 0, "C", Decimal("47.50"),
                                                                              NOW)
    assert out.lines == [("I1", LINE_PASSED, 0, None), ("SC", LINE_PASSED, 0, None)]


def test_some_lines_failing_leave_the_claim_checked_with_the_passed_lines_approved(world):
    insuree = member(world)
    out = submitted(world, insuree, Line("I1", 2, 10), Line("INL", 1, 99), Line("IN", 1, 7),
                    services=[Line("SC", 1, 40), Line("SN", 1, 15)])

    assert (out.status, out.reason, out.approved) == (CLAIM_CHECKED, 0, Decimal(60))
    assert out.lines == [
        ("I1", LINE_PASSED, 0, None),
        ("INL", LINE_REJECTED, NOT_IN_PRICE_LIST, Decimal(0)),
        ("IN", LINE_REJECTED, NO_PRODUCT_FOUND, Decimal(0)),
        ("SC", LINE_PASSED, 0, None),
        ("SN", LINE_REJECTED, NO_PRODUCT_FOUND, Decimal(0)),
    ]


def test_claim_whose_lines_all_fail_for_different_reasons_is_rejected_with_1(world):
    insuree = member(world)
    out = submitted(world, insuree, Line("INL"), services=[Line("SN")])

    assert (out.status, out.reason, out.approved, out.stamp) == (CLAIM_REJECTED, INVALID_ITEM_OR_SERVICE,
                                                                 Decimal(0), NOW)
    assert out.reasons == {"INL": NOT_IN_PRICE_LIST, "SN": NO_PRODUCT_FOUND}
    assert all(line[1] == LINE_REJECTED for line in out.lines)


def test_claim_whose_lines_all_fail_for_one_reason_is_rejected_with_that_reason(world):
    insuree = member(world)
    out = submitted(world, insuree, Line("IN"), services=[Line("SN")])

    assert_rejected(out, NO_PRODUCT_FOUND)


def test_a_line_keeps_its_first_reason_and_is_not_checked_further(world):
    # IBAD is off the price list (2), in-patient only on a single-day claim (10), for children only (4) and
    # covered by no product (3): the price list comes first, and nothing after it touches the line.
    insuree = member(world)
    out = submitted(world, insuree, Line("IBAD"), Line("I1"))

    assert out.status == CLAIM_CHECKED
    assert out.reasons == {"IBAD": NOT_IN_PRICE_LIST, "I1": 0}


@pytest.mark.parametrize(("services", "items", "multi_day", "category"), [
    (["SO", "SC", "SD", "SS"], [], False, "S"),
    (["SA", "SD"], [], True, "D"),
    (["SC", "SA"], [], False, "A"),
    (["SC", "SO"], ["I1"], True, "H"),
    (["SO", "SC"], ["I1"], False, "C"),
    (["SO"], ["I1"], False, "V"),
    ([], ["I1"], False, "V"),
])
def test_claim_category_is_computed_at_submission(world, services, items, multi_day, category):
    insuree = member(world)
    out = submitted(world, insuree, *(Line(c) for c in items), services=[Line(c) for c in services],
                    date_from=days_ago(5), date_to=days_ago(2) if multi_day else None)

    assert out.category == category
    assert out.status == CLAIM_CHECKED, out.lines


def test_submit_refuses_a_claim_that_is_not_entered(world):
    insuree = member(world)
    pk = enter(world, insuree, Line("I1"))
    assert check(world, pk) == CLAIM_CHECKED

    with pytest.raises(ValueError, match="not an entered claim"):
        check(world, pk)
    with pytest.raises(ValueError, match="not an entered claim"):
        check(world, 10**9)
    assert outcome(world, pk).status == CLAIM_CHECKED


# --- claim-level rejections ---------------------------------------------------------------------------------------


def test_insuree_of_no_family_is_rejected_with_7(world):
    insuree = member(world, in_family=False)
    out = submitted(world, insuree, Line("I1"), services=[Line("SC")])

    assert_rejected(out, FAMILY)
    assert out.category == "C"


def test_insuree_without_a_policy_covering_the_claim_dates_is_rejected_with_21_and_lines_7(world):
    uninsured = member(world, product=None)
    assert_rejected(submitted(world, uninsured, Line("I1")), NO_COVERAGE, line_reason=FAMILY)

    # covered from 30 days ago: a stay that began 40 days ago is not covered from its first day
    insured = member(world)
    out = submitted(world, insured, Line("I1"), date_from=days_ago(40), date_to=days_ago(2))
    assert_rejected(out, NO_COVERAGE, line_reason=FAMILY)


@pytest.mark.parametrize(("dates", "why"), [
    ({"date_from": days_ago(3), "date_claimed": days_ago(5)}, "claimed before the treatment"),
    ({"date_from": days_ago(3), "date_to": days_ago(5)}, "ends before it starts"),
    ({"date_from": TODAY + timedelta(days=2)}, "treatment in the future"),
])
def test_invalid_target_date_is_rejected_with_9(world, dates, why):
    insuree = member(world)
    out = submitted(world, insuree, Line("I1"), **dates)

    assert_rejected(out, TARGET_DATE)


def test_claimed_total_that_is_not_the_sum_of_the_lines_is_rejected_with_20(world):
    insuree = member(world)
    pk = enter(world, insuree, Line("I1", 2, 10), services=[Line("SC", 1, 40)])
    with transaction(world.engine, write=True) as conn:  # the facility declared 70 for lines worth 60
        conn.execute(update(claim).where(claim.c.pk == pk).values(claimed=Decimal(70)))
    check(world, pk)

    assert_rejected(outcome(world, pk), INVALID_CLAIM)


def test_claimed_total_with_each_line_rounded_to_cents_is_accepted(world):
    insuree = member(world)
    pk = enter(world, insuree, Line("I1", "0.5", "0.25"), Line("I1", "0.5", "0.25"))  # 0.125 each
    with transaction(world.engine, write=True) as conn:  # 0.13 + 0.13, as a client rounding each line sends it
        conn.execute(update(claim).where(claim.c.pk == pk).values(claimed=Decimal("0.26")))

    assert check(world, pk) == CLAIM_CHECKED


@pytest.mark.parametrize(("main", "secondary"), [("ZZ9", ()), ("A00", ("J06", RETIRED_DIAGNOSIS))])
def test_diagnosis_not_in_the_current_list_is_rejected_with_8(world, main, secondary):
    insuree = member(world)
    out = submitted(world, insuree, Line("I1"), services=[Line("SC")], icd=main, secondary=secondary)

    assert_rejected(out, DIAGNOSIS_NOT_IN_LIST)


def test_a_diagnosis_deactivated_after_a_claim_passed_rejects_the_next_claim_with_8(world):
    insuree = member(world)
    first = submitted(world, insuree, Line("I1"), services=[Line("SC")], icd="K35")
    with transaction(world.engine, write=True) as conn:
        assert deactivate_code(conn, DIAGNOSIS_LIST, "K35")  # no other test of the module uses K35
    second = submitted(world, member(world), Line("I1"), services=[Line("SC")], icd="K35")

    assert first.status == CLAIM_CHECKED
    assert_rejected(second, DIAGNOSIS_NOT_IN_LIST)


# --- line rejections ------------------------------------------------------------------------------------------------


def test_item_withdrawn_from_the_register_is_rejected_with_1(world):
    insuree = member(world)
    pk = enter(world, insuree, Line("IX"), Line("I1"))
    assert world.api.delete(f"Medication/{world.ids['IX']}").status_code in (200, 204)
    check(world, pk)

    out = outcome(world, pk)
    assert out.status == CLAIM_CHECKED
    assert out.reasons == {"IX": INVALID_ITEM_OR_SERVICE, "I1": 0}


def test_item_off_the_facility_price_list_is_rejected_with_2(world):
    insuree = member(world)
    out = submitted(world, insuree, Line("INL", 1, 10), Line("I1", 1, 10))

    assert (out.status, out.approved) == (CLAIM_CHECKED, Decimal(10))
    assert out.lines[0] == ("INL", LINE_REJECTED, NOT_IN_PRICE_LIST, Decimal(0))


def test_item_or_service_no_product_covers_is_rejected_with_3(world):
    insuree = member(world)
    out = submitted(world, insuree, Line("IN"), Line("I1"), services=[Line("SN")])

    assert out.reasons == {"IN": NO_PRODUCT_FOUND, "I1": 0, "SN": NO_PRODUCT_FOUND}


def test_a_suspended_policy_covers_nothing_3(world):
    insuree = member(world)
    with transaction(world.engine, write=True) as conn:
        conn.execute(update(policy).where(policy.c.pk == _policy_pk(conn, insuree)).values(status=4))
    out = submitted(world, insuree, Line("I1"))

    assert_rejected(out, NO_PRODUCT_FOUND)


def _policy_pk(conn: Any, patient_id: str) -> int:
    return int(conn.execute(select(insuree_policy.c.policy_pk)
                            .join(insuree, insuree.c.pk == insuree_policy.c.insuree_pk)
                            .where(insuree.c.id == patient_id)).scalar_one())


def test_line_for_another_patient_category_is_rejected_with_4(world):
    woman = member(world, gender="female")
    out = submitted(world, woman, Line("IC"), Line("I1"), services=[Line("SM")])
    assert out.reasons == {"IC": CATEGORY_LIMITATION, "I1": 0, "SM": CATEGORY_LIMITATION}

    boy = member(world, gender="male", birth=CHILD_BIRTH)
    out = submitted(world, boy, Line("IC"), services=[Line("SM")])
    assert (out.status, out.reasons) == (CLAIM_CHECKED, {"IC": 0, "SM": 0})


def test_item_given_again_within_its_frequency_is_rejected_with_5(world):
    insuree = member(world, effective=days_ago(90))
    assert submitted(world, insuree, Line("IF"), date_from=days_ago(45)).status == CLAIM_CHECKED
    assert submitted(world, insuree, Line("IF"), date_from=days_ago(10)).status == CLAIM_CHECKED  # 35 days later

    out = submitted(world, insuree, Line("IF"), Line("I1"), date_from=days_ago(1))  # 9 days later
    assert out.reasons == {"IF": FREQUENCY_FAILURE, "I1": 0}
    # out of order: a provision 31 days before the first one is far enough from both
    assert submitted(world, insuree, Line("IF"), date_from=days_ago(76)).status == CLAIM_CHECKED


def test_item_claimed_again_for_the_same_day_is_rejected_with_6(world):
    insuree = member(world)
    day = days_ago(4)
    assert submitted(world, insuree, Line("I1"), services=[Line("SC")], date_from=day).status == CLAIM_CHECKED

    out = submitted(world, insuree, Line("I1"), services=[Line("SO")], date_from=day)
    assert (out.status, out.reasons) == (CLAIM_CHECKED, {"I1": DUPLICATED, "SO": 0})
    # another day is no duplicate
    assert submitted(world, insuree, Line("I1"), date_from=days_ago(3)).status == CLAIM_CHECKED


def test_line_for_the_wrong_care_type_is_rejected_with_10(world):
    insuree = member(world)
    # in-patient service on a single-day (out-patient) claim
    out = submitted(world, insuree, Line("I1"), services=[Line("SI")], date_from=days_ago(6))
    assert out.reasons == {"I1": 0, "SI": CARE_TYPE}
    # out-patient item on a multi-day (in-patient) claim, where the in-patient service is right
    out = submitted(world, insuree, Line("IO"), services=[Line("SI")], date_from=days_ago(5), date_to=days_ago(2))
    assert out.reasons == {"IO": CARE_TYPE, "SI": 0}


def test_line_over_its_quantity_limit_is_rejected_with_16(world):
    insuree = member(world)  # MAIN: at most 2 IL per insurance period for adults
    assert submitted(world, insuree, Line("IL", 1), date_from=days_ago(9)).status == CLAIM_CHECKED

    out = submitted(world, insuree, Line("IL", 2), Line("I1"), date_from=days_ago(5))
    assert out.reasons == {"IL": QTY_OVER_LIMIT, "I1": 0}
    # the second unit is still there; two lines of one claim count together
    out = submitted(world, insuree, Line("IL", 1), Line("IL", 1), date_from=days_ago(3))
    assert [line[2] for line in out.lines] == [0, QTY_OVER_LIMIT]
    assert submitted(world, insuree, Line("IL", 1), date_from=days_ago(1)).reasons == {"IL": QTY_OVER_LIMIT}


def test_service_within_its_waiting_period_is_rejected_with_17(world):
    insuree = member(world)  # covered since 30 days, SW waits 6 months
    out = submitted(world, insuree, Line("I1"), services=[Line("SW")])
    assert out.reasons == {"I1": 0, "SW": WAITING_PERIOD_FAIL}

    veteran = member(world, effective=days_ago(200))
    assert submitted(world, veteran, services=[Line("SW")]).reasons == {"SW": 0}


def test_renewed_policy_does_not_wait_again_17(world):
    insuree = member(world)
    with transaction(world.engine, write=True) as conn:
        conn.execute(update(policy).where(policy.c.pk == _policy_pk(conn, insuree)).values(stage="R"))

    assert submitted(world, insuree, services=[Line("SW")]).reasons == {"SW": 0}


@pytest.mark.parametrize(("service", "multi_day", "reason"), [
    ("SC", False, MAX_CONSULTATIONS),
    ("SS", False, MAX_SURGERIES),
    ("SD", False, MAX_DELIVERIES),
    ("SA", False, MAX_ANTENATAL),
    ("SO", True, MAX_HOSPITAL_ADMISSIONS),
    ("SO", False, MAX_VISITS),
])
def test_claim_over_its_category_maximum_is_rejected_as_a_whole(world, service, multi_day, reason):
    insuree = member(world, product="CAPPED")  # one claim per category and insurance period

    def claim_on(day: int) -> Outcome:
        return submitted(world, insuree, Line("I1"), services=[Line(service)], date_from=days_ago(day),
                         date_to=days_ago(day - 2) if multi_day else None)

    assert claim_on(12).status == CLAIM_CHECKED
    assert_rejected(claim_on(6), reason)
