"""Eligibility enquiries (domain §3.2, IG rows 17–18): POST CoverageEligibilityRequest answers 200 with the
CoverageEligibilityResponse, stored and readable afterwards; no policy, expired policy, waiting period, exhausted
limits, unknown codes, deductibles and ceilings left."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from hifhir.domain.policy import add_months
from hifhir.fhir.registry import KINDS
from hifhir.store.tables import POLICY_IDLE, POLICY_SUSPENDED, eligibility_enquiry
from tests.builders_eligibility import (
    Places,
    enquiry,
    insert_claim,
    insert_ded_rem,
    insert_policy,
    new_insuree,
    new_item,
    new_product,
    new_service,
    places,
)
from tests.builders_medical import assert_valid
from tests.conftest import CLERK, NOBODY, Api, load_example

REQ, RESP = "CoverageEligibilityRequest", "CoverageEligibilityResponse"
BENEFIT_TYPE = "https://openimis.github.io/openimis_fhir_r4_ig/CodeSystem/coverage-item-benefit-type"
TODAY = date.today()


# --- helpers ------------------------------------------------------------------------------------------------


def answered(resp: Any) -> dict[str, Any]:
    """A 200 CoverageEligibilityResponse that passes its IG profile (as corrected)."""
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["resourceType"] == RESP
    return assert_valid(body)


def refused(resp: Any, *statuses: int, expression: str | None = None) -> dict[str, Any]:
    assert resp.status_code in statuses, f"{resp.status_code}: {resp.text}"
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    assert len(body["issue"][0].get("diagnostics", "")) > 10, body
    if expression is not None:
        exprs = [e for i in body["issue"] for e in i.get("expression", [])]
        assert any(expression in e for e in exprs), body
    return body


def ask(api: Any, patient_ref: str, **kw: Any) -> dict[str, Any]:
    return answered(api.post(REQ, enquiry(patient_ref, **kw)))


def package(insurance: dict[str, Any]) -> dict[str, Any]:
    """The benefit package item's benefits by type code → allowed value (int, or the money value)."""
    item = next(i for i in insurance["item"] if i["category"]["coding"][0]["code"] == "benefit")
    out: dict[str, Any] = {}
    for b in item.get("benefit", []):
        code = b["type"]["coding"][0]["code"]
        out[code] = b["allowedUnsignedInt"] if "allowedUnsignedInt" in b else b["allowedMoney"]["value"]
    return {"name": item["name"], "description": item["description"], "benefits": out}


def line(insurance: dict[str, Any], kind: str) -> dict[str, Any]:
    """The item or service line: excluded, description, and its benefits by code."""
    found = [i for i in insurance["item"] if i["category"]["coding"][0]["code"] == kind]
    assert len(found) == 1, insurance
    item = found[0]
    benefits = {}
    for b in item.get("benefit", []):
        coding = b["type"]["coding"][0]
        assert coding["system"] == BENEFIT_TYPE
        benefits[coding["code"]] = b.get("allowedString", b.get("allowedUnsignedInt"))
    return {"code": item["productOrService"]["text"], "excluded": item["excluded"],
            "description": item.get("description"), "benefits": benefits}


@dataclass
class World:
    places: Places
    adult: dict[str, Any]  # Patient, born 1990
    child: dict[str, Any]  # Patient, five years old
    consult: str  # ActivityDefinition A1 (category C)
    surgery: str  # ActivityDefinition S1 (category S)
    general: str  # ActivityDefinition G1 (no category)
    aspirin: str  # Medication 0001
    bandage: str  # Medication 0002 (covered by no product)


@pytest.fixture
def world(api: Any) -> World:
    p = places(api)
    child_birth = date(TODAY.year - 5, 1, 1).isoformat()
    return World(
        p, new_insuree(api, p, "100000001"), new_insuree(api, p, "100000002", child_birth),
        new_service(api, "A1", "C"), new_service(api, "S1", "S"), new_service(api, "G1"),
        new_item(api, "0001"), new_item(api, "0002"),
    )


