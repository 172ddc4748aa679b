"""Cross-resource search: _include, _revinclude (:iterate), chained parameters and _has, over the references the
profiles declare."""

from __future__ import annotations

from typing import Any

import pytest

from tests.builders import group, health_facility, location, patient


def created(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 201, resp.text
    return resp.json()


def search(api: Any, query: str, status: int = 200) -> dict[str, Any]:
    resp = api.get(query)
    assert resp.status_code == status, resp.text
    return resp.json()


def matches(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def includes(bundle: dict[str, Any]) -> list[str]:
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if e["search"]["mode"] == "include"]


@pytest.fixture
def scheme(api: Any) -> dict[str, str]:
    """Region → district (with a facility) → ward → two villages; two families (3 + 1 members)."""
    ids: dict[str, str] = {}
    ids["R"] = created(api.post("Location", location("R1", "Ultha", "R")))["id"]
    ids["D"] = created(api.post("Location", location("R1D1", "Rapta", "D", ids["R"])))["id"]
    ids["W"] = created(api.post("Location", location("R1D1W1", "Jamu", "W", ids["D"])))["id"]
    ids["V1"] = created(api.post("Location", location("R1D1W1V1", "Jamula", "V", ids["W"])))["id"]
    ids["V2"] = created(api.post("Location", location("R1D1W1V2", "Tsoka", "V", ids["W"])))["id"]
    ids["HF"] = created(api.post("Organization", health_facility("RAHOS001", ids["D"])))["id"]
    for code, village, gender, head in (("100000001", "V1", "male", True), ("100000002", "V1", "female", False),
                                        ("100000003", "V1", "female", False), ("200000001", "V2", "male", True)):
        res = patient(code, "Doe", "Jo", ids[village], gender=gender, head=head)
        res["generalPractitioner"] = [{"reference": f"Organization/{ids['HF']}"}]
        ids[code] = created(api.post("Patient", res))["id"]
    members = [ids["100000001"], ids["100000002"], ids["100000003"]]
    ids["G1"] = created(api.post("Group", group("100000001", members, ids["V1"])))["id"]
    ids["G2"] = created(api.post("Group", group("200000001", [ids["200000001"]], ids["V2"])))["id"]
    return ids


def test_include_adds_each_referenced_resource_once(api, scheme):
    bundle = search(api, "Patient?group=Group/" + scheme["G1"] + "&_include=Patient:general-practitioner")
    assert sorted(matches(bundle)) == sorted([scheme["100000001"], scheme["100000002"], scheme["100000003"]])
    assert includes(bundle) == [f"Organization/{scheme['HF']}"]  # three patients, one facility, listed once


def test_include_of_the_parent_location(api, scheme):
    bundle = search(api, f"Location?partof={scheme['W']}&_include=Location:partof")
    assert sorted(matches(bundle)) == sorted([scheme["V1"], scheme["V2"]])
    assert includes(bundle) == [f"Location/{scheme['W']}"]


def test_include_iterate_walks_up_the_hierarchy(api, scheme):
    bundle = search(api, f"Location?_id={scheme['V1']}&_include:iterate=Location:partof")
    assert sorted(includes(bundle)) == sorted(f"Location/{scheme[k]}" for k in ("W", "D", "R"))


def test_a_resource_that_is_a_match_is_not_repeated_as_include(api, scheme):
    bundle = search(api, "Location?name:exact=Jamu,Rapta&_include=Location:partof")
    assert sorted(matches(bundle)) == sorted([scheme["W"], scheme["D"]])
    assert includes(bundle) == [f"Location/{scheme['R']}"]  # Rapta is already a match


def test_revinclude_brings_the_family_of_each_patient(api, scheme):
    bundle = search(api, f"Patient?_id={scheme['100000002']},{scheme['200000001']}&_revinclude=Group:member")
    assert sorted(includes(bundle)) == sorted([f"Group/{scheme['G1']}", f"Group/{scheme['G2']}"])


def test_revinclude_iterate_then_include(api, scheme):
    """The facility, the patients that name it, and (iterating) their families."""
    query = (f"Organization?_id={scheme['HF']}&_revinclude=Patient:general-practitioner"
             "&_revinclude:iterate=Group:member")
    bundle = search(api, query)
    assert matches(bundle) == [scheme["HF"]]
    got = includes(bundle)
    assert len(got) == len(set(got)) == 6
    assert {r.split("/")[0] for r in got} == {"Patient", "Group"}


def test_deleted_resources_are_not_included(api, scheme):
    assert api.delete(f"Group/{scheme['G2']}").status_code in (200, 204)
    bundle = search(api, f"Patient?_id={scheme['200000001']}&_revinclude=Group:member")
    assert includes(bundle) == []


def test_include_links_keep_the_include(api, scheme):
    bundle = search(api, "Patient?_count=1&_include=Patient:general-practitioner")
    next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    assert "_include=Patient%3Ageneral-practitioner" in next_url
    page2 = search(api, next_url.split("/fhir/", 1)[1])
    assert includes(page2) == [f"Organization/{scheme['HF']}"]


def test_include_fan_out_is_capped_with_an_outcome(api, scheme, app, monkeypatch):
    monkeypatch.setattr(app.settings, "include_max", 2)
    resp = api.get(f"Organization?_id={scheme['HF']}&_revinclude=Patient:general-practitioner")
    assert resp.status_code == 400
    outcome = resp.json()
    assert outcome["issue"][0]["code"] == "too-costly"
    assert "_count" in outcome["issue"][0]["diagnostics"]


def test_unknown_include_is_refused_when_strict_and_reported_when_lenient(api, scheme):
    strict = {"Prefer": "handling=strict"}
    resp = api.get("Patient?_include=Patient:nope", headers=strict)
    assert resp.status_code == 400
    assert "nope" in resp.json()["issue"][0]["diagnostics"]
    lenient = search(api, "Patient?_include=Patient:nope")
    outcome = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["resource"]["issue"][0]["severity"] == "warning"
    assert api.get("Patient?_include=garbage", headers=strict).status_code == 400


# --- chained parameters ------------------------------------------------------------------------------------


def test_chain_on_the_family_identifier(api, scheme):
    bundle = search(api, "Patient?group.identifier=200000001")
    assert matches(bundle) == [scheme["200000001"]]


def test_chain_with_a_type_and_a_modifier(api, scheme):
    bundle = search(api, "Patient?general-practitioner:Organization.name:exact=Facility RAHOS001&_count=10")
    assert len(matches(bundle)) == 4
    assert matches(search(api, "Patient?general-practitioner.name:exact=Facility")) == []


def test_two_level_chain(api, scheme):
    bundle = search(api, "Location?partof.partof.name=Rapta")
    assert sorted(matches(bundle)) == sorted([scheme["V1"], scheme["V2"]])


def test_chain_through_a_non_reference_is_a_400_when_strict(api, scheme):
    resp = api.get("Patient?gender.name=x", headers={"Prefer": "handling=strict"})
    assert resp.status_code == 400
    assert api.get("Patient?group.a.b.c.d=x", headers={"Prefer": "handling=strict"}).status_code == 400


def test_chain_values_are_checked_like_plain_values(api, scheme):
    resp = api.get("Patient?group.identifier=' OR 1=1 --")
    assert resp.status_code == 400


# --- _has ----------------------------------------------------------------------------------------------------


def test_has_finds_patients_named_by_a_family(api, scheme):
    bundle = search(api, "Patient?_has:Group:member:identifier=100000001")
    assert sorted(matches(bundle)) == sorted([scheme["100000001"], scheme["100000002"], scheme["100000003"]])


def test_has_finds_facilities_chosen_by_female_patients(api, scheme):
    assert matches(search(api, "Organization?_has:Patient:general-practitioner:gender=female")) == [scheme["HF"]]
    assert matches(search(api, "Organization?_has:Patient:general-practitioner:gender=other")) == []


def test_has_on_the_children_of_a_location(api, scheme):
    assert matches(search(api, "Location?_has:Location:partof:name=Jamula")) == [scheme["W"]]


def test_nested_has(api, scheme):
    """Facilities chosen by members of family 200000001."""
    query = "Organization?_has:Patient:general-practitioner:_has:Group:member:identifier=200000001"
    assert matches(search(api, query)) == [scheme["HF"]]
    assert matches(search(api, query.replace("200000001", "999999999"))) == []


def test_malformed_has_is_a_400_when_strict(api, scheme):
    strict = {"Prefer": "handling=strict"}
    assert api.get("Patient?_has:Group=1", headers=strict).status_code == 400
    assert api.get("Patient?_has:Group:nope:identifier=1", headers=strict).status_code == 400
    assert api.get("Patient?_has:Nope:member:identifier=1", headers=strict).status_code == 400


def test_chain_into_a_type_the_user_cannot_read_is_forbidden(api, scheme, client, app):
    from tests.conftest import CLERK, Api

    clerk = Api(client, app.tokens.issue(CLERK[0])[0])
    assert clerk.get("Organization?type=prov").json().get("entry") is None  # the clerk cannot read facilities…
    probe = clerk.get("Patient?general-practitioner.name=Facility")
    assert probe.status_code == 403  # …so cannot learn about them through a chain either
    assert clerk.get("Patient?group.identifier=100000001").status_code == 200


def test_address_locations_are_references_too(api, scheme):
    bundle = search(api, f"Patient?_id={scheme['200000001']}&_include=Patient:address-location")
    assert includes(bundle) == [f"Location/{scheme['V2']}"]
    assert matches(search(api, "Location?_has:Patient:address-location:gender=male&type=V")) == [
        scheme["V1"], scheme["V2"]]
    assert matches(search(api, "Patient?address-location.name=Tsoka")) == [scheme["200000001"]]


def test_metadata_lists_the_includes_each_type_accepts(client):
    by_type = {r["type"]: r for r in client.get("/fhir/metadata").json()["rest"][0]["resource"]}
    assert "Patient:general-practitioner" in by_type["Patient"]["searchInclude"]
    assert "Group:member" in by_type["Patient"]["searchRevInclude"]
    assert "PractitionerRole:practitioner" in by_type["PractitionerRole"]["searchInclude"]
    assert "InsurancePlan:covered-item" in by_type["Medication"]["searchRevInclude"]
