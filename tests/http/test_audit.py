"""The audit trail: every write, every read or search of personal data and every login leaves an AuditEvent that
administrators can search; the trail itself cannot be changed through the API. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from hifhir.fhir.validate import validate_resource
from hifhir.store.tables import audit_entity, audit_event
from tests.builders import location, patient
from tests.conftest import ADMIN, CLERK, NOBODY, Api
from tests.responses import refused

REST = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


@pytest.fixture
def village(api: Api) -> str:
    parent = None
    for code, name, level in (("R1", "Ultha", "R"), ("R1D1", "Rapta", "D"), ("R1D1M1", "Jamu", "W"),
                              ("R1D1M1V1", "Jamula", "V")):
        resp = api.post("Location", location(code, name, level, parent))
        assert resp.status_code == 201, resp.text
        parent = resp.json()["id"]
    assert parent is not None
    return parent


def as_user(api: Api, app: Any, user: tuple[str, str]) -> Api:
    return Api(api.client, app.tokens.issue(user[0])[0])


def new_patient(api: Api, village: str, code: str, family: str = "Doe") -> str:
    resp = api.post("Patient", patient(code, family, "Jane", village))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def events(api: Api, query: str) -> list[dict[str, Any]]:
    """The AuditEvents a search finds (newest first), each checked against the base R4 definition."""
    resp = api.get(f"AuditEvent?{query}")
    assert resp.status_code == 200, resp.text
    bundle = resp.json()
    assert bundle["type"] == "searchset"
    found = [e["resource"] for e in bundle.get("entry", [])]
    for resource in found:
        _, issues = validate_resource(resource, None)
        assert not [i for i in issues if i.severity in ("error", "fatal")], (resource, issues)
    return found


def references(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if "what" in e]


def query_of(event: dict[str, Any]) -> str:
    [entity] = [e for e in event["entity"] if "query" in e]
    assert entity["role"]["code"] == "24"
    return base64.b64decode(entity["query"]).decode()


def subtype(event: dict[str, Any]) -> str:
    return str(event["subtype"][0]["code"])


def who(event: dict[str, Any]) -> str | None:
    agent = event["agent"][0]
    assert agent["requestor"] is True
    return agent.get("who", {}).get("identifier", {}).get("value")


def all_rows(engine: Any) -> tuple[list[Any], list[Any]]:
    with engine.connect() as conn:
        return (conn.execute(select(audit_event).order_by(audit_event.c.pk)).all(),
                conn.execute(select(audit_entity).order_by(audit_entity.c.event_pk, audit_entity.c.position)).all())


# --- what is recorded -----------------------------------------------------------------------------------------


def test_a_patient_read_is_recorded_with_who_what_when_where_and_outcome(api, village):
    pid = new_patient(api, village, "100000001")
    before = datetime.now(UTC) - timedelta(seconds=1)
    # X-Forwarded-For counts only from a trusted proxy (HIFHIR_TRUSTED_PROXIES): not from this client
    headers = {"User-Agent": "enrolment-app/2.1", "X-Forwarded-For": "10.9.9.9"}
    assert api.get(f"Patient/{pid}", headers=headers).status_code == 200

    [read] = events(api, f"entity=Patient/{pid}&subtype=read")
    assert read["type"]["code"] == "rest"
    assert read["subtype"] == [{"system": REST, "code": "read"}]
    assert read["action"] == "R"
    assert read["outcome"] == "0"
    assert read["outcomeDesc"].startswith("HTTP 200")
    assert before <= datetime.fromisoformat(read["recorded"]) <= datetime.now(UTC)
    assert references(read) == [f"Patient/{pid}/_history/1"]
    assert read["entity"][0]["role"]["code"] == "1"  # patient
    agent = read["agent"][0]
    assert who(read) == ADMIN[0]
    assert agent["network"] == {"address": "testclient", "type": "2"}
    assert agent["extension"][0]["valueString"] == "enrolment-app/2.1"
    assert read["source"]["observer"]["display"] == "hifhir"


def test_a_search_records_every_patient_of_the_page_and_the_query(api, village):
    ids = {new_patient(api, village, f"20000000{i}", family="Smith") for i in range(3)}
    new_patient(api, village, "200000009", family="Other")
    resp = api.get("Patient?family=Smith&_count=10")
    assert resp.status_code == 200 and len(resp.json()["entry"]) == 3

    [search] = events(api, "subtype=search-type&entity-type=Patient")
    assert search["action"] == "R"
    assert {r.split("/_history/")[0] for r in references(search)} == {f"Patient/{i}" for i in ids}
    assert query_of(search) == "family=Smith&_count=10"


def test_create_update_and_delete_are_recorded_with_their_versions(api, village):
    body = patient("300000001", "Doe", "Jane", village)
    created = api.post("Patient", body).json()
    pid = created["id"]
    created["name"][0]["family"] = "Dough"
    assert api.put(f"Patient/{pid}", created).status_code == 200
    assert api.delete(f"Patient/{pid}").status_code == 204

    found = events(api, f"entity=Patient/{pid}&_sort=date")
    assert [(e["action"], subtype(e)) for e in found] == [("C", "create"), ("U", "update"), ("D", "delete")]
    assert references(found[0]) == [f"Patient/{pid}/_history/1"]
    assert references(found[1]) == [f"Patient/{pid}/_history/2"]
    assert references(found[2]) == [f"Patient/{pid}/_history/3"]
    assert all(e["outcome"] == "0" for e in found)


def test_a_transaction_is_one_event_naming_every_resource_written(api, village):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:0000000{i}-0000-4000-8000-000000000000",
         "resource": patient(f"40000000{i}", "Doe", "Jane", village),
         "request": {"method": "POST", "url": "Patient"}} for i in range(2)]}
    resp = api.post("", bundle)
    assert resp.status_code == 200, resp.text
    written = [e["response"]["location"].split("/_history/")[0] for e in resp.json()["entry"]]

    [event] = events(api, "subtype=transaction")
    assert event["action"] == "E"
    assert [r.split("/_history/")[0] for r in references(event)] == written


def test_a_refused_read_is_recorded_as_a_minor_failure(api, app, village):
    pid = new_patient(api, village, "500000001")
    nobody = as_user(api, app, NOBODY)
    refused(nobody.get(f"Patient/{pid}"), 403)

    [attempt] = events(api, f"entity=Patient/{pid}&agent={NOBODY[0]}")
    assert attempt["outcome"] == "4"
    assert attempt["outcomeDesc"].startswith("HTTP 403")
    assert references(attempt) == [f"Patient/{pid}"]


def test_an_unauthenticated_attempt_is_recorded_without_a_user(api, client, village):
    pid = new_patient(api, village, "600000001")
    resp = client.get(f"/fhir/Patient/{pid}", headers={"Authorization": "Bearer forged"})
    refused(resp, 401)

    [attempt] = events(api, f"entity=Patient/{pid}&outcome=4")
    assert who(attempt) is None
    assert attempt["outcomeDesc"].startswith("HTTP 401")
    assert attempt["agent"][0]["network"]["address"] == "testclient"


def test_logins_are_recorded_whether_they_succeed_or_fail(api, client):
    assert client.post("/api/login", json={"username": CLERK[0], "password": "wrong"}).status_code == 401
    assert client.post("/api/login", json={"username": CLERK[0], "password": CLERK[1]}).status_code == 200

    found = events(api, f"type=110114&agent-name={CLERK[0]}")
    assert [e["outcome"] for e in found] == ["0", "4"]  # newest first
    for event in found:
        assert event["type"] == {"system": DCM, "code": "110114", "display": "User Authentication"}
        assert event["subtype"][0]["code"] == "110122"
        assert event["action"] == "E"
        assert event["agent"][0]["name"] == CLERK[0]


def test_reads_of_master_data_are_not_recorded_but_its_writes_are(api, village):
    assert api.get(f"Location/{village}").status_code == 200
    assert api.get("Location?name=Jamula").status_code == 200
    assert api.get("CodeSystem").status_code == 200
    assert api.get("Medication").status_code == 200

    found = events(api, f"entity=Location/{village}")
    assert [subtype(e) for e in found] == ["create"]
    assert events(api, "entity-type=Location&action=R") == []
    reads = events(api, "action=R")  # the only reads in the trail: this test's searches of the trail
    assert reads and all(e["outcomeDesc"].endswith("(GET /fhir/AuditEvent)") for e in reads), reads



def test_user_administration_is_recorded(api):
    resp = api.post("/api/admin/users", {"username": "jdoe", "password": "Correct-Horse-42", "roles": ["Clerk"]})
    assert resp.status_code == 201, resp.text
    patch = api.client.patch("/api/admin/users/jdoe", headers=api.headers(), content=b'{"active": false}')
    assert patch.status_code == 200, patch.text
    assert api.get("/api/admin/users").status_code == 200

    found = events(api, "entity=User/jdoe&_sort=date")
    assert [(e["action"], subtype(e)) for e in found] == [("C", "create"), ("U", "patch")]
    assert found[0]["entity"][0]["what"]["identifier"]["value"] == "jdoe"
    assert found[0]["entity"][0]["role"]["code"] == "11"  # security user entity
    listings = [e["outcomeDesc"] for e in events(api, "subtype=search-type")]
    assert "HTTP 200 (GET /api/admin/users)" in listings


# --- searching the trail --------------------------------------------------------------------------------------


def test_search_by_agent_date_outcome_and_address(api, app, village):
    clerk = as_user(api, app, CLERK)
    pid = new_patient(api, village, "700000001")
    start = datetime.now(UTC) - timedelta(seconds=1)
    assert clerk.get(f"Patient/{pid}").status_code == 200
    refused(clerk.get(f"Patient/{pid}/_history/9"), 404)

    by_clerk = events(api, f"agent={CLERK[0]}")
    assert [(subtype(e), e["outcome"]) for e in by_clerk] == [("vread", "4"), ("read", "0")]
    assert len(events(api, f"agent={CLERK[0]}&outcome=0")) == 1
    stamp = start.isoformat().replace("+00:00", "Z")
    assert len(events(api, f"agent={CLERK[0]}&date=ge{stamp}")) == 2
    assert events(api, f"agent={CLERK[0]}&date=lt{stamp}") == []
    assert len(events(api, f"agent={CLERK[0]}&address=testcl")) == 2
    assert events(api, f"agent={CLERK[0]}&address=10.") == []
    assert len(events(api, f"patient={pid}&agent-name=cle")) == 2


def test_pages_follow_each_other_newest_first(api, village):
    ids = [new_patient(api, village, f"80000000{i}") for i in range(3)]
    resp = api.get("AuditEvent?entity-type=Patient&action=C&_count=2")
    first = resp.json()
    assert [e["resource"]["entity"][0]["what"]["reference"].split("/")[1] for e in first["entry"]] == ids[:0:-1]
    [next_url] = [link["url"] for link in first["link"] if link["relation"] == "next"]
    second = api.get(next_url).json()
    assert [e["resource"]["entity"][0]["what"]["reference"].split("/")[1] for e in second["entry"]] == ids[:1]
    assert not [link for link in second["link"] if link["relation"] == "next"]


def test_an_audit_event_is_read_by_id(api, village):
    pid = new_patient(api, village, "900000001")
    [created] = events(api, f"entity=Patient/{pid}")
    resp = api.get(f"AuditEvent/{created['id']}")
    assert resp.status_code == 200
    assert resp.json() == created
    refused(api.get("AuditEvent/no-such-event"), 404)


def test_searching_the_trail_is_itself_recorded(api):
    events(api, "agent=someone")
    [search] = events(api, "subtype=search-type&_count=1")
    assert search["outcomeDesc"] == "HTTP 200 (GET /fhir/AuditEvent)"
    assert query_of(search) == "agent=someone"


def test_bad_search_parameters_are_refused(api):
    refused(api.get("AuditEvent?date=yesterday"), 400)
    refused(api.get("AuditEvent?outcome=5"), 400)
    refused(api.get("AuditEvent?entity=nothing"), 400)
    refused(api.get("AuditEvent?_sort=agent"), 400)
    refused(api.get("AuditEvent?_cursor=garbage"), 400)


# --- the trail is read-only and for administrators ------------------------------------------------------------


def test_the_trail_cannot_be_changed_through_the_api(api, app, engine, village):
    new_patient(api, village, "110000001")
    [event] = events(api, "action=C&entity-type=Patient")
    app.audit.flush()
    before = all_rows(engine)
    changed = dict(event, outcome="12")
    refused(api.put(f"AuditEvent/{event['id']}", changed), 405)
    refused(api.delete(f"AuditEvent/{event['id']}"), 405)
    refused(api.post("AuditEvent", changed), 405)
    refused(api.client.patch(f"/fhir/AuditEvent/{event['id']}", content=b"[]", headers=api.headers()), 405)
    refused(api.delete("AuditEvent"), 405)
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": f"AuditEvent/{event['id']}"}}]}
    answer = api.post("", bundle).json()
    assert not answer["entry"][0]["response"]["status"].startswith("2")
    app.audit.flush()
    after_events, after_entities = all_rows(engine)
    assert after_events[:len(before[0])] == before[0]  # nothing changed; only the attempts were added
    assert after_entities[:len(before[1])] == before[1]
    attempts = events(api, f"entity=AuditEvent/{event['id']}&outcome=4")
    assert {subtype(e) for e in attempts} >= {"update", "delete", "patch"}


def test_only_holders_of_the_user_activity_right_read_the_trail(api, app, village):
    new_patient(api, village, "120000001")
    [event] = events(api, "action=C&entity-type=Patient")
    clerk = as_user(api, app, CLERK)
    refused(clerk.get("AuditEvent"), 403)
    refused(clerk.get(f"AuditEvent/{event['id']}"), 403)
    refused(api.client.get("/fhir/AuditEvent"), 401)


def test_the_capability_statement_lists_audit_event_read_only(api):
    statement = api.get("metadata").json()
    [audit] = [r for r in statement["rest"][0]["resource"] if r["type"] == "AuditEvent"]
    assert sorted(i["code"] for i in audit["interaction"]) == ["read", "search-type"]
    assert {"entity", "agent", "date", "outcome", "subtype"} <= {p["name"] for p in audit["searchParam"]}
