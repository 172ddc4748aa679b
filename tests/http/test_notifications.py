"""Notifications (src/hifhir/notify/): matching in the writing transaction (create, update, delete; criteria with
parameters; no match, rollback → no row), delivery to a real HTTP receiver on 127.0.0.1 (empty or full payload,
stored headers, delivery id, verifiable signature), retries with `error` and recovery, the allow-list at delivery,
the owner's rights at delivery, `off` and `end`; and nothing lost when the server is killed with notifications
pending (a real `hifhir serve`). On SQLite and PostgreSQL, but the kill test: SQLite only (see its docstring)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Engine, delete, select, update

from hifhir import config
from hifhir.config import OutboxConfig
from hifhir.fhir.kind import WriteContext
from hifhir.fhir.registry import KINDS
from hifhir.notify import delivery as notify_delivery
from hifhir.notify import endpoints, matching, transport
from hifhir.outbox.worker import Worker
from hifhir.store.db import transaction
from hifhir.store.tables import outbox, role_right, subscription
from tests.builders import location, patient
from tests.builders_enrolment import family_contract, make_scheme
from tests.conftest import Api
from tests.http.test_subscriptions import PATIENT_READ, SECRET, SUBSCRIPTION_RIGHTS, subscription_resource, user_with
from tests.responses import created

S = 1_000_000
CONFIG = OutboxConfig(concurrency=1, lease_s=60.0, backoff_base_s=10.0, backoff_cap_s=600.0, jitter=0.0,
                      max_attempts=6)
FHIR_JSON = "application/fhir+json"


# --- the receiver -----------------------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Receiver:
    """An HTTP endpoint on 127.0.0.1: records every POST and answers with the next scripted status (200 when the
    script is empty)."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, got: Received) -> int:
        with self.lock:
            self.received.append(got)
            return self.script.pop(0) if self.script else 200


def serve(answer: Callable[[Received], int], tls: ssl.SSLContext | None = None) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status = answer(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(status)
            if status in (301, 302):
                self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}/hooks/fhir"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    server, rec.url = serve(rec.answer)
    yield rec
    server.shutdown()
    server.server_close()
    transport.close_all()


@pytest.fixture(autouse=True)
def local_receivers_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "NOTIFY", config.NotifyConfig(allow_http=frozenset({"127.0.0.1"}), max_failures=2,
                                                              timeout_s=5.0))
    matching.forget()
    notify_delivery.forget_principals()


@pytest.fixture
def worker(engine: Engine) -> Iterator[Worker]:
    w = Worker(engine, CONFIG, topics=["notify"])
    yield w
    w.close()


@pytest.fixture
def village(api: Api) -> str:
    region = created(api.post("Location", location("R1", "Ultha", "R")))["id"]
    district = created(api.post("Location", location("R1D1", "Rapta", "D", region)))["id"]
    ward = created(api.post("Location", location("R1D1W1", "Jamu", "W", district)))["id"]
    return str(created(api.post("Location", location("R1D1W1V1", "Jamula", "V", ward)))["id"])


def subscribe(api: Api, criteria: str, url: str, **kw: Any) -> str:
    kw.setdefault("headers", ["Authorization: Bearer token-of-the-subscriber", f"X-Hifhir-Secret: {SECRET}"])
    return str(created(api.post("Subscription", subscription_resource(criteria, url, **kw)))["id"])


def rows(engine: Engine) -> list[Any]:
    with transaction(engine, write=False) as conn:
        return conn.execute(select(outbox).where(outbox.c.topic == "notify").order_by(outbox.c.pk)).all()


def sub_row(engine: Engine, sub_id: str) -> Any:
    with transaction(engine, write=False) as conn:
        return conn.execute(select(subscription).where(subscription.c.id == sub_id)).one()


def events(rec: Receiver) -> list[tuple[str, str]]:
    return [(r.headers["x-hifhir-event"], r.headers["x-hifhir-resource"]) for r in rec.received]


def verify(got: Received, secret: str = SECRET) -> bool:
    """What a receiver does with the signature (notify/delivery.py)."""
    h = got.headers
    message = f"{h['x-hifhir-timestamp']}.{h['x-hifhir-delivery']}.{h['x-hifhir-resource']}.".encode() + got.body
    expected = "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, h["x-hifhir-signature"])