def basic_product(api: Any, w: World, **kw: Any) -> dict[str, Any]:
    services = kw.pop("services", {w.consult: {}, w.surgery: {}, w.general: {}})
    items = kw.pop("items", {w.aspirin: {}})
    return new_product(api, kw.pop("code", "BASIC"), w.places.region, services=services, items=items, **kw)


# --- no coverage --------------------------------------------------------------------------------------------


def test_insuree_without_policy_gets_a_response_without_insurance(api, world):
    request_uuid = "0f4c7d6e-1b2a-4c3d-9e8f-0a1b2c3d4e5f"
    resp = api.post(REQ, enquiry(f"Patient/{world.adult['id']}", service="A1", request_uuid=request_uuid))
    body = answered(resp)
    assert "insurance" not in body
    assert body["identifier"][0]["value"] == request_uuid
    assert body["identifier"][0]["type"]["coding"][0]["code"] == "UUID"
    assert (body["status"], body["purpose"], body["outcome"]) == ("active", ["benefits"], "complete")
    assert body["patient"] == {"reference": f"Patient/{world.adult['id']}"}
    assert body["request"] == {"reference": f"{REQ}/{request_uuid}"}
    assert body["insurer"] == {"reference": "Organization/openIMIS-Implementation"}
    assert body["created"] == TODAY.isoformat()
    assert body["id"] == request_uuid and body["meta"]["versionId"] == "1"  # one enquiry, one id per type
    assert resp.headers["Location"].endswith(f"/{RESP}/{body['id']}/_history/1")


@pytest.mark.parametrize("case", ["expired", "idle", "suspended", "member-not-effective"])
def test_policies_that_do_not_cover_today(api, engine, world, case):
    product = basic_product(api, world)
    patient = world.adult["id"]
    if case == "expired":  # expired is never stored: the expiry date has passed, the status still says active
        insert_policy(engine, product["id"], [patient], effective=TODAY - timedelta(days=400),
                      expiry=TODAY - timedelta(days=1))
    elif case == "idle":
        insert_policy(engine, product["id"], [patient], status=POLICY_IDLE)
    elif case == "suspended":
        insert_policy(engine, product["id"], [patient], status=POLICY_SUSPENDED)
    else:
        insert_policy(engine, product["id"], [patient], member_effective={patient: None})
    body = ask(api, f"Patient/{patient}", service="A1")
    assert "insurance" not in body


def test_a_policy_expiring_today_still_covers(api, engine, world):
    product = basic_product(api, world)
    insert_policy(engine, product["id"], [world.adult["id"]], effective=TODAY - timedelta(days=364), expiry=TODAY)
    body = ask(api, f"Patient/{world.adult['id']}", service="A1")
    assert len(body["insurance"]) == 1
    assert line(body["insurance"][0], "service")["excluded"] is False


# --- covered ------------------------------------------------------------------------------------------------


def test_active_policy_covers_the_service_and_item_with_counters_including_zeros(api, engine, world):
    product = basic_product(
        api, world,
        services={world.consult: {"maxQuantityAdult": 5}, world.surgery: {}, world.general: {}},
        items={world.aspirin: {"maxQuantityAdult": 30}},
        ceilings={"maxNoConsultation": 4, "maxNoSurgery": 0, "maxNoHospitalization": 2, "maxNoVisits": 10,
                  "maxAmountConsultation": 150, "maxAmountSurgery": 0, "maxAmountDelivery": 1500.5})
    rows = insert_policy(engine, product["id"], [world.adult["id"]])
    body = ask(api, f"Patient/{world.adult['id']}", service="A1", item="0001")
    [insurance] = body["insurance"]
    assert insurance["coverage"] == {"reference": f"Coverage/{rows.coverage_id}"}
    effective = (TODAY - timedelta(days=30)).isoformat()
    assert insurance["benefitPeriod"] == {"start": effective,
                                          "end": (TODAY - timedelta(days=30) + timedelta(days=364)).isoformat()}
    assert package(insurance) == {
        "name": "BASIC", "description": "Product BASIC",
        "benefits": {
            # zero balances are reported; categories without a maximum (deliveries, antenatal) are unlimited
            "admissions_left": 2, "visits_left": 10, "consultations_left": 4, "surgeries_left": 0,
            "consultation_amount": 150, "surgery_amount": 0, "delivery_amount": 1500.5,
        },
    }
    # Each line carries its own values: the service's limit (5) on the service, the item's (30) on the item.
    assert line(insurance, "service") == {"code": "A1", "excluded": False, "description": None,
                                          "benefits": {"min_date_item": effective, "item_left": 5}}
    assert line(insurance, "item") == {"code": "0001", "excluded": False, "description": None,
                                       "benefits": {"min_date_item": effective, "item_left": 30}}


