"""openIMIS register rules through the FHIR API (domain §2.1–2.5, §3.1.1): insurance numbers, families and
their head, the location tree, where facilities / families / insurees attach, references, and re-rendering."""

from __future__ import annotations

from typing import Any

import pytest

from tests.builders import CS, EXT, health_facility, ident, location, patient
from tests.builders import group as family_group
from tests.renders import renders_of
from tests.responses import created, refused

OO = "OperationOutcome"


# --- helpers ------------------------------------------------------------------------------------------------




def ext_of(resource: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in resource.get("extension", []) if e["url"] == EXT + name), None)


def group_ref(p: dict[str, Any]) -> str | None:
    e = ext_of(p, "patient-group-reference")
    return None if e is None else e["valueReference"]["reference"]


def is_head(p: dict[str, Any]) -> bool:
    return bool(ext_of(p, "patient-is-head")["valueBoolean"])  # type: ignore[index]


def get(api: Any, path: str) -> dict[str, Any]:
    r = api.get(path)
    assert r.status_code == 200, r.text
    return r.json()


def put(api: Any, resource: dict[str, Any], status: int = 200) -> dict[str, Any]:
    r = api.put(f"{resource['resourceType']}/{resource['id']}", resource)
    assert r.status_code == status, r.text
    return r.json()


def hf(code: str, district_id: str) -> dict[str, Any]:
    return health_facility(code, district_id, state="x", district="x")


@pytest.fixture
def tree(api: Any) -> dict[str, str]:
    """R1 → D1 → W1 → V1, V2 (ids by code)."""
    ids: dict[str, str] = {}
    ids["R1"] = created(api.post("Location", location("R1", "Ultha", "R")))["id"]
    ids["D1"] = created(api.post("Location", location("R1D1", "Rapta", "D", ids["R1"])))["id"]
    ids["W1"] = created(api.post("Location", location("R1D1W1", "Jamu", "W", ids["D1"])))["id"]
    ids["V1"] = created(api.post("Location", location("R1D1W1V1", "Jamula", "V", ids["W1"])))["id"]
    ids["V2"] = created(api.post("Location", location("R1D1W1V2", "Tsoka", "V", ids["W1"])))["id"]
    return ids


def new_patient(api: Any, code: str, village: str, **kw: Any) -> dict[str, Any]:
    return created(api.post("Patient", patient(code, "Doe", code, village, **kw)))


def new_family(api: Any, village: str, head_code: str, *members: str) -> tuple[dict[str, Any], list[str]]:
    """A head (isHead) plus members, then the Group; returns (group, [head id, member ids…])."""
    ids = [new_patient(api, head_code, village, head=True)["id"]]
    ids += [new_patient(api, c, village)["id"] for c in members]
    return created(api.post("Group", family_group(head_code, ids, village))), ids


# --- insurance number (CHFID) -------------------------------------------------------------------------------


def test_insuree_code_at_most_12_characters(api, tree):
    assert new_patient(api, "A" * 12, tree["V1"])["identifier"][0]["value"] == "A" * 12
    refused(api.post("Patient", patient("B" * 13, "Doe", "Jo", tree["V1"])), 400, 422,
            expression="Patient.identifier")
    p = get(api, f"Patient?identifier={'A' * 12}")
    assert p["total"] == 1 if "total" in p else len(p["entry"]) == 1
    # an update to 13 characters is refused the same way and leaves the insuree as it was
    current = get(api, "Patient?identifier=" + "A" * 12)["entry"][0]["resource"]
    current["identifier"] = [ident("C" * 13)]
    refused(api.put(f"Patient/{current['id']}", current), 400, 422, expression="Patient.identifier")
    assert get(api, f"Patient/{current['id']}")["meta"]["versionId"] == "1"


def test_insuree_code_unique_among_current_insurees_and_reusable_after_delete(api, tree):
    first = new_patient(api, "111111111", tree["V1"])
    body = refused(api.post("Patient", patient("111111111", "Roe", "Ann", tree["V2"])), 409,
                   expression="Patient.identifier")
    assert "111111111" in body["issue"][0]["diagnostics"]
    # update-as-create under another id: same rule
    dup = patient("111111111", "Roe", "Ann", tree["V2"]) | {"id": "another-insuree"}
    refused(api.put("Patient/another-insuree", dup), 409)
    # another insuree cannot take the number by an update either
    second = new_patient(api, "222222222", tree["V1"])
    second["identifier"] = [ident("111111111")]
    refused(api.put(f"Patient/{second['id']}", second), 409)
    # keeping one's own number is not a clash
    first["name"][0]["given"] = ["Johnny"]
    assert put(api, first)["name"][0]["given"] == ["Johnny"]
    # after the holder is deleted the number is free again
    assert api.delete(f"Patient/{first['id']}").status_code == 204
    again = new_patient(api, "111111111", tree["V2"])
    assert again["id"] != first["id"]
    assert api.get(f"Patient/{first['id']}").status_code == 410


