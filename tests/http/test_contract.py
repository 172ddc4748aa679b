"""Enrolment through the FHIR API (IG §1b rows 16 and 19, §2 contract-premium / coverage-date; domain §2.15–2.17,
§3.1): POST Contract creates the policy, its members and contributions with server-computed dates, value and
status; activation by payment; updates (idle edits, new premiums, suspension); delete; Coverage as the read-only
view of a policy; Patient.active / Group.active following the policies; search on both."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest
from sqlalchemy import func, select

from hifhir.domain.policy import add_months
from hifhir.fhir.validate import validate_resource
from hifhir.store import tables
from tests.builders import EXT, ident, patient
from tests.builders import group as family_group
from tests.builders_enrolment import (
    HIFHIR_EXT,
    TODAY,
    contract,
    cycles,
    days_ago,
    family_contract,
    make_family,
    make_product,
    make_scheme,
    premium,
    with_relationship,
    years_ago,
)
from tests.builders_medical import months
from tests.conftest import CLERK, NOBODY, Api, load_example
from tests.http.test_ig_examples import assert_equivalent, load_all_by_put
from tests.responses import created, refused

DAR = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"


# --- helpers ----------------------------------------------------------------------------------------------------



def ok(resp: Any, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    return resp.json()



def asset(c: dict[str, Any]) -> dict[str, Any]:
    return c["term"][0]["asset"][0]


def net(c: dict[str, Any]) -> Any:
    return asset(c)["valuedItem"][0]["net"]["value"]


def period(c: dict[str, Any]) -> tuple[str, str]:
    p = asset(c)["period"][0]
    return p["start"], p["end"]


def effective(c: dict[str, Any]) -> str | None:
    return asset(c)["usePeriod"][0].get("start")


def year_end(start: str) -> str:
    """start + 12 months − 1 day."""
    return date.fromordinal(add_months(date.fromisoformat(start), 12).toordinal() - 1).isoformat()


def ext_code(resource: dict[str, Any], name: str) -> Any:
    return next((e["valueCode"] for e in resource.get("extension", []) if e["url"] == HIFHIR_EXT + name), None)


def policy_status(c: dict[str, Any]) -> str:
    return ext_code(c, "policy-status")


def put(api: Any, resource: dict[str, Any], status: int = 200) -> dict[str, Any]:
    return ok(api.put(f"{resource['resourceType']}/{resource['id']}", resource), status)


def get(api: Any, path: str) -> dict[str, Any]:
    return ok(api.get(path))


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") != "include"}


def active(api: Any, path: str) -> bool:
    return bool(get(api, path)["active"])


def counts(engine: Any) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(conn.execute(select(func.count()).select_from(t)).scalar_one()
                     for t in (tables.policy, tables.coverage, tables.insuree_policy, tables.premium,
                               tables.resource_version))


def valid(resource: dict[str, Any]) -> dict[str, Any]:
    """The rendering passes its own IG profile (an extension whose date is only a data-absent-reason included)."""
    _, issues = validate_resource(copy.deepcopy(resource), resource["meta"]["profile"][0])
    errors = [i.to_fhir() for i in issues if i.severity in ("error", "fatal")]
    assert not errors, errors
    return resource


@pytest.fixture
def scheme(api: Any) -> Any:
    return make_scheme(api)


# --- enrolment ---------------------------------------------------------------------------------------------------


def test_informal_enrolment_paid_at_once_is_executed(api, scheme):
    s = scheme
    versions = {m: get(api, f"Patient/{m}")["meta"]["versionId"] for m in s.all_members()}
    body = family_contract(s, issued=days_ago(10), premiums=[premium(10000, "RC-1", days_ago(3))],
                           status="offered", net=1)
    c = created(api.post("Contract", body))
    valid(c)
    assert c["status"] == "executed" and policy_status(c) == "active" and ext_code(c, "policy-stage") == "N"
    assert net(c) == 10000  # the lump sum: computed, the client's 1 is ignored
    assert period(c) == (days_ago(10), year_end(days_ago(10)))  # no cycle, no administration period
    assert effective(c) == days_ago(3)  # max(pay date, start)
    assert c["issued"] == days_ago(10)
    assert c["subject"] == [{"reference": f"Group/{s.family}"}]
    assert c["author"] == {"reference": f"Practitioner/{s.officer}"}
    assert c["term"][0]["offer"]["party"][0]["reference"] == [{"reference": f"Patient/{s.head}"}]
    assert [r["reference"] for r in asset(c)["typeReference"]] == [f"Patient/{m}" for m in s.all_members()]
    assert asset(c)["valuedItem"][0]["entityReference"] == {"reference": f"InsurancePlan/{s.products['BC01']}"}
    assert c["identifier"][0]["value"] == c["id"]
    assert get(api, f"Contract/{c['id']}") == c

    cov = valid(get(api, f"Coverage/{c['id']}"))
    assert cov["status"] == "active"
    assert cov["identifier"] == [ident(c["id"], "UUID")]
    assert cov["beneficiary"] == cov["policyHolder"] == {"reference": f"Patient/{s.head}"}
    assert cov["payor"] == [{"reference": f"Patient/{s.head}"}]
    assert cov["period"] == {"start": period(c)[0], "end": period(c)[1]}
    assert cov["class"][0]["value"] == "BC01" and cov["class"][0]["name"] == "Product BC01"
    dates = {e["id"]: e["valueDate"] for e in cov["extension"] if e.get("id")}
    assert dates == {"enrollDate": days_ago(10), "effectiveDate": days_ago(3)}

    # Patient.active / Group.active: has an active policy; each member re-versioned once
    for m in s.all_members():
        p = get(api, f"Patient/{m}")
        assert p["active"] is True
        assert int(p["meta"]["versionId"]) == int(versions[m]) + 1
    assert active(api, f"Group/{s.family}")


def test_unpaid_enrolment_is_offered_until_a_premium_added_by_update_activates_it(api, scheme):
    s = scheme
    c = created(api.post("Contract", family_contract(s, "FC01", issued=days_ago(20))))
    valid(c)
    assert c["status"] == "offered" and policy_status(c) == "idle"
    assert net(c) == 4 * 4000 + 2000
    assert "extension" not in asset(c)
    use = asset(c)["usePeriod"][0]
    assert "start" not in use and use["_start"]["extension"][0] == {"url": DAR, "valueCode": "temp-unknown"}
    cov = valid(get(api, f"Coverage/{c['id']}"))
    assert cov["status"] == "draft"
    eff = next(e for e in cov["extension"] if e.get("id") == "effectiveDate")
    assert "valueDate" not in eff and eff["_valueDate"]["extension"][0]["valueCode"] == "temp-unknown"
    assert not active(api, f"Patient/{s.head}") and not active(api, f"Group/{s.family}")

    # a first installment does not cover the value; the second does (FC01 allows 3)
    asset(c)["extension"] = [premium(8000, "RC-10", days_ago(5))]
    c = put(api, c)
    assert c["status"] == "offered" and c["meta"]["versionId"] == "2"
    asset(c)["extension"].append(premium(10000, "RC-11", days_ago(1)))
    c = put(api, c)
    assert c["status"] == "executed" and policy_status(c) == "active" and effective(c) == days_ago(1)
    cov = get(api, f"Coverage/{c['id']}")
    assert cov["status"] == "active" and cov["meta"]["versionId"] == c["meta"]["versionId"] == "3"
    assert active(api, f"Patient/{s.head}") and active(api, f"Group/{s.family}")


def test_photo_fees_do_not_count_and_installments_are_limited(api, scheme):
    s = scheme
    # BC01 allows one installment: two premiums covering the value leave it idle (openIMIS legacy API)
    two = [premium(5000, "RC-20", days_ago(2)), premium(5000, "RC-21", days_ago(1))]
    c = created(api.post("Contract", family_contract(s, premiums=two)))
    assert c["status"] == "offered"
    assert api.delete(f"Contract/{c['id']}").status_code == 204
    photo = [premium(9990, "RC-22", days_ago(2)), premium(100, "RC-23", days_ago(2), category="P")]
    c = created(api.post("Contract", family_contract(s, premiums=photo)))
    assert c["status"] == "offered"
    cats = [p["extension"][1]["valueCodeableConcept"]["coding"][0]["code"] for p in asset(c)["extension"]]
    assert cats == ["C", "P"]


# --- policy value: the worked examples of domain §3.1.3 -------------------------------------------------------------


def five_member_family(api: Any, s: Any, prefix: str) -> tuple[str, dict[str, str]]:
    births = {"head": years_ago(40), "spouse": years_ago(35), "child1": years_ago(12), "child2": years_ago(8),
              "child3": years_ago(17, days=-1)}  # 18 tomorrow: still a child on the enrolment date
    return make_family(api, s.places["V1"], prefix, births=births)


def test_value_fcul0001_new_22000_then_renewal_21000(api, scheme):
    s = scheme
    fam, members = five_member_family(api, s, "2000000")
    head, covered = members["head"], list(members.values())
    first = contract(f"Group/{fam}", head, covered, s.products["FC01"], issued=days_ago(350),
                     premiums=[premium(22000, "FC-1", days_ago(350))])
    c1 = created(api.post("Contract", first))
    assert net(c1) == 22000 and ext_code(c1, "policy-stage") == "N"  # 5 × 4000 + registration + assembly
    assert period(c1) == (days_ago(350), year_end(days_ago(350)))
    # renewed within the month before it expires: stage R, no registration, continues the day after
    c2 = created(api.post("Contract", contract(f"Group/{fam}", head, covered, s.products["FC01"],
                                               issued=days_ago(5))))
    assert ext_code(c2, "policy-stage") == "R" and net(c2) == 21000
    prev_end = date.fromisoformat(period(c1)[1])
    assert period(c2)[0] == date.fromordinal(prev_end.toordinal() + 1).isoformat()
    # a third enrolment now overlaps the renewal (which has not taken effect): Contract exists
    refused(api.post("Contract", contract(f"Group/{fam}", head, covered, s.products["FC01"], issued=days_ago(1))),
            409, text="Contract exists")


def test_renewal_after_a_lapse_starts_at_the_renewal_date(api, scheme):
    s = scheme
    c1 = created(api.post("Contract", family_contract(s, "FC01", issued=days_ago(500),
                                                      premiums=[premium(18000, "LA-1", days_ago(500))])))
    assert policy_status(c1) == "expired" and c1["status"] == "executed"
    assert not active(api, f"Patient/{s.head}")
    c2 = created(api.post("Contract", family_contract(s, "FC01", issued=days_ago(3),
                                                      premiums=[premium(17000, "LA-2", days_ago(3))])))
    assert ext_code(c2, "policy-stage") == "R" and net(c2) == 4 * 4000 + 1000
    assert period(c2)[0] == days_ago(3) and policy_status(c2) == "active"
    assert active(api, f"Patient/{s.head}")


def test_conversion_product_renews_the_converted_one(api, scheme):
    s = scheme
    new = make_product(api, "NEW1", s.places["R1"], lump_sum=3000, threshold=9, member_count=9,
                       extra_costs={"registrationLumpsum": 500})
    old = make_product(api, "OLD2", s.places["R1"], lump_sum=1000, threshold=9, member_count=9,
                       extensions=[{"url": f"{EXT}insurance-plan-conversion",
                                    "valueReference": {"reference": f"InsurancePlan/{new}"}}])
    s.products.update(NEW1=new, OLD2=old)
    created(api.post("Contract", family_contract(s, "OLD2", issued=days_ago(360),
                                                 premiums=[premium(1000, "CV-1", days_ago(360))])))
    c = created(api.post("Contract", family_contract(s, "NEW1", issued=days_ago(1))))
    assert ext_code(c, "policy-stage") == "R" and net(c) == 3000  # no registration lump sum: a renewal


def test_value_bcul0001_lump_sum_up_to_six_members(api, scheme):
    s = scheme
    c = created(api.post("Contract", family_contract(s, "BC01", covered=[s.head])))
    assert net(c) == 10000
    assert api.delete(f"Contract/{c['id']}").status_code == 204
    c = created(api.post("Contract", family_contract(s, "BC01")))
    assert net(c) == 10000


def test_value_others_and_registration_fee_per_member(api, scheme):
    s = scheme
    product = make_product(api, "PP01", s.places["D1"], lump_sum=500, threshold=1, member_count=10,
                           premium_adult=100, premium_child=50, extra_costs={"registrationFee": 7})
    village = s.places["V1"]
    head = created(api.post("Patient", patient("3000000", "Roe", "Head", village, birth_date=years_ago(50),
                                               head=True)))["id"]
    fam = created(api.post("Group", family_group("3000000", [head], village)))["id"]
    aunt = created(api.post("Patient", with_relationship(patient(
        "3000001", "Roe", "Aunt", village, birth_date=years_ago(60), group_id=fam), "7")))["id"]
    child = created(api.post("Patient", patient("3000002", "Roe", "Kid", village, birth_date=years_ago(3),
                                                group_id=fam)))["id"]
    c = created(api.post("Contract", contract(f"Group/{fam}", head, [head, aunt, child], product,
                                              issued=days_ago(1))))
    # lump sum 500 covers 1 (the head); the child is an extra child (50); the aunt (7, Others) pays 100 apart;
    # registration fee 7 × 3 members
    assert net(c) == 500 + 50 + 100 + 21


# --- dates: cycles, administration and grace periods -----------------------------------------------------------------


def test_cycle_product_start_and_expiry(api, scheme):
    s = scheme
    enrol = date.fromisoformat(days_ago(30))
    # a cycle 10 days after the enrolment date, one 1 month before (grace 0): the next one is taken
    nxt = date.fromordinal(enrol.toordinal() + 10)
    before = date.fromordinal(enrol.toordinal() - 40)
    starts = sorted({f"{nxt.day:02d}-{nxt.month:02d}", f"{before.day:02d}-{before.month:02d}"})
    product = make_product(api, "CY01", s.places["R1"], lump_sum=1000, threshold=10, member_count=10,
                           extensions=cycles(*starts))
    c = created(api.post("Contract", contract(f"Group/{s.family}", s.head, [s.head], product,
                                              issued=enrol.isoformat())))
    assert period(c) == (nxt.isoformat(), year_end(nxt.isoformat()))


def test_grace_period_keeps_a_late_enrolment_in_the_current_cycle(api, scheme):
    s = scheme
    enrol = date.fromisoformat(days_ago(20))
    cycle = date.fromordinal(enrol.toordinal() - 15)
    product = make_product(api, "CY02", s.places["R1"], lump_sum=1000, threshold=10, member_count=10,
                           extensions=[*cycles(f"{cycle.day:02d}-{cycle.month:02d}"),
                                       months("insurance-plan-period", 1, "gracePeriodEnrolment")])
    c = created(api.post("Contract", contract(f"Group/{s.family}", s.head, [s.head], product,
                                              issued=enrol.isoformat())))
    assert period(c)[0] == cycle.isoformat()


def test_administration_period_delays_the_start(api, scheme):
    s = scheme
    product = make_product(api, "AD01", s.places["R1"], lump_sum=1000, threshold=10, member_count=10,
                           extensions=[months("insurance-plan-period", 2, "administrationPeriod")])
    enrol = date(TODAY.year - 1, 1, 15)
    c = created(api.post("Contract", contract(f"Group/{s.family}", s.head, [s.head], product,
                                              issued=enrol.isoformat())))
    assert period(c) == (date(TODAY.year - 1, 3, 15).isoformat(), date(TODAY.year, 3, 14).isoformat())


# --- the IG examples ---------------------------------------------------------------------------------------------


def load_contract_example_dependencies(api: Any) -> None:
    load_all_by_put(api)
    ok(api.put("Practitioner/Roberts-Jeb-EO", load_example("Practitioner-Roberts-Jeb-EO")), 201)
    rx02 = load_example("InsurancePlan-RX02")
    rx02["identifier"][0]["value"] = "RX02"  # ig/README.md §9.6: RX02 reuses RX01's Code
    ok(api.put("InsurancePlan/RX02", rx02), 201)
    ok(api.put("InsurancePlan/RX01", load_example("InsurancePlan-RX01")), 201)


def test_ig_contract_example_is_postable_and_computed(api):
    load_contract_example_dependencies(api)
    example = load_example("Contract-InformalSectorContract")
    body = copy.deepcopy(example)
    del body["id"]
    c = created(api.post("Contract", body))
    valid(c)
    # RX01: cycles 01-03, 01-07, 01-10; administration period 1 month, enrolment grace 1 month. Enrolment on
    # 2021-07-28 + 1 month = 28 August: past the July cycle's grace month → the October cycle (the example's
    # 2021-07-01..2022-06-30 ignores the administration period).
    assert period(c) == ("2021-10-01", "2022-09-30")
    # Value: lump sum 1000 (threshold 3 ≥ 2 members) + registration fee 300 × 2 = 1600, less the 80 % enrolment
    # discount (enrolled at least 2 months before the start) = 320; the example says 1000.
    assert net(c) == 320
    # The 1000 premium covers it: executed, effective at the start date; long expired by now.
    assert c["status"] == "executed" and effective(c) == "2021-10-01" and policy_status(c) == "expired"
    expected = copy.deepcopy(example)
    del expected["id"]
    a = expected["term"][0]["asset"][0]
    a["period"] = [{"start": "2021-10-01", "end": "2022-09-30"}]
    a["usePeriod"] = [{"start": "2021-10-01", "end": "2022-09-30"}]
    a["valuedItem"][0]["net"]["value"] = 320
    assert_equivalent(expected, c)
    # an expired policy is not an active one: Patient.active stays false
    assert not active(api, "Patient/jane-doe") and not active(api, "Group/doe-family")

    cov = valid(get(api, f"Coverage/{c['id']}"))
    want = load_example("Coverage-JoeDoeCoverage")
    del want["id"]
    # ig/README.md §9.6: the example's beneficiary `joe-doe` does not exist; the beneficiary is the head of the
    # family (jane-doe, the Contract's term.offer.party). Identifier and dates are this policy's.
    want["beneficiary"] = {"reference": "Patient/jane-doe"}
    want["identifier"][0]["value"] = c["id"]
    want["period"] = {"start": "2021-10-01", "end": "2022-09-30"}
    want["extension"] = [{"url": want["extension"][0]["url"], "valueDate": "2021-07-28"},
                         {"url": want["extension"][0]["url"], "valueDate": "2021-10-01"}]
    assert_equivalent(want, cov)  # status active: an expired policy maps to active (IG)


def test_ig_contract_example_put_to_its_id_then_again_is_409_contract_exists(api):
    load_contract_example_dependencies(api)
    example = load_example("Contract-InformalSectorContract")
    c = ok(api.put("Contract/InformalSectorContract", example), 201)
    assert c["id"] == "InformalSectorContract"
    assert get(api, "Coverage/InformalSectorContract")["class"][0]["value"] == "RX01"
    body = copy.deepcopy(example)
    del body["id"]
    asset(body)["extension"][0]["extension"][2]["valueString"] = "RE185"
    refused(api.post("Contract", body), 409, expression="Contract.subject", text="Contract exists")


# --- bad input: 4xx, nothing written -------------------------------------------------------------------------------


def test_bad_enrolments_are_refused_and_write_nothing(api, engine, scheme):
    s = scheme
    other_family, other_members = make_family(api, s.places["V1"], "4000000")
    elsewhere = make_product(api, "EL01", s.places["R2"], lump_sum=100, threshold=1, member_count=5)
    old = make_product(api, "OLD1", s.places["R1"], start="2020-01-01", end="2021-12-31", lump_sum=100, threshold=1,
                       member_count=5)
    draft = make_product(api, "DR01", None, status="draft", lump_sum=100, threshold=1, member_count=5)
    small = make_product(api, "SM01", None, lump_sum=100, threshold=1, member_count=2)
    paid = [premium(10000, "BAD-1", days_ago(1))]
    before = counts(engine)

    def bad(body: dict[str, Any], status: int, expression: str, text: str | None = None) -> None:
        refused(api.post("Contract", body), status, expression=expression, text=text)

    base = family_contract(s, premiums=paid)
    bad(contract("Group/no-such-family", s.head, [s.head], s.products["BC01"], issued=days_ago(1)), 422,
        "Contract.subject[0]")
    bad(contract(f"Group/{s.family}", s.head, [s.head], "no-such-product", issued=days_ago(1)), 422,
        "valuedItem[0].entityReference")
    bad(family_contract(s, covered=[s.head, other_members["spouse"]]), 422, "typeReference[1]", "not a member")
    bad(family_contract(s, covered=[s.head, s.head]), 422, "typeReference[1]", "twice")
    bad(contract(f"Group/{s.family}", s.members["spouse"], [s.head], s.products["BC01"], issued=days_ago(1)), 422,
        "offer.party", "head")
    bad(contract(f"Group/{s.family}", s.head, [s.head], elsewhere, issued=days_ago(1)), 422,
        "entityReference", "not sold where")
    bad(contract(f"Group/{s.family}", s.head, [s.head], old, issued=days_ago(1)), 422, "entityReference", "sold from")
    bad(contract(f"Group/{s.family}", s.head, [s.head], draft, issued=days_ago(1)), 422, "entityReference", "draft")
    bad(contract(f"Group/{s.family}", s.head, s.all_members()[:3], small, issued=days_ago(1)), 422,
        "typeReference", "at most 2")
    tomorrow = date.fromordinal(TODAY.toordinal() + 1).isoformat()
    bad(family_contract(s, issued=tomorrow), 422, "Contract.issued", "future")
    bad(family_contract(s, issued="2024"), 422, "Contract.issued")
    bad(family_contract(s, premiums=[premium(-5, "BAD-2", days_ago(1))]), 422, "extension[amount]")
    bad(family_contract(s, premiums=[premium(0, "BAD-2", days_ago(1))]), 422, "extension[amount]", "positive")
    bad(family_contract(s, premiums=[premium("ten", "BAD-2", days_ago(1))]), 400, "Contract.term")
    bad(family_contract(s, premiums=[premium(10, "BAD-2", days_ago(1), currency="USD")]), 422, "extension[amount]")
    bad(family_contract(s, premiums=[premium(10, "BAD-2", tomorrow)]), 422, "extension[date]", "future")
    bad(family_contract(s, premiums=[premium(10, "BAD-2", days_ago(1)), premium(10, "BAD-2", days_ago(1))]), 409,
        "extension[receipt]", "twice")
    bad(family_contract(s, premiums=[premium(10, "BAD-2", days_ago(1), pay_type="X")]), 400, "Contract.term")
    formal_for_family = copy.deepcopy(base)
    formal_for_family["scope"]["coding"][0]["code"] = "formal"
    bad(formal_for_family, 422, "Contract.subject[0]")
    no_term = copy.deepcopy(base)
    no_term["term"].append(copy.deepcopy(no_term["term"][0]))
    bad(no_term, 422, "Contract.term", "exactly one term")
    bad(contract(f"Group/{s.family}", s.head, [s.head], s.products["BC01"], issued=days_ago(1),
                 officer_id="no-such-officer"), 422, "Contract.author")
    assert counts(engine) == before
    # the same enrolment, fixed, goes through
    created(api.post("Contract", base))
    assert created(api.post("Contract", contract(f"Group/{other_family}", other_members["head"],
                                                 [other_members["head"]], s.products["FC01"],
                                                 issued=days_ago(1))))


def test_receipts_are_unique_per_product(api, scheme):
    s = scheme
    created(api.post("Contract", family_contract(s, "BC01", premiums=[premium(10000, "SAME", days_ago(2))])))
    fam2, m2 = make_family(api, s.places["V1"], "5000000")
    again = contract(f"Group/{fam2}", m2["head"], [m2["head"]], s.products["BC01"], issued=days_ago(1),
                     premiums=[premium(10000, "SAME", days_ago(1))])
    refused(api.post("Contract", again), 409, expression="extension[receipt]", text="SAME")
    other_product = contract(f"Group/{fam2}", m2["head"], [m2["head"]], s.products["FC01"], issued=days_ago(1),
                             premiums=[premium(10000, "SAME", days_ago(1))])
    created(api.post("Contract", other_product))  # another product: the receipt is free there


def test_second_overlapping_policy_of_the_same_product_is_409(api, scheme):
    s = scheme
    created(api.post("Contract", family_contract(s, "BC01", issued=days_ago(30))))
    refused(api.post("Contract", family_contract(s, "BC01", issued=days_ago(2))), 409,
            expression="Contract.subject[0]", text="Contract exists")
    created(api.post("Contract", family_contract(s, "FC01", issued=days_ago(2))))  # another product is fine


def test_rights(api, client, app, scheme):
    s = scheme
    nobody = Api(client, app.tokens.issue(NOBODY[0])[0])
    refused(nobody.post("Contract", family_contract(s)), 403)
    c = created(api.post("Contract", family_contract(s)))
    refused(nobody.get(f"Contract/{c['id']}"), 403)
    refused(nobody.get(f"Coverage/{c['id']}"), 403)
    clerk = Api(client, app.tokens.issue(CLERK[0])[0])  # openIMIS Clerk: policies 101201–101205
    assert get(clerk, f"Coverage/{c['id']}")["status"] == "draft"
    assert clerk.delete(f"Contract/{c['id']}").status_code == 204


def test_coverage_is_read_only(api, scheme):
    s = scheme
    c = created(api.post("Contract", family_contract(s)))
    cov = get(api, f"Coverage/{c['id']}")
    refused(api.put(f"Coverage/{c['id']}", cov), 405)
    refused(api.delete(f"Coverage/{c['id']}"), 405)
    body = {k: v for k, v in cov.items() if k != "id"}
    refused(api.post("Coverage", body), 405)
    assert get(api, f"Coverage/{c['id']}")["meta"]["versionId"] == "1"


# --- updates ---------------------------------------------------------------------------------------------------------


def test_idle_policy_can_change_members_product_and_premiums(api, scheme):
    s = scheme
    c = created(api.post("Contract", family_contract(s, "FC01", covered=[s.head],
                                                     premiums=[premium(100, "ID-1", days_ago(2))])))
    assert net(c) == 4000 + 2000 and c["status"] == "offered"
    # more members: value recomputed (registration and assembly lump sums stay)
    asset(c)["typeReference"] = [{"reference": f"Patient/{m}"} for m in s.all_members()]
    c = put(api, c)
    assert net(c) == 4 * 4000 + 2000
    assert active(api, f"Patient/{s.head}") is False
    # a recorded premium can be corrected or removed while idle
    asset(c)["extension"] = [premium(150, "ID-1", days_ago(2))]
    c = put(api, c)
    assert asset(c)["extension"][0]["extension"][2]["valueMoney"]["value"] == 150
    # switch product (the premiums follow it), and pay the lump sum at once
    asset(c)["valuedItem"][0]["entityReference"]["reference"] = f"InsurancePlan/{s.products['BC01']}"
    asset(c)["extension"] = [premium(10000, "ID-2", days_ago(1))]
    c = put(api, c)
    assert net(c) == 10000 and c["status"] == "executed"
    cov = get(api, f"Coverage/{c['id']}")
    assert cov["class"][0]["value"] == "BC01" and cov["meta"]["versionId"] == c["meta"]["versionId"]
    assert all(active(api, f"Patient/{m}") for m in s.all_members())
    # a member dropped from an active policy: 409 (only idle policies change)
    dropped = copy.deepcopy(c)
    asset(dropped)["typeReference"] = asset(dropped)["typeReference"][:1]
    refused(api.put(f"Contract/{c['id']}", dropped), 409, expression="Contract.term[0]", text="idle")
    # a recorded premium cannot be removed or changed once active; a new one can be added
    removed = copy.deepcopy(c)
    del asset(removed)["extension"]
    refused(api.put(f"Contract/{c['id']}", removed), 409, expression="extension", text="contributions")
    changed = copy.deepcopy(c)
    asset(changed)["extension"] = [premium(9000, "ID-2", days_ago(1))]
    refused(api.put(f"Contract/{c['id']}", changed), 409)
    asset(c)["extension"].append(premium(5, "ID-3", days_ago(0), category="P"))
    c = put(api, c)
    assert len(asset(c)["extension"]) == 2
    # the enrolled family cannot change
    fam2, _ = make_family(api, s.places["V1"], "6000000")
    moved = copy.deepcopy(c)
    moved["subject"] = [{"reference": f"Group/{fam2}"}]
    refused(api.put(f"Contract/{c['id']}", moved), 409, expression="Contract.subject[0]")


def test_suspend_and_reactivate(api, scheme):
    s = scheme
    c = created(api.post("Contract", family_contract(s, premiums=[premium(10000, "SU-1", days_ago(2))])))
    assert active(api, f"Group/{s.family}")
    # sending back what was read asks nothing
    same = put(api, c)
    assert policy_status(same) == "active"
    c = same
    c["extension"] = [{"url": HIFHIR_EXT + "policy-status", "valueCode": "suspended"}]
    c = put(api, c)
    assert policy_status(c) == "suspended" and c["status"] == "executed"  # it did take effect
    assert get(api, f"Coverage/{c['id']}")["status"] == "cancelled"
    assert not active(api, f"Patient/{s.head}") and not active(api, f"Group/{s.family}")
    # payments do not reactivate a suspended policy
    asset(c)["extension"].append(premium(10, "SU-2", days_ago(1)))
    c = put(api, c)
    assert policy_status(c) == "suspended"
    c["extension"][0]["valueCode"] = "active"
    c = put(api, c)
    assert policy_status(c) == "active" and effective(c) == days_ago(2)
    assert get(api, f"Coverage/{c['id']}")["status"] == "active"
    assert active(api, f"Patient/{s.head}")
    # idle → active cannot be asked: contributions do it
    idle = created(api.post("Contract", family_contract(s, "FC01")))
    idle["extension"] = [{"url": HIFHIR_EXT + "policy-status", "valueCode": "active"}]
    refused(api.put(f"Contract/{idle['id']}", idle), 409, expression="policy-status", text="contributions")
    idle["extension"][0]["valueCode"] = "expired"
    refused(api.put(f"Contract/{idle['id']}", idle), 422, expression="policy-status")
    # a suspended policy whose contributions do not cover the value is not reactivated
    idle["extension"][0]["valueCode"] = "suspended"
    idle = put(api, idle)
    assert policy_status(idle) == "suspended" and idle["status"] == "offered"
    assert get(api, f"Coverage/{idle['id']}")["status"] == "cancelled"
    idle["extension"][0]["valueCode"] = "active"
    refused(api.put(f"Contract/{idle['id']}", idle), 409, text="cover")


def test_delete_only_while_idle(api, engine, scheme):
    s = scheme
    paid = created(api.post("Contract", family_contract(s, "BC01", premiums=[premium(10000, "DE-1", days_ago(1))])))
    refused(api.delete(f"Contract/{paid['id']}"), 409, text="idle")
    idle = created(api.post("Contract", family_contract(s, "FC01", premiums=[premium(10, "DE-2", days_ago(1))])))
    assert api.delete(f"Contract/{idle['id']}").status_code == 204
    assert api.get(f"Contract/{idle['id']}").status_code == 410
    assert api.get(f"Coverage/{idle['id']}").status_code == 410
    assert ids(get(api, f"Coverage?beneficiary=Patient/{s.head}")) == {paid["id"]}
    # its receipt is free again, and a new policy of that product is no longer "existing"
    again = created(api.post("Contract", family_contract(s, "FC01", premiums=[premium(10, "DE-2", days_ago(1))])))
    assert again["id"] != idle["id"]
    assert active(api, f"Patient/{s.head}")  # the BC01 policy still covers them
    refused(api.put(f"Contract/{idle['id']}", idle), 409, text="deleted")


def test_history_of_contract_and_coverage_move_together(api, scheme):
    s = scheme
    c = created(api.post("Contract", family_contract(s)))
    asset(c)["extension"] = [premium(10000, "HI-1", days_ago(1))]
    put(api, c)
    h = get(api, f"Contract/{c['id']}/_history")
    hc = get(api, f"Coverage/{c['id']}/_history")
    assert [e["resource"]["meta"]["versionId"] for e in h["entry"]] == ["2", "1"]
    assert [e["resource"]["status"] for e in hc["entry"]] == ["active", "draft"]
    assert get(api, f"Coverage/{c['id']}/_history/1")["status"] == "draft"


# --- formal sector ---------------------------------------------------------------------------------------------------


def policy_holder_org(code: str, village_id: str) -> dict[str, Any]:
    res = load_example("Organization-MyTradePolicyHolder")
    del res["id"]
    res["identifier"] = [ident(code)]
    res["address"][0]["extension"][1]["valueReference"]["reference"] = f"Location/{village_id}"
    return res


def test_formal_sector_contract(api, scheme):
    s = scheme
    holder = created(api.post("Organization", policy_holder_org("PH01", s.places["V1"])))["id"]
    workers = [s.members["spouse"], s.members["child1"]]
    body = contract(f"Organization/{holder}", workers[0], workers, s.products["BC01"], issued=days_ago(3),
                    scope="formal", premiums=[premium(10000, "FO-1", days_ago(3))])
    c = created(api.post("Contract", body))
    valid(c)
    assert c["subject"] == [{"reference": f"Organization/{holder}"}]
    assert c["scope"]["coding"][0]["code"] == "formal" and c["status"] == "executed"
    cov = valid(get(api, f"Coverage/{c['id']}"))
    assert cov["payor"] == [{"reference": f"Organization/{holder}"}]
    assert "policyHolder" not in cov and cov["beneficiary"] == {"reference": f"Patient/{workers[0]}"}
    assert active(api, f"Patient/{workers[0]}") and not active(api, f"Patient/{s.head}")
    # the same insuree on an overlapping policy of the product: 409
    again = contract(f"Organization/{holder}", workers[1], [workers[1]], s.products["BC01"], issued=days_ago(1),
                     scope="formal")
    refused(api.post("Contract", again), 409, expression="typeReference", text="Contract exists")
    # a Group subject with the formal scope is refused
    wrong = contract(f"Group/{s.family}", s.head, [s.head], s.products["BC01"], issued=days_ago(1), scope="formal")
    refused(api.post("Contract", wrong), 422, expression="Contract.subject[0]")
    assert ids(get(api, f"Coverage?payor=Organization/{holder}")) == {c["id"]}
    assert ids(get(api, f"Contract?subject=Organization/{holder}")) == {c["id"]}


# --- search -----------------------------------------------------------------------------------------------------------


def test_search_contracts_and_coverages(api, scheme):
    s = scheme
    paid = created(api.post("Contract", family_contract(s, "BC01", issued=days_ago(40),
                                                        premiums=[premium(10000, "SE-1", days_ago(40))])))
    idle = created(api.post("Contract", family_contract(s, "FC01", covered=[s.head], issued=days_ago(5))))
    fam2, m2 = make_family(api, s.places["V1"], "7000000")
    other = created(api.post("Contract", contract(f"Group/{fam2}", m2["head"], [m2["head"]], s.products["BC01"],
                                                  issued=days_ago(5))))
    every = {paid["id"], idle["id"], other["id"]}

    def contracts(query: str) -> set[str]:
        return ids(get(api, f"Contract?{query}"))

    def coverages(query: str) -> set[str]:
        return ids(get(api, f"Coverage?{query}"))

    assert contracts(f"patient=Patient/{s.members['child1']}") == {paid["id"]}
    assert contracts(f"patient={s.head}") == {paid["id"], idle["id"]}
    assert contracts(f"subject=Group/{s.family}") == {paid["id"], idle["id"]}
    assert contracts(f"subject:Group={fam2}") == {other["id"]}
    assert contracts(f"author=Practitioner/{s.officer}") == {paid["id"], idle["id"]}
    assert contracts("status=executed") == {paid["id"]}
    assert contracts("status=http://hl7.org/fhir/contract-status|offered") == {idle["id"], other["id"]}
    assert contracts("policy-status=active") == {paid["id"]}
    assert contracts("policy-status=idle") == {idle["id"], other["id"]}
    assert contracts(f"issued={days_ago(40)}") == {paid["id"]}
    assert contracts(f"issued=gt{days_ago(10)}") == {idle["id"], other["id"]}
    assert contracts(f"product=InsurancePlan/{s.products['BC01']}") == {paid["id"], other["id"]}
    assert contracts(f"identifier={paid['id']}") == {paid["id"]}
    assert contracts(f"beneficiary=Patient/{m2['head']}") == {other["id"]}
    assert contracts(f"_lastUpdated=gt{days_ago(1)}") == every
    refused(api.get("Contract?subject=Location/x"), 400)

    assert coverages(f"beneficiary=Patient/{s.head}") == {paid["id"], idle["id"]}
    assert coverages(f"beneficiary=Patient/{s.members['child1']}") == set()
    assert coverages(f"patient=Patient/{s.members['child1']}") == {paid["id"]}  # a covered member
    assert coverages(f"policy-holder=Patient/{m2['head']}") == {other["id"]}
    assert coverages(f"payor=Patient/{s.head}") == {paid["id"], idle["id"]}
    assert coverages("status=active") == {paid["id"]}
    assert coverages("status=draft") == {idle["id"], other["id"]}
    assert coverages("status=cancelled") == set()
    assert coverages("class-value=BC01") == {paid["id"], other["id"]}
    assert coverages("class-value:not=BC01") == {idle["id"]}
    assert coverages(f"period=ge{days_ago(0)}") == every
    assert coverages(f"period=lt{days_ago(39)}") == {paid["id"]}
    assert coverages(f"identifier={idle['id']}") == {idle["id"]}
    assert coverages(f"identifier=UUID|{idle['id']}") == {idle["id"]}
    assert coverages(f"_lastUpdated=gt{days_ago(1)}") == every

    included = get(api, f"Coverage?_id={paid['id']}&_include=Coverage:beneficiary&_include=Coverage:payor")
    types = sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in included["entry"])
    assert types == sorted([f"Coverage/{paid['id']}", f"Patient/{s.head}"])
    rev = get(api, f"Patient?_id={s.members['child1']}&_revinclude=Contract:patient&_revinclude=Coverage:patient")
    assert {e["resource"]["id"] for e in rev["entry"]} == {s.members["child1"], paid["id"]}
    assert {e["resource"]["resourceType"] for e in rev["entry"]} == {"Patient", "Contract", "Coverage"}
    chained = get(api, "Coverage?beneficiary.identifier=10000000")
    assert ids(chained) == {paid["id"], idle["id"]}


def test_paid_before_its_start_covers_from_the_start(api, engine, scheme):
    """Patient.active means covered today: a policy paid ahead of its cycle start makes its members active when
    the start arrives (the calendar job, with the same definition, flips them then)."""
    from hifhir.jobs import refresh_coverage_flags

    s = scheme
    start = date.fromordinal(TODAY.toordinal() + 20)
    product = make_product(api, "CY03", s.places["R1"], lump_sum=1000, threshold=10, member_count=10,
                           extensions=cycles(f"{start.day:02d}-{start.month:02d}"))
    c = created(api.post("Contract", contract(f"Group/{s.family}", s.head, [s.head], product, issued=days_ago(1),
                                              premiums=[premium(1000, "CY-1", days_ago(1))])))
    assert c["status"] == "executed" and policy_status(c) == "active" and effective(c) == start.isoformat()
    assert not active(api, f"Patient/{s.head}") and not active(api, f"Group/{s.family}")
    assert refresh_coverage_flags(engine, today=start) == 1
    assert active(api, f"Patient/{s.head}") and active(api, f"Group/{s.family}")


def test_openimis_alias_accepts_business_codes_in_references(api, scheme):
    """openIMIS clients put codes where ids belong (insurance numbers, family and product codes); the compatible
    base path resolves them (kind.WriteContext.resolve, lenient)."""
    s = scheme
    body = contract("Group/10000000", "10000000", ["10000000", "10000001"], "BC01", issued=days_ago(2),
                    premiums=[premium(10000, "AL-1", days_ago(2))])
    c = created(api.as_alias().post("Contract", body))
    assert c["subject"] == [{"reference": f"Group/{s.family}"}]
    assert [r["reference"] for r in asset(c)["typeReference"]] == [f"Patient/{s.head}",
                                                                    f"Patient/{s.members['spouse']}"]
    assert asset(c)["valuedItem"][0]["entityReference"]["reference"] == f"InsurancePlan/{s.products['BC01']}"
    assert c["status"] == "executed"
    refused(api.post("Contract", body), 422, expression="Contract.subject[0]")  # /fhir/ is strict


def test_renaming_the_product_re_versions_its_coverages(api, scheme):
    c = created(api.post("Contract", family_contract(scheme, premiums=[premium(10000, "RC-R", days_ago(1))])))
    before = get(api, f"Coverage/{c['id']}")
    plan = get(api, f"InsurancePlan/{scheme.products['BC01']}")
    plan["name"] = "Basic Cover Ultha"
    put(api, plan)
    after = get(api, f"Coverage/{c['id']}")
    assert after["class"][0]["name"] == "Basic Cover Ultha"
    assert int(after["meta"]["versionId"]) == int(before["meta"]["versionId"]) + 1


def test_the_officer_must_work_in_the_familys_district(api, engine, scheme):
    from tests.builders_practitioner import enrolment_officer

    far = created(api.post("Practitioner", enrolment_officer("E00999", district_id=scheme.places["D2"])))["id"]
    before = counts(engine)
    body = family_contract(scheme, premiums=[premium(10000, "RC-F", days_ago(1))])
    body["author"] = {"reference": f"Practitioner/{far}"}
    refused(api.post("Contract", body), 422, expression="Contract.author", text="another district")
    assert counts(engine) == before
    created(api.post("Contract", family_contract(scheme, premiums=[premium(10000, "RC-F", days_ago(1))])))


# --- the contribution invoice follows its Contract -----------------------------------------------------------------


def invoice_of_contract(api: Api, engine: Any, contract_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        invoice_id = conn.execute(
            select(tables.invoice.c.id).join(tables.policy, tables.policy.c.pk == tables.invoice.c.policy_pk)
            .where(tables.policy.c.id == contract_id)).scalar_one()
    return get(api, f"Invoice/{invoice_id}")


def amount_paid(inv: dict[str, Any]) -> Any:
    return next((e["valueMoney"]["value"] for e in inv.get("extension", []) if e["url"].endswith("amount-paid")),
                None)


def test_a_contribution_added_with_the_contract_pays_its_invoice_which_takes_no_second_payment(api, engine, scheme):
    from tests.http.test_payments import notice

    c = created(api.post("Contract", family_contract(scheme, "BC01", issued=days_ago(10))))
    inv = invoice_of_contract(api, engine, c["id"])
    assert (inv["status"], inv["totalGross"]["value"], amount_paid(inv)) == ("issued", 10000, None)

    asset(c)["extension"] = [premium(10000, "RC-1", days_ago(1))]
    c = put(api, c)
    assert c["status"] == "executed"
    inv = invoice_of_contract(api, engine, c["id"])
    assert (inv["status"], amount_paid(inv), inv["meta"]["versionId"]) == ("balanced", 10000, "2")

    with engine.connect() as conn:
        premiums_before = conn.execute(select(func.count()).select_from(tables.premium)).scalar_one()
    refused(api.post("PaymentNotice", notice(f"Invoice/{inv['id']}", 10000, "TX-AGAIN")), 422,
            text="Over-payment")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.premium)).scalar_one() == premiums_before


def test_an_idle_policys_invoice_follows_its_value_and_contributions(api, engine, scheme):
    s = scheme
    c = created(api.post("Contract", family_contract(s, "FC01", covered=[s.head],
                                                     premiums=[premium(1000, "IN-1", days_ago(2))])))
    inv = invoice_of_contract(api, engine, c["id"])
    assert (inv["totalGross"]["value"], amount_paid(inv), inv["status"]) == (6000, 1000, "issued")

    asset(c)["typeReference"] = [{"reference": f"Patient/{m}"} for m in s.all_members()]
    asset(c)["extension"] = [premium(1500, "IN-1", days_ago(2))]  # corrected while idle
    c = put(api, c)
    assert net(c) == 18000 and c["status"] == "offered"
    inv = invoice_of_contract(api, engine, c["id"])
    assert (inv["totalGross"]["value"], inv["totalNet"]["value"], amount_paid(inv)) == (18000, 18000, 1500)
    assert inv["lineItem"][0]["priceComponent"][0]["amount"]["value"] == 18000
    assert (inv["status"], inv["meta"]["versionId"]) == ("issued", "2")

    put(api, c)  # sent back as read: nothing changes, the invoice keeps its version
    assert invoice_of_contract(api, engine, c["id"])["meta"]["versionId"] == "2"


# --- expiry, which only the calendar brings ------------------------------------------------------------------------


def test_an_active_policy_reads_expired_once_the_job_sees_its_expiry_pass(api, engine, scheme, monkeypatch):
    from datetime import timedelta

    from hifhir.fhir.profiles import contract as contract_profile
    from hifhir.fhir.profiles import coverage as coverage_profile
    from hifhir.jobs import refresh_coverage_flags

    c = created(api.post("Contract", family_contract(scheme, "BC01", issued=days_ago(30),
                                                     premiums=[premium(10000, "EX-1", days_ago(29))])))
    assert (c["status"], policy_status(c)) == ("executed", "active")
    refresh_coverage_flags(engine, date.today())  # the day's run: nothing has expired
    day_after = date.fromisoformat(period(c)[1]) + timedelta(days=1)
    for module in (contract_profile, coverage_profile):
        monkeypatch.setattr(module, "today", lambda: day_after)

    refresh_coverage_flags(engine, day_after)

    now = get(api, f"Contract/{c['id']}")
    assert policy_status(now) == "expired"
    assert now["meta"]["versionId"] == str(int(c["meta"]["versionId"]) + 1)
    cov = get(api, f"Coverage/{c['id']}")
    policy_status_coding = next(e["valueCodeableConcept"]["coding"][0]["code"] for e in cov["extension"]
                                if e["url"].endswith("coverage-policy-status"))
    assert (cov["status"], policy_status_coding) == ("active", "expired")  # IG mapping: expired → active
    found = get(api, "Contract?policy-status=expired")
    assert [policy_status(e["resource"]) for e in found["entry"]] == ["expired"]
    refresh_coverage_flags(engine, day_after)  # idempotent: the same day's second run re-versions nothing
    assert get(api, f"Contract/{c['id']}")["meta"]["versionId"] == now["meta"]["versionId"]