def test_an_unlimited_line_has_no_quantity_left(api, engine, world):
    product = basic_product(api, world)
    insert_policy(engine, product["id"], [world.adult["id"]])
    body = ask(api, f"Patient/{world.adult['id']}", service="G1")
    service = line(body["insurance"][0], "service")
    assert service["excluded"] is False and set(service["benefits"]) == {"min_date_item"}
    assert "benefit" not in next(i for i in body["insurance"][0]["item"]
                                 if i["category"]["coding"][0]["code"] == "benefit")


def test_one_insurance_per_active_policy(api, engine, world):
    first = basic_product(api, world, code="FIRST")
    second = basic_product(api, world, code="SECOND", services={world.general: {}}, items={})
    a = insert_policy(engine, first["id"], [world.adult["id"]], effective=TODAY - timedelta(days=60))
    b = insert_policy(engine, second["id"], [world.adult["id"]])
    body = ask(api, f"Patient/{world.adult['id']}", service="A1")
    assert [i["coverage"]["reference"] for i in body["insurance"]] == [f"Coverage/{a.coverage_id}",
                                                                       f"Coverage/{b.coverage_id}"]
    assert line(body["insurance"][0], "service")["excluded"] is False
    not_covered = line(body["insurance"][1], "service")
    assert not_covered["excluded"] is True and not_covered["benefits"] == {}
    assert not_covered["description"] == "Not covered by product SECOND"


# --- waiting period -------------------------------------------------------------------------------------------


def test_waiting_period_not_reached_excludes_the_line(api, engine, world):
    product = basic_product(api, world, services={world.consult: {"waitingPeriodAdult": 6, "waitingPeriodChild": 1}},
                            items={world.aspirin: {"waitingPeriodAdult": 1}})
    effective = TODAY - timedelta(days=40)
    insert_policy(engine, product["id"], [world.adult["id"], world.child["id"]], effective=effective)
    body = ask(api, f"Patient/{world.adult['id']}", service="A1", item="0001")
    service = line(body["insurance"][0], "service")
    min_date = add_months(effective, 6).isoformat()
    assert service["excluded"] is True
    assert service["benefits"] == {"min_date_item": min_date}
    assert service["description"] == f"Waiting period until {min_date}"
    item = line(body["insurance"][0], "item")  # one month waited already: covered
    assert item["excluded"] is False and item["benefits"] == {"min_date_item": add_months(effective, 1).isoformat()}
    # a child waits the child period (one month): covered
    child = line(ask(api, f"Patient/{world.child['id']}", service="A1")["insurance"][0], "service")
    assert child["excluded"] is False and child["benefits"]["min_date_item"] == add_months(effective, 1).isoformat()


# --- exhausted limits -------------------------------------------------------------------------------------------


