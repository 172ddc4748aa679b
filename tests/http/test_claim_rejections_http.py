"""Every claim rejection reason end to end (domain §3.3.4): the claim sent as FHIR JSON with `POST /fhir/Claim`
through the real app, the reason read from the ClaimResponse it answers — on SQLite and PostgreSQL.

The scenarios are test_claim_checks.py's (the same world: registers, the MAIN and CAPPED products, the facility's
price lists, a family and the diagnosis list), but nothing is inserted in SQL below the claim: earlier claims a
check counts (frequency, quantity limits, category maxima) are POSTed and valuated too. The order of the checks is
pinned by lines (and a claim) that fail two checks at once: each gets the reason of the check §3.3.4 runs first.

A line rejected by the checks has one adjudication, category 1 (rejected), with its reason; the claim's other lines
are processed and valuated in the POST (adjudications 2, 4, 8, 16, reason 0), the outcome `complete`. A claim
rejected as a whole has every line rejected, totals entered (2) and rejected (1), outcome `complete`; its own
reason is on the claim row (the ClaimResponse carries the lines' only).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest

from hifhir.domain.claims import (
    CARE_TYPE,
    CATEGORY_LIMITATION,
    FAMILY,
    FREQUENCY_FAILURE,
    MAX_ANTENATAL,
    MAX_CONSULTATIONS,
    MAX_DELIVERIES,
    MAX_HOSPITAL_ADMISSIONS,
    MAX_SURGERIES,
    MAX_VISITS,
    NO_COVERAGE,
    NOT_IN_PRICE_LIST,
    QTY_OVER_LIMIT,
    TARGET_DATE,
    WAITING_PERIOD_FAIL,
)
from hifhir.store.tables import CLAIM_REJECTED, CLAIM_VALUATED
from tests.builders_claim_fhir import claim as fhir_claim
from tests.builders_claim_fhir import item, service
from tests.builders_claims import Line, price_lists
from tests.builders_eligibility import insert_policy, new_product
from tests.builders_practitioner import claim_admin, claim_admin_role
from tests.http.test_claim_checks import ITEMS, NOT_LISTED, World, days_ago, member
from tests.http.test_claim_checks import world as world  # the fixture, shared
from tests.http.test_claims import adjudications, answered, claim_row, items_by_sequence, totals
from tests.responses import created

Verdict = tuple[tuple[str, str], ...]  # a line's adjudications: (category, reason code) in order

VALUATED: Verdict = (("2", "0"), ("4", "0"), ("8", "0"), ("16", "0"))  # passed: entered → valuated in the POST


def rejected(reason: int) -> Verdict:
    return (("1", str(reason)),)


@dataclass(frozen=True)
class Visit:
    """A claim as the facility sends it: items and services (each numbered in that order as Claim.item.sequence),
    billablePeriod start/end and `created` (the date claimed) in days ago — negative: in the future; created
    defaults to today."""

    items: tuple[Line, ...] = ()
    services: tuple[Line, ...] = ()
    start: int = 1
    end: int | None = None
    claimed: int | None = None

    @property
    def codes(self) -> list[str]:
        return [line.code for line in (*self.items, *self.services)]


def visit(*items: Line, services: tuple[Line, ...] = (), **dates: Any) -> Visit:
    return Visit(items, services, **dates)


@dataclass(frozen=True)
class Insured:
    patient: str  # Patient id
    coverage: str  # the Coverage of the insuree's policy, which the claim names


@dataclass
class Facility:
    """test_claim_checks' world, seen from its facility: the claim administrator who sends the claims."""

    world: World
    enterer: str  # Practitioner id
    codes: Iterator[int] = field(default_factory=lambda: itertools.count(1))


@pytest.fixture(scope="module")
def facility(world: World) -> Facility:
    ca = created(world.api.post("Practitioner", claim_admin("CA900")))["id"]
    created(world.api.post("PractitionerRole", claim_admin_role("CAR900", ca, world.facility)))
    return Facility(world, ca)


@pytest.fixture(scope="module")
def two_failures(facility: Facility) -> Facility:
    """The set-up of the order tests. Product ORDER, whose lines each fail two checks for an adult woman recently
    covered: IBAD (in-patient care, children only: 10 and 4 on a single-day claim), IC (children only, adults wait
    6 months: 4 and 17), SW (adults wait 6 months, at most 1: 17 and 16 for 2), IF (once in 30 days, at most 1: 5
    and 16 for a second one). IBAD goes on the facility's items price list, which it is off in the world, so that
    the two checks are all it fails."""
    w = facility.world
    ids = w.ids
    order = new_product(w.api, "ORDER", w.places.region,
                        services={ids["SW"]: {"waitingPeriodAdult": 6, "maxQuantityAdult": 1}},
                        items={ids["IBAD"]: {}, ids["IC"]: {"waitingPeriodAdult": 6},
                               ids["IF"]: {"maxQuantityAdult": 1}, ids["I1"]: {}})
    w.products["ORDER"] = order["id"]
    price_lists(w.engine, w.facility, items={c: None for c in ITEMS if c not in NOT_LISTED or c == "IBAD"})
    return facility


