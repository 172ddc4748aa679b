"""The FHIR RESTful interactions through the real ASGI app, on SQLite and PostgreSQL.

Each test is one scenario of the FHIR R4 HTTP specification (or of the openIMIS-compatible alias) and states
the status, the headers and the body it expects.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from sqlalchemy import func, select

from hifhir.store.tables import insuree, resource_version
from tests.builders import EXT, IG, location, patient
from tests.conftest import CLERK, NOBODY, Api, load_example, login

BASE = "http://testserver/fhir"
ALIAS = "http://testserver/api/api_fhir_r4"
PROFILE = f"{IG}/StructureDefinition/"


# --- helpers ------------------------------------------------------------------------------------------


@pytest.fixture
def places(api: Api) -> dict[str, str]:
    """A region → district → ward → village hierarchy: level code → Location id."""
    ids: dict[str, str] = {}
    parent = None
    for code, name, level in (("R1", "Ultha", "R"), ("R1D1", "Rapta", "D"), ("R1D1M1", "Jamu", "W"),
                              ("R1D1M1V1", "Jamula", "V")):
        resp = api.post("Location", location(code, name, level, parent))
        assert resp.status_code == 201, resp.text
        parent = ids[level] = resp.json()["id"]
    return ids


@pytest.fixture
def village(places: dict[str, str]) -> str:
    """The village id (patients live in villages)."""
    return places["V"]


def create_patient(api: Api, village: str, code: str = "100000001", family: str = "Doe",
                   given: str = "John") -> dict[str, Any]:
    resp = api.post("Patient", patient(code, family, given, village))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def renamed(resource: dict[str, Any], family: str) -> dict[str, Any]:
    """The resource as a client would PUT it back with a new family name."""
    body = orjson.loads(orjson.dumps(resource))
    body["name"][0]["family"] = family
    return dict(body)


def assert_outcome(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/fhir+json")
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"], body
    if code is not None:
        assert any(i["code"] == code for i in body["issue"]), body
    return dict(body)


def errors_of(outcome: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in outcome["issue"] if i["severity"] in ("error", "fatal")]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def instant_us(value: str) -> int:
    """A FHIR instant as exact microseconds since the epoch."""
    return (datetime.fromisoformat(value.replace("Z", "+00:00")) - EPOCH) // timedelta(microseconds=1)


def fhir_instant(us: int) -> str:
    return (EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds").replace("+00:00", "Z")


def history_count(engine: Any, res_type: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(resource_version)
                                .where(resource_version.c.res_type == res_type)).scalar_one())


def insuree_count(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(insuree)).scalar_one())


def as_user(api: Api, user: tuple[str, str]) -> Api:
    return Api(api.client, login(api.client, user))


# --- create / read / vread ----------------------------------------------------------------------------


def test_create_returns_201_with_location_etag_last_modified_and_the_stored_resource(api, village):
    resp = api.post("Patient", patient("100000001", "Doe", "John", village))

    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["resourceType"] == "Patient"
    assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", body["id"])
    assert resp.headers["location"] == f"{BASE}/Patient/{body['id']}/_history/1"
    assert resp.headers["etag"] == 'W/"1"'
    assert resp.headers["content-type"] == "application/fhir+json; charset=utf-8"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["profile"] == [f"{PROFILE}openimis-patient"]
    last_updated = datetime.fromisoformat(body["meta"]["lastUpdated"].replace("Z", "+00:00"))
    assert abs(last_updated - datetime.now(UTC)) < timedelta(minutes=5)
    # Last-Modified is the same instant, at HTTP-date (second) precision
    assert parsedate_to_datetime(resp.headers["last-modified"]) == last_updated.replace(microsecond=0)
    assert body["name"] == [{"use": "official", "family": "Doe", "given": ["John"]}]


def test_create_ignores_an_id_in_the_body(api, village):
    body = patient("100000001", "Doe", "John", village) | {"id": "chosen-by-client"}

    resp = api.post("Patient", body)

    assert resp.status_code == 201, resp.text
    assert resp.json()["id"] != "chosen-by-client"
    assert_outcome(api.get("Patient/chosen-by-client"), 404)


def test_create_location_points_the_location_header_at_the_first_version(api):
    resp = api.post("Location", location("R9", "Northland", "R"))

    assert resp.status_code == 201, resp.text
    loc_id = resp.json()["id"]
    assert resp.headers["location"] == f"{BASE}/Location/{loc_id}/_history/1"
    assert resp.headers["etag"] == 'W/"1"'
    assert "last-modified" in resp.headers
    assert api.get(resp.headers["location"]).status_code == 200


def test_read_returns_what_create_returned(api, village):
    created = api.post("Patient", patient("100000001", "Doe", "John", village))

    got = api.get(f"Patient/{created.json()['id']}")

    assert got.status_code == 200
    assert got.json() == created.json()
    assert got.headers["etag"] == 'W/"1"'
    assert got.headers["last-modified"] == created.headers["last-modified"]
    assert got.headers["content-type"] == "application/fhir+json; charset=utf-8"


def test_vread_of_the_first_version_after_an_update_returns_the_old_body(api, village):
    v1 = create_patient(api, village)
    assert api.put(f"Patient/{v1['id']}", renamed(v1, "Smith")).status_code == 200

    old = api.get(f"Patient/{v1['id']}/_history/1")
    new = api.get(f"Patient/{v1['id']}/_history/2")

    assert old.status_code == 200
    assert old.json() == v1
    assert old.headers["etag"] == 'W/"1"'
    assert new.status_code == 200
    assert new.json()["name"][0]["family"] == "Smith"
    assert new.json()["meta"]["versionId"] == "2"
    assert new.headers["etag"] == 'W/"2"'


def test_vread_of_a_version_that_does_not_exist_is_404(api, village):
    pid = create_patient(api, village)["id"]

    for version in ("2", "0", "abc", "9999999999999"):
        assert_outcome(api.get(f"Patient/{pid}/_history/{version}"), 404, "not-found")
    assert_outcome(api.get("Patient/no-such-patient/_history/1"), 404, "not-found")


def test_vread_of_the_delete_version_is_410(api, village):
    pid = create_patient(api, village)["id"]
    api.delete(f"Patient/{pid}")

    assert api.get(f"Patient/{pid}/_history/1").status_code == 200
    assert_outcome(api.get(f"Patient/{pid}/_history/2"), 410, "deleted")


def test_read_of_an_unknown_id_is_404_operation_outcome(api):
    assert_outcome(api.get("Patient/no-such-patient"), 404, "not-found")


def test_read_of_an_invalid_id_is_400(api):
    assert_outcome(api.get("Patient/" + "x" * 65), 400, "invalid")


def test_an_unknown_resource_type_is_404_operation_outcome(api):
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}

    for resp in (
        api.get("Observation"),
        api.get("Observation/1"),
        api.get("Observation/_history"),
        api.get("patient/1"),
        api.post("Observation", observation),
        api.put("Observation/1", observation | {"id": "1"}),
    ):
        assert_outcome(resp, 404, "not-supported")


# --- update -------------------------------------------------------------------------------------------


def test_update_returns_200_with_version_2(api, village):
    v1 = create_patient(api, village)

    resp = api.put(f"Patient/{v1['id']}", renamed(v1, "Smith"))

    assert resp.status_code == 200, resp.text
    assert resp.headers["etag"] == 'W/"2"'
    assert resp.headers["location"] == f"{BASE}/Patient/{v1['id']}/_history/2"
    body = resp.json()
    assert body["id"] == v1["id"]
    assert body["meta"]["versionId"] == "2"
    assert body["name"][0]["family"] == "Smith"
    assert instant_us(body["meta"]["lastUpdated"]) > instant_us(v1["meta"]["lastUpdated"])
    assert api.get(f"Patient/{v1['id']}").json() == body


def test_update_with_a_stale_if_match_is_412_and_changes_nothing(api, village, engine):
    v1 = create_patient(api, village)
    v2 = api.put(f"Patient/{v1['id']}", renamed(v1, "Smith")).json()
    versions_before = history_count(engine, "Patient")

    resp = api.put(f"Patient/{v1['id']}", renamed(v1, "Stale"), headers={"If-Match": 'W/"1"'})

    assert_outcome(resp, 412, "conflict")
    current = api.get(f"Patient/{v1['id']}")
    assert current.headers["etag"] == 'W/"2"'
    assert current.json() == v2
    assert history_count(engine, "Patient") == versions_before


def test_update_with_a_matching_if_match_succeeds(api, village):
    v1 = create_patient(api, village)
    v2 = api.put(f"Patient/{v1['id']}", renamed(v1, "Smith")).json()

    resp = api.put(f"Patient/{v1['id']}", renamed(v2, "Jones"), headers={"If-Match": 'W/"2"'})

    assert resp.status_code == 200, resp.text
    assert resp.headers["etag"] == 'W/"3"'
    assert resp.json()["name"][0]["family"] == "Jones"


def test_update_with_if_match_on_a_resource_that_does_not_exist_is_412(api, village, engine):
    body = patient("100000009", "Doe", "Jane", village) | {"id": "client-chosen-1"}

    resp = api.put("Patient/client-chosen-1", body, headers={"If-Match": 'W/"1"'})

    assert_outcome(resp, 412)
    assert insuree_count(engine) == 0


def test_update_as_create_with_a_client_id_is_201(api, village):
    body = patient("100000009", "Doe", "Jane", village) | {"id": "client-chosen-1"}

    resp = api.put("Patient/client-chosen-1", body)

    assert resp.status_code == 201, resp.text
    assert resp.headers["location"] == f"{BASE}/Patient/client-chosen-1/_history/1"
    assert resp.headers["etag"] == 'W/"1"'
    assert resp.json()["id"] == "client-chosen-1"
    assert resp.json()["meta"]["versionId"] == "1"
    assert api.get("Patient/client-chosen-1").json() == resp.json()


@pytest.mark.parametrize("body_id", ["another-id", None])
def test_update_whose_body_id_differs_from_the_url_id_is_400(api, village, engine, body_id):
    v1 = create_patient(api, village)
    body = renamed(v1, "Smith")
    if body_id is None:
        del body["id"]
    else:
        body["id"] = body_id

    assert_outcome(api.put(f"Patient/{v1['id']}", body), 400, "invalid")
    assert api.get(f"Patient/{v1['id']}").json() == v1


def test_update_with_a_resource_of_another_type_is_400(api, village):
    v1 = create_patient(api, village)
    body = location("R9", "Northland", "R") | {"id": v1["id"]}

    assert_outcome(api.put(f"Patient/{v1['id']}", body), 400, "invalid")


# --- delete -------------------------------------------------------------------------------------------


def test_delete_is_204_and_a_later_read_is_410_gone(api, village):
    pid = create_patient(api, village)["id"]

    resp = api.delete(f"Patient/{pid}")

    assert resp.status_code == 204, resp.text
    assert resp.content == b""
    assert resp.headers["etag"] == 'W/"2"'
    gone = api.get(f"Patient/{pid}")
    assert_outcome(gone, 410, "deleted")
    assert gone.headers["etag"] == 'W/"2"'


def test_history_of_a_deleted_resource_shows_the_delete_entry(api, village):
    pid = create_patient(api, village)["id"]
    api.delete(f"Patient/{pid}")

    resp = api.get(f"Patient/{pid}/_history")

    assert resp.status_code == 200, resp.text
    entries = resp.json()["entry"]
    assert len(entries) == 2
    deleted, created = entries
    assert deleted["request"] == {"method": "DELETE", "url": f"Patient/{pid}"}
    assert "resource" not in deleted
    assert deleted["response"]["etag"] == 'W/"2"'
    assert deleted["response"]["status"].startswith("204")
    assert created["request"] == {"method": "POST", "url": "Patient"}
    assert created["resource"]["meta"]["versionId"] == "1"


def test_deleting_twice_is_204_both_times_and_adds_no_version(api, village, engine):
    pid = create_patient(api, village)["id"]
    assert api.delete(f"Patient/{pid}").status_code == 204
    versions = history_count(engine, "Patient")

    again = api.delete(f"Patient/{pid}")

    assert again.status_code == 204, again.text
    assert again.content == b""
    assert history_count(engine, "Patient") == versions


def test_a_deleted_resource_disappears_from_search(api, village):
    pid = create_patient(api, village)["id"]
    api.delete(f"Patient/{pid}")

    resp = api.get("Patient?family=Doe")

    assert resp.status_code == 200
    assert "entry" not in resp.json()


def test_delete_with_a_stale_if_match_is_412_and_deletes_nothing(api, village):
    v1 = create_patient(api, village)
    api.put(f"Patient/{v1['id']}", renamed(v1, "Smith"))

    resp = api.delete(f"Patient/{v1['id']}", headers={"If-Match": 'W/"1"'})

    assert_outcome(resp, 412, "conflict")
    assert api.get(f"Patient/{v1['id']}").status_code == 200
    assert api.delete(f"Patient/{v1['id']}", headers={"If-Match": 'W/"2"'}).status_code == 204


def test_delete_of_an_unknown_id_is_404(api):
    assert_outcome(api.delete("Patient/no-such-patient"), 404, "not-found")


def test_update_after_delete_brings_the_resource_back_as_the_next_version(api, village):
    v1 = create_patient(api, village)
    api.delete(f"Patient/{v1['id']}")

    resp = api.put(f"Patient/{v1['id']}", renamed(v1, "Back"))

    assert resp.status_code == 200, resp.text
    assert resp.headers["etag"] == 'W/"3"'
    assert api.get(f"Patient/{v1['id']}").json()["name"][0]["family"] == "Back"


# --- history ------------------------------------------------------------------------------------------


def _three_versions(api: Api, village: str) -> dict[str, Any]:
    v1 = create_patient(api, village)
    v2 = api.put(f"Patient/{v1['id']}", renamed(v1, "Second")).json()
    v3 = api.put(f"Patient/{v1['id']}", renamed(v2, "Third")).json()
    return {"1": v1, "2": v2, "3": v3}


def test_instance_history_lists_versions_newest_first(api, village):
    versions = _three_versions(api, village)
    pid = versions["1"]["id"]

    resp = api.get(f"Patient/{pid}/_history")

    assert resp.status_code == 200, resp.text
    bundle = resp.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["3", "2", "1"]
    assert [e["resource"] for e in bundle["entry"]] == [versions["3"], versions["2"], versions["1"]]
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "PUT", "POST"]
    assert [e["response"]["etag"] for e in bundle["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert all(e["fullUrl"] == f"{BASE}/Patient/{pid}" for e in bundle["entry"])
    assert {"relation": "self", "url": f"{BASE}/Patient/{pid}/_history"} in bundle["link"]
    assert not any(link["relation"] == "next" for link in bundle["link"])


def test_instance_history_pages_with_count_and_the_next_link(api, village):
    pid = _three_versions(api, village)["1"]["id"]

    seen: list[str] = []
    url: str | None = f"Patient/{pid}/_history?_count=2"
    pages = 0
    while url:
        resp = api.get(url)
        assert resp.status_code == 200, resp.text
        bundle = resp.json()
        assert len(bundle["entry"]) <= 2
        seen += [e["resource"]["meta"]["versionId"] for e in bundle["entry"]]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        pages += 1
        assert pages < 5

    assert pages == 2
    assert seen == ["3", "2", "1"]


def test_instance_history_since_keeps_only_later_versions(api, village):
    versions = _three_versions(api, village)
    pid = versions["1"]["id"]
    since = versions["2"]["meta"]["lastUpdated"]

    resp = api.get(f"Patient/{pid}/_history?_since={quote(since)}")

    assert resp.status_code == 200, resp.text
    assert [e["resource"]["meta"]["versionId"] for e in resp.json()["entry"]] == ["3", "2"]


def test_history_since_accepts_an_unencoded_time_zone_offset(api, village):
    versions = _three_versions(api, village)
    pid = versions["1"]["id"]
    since = versions["3"]["meta"]["lastUpdated"].replace("Z", "+00:00")

    resp = api.get(f"Patient/{pid}/_history?_since={since}")  # `+` decodes to a space

    assert resp.status_code == 200, resp.text
    assert [e["resource"]["meta"]["versionId"] for e in resp.json()["entry"]] == ["3"]


def test_instance_history_of_an_unknown_id_is_404(api):
    assert_outcome(api.get("Patient/no-such-patient/_history"), 404, "not-found")


def test_type_history_covers_every_patient_and_since_splits_between_two_writes(api, village):
    first = create_patient(api, village, "100000001", "Doe")
    second = create_patient(api, village, "100000002", "Roe")
    t1, t2 = instant_us(first["meta"]["lastUpdated"]), instant_us(second["meta"]["lastUpdated"])
    assert t2 > t1 + 1
    between = fhir_instant((t1 + t2) // 2 + 1)

    everything = api.get("Patient/_history")
    later = api.get(f"Patient/_history?_since={quote(between)}")

    assert everything.status_code == 200, everything.text
    assert [e["resource"]["id"] for e in everything.json()["entry"]] == [second["id"], first["id"]]
    assert all(e["resource"]["resourceType"] == "Patient" for e in everything.json()["entry"])
    assert later.status_code == 200, later.text
    assert [e["resource"]["id"] for e in later.json()["entry"]] == [second["id"]]


def test_type_history_with_an_invalid_since_is_400(api):
    assert_outcome(api.get("Patient/_history?_since=yesterday"), 400, "invalid")


# --- Prefer -------------------------------------------------------------------------------------------


def test_prefer_return_minimal_gives_an_empty_body_with_the_headers(api, village):
    resp = api.post("Patient", patient("100000001", "Doe", "John", village),
                    headers={"Prefer": "return=minimal"})

    assert resp.status_code == 201, resp.text
    assert resp.content == b""
    assert "content-type" not in resp.headers
    assert resp.headers["etag"] == 'W/"1"'
    assert resp.headers["location"].startswith(f"{BASE}/Patient/")
    assert resp.headers["location"].endswith("/_history/1")
    assert "last-modified" in resp.headers
    assert api.get(resp.headers["location"]).status_code == 200


def test_prefer_return_minimal_on_update(api, village):
    v1 = create_patient(api, village)

    resp = api.put(f"Patient/{v1['id']}", renamed(v1, "Smith"), headers={"Prefer": "return=minimal"})

    assert resp.status_code == 200, resp.text
    assert resp.content == b""
    assert resp.headers["etag"] == 'W/"2"'


def test_prefer_return_operation_outcome_gives_an_outcome_instead_of_the_resource(api, village):
    resp = api.post("Patient", patient("100000001", "Doe", "John", village),
                    headers={"Prefer": "return=OperationOutcome"})

    assert resp.status_code == 201, resp.text
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert errors_of(outcome) == []
    assert outcome["issue"][0]["severity"] == "information"
    assert resp.headers["etag"] == 'W/"1"'
    assert resp.headers["location"].endswith("/_history/1")


def test_without_prefer_and_with_return_representation_the_resource_comes_back(api, village):
    plain = api.post("Patient", patient("100000001", "Doe", "John", village))
    explicit = api.post("Patient", patient("100000002", "Roe", "Jane", village),
                        headers={"Prefer": "return=representation"})

    for resp in (plain, explicit):
        assert resp.status_code == 201, resp.text
        assert resp.json()["resourceType"] == "Patient"
        assert resp.json()["meta"]["versionId"] == "1"


# --- content negotiation ------------------------------------------------------------------------------


def test_fhir_json_is_the_default_content_type(api, village):
    pid = create_patient(api, village)["id"]

    resp = api.client.get(f"/fhir/Patient/{pid}", headers={"Authorization": f"Bearer {api.token}"})

    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/fhir+json; charset=utf-8"


def test_accept_application_json_is_answered_as_application_json(api, village):
    pid = create_patient(api, village)["id"]

    read = api.get(f"Patient/{pid}", headers={"Accept": "application/json"})
    search = api.get("Patient", headers={"Accept": "application/json"})
    error = api.get("Patient/no-such-patient", headers={"Accept": "application/json"})

    assert read.status_code == 200
    assert read.headers["content-type"] == "application/json; charset=utf-8"
    assert search.headers["content-type"] == "application/json; charset=utf-8"
    assert error.status_code == 404
    assert error.headers["content-type"] == "application/json; charset=utf-8"


def test_accepts_that_include_fhir_json_get_fhir_json(api, village):
    pid = create_patient(api, village)["id"]

    for accept in ("application/fhir+json", "*/*", "application/fhir+json, application/json",
                   "application/fhir+json;q=0.9, text/html;q=0.1"):
        resp = api.get(f"Patient/{pid}", headers={"Accept": accept})
        assert resp.status_code == 200, (accept, resp.text)
        assert resp.headers["content-type"] == "application/fhir+json; charset=utf-8", accept


def test_format_json_is_accepted(api, village):
    pid = create_patient(api, village)["id"]

    for fmt, ctype in (("json", "application/fhir+json"), ("application/fhir+json", "application/fhir+json"),
                       ("application/json", "application/json")):
        # _format overrides Accept
        resp = api.get(f"Patient/{pid}?_format={quote(fmt)}", headers={"Accept": "text/html"})
        assert resp.status_code == 200, (fmt, resp.text)
        assert resp.headers["content-type"] == f"{ctype}; charset=utf-8", fmt
        assert resp.json()["id"] == pid


def test_format_xml_is_406(api):
    for fmt in ("xml", "application/fhir+xml", "ttl"):
        assert_outcome(api.get(f"Patient?_format={quote(fmt)}"), 406, "not-supported")


def test_an_accept_without_json_is_406(api):
    assert_outcome(api.get("Patient", headers={"Accept": "application/fhir+xml"}), 406, "not-supported")


def test_a_post_with_a_non_json_content_type_is_415(api, village, engine):
    body = orjson.dumps(patient("100000001", "Doe", "John", village))

    for ctype in ("text/plain", "application/xml", "application/x-www-form-urlencoded"):
        assert_outcome(api.post("Patient", body, headers={"Content-Type": ctype}), 415, "not-supported")
    assert insuree_count(engine) == 0


def test_put_and_validate_with_a_non_json_content_type_are_415(api, village):
    v1 = create_patient(api, village)
    headers = {"Content-Type": "text/plain"}

    assert_outcome(api.put(f"Patient/{v1['id']}", renamed(v1, "Smith"), headers=headers), 415)
    assert_outcome(api.post("Patient/$validate", v1, headers=headers), 415)
    assert api.get(f"Patient/{v1['id']}").json() == v1


def test_a_post_with_application_json_is_accepted(api, village):
    resp = api.post("Patient", patient("100000001", "Doe", "John", village),
                    headers={"Content-Type": "application/json; charset=utf-8"})

    assert resp.status_code == 201, resp.text


def test_media_types_are_case_insensitive(api, village):
    headers = {"Content-Type": "Application/FHIR+JSON; fhirVersion=4.0", "Accept": "Application/JSON"}

    resp = api.post("Patient", patient("100000001", "Doe", "John", village), headers=headers)

    assert resp.status_code == 201, resp.text
    assert resp.headers["content-type"] == "application/json; charset=utf-8"


def test_malformed_json_is_400(api):
    assert_outcome(api.post("Patient", b'{"resourceType": "Patient",'), 400, "invalid")


# --- CapabilityStatement ------------------------------------------------------------------------------


def test_metadata_needs_no_token_and_describes_every_supported_resource(client):
    resp = client.get("/fhir/metadata")

    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/fhir+json; charset=utf-8"
    cs = resp.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    assert cs["kind"] == "instance"
    assert cs["status"] == "active"
    assert "json" in cs["format"]
    assert cs["implementation"]["url"] == BASE
    [rest] = cs["rest"]
    assert rest["mode"] == "server"
    by_type = {r["type"]: r for r in rest["resource"]}
    assert {"Patient", "Group", "Location", "Organization", "Practitioner", "PractitionerRole", "Medication",
            "ActivityDefinition", "InsurancePlan"} <= set(by_type)
    assert by_type["Patient"]["supportedProfile"] == [f"{PROFILE}openimis-patient"]
    assert by_type["Group"]["supportedProfile"] == [f"{PROFILE}openimis-group"]
    assert by_type["Location"]["supportedProfile"] == [f"{PROFILE}openimis-location"]
    assert set(by_type["Organization"]["supportedProfile"]) == {
        f"{PROFILE}openimis-health-facility-organization",
        f"{PROFILE}openimis-policy-holder-organization",
        f"{PROFILE}openimis-insurance-organization",
    }


def test_metadata_lists_interactions_search_params_and_validate(client):
    cs = client.get("/fhir/metadata").json()
    by_type = {r["type"]: r for r in cs["rest"][0]["resource"]}

    for rtype in ("Patient", "Group", "Location", "Organization"):
        codes = {i["code"] for i in by_type[rtype]["interaction"]}
        assert codes == {"read", "vread", "search-type", "history-instance", "history-type",
                         "create", "update", "delete"}, rtype
        assert any(op["name"] == "validate" for op in by_type[rtype]["operation"]), rtype
    params = {p["name"]: p["type"] for p in by_type["Patient"]["searchParam"]}
    assert params["family"] == "string"
    assert params["birthdate"] == "date"
    assert params["identifier"] == "token"
    assert params["_lastUpdated"] == "date"
    assert params["_id"] == "token"
    assert params["group"] == "reference"


def test_metadata_is_a_valid_r4_capability_statement(client):
    from hifhir.fhir.validate import validate_resource

    cs = client.get("/fhir/metadata").json()

    _, issues = validate_resource(cs, None)
    assert [i for i in issues if i.severity in ("error", "fatal")] == []


def test_metadata_ignores_a_bad_token(client):
    resp = client.get("/fhir/metadata", headers={"Authorization": "Bearer not-a-token"})

    assert resp.status_code == 200
    assert resp.json()["resourceType"] == "CapabilityStatement"


def test_metadata_on_the_alias_names_the_alias_base(client):
    resp = client.get("/api/api_fhir_r4/metadata")

    assert resp.status_code == 200
    assert resp.json()["implementation"]["url"] == ALIAS


def test_metadata_accepts_get_only(client):
    assert_outcome(client.post("/fhir/metadata", content=b"{}"), 405)


# --- authentication and authorisation -----------------------------------------------------------------

PROTECTED = [
    ("GET", "/fhir/Patient"),
    ("GET", "/fhir/Patient/some-id"),
    ("GET", "/fhir/Patient/some-id/_history"),
    ("GET", "/fhir/Patient/some-id/_history/1"),
    ("GET", "/fhir/Patient/_history"),
    ("POST", "/fhir/Patient"),
    ("PUT", "/fhir/Patient/some-id"),
    ("DELETE", "/fhir/Patient/some-id"),
    ("POST", "/fhir/Patient/_search"),
    ("POST", "/fhir/Patient/$validate"),
    ("POST", "/fhir/Patient/some-id/$validate"),
    ("GET", "/fhir/Location"),
    ("GET", "/fhir/Group"),
    ("GET", "/fhir/Organization"),
    ("GET", "/fhir/Observation"),
    ("GET", "/fhir"),
    ("GET", "/api/api_fhir_r4/Patient/"),
    ("POST", "/api/api_fhir_r4/Patient/"),
    ("GET", "/api/api_fhir_r4/Location/some-id"),
]


def test_every_fhir_endpoint_but_metadata_and_login_requires_a_bearer_token(client):
    body = b'{"resourceType": "Patient"}'
    for authorization in (None, "Bearer not-a-token", "Bearer ", "Basic QWRtaW46YWRtaW4xMjM=", "Admin"):
        headers = {"Content-Type": "application/fhir+json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        for method, path in PROTECTED:
            content = body if method in ("POST", "PUT") else None
            resp = client.request(method, path, headers=headers, content=content)
            where = (authorization, method, path)
            assert resp.status_code == 401, (*where, resp.text)
            assert resp.json()["resourceType"] == "OperationOutcome", where
            assert resp.json()["issue"][0]["code"] == "login", where
            assert resp.headers["www-authenticate"].startswith("Bearer"), where


def test_a_token_signed_with_another_secret_is_rejected(client):
    import jwt

    forged = jwt.encode({"sub": "Admin", "exp": 4102444800}, "another-secret-" + "y" * 32, algorithm="HS256")

    resp = client.get("/fhir/Patient", headers={"Authorization": f"Bearer {forged}"})

    assert_outcome(resp, 401, "login")


def test_login_returns_a_token_and_its_expiry(client):
    for path in ("/api/api_fhir_r4/login/", "/api/login", "/api/api_fhir_r4/login"):
        resp = client.post(path, json={"username": "Admin", "password": "admin123"})

        assert resp.status_code == 200, (path, resp.text)
        body = resp.json()
        assert set(body) == {"token", "exp"}
        assert isinstance(body["token"], str) and body["token"]
        assert isinstance(body["exp"], int)
        assert body["exp"] > datetime.now(UTC).timestamp()
        bearer = {"Authorization": f"Bearer {body['token']}"}
        assert client.get("/fhir/Patient", headers=bearer).status_code == 200


def test_login_with_a_wrong_password_is_401(client):
    resp = client.post("/api/api_fhir_r4/login/", json={"username": "Admin", "password": "wrong"})

    assert resp.status_code == 401
    assert "token" not in resp.json()


def test_login_of_an_unknown_user_is_401(client):
    resp = client.post("/api/login", json={"username": "ghost", "password": "whatever"})

    assert resp.status_code == 401


def test_login_with_a_missing_field_is_400(client):
    for payload in ({"username": "Admin"}, {"password": "admin123"}, {},
                    {"username": "Admin", "password": ""}, {"username": 1, "password": "x"},
                    ["Admin", "admin123"]):
        resp = client.post("/api/api_fhir_r4/login/", json=payload)

        assert resp.status_code == 400, (payload, resp.text)
        assert resp.json()["resourceType"] == "OperationOutcome"


def test_login_takes_post_only(client):
    assert client.get("/api/api_fhir_r4/login/").status_code == 405


def test_a_user_without_rights_is_forbidden_to_read_search_or_create_patients(api, village, engine):
    pid = create_patient(api, village)["id"]
    nobody = as_user(api, NOBODY)

    for resp in (
        nobody.get(f"Patient/{pid}"),
        nobody.get(f"Patient/{pid}/_history/1"),
        nobody.get("Patient/no-such-patient"),
        nobody.get("Patient?family=Doe"),
        nobody.get(f"Patient/{pid}/_history"),
        nobody.get("Patient/_history"),
        nobody.post("Patient", patient("100000002", "Roe", "Jane", village)),
        nobody.put(f"Patient/{pid}", patient("100000001", "Roe", "Jane", village) | {"id": pid}),
        nobody.delete(f"Patient/{pid}"),
        nobody.delete("Patient/no-such-patient"),
    ):
        outcome = assert_outcome(resp, 403, "forbidden")
        assert "nobody" in outcome["issue"][0]["diagnostics"]
    assert insuree_count(engine) == 1
    assert api.get(f"Patient/{pid}").headers["etag"] == 'W/"1"'


def test_a_user_without_rights_cannot_use_validate_to_probe_data(api, village):
    pid = create_patient(api, village)["id"]
    nobody = as_user(api, NOBODY)

    for resp in (
        nobody.post("Patient/$validate", patient("100000002", "Roe", "Jane", village)),
        nobody.post(f"Patient/{pid}/$validate", patient("100000001", "Roe", "Jane", village) | {"id": pid}),
    ):
        assert_outcome(resp, 403, "forbidden")


def _health_facility(district_id: str) -> dict[str, Any]:
    hf = load_example("Organization-RaptaDistrictHospital")
    del hf["id"]
    hf["address"][0]["extension"][0]["valueReference"]["reference"] = f"Location/{district_id}"
    return dict(hf)


def test_a_clerk_sees_only_the_organizations_their_rights_cover(api, places):
    hf = api.post("Organization", _health_facility(places["D"]))
    assert hf.status_code == 201, hf.text
    hf_id = hf.json()["id"]
    everything = api.get("Organization").json()["entry"]
    insurer_ids = [e["resource"]["id"] for e in everything if e["resource"]["id"] != hf_id]
    assert len(everything) == len(insurer_ids) + 1 and insurer_ids
    clerk = as_user(api, CLERK)  # no health facility right; reads the insurer (enrolment rights)

    searched = clerk.get("Organization")
    history = clerk.get("Organization/_history")

    assert searched.status_code == 200, searched.text
    assert [e["resource"]["id"] for e in searched.json()["entry"]] == insurer_ids
    assert history.status_code == 200, history.text
    assert {e["resource"]["id"] for e in history.json()["entry"]} == set(insurer_ids)
    assert clerk.get(f"Organization/{insurer_ids[0]}").status_code == 200
    assert clerk.get(f"Organization/{insurer_ids[0]}/_history").status_code == 200
    # a kind of the type the clerk may not read is as unknown as a missing id (auth/matrix.py: no existence leak)
    assert_outcome(clerk.get(f"Organization/{hf_id}"), 404, "not-found")
    assert_outcome(clerk.get(f"Organization/{hf_id}/_history"), 404, "not-found")


def test_a_clerk_can_create_a_patient_but_not_a_location(api, village, engine):
    clerk = as_user(api, CLERK)

    created = clerk.post("Patient", patient("100000001", "Doe", "John", village))
    refused = clerk.post("Location", location("R9", "Northland", "R"))

    assert created.status_code == 201, created.text
    assert clerk.get(f"Patient/{created.json()['id']}").status_code == 200
    assert_outcome(refused, 403, "forbidden")
    assert api.get("Location?identifier=R9").json().get("entry") is None


# --- $validate ----------------------------------------------------------------------------------------


def test_validate_of_a_valid_resource_is_200_information_and_writes_nothing(api, village, engine):
    resp = api.post("Patient/$validate", patient("100000001", "Doe", "John", village))

    outcome = assert_outcome(resp, 200)
    assert errors_of(outcome) == []
    assert any(i["severity"] == "information" for i in outcome["issue"])
    assert insuree_count(engine) == 0
    assert history_count(engine, "Patient") == 0


def test_validate_of_an_invalid_resource_is_200_with_errors_and_writes_nothing(api, village, engine):
    body = patient("100000001", "Doe", "John", village)
    body["gender"] = "robot"
    body["birthDate"] = "01/02/1990"

    resp = api.post("Patient/$validate", body)

    outcome = assert_outcome(resp, 200)
    errors = errors_of(outcome)
    assert len(errors) >= 2
    assert not any(i["severity"] == "information" for i in outcome["issue"])
    assert insuree_count(engine) == 0
    assert history_count(engine, "Patient") == 0


def test_validate_reports_a_business_rule_failure_without_writing(api, village, engine):
    body = patient("100000001", "Doe", "John", "no-such-village")

    outcome = assert_outcome(api.post("Patient/$validate", body), 200)

    assert errors_of(outcome)
    assert insuree_count(engine) == 0


def test_validate_accepts_a_parameters_wrapper(api, village):
    body = {"resourceType": "Parameters",
            "parameter": [{"name": "resource", "resource": patient("100000001", "Doe", "John", village)}]}

    outcome = assert_outcome(api.post("Patient/$validate", body), 200)

    assert errors_of(outcome) == []


def test_validate_at_instance_level_checks_an_update_without_applying_it(api, village, engine):
    v1 = create_patient(api, village)

    ok = api.post(f"Patient/{v1['id']}/$validate", renamed(v1, "Smith"))
    bad_body = renamed(v1, "Smith")
    bad_body["gender"] = "robot"
    bad = api.post(f"Patient/{v1['id']}/$validate", bad_body)

    assert errors_of(assert_outcome(ok, 200)) == []
    assert errors_of(assert_outcome(bad, 200))
    assert api.get(f"Patient/{v1['id']}").json() == v1
    assert history_count(engine, "Patient") == 1


def test_validate_at_instance_level_reports_an_id_mismatch(api, village):
    v1 = create_patient(api, village)
    body = renamed(v1, "Smith") | {"id": "another-id"}

    outcome = assert_outcome(api.post(f"Patient/{v1['id']}/$validate", body), 200)

    assert errors_of(outcome)


def test_validate_of_the_wrong_resource_type_is_400(api):
    assert_outcome(api.post("Patient/$validate", location("R9", "Northland", "R")), 400, "invalid")


# --- search -------------------------------------------------------------------------------------------


def test_post_search_with_a_form_body_gives_the_same_result_as_get(api, village):
    create_patient(api, village, "100000001", "Doe", "John")
    create_patient(api, village, "100000002", "Roe", "Jane")
    create_patient(api, village, "100000003", "Dole", "Jim")

    got = api.get("Patient?family=do&_sort=given")
    posted = api.client.post("/fhir/Patient/_search", content=b"family=do&_sort=given",
                             headers={"Authorization": f"Bearer {api.token}",
                                      "Content-Type": "application/x-www-form-urlencoded"})

    assert got.status_code == 200, got.text
    assert posted.status_code == 200, posted.text
    assert [e["resource"]["name"][0]["given"][0] for e in got.json()["entry"]] == ["Jim", "John"]
    # the same entries and links; only the sync point (Bundle.meta.lastUpdated, the time of the search) differs
    assert {**posted.json(), "meta": None} == {**got.json(), "meta": None}


def test_post_search_combines_url_and_form_parameters(api, village):
    create_patient(api, village, "100000001", "Doe", "John", )
    create_patient(api, village, "100000002", "Doe", "Jane")

    resp = api.client.post("/fhir/Patient/_search?family=Doe", content=b"given=Jane",
                           headers={"Authorization": f"Bearer {api.token}",
                                    "Content-Type": "application/x-www-form-urlencoded"})

    assert resp.status_code == 200, resp.text
    assert [e["resource"]["name"][0]["given"][0] for e in resp.json()["entry"]] == ["Jane"]


def test_search_bundle_is_a_searchset_with_full_urls(api, village):
    pid = create_patient(api, village)["id"]

    bundle = api.get("Patient?identifier=100000001").json()

    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    [entry] = bundle["entry"]
    assert entry["fullUrl"] == f"{BASE}/Patient/{pid}"
    assert entry["search"] == {"mode": "match"}
    assert {"relation": "self", "url": f"{BASE}/Patient?identifier=100000001"} in bundle["link"]


# --- methods ------------------------------------------------------------------------------------------


def test_an_unsupported_method_is_405(api):
    for method, path in (("DELETE", "Patient"), ("PUT", "Patient"), ("PATCH", "Patient/x"),
                         ("POST", "Patient/x"), ("GET", "Patient/_search"), ("GET", "Patient/$validate"),
                         ("DELETE", "Patient/x/_history")):
        resp = api.client.request(method, f"/fhir/{path}", headers=api.headers(), content=b"{}")

        assert_outcome(resp, 405, "not-supported")


# --- the openIMIS-compatible alias --------------------------------------------------------------------


def test_the_alias_with_a_trailing_slash_works_like_fhir(api, village):
    alias = api.as_alias()

    created = alias.post("Patient/", patient("100000001", "Doe", "John", village))

    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    assert created.headers["location"] == f"{ALIAS}/Patient/{pid}/_history/1"
    assert alias.get(f"Patient/{pid}/").json() == api.get(f"Patient/{pid}").json()
    found = alias.get("Patient/?family=Doe")
    assert found.status_code == 200
    assert [e["fullUrl"] for e in found.json()["entry"]] == [f"{ALIAS}/Patient/{pid}"]
    assert [e["resource"] for e in found.json()["entry"]] == [e["resource"] for e in
                                                                 api.get("Patient?family=Doe").json()["entry"]]


def _legacy_card_patient(village: str) -> dict[str, Any]:
    body = patient("100000001", "Doe", "John", village, birth_date="1985-06-15")
    body["extension"].append({"url": f"{EXT}patient-card-issued", "valueBoolean": "True"})
    return body


def test_the_alias_accepts_a_string_boolean_with_a_warning(api, village):
    resp = api.as_alias().post("Patient/", _legacy_card_patient(village))

    assert resp.status_code == 201, resp.text
    assert resp.headers["warning"].startswith("199 hifhir ")
    assert "valueBoolean" in resp.headers["warning"] or "boolean" in resp.headers["warning"].lower()
    body = resp.json()
    assert body["birthDate"] == "1985-06-15"
    card = [e for e in body["extension"] if e["url"] == f"{EXT}patient-card-issued"]
    assert card == [{"url": f"{EXT}patient-card-issued", "valueBoolean": True}]


def test_the_alias_sends_no_warning_for_a_clean_resource(api, village):
    resp = api.as_alias().post("Patient/", patient("100000001", "Doe", "John", village))

    assert resp.status_code == 201, resp.text
    assert "warning" not in resp.headers


def test_fhir_rejects_a_string_boolean(api, village, engine):
    resp = api.post("Patient", _legacy_card_patient(village))

    outcome = assert_outcome(resp, 400)
    assert errors_of(outcome)
    assert insuree_count(engine) == 0


def test_stored_versions_are_compressed_with_lz4_on_postgresql(engine: Any) -> None:
    """PostgreSQL compresses bodies above ~2 KB; the migration picks lz4 over the default pglz (cheaper to write and
    read). SQLite stores them as they are."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite stores bodies uncompressed")
    with engine.connect() as conn:
        method = conn.exec_driver_sql(
            "SELECT attcompression FROM pg_attribute "
            "WHERE attrelid = 'resource_version'::regclass AND attname = 'body'").scalar_one()
    assert method == "l"
