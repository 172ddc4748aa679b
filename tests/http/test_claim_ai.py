"""Claim-AI (issue 5, src/hifhir/domain/claims/ai.py): with HIFHIR_CLAIM_AI_URL set, a claim that passes the checks
waits (checked) while the outbox POSTs it, with its contained resources, to an adjudicator — here a real HTTP server
the test starts on 127.0.0.1 — whose ClaimResponse then has the claim valuated, or its rejected lines marked −2 and
the claim flagged for review; an unavailable or confused adjudicator is retried later; on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select, update

from hifhir import config
from hifhir.config import OutboxConfig
from hifhir.domain.claims import IDLE, SELECTED, valuation
from hifhir.outbox.worker import Worker
from hifhir.store.db import transaction
from hifhir.store.tables import claim, outbox, resource_version
from tests.builders_medical import assert_valid
from tests.http.test_claims import (
    World,
    adjudications,
    answered,
    claim_of,
    claim_row,
    items_by_sequence,
    line_rows,
    read_response,
    totals,
)
from tests.http.test_claims import world as world  # the fixture, shared

CS = "https://openimis.github.io/openimis_fhir_r4_ig/CodeSystem/"
CONFIG = OutboxConfig(concurrency=1, lease_s=60.0, backoff_base_s=30.0, backoff_cap_s=600.0, jitter=0.0,
                      max_attempts=5)
Answer = tuple[int, Any]  # HTTP status, and a JSON body (or bytes sent as they are)


# --- the adjudicator ---------------------------------------------------------------------------------------------


def verdict(sent: dict[str, Any], rejected: tuple[int, ...] = (), *, form: str = "hifhir",
            outcome: str = "complete") -> dict[str, Any]:
    """The adjudicator's ClaimResponse to a Claim it received, rejecting the items of the given sequences.
    form: hifhir (reason −2 of claim-rejection-reasons), reference (the reference AI: category −2 "AI", reason
    1 rejected / 0 accepted), bundle (hifhir's form inside a Bundle beside another claim's answer)."""
    items = []
    for it in sent["item"]:
        seq, no = it["sequence"], it["sequence"] in rejected
        if form == "reference":
            adjudication = {"category": {"coding": [{"code": "-2"}], "text": "AI"},
                            "reason": {"coding": [{"code": "1" if no else "0"}]},
                            "amount": it["unitPrice"], "value": it["quantity"]["value"]}
        else:
            adjudication = {"category": {"coding": [{"system": f"{CS}claim-status", "code": "1" if no else "4"}]},
                            "reason": {"coding": [{"system": f"{CS}claim-rejection-reasons",
                                                   "code": "-2" if no else "0"}]}}
        items.append({"itemSequence": seq, "adjudication": [adjudication]})
    response = {"resourceType": "ClaimResponse", "status": "active", "use": "claim", "outcome": outcome,
                "request": {"reference": f"Claim/{sent['id']}"}, "item": items}
    if form != "bundle":
        return response
    other = {**response, "request": {"reference": "Claim/another-claim"}, "item": []}
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": other}, {"resource": response}]}


@dataclass
class Adjudicator:
    """A claim adjudicator on 127.0.0.1: records what it receives and answers with `respond(claim)`."""

    url: str = ""
    received: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    respond: Callable[[dict[str, Any]], Answer] = lambda sent: (200, verdict(sent))


@pytest.fixture
def adjudicator() -> Iterator[Adjudicator]:
    adj = Adjudicator()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            sent = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
            adj.received.append(({k.lower(): v for k, v in self.headers.items()}, sent))
            status, body = adj.respond(sent)
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    adj.url = f"http://127.0.0.1:{server.server_address[1]}/claim-ai/evaluate"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield adj
    server.shutdown()
    server.server_close()


@pytest.fixture
def ai_on(monkeypatch: pytest.MonkeyPatch, adjudicator: Adjudicator) -> Adjudicator:
    monkeypatch.setattr(config, "CLAIM_AI_URL", adjudicator.url)
    return adjudicator


@pytest.fixture
def worker(engine: Engine) -> Iterator[Worker]:
    w = Worker(engine, CONFIG, topics=["claim-ai"])
    yield w
    w.close()


def closed_port_url() -> str:
    """A 127.0.0.1 URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/claim-ai"