# --- matching ---------------------------------------------------------------------------------------------------


def test_create_update_and_delete_each_send_an_empty_signed_notification(api, engine, receiver, worker):
    sub_id = subscribe(api, "Location", receiver.url)
    loc = created(api.post("Location", location("R1", "Ultha", "R")))
    loc["name"] = "Ultha North"
    assert api.put(f"Location/{loc['id']}", loc).status_code == 200
    assert api.delete(f"Location/{loc['id']}").status_code == 204

    queued = rows(engine)
    assert [(r.subject, r.status) for r in queued] == [(sub_id, "pending")] * 3
    assert worker.drain().done == 3
    assert events(receiver) == [("create", f"Location/{loc['id']}/_history/1"),
                                ("update", f"Location/{loc['id']}/_history/2"),
                                ("delete", f"Location/{loc['id']}/_history/3")]
    for got, row in zip(receiver.received, queued, strict=True):
        assert got.path == "/hooks/fhir"
        assert got.body == b""  # the IG's empty notification: the subscriber reads the resource itself
        assert got.headers["content-type"] == FHIR_JSON
        assert got.headers["authorization"] == "Bearer token-of-the-subscriber"  # the stored header, sent
        assert "x-hifhir-secret" not in got.headers  # the signing key is never sent
        assert got.headers["x-hifhir-delivery"] == row.id  # the receiver's deduplication key
        assert got.headers["x-hifhir-subscription"] == sub_id
        assert abs(int(got.headers["x-hifhir-timestamp"]) - time.time()) < 60
        assert verify(got)
        assert not verify(got, "another-secret-0123456789")
    assert {r.status for r in rows(engine)} == {"done"}


def test_a_full_payload_is_the_version_that_was_written(api, engine, receiver, worker, village):
    subscribe(api, "Patient", receiver.url, payload=FHIR_JSON)
    pat = created(api.post("Patient", patient("100000001", "Doe", "Jane", village)))
    assert api.delete(f"Patient/{pat['id']}").status_code == 204
    worker.drain()
    first, gone = receiver.received
    assert orjson.loads(first.body) == api.get(f"Patient/{pat['id']}/_history/1").json() == pat
    assert first.headers["content-type"] == FHIR_JSON
    assert verify(first)
    assert (gone.headers["x-hifhir-event"], gone.body) == ("delete", b"")  # a delete has no resource to send


def test_criteria_parameters_select_the_changes_deletes_included(api, engine, receiver, worker, village):
    ward = api.get(f"Location/{village}").json()["partOf"]["reference"].split("/")[1]
    other_village = created(api.post("Location", location("R1D1W1V2", "Tamula", "V", ward)))["id"]
    subscribe(api, "Patient?address-city=Jamula&gender=female", receiver.url)
    here = created(api.post("Patient", patient("100000001", "Doe", "Jane", village)))
    man = created(api.post("Patient", patient("100000002", "Doe", "John", village, gender="male")))
    there = created(api.post("Patient", patient("100000003", "Roe", "Ann", other_village)))
    assert len(rows(engine)) == 1  # only Jane is a woman of Jamula
    there["name"][0]["given"] = ["Anne"]
    assert api.put(f"Patient/{there['id']}", there).status_code == 200
    for pid in (man["id"], there["id"], here["id"]):
        assert api.delete(f"Patient/{pid}").status_code == 204
    worker.drain()
    # A delete is matched against the row as it was: Jane's is notified, John's and Ann's are not.
    assert events(receiver) == [("create", f"Patient/{here['id']}/_history/1"),
                                ("delete", f"Patient/{here['id']}/_history/2")]


def test_a_contribution_invoice_is_notified_to_its_subscriber_only(api, engine, receiver, worker):
    scheme = make_scheme(api)
    contribution = subscribe(api, "Invoice?type=contribution", receiver.url)
    subscribe(api, "Invoice?type=contract", receiver.url)  # the formal sector's invoices
    contract = created(api.post("Contract", family_contract(scheme)))
    invoices = api.get("Invoice?type=contribution").json()["entry"]
    assert len(invoices) == 1 and contract["id"]
    [row] = [r for r in rows(engine) if orjson.loads(r.payload).get("type") == "Invoice"]
    assert row.subject == contribution
    worker.drain()
    assert events(receiver)[-1] == ("create", f"Invoice/{invoices[0]['resource']['id']}/_history/1")


