"""Security headers on every response, and CORS: off by default, on for the configured origins only."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from hifhir.api.app import HifhirApp
from hifhir.config import Settings
from tests.builders import location
from tests.conftest import ADMIN, Api, _reset
from tests.responses import created

ALLOWED = "https://app.example.org"
OTHER = "https://evil.example.com"
ALWAYS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}
PREFLIGHT = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


def make_api(backend: tuple[Settings, Engine], base_url: str = "http://testserver", **changes: object) -> Api:
    settings, engine = backend
    app = HifhirApp(dataclasses.replace(settings, **changes), engine)
    return Api(TestClient(app, base_url=base_url), app.tokens.issue(ADMIN[0])[0])


@pytest.fixture
def api(backend: tuple[Settings, Engine]) -> Iterator[Api]:
    _reset(*backend)
    yield make_api(backend)


@pytest.fixture
def cors_api(backend: tuple[Settings, Engine]) -> Iterator[Api]:
    _reset(*backend)
    yield make_api(backend, cors_origins=(ALLOWED, "http://localhost:3000"))


def test_every_kind_of_response_carries_the_security_headers(api):
    answers = [
        api.get("Patient"),  # 200 search
        api.get("Patient/nope"),  # 404
        api.client.get("/fhir/Patient"),  # 401
        api.client.get("/fhir/metadata"),  # public
        api.client.get("/nowhere"),  # unknown path
        api.post("Patient", b"{not json"),  # 400
        api.client.post("/api/api_fhir_r4/login/", json={"username": ADMIN[0], "password": ADMIN[1]}),
    ]

    for resp in answers:
        for name, value in ALWAYS.items():
            assert resp.headers.get(name) == value, (resp.request.url, name)
        assert resp.headers["cache-control"] == "no-store", resp.request.url
        assert "strict-transport-security" not in resp.headers  # plain http


def test_etag_and_last_modified_are_kept(api):
    stored = created(api.post("Location", location("R1", "Ultha", "R")))

    resp = api.get(f"Location/{stored['id']}")

    assert resp.headers["etag"] == 'W/"1"'
    assert "last-modified" in resp.headers
    assert resp.headers["cache-control"] == "no-store"


def test_https_requests_get_strict_transport_security(backend):
    _reset(*backend)
    api = make_api(backend, base_url="https://testserver")

    resp = api.get("Patient")

    assert resp.headers["strict-transport-security"].startswith("max-age=")


def test_cors_is_off_by_default(api):
    resp = api.get("Patient", headers={"Origin": ALLOWED})
    preflight = api.client.options("/fhir/Patient", headers=PREFLIGHT)

    assert not [h for h in resp.headers if h.startswith("access-control-")]
    assert not [h for h in preflight.headers if h.startswith("access-control-")]
    assert preflight.status_code >= 400


def test_an_allowed_origins_preflight_is_204_without_a_token(cors_api):
    resp = cors_api.client.options("/fhir/Patient", headers=PREFLIGHT)

    assert resp.status_code == 204
    assert resp.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert "authorization" in resp.headers["access-control-allow-headers"].lower()
    assert int(resp.headers["access-control-max-age"]) > 0
    assert resp.headers["vary"] == "Origin"


def test_an_allowed_origin_reads_the_answer_and_its_headers(cors_api):
    resp = cors_api.get("Patient", headers={"Origin": ALLOWED})

    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == ALLOWED
    exposed = {h.strip().lower() for h in resp.headers["access-control-expose-headers"].split(",")}
    assert {"etag", "location", "content-location", "last-modified"} <= exposed
    assert resp.headers["vary"] == "Origin"


def test_errors_reach_an_allowed_origin_too(cors_api):
    resp = cors_api.client.get("/fhir/Patient", headers={"Origin": ALLOWED})

    assert resp.status_code == 401
    assert resp.headers["access-control-allow-origin"] == ALLOWED


def test_a_disallowed_origin_gets_no_cors_headers(cors_api):
    resp = cors_api.get("Patient", headers={"Origin": OTHER})
    preflight = cors_api.client.options("/fhir/Patient", headers={**PREFLIGHT, "Origin": OTHER})

    for answer in (resp, preflight):
        assert not [h for h in answer.headers if h.startswith("access-control-")], answer.headers
    assert preflight.status_code >= 400
    assert resp.headers["vary"] == "Origin"


def test_a_star_allows_any_origin_only_when_configured(backend):
    _reset(*backend)
    api = make_api(backend, cors_origins=("*",))

    resp = api.get("Patient", headers={"Origin": OTHER})

    assert resp.headers["access-control-allow-origin"] == OTHER  # echoed: credentials never go with `*`
