"""Request limits: header count and size (431), query string length (414), body size also when chunked (413), and
the search costs a client controls — `_count`, `_include`/`_revinclude` fan-out, history pages, `_sort` and
`_elements` lists — all bounded, each refusal an OperationOutcome."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from hifhir.api.app import HifhirApp
from hifhir.config import Settings
from hifhir.fhir import search
from hifhir.fhir.search import MAX_ELEMENTS, MAX_SORT_KEYS
from tests.builders import location
from tests.conftest import ADMIN, Api, _reset
from tests.responses import created, refused

PAGE_MAX, INCLUDE_MAX, BODY_MAX = 2, 2, 64 * 1024


@pytest.fixture
def api(backend: tuple[Settings, Engine]) -> Iterator[Api]:
    settings, engine = backend
    _reset(settings, engine)
    settings = dataclasses.replace(settings, page_size_max=PAGE_MAX, include_max=INCLUDE_MAX,
                                   max_body_bytes=BODY_MAX)
    app = HifhirApp(settings, engine)
    with TestClient(app, base_url="http://testserver") as client:
        yield Api(client, app.tokens.issue(ADMIN[0])[0])


@pytest.fixture
def region(api: Api) -> dict[str, Any]:
    """A region with three districts."""
    r = created(api.post("Location", location("R1", "Ultha", "R")))
    for i in range(1, 4):
        created(api.post("Location", location(f"R1D{i}", f"District {i}", "D", r["id"])))
    return r


def test_more_than_a_hundred_headers_is_431(api):
    headers = {f"X-Filler-{i}": "x" for i in range(101)}

    body = refused(api.get("Patient", headers=headers), 431)

    assert body["issue"][0]["code"] == "too-costly"


def test_headers_over_16_kb_in_total_is_431(api):
    refused(api.get("Patient", headers={"X-Filler": "x" * (16 * 1024)}), 431)


def test_ordinary_headers_pass(api):
    headers = {f"X-Filler-{i}": "x" * 100 for i in range(50)}

    assert api.get("Patient", headers=headers).status_code == 200


def test_a_query_string_over_8_kb_is_414(api):
    refused(api.get("Patient?family=" + "a" * (8 * 1024)), 414)


def test_a_long_search_fits_in_a_post_search_form_body(api):
    ids = ",".join(str(uuid.UUID(int=i)) for i in range(250))
    resp = api.post("Location/_search", f"_id={ids}".encode(),
                    headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert resp.status_code == 200, resp.text


def test_a_chunked_body_over_the_limit_is_413(api):
    def chunks() -> Iterator[bytes]:
        yield b'{"resourceType": "Patient", "x": "'
        for _ in range(BODY_MAX // 1024 + 1):
            yield b"a" * 1024
        yield b'"}'

    resp = api.client.post("/fhir/Patient", content=chunks(), headers=api.headers())

    assert "content-length" not in resp.request.headers
    refused(resp, 413)


def test_a_declared_length_over_the_limit_is_413(api):
    refused(api.post("Patient", b"{" + b" " * BODY_MAX + b"}"), 413)


def test_count_is_capped_at_the_page_maximum(api, region):
    body = api.get("Location?_count=1000000").json()

    assert len(body["entry"]) == PAGE_MAX
    assert any(link["relation"] == "next" for link in body["link"])


def test_count_must_be_a_small_non_negative_integer(api):
    for value in ("-1", "1e3", "99999999999999999999", "abc", ""):
        refused(api.get(f"Location?_count={value}"), 400, expression="_count")


def test_include_fan_out_over_the_cap_is_refused_with_a_clear_issue(api, region):
    body = refused(api.get(f"Location?_id={region['id']}&_revinclude=Location:partof"), 400, expression="_include")

    issue = body["issue"][0]
    assert issue["code"] == "too-costly"
    assert str(INCLUDE_MAX) in issue["diagnostics"] and "_count" in issue["diagnostics"]


def test_a_reverse_include_stops_reading_rows_well_before_the_database_runs_out(backend, monkeypatch):
    """The cap is checked on distinct resources; the rows read to find them are bounded too (INCLUDE_ROW_FACTOR per
    resource the cap allows), so a revinclude over a huge set is refused without reading it all."""
    settings, engine = backend
    _reset(settings, engine)
    app = HifhirApp(settings, engine)  # the default cap (1000): three districts are far below it
    big = Api(TestClient(app, base_url="http://testserver"), app.tokens.issue(ADMIN[0])[0])
    r = created(big.post("Location", location("R1", "Ultha", "R")))
    for i in range(1, 4):
        created(big.post("Location", location(f"R1D{i}", f"District {i}", "D", r["id"])))
    query = f"Location?_id={r['id']}&_revinclude=Location:partof"
    assert len(big.get(query).json()["entry"]) == 4

    monkeypatch.setattr(search, "INCLUDE_ROW_FACTOR", 0)  # now two rows (the match's own, plus one) are the limit

    refused(big.get(query), 400, expression="_include")


def test_include_fan_out_within_the_cap_is_served(api, region):
    district = api.get("Location?identifier=R1D1").json()["entry"][0]["resource"]

    body = api.get(f"Location?_id={district['id']}&_include=Location:partof").json()

    assert [e["search"]["mode"] for e in body["entry"]] == ["match", "include"]


def test_history_pages_are_capped_and_paging_ends(api, region):
    url = "Location/_history?_count=1000000"
    seen: list[str] = []
    for _ in range(10):
        page = api.get(url).json()
        assert len(page["entry"]) <= PAGE_MAX
        seen += [e["fullUrl"] for e in page["entry"]]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        url = nxt[0]
    assert len(seen) == 4  # every version once, in bounded pages


def test_history_count_and_cursor_are_checked(api, region):
    refused(api.get(f"Location/{region['id']}/_history?_count=-3"), 400, expression="_count")
    refused(api.get("Location/_history?_cursor=%27%3BDROP"), 400, expression="_cursor")


def test_sort_takes_a_bounded_number_of_keys(api, region):
    assert api.get("Location?_sort=" + ",".join(["_id"] * MAX_SORT_KEYS)).status_code == 200

    refused(api.get("Location?_sort=" + ",".join(["_id"] * (MAX_SORT_KEYS + 1))), 400, expression="_sort")
    refused(api.get("Location?" + "&".join(["_sort=_id,_id"] * (MAX_SORT_KEYS // 2 + 1))), 400, expression="_sort")


def test_elements_takes_a_bounded_number_of_names(api, region):
    assert api.get("Location?_elements=" + ",".join(["name"] * MAX_ELEMENTS)).status_code == 200

    refused(api.get("Location?_elements=" + ",".join(["name"] * (MAX_ELEMENTS + 1))), 400, expression="_elements")


def test_more_than_200_query_parameters_is_400(api):
    refused(api.get("Location?" + "&".join(["name=a"] * 201)), 400)