# --- families (Group) ---------------------------------------------------------------------------------------


def test_group_links_members_with_extension_and_head(api, tree):
    head = new_patient(api, "100000001", tree["V1"], head=True)
    member = new_patient(api, "100000002", tree["V1"])
    assert group_ref(head) is None and group_ref(member) is None
    g = created(api.post("Group", family_group("F1", [head["id"], member["id"]], tree["V1"])))
    assert g["quantity"] == 2
    assert g["identifier"][0]["value"] == "F1"
    assert sorted(m["entity"]["reference"] for m in g["member"]) == sorted(
        [f"Patient/{head['id']}", f"Patient/{member['id']}"])
    h, m = get(api, f"Patient/{head['id']}"), get(api, f"Patient/{member['id']}")
    assert group_ref(h) == group_ref(m) == f"Group/{g['id']}"
    assert is_head(h) and not is_head(m)
    assert h["meta"]["versionId"] == m["meta"]["versionId"] == "2"  # members got a new version
    # search by group finds both
    found = get(api, f"Patient?group={g['id']}")
    assert {e["resource"]["id"] for e in found["entry"]} == {head["id"], member["id"]}


def test_group_head_by_code_when_no_member_is_flagged(api, tree):
    a = new_patient(api, "200000001", tree["V1"])
    b = new_patient(api, "200000002", tree["V1"])
    g = created(api.post("Group", family_group("200000002", [a["id"], b["id"]], tree["V1"])))
    assert g["name"].startswith("Doe")
    assert is_head(get(api, f"Patient/{b['id']}")) and not is_head(get(api, f"Patient/{a['id']}"))


def test_family_has_exactly_one_head(api, tree):
    a = new_patient(api, "300000001", tree["V1"], head=True)
    b = new_patient(api, "300000002", tree["V1"], head=True)
    c = new_patient(api, "300000003", tree["V1"])
    refused(api.post("Group", family_group("F3", [a["id"], b["id"]], tree["V1"])), 409, 422,
            expression="Group.member")
    refused(api.post("Group", family_group("F3", [c["id"]], tree["V1"])), 409, 422, expression="Group.member")
    # nothing was attached by the refused writes
    for p in (a, b, c):
        got = get(api, f"Patient/{p['id']}")
        assert group_ref(got) is None and got["meta"]["versionId"] == "1"
    # no members at all: a family needs its head
    empty = family_group("300000009", [], tree["V1"])
    r = api.post("Group", empty)
    assert 400 <= r.status_code < 500 and r.json()["resourceType"] == OO
    # a second head cannot join through the Patient either
    g = created(api.post("Group", family_group("F3", [a["id"], c["id"]], tree["V1"])))
    b["extension"].append({"url": f"{EXT}patient-group-reference",
                           "valueReference": {"reference": f"Group/{g['id']}"}})
    refused(api.put(f"Patient/{b['id']}", b), 409, 422)
    # nor can the head step down while heading the family
    head = get(api, f"Patient/{a['id']}")
    next(e for e in head["extension"] if e["url"] == EXT + "patient-is-head")["valueBoolean"] = False
    refused(api.put(f"Patient/{a['id']}", head), 409, 422)