def test_exhausted_quantity_limit(api, engine, world):
    product = basic_product(api, world, services={world.general: {"maxQuantityAdult": 3}},
                            items={world.aspirin: {"maxQuantityAdult": 10}})
    insert_policy(engine, product["id"], [world.adult["id"]])
    hf, me = world.places.facility, world.adult["id"]
    insert_claim(engine, hf, me, services=[("G1", 2)], items=[("0001", 4)])  # valuated
    insert_claim(engine, hf, me, status=4, services=[("G1", 5)], approved=1)  # checked, 1 approved of 5
    insert_claim(engine, hf, me, status=2, services=[("G1", 9)], items=[("0001", 9)])  # entered: not counted
    insert_claim(engine, hf, me, status=1, services=[("G1", 9)])  # rejected claim: not counted
    insert_claim(engine, hf, me, services=[("G1", 9)], items=[("0001", 9)], line_status=2)  # rejected lines
    insert_claim(engine, hf, me, day=TODAY - timedelta(days=90), services=[("G1", 9)])  # before the policy
    body = ask(api, f"Patient/{me}", service="G1", item="0001")
    service = line(body["insurance"][0], "service")
    assert service["excluded"] is True and service["benefits"]["item_left"] == 0
    assert service["description"] == "Quantity limit reached"
    item = line(body["insurance"][0], "item")
    assert item["excluded"] is False and item["benefits"]["item_left"] == 6


def test_exhausted_category_maximum(api, engine, world):
    product = basic_product(api, world, ceilings={"maxNoSurgery": 1, "maxNoConsultation": 3})
    insert_policy(engine, product["id"], [world.adult["id"]])
    me = world.adult["id"]
    insert_claim(engine, world.places.facility, me, category="S", services=[("S1", 1)])
    insert_claim(engine, world.places.facility, me, category="C", services=[("A1", 1)])
    insert_claim(engine, world.places.facility, me, category="C", status=2, services=[("A1", 1)])  # entered
    body = ask(api, f"Patient/{me}", service="S1")
    assert package(body["insurance"][0])["benefits"] == {"surgeries_left": 0, "consultations_left": 2}
    surgery = line(body["insurance"][0], "service")
    assert surgery["excluded"] is True and surgery["description"] == "No surgeries left"
    consult = line(ask(api, f"Patient/{me}", service="A1")["insurance"][0], "service")
    assert consult["excluded"] is False


def test_a_zero_category_amount_excludes_services_of_that_category(api, engine, world):
    product = basic_product(api, world, ceilings={"maxAmountConsultation": 0})
    insert_policy(engine, product["id"], [world.adult["id"]])
    body = ask(api, f"Patient/{world.adult['id']}", service="A1")
    consult = line(body["insurance"][0], "service")
    assert consult["excluded"] is True and consult["description"] == "No consultation amount"


def test_delivery_antenatal_and_hospitalisation_counters_and_amounts_left(api, engine, world):
    delivery = new_service(api, "DLV1", "D")
    antenatal = new_service(api, "ANC1", "A")
    product = basic_product(
        api, world, services={delivery: {}, antenatal: {}, world.general: {}},
        ceilings={"maxNoDelivery": 3, "maxNoAntenatal": 6, "maxNoHospitalization": 2,
                  "maxAmountDelivery": 800, "maxAmountAntenatal": 120.5, "maxAmountHospitalization": 2500})
    insert_policy(engine, product["id"], [world.adult["id"]])
    hf, me = world.places.facility, world.adult["id"]
    insert_claim(engine, hf, me, category="D", services=[("DLV1", 1)])
    insert_claim(engine, hf, me, category="A", services=[("ANC1", 1)])
    insert_claim(engine, hf, me, category="A", status=8, services=[("ANC1", 1)])  # processed: counted too
    insert_claim(engine, hf, me, category="H", status=4, services=[("G1", 3)])  # checked: counted
    insert_claim(engine, hf, me, category="D", status=2, services=[("DLV1", 1)])  # entered: not counted
    insert_claim(engine, hf, me, category="H", services=[("G1", 1)], line_status=2)  # no passed line: not counted

    body = ask(api, f"Patient/{me}", service="DLV1")

    assert package(body["insurance"][0])["benefits"] == {
        "deliveries_left": 2,  # 3 − 1
        "antenatal_left": 4,  # 6 − 2
        "admissions_left": 1,  # 2 − 1
        # the maximum amounts per claim of the category, not reduced by earlier claims (domain §3.2.1)
        "delivery_amount": 800, "antenatal_amount": 120.5, "hospitalization_amount": 2500,
    }
    assert line(body["insurance"][0], "service")["excluded"] is False  # a delivery is left