def outbox_rows(engine: Engine) -> list[Any]:
    with transaction(engine, write=False) as conn:
        return conn.execute(select(outbox).order_by(outbox.c.pk)).all()


def submit(api: Any, w: World, code: str = "C0001") -> str:
    """POST a claim of the world (a consultation at 40, two aspirins at 10); the claim id."""
    return str(answered(api.post("Claim", claim_of(w, code))).get("id"))


def response_history(engine: Engine, claim_id: str) -> list[tuple[int, str | None]]:
    with transaction(engine, write=False) as conn:
        return [tuple(r) for r in conn.execute(
            select(resource_version.c.version, resource_version.c.user_name).where(
                resource_version.c.res_type == "ClaimResponse", resource_version.c.res_id == claim_id)
            .order_by(resource_version.c.version))]


# --- waiting, sending ------------------------------------------------------------------------------------------


def test_with_the_ai_on_a_checked_claim_waits_for_the_adjudicator(api, engine, world, ai_on):
    body = answered(api.post("Claim", claim_of(world)))
    assert body["outcome"] == "partial"
    lines = items_by_sequence(body)
    assert adjudications(lines[1]) == [("2", "0", 40, 1), ("4", "0", 40, 1)]
    assert adjudications(lines[2]) == [("2", "0", 10, 2), ("4", "0", 10, 2)]
    row = claim_row(engine, body["id"])
    assert (row.status, row.review_status, row.valuated) == (4, IDLE, None)
    [queued] = outbox_rows(engine)
    assert (queued.topic, queued.subject, queued.status, queued.attempts) == ("claim-ai", body["id"], "pending", 0)
    assert ai_on.received == []  # nothing is sent from inside the request


def test_the_adjudicator_gets_the_stored_claim_with_its_contained_resources(api, engine, world, ai_on, worker):
    claim_id = submit(api, world)
    stored = api.get(f"Claim/{claim_id}").json()
    assert worker.drain().done == 1
    [(headers, sent)] = ai_on.received
    [row] = outbox_rows(engine)
    assert headers["x-request-id"] == headers["idempotency-key"] == row.id
    assert headers["content-type"] == "application/fhir+json"
    assert (sent["resourceType"], sent["id"], sent["meta"]["versionId"]) == ("Claim", claim_id, "1")
    assert sent["identifier"] == stored["identifier"] and sent["total"] == stored["total"]
    assert sent["insurance"] == stored["insurance"]  # the Coverage is not contained
    contained = {c["resourceType"]: c for c in sent["contained"]}
    assert sorted(contained) == ["ActivityDefinition", "Medication", "Organization", "Patient", "Practitioner"]
    assert (contained["Patient"]["id"], contained["Organization"]["id"], contained["Practitioner"]["id"]) == (
        world.patient["id"], world.places.facility, world.ca)
    assert sent["patient"] == {"reference": f"#{world.patient['id']}"}
    assert sent["provider"] == {"reference": f"#{world.places.facility}"}
    assert sent["enterer"] == {"reference": f"#{world.ca}"}
    assert [i["extension"][0]["valueReference"]["reference"] for i in sent["item"]] == [
        f"#{world.consult}", f"#{world.aspirin}"]
    codes = {c["resourceType"]: {i["value"] for i in c["identifier"]} for c in sent["contained"]}
    assert "100000001" in codes["Patient"] and "RAHOS001" in codes["Organization"] and "CA001" in codes[
        "Practitioner"] and "A1" in codes["ActivityDefinition"] and "0001" in codes["Medication"]
    assert all("meta" not in c for c in sent["contained"])
    assert_valid(sent)
    # The shape is the one POST Claim accepts (contained resources matched to the registers by identifier).
    again = {k: v for k, v in copy.deepcopy(sent).items() if k not in ("id", "meta")}
    again["meta"] = {"profile": sent["meta"]["profile"]}
    again["identifier"] = [i for i in again["identifier"] if i["type"]["coding"][0]["code"] == "Code"]
    again["identifier"][0]["value"] = "C0002"
    resent = answered(api.post("Claim", again))
    assert api.get(f"Claim/{resent['id']}").json()["patient"] == {"reference": f"Patient/{world.patient['id']}"}