# --- helpers ----------------------------------------------------------------------------------------------------


def insured(f: Facility, *, product: str = "MAIN", effective: date | None = None, **who: Any) -> Insured:
    """A new insuree of the world's family (`member`'s gender and birth) with a policy of `product` effective
    `effective` (30 days ago by default)."""
    patient_id = member(f.world, product=None, **who)
    policy = insert_policy(f.world.engine, f.world.products[product], [patient_id], effective=effective)
    return Insured(patient_id, policy.coverage_id)


def post_claim(f: Facility, who: Insured, v: Visit) -> dict[str, Any]:
    """POST the visit as a Claim of `who` at the world's facility; the 200 ClaimResponse (valid for its profile)."""
    w = f.world
    lines = [item(f"Medication/{w.ids[line.code]}", line.qty, line.price) for line in v.items]
    lines += [service(f"ActivityDefinition/{w.ids[line.code]}", line.qty, line.price) for line in v.services]
    body = fhir_claim(f"RJ{next(f.codes):04d}", f"Patient/{who.patient}", f"Organization/{w.facility}",
                      f"Practitioner/{f.enterer}", coverage=f"Coverage/{who.coverage}", lines=lines,
                      start=days_ago(v.start), end=None if v.end is None else days_ago(v.end),
                      created=None if v.claimed is None else days_ago(v.claimed))
    return answered(w.api.post("Claim", body))


def verdicts(body: dict[str, Any], v: Visit) -> list[tuple[str, Verdict]]:
    """Each line of the ClaimResponse, in Claim.item.sequence order: its code and its adjudications."""
    by_sequence = items_by_sequence(body)
    assert sorted(by_sequence) == list(range(1, len(v.codes) + 1)), body["item"]
    return [(code, tuple((category, reason) for category, reason, _amount, _value in adjudications(by_sequence[n])))
            for n, code in enumerate(v.codes, start=1)]


def assert_lines_rejected(f: Facility, body: dict[str, Any], v: Visit, reasons: dict[str, int]) -> None:
    """The claim checked, processed and valuated in the POST: the lines named in `reasons` rejected with theirs,
    the others valuated."""
    assert body["outcome"] == "complete"
    assert list(totals(body)) == ["2", "4", "8", "16"]
    assert verdicts(body, v) == [(code, rejected(reasons[code]) if code in reasons else VALUATED)
                                 for code in v.codes]
    row = claim_row(f.world.engine, body["id"])
    assert (row.status, row.rejection_reason) == (CLAIM_VALUATED, 0)


def assert_claim_rejected(f: Facility, body: dict[str, Any], v: Visit, reason: int, *,
                          line_reason: int | None = None) -> None:
    """The whole claim rejected with `reason`, every line with `line_reason` (the same by default)."""
    assert body["outcome"] == "complete"
    assert list(totals(body)) == ["2", "1"]  # entered, rejected
    assert verdicts(body, v) == [(code, rejected(line_reason or reason)) for code in v.codes]
    row = claim_row(f.world.engine, body["id"])
    assert (row.status, row.rejection_reason) == (CLAIM_REJECTED, reason)


def posted_and_valuated(f: Facility, who: Insured, v: Visit) -> None:
    """An earlier claim the next one is checked against: every line passes."""
    body = post_claim(f, who, v)
    assert (body["outcome"], verdicts(body, v)) == ("complete", [(code, VALUATED) for code in v.codes])


# --- every reason, over HTTP ------------------------------------------------------------------------------------

I1, SC = Line("I1"), Line("SC")  # a plain item and consultation every product covers: they pass


@pytest.mark.parametrize(("who", "earlier", "sent", "reasons"), [
    pytest.param({}, [], visit(Line("INL"), I1), {"INL": NOT_IN_PRICE_LIST},
                 id="2-item-off-the-facility-price-list"),
    pytest.param({"gender": "female"}, [], visit(Line("IC"), I1, services=(Line("SM"),)),
                 {"IC": CATEGORY_LIMITATION, "SM": CATEGORY_LIMITATION},
                 id="4-child-item-and-men-service-for-a-woman"),
    pytest.param({}, [visit(Line("IF"), start=20)], visit(Line("IF"), I1, start=5), {"IF": FREQUENCY_FAILURE},
                 id="5-item-given-again-within-its-30-day-frequency"),
    pytest.param({}, [], visit(I1, services=(Line("SI"),)), {"SI": CARE_TYPE},
                 id="10-in-patient-service-on-a-single-day-claim"),
    pytest.param({}, [], visit(Line("IO"), services=(Line("SI"),), start=5, end=2), {"IO": CARE_TYPE},
                 id="10-out-patient-item-on-a-multi-day-claim"),
    pytest.param({}, [visit(Line("IL", 1), start=9)], visit(Line("IL", 2), I1, start=5), {"IL": QTY_OVER_LIMIT},
                 id="16-item-over-its-quantity-limit"),
    pytest.param({}, [], visit(I1, services=(Line("SW"),)), {"SW": WAITING_PERIOD_FAIL},
                 id="17-service-within-its-waiting-period"),
])
def test_a_line_failing_a_check_is_rejected_with_its_reason_in_the_claim_response(
        facility, who, earlier, sent, reasons):
    insuree = insured(facility, **who)
    for v in earlier:
        posted_and_valuated(facility, insuree, v)

    body = post_claim(facility, insuree, sent)

    assert_lines_rejected(facility, body, sent, reasons)