def test_a_change_no_criteria_selects_enqueues_nothing(api, engine, receiver, worker):
    subscribe(api, "Location?type=V", receiver.url)
    subscribe(api, "Patient", receiver.url)
    created(api.post("Location", location("R1", "Ultha", "R")))  # a region, not a village
    assert rows(engine) == []
    assert worker.drain().ran == 0
    assert receiver.received == []


def test_a_change_that_rolls_back_leaves_no_notification(api, engine, receiver):
    subscribe(api, "Location", receiver.url)
    kind = KINDS["location"]
    with pytest.raises(RuntimeError), transaction(engine, write=True) as conn:
        ctx = WriteContext(conn, "Admin", new_id="rolled-back")
        ctx.mark(kind.name, kind.write(ctx, location("R1", "Ultha", "R") | {"id": "rolled-back"}, None))
        ctx.flush()
        assert len(conn.execute(select(outbox)).all()) == 1  # matched in the transaction…
        raise RuntimeError("the write fails after its flush")
    assert rows(engine) == []  # …and gone with it


def test_off_subscriptions_are_not_notified_and_an_ended_one_turns_off(api, engine, receiver, worker):
    off = created(api.post("Subscription", subscription_resource("Location", receiver.url, status="off")))
    ending = subscribe(api, "Location", receiver.url, end="2099-01-01T00:00:00Z")
    with transaction(engine, write=True) as conn:  # its end has come
        conn.execute(update(subscription).where(subscription.c.id == ending).values(end_instant=1))
    created(api.post("Location", location("R1", "Ultha", "R")))
    created(api.post("Location", location("R2", "Tahida", "R")))
    [expire] = rows(engine)  # no notification, one request to turn it off (once per process)
    assert (expire.subject, orjson.loads(expire.payload)) == (ending, {"expire": True})
    worker.drain()
    assert receiver.received == []
    ended = api.get(f"Subscription/{ending}").json()
    assert (ended["status"], ended["meta"]["versionId"]) == ("off", "2")
    assert sub_row(engine, off["id"]).status == "off"


def test_a_subscription_switched_off_meanwhile_gets_nothing(api, engine, receiver, worker):
    sub_id = subscribe(api, "Location", receiver.url)
    created(api.post("Location", location("R1", "Ultha", "R")))
    body = api.get(f"Subscription/{sub_id}").json()
    body["status"] = "off"
    assert api.put(f"Subscription/{sub_id}", body).status_code == 200
    assert worker.drain().done == 1
    assert receiver.received == []


# --- failures, error, recovery ------------------------------------------------------------------------------------


def test_failed_deliveries_are_retried_set_error_and_recover(api, engine, receiver, worker):
    sub_id = subscribe(api, "Location", receiver.url)
    receiver.script = [500, 503, 302]  # a redirect is not followed: a failure too
    loc = created(api.post("Location", location("R1", "Ultha", "R")))
    now = time.time_ns() // 1000

    assert worker.drain(now=now).retrying == 1
    first = sub_row(engine, sub_id)
    assert (first.status, first.failures, first.version_id) == ("active", 1, 1)
    [row] = rows(engine)
    assert (row.status, row.attempts, row.next_attempt) == ("pending", 1, now + 10 * S)  # the outbox backoff
    assert "HTTP 500" in row.last_error

    assert worker.drain(now=now + 10 * S).retrying == 1  # the second consecutive failure: error
    failing = api.get(f"Subscription/{sub_id}").json()
    assert failing["status"] == "error" and failing["meta"]["versionId"] == "2"
    assert "2 consecutive deliveries failed" in failing["error"] and "HTTP 503" in failing["error"]

    assert worker.drain(now=now + 30 * S).retrying == 1  # still in error: nothing changes, no new version
    assert (sub_row(engine, sub_id).failures, sub_row(engine, sub_id).version_id) == (3, 2)
    created(api.post("Location", location("R2", "Tahida", "R")))  # an error subscription is still matched

    assert worker.drain(now=now + 80 * S).done == 2  # the endpoint is back
    recovered = api.get(f"Subscription/{sub_id}").json()
    assert recovered["status"] == "active" and "error" not in recovered
    assert recovered["meta"]["versionId"] == "3"
    assert sub_row(engine, sub_id).failures == 0
    delivered = [r.headers["x-hifhir-delivery"] for r in receiver.received]
    assert delivered.count(row.id) == 4  # the same delivery id at every attempt
    assert events(receiver).count(("create", f"Location/{loc['id']}/_history/1")) == 4


