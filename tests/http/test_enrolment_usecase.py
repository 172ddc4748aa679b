"""The IG's enrolment use case end to end, as an enrolment officer's mobile app plays it (ig/README.md §6): sync the
code systems and registers, POST each member's Patient, POST the Group, POST the Contract; the payments platform
pays the contribution invoice the Contract raised (POST PaymentNotice), which activates the policy; then ask whether
a member is covered. And the same enrolment as one transaction Bundle."""

from __future__ import annotations

from typing import Any

import pytest

from hifhir.auth.users import create_user
from hifhir.store.db import transaction
from tests.builders import CS, EXT, patient
from tests.builders import group as family_group
from tests.builders_enrolment import days_ago, family_contract, make_scheme, premium, years_ago
from tests.builders_medical import activity_definition, coverage_line, medication
from tests.conftest import Api
from tests.http.test_payments import notice
from tests.http.test_terminology import user_with_rights

OFFICER_LOGIN = ("E00001", "officer-pass-1")


def ok(resp: Any, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    return resp.json()


@pytest.fixture
def officer_app(api: Any, app: Any, client: Any) -> tuple[Api, Any]:
    """The scheme as the administrator set it up, and the enrolment officer's session."""
    s = make_scheme(api)
    item = ok(api.post("Medication", medication("0001", "PARACETAMOL 500MG")), 201)["id"]
    service = ok(api.post("ActivityDefinition", activity_definition("G1", "General consultation")), 201)["id"]
    plan = api.get(f"InsurancePlan/{s.products['BC01']}").json()
    plan["extension"] += [coverage_line(f"Medication/{item}"), coverage_line(f"ActivityDefinition/{service}")]
    ok(api.put(f"InsurancePlan/{plan['id']}", plan))
    with transaction(app.engine, write=True) as conn:
        create_user(conn, OFFICER_LOGIN[0], OFFICER_LOGIN[1], roles=["Enrolment Officer"])
    login = client.post("/api/api_fhir_r4/login/", json={"username": OFFICER_LOGIN[0], "password": OFFICER_LOGIN[1]})
    return Api(client, ok(login)["token"]), s


def enquiry(patient_id: str, insurer_id: str, *, item: str, service: str) -> dict[str, Any]:
    def line(kind: str, code: str) -> dict[str, Any]:
        return {"category": {"coding": [{"system": f"{CS}coverage-item-category", "code": kind,
                                         "display": kind.capitalize()}]},
                "productOrService": {"text": code}}

    return {
        "resourceType": "CoverageEligibilityRequest",
        "meta": {"profile": ["https://openimis.github.io/openimis_fhir_r4_ig/StructureDefinition/"
                             "openimis-coverage-eligibility-request"]},
        "identifier": [{"type": {"coding": [{"system": f"{CS}openimis-identifiers", "code": "UUID"}]},
                        "value": "5f1c3a4e-8c2b-4d7e-9a1f-0b2c3d4e5f60"}],
        "status": "active", "purpose": ["benefits"], "patient": {"reference": f"Patient/{patient_id}"},
        "created": days_ago(0), "insurer": {"reference": f"Organization/{insurer_id}"},
        "item": [line("item", item), line("service", service)],
    }


def check_covered(officer: Api, patient_id: str) -> None:
    insurer = officer.get("Organization?type=ins").json()["entry"][0]["resource"]["id"]
    answer = ok(officer.post("CoverageEligibilityRequest", enquiry(patient_id, insurer, item="0001", service="G1")))
    assert answer["resourceType"] == "CoverageEligibilityResponse"
    [insurance] = answer["insurance"]
    lines = {i["category"]["coding"][0]["code"]: i for i in insurance["item"]}
    assert lines["benefit"]["name"] == "BC01"
    assert lines["item"]["productOrService"]["text"] == "0001" and lines["item"]["excluded"] is False
    assert lines["service"]["productOrService"]["text"] == "G1" and lines["service"]["excluded"] is False
    assert officer.get(f"CoverageEligibilityResponse/{answer['id']}").status_code == 200  # readable afterwards


# The code lists the enrolment forms offer (IG use case 1: "GET CodeSystem for patient-education-level,
# patient-profession, patient-identification-type(s), patient-contact-relationship, group-type(s) and
# group-confirmation-type"), served from the scheme's configuration, seeded with the IG's codes (ig/README.md §3a).
ENROLMENT_CODE_SYSTEMS = {
    "patient-education-level": ["1", "2", "3", "4", "5", "6", "7"],
    "patient-profession": ["1", "2", "3", "4"],
    "patient-identification-type": ["D", "N", "P", "V"],
    "patient-contact-relationship": ["1", "2", "3", "4", "5", "6", "7", "8"],
    "group-type": ["C", "G", "H", "O", "P", "S", "T"],
    "group-confirmation-type": ["A", "B", "C", "D"],
}


def concept(cs_id: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"{CS}{cs_id}", "code": code}]}