def test_moving_members_between_families(api, tree):
    g1, (h1, m1, m2) = new_family(api, tree["V1"], "400000001", "400000002", "400000003")
    g2, (h2,) = new_family(api, tree["V2"], "400000011")
    # through the Group: g2 now lists m1
    g2["member"].append({"entity": {"reference": f"Patient/{m1}"}})
    moved = put(api, g2)
    assert moved["quantity"] == 2
    assert group_ref(get(api, f"Patient/{m1}")) == f"Group/{g2['id']}"
    old = get(api, f"Group/{g1['id']}")
    assert old["quantity"] == 2 and f"Patient/{m1}" not in {m["entity"]["reference"] for m in old["member"]}
    assert old["meta"]["versionId"] == "2"
    # through the Patient: m2 points at g2
    p = get(api, f"Patient/{m2}")
    next(e for e in p["extension"] if e["url"] == EXT + "patient-group-reference")["valueReference"] = {
        "reference": f"Group/{g2['id']}"}
    put(api, p)
    assert get(api, f"Group/{g2['id']}")["quantity"] == 3
    assert get(api, f"Group/{g1['id']}")["quantity"] == 1
    # a head cannot be pulled into another family while heading its own
    g2 = get(api, f"Group/{g2['id']}")
    g2["member"].append({"entity": {"reference": f"Patient/{h1}"}})
    refused(api.put(f"Group/{g2['id']}", g2), 409, 422)
    assert group_ref(get(api, f"Patient/{h1}")) == f"Group/{g1['id']}"
    # dropping a member from the list detaches it
    dropped = (f"Patient/{h1}", f"Patient/{m2}")
    g2["member"] = [m for m in g2["member"] if m["entity"]["reference"] not in dropped]
    assert put(api, g2)["quantity"] == 2
    assert group_ref(get(api, f"Patient/{m2}")) is None
    assert h2 in {m["entity"]["reference"].split("/")[1] for m in get(api, f"Group/{g2['id']}")["member"]}


def test_deleting_family_detaches_members_and_head_deletion_needs_it(api, tree):
    g, (head, member) = new_family(api, tree["V1"], "500000001", "500000002")
    body = refused(api.delete(f"Patient/{head}"), 409, 422)
    assert "head" in body["issue"][0]["diagnostics"].lower()
    assert get(api, f"Patient/{head}")["meta"]["versionId"] == "2"
    # a plain member can go; the family shrinks (new version)
    assert api.delete(f"Patient/{member}").status_code == 204
    fam = get(api, f"Group/{g['id']}")
    assert fam["quantity"] == 1 and fam["meta"]["versionId"] == "2"
    assert api.delete(f"Group/{g['id']}").status_code == 204
    assert api.get(f"Group/{g['id']}").status_code == 410
    h = get(api, f"Patient/{head}")
    assert group_ref(h) is None and not is_head(h) and h["meta"]["versionId"] == "3"
    assert api.delete(f"Patient/{head}").status_code == 204
    # the family code is free again
    created(api.post("Group", family_group("500000001", [new_patient(api, "500000003", tree["V1"],
                                                                     head=True)["id"]], tree["V1"])))


# --- location tree ------------------------------------------------------------------------------------------


def test_location_hierarchy_is_r_d_w_v(api, tree):
    refused(api.post("Location", location("RXV", "Bad", "V", tree["R1"])), 422, expression="Location.partOf")
    refused(api.post("Location", location("RXD", "Bad", "D")), 422, expression="Location.partOf")
    refused(api.post("Location", location("RXR", "Bad", "R", tree["R1"])), 422, expression="Location.partOf")
    refused(api.post("Location", location("RXW", "Bad", "W", tree["W1"])), 422, expression="Location.partOf")
    refused(api.post("Location", location("RXW2", "Bad", "W", tree["V1"])), 422, expression="Location.partOf")
    # a move keeps the rule: a village cannot be re-parented under a district
    v = get(api, f"Location/{tree['V2']}")
    v["partOf"] = {"reference": f"Location/{tree['D1']}"}
    refused(api.put(f"Location/{v['id']}", v), 422, expression="Location.partOf")
    # nor can a level change leave children under the wrong parent
    w = get(api, f"Location/{tree['W1']}")
    w["physicalType"]["coding"][0]["code"] = "V"
    w["physicalType"]["coding"][0].pop("display", None)
    refused(api.put(f"Location/{w['id']}", w), 422)
    assert get(api, "Location?_summary=count")["total"] == 5


def test_location_codes_unique(api, tree):
    body = refused(api.post("Location", location("R1D1", "Another", "D", tree["R1"])), 409,
                   expression="Location.identifier")
    assert "R1D1" in body["issue"][0]["diagnostics"]
    r2 = created(api.post("Location", location("R2", "Second", "R")))
    r2["identifier"] = [ident("R1")]
    refused(api.put(f"Location/{r2['id']}", r2), 409)
    assert api.delete(f"Location/{tree['V2']}").status_code == 204
    created(api.post("Location", location("R1D1W1V2", "Tsoka again", "V", tree["W1"])))