def test_an_unreachable_endpoint_is_a_failure(api, engine, worker):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sub_id = subscribe(api, "Location", f"http://127.0.0.1:{port}/hook")
    created(api.post("Location", location("R1", "Ultha", "R")))
    assert worker.drain().retrying == 1
    assert "unreachable" in rows(engine)[0].last_error
    assert sub_row(engine, sub_id).failures == 1


def test_an_endpoint_the_allow_list_no_longer_admits_is_not_called(api, engine, receiver, worker, monkeypatch):
    sub_id = subscribe(api, "Location", receiver.url)
    created(api.post("Location", location("R1", "Ultha", "R")))
    monkeypatch.setattr(config, "NOTIFY", dataclasses.replace(config.NOTIFY, allow_http=frozenset()))
    assert worker.drain().retrying == 1
    assert receiver.received == []
    assert "endpoint refused" in rows(engine)[0].last_error
    assert sub_row(engine, sub_id).failures == 1


def test_a_name_that_resolves_to_an_internal_address_is_refused_at_delivery(api, engine, receiver, worker,
                                                                            monkeypatch):
    """DNS can change after the subscription was accepted: the name is resolved and checked at every new
    connection, and the connection goes to the address checked."""
    port = int(receiver.url.split(":")[2].split("/")[0])
    monkeypatch.setattr(config, "NOTIFY", dataclasses.replace(config.NOTIFY, allow_http=frozenset()))
    sub_id = subscribe(api, "Location", f"https://hooks.example.org:{port}/fhir")  # accepted: https, public name
    real = socket.getaddrinfo

    def rebound(host: Any, *args: Any, **kw: Any) -> Any:
        if host == "hooks.example.org":
            return real("127.0.0.1", *args, **kw)
        return real(host, *args, **kw)

    monkeypatch.setattr(endpoints.socket, "getaddrinfo", rebound)
    created(api.post("Location", location("R1", "Ultha", "R")))
    assert worker.drain().retrying == 1
    assert receiver.received == []
    assert "resolves to an internal address (127.0.0.1)" in rows(engine)[0].last_error
    assert sub_row(engine, sub_id).failures == 1


def _certificate(tmp: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}"], check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command for a test certificate")
def test_https_connects_to_the_checked_address_and_verifies_the_hosts_certificate(api, engine, worker, tmp_path,
                                                                                   monkeypatch):
    """The name is resolved once, checked, and the TLS connection made to that address with the URL's host name
    for SNI and certificate verification: a certificate for another name fails."""
    cert, key = _certificate(tmp_path, "hooks.example.org")
    wrong_cert, wrong_key = _certificate(tmp_path, "other.example.org")
    rec = Receiver()
    good_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    good_tls.load_cert_chain(cert, key)
    bad_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    bad_tls.load_cert_chain(wrong_cert, wrong_key)
    good, good_url = serve(rec.answer, good_tls)
    bad, bad_url = serve(rec.answer, bad_tls)
    client_tls = ssl.create_default_context(cafile=str(cert))
    client_tls.load_verify_locations(cafile=str(wrong_cert))
    monkeypatch.setattr(transport, "_TLS", client_tls)
    real = socket.getaddrinfo
    lookups: list[str] = []

    def hosts_file(host: Any, *args: Any, **kw: Any) -> Any:
        if host in ("hooks.example.org", "other.example.org"):
            lookups.append(host)
            return real("127.0.0.1", *args, **kw)
        return real(host, *args, **kw)

    monkeypatch.setattr(endpoints.socket, "getaddrinfo", hosts_file)
    # The receiver is on this machine: its name is on the allow-list (internal addresses allowed for it).
    monkeypatch.setattr(config, "NOTIFY", dataclasses.replace(config.NOTIFY, allow_http=frozenset(
        {"hooks.example.org"})))
    try:
        port = good_url.split(":")[2].split("/")[0]
        subscribe(api, "Location", f"https://hooks.example.org:{port}/hooks/fhir")
        bad_port = bad_url.split(":")[2].split("/")[0]
        sub_bad = subscribe(api, "Location", f"https://hooks.example.org:{bad_port}/hooks/fhir")
        created(api.post("Location", location("R1", "Ultha", "R")))
        ran = worker.drain()
        assert (ran.done, ran.retrying) == (1, 1)
        [got] = rec.received
        assert got.headers["host"] == f"hooks.example.org:{port}" and verify(got)
        failed = [r for r in rows(engine) if r.status == "pending"]
        assert [r.subject for r in failed] == [sub_bad]
        assert "CERTIFICATE_VERIFY_FAILED" in failed[0].last_error  # other.example.org's certificate
        assert lookups == ["hooks.example.org", "hooks.example.org"]
    finally:
        transport.close_all()
        for server in (good, bad):
            server.shutdown()
            server.server_close()