# --- deductibles and ceilings ------------------------------------------------------------------------------------


def test_deductibles_and_ceilings_left(api, engine, world):
    product = basic_product(api, world, threshold=1, ceilings={
        "dedInsuree": 100, "maxPolicy": 1000, "maxPolicyExtraMember": 200, "maxCeilingPolicy": 1150,
        "maxIpTreatment": 500, "dedOpPolicy": 50})
    rows = insert_policy(engine, product["id"], [world.adult["id"], world.child["id"]])
    me, sibling = world.adult["id"], world.child["id"]
    mine = insert_claim(engine, world.places.facility, me, services=[("G1", 1)])
    theirs = insert_claim(engine, world.places.facility, sibling, services=[("G1", 1)])
    insert_ded_rem(engine, mine, rows.pk, me, ded_g=40, rem_g=300, ded_op=20)
    insert_ded_rem(engine, theirs, rows.pk, sibling, ded_g=70, rem_g=900, ded_op=45)
    benefits = package(ask(api, f"Patient/{me}")["insurance"][0])["benefits"]
    assert benefits == {
        "total_deduction": 60,  # per insuree: 100 − my 40
        "non_hospital_deduction": 0,  # per policy: 50 − (20 + 45), zero included
        "total_ceiling": 0,  # per policy: 1000 + 1 extra member × 200, capped at 1150, − (300 + 900)
        "hospital_ceiling": 500,  # per treatment: as is
    }


# --- unknown codes, references --------------------------------------------------------------------------------------


def test_unknown_codes_are_reported_on_their_line(api, engine, world):
    product = basic_product(api, world)
    insert_policy(engine, product["id"], [world.adult["id"]])
    body = ask(api, f"Patient/{world.adult['id']}", service="NOPE", item="0002")
    service = line(body["insurance"][0], "service")
    assert service == {"code": "NOPE", "excluded": True, "description": "Unknown service code 'NOPE'",
                       "benefits": {}}
    item = line(body["insurance"][0], "item")  # a known item the product does not cover
    assert item["excluded"] is True and item["description"] == "Not covered by product BASIC"


def test_an_unknown_item_code_is_reported_on_the_item_line_alone(api, engine, world):
    product = basic_product(api, world)
    insert_policy(engine, product["id"], [world.adult["id"]])
    body = ask(api, f"Patient/{world.adult['id']}", service="A1", item="NOPE9")
    item = line(body["insurance"][0], "item")
    assert item == {"code": "NOPE9", "excluded": True, "description": "Unknown item code 'NOPE9'", "benefits": {}}
    service = line(body["insurance"][0], "service")  # the known service beside it is still covered
    assert service["code"] == "A1" and service["excluded"] is False and service["description"] is None


def test_the_patient_may_be_named_by_insurance_number(api, engine, world):
    product = basic_product(api, world)
    insert_policy(engine, product["id"], [world.adult["id"]])
    body = ask(api, "Patient/100000001", service="A1")
    assert body["patient"] == {"reference": f"Patient/{world.adult['id']}"}
    assert len(body["insurance"]) == 1
    request = api.get(body["request"]["reference"]).json()
    assert request["patient"] == {"reference": f"Patient/{world.adult['id']}"}  # stored by id
    # as the reference's clients do on the openIMIS-compatible base
    alias = answered(api.as_alias().post(REQ, enquiry("Patient/100000001", service="A1")))
    assert alias["patient"] == {"reference": f"Patient/{world.adult['id']}"} and len(alias["insurance"]) == 1
    # so may the identifier
    logical = enquiry("x")
    logical["patient"] = {"type": "Patient", "identifier": {"type": {"coding": [{"code": "Code"}]},
                                                           "value": "100000001"}}
    assert answered(api.post(REQ, logical))["patient"]["reference"] == f"Patient/{world.adult['id']}"


