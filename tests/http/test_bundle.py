"""Transaction and batch Bundles at the base, and conditional create/update: a point of service enrols a family
in one request, all or nothing, and can resend it after a lost response without creating anything twice."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from hifhir.store.db import transaction
from hifhir.store.tables import family, insuree, insuree_policy, invoice, policy, premium, resource_version
from tests.builders import group, ident, location, patient
from tests.builders_enrolment import Scheme, days_ago, enrolment_bundle, family_contract, make_scheme, years_ago
from tests.builders_enrolment import premium as premium_ext


def created(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture
def village(api: Any) -> str:
    region = created(api.post("Location", location("R1", "Ultha", "R")))["id"]
    district = created(api.post("Location", location("R1D1", "Rapta", "D", region)))["id"]
    ward = created(api.post("Location", location("R1D1W1", "Jamu", "W", district)))["id"]
    return created(api.post("Location", location("R1D1W1V1", "Jamula", "V", ward)))["id"]


def post_bundle(api: Any, bundle: dict[str, Any], status: int = 200) -> dict[str, Any]:
    resp = api.client.post("/fhir/", json=bundle, headers=api.headers())
    assert resp.status_code == status, resp.text
    return resp.json()


def family_bundle(village: str, codes: tuple[str, ...] = ("100000001", "100000002", "100000003"),
                  *, conditional: bool = False, group_first: bool = True) -> dict[str, Any]:
    """The head and members as urn:uuid entries and the Group listing them (before them, to test ordering)."""
    members = []
    for i, code in enumerate(codes):
        res = patient(code, "Doe", f"Member{i}", village, head=i == 0)
        request: dict[str, Any] = {"method": "POST", "url": "Patient"}
        if conditional:
            request["ifNoneExist"] = f"identifier={code}"
        members.append({"fullUrl": f"urn:uuid:0000000{i}-0000-4000-8000-000000000000", "resource": res,
                        "request": request})
    fam = group(codes[0], [], village)
    fam["member"] = [{"entity": {"reference": m["fullUrl"]}} for m in members]
    fam["quantity"] = len(members)
    fam_request: dict[str, Any] = {"method": "POST", "url": "Group"}
    if conditional:
        fam_request["ifNoneExist"] = f"identifier={codes[0]}"
    fam_entry = {"fullUrl": "urn:uuid:0000000f-0000-4000-8000-000000000000", "resource": fam,
                 "request": fam_request}
    entries = [fam_entry, *members] if group_first else [*members, fam_entry]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def count(api: Any, query: str) -> int:
    return api.get(f"{query}&_summary=count").json()["total"]


ENROLMENT_TABLES = (insuree, family, policy, premium, insuree_policy, invoice, resource_version)


def rows(engine: Engine) -> dict[str, int]:
    """How many rows the enrolment tables hold (the history included): a retry must leave them as they were."""
    with transaction(engine, write=False) as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in ENROLMENT_TABLES}


@pytest.fixture
def scheme(api: Any) -> Scheme:
    """Places R1…V1, officer E00001, the Doe family, products BC01 (lump sum 10000) and FC01 (see make_scheme)."""
    return make_scheme(api)


CONTRACT_UUID = "3c9e2f1a-7b4d-4e8a-9f01-2a3b4c5d6e7f"
MENSAH = [("555000000", "Ama", years_ago(41)), ("555000001", "Kofi", years_ago(39)), ("555000002", "Esi", years_ago(7))]


# --- transaction --------------------------------------------------------------------------------------------


def test_transaction_enrols_a_family_in_one_request(api, village):
    answer = post_bundle(api, family_bundle(village))
    assert answer["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["201 Created"] * 4
    group_entry, *member_entries = answer["entry"]
    member_ids = [e["resource"]["id"] for e in member_entries]
    # the Group came first in the Bundle but was created after its members, with their real ids
    assert [m["entity"]["reference"] for m in group_entry["resource"]["member"]] == [
        f"Patient/{i}" for i in member_ids]
    assert group_entry["response"]["location"].startswith(f"Group/{group_entry['resource']['id']}/_history/")
    assert all(e["response"]["etag"] == 'W/"1"' for e in member_entries)
    # every entry is readable afterwards
    for entry in answer["entry"]:
        rtype, rid = entry["response"]["location"].split("/")[:2]
        assert api.get(f"{rtype}/{rid}").status_code == 200


def test_a_failing_entry_fails_the_whole_transaction(api, village):
    bundle = family_bundle(village)
    bad = bundle["entry"][2]["resource"]
    bad["birthDate"] = "not-a-date"
    resp = api.client.post("/fhir/", json=bundle, headers=api.headers())
    assert resp.status_code == 400, resp.text
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any("Bundle.entry[2]" in e for i in outcome["issue"] for e in i.get("expression", []))
    assert "Bundle.entry[2]" in outcome["issue"][0]["diagnostics"]
    assert count(api, "Patient?family=doe") == 0  # nothing written, not even the valid members
    assert api.get("Group?_summary=count").json()["total"] == 0


def test_a_business_rule_failure_rolls_back_too(api, village):
    bundle = family_bundle(village)
    bundle["entry"][3]["resource"]["identifier"][0]["value"] = "100000001"  # duplicate insurance number
    resp = api.client.post("/fhir/", json=bundle, headers=api.headers())
    assert resp.status_code == 409, resp.text
    assert count(api, "Patient?family=doe") == 0


def test_resending_a_conditional_transaction_creates_nothing_twice(api, village):
    first = post_bundle(api, family_bundle(village, conditional=True))
    assert [e["response"]["status"] for e in first["entry"]] == ["201 Created"] * 4
    again = post_bundle(api, family_bundle(village, conditional=True))  # the app resends after a lost response
    assert [e["response"]["status"] for e in again["entry"]] == ["200 OK"] * 4
    assert [e["resource"]["id"] for e in again["entry"]] == [e["resource"]["id"] for e in first["entry"]]
    assert count(api, "Patient?family=doe") == 3
    history = api.get("Patient/_history").json()
    assert len(history["entry"]) == 3  # still version 1 each: the retry wrote nothing


def test_transaction_with_delete_put_and_get(api, village):
    keep = created(api.post("Patient", patient("300000001", "Roe", "Ann", village)))
    gone = created(api.post("Patient", patient("300000002", "Roe", "Bob", village)))
    renamed = copy.deepcopy(keep)
    renamed["name"][0]["given"] = ["Anna"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{keep['id']}"}},
        {"resource": renamed, "request": {"method": "PUT", "url": f"Patient/{keep['id']}"}},
        {"request": {"method": "DELETE", "url": f"Patient/{gone['id']}"}},
    ]}
    answer = post_bundle(api, bundle)
    get_entry, put_entry, delete_entry = answer["entry"]
    assert put_entry["response"]["status"] == "200 OK"
    assert put_entry["resource"]["name"][0]["given"] == ["Anna"]
    assert delete_entry["response"]["status"] == "204 No Content"
    assert get_entry["resource"]["name"][0]["given"] == ["Anna"]  # GETs run after the writes
    assert api.get(f"Patient/{gone['id']}").status_code == 410


# --- batch --------------------------------------------------------------------------------------------------


def test_batch_entries_succeed_or_fail_on_their_own(api, village):
    good = patient("400000001", "Poe", "Al", village)
    bad = patient("400000002", "Poe", "Bo", village)
    bad["gender"] = "robot"
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": good, "request": {"method": "POST", "url": "Patient"}},
        {"resource": bad, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient?identifier=400000001"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
    ]}
    answer = post_bundle(api, bundle)
    assert answer["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses[0] == "201 Created"
    assert statuses[1] == "400"
    assert answer["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert statuses[2] == "200 OK"
    assert answer["entry"][2]["resource"]["resourceType"] == "Bundle"
    assert len(answer["entry"][2]["resource"]["entry"]) == 1
    assert statuses[3] == "404"
    assert count(api, "Patient?family=poe") == 1


# --- conditional create and update --------------------------------------------------------------------------


def test_if_none_exist_header_makes_a_create_idempotent(api, village):
    body = patient("500000001", "Moe", "Cy", village)
    headers = {"If-None-Exist": "identifier=500000001"}
    first = api.post("Patient", body, headers=headers)
    assert first.status_code == 201
    second = api.post("Patient", body, headers=headers)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["ETag"] == 'W/"1"'
    assert count(api, "Patient?identifier=500000001") == 1


def test_if_none_exist_matching_several_is_a_412(api, village):
    created(api.post("Patient", patient("500000002", "Moe", "Di", village)))
    created(api.post("Patient", patient("500000003", "Moe", "Ed", village)))
    resp = api.post("Patient", patient("500000004", "Moe", "Fa", village), headers={"If-None-Exist": "family=moe"})
    assert resp.status_code == 412
    assert count(api, "Patient?family=moe") == 2


def test_conditional_update_creates_then_updates(api, village):
    body = patient("600000001", "Zoe", "Gi", village)
    first = api.put("Patient?identifier=600000001", body)
    assert first.status_code == 201, first.text
    body["name"][0]["given"] = ["Gina"]
    second = api.put("Patient?identifier=600000001", body)
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["meta"]["versionId"] == "2"
    created(api.post("Patient", patient("600000002", "Zoe", "Ho", village)))
    assert api.put("Patient?family=zoe", body).status_code == 412


def test_conditional_interactions_check_their_criteria(api, village):
    body = patient("700000001", "Xu", "Io", village)
    assert api.post("Patient", body, headers={"If-None-Exist": "frobnicate=1"}).status_code == 400
    assert api.put("Patient?birthdate=garbage", body).status_code == 400


# --- enrolment retries: a Contract, then a whole enrolment, sent again after a lost response ---------------


def test_if_none_exist_makes_posting_a_contract_idempotent(api, engine, scheme):
    s = scheme
    body = family_contract(s, "BC01", issued=days_ago(2), premiums=[premium_ext(10000, "RC-1", days_ago(1))])
    body["identifier"] = [ident(CONTRACT_UUID, "UUID")]
    headers = {"If-None-Exist": f"identifier={CONTRACT_UUID}"}
    first = api.post("Contract", body, headers=headers)
    assert first.status_code == 201, first.text
    assert first.json()["id"] == CONTRACT_UUID and first.json()["status"] == "executed"
    before = rows(engine)
    assert (before["policy"], before["premium"], before["insuree_policy"], before["invoice"]) == (1, 1, 4, 1)

    second = api.post("Contract", body, headers=headers)  # the answer was lost: the app sends the same request

    assert second.status_code == 200, second.text
    assert second.json() == first.json()  # the Contract created the first time, unchanged
    assert second.headers["ETag"] == first.headers["ETag"] == 'W/"1"'
    assert rows(engine) == before  # no second policy, premium, insuree-policy row, invoice or version
    assert count(api, f"Contract?subject=Group/{s.family}") == 1


def test_resending_a_whole_enrolment_transaction_creates_nothing_twice(api, engine, scheme):
    s = scheme
    bundle = enrolment_bundle(s, s.places["V1"], MENSAH, contract_uuid=CONTRACT_UUID,
                              premiums=[premium_ext(10000, "RC-555", days_ago(0))])
    first = post_bundle(api, bundle)
    assert [e["response"]["status"] for e in first["entry"]] == ["201 Created"] * 5
    before = rows(engine)

    again = post_bundle(api, copy.deepcopy(bundle))  # the app never got the answer: it sends the same Bundle

    assert again["type"] == "transaction-response"
    assert [e["response"]["status"] for e in again["entry"]] == ["200 OK"] * 5
    assert [e["response"]["location"] for e in again["entry"]] == [e["response"]["location"] for e in first["entry"]]
    assert [e["resource"] for e in again["entry"]] == [e["resource"] for e in first["entry"]]
    assert rows(engine) == before  # no insuree, family, policy, premium, insuree-policy row or version added
    *members, fam, contract = again["entry"]
    member_refs = [f"Patient/{m['resource']['id']}" for m in members]
    assert [m["entity"]["reference"] for m in fam["resource"]["member"]] == member_refs
    assert contract["resource"]["id"] == CONTRACT_UUID and contract["resource"]["status"] == "executed"
    assert contract["resource"]["subject"] == [{"reference": f"Group/{fam['resource']['id']}"}]
    assert [r["reference"] for r in contract["resource"]["term"][0]["asset"][0]["typeReference"]] == member_refs
    assert count(api, "Patient?family=mensah") == 3
    assert count(api, f"Contract?subject=Group/{fam['resource']['id']}") == 1


def test_a_paid_enrolment_transaction_stores_its_members_as_active(api, scheme):
    s = scheme
    bundle = enrolment_bundle(s, s.places["V1"], MENSAH, contract_uuid=CONTRACT_UUID,
                              premiums=[premium_ext(10000, "RC-555", days_ago(0))])

    answer = post_bundle(api, bundle)

    *members, fam, contract = answer["entry"]
    assert contract["resource"]["status"] == "executed"  # paid in full today: the policy covers them from today
    assert fam["resource"]["active"] is True
    assert count(api, "Patient?family=mensah&active=true") == 3  # the searchable flag is set
    assert [m["resource"]["active"] for m in members] == [True] * 3  # as in separate requests (use case test)
    assert [api.get(f"Patient/{m['resource']['id']}").json()["active"] for m in members] == [True] * 3


def test_an_enrolment_whose_contract_fails_writes_no_patient_and_no_group(api, engine, scheme):
    s = scheme
    bundle = enrolment_bundle(s, s.places["V1"], MENSAH, contract_uuid=CONTRACT_UUID,
                              premiums=[premium_ext(-10000, "RC-555", days_ago(0))])
    before = rows(engine)

    resp = api.client.post("/fhir/", json=bundle, headers=api.headers())

    assert resp.status_code == 422, resp.text
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["diagnostics"].startswith("Bundle.entry[4] (POST Contract): The premium amount must be")
    assert any(e.startswith("Bundle.entry[4]") for i in outcome["issue"] for e in i.get("expression", []))
    assert rows(engine) == before  # the members and the family, valid on their own, were not kept either
    assert count(api, "Patient?family=mensah") == 0
    assert count(api, "Group?identifier=555000000") == 0
    assert api.get(f"Contract/{CONTRACT_UUID}").status_code == 404


def test_conditional_update_of_a_contract_creates_it_then_updates_it(client, api, engine, scheme):
    s = scheme
    [rest] = client.get("/fhir/metadata").json()["rest"]
    declared = next(r for r in rest["resource"] if r["type"] == "Contract")
    assert declared["conditionalCreate"] is True and declared["conditionalUpdate"] is True
    query = f"Contract?identifier={CONTRACT_UUID}"
    body = family_contract(s, "BC01", issued=days_ago(2))
    body["identifier"] = [ident(CONTRACT_UUID, "UUID")]

    first = api.put(query, body)  # no match: created, its identifier[UUID] the id

    assert first.status_code == 201, first.text
    assert first.json()["id"] == CONTRACT_UUID and first.json()["meta"]["versionId"] == "1"
    assert first.json()["status"] == "offered"

    body["term"][0]["asset"][0]["extension"] = [premium_ext(10000, "RC-CU-1", days_ago(1))]
    second = api.put(query, body)  # one match: that Contract is updated (paid)

    assert second.status_code == 200, second.text
    assert second.json()["id"] == CONTRACT_UUID and second.json()["meta"]["versionId"] == "2"
    assert second.json()["status"] == "executed"
    counted = rows(engine)
    assert (counted["policy"], counted["premium"], counted["insuree_policy"], counted["invoice"]) == (1, 1, 4, 1)

    again = api.put(query, body)  # the paying update resent after a lost response: the premium is not added twice

    assert again.status_code == 200, again.text
    assert again.json()["id"] == CONTRACT_UUID and again.json()["status"] == "executed"
    assert [[x["valueString"] for x in p["extension"] if x["url"] == "receipt"]
            for p in again.json()["term"][0]["asset"][0]["extension"]] == [["RC-CU-1"]]
    assert {k: v for k, v in rows(engine).items() if k != "resource_version"} == {
        k: v for k, v in counted.items() if k != "resource_version"}


def test_conditional_update_of_a_contract_matching_several_is_a_412(api, engine, scheme):
    s = scheme
    offered = [created(api.post("Contract", family_contract(s, product, issued=days_ago(2))))
               for product in ("BC01", "FC01")]
    before = rows(engine)
    body = family_contract(s, "BC01", issued=days_ago(2), premiums=[premium_ext(10000, "RC-CU-2", days_ago(1))])

    several = api.put(f"Contract?subject=Group/{s.family}", body)  # both of the family's Contracts match

    assert several.status_code == 412, several.text
    assert several.json()["issue"][0]["diagnostics"] == (
        f"The conditional update 'subject=Group/{s.family}' matches several Contract resources")
    assert rows(engine) == before  # neither was chosen, neither paid
    assert [api.get(f"Contract/{c['id']}").json()["status"] for c in offered] == ["offered", "offered"]


# --- bad Bundles ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload, status", [
    (b"{not json", 400),
    (b'{"resourceType": "Patient"}', 400),
    (b'{"resourceType": "Bundle", "type": "collection"}', 400),
    (b'{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {}}]}', 400),
    (b'{"resourceType": "Bundle", "type": "transaction", "entry": {"a": 1}}', 400),
    (b'{"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "PATCH", "url": "Patient/1"}}]}',
     405),
])
def test_bad_bundles_get_an_operation_outcome(api, payload, status):
    resp = api.client.post("/fhir/", content=payload,
                           headers={**api.headers(), "Content-Type": "application/fhir+json"})
    assert resp.status_code == status, resp.text
    assert resp.json()["resourceType"] == "OperationOutcome"


def test_too_many_entries_is_refused(api):
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"request": {"method": "GET", "url": "Patient/x"}}] * 1001}
    resp = api.client.post("/fhir/", json=bundle, headers=api.headers())
    assert resp.status_code == 413


def test_metadata_declares_bundles_and_conditional_interactions(client):
    [rest] = client.get("/fhir/metadata").json()["rest"]
    assert {"code": "transaction"} in rest["interaction"] and {"code": "batch"} in rest["interaction"]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert patient["conditionalCreate"] is True and patient["conditionalUpdate"] is True