@pytest.mark.parametrize(("effective", "sent", "reason", "line_reason"), [
    pytest.param(None, visit(I1, services=(SC,), start=3, claimed=5), TARGET_DATE, None,
                 id="9-claimed-before-the-treatment"),
    pytest.param(None, visit(I1, start=-2, claimed=-2), TARGET_DATE, None, id="9-treatment-in-the-future"),
    pytest.param(None, visit(I1, services=(SC,), start=40, end=2), NO_COVERAGE, FAMILY,
                 id="21-stay-begun-before-the-policy"),
    pytest.param(400, visit(I1), NO_COVERAGE, FAMILY, id="21-policy-expired"),
])
def test_a_claim_failing_a_claim_level_check_is_rejected_as_a_whole_in_the_claim_response(
        facility, effective, sent, reason, line_reason):
    insuree = insured(facility, effective=None if effective is None else days_ago(effective))

    body = post_claim(facility, insuree, sent)

    assert_claim_rejected(facility, body, sent, reason, line_reason=line_reason)


@pytest.mark.parametrize(("consultation", "multi_day", "reason"), [
    ("SO", True, MAX_HOSPITAL_ADMISSIONS),  # 11 H
    ("SO", False, MAX_VISITS),  # 12 V
    ("SC", False, MAX_CONSULTATIONS),  # 13 C
    ("SS", False, MAX_SURGERIES),  # 14 S
    ("SD", False, MAX_DELIVERIES),  # 15 D
    ("SA", False, MAX_ANTENATAL),  # 19 A
], ids=["11-hospital-admissions", "12-visits", "13-consultations", "14-surgeries", "15-deliveries", "19-antenatal"])
def test_a_claim_over_its_category_maximum_is_rejected_as_a_whole_in_the_claim_response(
        facility, consultation, multi_day, reason):
    insuree = insured(facility, product="CAPPED")  # one claim per category and insurance period

    def on(day: int) -> Visit:
        return visit(I1, services=(Line(consultation),), start=day, end=day - 2 if multi_day else None)

    posted_and_valuated(facility, insuree, on(12))
    body = post_claim(facility, insuree, on(6))

    assert_claim_rejected(facility, body, on(6), reason)


# --- the order of the checks (§3.3.4): two failures, the first check's reason -----------------------------------


@pytest.mark.parametrize(("earlier", "sent", "line", "reason"), [
    pytest.param([], visit(Line("IBAD"), I1), "IBAD", CARE_TYPE, id="care-type-10-before-patient-category-4"),
    pytest.param([], visit(Line("IC"), I1), "IC", CATEGORY_LIMITATION,
                 id="patient-category-4-before-the-product-search-waiting-period-17"),
    pytest.param([], visit(I1, services=(Line("SW", 2),)), "SW", WAITING_PERIOD_FAIL,
                 id="waiting-period-17-before-max-provisions-16"),
    pytest.param([visit(Line("IF"), start=20)], visit(Line("IF"), I1, start=5), "IF", QTY_OVER_LIMIT,
                 id="product-search-max-provisions-16-before-frequency-5"),
])
def test_a_line_failing_two_checks_gets_the_reason_of_the_one_checked_first(
        two_failures, earlier, sent, line, reason):
    insuree = insured(two_failures, product="ORDER", gender="female")  # an adult woman, covered 30 days ago
    for v in earlier:
        posted_and_valuated(two_failures, insuree, v)

    body = post_claim(two_failures, insuree, sent)

    assert_lines_rejected(two_failures, body, sent, {line: reason})


def test_a_claim_without_coverage_and_with_a_wrong_target_date_is_rejected_for_no_coverage_21(facility):
    insuree = insured(facility)  # covered 30 days ago: a stay begun 40 days ago is not covered from its first day
    sent = visit(I1, services=(SC,), start=40, end=2, claimed=45)  # and it was claimed before it began: 9

    body = post_claim(facility, insuree, sent)

    assert_claim_rejected(facility, body, sent, NO_COVERAGE, line_reason=FAMILY)
