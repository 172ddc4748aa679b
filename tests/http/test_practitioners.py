"""Claim administrators and enrolment officers (Practitioner) and their roles (PractitionerRole), IG §1b rows 7–10,
domain §2.6–2.7: CRUD and history, kind selection, codes, references, blocked deletes, search, the health facility
contacts they feed, and the IG examples."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hifhir.fhir.registry import KINDS
from tests.builders import EXT, health_facility, ident, location
from tests.builders_practitioner import claim_admin, claim_admin_role, enrolment_officer, officer_role
from tests.conftest import CLERK, Api, load_example
from tests.http.test_ig_examples import assert_equivalent
from tests.responses import created, refused

CA_EXAMPLE = "Practitioner-Rushila-Dani-CA"
EO_EXAMPLE = "Practitioner-Roberts-Jeb-EO"
SUBSTITUTION = f"{EXT}practitioner-role-substitution-reference"
PAYOR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/contactentity-type", "code": "PAYOR",
                     "display": "Payor"}]}


# --- helpers ------------------------------------------------------------------------------------------------




def diagnostics(body: dict[str, Any]) -> str:
    return " ".join(i.get("diagnostics", "") for i in body["issue"])


def get(api: Any, path: str) -> dict[str, Any]:
    r = api.get(path)
    assert r.status_code == 200, r.text
    return r.json()


def put(api: Any, resource: dict[str, Any], status: int = 200) -> dict[str, Any]:
    r = api.put(f"{resource['resourceType']}/{resource['id']}", resource)
    assert r.status_code == status, r.text
    return r.json()


def ids_of(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def found(api: Any, query: str) -> set[str]:
    return set(ids_of(get(api, query)))


def version(api: Any, path: str) -> int:
    return int(get(api, path)["meta"]["versionId"])


@pytest.fixture
def place(api: Any) -> dict[str, str]:
    """R1 → D1 (+ D2) → W1 → V1, V2; health facilities HF1 and HF2 in D1 (ids by key)."""
    ids: dict[str, str] = {}
    ids["R1"] = created(api.post("Location", location("R1", "Ultha", "R")))["id"]
    ids["D1"] = created(api.post("Location", location("R1D1", "Rapta", "D", ids["R1"])))["id"]
    ids["D2"] = created(api.post("Location", location("R1D2", "Jimara", "D", ids["R1"])))["id"]
    ids["W1"] = created(api.post("Location", location("R1D1W1", "Jamu", "W", ids["D1"])))["id"]
    ids["V1"] = created(api.post("Location", location("R1D1W1V1", "Jamula", "V", ids["W1"])))["id"]
    ids["V2"] = created(api.post("Location", location("R1D1W1V2", "Tsoka", "V", ids["W1"])))["id"]
    ids["HF1"] = created(api.post("Organization", health_facility("HF0001", ids["D1"])))["id"]
    ids["HF2"] = created(api.post("Organization", health_facility("HF0002", ids["D1"])))["id"]
    return ids


def new_ca(api: Any, code: str, family: str = "Dani", given: str = "Rushila", **kw: Any) -> dict[str, Any]:
    return created(api.post("Practitioner", claim_admin(code, family, given, **kw)))


def new_eo(api: Any, code: str, family: str = "Roberts", given: str = "Jeb", **kw: Any) -> dict[str, Any]:
    return created(api.post("Practitioner", enrolment_officer(code, family, given, **kw)))


def contacts(api: Any, hf_id: str) -> list[dict[str, Any]]:
    return list(get(api, f"Organization/{hf_id}").get("contact", []))


def contact_names(api: Any, hf_id: str) -> list[str]:
    return [f"{c['name']['family']} {c['name']['given'][0]}" for c in contacts(api, hf_id)]


# --- create / read / update / delete / history ----------------------------------------------------------------


def test_claim_admin_crud_and_history(api):
    ca = new_ca(api, "CA0001", "Dani", "Rushila", phone="+25512345", email="rd@example.org")
    assert ca["meta"]["profile"] == ["https://openimis.github.io/openimis_fhir_r4_ig/StructureDefinition/"
                                     "openimis-claim-administrator-practitioner"]
    assert ca["identifier"][0]["value"] == "CA0001"
    assert ca["identifier"][1]["value"] == ca["id"]  # identifier[UUID] repeats the server UUID
    assert ca["name"] == [{"use": "official", "family": "Dani", "given": ["Rushila"]}]
    assert ca["birthDate"] == "1979-10-09"
    assert {(t["system"], t["value"]) for t in ca["telecom"]} == {("phone", "+25512345"),
                                                                 ("email", "rd@example.org")}
    assert ca["qualification"][0]["code"]["coding"][0]["code"] == "CA"
    assert "address" not in ca
    assert get(api, f"Practitioner/{ca['id']}") == ca
    ca["name"][0]["family"] = "Danielsson"
    del ca["telecom"]
    updated = put(api, ca)
    assert updated["meta"]["versionId"] == "2"
    assert updated["name"][0]["family"] == "Danielsson" and "telecom" not in updated
    assert api.delete(f"Practitioner/{ca['id']}").status_code == 204
    assert api.get(f"Practitioner/{ca['id']}").status_code == 410
    history = get(api, f"Practitioner/{ca['id']}/_history")
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
    assert history["entry"][2]["resource"]["name"][0]["family"] == "Dani"
    assert get(api, f"Practitioner/{ca['id']}/_history/1")["name"][0]["family"] == "Dani"


def test_enrolment_officer_crud_with_district_address(api, place):
    eo = new_eo(api, "EO0001", district_id=place["D1"], line="Main street 1", phone="+255999")
    address = eo["address"][0]
    assert address["district"] == "Rapta" and address["state"] == "Ultha"  # names from the location
    assert address["line"] == ["Main street 1"] and address["type"] == "physical"
    assert address["extension"][0]["valueReference"] == {"reference": f"Location/{place['D1']}"}
    assert eo["qualification"][0]["code"]["coding"][0]["code"] == "EO"
    # renaming the district re-renders the officer's address
    district = get(api, f"Location/{place['D1']}")
    district["name"] = "Rapta Sud"
    put(api, district)
    after = get(api, f"Practitioner/{eo['id']}")
    assert after["address"][0]["district"] == "Rapta Sud" and after["meta"]["versionId"] == "2"
    # the address is optional: an update without it removes it
    del after["address"]
    assert "address" not in put(api, after)
    assert api.delete(f"Practitioner/{eo['id']}").status_code == 204
    methods = [e["request"]["method"] for e in get(api, f"Practitioner/{eo['id']}/_history")["entry"]]
    assert methods == ["DELETE", "PUT", "PUT", "POST"]


def test_officer_address_must_be_a_district(api, place):
    for key in ("R1", "W1", "V1"):
        refused(api.post("Practitioner", enrolment_officer(f"EO{key}", district_id=place[key])), 422,
                expression="Practitioner.address[0].extension")
    refused(api.post("Practitioner", enrolment_officer("EOX", district_id="no-such-district")), 422,
            expression="Practitioner.address[0].extension")
    # the district of a current officer cannot be deleted
    new_eo(api, "EO0002", district_id=place["D2"])
    body = refused(api.delete(f"Location/{place['D2']}"), 409, 422)
    assert "EO0002" in diagnostics(body)


def test_claim_admin_role_crud_and_history(api, place):
    ca = new_ca(api, "CA0001")
    role = created(api.post("PractitionerRole", claim_admin_role("CAR001", ca["id"], place["HF1"],
                                                                 phone="+2551")))
    assert role["practitioner"] == {"reference": f"Practitioner/{ca['id']}"}
    assert role["organization"] == {"reference": f"Organization/{place['HF1']}"}
    assert role["code"][0]["coding"][0]["code"] == "CA"
    assert role["telecom"] == [{"system": "phone", "value": "+2551"}]
    assert get(api, f"PractitionerRole/{role['id']}") == role
    role["organization"] = {"reference": f"Organization/{place['HF2']}"}
    moved = put(api, role)
    assert moved["organization"]["reference"] == f"Organization/{place['HF2']}"
    assert moved["meta"]["versionId"] == "2"
    assert api.delete(f"PractitionerRole/{role['id']}").status_code == 204
    assert api.get(f"PractitionerRole/{role['id']}").status_code == 410
    methods = [e["request"]["method"] for e in get(api, f"PractitionerRole/{role['id']}/_history")["entry"]]
    assert methods == ["DELETE", "PUT", "POST"]


def test_officer_role_crud_and_history(api, place):
    eo, sub = new_eo(api, "EO0001"), new_eo(api, "EO0002", "Mbeki", "Sara")
    role = created(api.post("PractitionerRole", officer_role(
        "EOR001", eo["id"], [place["V1"], place["V2"]], works_to="2030-06-30", substitute_id=sub["id"],
        email="eo@example.org")))
    assert role["practitioner"] == {"reference": f"Practitioner/{eo['id']}"}
    assert role["period"] == {"end": "2030-06-30"}
    assert {loc["reference"] for loc in role["location"]} == {f"Location/{place['V1']}", f"Location/{place['V2']}"}
    assert role["extension"] == [{"url": SUBSTITUTION, "valueReference": {"reference": f"Practitioner/{sub['id']}"}}]
    assert role["code"][0]["coding"][0]["code"] == "EO"
    assert role["telecom"] == [{"system": "email", "value": "eo@example.org"}]
    assert "organization" not in role
    # update: fewer villages, no substitute, no end date
    role["location"] = [{"reference": f"Location/{place['V2']}"}]
    del role["extension"], role["period"]
    updated = put(api, role)
    assert updated["location"] == [{"reference": f"Location/{place['V2']}"}]
    assert "extension" not in updated and "period" not in updated
    # a dateTime works-to keeps its date
    updated["period"] = {"end": "2031-01-31T17:00:00+03:00"}
    assert put(api, updated)["period"] == {"end": "2031-01-31"}
    assert api.delete(f"PractitionerRole/{role['id']}").status_code == 204
    history = get(api, f"PractitionerRole/{role['id']}/_history")
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "PUT", "POST"]
    assert len(history["entry"][3]["resource"]["location"]) == 2
    # the villages of a deleted role are free again
    assert api.delete(f"Location/{place['V1']}").status_code == 204


def test_rights(api, client, app, place):
    ca = new_ca(api, "CA0001")
    clerk = Api(client, app.tokens.issue(CLERK[0])[0])
    for path in (f"Practitioner/{ca['id']}", "Practitioner", "PractitionerRole"):
        refused(clerk.get(path), 403)
    refused(clerk.post("Practitioner", claim_admin("CA0002")), 403)
    refused(clerk.post("Practitioner", enrolment_officer("EO0002")), 403)
    refused(clerk.post("PractitionerRole", claim_admin_role("CAR002", ca["id"], place["HF1"])), 403)
    refused(clerk.delete(f"Practitioner/{ca['id']}"), 403)
    assert get(api, f"Practitioner/{ca['id']}")["meta"]["versionId"] == "1"


# --- kind selection -----------------------------------------------------------------------------------------


def test_kind_is_chosen_by_qualification_or_role_code(api, place):
    ca_body = claim_admin("CA0001")
    del ca_body["meta"]
    ca = created(api.post("Practitioner", ca_body))
    assert ca["meta"]["profile"][0].endswith("openimis-claim-administrator-practitioner")
    eo_body = enrolment_officer("EO0001")
    del eo_body["meta"]
    eo = created(api.post("Practitioner", eo_body))
    assert eo["meta"]["profile"][0].endswith("openimis-enrolment-officer-practitioner")
    role_body = officer_role("EOR001", eo["id"], [place["V1"]])
    del role_body["meta"]
    assert created(api.post("PractitionerRole", role_body))["meta"]["profile"][0].endswith(
        "openimis-enrolment-officer-practitioner-role")
    role_body = claim_admin_role("CAR001", ca["id"], place["HF1"])
    del role_body["meta"]
    assert created(api.post("PractitionerRole", role_body))["meta"]["profile"][0].endswith(
        "openimis-claim-administrator-practitioner-role")
    # neither a profile nor a known qualification: the server cannot tell
    unknown = claim_admin("CA0009")
    del unknown["meta"]
    unknown["qualification"][0]["code"]["coding"][0]["code"] = "MD"
    refused(api.post("Practitioner", unknown), 422)
    # an existing claim administrator cannot become an enrolment officer
    ca_as_eo = enrolment_officer("CA0001") | {"id": ca["id"]}
    refused(api.put(f"Practitioner/{ca['id']}", ca_as_eo), 400)


def test_accepts_ignores_the_case_of_the_code():
    """openIMIS clients send `ca` / `eo` (the reference module lower-cases the code to pick the serializer)."""
    ca, eo = KINDS["claim-admin"], KINDS["enrolment-officer"]
    lower = {"qualification": [{"code": {"coding": [{"code": "ca"}]}}]}
    assert ca.accepts(lower) and not eo.accepts(lower)
    assert eo.accepts({"qualification": [{"code": {"coding": [{"code": "Eo"}]}}]})
    assert KINDS["enrolment-officer-role"].accepts({"code": [{"coding": [{"code": "eo"}]}]})
    assert KINDS["claim-admin-role"].accepts({"code": [{"coding": [{"code": "CA"}]}]})
    for malformed in ({}, {"qualification": "CA"}, {"qualification": [None, {"code": 3}]},
                      {"code": [{"coding": "CA"}]}):
        assert not ca.accepts(malformed) and not KINDS["claim-admin-role"].accepts(malformed)


# --- codes --------------------------------------------------------------------------------------------------


def test_codes_unique_among_current_rows(api, place):
    ca = new_ca(api, "CA0001")
    body = refused(api.post("Practitioner", claim_admin("CA0001", "Other", "Person")), 409,
                   expression="Practitioner.identifier")
    assert "CA0001" in diagnostics(body)
    other = new_ca(api, "CA0002")
    other["identifier"] = [ident("CA0001")]
    refused(api.put(f"Practitioner/{other['id']}", other), 409, expression="Practitioner.identifier")
    # the registers are separate: an enrolment officer may carry the same code
    eo = new_eo(api, "CA0001")
    refused(api.post("Practitioner", enrolment_officer("CA0001")), 409, expression="Practitioner.identifier")
    # role codes
    created(api.post("PractitionerRole", claim_admin_role("R001", ca["id"], place["HF1"])))
    refused(api.post("PractitionerRole", claim_admin_role("R001", other["id"], place["HF1"])), 409,
            expression="PractitionerRole.identifier")
    created(api.post("PractitionerRole", officer_role("R001", eo["id"], [place["V1"]])))
    refused(api.post("PractitionerRole", officer_role("R001", eo["id"], [place["V2"]])), 409,
            expression="PractitionerRole.identifier")
    # free again once the holder is deleted
    assert api.delete(f"Practitioner/{other['id']}").status_code == 204
    created(api.post("Practitioner", claim_admin("CA0002")))
    # too long a code
    refused(api.post("Practitioner", claim_admin("C" * 51)), 422, expression="Practitioner.identifier")


def test_birth_date_rules(api):
    refused(api.post("Practitioner", claim_admin("CA0001", birth_date="1980")), 422,
            expression="Practitioner.birthDate")
    refused(api.post("Practitioner", claim_admin("CA0001", birth_date="2999-01-01")), 422,
            expression="Practitioner.birthDate")
    no_dob = claim_admin("CA0001")
    del no_dob["birthDate"]
    refused(api.post("Practitioner", no_dob), 400, 422)
    assert get(api, "Practitioner?_summary=count")["total"] == 0


# --- references ---------------------------------------------------------------------------------------------


def test_claim_admin_role_references(api, place):
    ca, eo = new_ca(api, "CA0001"), new_eo(api, "EO0001")
    body = refused(api.post("PractitionerRole", claim_admin_role("R1", eo["id"], place["HF1"])), 422,
                   expression="PractitionerRole.practitioner")
    assert "enrolment officer" in diagnostics(body) and "claim administrator" in diagnostics(body)
    refused(api.post("PractitionerRole", claim_admin_role("R1", "no-such-ca", place["HF1"])), 422,
            expression="PractitionerRole.practitioner")
    refused(api.post("PractitionerRole", claim_admin_role("R1", ca["id"], "no-such-hf")), 422,
            expression="PractitionerRole.organization")
    holder = {k: v for k, v in load_example("Organization-MyTradePolicyHolder").items() if k != "id"}
    holder["address"] = [{"extension": [{"url": f"{EXT}address-municipality", "valueString": "x"},
                                        {"url": f"{EXT}address-location-reference",
                                         "valueReference": {"reference": f"Location/{place['V1']}"}}],
                          "state": "x", "district": "x", "city": "x"}]
    ph = created(api.post("Organization", holder))
    body = refused(api.post("PractitionerRole", claim_admin_role("R1", ca["id"], ph["id"])), 422,
                   expression="PractitionerRole.organization")
    assert "policy holder" in diagnostics(body)
    refused(api.post("PractitionerRole", claim_admin_role("R1", ca["id"], place["D1"]) | {
        "organization": {"reference": f"Location/{place['D1']}"}}), 400, 422)
    gone = new_ca(api, "CA0009")
    assert api.delete(f"Practitioner/{gone['id']}").status_code == 204
    refused(api.post("PractitionerRole", claim_admin_role("R1", gone["id"], place["HF1"])), 422,
            expression="PractitionerRole.practitioner")
    # one current role per administrator and facility
    created(api.post("PractitionerRole", claim_admin_role("R1", ca["id"], place["HF1"])))
    body = refused(api.post("PractitionerRole", claim_admin_role("R2", ca["id"], place["HF1"])), 409,
                   expression="PractitionerRole.organization")
    assert "R1" in diagnostics(body)
    created(api.post("PractitionerRole", claim_admin_role("R2", ca["id"], place["HF2"])))
    assert get(api, "PractitionerRole?_summary=count")["total"] == 2


def test_officer_role_references(api, place):
    eo, other, ca = new_eo(api, "EO0001"), new_eo(api, "EO0002"), new_ca(api, "CA0001")
    body = refused(api.post("PractitionerRole", officer_role("R1", ca["id"], [place["V1"]])), 422,
                   expression="PractitionerRole.practitioner")
    assert "claim administrator" in diagnostics(body)
    refused(api.post("PractitionerRole", officer_role("R1", "no-such-eo", [place["V1"]])), 422,
            expression="PractitionerRole.practitioner")
    # villages only
    for key in ("R1", "D1", "W1"):
        refused(api.post("PractitionerRole", officer_role("R1", eo["id"], [place["V1"], place[key]])), 422,
                expression="PractitionerRole.location[1]")
    refused(api.post("PractitionerRole", officer_role("R1", eo["id"], ["no-such-village"])), 422,
            expression="PractitionerRole.location[0]")
    refused(api.post("PractitionerRole", officer_role("R1", eo["id"], [place["V1"], place["V1"]])), 422,
            expression="PractitionerRole.location[1]")
    # the substitute: another current enrolment officer
    body = refused(api.post("PractitionerRole", officer_role("R1", eo["id"], substitute_id=eo["id"])), 422,
                   expression="PractitionerRole.extension")
    assert "own substitute" in diagnostics(body)
    refused(api.post("PractitionerRole", officer_role("R1", eo["id"], substitute_id=ca["id"])), 422,
            expression="PractitionerRole.extension")
    refused(api.post("PractitionerRole", officer_role("R1", eo["id"], substitute_id="no-such-eo")), 422,
            expression="PractitionerRole.extension")
    gone = new_eo(api, "EO0009")
    assert api.delete(f"Practitioner/{gone['id']}").status_code == 204
    refused(api.post("PractitionerRole", officer_role("R1", eo["id"], substitute_id=gone["id"])), 422,
            expression="PractitionerRole.extension")
    # works-to must be a whole date
    refused(api.post("PractitionerRole", officer_role("R1", eo["id"], works_to="2030-06")), 422,
            expression="PractitionerRole.period.end")
    # the profile: no organization on an officer role, no period start
    refused(api.post("PractitionerRole", officer_role("R1", eo["id"]) | {
        "organization": {"reference": f"Organization/{place['HF1']}"}}), 400)
    refused(api.post("PractitionerRole", officer_role("R1", eo["id"]) | {
        "period": {"start": "2020-01-01", "end": "2030-01-01"}}), 400)
    assert get(api, "PractitionerRole?_summary=count")["total"] == 0
    # and all is well with a valid substitute
    role = created(api.post("PractitionerRole", officer_role("R1", eo["id"], [place["V1"]],
                                                             substitute_id=other["id"])))
    assert role["extension"][0]["valueReference"]["reference"] == f"Practitioner/{other['id']}"


# --- blocked deletes ----------------------------------------------------------------------------------------


def test_practitioner_with_current_roles_cannot_be_deleted(api, place):
    ca, eo, sub = new_ca(api, "CA0001"), new_eo(api, "EO0001"), new_eo(api, "EO0002")
    ca_role = created(api.post("PractitionerRole", claim_admin_role("CAR001", ca["id"], place["HF1"])))
    eo_role = created(api.post("PractitionerRole", officer_role("EOR001", eo["id"], [place["V1"]],
                                                                substitute_id=sub["id"])))
    body = refused(api.delete(f"Practitioner/{ca['id']}"), 409)
    assert "CAR001" in diagnostics(body) and "role" in diagnostics(body)
    body = refused(api.delete(f"Practitioner/{eo['id']}"), 409)
    assert "EOR001" in diagnostics(body)
    body = refused(api.delete(f"Practitioner/{sub['id']}"), 409)
    assert "substitute" in diagnostics(body) and "EOR001" in diagnostics(body)
    # a facility whose claims an administrator enters, and a village an officer serves, stay too
    body = refused(api.delete(f"Organization/{place['HF1']}"), 409)
    assert "CAR001" in diagnostics(body)
    body = refused(api.delete(f"Location/{place['V1']}"), 409, 422)
    assert "EOR001" in diagnostics(body)
    for path in (f"Practitioner/{ca['id']}", f"Practitioner/{eo['id']}", f"Practitioner/{sub['id']}",
                 f"Location/{place['V1']}"):
        assert get(api, path)["meta"]["versionId"] == "1"
    # once the roles are gone, everything can go
    assert api.delete(f"PractitionerRole/{ca_role['id']}").status_code == 204
    assert api.delete(f"PractitionerRole/{eo_role['id']}").status_code == 204
    for path in (f"Practitioner/{ca['id']}", f"Practitioner/{eo['id']}", f"Practitioner/{sub['id']}",
                 f"Organization/{place['HF1']}", f"Location/{place['V1']}"):
        assert api.delete(path).status_code == 204, path


# --- search -------------------------------------------------------------------------------------------------


@pytest.fixture
def people(api: Any, place: dict[str, str]) -> dict[str, str]:
    ids = dict(place)
    ids["ca1"] = new_ca(api, "CA0001", "Pérez", "José Luis", birth_date="1970-05-01", phone="111",
                        email="jp@example.org")["id"]
    ids["ca2"] = new_ca(api, "CA0002", "Mwangi", "Amina", birth_date="1985-02-02")["id"]
    ids["eo1"] = new_eo(api, "EO0001", "Perez", "Ana", birth_date="1990-03-03", district_id=place["D1"],
                        phone="222")["id"]
    ids["eo2"] = new_eo(api, "EO0002", "Okafor", "Chidi", birth_date="1975-04-04", district_id=place["D2"],
                        email="co@example.org")["id"]
    ids["car1"] = created(api.post("PractitionerRole", claim_admin_role(
        "CAR001", ids["ca1"], place["HF1"], phone="333")))["id"]
    ids["car2"] = created(api.post("PractitionerRole", claim_admin_role("CAR002", ids["ca2"], place["HF2"])))["id"]
    ids["eor1"] = created(api.post("PractitionerRole", officer_role(
        "EOR001", ids["eo1"], [place["V1"], place["V2"]], substitute_id=ids["eo2"])))["id"]
    ids["eor2"] = created(api.post("PractitionerRole", officer_role("EOR002", ids["eo2"], [place["V2"]])))["id"]
    return ids


def test_practitioner_search(api, people):
    p = people
    assert found(api, "Practitioner") == {p["ca1"], p["ca2"], p["eo1"], p["eo2"]}
    assert found(api, "Practitioner?identifier=CA0001") == {p["ca1"]}
    assert found(api, f"Practitioner?identifier=UUID|{p['eo1']}") == {p["eo1"]}
    assert found(api, f"Practitioner?_id={p['eo2']}") == {p["eo2"]}
    # names fold case and accents, like Patient
    assert found(api, "Practitioner?name=perez") == {p["ca1"], p["eo1"]}
    assert found(api, "Practitioner?family=PÉREZ") == {p["ca1"], p["eo1"]}
    assert found(api, "Practitioner?family:exact=Pérez") == {p["ca1"]}
    assert found(api, "Practitioner?given=jose") == {p["ca1"]}
    assert found(api, "Practitioner?given=luis") == {p["ca1"]}  # each other name on its own
    assert found(api, "Practitioner?name=ami") == {p["ca2"]}
    assert found(api, "Practitioner?name:contains=kaf") == {p["eo2"]}
    # qualification: CA / EO, any case, with or without the system
    assert found(api, "Practitioner?qualification=CA") == {p["ca1"], p["ca2"]}
    assert found(api, "Practitioner?qualification=eo") == {p["eo1"], p["eo2"]}
    system = "https://openimis.github.io/openimis_fhir_r4_ig/CodeSystem/practitioner-qualification-type"
    assert found(api, f"Practitioner?qualification={system}|EO") == {p["eo1"], p["eo2"]}
    assert found(api, "Practitioner?qualification:not=CA") == {p["eo1"], p["eo2"]}
    assert found(api, "Practitioner?qualification=MD") == set()
    assert found(api, "Practitioner?qualification=CA&name=perez") == {p["ca1"]}
    # telecom, birth date, address
    assert found(api, "Practitioner?phone=111") == {p["ca1"]}
    assert found(api, "Practitioner?email=co@example.org") == {p["eo2"]}
    assert found(api, "Practitioner?telecom=222") == {p["eo1"]}
    assert found(api, "Practitioner?telecom=email|jp@example.org") == {p["ca1"]}
    assert found(api, "Practitioner?telecom=phone|jp@example.org") == set()
    assert found(api, "Practitioner?birthdate=1990-03-03") == {p["eo1"]}
    assert found(api, "Practitioner?birthdate=lt1980-01-01") == {p["ca1"], p["eo2"]}
    assert found(api, "Practitioner?address-district=rapta") == {p["eo1"]}
    assert found(api, "Practitioner?address-district=Jimara") == {p["eo2"]}
    assert found(api, "Practitioner?address-state=ultha") == {p["eo1"], p["eo2"]}
    assert found(api, "Practitioner?address=jim") == {p["eo2"]}
    # sorts shared by both kinds
    assert ids_of(get(api, "Practitioner?_sort=family")) == [p["ca2"], p["eo2"], p["ca1"], p["eo1"]]
    assert ids_of(get(api, "Practitioner?_sort=birthdate")) == [p["ca1"], p["eo2"], p["ca2"], p["eo1"]]
    assert ids_of(get(api, "Practitioner?_sort=-birthdate"))[0] == p["eo1"]
    refused(api.get("Practitioner?birthdate=not-a-date"), 400)


def test_practitioner_role_search(api, people):
    p = people
    assert found(api, "PractitionerRole") == {p["car1"], p["car2"], p["eor1"], p["eor2"]}
    assert found(api, "PractitionerRole?identifier=EOR002") == {p["eor2"]}
    assert found(api, f"PractitionerRole?practitioner={p['ca1']}") == {p["car1"]}
    assert found(api, f"PractitionerRole?practitioner=Practitioner/{p['eo2']}") == {p["eor2"]}
    assert found(api, f"PractitionerRole?organization=Organization/{p['HF2']}") == {p["car2"]}
    assert found(api, f"PractitionerRole?location={p['V2']}") == {p["eor1"], p["eor2"]}
    assert found(api, f"PractitionerRole?location=Location/{p['V1']}") == {p["eor1"]}
    assert found(api, f"PractitionerRole?substitute={p['eo2']}") == {p["eor1"]}
    assert found(api, "PractitionerRole?role=CA") == {p["car1"], p["car2"]}
    assert found(api, "PractitionerRole?role=eo") == {p["eor1"], p["eor2"]}
    assert found(api, "PractitionerRole?role:not=EO") == {p["car1"], p["car2"]}
    assert found(api, "PractitionerRole?phone=333") == {p["car1"]}
    assert found(api, "PractitionerRole?telecom=phone|333") == {p["car1"]}
    assert found(api, "PractitionerRole?telecom:missing=true") == {p["car2"], p["eor1"], p["eor2"]}
    assert found(api, "PractitionerRole?organization:missing=false") == {p["car1"], p["car2"]}
    assert found(api, "PractitionerRole?_sort=_id") == {p["car1"], p["car2"], p["eor1"], p["eor2"]}
    refused(api.get("PractitionerRole?organization=Location/x"), 400)
    # a deleted role drops out of searches by its villages
    assert api.delete(f"PractitionerRole/{p['eor2']}").status_code == 204
    assert found(api, f"PractitionerRole?location={p['V2']}") == {p["eor1"]}



def includes(bundle: dict[str, Any]) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if e["search"]["mode"] == "include"}


def test_role_references_drive_include_revinclude_chains_and_has(api, people):
    """The reference search parameters declare their paths, so the generic cross-resource search works."""
    p = people
    bundle = get(api, f"PractitionerRole?_id={p['eor1']}&_include=PractitionerRole:practitioner"
                      "&_include=PractitionerRole:location&_include=PractitionerRole:substitute")
    assert includes(bundle) == {f"Practitioner/{p['eo1']}", f"Practitioner/{p['eo2']}", f"Location/{p['V1']}",
                                f"Location/{p['V2']}"}
    bundle = get(api, f"PractitionerRole?_id={p['car1']}&_include=PractitionerRole:organization")
    assert includes(bundle) == {f"Organization/{p['HF1']}"}
    bundle = get(api, f"Practitioner?_id={p['ca1']},{p['eo2']}&_revinclude=PractitionerRole:practitioner")
    assert includes(bundle) == {f"PractitionerRole/{p['car1']}", f"PractitionerRole/{p['eor2']}"}
    bundle = get(api, f"Organization?_id={p['HF2']}&_revinclude=PractitionerRole:organization"
                      "&_include:iterate=PractitionerRole:practitioner")
    assert includes(bundle) == {f"PractitionerRole/{p['car2']}", f"Practitioner/{p['ca2']}"}
    # chains: roles of officers named Perez, of a facility by code, serving a village by name
    assert found(api, "PractitionerRole?practitioner.name=perez") == {p["car1"], p["eor1"]}
    assert found(api, "PractitionerRole?organization.identifier=HF0002") == {p["car2"]}
    assert found(api, "PractitionerRole?location.name=jamula") == {p["eor1"]}
    # _has: officers serving Tsoka, facilities with a claim administrator named Mwangi
    assert found(api, f"Practitioner?_has:PractitionerRole:practitioner:location={p['V2']}") == {
        p["eo1"], p["eo2"]}
    assert found(api, "Organization?_has:PractitionerRole:organization:practitioner.family=mwangi") == {p["HF2"]}


# --- health facility contacts -----------------------------------------------------------------------------


def test_health_facility_lists_its_claim_administrators(api, place):
    hf1, hf2 = place["HF1"], place["HF2"]
    assert "contact" not in get(api, f"Organization/{hf1}")
    a, b = new_ca(api, "CA0001", "Dani", "Rushila"), new_ca(api, "CA0002", "Mwangi", "Amina")
    assert version(api, f"Organization/{hf1}") == 1  # a practitioner alone is no contact
    role_a = created(api.post("PractitionerRole", claim_admin_role("CAR001", a["id"], hf1)))
    facility = get(api, f"Organization/{hf1}")
    assert facility["meta"]["versionId"] == "2"
    assert facility["contact"] == [{"purpose": PAYOR, "name": {"use": "official", "family": "Dani",
                                                               "given": ["Rushila"]}}]
    created(api.post("PractitionerRole", claim_admin_role("CAR002", b["id"], hf1)))
    assert contact_names(api, hf1) == ["Dani Rushila", "Mwangi Amina"]
    assert version(api, f"Organization/{hf1}") == 3
    # renaming an administrator re-renders the facility; other facilities are untouched
    a["name"][0]["family"] = "Danielsson"
    put(api, a)
    assert contact_names(api, hf1) == ["Danielsson Rushila", "Mwangi Amina"]
    assert version(api, f"Organization/{hf1}") == 4
    assert version(api, f"Organization/{hf2}") == 1
    # changing only the birth date or telecom of the administrator or the role: no new facility version
    a = get(api, f"Practitioner/{a['id']}")
    a["birthDate"] = "1979-10-10"
    put(api, a)
    role_a["telecom"] = [{"system": "phone", "value": "+255"}]
    role_a = put(api, role_a)
    assert version(api, f"Organization/{hf1}") == 4
    # moving the role re-renders both facilities
    role_a["organization"] = {"reference": f"Organization/{hf2}"}
    role_a = put(api, role_a)
    assert contact_names(api, hf1) == ["Mwangi Amina"] and version(api, f"Organization/{hf1}") == 5
    assert contact_names(api, hf2) == ["Danielsson Rushila"] and version(api, f"Organization/{hf2}") == 2
    # deleting the role removes the contact
    assert api.delete(f"PractitionerRole/{role_a['id']}").status_code == 204
    assert "contact" not in get(api, f"Organization/{hf2}")
    assert version(api, f"Organization/{hf2}") == 3
    # restoring it (update of a deleted role) brings it back
    put(api, claim_admin_role("CAR001", a["id"], hf2) | {"id": role_a["id"]})
    assert contact_names(api, hf2) == ["Danielsson Rushila"]
    # the history keeps each state
    names = [[c["name"]["family"] for c in e["resource"].get("contact", [])]
             for e in get(api, f"Organization/{hf1}/_history")["entry"]]
    assert names == [["Mwangi"], ["Danielsson", "Mwangi"], ["Dani", "Mwangi"], ["Dani"], []]
    # what GET returns (contact included) can be PUT back; contact is GET-only and ignored on input
    facility = get(api, f"Organization/{hf1}")
    facility["contact"].append({"purpose": PAYOR, "name": {"family": "Nobody", "given": ["Else"]}})
    assert contact_names(api, hf1) == ["Mwangi Amina"]
    assert [c["name"]["family"] for c in put(api, facility)["contact"]] == ["Mwangi"]


def test_health_facility_contacts_render_in_search_and_batch(api, place):
    for i, hf in enumerate(("HF1", "HF2")):
        ca = new_ca(api, f"CA000{i}", f"Family{i}", "Given")
        created(api.post("PractitionerRole", claim_admin_role(f"CAR00{i}", ca["id"], place[hf])))
    bundle = get(api, "Organization?type=prov&_sort=name")
    assert [[c["name"]["family"] for c in e["resource"]["contact"]] for e in bundle["entry"]] == [
        ["Family0"], ["Family1"]]


# --- the IG examples ---------------------------------------------------------------------------------------


def _without_id(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "id"}


@pytest.mark.parametrize("name", [CA_EXAMPLE, EO_EXAMPLE])
def test_practitioner_examples_post_and_read_back_equivalent(api, name):
    example = load_example(name)
    # POST without the id: identifier[UUID] becomes the id, the content comes back as sent
    posted = created(api.post("Practitioner", _without_id(example)))
    uuid = next(i["value"] for i in example["identifier"] if i["type"]["coding"][0]["code"] == "UUID")
    assert posted["id"] == uuid
    assert posted["meta"]["profile"] == example["meta"]["profile"]
    got = get(api, f"Practitioner/{posted['id']}")
    assert got == posted
    assert_equivalent(_without_id(example), got)
    assert got["name"][0]["use"] == "official"  # the profile's pattern, absent from the CA example


@pytest.mark.parametrize("name", [CA_EXAMPLE, EO_EXAMPLE])
def test_practitioner_examples_put_to_their_id_are_stable(api, name):
    example = load_example(name)
    first = put(api, example, 201)
    assert first["id"] == example["id"]
    assert_equivalent(example, get(api, f"Practitioner/{example['id']}"))
    second = put(api, copy.deepcopy(example))
    assert {k: v for k, v in second.items() if k != "meta"} == {k: v for k, v in first.items() if k != "meta"}


def test_officer_example_with_address_and_role_round_trips(api, place):
    """The EO example extended with what its profile allows (district address, a role with villages)."""
    example = load_example(EO_EXAMPLE)
    example["address"] = [{"extension": [{"url": f"{EXT}address-location-reference",
                                          "valueReference": {"reference": f"Location/{place['D1']}"}}],
                           "type": "physical", "line": ["Plot 7"], "district": "Rapta", "state": "Ultha"}]
    eo = put(api, example, 201)
    assert_equivalent(example, eo)
    role = officer_role("EOR001", eo["id"], [place["V1"]], works_to="2030-12-31", phone="+2557")
    role["identifier"].append(ident("7c8f3a52-3f2a-4c3e-9d4f-0a4c6e2b9f11", "UUID"))
    got = created(api.post("PractitionerRole", role))
    assert got["id"] == "7c8f3a52-3f2a-4c3e-9d4f-0a4c6e2b9f11"
    assert_equivalent({k: v for k, v in role.items() if k != "meta"}, got)
    assert put(api, copy.deepcopy(got))["meta"]["versionId"] == "2"

