"""Terminology and conformance resources (issue 3): the IG's CodeSystems and ValueSets, the openIMIS code lists
served live and editable, the diagnosis list, price lists, $expand / $lookup / $validate-code, and the IG's
StructureDefinitions and ImplementationGuide."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, insert, select

from hifhir.auth.users import create_user, ensure_role
from hifhir.domain.pricelists import assign_price_list, create_price_list, facility_prices
from hifhir.fhir.searchparams import normalise_text
from hifhir.store.codelists import seed_diagnoses
from hifhir.store.db import transaction
from hifhir.store.tables import health_facility, medical_item, medical_service, price_list, price_list_item
from tests.builders import CS, EXT, location, patient
from tests.builders import health_facility as hf_resource
from tests.conftest import Api

IG = "https://openimis.github.io/openimis_fhir_r4_ig"
VS = f"{IG}/ValueSet/"
DIAGNOSES = "diagnosis-ICD10-level1"
PROPERTY_EXT = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ValueSet.expansion.contains.property"
TERMINOLOGY = Path(__file__).resolve().parents[2] / "src" / "hifhir" / "data" / "ig" / "terminology"


# --- helpers ------------------------------------------------------------------------------------------------


def ok(resp: Any, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    return resp.json()


def refused(resp: Any, *statuses: int, expression: str | None = None) -> dict[str, Any]:
    assert resp.status_code in statuses, f"{resp.status_code}: {resp.text}"
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] in ("error", "fatal")
    assert len(body["issue"][0].get("diagnostics", "")) > 10, body
    if expression is not None:
        exprs = [e for i in body["issue"] for e in i.get("expression", [])]
        assert any(expression in e for e in exprs), body
    return body


def params(resource: dict[str, Any]) -> dict[str, Any]:
    assert resource["resourceType"] == "Parameters", resource
    out: dict[str, Any] = {}
    for p in resource["parameter"]:
        out[p["name"]] = next((v for k, v in p.items() if k.startswith("value")), p.get("part"))
    return out


def codes(cs_or_vs: dict[str, Any]) -> list[str]:
    if cs_or_vs["resourceType"] == "CodeSystem":
        return [c["code"] for c in cs_or_vs.get("concept", [])]
    return [c["code"] for c in cs_or_vs["expansion"].get("contains", [])]


def ids(bundle: dict[str, Any]) -> list[str]:
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def professions(*extra: tuple[str, str], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    concepts = [("1", "Housewife"), ("2", "Employee"), ("3", "Self Employee"), ("4", "Other"), *extra]
    return {"resourceType": "CodeSystem", "id": "patient-profession", "url": f"{CS}patient-profession",
            "status": "active", "content": "complete",
            "concept": [{"code": c, "display": d} for c, d in concepts if c not in drop]}


def user_with_rights(app: Any, engine: Engine, client: Any, name: str, rights: list[int]) -> Api:
    with transaction(engine, write=True) as conn:
        ensure_role(conn, f"role-{name}", 0, rights)
        create_user(conn, name, "", roles=[f"role-{name}"], password_hash="x")
    return Api(client, app.tokens.issue(name)[0])


@pytest.fixture
def diagnoses(api: Api, engine: Engine) -> None:
    with transaction(engine, write=True) as conn:
        assert seed_diagnoses(conn) == 1910


@pytest.fixture
def district(api: Api) -> str:
    region = ok(api.post("Location", location("R1", "Ultha", "R")), 201)["id"]
    return ok(api.post("Location", location("R1D1", "Rapta", "D", region)), 201)["id"]


# --- reads --------------------------------------------------------------------------------------------------


def test_code_list_is_served_live_with_the_ig_id_and_url(api):
    resp = api.get("CodeSystem/patient-profession")
    cs = ok(resp)
    assert cs["id"] == "patient-profession" and cs["url"] == f"{CS}patient-profession"
    assert cs["content"] == "complete" and cs["status"] == "active" and cs["name"] == "PatientProfessionCS"
    assert cs["concept"] == [{"code": "1", "display": "Housewife"}, {"code": "2", "display": "Employee"},
                             {"code": "3", "display": "Self Employee"}, {"code": "4", "display": "Other"}]
    assert cs["count"] == 4
    assert cs["meta"]["versionId"] and cs["meta"]["lastUpdated"].endswith("Z")
    assert resp.headers["etag"] == f'W/"{cs["meta"]["versionId"]}"'
    assert "last-modified" in resp.headers


def test_static_ig_codesystem_valueset_and_unknown_ids(api):
    cs = ok(api.get("CodeSystem/claim-rejection-reasons"))
    assert cs["url"] == f"{CS}claim-rejection-reasons" and cs["count"] == 20 and cs["version"] == "1.0.0"
    assert cs["meta"]["versionId"] == "1"
    vs = ok(api.get("ValueSet/patient-marital-status"))
    assert vs["compose"]["include"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
    assert "expansion" not in vs
    for path in ("CodeSystem/no-such-list", "ValueSet/no-such-set", "StructureDefinition/no-such-profile",
                 "ImplementationGuide/other.ig", "ValueSet/items-pricelist-" + str(uuid.uuid4())):
        refused(api.get(path), 404)
    refused(api.get("CodeSystem/bad$id"), 400)
    refused(api.get("CodeSystem/patient-profession/_history"), 404)
    refused(api.get("ValueSet/patient-profession/$validate"), 404)


def test_every_ig_codesystem_and_valueset_is_readable_and_found_by_url(api):
    for path in sorted(TERMINOLOGY.glob("*.json")):
        ig = orjson.loads(path.read_bytes())
        rtype, rid = ig["resourceType"], ig["id"]
        served = ok(api.get(f"{rtype}/{rid}"))
        assert (served["id"], served["url"], served["name"]) == (rid, ig["url"], ig["name"])
        found = ok(api.get(rtype, params={"url": ig["url"]}))
        assert ids(found) == [rid] and found["total"] == 1
        by_name = ok(api.get(rtype, params={"name:exact": ig["name"]}))
        assert rid in ids(by_name)


def test_reference_module_aliases(api, diagnoses):
    # openIMIS clients read the diagnoses at CodeSystem/diagnosis (reference module urls.py)
    cs = ok(api.as_alias().get("CodeSystem/diagnosis"))
    assert cs["id"] == DIAGNOSES and cs["count"] == 1910
    assert ok(api.get("CodeSystem/group-types"))["id"] == "group-type"


def test_medical_item_and_service_codesystems_follow_the_tables(api, engine):
    assert ok(api.get("CodeSystem/medical-item"))["count"] == 0
    add_items(engine, ("0001", "Aspirin", "10.00"), ("0002", "Paracetamol", "5.50"))
    add_item(engine, "0003", "Withdrawn", "1.00", deleted=True)
    add_services(engine, ("A1", "General Consultation", "40.00"))
    cs = ok(api.get("CodeSystem/medical-item"))
    assert cs["url"] == f"{CS}medical-item" and cs["content"] == "complete"
    assert cs["concept"] == [{"code": "0001", "display": "Aspirin"}, {"code": "0002", "display": "Paracetamol"}]
    assert codes(ok(api.get("CodeSystem/medical-service"))) == ["A1"]
    found = params(ok(api.get("CodeSystem/$lookup", params={"system": f"{CS}medical-item", "code": "0002"})))
    assert found["display"] == "Paracetamol"


# --- searches -----------------------------------------------------------------------------------------------


def test_codesystem_search_by_url_name_title_status_and_id(api):
    assert ids(ok(api.get("CodeSystem", params={"url": f"{CS}patient-profession"}))) == ["patient-profession"]
    assert ids(ok(api.get("CodeSystem", params={"url": f"{CS}patient-profession|1.0.0"}))) == ["patient-profession"]
    assert ids(ok(api.get("CodeSystem", params={"system": f"{CS}group-type"}))) == ["group-type"]
    by_name = ok(api.get("CodeSystem", params={"name": "patientprof"}))  # prefix, case-insensitive
    assert ids(by_name) == ["patient-profession"]
    assert ids(ok(api.get("CodeSystem", params={"name:exact": "patientprof"}))) == []
    assert set(ids(ok(api.get("CodeSystem", params={"title:contains": "Patient", "_count": "50"})))) >= {
        "patient-profession", "patient-education-level"}
    assert ids(ok(api.get("CodeSystem", params={"_id": "claim-status,location-type"}))) == [
        "claim-status", "location-type"]
    live = ok(api.get("CodeSystem", params={"status": "active", "_count": "100"}))
    assert {"patient-profession", DIAGNOSES, "medical-item"} <= set(ids(live))
    assert "claim-status" not in ids(live)  # IG artefacts are draft
    assert ok(api.get("CodeSystem", params={"url:below": f"{CS}organization-", "_summary": "count"}))["total"] == 5


def test_catalog_search_pages_and_summaries(api):
    page = ok(api.get("CodeSystem", params={"_count": "10"}))
    assert page["total"] == 43 and len(ids(page)) == 10  # 41 IG CodeSystems, medical-item, medical-service
    seen = ids(page)
    while nxt := next((link["url"] for link in page["link"] if link["relation"] == "next"), None):
        page = ok(api.get(nxt))
        seen += ids(page)
    assert len(seen) == 43 and len(set(seen)) == 43 and seen == sorted(seen)
    summary = ok(api.get("CodeSystem", params={"_id": "patient-profession", "_summary": "true"}))
    resource = summary["entry"][0]["resource"]
    assert "concept" not in resource and resource["url"] == f"{CS}patient-profession"
    assert resource["meta"]["tag"][0]["code"] == "SUBSETTED"
    elements = ok(api.get("ValueSet", params={"_id": "location-type", "_elements": "url"}))["entry"][0]["resource"]
    assert set(elements) == {"resourceType", "id", "meta", "url"}
    posted = api.client.post("/fhir/ValueSet/_search", content=b"name=LocationType",
                             headers={**api.headers(), "Content-Type": "application/x-www-form-urlencoded"})
    assert ids(ok(posted)) == ["location-type"]


def test_catalog_search_unknown_parameters(api):
    bundle = ok(api.get("ValueSet", params={"colour": "blue", "_id": "claim-status"}))
    assert ids(bundle) == ["claim-status"]
    outcome = next(e for e in bundle["entry"] if e["search"]["mode"] == "outcome")["resource"]
    assert outcome["issue"][0]["severity"] == "warning"
    refused(api.get("ValueSet", params={"colour": "blue"}, headers={"Prefer": "handling=strict"}), 400)
    refused(api.get("ValueSet", params={"name:below": "x"}), 400, expression="name")
    refused(api.get("ValueSet", params={"_count": "-1"}), 400, expression="_count")


def test_structure_definitions_and_implementation_guide(api):
    patient_sd = ok(api.get("StructureDefinition/openimis-patient"))
    assert patient_sd["url"] == f"{IG}/StructureDefinition/openimis-patient"
    assert patient_sd["type"] == "Patient" and patient_sd["snapshot"]["element"]
    found = ok(api.get("StructureDefinition", params={"url": f"{IG}/StructureDefinition/openimis-patient"}))
    assert ids(found) == ["openimis-patient"]
    profiles = ok(api.get("StructureDefinition", params={"kind": "resource", "derivation": "constraint",
                                                          "_summary": "count"}))
    assert profiles["total"] == 25
    extensions = ok(api.get("StructureDefinition", params={"type": "Extension", "_count": "100",
                                                            "_elements": "url"}))
    assert extensions["total"] == 35 and f"{IG}/StructureDefinition/patient-profession" in [
        e["resource"]["url"] for e in extensions["entry"]]
    by_type = ok(api.get("StructureDefinition", params={"type": "Organization", "_summary": "true"}))
    assert set(ids(by_type)) == {"openimis-health-facility-organization", "openimis-insurance-organization",
                                 "openimis-policy-holder-organization"}
    assert all("snapshot" not in e["resource"] for e in by_type["entry"])
    guide = ok(api.get("ImplementationGuide/openimis.fhir.r4"))
    assert guide["packageId"] == "openimis.fhir.r4" and guide["version"] == "1.0.0"
    assert ids(ok(api.get("ImplementationGuide", params={"url": guide["url"]}))) == ["openimis.fhir.r4"]
    refused(api.put("StructureDefinition/openimis-patient", patient_sd), 405)


def test_capability_statement_declares_terminology(api):
    cs = ok(api.get("metadata"))
    by_type = {r["type"]: r for r in cs["rest"][0]["resource"]}
    assert {o["name"] for o in by_type["ValueSet"]["operation"]} == {"expand", "validate-code"}
    assert {o["name"] for o in by_type["CodeSystem"]["operation"]} == {"lookup", "validate-code"}
    assert {i["code"] for i in by_type["CodeSystem"]["interaction"]} == {"read", "search-type", "update"}
    assert "url" in {p["name"] for p in by_type["StructureDefinition"]["searchParam"]}
    assert "ImplementationGuide" in by_type


# --- $expand ------------------------------------------------------------------------------------------------


def expand(api: Api, **query: Any) -> dict[str, Any]:
    return ok(api.get("ValueSet/$expand", params={"url": VS + DIAGNOSES, **query}))


def test_expand_diagnoses_with_filter_count_and_offset(api, diagnoses):
    everything = expand(api, count="0")
    assert everything["expansion"]["total"] == 1910 and "contains" not in everything["expansion"]
    typhoid = expand(api, filter="typhoid")["expansion"]
    assert typhoid["contains"][0] == {"system": f"{CS}{DIAGNOSES}", "code": "A01",
                                      "display": "Typhoid and paratyphoid fevers"}
    assert typhoid["parameter"] == [{"name": "filter", "valueString": "typhoid"}]
    # word prefixes of the display, case and accents ignored, every word must match
    assert [c["code"] for c in expand(api, filter="CHOLÉRA")["expansion"]["contains"]] == ["A00"]
    assert codes(expand(api, filter="chole")) == ["A00", "H71", "K80", "K81"]
    assert "A01" in codes(expand(api, filter="paraTyph fev"))
    assert expand(api, filter="yphoid")["expansion"]["total"] == 0  # not a word prefix
    # codes match too
    assert codes(expand(api, filter="a0")) == [f"A0{i}" for i in range(10)]
    fevers = expand(api, filter="fever")["expansion"]
    assert fevers["total"] > 5
    page = expand(api, filter="fever", count="2", offset="1")["expansion"]
    assert page["total"] == fevers["total"] and page["offset"] == 1
    assert page["contains"] == fevers["contains"][1:3]
    assert expand(api, filter="fever", offset=str(fevers["total"]))["expansion"].get("contains") is None
    # instance level and POST with a Parameters body give the same
    instance = ok(api.get(f"ValueSet/{DIAGNOSES}/$expand", params={"filter": "fever", "count": "2", "offset": "1"}))
    assert instance["expansion"]["contains"] == page["contains"]
    posted = ok(api.post("ValueSet/$expand", {"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueUri": VS + DIAGNOSES}, {"name": "filter", "valueString": "fever"},
        {"name": "count", "valueInteger": 2}, {"name": "offset", "valueInteger": 1}]}))
    assert posted["expansion"]["contains"] == page["contains"] and posted["id"] == DIAGNOSES


def test_expand_follows_the_diagnosis_list_at_once(api, diagnoses):
    assert expand(api, filter="zz")["expansion"]["total"] == 0
    cs = ok(api.get(f"CodeSystem/{DIAGNOSES}"))
    cs["concept"] = [*cs["concept"][1:], {"code": "ZZ9", "display": "Zzyzx syndrome"}]  # drop A00, add ZZ9
    updated = ok(api.put(f"CodeSystem/{DIAGNOSES}", cs))
    assert updated["count"] == 1910 and updated["meta"]["versionId"] != cs["meta"]["versionId"]
    assert codes(expand(api, filter="zzyzx")) == ["ZZ9"]
    assert expand(api, filter="cholera")["expansion"]["total"] == 0
    dropped = params(ok(api.get("CodeSystem/$lookup", params={"system": f"{CS}{DIAGNOSES}", "code": "A00"})))
    assert dropped["display"] == "Cholera"  # still known: data coded A00 keeps its meaning
    assert dropped["property"] == [{"name": "code", "valueCode": "inactive"}, {"name": "value", "valueBoolean": True}]


def test_expand_ig_valuesets(api):
    location_types = ok(api.get("ValueSet/location-type/$expand"))["expansion"]
    assert codes({"resourceType": "ValueSet", "expansion": location_types}) == ["R", "D", "W", "V"]
    assert location_types["contains"][0]["display"] == "Region"
    marital = ok(api.get("ValueSet/$expand", params={"url": VS + "patient-marital-status"}))
    assert codes(marital) == ["M", "S", "D", "W", "UNK"]
    # IG defect §9.5: VS group-type names the core system; it is expanded with the openIMIS family types
    group_types = ok(api.get("ValueSet/group-type/$expand", params={"filter": "house"}))["expansion"]["contains"]
    assert group_types == [{"system": f"{CS}group-type", "code": "H", "display": "Household"}]
    inline = ok(api.post("ValueSet/$expand", {"resourceType": "Parameters", "parameter": [
        {"name": "valueSet", "resource": {"resourceType": "ValueSet", "status": "active", "compose": {"include": [
            {"system": f"{CS}claim-status", "concept": [{"code": "1"}, {"code": "16"}]}]}}}]}))
    assert inline["expansion"]["contains"] == [
        {"system": f"{CS}claim-status", "code": "1", "display": "Rejected"},
        {"system": f"{CS}claim-status", "code": "16", "display": "Valuated"}]


def test_expand_bad_parameters(api, diagnoses):
    refused(api.get("ValueSet/$expand", params={"url": VS + DIAGNOSES, "count": "-1"}), 400, expression="count")
    refused(api.get("ValueSet/$expand", params={"url": VS + DIAGNOSES, "count": "ten"}), 400, expression="count")
    refused(api.get("ValueSet/$expand", params={"url": VS + DIAGNOSES, "offset": "1.5"}), 400, expression="offset")
    refused(api.get("ValueSet/$expand", params=[("url", VS + DIAGNOSES), ("filter", "a"), ("filter", "b")]), 400,
            expression="filter")
    refused(api.get("ValueSet/$expand"), 400, expression="url")
    refused(api.get("ValueSet/$expand", params={"url": VS + "nothing-like-this"}), 404)
    refused(api.get("ValueSet/nothing/$expand"), 404)
    refused(api.post("ValueSet/$expand", {"resourceType": "ValueSet"}), 400)
    refused(api.post("ValueSet/$expand", b"{not json"), 400)
    refused(api.post("ValueSet/$expand", {"resourceType": "Parameters", "parameter": [
        {"name": "count", "valueInteger": -3}, {"name": "url", "valueUri": VS + DIAGNOSES}]}), 400, expression="count")
    refused(api.post("ValueSet/$expand", {"resourceType": "Parameters", "parameter": [{"name": "url"}]}), 400)
    refused(api.post("ValueSet/$expand", {"resourceType": "Parameters", "parameter": [{"name": "valueSet", "resource": {
        "resourceType": "ValueSet", "compose": {"include": [{"system": "http://snomed.info/sct"}]}}}]}), 422)
    refused(api.get("CodeSystem/$expand"), 404)
    refused(api.delete(f"ValueSet/{DIAGNOSES}/$expand"), 405)
    refused(api.get("ValueSet/$expand", params={"url": VS + DIAGNOSES, "frobnicate": "1"},
                    headers={"Prefer": "handling=strict"}), 400)


def test_terminology_needs_a_role(api, client, app, engine):
    # Configuration, not personal data: any role right will do (auth/matrix.py ANY_ROLE), but not none at all.
    assert client.get("/fhir/CodeSystem/patient-profession").status_code == 401
    reader = user_with_rights(app, engine, client, "reader", [101101])
    assert ok(reader.get("ValueSet/patient-profession/$expand"))["expansion"]["total"] == 4
    assert ok(reader.get("StructureDefinition/openimis-group"))["type"] == "Group"
    nobody = user_with_rights(app, engine, client, "roleless", [])
    refused(nobody.get("ValueSet/patient-profession/$expand"), 403)
    refused(nobody.get("StructureDefinition/openimis-group"), 403)
    refused(nobody.get("CodeSystem?_summary=count"), 403)


# --- $lookup and $validate-code -----------------------------------------------------------------------------


def test_lookup(api, diagnoses):
    found = params(ok(api.get("CodeSystem/$lookup", params={"system": f"{CS}{DIAGNOSES}", "code": "A01"})))
    assert found["name"] == "DiagnosisICD10Level1CS" and found["display"] == "Typhoid and paratyphoid fevers"
    assert found["version"] == ok(api.get(f"CodeSystem/{DIAGNOSES}"))["version"]
    assert params(ok(api.get("CodeSystem/claim-status/$lookup", params={"code": "16"})))["display"] == "Valuated"
    posted = params(ok(api.post("CodeSystem/$lookup", {"resourceType": "Parameters", "parameter": [
        {"name": "coding", "valueCoding": {"system": f"{CS}patient-profession", "code": "3"}}]})))
    assert posted["display"] == "Self Employee"
    refused(api.get("CodeSystem/$lookup", params={"system": f"{CS}{DIAGNOSES}", "code": "Q99.9"}), 404)
    refused(api.get("CodeSystem/$lookup", params={"system": "http://snomed.info/sct", "code": "1"}), 404)
    refused(api.get("CodeSystem/$lookup", params={"code": "A01"}), 400, expression="system")
    refused(api.get("CodeSystem/$lookup", params={"system": f"{CS}{DIAGNOSES}"}), 400, expression="code")
    refused(api.post("CodeSystem/$lookup", {"resourceType": "Parameters", "parameter": [
        {"name": "coding", "valueCoding": {"system": f"{CS}patient-profession"}}]}), 400, expression="coding")
    refused(api.get("ValueSet/$lookup", params={"code": "1"}), 404)


def test_codesystem_validate_code(api, diagnoses):
    def check(**query: str) -> dict[str, Any]:
        return params(ok(api.get("CodeSystem/$validate-code", params=query)))

    assert check(url=f"{CS}{DIAGNOSES}", code="A00") == {"result": True, "display": "Cholera"}
    assert check(system=f"{CS}{DIAGNOSES}", code="A00", display="cholera")["result"] is True
    wrong = check(url=f"{CS}{DIAGNOSES}", code="A00", display="Plague")
    assert wrong["result"] is False and "Cholera" in wrong["message"] and wrong["display"] == "Cholera"
    missing = check(url=f"{CS}{DIAGNOSES}", code="Q99.9")
    assert missing["result"] is False and "Q99.9" in missing["message"]
    assert params(ok(api.get(f"CodeSystem/{DIAGNOSES}/$validate-code", params={"code": "B50"})))["result"] is True
    concept = ok(api.post("CodeSystem/$validate-code", {"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueUri": f"{CS}organization-hf-level"},
        {"name": "codeableConcept", "valueCodeableConcept": {"coding": [
            {"system": "http://example.org/other", "code": "X"},
            {"system": f"{CS}organization-hf-level", "code": "H", "display": "Hospital"}]}}]}))
    assert params(concept) == {"result": True, "display": "Hospital"}
    refused(api.get("CodeSystem/$validate-code", params={"url": f"{CS}{DIAGNOSES}"}), 400, expression="code")
    refused(api.get("CodeSystem/$validate-code", params={"code": "A00"}), 400, expression="url")
    refused(api.get("CodeSystem/$validate-code", params={"url": f"{CS}{DIAGNOSES}", "system": f"{CS}group-type",
                                                          "code": "A00"}), 400, expression="system")
    refused(api.post("CodeSystem/$validate-code", {"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueUri": f"{CS}{DIAGNOSES}"}, {"name": "codeableConcept", "valueCodeableConcept": {}}]}),
        400, expression="codeableConcept")


def test_valueset_validate_code(api):
    def check(vs: str, **query: str) -> dict[str, Any]:
        return params(ok(api.get("ValueSet/$validate-code", params={"url": VS + vs, **query})))

    assert check("patient-education-level", system=f"{CS}patient-education-level", code="4") == {
        "result": True, "display": "University"}
    assert check("patient-education-level", code="4")["result"] is True  # no system: any member with the code
    assert check("patient-education-level", system=f"{CS}patient-profession", code="4")["result"] is False
    assert check("patient-marital-status", system="http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                 code="M") == {"result": True, "display": "Married"}
    # the IG's own examples code family types with the core group-type system (IG §9.5): accepted
    assert check("group-type", system="http://hl7.org/fhir/group-type", code="H")["result"] is True
    posted = params(ok(api.post("ValueSet/location-type/$validate-code", {"resourceType": "Parameters", "parameter": [
        {"name": "coding", "valueCoding": {"system": f"{CS}location-type", "code": "X"}}]})))
    assert posted["result"] is False and "X" in posted["message"]
    refused(api.get("ValueSet/$validate-code", params={"url": VS + "location-type"}), 400, expression="code")


# --- editing code lists ---------------------------------------------------------------------------------------


def profession_of(p: dict[str, Any]) -> dict[str, Any] | None:
    e = next((e for e in p.get("extension", []) if e["url"] == EXT + "patient-profession"), None)
    return None if e is None else e["valueCodeableConcept"]["coding"][0]


def with_profession(resource: dict[str, Any], code: str) -> dict[str, Any]:
    resource["extension"].append({"url": EXT + "patient-profession", "valueCodeableConcept": {
        "coding": [{"system": f"{CS}patient-profession", "code": code}]}})
    return resource


@pytest.fixture
def village(api: Api, district: str) -> str:
    ward = ok(api.post("Location", location("R1D1W1", "Jamu", "W", district)), 201)["id"]
    return ok(api.post("Location", location("R1D1W1V1", "Jamula", "V", ward)), 201)["id"]


def test_new_profession_appears_at_once_and_patients_can_use_it(api, village):
    before = ok(api.get("CodeSystem/patient-profession"))
    refused(api.post("Patient", with_profession(patient("100000001", "Doe", "Jo", village), "5")), 422,
            expression="profession")
    employee = ok(api.post("Patient", with_profession(patient("100000002", "Doe", "Al", village), "2")), 201)
    updated = ok(api.put("CodeSystem/patient-profession", professions(("5", "Farmer"))))
    assert codes(updated)[-1] == "5" and updated["count"] == 5
    assert updated["meta"]["versionId"] != before["meta"]["versionId"]
    assert ok(api.get("CodeSystem/patient-profession")) == updated
    assert "5" in codes(ok(api.get("ValueSet/patient-profession/$expand")))
    farmer = ok(api.post("Patient", with_profession(patient("100000001", "Doe", "Jo", village), "5")), 201)
    assert profession_of(farmer) == {"system": f"{CS}patient-profession", "code": "5", "display": "Farmer"}
    # dropping a code deactivates it: no new use, but insurees coded with it keep their profession
    dropped = ok(api.put("CodeSystem/patient-profession", professions(("5", "Farmer"), drop=("2",))))
    assert codes(dropped) == ["1", "3", "4", "5"]
    refused(api.post("Patient", with_profession(patient("100000003", "Doe", "Ed", village), "2")), 422)
    assert profession_of(ok(api.get(f"Patient/{employee['id']}")))["code"] == "2"
    assert params(ok(api.get("CodeSystem/patient-profession/$validate-code", params={"code": "2"})))[
        "result"] is False
    # giving it back reactivates it, with its new display and place
    reactivated = professions(("5", "Farmer"), drop=("2",))
    reactivated["concept"].append({"code": "2", "display": "Salaried"})
    again = ok(api.put("CodeSystem/patient-profession", reactivated))
    assert again["concept"][-1] == {"code": "2", "display": "Salaried"}
    assert profession_of(ok(api.get(f"Patient/{employee['id']}")))["code"] == "2"


def test_codesystem_put_is_checked_and_all_or_nothing(api):
    before = ok(api.get("CodeSystem/patient-profession"))
    duplicate = professions(("1", "Again"))
    refused(api.put("CodeSystem/patient-profession", duplicate), 400, expression="CodeSystem.concept[4].code")
    refused(api.put("CodeSystem/patient-profession", professions(("X" * 17, "Too long"))), 400,
            expression="CodeSystem.concept[4].code")
    refused(api.put("CodeSystem/patient-profession", professions(("9", "D" * 256))), 400,
            expression="CodeSystem.concept[4].display")
    no_display = professions()
    no_display["concept"].append({"code": "9"})
    refused(api.put("CodeSystem/patient-profession", no_display), 400, expression="display")
    refused(api.put("CodeSystem/patient-profession", professions() | {"id": "patient-education-level"}), 400,
            expression="CodeSystem.id")
    refused(api.put("CodeSystem/patient-profession", professions() | {"content": "fragment"}), 400,
            expression="CodeSystem.content")
    refused(api.put("CodeSystem/patient-profession", professions() | {"url": f"{CS}other"}), 400,
            expression="CodeSystem.url")
    refused(api.put("CodeSystem/patient-profession", professions() | {"concept": []}), 400)
    refused(api.put("CodeSystem/patient-profession", professions() | {"status": "bogus"}), 400)
    refused(api.put("CodeSystem/patient-profession", {"resourceType": "ValueSet", "id": "patient-profession"}), 400)
    assert ok(api.get("CodeSystem/patient-profession")) == before


def test_only_code_lists_are_editable(api):
    static = ok(api.get("CodeSystem/claim-status"))
    refused(api.put("CodeSystem/claim-status", static), 405)
    refused(api.put("CodeSystem/organization-hf-care-type", ok(api.get("CodeSystem/organization-hf-care-type"))), 405)
    refused(api.put("CodeSystem/medical-item", static), 405)
    refused(api.put("ValueSet/patient-profession", ok(api.get("ValueSet/patient-profession"))), 405)
    refused(api.post("CodeSystem", professions()), 405)
    refused(api.delete("CodeSystem/patient-profession"), 405)


def test_code_list_rights(api, app, client, engine, diagnoses):
    clerk = user_with_rights(app, engine, client, "clerk2", [101101, 101102])
    refused(clerk.put("CodeSystem/patient-profession", professions(("5", "Farmer"))), 403)
    lists = user_with_rights(app, engine, client, "lists", [131303])
    ok(lists.put("CodeSystem/patient-profession", professions(("5", "Farmer"))))
    cs = ok(api.get(f"CodeSystem/{DIAGNOSES}"))
    refused(lists.put(f"CodeSystem/{DIAGNOSES}", cs), 403)
    diagnoses_user = user_with_rights(app, engine, client, "icd", [131001])
    ok(diagnoses_user.put(f"CodeSystem/{DIAGNOSES}", cs))
    refused(diagnoses_user.put("CodeSystem/patient-profession", professions()), 403)


def test_codesystem_put_if_match(api):
    current = ok(api.get("CodeSystem/patient-profession"))
    stale = f'W/"{current["meta"]["versionId"]}"'
    ok(api.put("CodeSystem/patient-profession", professions(("5", "Farmer")), headers={"If-Match": stale}))
    refused(api.put("CodeSystem/patient-profession", professions(("6", "Fisher")), headers={"If-Match": stale}),
            412)
    assert "6" not in codes(ok(api.get("CodeSystem/patient-profession")))


def test_validator_sees_live_codes(api, district):
    # organization-hf-level is bound *required*: the profile validator itself checks it
    def facility(level: str, code: str = "HF0001") -> dict[str, Any]:
        res = hf_resource(code, district)
        res["extension"].append({"url": EXT + "organization-hf-level", "valueCodeableConcept": {
            "coding": [{"system": f"{CS}organization-hf-level", "code": level}]}})
        return res

    body = refused(api.post("Organization", facility("R")), 400)
    assert body["issue"][0]["code"] == "code-invalid"
    levels = ok(api.get("CodeSystem/organization-hf-level"))
    levels["concept"].append({"code": "R", "display": "Regional hospital"})
    ok(api.put("CodeSystem/organization-hf-level", levels))
    hospital = ok(api.post("Organization", facility("R")), 201)
    level = next(e for e in hospital["extension"] if e["url"] == EXT + "organization-hf-level")
    assert level["valueCodeableConcept"]["coding"][0]["display"] == "Regional hospital"
    validated = ok(api.post("Organization/$validate", facility("R", "HF0002")))
    assert [i["severity"] for i in validated["issue"]] == ["information"]


# --- price lists --------------------------------------------------------------------------------------------


def add_item(engine: Engine, code: str, name: str, price: str, *, deleted: bool = False) -> int:
    with transaction(engine, write=True) as conn:
        return int(conn.execute(insert(medical_item).values(
            id=str(uuid.uuid4()), code=code, name=name, name_norm=normalise_text(name), price=Decimal(price),
            care_type="B", item_type="D", version_id=1, last_updated=1, deleted=deleted)).inserted_primary_key[0])


def add_items(engine: Engine, *rows: tuple[str, str, str]) -> list[int]:
    return [add_item(engine, *row) for row in rows]


def add_services(engine: Engine, *rows: tuple[str, str, str]) -> list[int]:
    pks = []
    with transaction(engine, write=True) as conn:
        for code, name, price in rows:
            pks.append(int(conn.execute(insert(medical_service).values(
                id=str(uuid.uuid4()), code=code, name=name, name_norm=normalise_text(name), price=Decimal(price),
                care_type="B", service_type="C", level="S", version_id=1, last_updated=1)).inserted_primary_key[0]))
    return pks


def properties(entry: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for ext in entry["extension"]:
        assert ext["url"] == PROPERTY_EXT
        parts = {p["url"]: p for p in ext["extension"]}
        value = next(v for k, v in parts["value"].items() if k.startswith("value"))
        out[parts["code"]["valueCode"]] = value
    return out


@pytest.fixture
def priced(api: Api, engine: Engine, district: str) -> dict[str, Any]:
    """Two facilities: A uses the 'Rapta items' list (an override on Paracetamol) and 'Rapta services', B none."""
    aspirin, _, _ = add_items(engine, ("0001", "Aspirin", "10.00"), ("0002", "Paracetamol", "5.50"),
                              ("0003", "Quinine", "7.00"))
    add_services(engine, ("A1", "General Consultation", "40.00"), ("A2", "Delivery", "120.00"))
    hf_a = ok(api.post("Organization", hf_resource("HFA001", district)), 201)["id"]
    hf_b = ok(api.post("Organization", hf_resource("HFB001", district)), 201)["id"]
    with transaction(engine, write=True) as conn:
        pk_a = conn.execute(select(health_facility.c.pk).where(health_facility.c.id == hf_a)).scalar_one()
        items = create_price_list(conn, "item", "Rapta items", date(2024, 1, 1),
                                  {"0001": None, "0002": Decimal("4.75")})
        other = create_price_list(conn, "item", "National items", date(2023, 6, 30), {"0003": "8.25"})
        services = create_price_list(conn, "service", "Rapta services", date(2024, 1, 1), {"A1": None})
        assign_price_list(conn, items, [pk_a])
        assign_price_list(conn, services, [pk_a])
        # a deleted list never counts
        deleted = conn.execute(insert(price_list).values(
            id="old-list", kind="item", name="Old", date_pl=date(2020, 1, 1), deleted=True)).inserted_primary_key[0]
        conn.execute(insert(price_list_item).values(price_list_pk=deleted, item_pk=aspirin,
                                                    price_override=Decimal("1")))
    return {"A": hf_a, "B": hf_b, "pk_a": pk_a, "lists": (items, other, services)}


def test_facility_price_lists_as_valuesets(api, priced):
    vs = ok(api.get(f"ValueSet/items-pricelist-{priced['A']}"))
    assert vs["url"] == f"{VS}items-pricelist-{priced['A']}"
    assert vs["compose"]["include"] == [{"system": f"{CS}medical-item"}]
    contains = vs["expansion"]["contains"]
    assert [(c["system"], c["code"], c["display"]) for c in contains] == [
        (f"{CS}medical-item", "0001", "Aspirin"), (f"{CS}medical-item", "0002", "Paracetamol")]
    assert properties(contains[0]) == {"price": 10.0, "pricelist_name": "Rapta items",
                                       "pricelist_date": "2024-01-01"}
    assert properties(contains[1])["price"] == 4.75  # the list's override
    assert "property" not in contains[0]  # R4: the cross-version extension only
    services = ok(api.get(f"ValueSet/services-pricelist-{priced['A']}"))["expansion"]["contains"]
    assert [(c["code"], properties(c)["price"]) for c in services] == [("A1", 40.0)]
    nothing = ok(api.get(f"ValueSet/items-pricelist-{priced['B']}"))
    assert nothing["expansion"]["total"] == 0 and "contains" not in nothing["expansion"]
    filtered = ok(api.get(f"ValueSet/items-pricelist-{priced['A']}/$expand", params={"filter": "para"}))
    assert codes(filtered) == ["0002"]
    member = params(ok(api.get("ValueSet/$validate-code", params={
        "url": f"{VS}items-pricelist-{priced['A']}", "system": f"{CS}medical-item", "code": "0003"})))
    assert member["result"] is False  # Quinine is not on facility A's list
    found = ok(api.get("ValueSet", params={"url": f"{VS}items-pricelist-{priced['A']}"}))
    assert ids(found) == [f"items-pricelist-{priced['A']}"]


def test_merged_price_lists_and_the_reference_shape(api, priced):
    merged = ok(api.get("ValueSet/items-pricelist"))["expansion"]
    assert [(c["code"], properties(c)["pricelist_name"], properties(c)["price"]) for c in merged["contains"]] == [
        ("0003", "National items", 8.25), ("0001", "Rapta items", 10.0), ("0002", "Rapta items", 4.75)]
    assert merged["total"] == 3
    legacy = ok(api.as_alias().get("ValueSet/items-pricelist"))["expansion"]["contains"][0]
    assert legacy["property"] == [{"code": "price", "valueString": "8.25"},
                                  {"code": "pricelist_name", "valueString": "National items"},
                                  {"code": "pricelist_date", "valueString": "2023-06-30"}]
    assert codes(ok(api.get("ValueSet/services-pricelist"))) == ["A1"]
    assert {"items-pricelist", "services-pricelist"} <= set(ids(ok(api.get("ValueSet", params={"name": "i"}))) +
                                                            ids(ok(api.get("ValueSet", params={"name": "s"}))))


def test_facility_prices_for_claim_checks(api, engine, priced):
    with engine.connect() as conn:
        assert facility_prices(conn, priced["pk_a"], "item") == {"0001": Decimal("10.00"), "0002": Decimal("4.75")}
        assert facility_prices(conn, priced["pk_a"], "service") == {"A1": Decimal("40.00")}
