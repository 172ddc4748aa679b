"""Login throttling: repeated failed logins for one user name, or from one address, lock further attempts (429 with
Retry-After, the password not even checked) until the lock expires; the locks live in the database, so every server
process sees them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from starlette.testclient import TestClient

from hifhir import cli
from hifhir.api.app import HifhirApp
from hifhir.auth.throttle import client_address
from hifhir.config import ConfigError, Settings, TrustedProxies, load_settings
from hifhir.store.db import transaction
from hifhir.store.tables import login_failure
from tests.conftest import ADMIN, CLERK, _reset

LOGIN = "/api/api_fhir_r4/login/"
USER_MAX, ADDRESS_MAX = 3, 6


def make_client(backend: tuple[Settings, Engine], peer: str = "testclient", **changes: Any) -> TestClient:
    settings, engine = backend
    settings = dataclasses.replace(settings, login_max_failures=USER_MAX, login_max_failures_per_address=ADDRESS_MAX,
                                   **changes)
    return TestClient(HifhirApp(settings, engine), base_url="http://testserver", client=(peer, 50000))


@pytest.fixture
def client(backend: tuple[Settings, Engine]) -> Iterator[TestClient]:
    _reset(*backend)
    yield make_client(backend)


def log_in(client: TestClient, user: str, password: str, **headers: str) -> Any:
    return client.post(LOGIN, json={"username": user, "password": password}, headers=headers)


def assert_throttled(resp: Any) -> None:
    assert resp.status_code == 429, resp.text
    assert 1 <= int(resp.headers["retry-after"]) <= 15 * 60
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "throttled"
    assert "token" not in body


def test_a_user_name_is_locked_after_repeated_failures_even_for_the_right_password(client):
    for _ in range(USER_MAX):
        assert log_in(client, ADMIN[0], "wrong").status_code == 401

    assert_throttled(log_in(client, ADMIN[0], ADMIN[1]))
    assert_throttled(log_in(client, ADMIN[0], "wrong"))
    assert log_in(client, CLERK[0], CLERK[1]).status_code == 200  # another user is not locked


def test_a_success_before_the_limit_resets_the_users_count(client, engine):
    for _ in range(USER_MAX - 1):
        assert log_in(client, ADMIN[0], "wrong").status_code == 401
    assert log_in(client, ADMIN[0], ADMIN[1]).status_code == 200

    for _ in range(USER_MAX - 1):
        assert log_in(client, ADMIN[0], "wrong").status_code == 401
    assert log_in(client, ADMIN[0], ADMIN[1]).status_code == 200
    with engine.connect() as conn:
        assert conn.execute(select(login_failure.c.key).where(login_failure.c.key == "user:Admin")).first() is None


def test_unknown_user_names_count_too(client):
    for _ in range(USER_MAX):
        assert log_in(client, "ghost", "whatever").status_code == 401

    assert_throttled(log_in(client, "ghost", "whatever"))


def test_one_address_trying_many_user_names_is_locked(client):
    for i in range(ADDRESS_MAX):
        assert log_in(client, f"guess{i}", "wrong").status_code == 401

    assert_throttled(log_in(client, ADMIN[0], ADMIN[1]))


def test_the_lock_expires(client, engine):
    for _ in range(USER_MAX):
        log_in(client, ADMIN[0], "wrong")
    assert_throttled(log_in(client, ADMIN[0], ADMIN[1]))

    with transaction(engine, write=True) as conn:  # the lock time has passed
        conn.execute(update(login_failure).values(locked_until=1, window_start=1))

    assert log_in(client, ADMIN[0], ADMIN[1]).status_code == 200
    assert log_in(client, ADMIN[0], "wrong").status_code == 401  # a fresh count: one failure is no lock


def test_the_lock_holds_in_every_server_process(client, backend):
    for _ in range(USER_MAX):
        log_in(client, ADMIN[0], "wrong")

    other_process = make_client(backend)

    assert_throttled(log_in(other_process, ADMIN[0], ADMIN[1]))


def test_forwarded_for_is_ignored_from_an_untrusted_peer(client):
    for i in range(ADDRESS_MAX):
        log_in(client, f"guess{i}", "wrong", **{"X-Forwarded-For": f"10.0.0.{i}"})

    assert_throttled(log_in(client, CLERK[0], CLERK[1], **{"X-Forwarded-For": "10.9.9.9"}))


def test_forwarded_for_names_the_client_behind_a_trusted_proxy(backend):
    _reset(*backend)
    # the request comes from a load balancer of the pool 10.1.0.0/16
    client = make_client(backend, peer="10.1.2.3", trusted_proxies=TrustedProxies.parse(["10.1.0.0/16"]))
    for i in range(ADDRESS_MAX):
        log_in(client, f"guess{i}", "wrong", **{"X-Forwarded-For": "203.0.113.7"})

    assert_throttled(log_in(client, CLERK[0], CLERK[1], **{"X-Forwarded-For": "203.0.113.7"}))
    assert log_in(client, CLERK[0], CLERK[1], **{"X-Forwarded-For": "198.51.100.2"}).status_code == 200


def test_client_address_takes_the_last_untrusted_hop():
    proxies = TrustedProxies.parse(["10.0.0.1", "10.0.0.2"])

    assert client_address("10.0.0.1", "6.6.6.6, 203.0.113.7, 10.0.0.2", proxies) == "203.0.113.7"
    assert client_address("192.0.2.1", "203.0.113.7", proxies) == "192.0.2.1"
    assert client_address("10.0.0.1", "not-an-ip", proxies) == "10.0.0.1"
    assert client_address(None, None, proxies) == "unknown"


def test_trusted_proxies_may_be_networks_of_either_family(monkeypatch):
    monkeypatch.setenv("HIFHIR_TRUSTED_PROXIES", " 10.20.0.0/16, 192.0.2.10 ,fd00:1::/64,")
    proxies = load_settings().trusted_proxies

    # a load balancer anywhere in its subnet hands on its client; the hop before it is a proxy of the pool too
    assert client_address("10.20.3.4", "203.0.113.7, 10.20.9.9", proxies) == "203.0.113.7"
    assert client_address("fd00:1::5", "2001:db8::7", proxies) == "2001:db8::7"
    assert client_address("192.0.2.10", "203.0.113.8", proxies) == "203.0.113.8"
    # a neighbour of the pool is not part of it
    assert client_address("10.21.0.1", "203.0.113.7", proxies) == "10.21.0.1"
    assert client_address("192.0.2.11", "203.0.113.7", proxies) == "192.0.2.11"
    assert "testclient" not in proxies and "" not in proxies and None not in proxies


@pytest.mark.parametrize("entry", ["proxy.internal", "10.0.0.0/33", "10.0.0.256", "*"])
def test_a_trusted_proxy_that_is_no_address_or_network_stops_the_server_from_starting(entry, monkeypatch, capsys):
    monkeypatch.setenv("HIFHIR_TRUSTED_PROXIES", f"10.0.0.1,{entry}")
    with pytest.raises(ConfigError, match="HIFHIR_TRUSTED_PROXIES"):
        load_settings()

    monkeypatch.setenv("HIFHIR_DATABASE_URL", "sqlite:///:memory:")
    assert cli.main(["migrate"]) == 2
    assert "HIFHIR_TRUSTED_PROXIES" in capsys.readouterr().err


def test_other_requests_leave_the_counters_alone(client, engine):
    client.get("/fhir/Patient", headers={"Authorization": "Bearer forged"})
    client.get("/fhir/metadata")

    with engine.connect() as conn:
        assert conn.execute(select(login_failure.c.key)).all() == []


def test_a_refused_locked_out_login_is_in_the_audit_trail(client):
    # Earlier tests' events may still reach the database (the trail is written asynchronously): look from now on.
    since = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for _ in range(USER_MAX):
        log_in(client, CLERK[0], "wrong")
    assert_throttled(log_in(client, CLERK[0], CLERK[1]))

    token = log_in(client, ADMIN[0], ADMIN[1]).json()["token"]
    found = client.get(f"/fhir/AuditEvent?type=110114&agent-name={CLERK[0]}&date=ge{since}",
                       headers={"Authorization": f"Bearer {token}"})
    assert found.status_code == 200, found.text
    events = [e["resource"] for e in found.json()["entry"]]
    assert len(events) == USER_MAX + 1
    assert events[0]["outcome"] == "4"  # newest first: the locked-out attempt
    assert "429" in events[0]["outcomeDesc"]