def test_location_with_children_or_users_cannot_be_deleted(api, tree):
    for key in ("R1", "D1", "W1"):
        body = refused(api.delete(f"Location/{tree[key]}"), 409, 422)
        assert "sub-location" in body["issue"][0]["diagnostics"]
    new_patient(api, "600000001", tree["V1"])
    body = refused(api.delete(f"Location/{tree['V1']}"), 409, 422)
    assert "600000001" in body["issue"][0]["diagnostics"]
    # a family (its head living elsewhere) keeps its village in use too
    head = new_patient(api, "600000002", tree["V1"], head=True)
    created(api.post("Group", family_group("F6", [head["id"]], tree["V2"])))
    refused(api.delete(f"Location/{tree['V2']}"), 409, 422)
    d2 = created(api.post("Location", location("R1D2", "Second", "D", tree["R1"])))
    created(api.post("Organization", hf("HF0001", d2["id"])))
    body = refused(api.delete(f"Location/{d2['id']}"), 409, 422)
    assert "HF0001" in body["issue"][0]["diagnostics"]
    for key in ("R1", "D1", "W1", "V1", "V2"):
        assert get(api, f"Location/{tree[key]}")["meta"]["versionId"] == "1"


def test_what_attaches_where(api, tree):
    # a health facility sits in a district
    for key in ("R1", "W1", "V1"):
        refused(api.post("Organization", hf(f"HF{key}", tree[key])), 422,
                expression="Organization.address[0].extension")
    assert created(api.post("Organization", hf("HFD1", tree["D1"])))["address"][0]["district"] == "Rapta"
    # an insuree lives in a village
    for key in ("R1", "D1", "W1"):
        refused(api.post("Patient", patient(f"7{key}", "Doe", "Jo", tree[key])), 422,
                expression="Patient.address[0].extension")
    # a family too
    head = new_patient(api, "700000001", tree["V1"], head=True)
    for key in ("D1", "W1"):
        refused(api.post("Group", family_group("F7", [head["id"]], tree[key])), 422,
                expression="Group.extension[address]")
    assert group_ref(get(api, f"Patient/{head['id']}")) is None


# --- references ---------------------------------------------------------------------------------------------


def test_references_to_missing_or_deleted_resources(api, tree):
    refused(api.post("Patient", patient("800000001", "Doe", "Jo", "no-such-village")), 422,
            expression="Patient.address[0].extension")
    refused(api.post("Location", location("R1D1W9", "Ghost", "W", "no-such-district")), 422,
            expression="Location.partOf")
    refused(api.post("Organization", hf("HF0009", "no-such-district")), 422)
    gone = created(api.post("Location", location("R1D1W1V9", "Gone", "V", tree["W1"])))
    assert api.delete(f"Location/{gone['id']}").status_code == 204
    refused(api.post("Patient", patient("800000002", "Doe", "Jo", gone["id"])), 422,
            expression="Patient.address[0].extension")
    refused(api.post("Group", family_group("F8", ["no-such-patient"], tree["V1"])), 422,
            expression="Group.member[0].entity")
    member = new_patient(api, "800000003", tree["V1"], head=True)
    assert api.delete(f"Patient/{member['id']}").status_code == 204
    refused(api.post("Group", family_group("F8", [member["id"]], tree["V1"])), 422, expression="Group.member")
    refused(api.post("Patient", patient("800000004", "Doe", "Jo", tree["V1"], group_id="no-such-group")), 422,
            expression="Patient.extension")
    g, _ = new_family(api, tree["V1"], "800000005")
    p = patient("800000006", "Doe", "Jo", tree["V1"], group_id=g["id"])
    assert api.delete(f"Group/{g['id']}").status_code == 204
    refused(api.post("Patient", p), 422)
    # a reference of the wrong type
    refused(api.post("Patient", patient("800000007", "Doe", "Jo", tree["V1"]) | {
        "generalPractitioner": [{"reference": f"Location/{tree['D1']}"}]}), 422,
        expression="Patient.generalPractitioner")
    refused(api.post("Patient", patient("800000008", "Doe", "Jo", tree["V1"]) | {
        "generalPractitioner": [{"reference": "Organization/no-such-hf"}]}), 422,
        expression="Patient.generalPractitioner")


# --- a new insuree's stored body ------------------------------------------------------------------------------


@pytest.fixture
def patient_renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    return renders_of(monkeypatch, "patient")