# --- the owner's rights -----------------------------------------------------------------------------------------


def test_nothing_is_sent_of_a_resource_the_owner_may_no_longer_read(api, app, engine, receiver, worker, village):
    subscriber = user_with(api, app, "subscriber", [*SUBSCRIPTION_RIGHTS, PATIENT_READ])
    subscribe(subscriber, "Patient", receiver.url)
    created(api.post("Patient", patient("100000001", "Doe", "Jane", village)))
    assert worker.drain().done == 1 and len(receiver.received) == 1

    with transaction(engine, write=True) as conn:  # the subscriber's patient right is withdrawn
        conn.execute(delete(role_right).where(role_right.c.right_code == PATIENT_READ))
    notify_delivery.forget_principals()
    created(api.post("Patient", patient("100000002", "Doe", "John", village)))
    assert worker.drain().done == 1  # done: dropped, not retried
    assert len(receiver.received) == 1


def test_a_subscription_whose_owner_is_gone_sends_nothing(api, app, engine, receiver, worker, village):
    subscriber = user_with(api, app, "subscriber", [*SUBSCRIPTION_RIGHTS, PATIENT_READ])
    subscribe(subscriber, "Patient", receiver.url)
    from hifhir.store.tables import app_user

    with transaction(engine, write=True) as conn:
        conn.execute(update(app_user).where(app_user.c.username == "subscriber").values(active=False))
    created(api.post("Patient", patient("100000001", "Doe", "Jane", village)))
    assert worker.drain().done == 1
    assert receiver.received == []