# --- the answer --------------------------------------------------------------------------------------------------


def test_an_answer_accepting_every_line_has_the_claim_valuated(api, engine, world, ai_on, worker):
    claim_id = submit(api, world)
    assert worker.drain().done == 1
    row = claim_row(engine, claim_id)
    assert (row.status, row.review_status, row.valuated) == (16, IDLE, Decimal(60))
    body = read_response(api, claim_id)
    assert (body["outcome"], body["meta"]["versionId"]) == ("complete", "2")
    assert totals(body) == {"2": 60, "4": 60, "8": 60, "16": 60}
    assert adjudications(items_by_sequence(body)[2])[-1] == ("16", "0", 20, 2)
    assert response_history(engine, claim_id) == [(1, "Admin"), (2, "hifhir-claim-ai")]
    assert [r.status for r in outbox_rows(engine)] == ["done"]


@pytest.mark.parametrize("form", ["hifhir", "reference", "bundle"])
def test_a_line_the_ai_rejects_gets_reason_minus_2_and_the_claim_awaits_review(api, engine, world, ai_on, worker,
                                                                                form):
    ai_on.respond = lambda sent: (200, verdict(sent, rejected=(2,), form=form))
    claim_id = submit(api, world)
    assert worker.drain().done == 1
    row = claim_row(engine, claim_id)
    assert (row.status, row.review_status, row.valuated, row.approved) == (4, SELECTED, None, Decimal(40))
    consult, aspirin = line_rows(engine, claim_id)[::-1]  # items are stored first
    assert (aspirin.status, aspirin.rejection_reason, aspirin.qty_approved) == (2, -2, Decimal(0))
    assert (consult.status, consult.rejection_reason) == (1, 0)
    body = read_response(api, claim_id)
    assert (body["outcome"], body["meta"]["versionId"]) == ("partial", "2")
    lines = items_by_sequence(body)
    assert adjudications(lines[1]) == [("2", "0", 40, 1), ("4", "0", 40, 1)]
    assert adjudications(lines[2]) == [("1", "-2", 10, 2)]
    assert lines[2]["adjudication"][0]["reason"]["coding"][0]["display"] == "REJECTED BY AI EVALUATION"
    assert totals(body) == {"2": 60, "4": 40}


def test_an_answer_rejecting_every_line_leaves_them_all_to_the_medical_officer(api, engine, world, ai_on, worker):
    ai_on.respond = lambda sent: (200, verdict(sent, rejected=(1, 2)))
    claim_id = submit(api, world)
    worker.drain()
    row = claim_row(engine, claim_id)
    assert (row.status, row.review_status, row.approved) == (4, SELECTED, Decimal(0))
    assert [(r.status, r.rejection_reason) for r in line_rows(engine, claim_id)] == [(2, -2), (2, -2)]


# --- failures: retried later, nothing lost ----------------------------------------------------------------------


def _broken(case: str) -> Callable[[dict[str, Any]], Answer]:
    return {
        "503": lambda sent: (503, {"resourceType": "OperationOutcome"}),
        "not-json": lambda sent: (200, b"<html>maintenance</html>"),
        "not-a-claim-response": lambda sent: (200, {"resourceType": "OperationOutcome", "issue": []}),
        "another-claim": lambda sent: (200, {**verdict(sent), "request": {"reference": "Claim/another"}}),
        "not-evaluated-yet": lambda sent: (200, verdict(sent, outcome="queued")),
        "error": lambda sent: (200, verdict(sent, outcome="error")),
    }[case]


@pytest.mark.parametrize("case", ["refused", "503", "not-json", "not-a-claim-response", "another-claim",
                                  "not-evaluated-yet", "error"])