def coded_ext(resource: dict[str, Any], name: str) -> str | None:
    """The code of a resource's IG extension `name` (valueCodeableConcept), or of its `type` sub-extension."""
    found = next((e for e in resource.get("extension", []) if e["url"] == f"{EXT}{name}"), None)
    if found is None:
        return None
    value = found.get("valueCodeableConcept") or next(x["valueCodeableConcept"] for x in found["extension"]
                                                      if x["url"] == "type")
    return str(value["coding"][0]["code"])


def member(code: str, given: str, born: str, village: str, *, head: bool, relationship: str | None = None,
           education: str | None = None, profession: str | None = None,
           national_id: str | None = None) -> dict[str, Any]:
    """A member as the enrolment form fills it in, with codes picked from the synchronised lists."""
    body = patient(code, "Mensah", given, village, birth_date=born, head=head)
    if education:
        body["extension"].append({"url": f"{EXT}patient-education-level",
                                  "valueCodeableConcept": concept("patient-education-level", education)})
    if profession:
        body["extension"].append({"url": f"{EXT}patient-profession",
                                  "valueCodeableConcept": concept("patient-profession", profession)})
    if national_id:
        body["extension"].append({"url": f"{EXT}patient-identification", "extension": [
            {"url": "number", "valueString": national_id},
            {"url": "type", "valueCodeableConcept": concept("patient-identification-type", "N")}]})
    if relationship:
        body["contact"] = [{"relationship": [concept("patient-contact-relationship", relationship)],
                            "name": {"family": "Mensah", "given": ["Ama"]}}]
    return body


def test_enrolment_use_case_step_by_step(officer_app, app, engine, client):
    officer, s = officer_app
    # 1. synchronise the base data: the code lists of the enrolment forms, then the registers
    served = {e["resource"]["id"] for e in ok(officer.get("CodeSystem?_count=100"))["entry"]}
    assert served >= set(ENROLMENT_CODE_SYSTEMS)
    for cs_id, codes in ENROLMENT_CODE_SYSTEMS.items():
        code_system = ok(officer.get(f"CodeSystem/{cs_id}"))
        assert code_system["url"] == f"{CS}{cs_id}"
        assert [c["code"] for c in code_system["concept"]] == codes, cs_id
        assert all(c["display"] for c in code_system["concept"]), cs_id
    villages = ok(officer.get("Location?type=V&_count=100"))
    village = next(e["resource"]["id"] for e in villages["entry"] if e["resource"]["name"] == "Ultha V")
    plans = ok(officer.get("InsurancePlan?status=active"))
    assert {e["resource"]["identifier"][0]["value"] for e in plans["entry"]} >= {"BC01", "FC01"}
    me = ok(officer.get("Practitioner?identifier=E00001"))["entry"][0]["resource"]["id"]
    # 2. the members, head first, coded from the lists; 3. the family
    members = [
        ok(officer.post("Patient", body), 201)["id"] for body in (
            member("555000000", "Ama", years_ago(41), village, head=True, education="3", profession="2",
                   national_id="GH-555-0"),
            member("555000001", "Kofi", years_ago(39), village, head=False, relationship="8", profession="3"),
            member("555000002", "Esi", years_ago(7), village, head=False, relationship="4", education="2"))]
    fam = family_group("555000000", members, village)
    fam["extension"] += [
        {"url": f"{EXT}group-type", "valueCodeableConcept": concept("group-type", "H")},
        {"url": f"{EXT}group-confirmation", "extension": [
            {"url": "number", "valueString": "CONF-555"},
            {"url": "type", "valueCodeableConcept": concept("group-confirmation-type", "A")}]}]
    family = ok(officer.post("Group", fam), 201)["id"]
    head = ok(officer.get(f"Patient/{members[0]}"))
    assert [coded_ext(head, n) for n in ("patient-education-level", "patient-profession",
                                         "patient-identification")] == ["3", "2", "N"]
    spouse = ok(officer.get(f"Patient/{members[1]}"))
    assert spouse["contact"][0]["relationship"][0]["coding"][0]["code"] == "8"
    family_read = ok(officer.get(f"Group/{family}"))
    assert [coded_ext(family_read, n) for n in ("group-type", "group-confirmation")] == ["H", "A"]
    # 4. the contract, not paid yet: offered, Coverage draft, nobody active; its contribution is invoiced
    s.family, s.members, s.officer = family, dict(zip(("head", "m1", "m2"), members, strict=True)), me
    c = ok(officer.post("Contract", family_contract(s, issued=days_ago(2))), 201)
    assert c["status"] == "offered"
    value = c["term"][0]["asset"][0]["valuedItem"][0]["net"]["value"]
    assert value == 10000  # BC01's lump sum
    assert ok(officer.get(f"Coverage/{c['id']}"))["status"] == "draft"
    assert ok(officer.get(f"Patient/{members[0]}"))["active"] is False
    # 5. the payments platform finds the contribution invoice and notifies its payment: the policy activates
    payments = user_with_rights(app, engine, client, "payments-platform", [155101, 155201, 155202])
    invoices = ok(payments.get(f"Invoice?type=contribution&subject=Group/{family}"))["entry"]
    [invoice] = [e["resource"] for e in invoices if e["search"]["mode"] == "match"]
    assert invoice["status"] == "issued" and invoice["totalGross"]["value"] == value
    paid = ok(payments.post("PaymentNotice", notice(f"Invoice/{invoice['id']}", value, "TX-555")), 201)
    assert paid["request"] == {"reference": f"Invoice/{invoice['id']}"}
    assert ok(payments.get(f"Invoice/{invoice['id']}"))["status"] == "balanced"
    contract = ok(officer.get(f"Contract/{c['id']}"))
    assert contract["status"] == "executed" and contract["meta"]["versionId"] == "2"
    receipts = [next(x["valueString"] for x in p["extension"] if x["url"] == "receipt")
                for p in contract["term"][0]["asset"][0]["extension"]]
    assert receipts == ["TX-555"]  # the payment is the policy's contribution
    assert ok(officer.get(f"Coverage/{c['id']}"))["status"] == "active"
    assert all(ok(officer.get(f"Patient/{m}"))["active"] for m in members)
    assert ok(officer.get(f"Group/{family}"))["active"] is True
    # 6. before care: is the child covered for an item and a service?
    check_covered(officer, members[2])