def coded(list_name: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": CS + list_name, "code": code}]}


def rendered_now(engine: Any, res_id: str) -> dict[str, Any]:
    from sqlalchemy import select

    from hifhir.fhir.registry import KINDS
    from hifhir.store.tables import insuree

    with engine.connect() as conn:
        pk = conn.execute(select(insuree.c.pk).where(insuree.c.id == res_id)).scalar_one()
        return KINDS["patient"].render(conn, [pk])[pk]


def test_a_new_insuree_is_stored_as_its_render_without_being_read_back(api, engine, tree, patient_renders):
    body = patient("CHF-FULL-1", "Doe", "John Peter", tree["V1"], gender="male", phone="+2651234",
                   email="john@example.org")
    body["extension"] += [
        {"url": EXT + "patient-education-level", "valueCodeableConcept": coded("patient-education-level", "4")},
        {"url": EXT + "patient-profession", "valueCodeableConcept": coded("patient-profession", "2")},
        {"url": EXT + "patient-identification", "extension": [
            {"url": "number", "valueString": "NID-77"},
            {"url": "type", "valueCodeableConcept": coded("patient-identification-type", "N")}]},
        {"url": EXT + "patient-card-issued", "valueBoolean": True},
        {"url": EXT + "patient-vulnerability-status", "valueBoolean": False},
    ]
    body["maritalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                         "code": "M"}]}
    body["address"][0].update(use="temp", line=["5 Tsoka"])
    body["contact"] = [{"relationship": [coded("patient-contact-relationship", "1")],
                        "name": {"family": "Doe", "given": ["Jane"]}}]

    made = created(api.post("Patient", body))

    assert patient_renders == []
    stored = get(api, f"Patient/{made['id']}")
    assert {k: v for k, v in stored.items() if k not in ("resourceType", "id", "meta")} == \
        rendered_now(engine, made["id"])
    assert stored["address"][0]["city"] == "Jamula" and stored["address"][0]["district"] == "Rapta"
    assert stored["address"][0]["state"] == "Ultha" and stored["address"][0]["use"] == "temp"
    education = ext_of(stored, "patient-education-level")
    assert education is not None and education["valueCodeableConcept"]["coding"][0]["code"] == "4"
    assert education["valueCodeableConcept"]["coding"][0]["display"]
    assert "contact" not in stored  # a relationship shows with the family's head, and there is no family yet


def test_a_new_insuree_of_a_family_is_read_back_to_be_stored(api, engine, tree, patient_renders):
    family_of, _members = new_family(api, tree["V1"], "CHF-HEAD-9")
    patient_renders.clear()

    member = created(api.post("Patient", patient("CHF-MEMBER-9", "Doe", "Ann", tree["V1"],
                                                 group_id=family_of["id"])))

    assert len(patient_renders) == 1
    stored = get(api, f"Patient/{member['id']}")
    assert group_ref(stored) == f"Group/{family_of['id']}"
    assert {k: v for k, v in stored.items() if k not in ("resourceType", "id", "meta")} == \
        rendered_now(engine, member["id"])


# --- re-rendering -------------------------------------------------------------------------------------------


def test_renaming_a_village_re_renders_insuree_and_family_addresses(api, tree):
    g, (head, member) = new_family(api, tree["V1"], "900000001", "900000002")
    other = new_patient(api, "900000003", tree["V2"])
    before = get(api, f"Patient/{member}")
    assert before["address"][0]["city"] == "Jamula"
    village = get(api, f"Location/{tree['V1']}")
    village["name"] = "Jamula Nova"
    put(api, village)
    after = get(api, f"Patient/{member}")
    assert after["address"][0]["city"] == "Jamula Nova"
    assert int(after["meta"]["versionId"]) == int(before["meta"]["versionId"]) + 1
    history = get(api, f"Patient/{member}/_history")
    cities = [e["resource"]["address"][0]["city"] for e in history["entry"]]
    assert cities[0] == "Jamula Nova" and "Jamula" in cities[1:]
    assert get(api, f"Patient/{head}")["address"][0]["city"] == "Jamula Nova"
    fam = get(api, f"Group/{g['id']}")
    assert ext_of(fam, "group-address")["valueAddress"]["city"] == "Jamula Nova"  # type: ignore[index]
    # insurees elsewhere are untouched
    assert get(api, f"Patient/{other['id']}")["meta"]["versionId"] == "1"
    # renaming the district reaches down to the insurees' district part
    district = get(api, f"Location/{tree['D1']}")
    district["name"] = "Rapta Sud"
    put(api, district)
    assert get(api, f"Patient/{other['id']}")["address"][0]["district"] == "Rapta Sud"
    ward = get(api, f"Location/{tree['W1']}")
    ward["name"] = "Jamu Est"
    put(api, ward)
    muni = ext_of(get(api, f"Patient/{other['id']}")["address"][0], "address-municipality")
    assert muni["valueString"] == "Jamu Est"  # type: ignore[index]



def test_level_change_of_a_location_in_use_is_refused(api, tree):
    """A childless location can change level, but not while something attached to its level uses it."""
    new_patient(api, "990000001", tree["V1"])
    v = get(api, f"Location/{tree['V1']}")
    v["physicalType"]["coding"][0] = {"system": f"{CS}location-type", "code": "W"}
    v["partOf"] = {"reference": f"Location/{tree['D1']}"}
    refused(api.put(f"Location/{v['id']}", v), 409, 422, expression="Location.physicalType")
    d2 = created(api.post("Location", location("R1D2", "Second", "D", tree["R1"])))
    created(api.post("Organization", hf("HF0001", d2["id"])))
    d2["physicalType"]["coding"][0] = {"system": f"{CS}location-type", "code": "W"}
    d2["partOf"] = {"reference": f"Location/{tree['D1']}"}
    refused(api.put(f"Location/{d2['id']}", d2), 409, 422, expression="Location.physicalType")
    # unused and childless: allowed (a wrongly entered district becomes a ward)
    d3 = created(api.post("Location", location("R1D3", "Third", "D", tree["R1"])))
    d3["physicalType"]["coding"][0] = {"system": f"{CS}location-type", "code": "W"}
    d3["partOf"] = {"reference": f"Location/{tree['D1']}"}
    assert put(api, d3)["physicalType"]["coding"][0]["code"] == "W"


def test_head_changes_re_render_the_family_and_its_members(api, tree):
    g, (head, member) = new_family(api, tree["V1"], "910000001", "910000002")
    m = get(api, f"Patient/{member}")
    m["contact"] = [{"relationship": [{"coding": [{"system": f"{CS}patient-contact-relationship", "code": "4"}]}],
                     "name": {"family": "Doe", "given": ["910000001"]}}]
    m = put(api, m)
    assert m["contact"][0]["name"] == {"family": "Doe", "given": ["910000001"]}  # the head's name
    # renaming the head renames the family and the member's head-of-family contact
    h = get(api, f"Patient/{head}")
    h["name"] = [{"use": "official", "family": "Smith", "given": ["Jo Ann"]}]
    assert put(api, h)["name"][0]["given"] == ["Jo Ann"]  # given is 1..1: several other names, one string
    assert get(api, f"Group/{g['id']}")["name"] == "Smith Jo Ann"
    after = get(api, f"Patient/{member}")
    assert after["contact"][0]["name"] == {"family": "Smith", "given": ["Jo Ann"]}
    assert int(after["meta"]["versionId"]) == int(m["meta"]["versionId"]) + 1
    put(api, get(api, f"Patient/{head}"))  # what GET returns can be sent back as it is
    # appointing another head (the family Code names the head): flags move, the family is renamed
    fam = get(api, f"Group/{g['id']}")
    fam["identifier"] = [ident("910000002")]
    fam = put(api, fam)
    assert fam["name"] == "Doe 910000002"
    assert is_head(get(api, f"Patient/{member}")) and not is_head(get(api, f"Patient/{head}"))
    # the former head may now be deleted; the family keeps its new head
    assert api.delete(f"Patient/{head}").status_code == 204
    assert get(api, f"Group/{g['id']}")["quantity"] == 1


def test_moving_a_village_re_renders_its_insurees(api, tree):
    p = new_patient(api, "920000001", tree["V1"])
    w2 = created(api.post("Location", location("R1D1W2", "Jamu Two", "W", tree["D1"])))
    village = get(api, f"Location/{tree['V1']}")
    village["partOf"] = {"reference": f"Location/{w2['id']}"}
    put(api, village)
    after = get(api, f"Patient/{p['id']}")
    assert ext_of(after["address"][0], "address-municipality")["valueString"] == "Jamu Two"  # type: ignore[index]
    assert after["meta"]["versionId"] == "2"
    # the old ward has one child left (V2) and stays undeletable; the new one is now in use
    refused(api.delete(f"Location/{w2['id']}"), 409, 422)
    assert get(api, f"Location?partof={w2['id']}")["entry"][0]["resource"]["id"] == tree["V1"]