# --- stored, readable, searchable ------------------------------------------------------------------------------------


def test_response_and_request_are_readable_and_searchable_afterwards(api, engine, world):
    product = basic_product(api, world)
    insert_policy(engine, product["id"], [world.adult["id"]])
    request_uuid = "6a2d1c5e-8f7b-4e3a-9c1d-2b3a4c5d6e7f"
    body = ask(api, f"Patient/{world.adult['id']}", service="A1", request_uuid=request_uuid)
    other = ask(api, f"Patient/{world.child['id']}")

    read = api.get(f"{RESP}/{body['id']}")
    assert read.status_code == 200 and read.json() == body
    request = api.get(f"{REQ}/{request_uuid}").json()
    assert request["resourceType"] == REQ and request["id"] == request_uuid
    assert request["item"][0]["productOrService"] == {"text": "A1"}
    history = api.get(f"{RESP}/{body['id']}/_history").json()
    assert [e["resource"]["id"] for e in history["entry"]] == [body["id"]]

    def found(query: str) -> list[str]:
        r = api.get(query)
        assert r.status_code == 200, r.text
        return [e["resource"]["id"] for e in r.json().get("entry", [])]

    assert found(f"{RESP}?patient=Patient/{world.adult['id']}") == [body["id"]]
    assert found(f"{RESP}?request={REQ}/{request_uuid}") == [body["id"]]
    assert found(f"{RESP}?identifier=UUID|{request_uuid}") == [body["id"]]
    assert sorted(found(f"{RESP}?created={TODAY.isoformat()}")) == sorted([body["id"], other["id"]])
    assert found(f"{RESP}?created=lt{TODAY.isoformat()}") == []
    assert len(found(f"{RESP}?_lastUpdated=gt2020-01-01")) == 2
    assert found(f"{REQ}?patient={world.child['id']}") == [other["request"]["reference"].split("/")[1]]
    included = found(f"{RESP}?_id={body['id']}&_include={RESP}:request&_include={RESP}:patient")
    assert sorted(included) == sorted([body["id"], request_uuid, world.adult["id"]])


def test_stored_versions_render_again_from_history(api, engine, world):
    """Enquiries are immutable: re-rendering one (outside the write that answered it) gives the stored body."""
    body = ask(api, f"Patient/{world.adult['id']}", service="A1")
    request = api.get(body["request"]["reference"]).json()
    with engine.connect() as conn:
        for kind_name, res in (("eligibility-response", body), ("eligibility-request", request)):
            kind = KINDS[kind_name]
            pk = conn.execute(select(kind.table.c.pk).where(kind.table.c.id == res["id"])).scalar_one()
            assert kind.render(conn, [pk])[pk] == {k: v for k, v in res.items()
                                                   if k not in ("resourceType", "id", "meta")}


def test_a_request_uuid_used_twice_is_a_conflict_and_writes_nothing(api, engine, world):
    request_uuid = "5d0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
    for _ in range(8):  # past the driver's preparation of the statements (PostgreSQL: the insert is deferred then)
        ask(api, f"Patient/{world.adult['id']}")
    first = ask(api, f"Patient/{world.adult['id']}", request_uuid=request_uuid)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(eligibility_enquiry)).scalar_one()

    again = refused(api.post(REQ, enquiry(f"Patient/{world.child['id']}", request_uuid=request_uuid)), 409,
                    expression=f"{REQ}.identifier")

    assert again["issue"][0]["diagnostics"] == f"identifier[UUID] {request_uuid} is already used"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(eligibility_enquiry)).scalar_one() == stored
    assert api.get(f"{RESP}/{first['id']}").json() == first
    ask(api, f"Patient/{world.child['id']}")  # the next enquiry is answered