# --- nothing is lost: a real server killed with notifications pending ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    # Its own session, so that SIGKILL reaches the whole process group (uvicorn, its worker thread).
    return subprocess.Popen([sys.executable, "-m", "hifhir.cli", "serve", "--migrate"], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_notifications_pending_when_the_server_is_killed_are_delivered_after_restart(tmp_path, backend):
    """SQLite only: the server runs in a subprocess on a database of its own (a file in tmp), which the shared
    PostgreSQL cluster would need to create and drop for this one test; what is tested — the outbox rows commit with
    the changes and leases let a restarted worker take them — is the same code on both engines, and the lease and
    claim statements are tested on both in test_outbox.py."""
    settings, _engine = backend
    if not settings.is_sqlite:
        pytest.skip("the killed server runs on a SQLite file of its own")
    phase = {"n": 1}
    release = threading.Event()
    seen: list[tuple[int, str, str]] = []  # (phase, delivery id, resource) of every POST received
    guard = threading.Lock()

    def answer(got: Received) -> int:
        with guard:
            seen.append((phase["n"], got.headers["x-hifhir-delivery"], got.headers["x-hifhir-resource"]))
            slow = phase["n"] == 1
        if slow:  # a slow receiver: the deliveries are in flight when the server dies
            release.wait(60)
        return 200

    server, hook = serve(answer)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HIFHIR_DATABASE_URL": f"sqlite:///{tmp_path}/hifhir.db", "HIFHIR_PORT": str(port),
           "HIFHIR_HOST": "127.0.0.1", "HIFHIR_WORKERS": "1", "HIFHIR_JWT_SECRET": "k" * 40,
           "HIFHIR_NOTIFY_ALLOW_HTTP": "127.0.0.1", "HIFHIR_NOTIFY_TIMEOUT_S": "60", "HIFHIR_OUTBOX_LEASE_S": "2",
           "HIFHIR_OUTBOX_POLL_S": "0.1", "HIFHIR_OUTBOX_BACKOFF_BASE_S": "0.2", "HIFHIR_OUTBOX_BACKOFF_CAP_S": "1"}
    proc = _start_server(env, tmp_path)
    try:
        _wait_until(lambda: _up(base), 90, "the server")
        token = httpx.post(f"{base}/api/api_fhir_r4/login/", json={"username": "Admin", "password": "admin123"}
                           ).json()["token"]
        h = {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}
        resp = httpx.post(f"{base}/fhir/Subscription", headers=h,
                          content=orjson.dumps(subscription_resource("Location", hook)))
        assert resp.status_code == 201, resp.text
        committed = []
        for i in range(6):
            resp = httpx.post(f"{base}/fhir/Location", headers=h,
                              content=orjson.dumps(location(f"R{i}", f"Region {i}", "R")))
            assert resp.status_code == 201, resp.text  # committed
            committed.append(f"Location/{resp.json()['id']}/_history/1")
        _wait_until(lambda: len(seen) >= 1, 30, "a delivery in flight")
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its outbox worker, mid-delivery
        proc.wait(10)
        with guard:
            phase["n"] = 2
        release.set()

        proc = _start_server(env, tmp_path)
        _wait_until(lambda: _up(base), 90, "the restarted server")
        _wait_until(lambda: {r for p, _i, r in list(seen) if p == 2} >= set(committed), 60,
                    "every committed change delivered after the restart")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        release.set()
        server.shutdown()
        server.server_close()
    ids_by_resource: dict[str, set[str]] = {}
    for _phase, delivery_id, resource in seen:
        ids_by_resource.setdefault(resource, set()).add(delivery_id)
    assert set(ids_by_resource) == set(committed)
    # At least once, and a repeat carries the same delivery id: the receiver can drop it.
    assert all(len(ids) == 1 for ids in ids_by_resource.values()), ids_by_resource
    assert any(p == 1 for p, _i, _r in seen)  # some were in flight when the server died


def test_a_coverage_a_payment_activates_is_notified(api, engine, receiver, worker):
    from tests.builders_enrolment import days_ago
    from tests.http.test_payments import invoice_of, notice

    scheme = make_scheme(api)
    subscribe(api, "Coverage?status=active", receiver.url)
    contract = created(api.post("Contract", family_contract(scheme, "BC01", issued=days_ago(10))))
    assert rows(engine) == []  # an unpaid policy's Coverage is a draft
    created(api.post("PaymentNotice", notice(f"Invoice/{invoice_of(api, engine, contract['id'])}", 10000, "TX-N1")))
    worker.drain()
    assert events(receiver) == [("update", f"Coverage/{contract['id']}/_history/2")]
    assert api.get(f"Coverage/{contract['id']}").json()["status"] == "active"


def test_claim_responses_the_batch_run_completes_are_notified(api, engine, receiver, worker):
    from datetime import date

    from hifhir.domain.claims import batch
    from hifhir.store.tables import claim
    from tests.http.test_claim_batch import L, processed, stamp, world

    w = world(api, engine)
    pk = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 620)])
    subscribe(api, "ClaimResponse?outcome=complete", receiver.url)
    now = time.time_ns() // 1000
    with transaction(engine, write=True) as conn:
        run = batch.run(conn, year=2026, month=10, location_pk=None, today=date.today(), now=now)
        batch.record_claim_versions(conn, run.run_pk, now=now)
        claim_id = conn.execute(select(claim.c.id).where(claim.c.pk == pk)).scalar_one()
    worker.drain()
    assert events(receiver) == [("update", f"ClaimResponse/{claim_id}/_history/2")]
    assert all(verify(got) for got in receiver.received)