def test_enrolment_use_case_as_one_transaction(officer_app):
    officer, s = officer_app
    village = s.places["V1"]
    entries = []
    for i, (given, born) in enumerate((("Yaw", years_ago(35)), ("Abena", years_ago(33)))):
        entries.append({"fullUrl": f"urn:uuid:1111111{i}-0000-4000-8000-000000000000",
                        "resource": patient(f"66600000{i}", "Owusu", given, village, birth_date=born, head=i == 0),
                        "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier=66600000{i}"}})
    refs = [e["fullUrl"] for e in entries]
    fam = family_group("666000000", [], village)
    fam["member"] = [{"entity": {"reference": r}} for r in refs]
    fam["quantity"] = len(refs)
    s.family, s.members = "urn-group", {"head": refs[0], "m1": refs[1]}
    contract = family_contract(s, issued=days_ago(1), premiums=[premium(10000, "RC-666", days_ago(0))])
    contract["subject"] = [{"reference": "urn:uuid:1111111f-0000-4000-8000-000000000000"}]
    contract["term"][0]["offer"]["party"][0]["reference"] = [{"reference": refs[0]}]
    contract["term"][0]["asset"][0]["typeReference"] = [{"reference": r} for r in refs]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:2222222c-0000-4000-8000-000000000000", "resource": contract,
         "request": {"method": "POST", "url": "Contract"}},
        {"fullUrl": "urn:uuid:1111111f-0000-4000-8000-000000000000", "resource": fam,
         "request": {"method": "POST", "url": "Group", "ifNoneExist": "identifier=666000000"}},
        *entries,
    ]}
    answer = ok(officer.client.post("/fhir/", json=bundle, headers=officer.headers()))
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created"] * 4
    contract_out = answer["entry"][0]["resource"]
    assert contract_out["status"] == "executed"
    patient_ids = [e["resource"]["id"] for e in answer["entry"][2:]]
    assert [r["reference"] for r in contract_out["term"][0]["asset"][0]["typeReference"]] == [
        f"Patient/{p}" for p in patient_ids]
    check_covered(officer, patient_ids[1])