def test_requests_are_immutable_and_responses_read_only(api, world):
    body = ask(api, f"Patient/{world.adult['id']}")
    request_id = body["request"]["reference"].split("/")[1]
    request = api.get(f"{REQ}/{request_id}").json()
    refused(api.put(f"{REQ}/{request_id}", request), 405)
    refused(api.delete(f"{REQ}/{request_id}"), 405)
    response = {k: v for k, v in body.items() if k not in ("id", "meta")}
    refused(api.post(RESP, response), 405)
    refused(api.put(f"{RESP}/{body['id']}", body), 405)
    refused(api.delete(f"{RESP}/{body['id']}"), 405)
    assert api.get(f"{RESP}/{body['id']}").json() == body


# --- the IG example ------------------------------------------------------------------------------------------------


def test_ig_example_request_once_its_defects_are_corrected(api, engine, world):
    example = load_example("CoverageEligibilityRequest-JoeDoeEnquiring")
    # ig/README.md §9.6: the example codes the category in claim-item-category, not the bound
    # coverage-item-category: refused like any other profile violation.
    example["patient"] = {"reference": "Patient/100000001"}
    refused(api.post(REQ, example), 400, expression=f"{REQ}.item[0].category")
    # §9.6: and its patient `joe-doe` exists nowhere; with both fixed it is answered.
    example["item"][0]["category"]["coding"][0]["system"] = (
        "https://openimis.github.io/openimis_fhir_r4_ig/CodeSystem/coverage-item-category")
    insert_policy(engine, basic_product(api, world)["id"], [world.adult["id"]])
    body = answered(api.post(REQ, example))
    assert body["identifier"][0]["value"] == "D30F70DF-D10B-43D4-9578-5137C118AD84"
    assert line(body["insurance"][0], "service")["excluded"] is False
    # the IG's response example passes the corrected profile too
    assert_valid(load_example("CoverageEligibilityResponse-JoeDoeEnquiringResponse"))


# --- bad input, rights --------------------------------------------------------------------------------------------


def test_bad_enquiries_are_refused(api, world):
    no_patient = enquiry("x")
    del no_patient["patient"]
    refused(api.post(REQ, no_patient), 400, expression="patient")
    refused(api.post(REQ, enquiry("Patient/999999999")), 422, expression=f"{REQ}.patient")
    refused(api.post(REQ, enquiry(f"Group/{world.adult['id']}")), 422, expression=f"{REQ}.patient")
    wrong_category = enquiry(f"Patient/{world.adult['id']}", service="A1")
    wrong_category["item"][0]["category"]["coding"][0]["code"] = "benefit"
    refused(api.post(REQ, wrong_category), 400)
    no_code = enquiry(f"Patient/{world.adult['id']}", service="A1")
    del no_code["item"][0]["productOrService"]["text"]
    refused(api.post(REQ, no_code), 400)
    not_uuid = enquiry(f"Patient/{world.adult['id']}", request_uuid="not-a-uuid")
    refused(api.post(REQ, not_uuid), 422, expression=f"{REQ}.identifier")
    wrong_insurer = enquiry(f"Patient/{world.adult['id']}")
    wrong_insurer["insurer"] = {"reference": f"Organization/{world.places.facility}"}
    refused(api.post(REQ, wrong_insurer), 422, expression=f"{REQ}.insurer")
    taken = enquiry(f"Patient/{world.adult['id']}")
    answered(api.post(REQ, taken))
    refused(api.post(REQ, taken), 409)  # the same request UUID twice
    found = api.get(f"{RESP}?patient={world.adult['id']}").json()
    assert len(found.get("entry", [])) == 1  # nothing written by the refused ones


def test_rights_guard_enquiries(api, client, app, world):
    body = ask(api, f"Patient/{world.adult['id']}")
    nobody = Api(client, app.tokens.issue(NOBODY[0])[0])
    refused(nobody.post(REQ, enquiry(f"Patient/{world.adult['id']}")), 403)
    refused(nobody.get(f"{RESP}/{body['id']}"), 403)
    clerk = Api(client, app.tokens.issue(CLERK[0])[0])  # openIMIS Clerk holds 101201
    answered(clerk.post(REQ, enquiry(f"Patient/{world.adult['id']}")))
    assert clerk.get(f"{RESP}/{body['id']}").status_code == 200