def test_an_unavailable_adjudicator_is_retried_later_and_nothing_is_lost(api, engine, world, ai_on, worker,
                                                                          monkeypatch, case):
    if case == "refused":
        monkeypatch.setattr(config, "CLAIM_AI_URL", closed_port_url())
    else:
        ai_on.respond = _broken(case)
    claim_id = submit(api, world)
    assert worker.drain().retrying == 1
    [row] = outbox_rows(engine)
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.last_error and row.last_error.startswith("RetryLater: adjudicator")
    assert row.next_attempt >= row.created + 30_000_000  # the backoff's first wait (30 s here)
    waiting = claim_row(engine, claim_id)
    assert (waiting.status, waiting.review_status) == (4, IDLE)
    assert read_response(api, claim_id)["meta"]["versionId"] == "1"

    # The adjudicator is back: not before the backoff is over, then the claim goes through.
    monkeypatch.setattr(config, "CLAIM_AI_URL", ai_on.url)
    ai_on.respond = lambda sent: (200, verdict(sent))
    assert worker.drain(now=row.next_attempt - 1).ran == 0
    assert worker.drain(now=row.next_attempt).done == 1
    assert claim_row(engine, claim_id).status == 16
    assert read_response(api, claim_id)["outcome"] == "complete"
    [done] = outbox_rows(engine)
    assert (done.status, done.attempts) == ("done", 2)


# --- answers that come too late or twice ---------------------------------------------------------------------------


def _process(engine: Engine, claim_id: str) -> None:
    with transaction(engine, write=True) as conn:
        pk = conn.execute(select(claim.c.pk).where(claim.c.id == claim_id)).scalar_one()
        valuation.process(conn, pk, today=date.today(), now=1)


def test_an_answer_for_a_claim_processed_meanwhile_is_ignored(api, engine, world, ai_on, worker):
    def process_then_reject(sent: dict[str, Any]) -> Answer:
        _process(engine, sent["id"])  # someone processed the claim while the adjudicator was thinking
        return 200, verdict(sent, rejected=(2,))

    ai_on.respond = process_then_reject
    claim_id = submit(api, world)
    assert worker.drain().done == 1
    row = claim_row(engine, claim_id)
    assert (row.status, row.review_status) == (16, IDLE)
    assert [(r.status, r.rejection_reason) for r in line_rows(engine, claim_id)] == [(1, 0), (1, 0)]
    assert response_history(engine, claim_id) == [(1, "Admin")]  # the AI's answer wrote nothing


def test_a_claim_no_longer_waiting_is_not_sent(api, engine, world, ai_on, worker):
    claim_id = submit(api, world)
    _process(engine, claim_id)
    assert worker.drain().done == 1
    assert ai_on.received == []


def test_a_repeated_delivery_changes_nothing(api, engine, world, ai_on, worker):
    """At least once: the worker applied the answer, then died before recording the row done; the row runs again."""
    ai_on.respond = lambda sent: (200, verdict(sent, rejected=(2,)))
    claim_id = submit(api, world)
    worker.drain()
    with transaction(engine, write=True) as conn:
        conn.execute(update(outbox).values(status="pending", locked_until=0, next_attempt=0))
    assert worker.drain().done == 1
    assert len(ai_on.received) == 1  # the claim no longer waits: not sent again
    assert claim_row(engine, claim_id).review_status == SELECTED
    assert response_history(engine, claim_id) == [(1, "Admin"), (2, "hifhir-claim-ai")]


# --- when the AI is not asked -----------------------------------------------------------------------------------


def test_with_the_ai_off_claims_are_processed_at_once(api, engine, world, adjudicator):
    assert config.CLAIM_AI_URL is None
    body = answered(api.post("Claim", claim_of(world)))
    assert body["outcome"] == "complete"
    assert claim_row(engine, body["id"]).status == 16
    assert outbox_rows(engine) == []
    assert adjudicator.received == []


def test_a_claim_the_checks_reject_is_not_sent(api, engine, world, ai_on):
    body = answered(api.post("Claim", claim_of(world, diagnoses=["ZZZ9"])))
    assert claim_row(engine, body["id"]).rejection_reason == 8
    assert outbox_rows(engine) == []


def test_a_claim_held_for_review_is_not_sent(api, engine, world, ai_on, monkeypatch):
    monkeypatch.setattr(config, "REVIEW_SELECTION", "all:0")
    body = answered(api.post("Claim", claim_of(world)))
    assert claim_row(engine, body["id"]).review_status == SELECTED
    assert outbox_rows(engine) == []
