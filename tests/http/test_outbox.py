"""The outbox (src/hifhir/outbox): rows written in the caller's transaction, claimed by workers, run outside any
transaction, retried with exponential backoff, failed after the last attempt, taken again when a worker dies
holding them (lease), never run by two workers at once; the `hifhir worker` command and the served app's worker;
on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select
from starlette.testclient import TestClient

from hifhir import cli
from hifhir.api.app import HifhirApp
from hifhir.config import OutboxConfig, Settings, outbox_config_from_env
from hifhir.outbox import Delivery, PermanentFailure, RetryLater, enqueue, register, store
from hifhir.outbox.worker import Worker
from hifhir.store.db import transaction
from hifhir.store.tables import outbox

S = 1_000_000  # µs
T0 = 1_900_000_000 * S  # the tests' clock: the workers run with `now` given, so backoff is checked exactly
CONFIG = OutboxConfig(poll_s=0.02, batch=8, concurrency=1, lease_s=60.0, backoff_base_s=10.0, backoff_cap_s=25.0,
                      jitter=0.0, max_attempts=3)


# --- handlers the tests register (each topic its own, so the tests' workers only take their rows) ----------------


class Recorder:
    """What a test topic's handler saw, and what it does next: `script` = outcomes for the next calls (None =
    return, an exception = raise it); beyond the script, return."""

    def __init__(self) -> None:
        self.calls: list[Delivery] = []
        self.script: list[BaseException | None] = []
        self.delay_s = 0.0
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.overlaps: list[str] = []

    def __call__(self, delivery: Delivery) -> None:
        with self.lock:
            if delivery.id in self.running:
                self.overlaps.append(delivery.id)
            self.running.add(delivery.id)
            self.calls.append(delivery)
            outcome = self.script.pop(0) if self.script else None
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            if outcome is not None:
                raise outcome
        finally:
            with self.lock:
                self.running.discard(delivery.id)


RECORDERS: dict[str, Recorder] = {}


def _forward(topic: str) -> Any:
    return lambda delivery: RECORDERS[topic](delivery)


for _topic in ("test-a", "test-b"):
    register(_topic, _forward(_topic))


@pytest.fixture
def rec(engine: Engine) -> Iterator[Recorder]:
    """The handler of topic test-a, on an empty outbox."""
    with transaction(engine, write=True) as conn:
        conn.execute(delete(outbox))
    RECORDERS["test-a"] = RECORDERS["test-b"] = recorder = Recorder()
    yield recorder
    RECORDERS.clear()


@pytest.fixture
def worker(engine: Engine) -> Iterator[Worker]:
    w = Worker(engine, CONFIG, topics=["test-a"])
    yield w
    w.close()


def put(engine: Engine, subject: str = "s1", payload: Any = None, topic: str = "test-a", now: int = T0) -> str:
    with transaction(engine, write=True) as conn:
        return enqueue(conn, topic, subject, payload if payload is not None else {"n": 1}, now=now)


def row(engine: Engine, row_id: str) -> Any:
    with transaction(engine, write=False) as conn:
        return conn.execute(select(outbox).where(outbox.c.id == row_id)).one()


def all_rows(engine: Engine) -> list[Any]:
    with transaction(engine, write=False) as conn:
        return conn.execute(select(outbox).order_by(outbox.c.pk)).all()


# --- enqueue and deliver ---------------------------------------------------------------------------------------


def test_an_enqueued_row_is_run_once_and_done(engine, rec, worker):
    row_id = put(engine, "Claim/1", {"claim_pk": 7, "url": "http://127.0.0.1:1/"})
    pending = row(engine, row_id)
    assert (pending.status, pending.attempts, pending.topic, pending.subject) == ("pending", 0, "test-a", "Claim/1")

    ran = worker.drain(now=T0)
    assert (ran.done, ran.retrying, ran.failed) == (1, 0, 0)
    [call] = rec.calls
    assert (call.id, call.topic, call.subject, call.payload, call.attempt, call.created) == (
        row_id, "test-a", "Claim/1", {"claim_pk": 7, "url": "http://127.0.0.1:1/"}, 1, T0)
    assert call.engine is engine
    done = row(engine, row_id)
    assert (done.status, done.attempts, done.locked_until, done.finished, done.last_error) == ("done", 1, 0, T0, None)
    assert worker.drain(now=T0 + 3600 * S).ran == 0
    assert len(rec.calls) == 1


def test_nothing_is_enqueued_when_the_surrounding_transaction_rolls_back(engine, rec, worker):
    with pytest.raises(RuntimeError), transaction(engine, write=True) as conn:
        enqueue(conn, "test-a", "s1", {"n": 1})
        raise RuntimeError("the change that needed the delivery failed")
    assert all_rows(engine) == []
    assert worker.drain().ran == 0
    assert rec.calls == []


def test_rows_are_run_oldest_due_first(engine, rec, worker):
    late = put(engine, "late", now=T0 + 5)
    early = put(engine, "early", now=T0)
    worker.drain(now=T0 + 10)
    assert [c.id for c in rec.calls] == [early, late]


def test_a_worker_records_a_batch_and_claims_the_next_in_one_write_transaction(engine, rec, worker, monkeypatch):
    """While rows keep coming each batch costs one write transaction (on SQLite one turn at the writer lock, which
    the writes that enqueue the rows wait for), not one to claim and one to record."""
    from hifhir.outbox import worker as worker_module

    ids = [put(engine, f"s{i}") for i in range(2 * CONFIG.batch + 1)]  # three batches
    writes: list[bool] = []
    real = worker_module.transaction

    def counted(engine: Engine, *, write: bool) -> Any:
        writes.append(write)
        return real(engine, write=write)

    monkeypatch.setattr(worker_module, "transaction", counted)

    assert worker.drain(now=T0).done == len(ids)

    assert [c.subject for c in rec.calls] == [f"s{i}" for i in range(len(ids))]
    # claim the first; record each batch with the next claim (the third's finds nothing)
    assert writes == [True, True, True, True]
    assert {r.status for r in all_rows(engine)} == {"done"}


def test_a_row_is_not_run_before_it_is_due(engine, rec, worker):
    with transaction(engine, write=True) as conn:
        row_id = enqueue(conn, "test-a", "s1", now=T0, delay_s=30)
    assert worker.drain(now=T0 + 29 * S).ran == 0
    assert worker.drain(now=T0 + 30 * S).done == 1
    assert rec.calls[0].id == row_id and rec.calls[0].payload is None


# --- retries ---------------------------------------------------------------------------------------------------


def test_a_failing_handler_is_retried_with_exponential_backoff(engine, rec, worker):
    rec.script = [RetryLater("receiver down"), ValueError("bad answer")]
    row_id = put(engine)

    assert worker.drain(now=T0).retrying == 1
    first = row(engine, row_id)
    assert (first.status, first.attempts, first.next_attempt, first.locked_until, first.last_error) == (
        "pending", 1, T0 + 10 * S, 0, "RetryLater: receiver down")
    assert worker.drain(now=T0 + 10 * S - 1).ran == 0  # not due yet

    assert worker.drain(now=T0 + 10 * S).retrying == 1
    second = row(engine, row_id)
    assert (second.attempts, second.next_attempt, second.last_error) == (2, T0 + 30 * S, "ValueError: bad answer")
    assert worker.drain(now=T0 + 30 * S - 1).ran == 0

    assert worker.drain(now=T0 + 30 * S).done == 1
    third = row(engine, row_id)
    assert (third.status, third.attempts, third.finished) == ("done", 3, T0 + 30 * S)
    assert [c.attempt for c in rec.calls] == [1, 2, 3]
    assert {c.id for c in rec.calls} == {row_id}  # the same id at every attempt: the receiver's dedup key


def test_the_backoff_is_capped_and_jittered():
    config = dataclasses.replace(CONFIG, backoff_base_s=10.0, backoff_cap_s=25.0, jitter=0.0)
    assert [store.backoff_us(n, config) // S for n in (1, 2, 3, 4, 10)] == [10, 20, 25, 25, 25]
    jittered = dataclasses.replace(config, jitter=0.1)
    waits = {store.backoff_us(2, jittered) for _ in range(50)}
    assert len(waits) > 1 and all(18 * S <= w <= 22 * S for w in waits)


def test_after_the_last_attempt_the_row_stays_failed_with_its_last_error(engine, rec, worker):
    rec.script = [RetryLater(f"down {n}") for n in (1, 2, 3, 4)]
    row_id = put(engine)
    now = T0
    for _ in range(CONFIG.max_attempts):
        worker.drain(now=now)
        now = row(engine, row_id).next_attempt
    failed = row(engine, row_id)
    assert (failed.status, failed.attempts, failed.last_error) == ("failed", 3, "RetryLater: down 3")
    assert failed.finished is not None
    assert worker.drain(now=T0 + 10**6 * S).ran == 0
    assert len(rec.calls) == 3


def test_a_permanent_failure_is_not_retried(engine, rec, worker):
    rec.script = [PermanentFailure("subject gone")]
    row_id = put(engine)
    assert worker.drain(now=T0).failed == 1
    failed = row(engine, row_id)
    assert (failed.status, failed.attempts, failed.last_error) == ("failed", 1, "PermanentFailure: subject gone")


def test_failed_rows_can_be_requeued(engine, rec, worker):
    rec.script = [PermanentFailure("receiver refuses")]
    row_id = put(engine)
    worker.drain(now=T0)
    with transaction(engine, write=True) as conn:
        assert store.requeue_failed(conn, "test-a", now=T0 + S) == 1
    requeued = row(engine, row_id)
    assert (requeued.status, requeued.attempts, requeued.next_attempt) == ("pending", 0, T0 + S)
    assert worker.drain(now=T0 + S).done == 1
    assert row(engine, row_id).status == "done"


# --- leases: a worker killed while holding rows -----------------------------------------------------------------


def claim_and_die(engine: Engine, now: int, topics: tuple[str, ...] = ("test-a",)) -> list[store.Claimed]:
    """What a worker killed (SIGKILL) between its claim and its outcome leaves: rows leased, never finished."""
    with transaction(engine, write=True) as conn:
        return store.claim(conn, topics, now=now, lease_s=CONFIG.lease_s, limit=10)


def test_a_row_whose_lease_expired_is_taken_again(engine, rec, worker):
    row_id = put(engine)
    [held] = claim_and_die(engine, T0)
    assert (held.id, held.attempt) == (row_id, 1)
    leased = row(engine, row_id)
    assert (leased.status, leased.attempts, leased.locked_until) == ("pending", 1, T0 + 60 * S)

    assert worker.drain(now=T0 + 60 * S - 1).ran == 0  # still leased: the worker might be alive
    assert worker.drain(now=T0 + 60 * S).done == 1  # at least once
    assert [c.attempt for c in rec.calls] == [2]
    assert row(engine, row_id).status == "done"


def test_a_row_whose_last_attempt_never_finished_fails_without_running_again(engine, rec, worker):
    row_id = put(engine)
    now = T0
    for _ in range(CONFIG.max_attempts):
        claim_and_die(engine, now)
        now += int(CONFIG.lease_s * S)
    assert worker.drain(now=now).failed == 1
    failed = row(engine, row_id)
    assert failed.status == "failed" and failed.attempts == 4
    assert failed.last_error.startswith("gave up: attempt 3 of 3 never finished")
    assert rec.calls == []


def test_a_worker_whose_lease_was_taken_over_cannot_record_its_outcome(engine, rec):
    row_id = put(engine)
    [stale] = claim_and_die(engine, T0)
    [fresh] = claim_and_die(engine, T0 + 60 * S)
    assert (stale.attempt, fresh.attempt) == (1, 2)
    with transaction(engine, write=True) as conn:
        assert store.record(conn, [store.Outcome(stale, "late failure")], CONFIG, now=T0 + 61 * S) == ["lost"]
        assert store.record(conn, [store.Outcome(fresh)], CONFIG, now=T0 + 61 * S) == ["done"]
    done = row(engine, row_id)
    assert (done.status, done.attempts, done.last_error) == ("done", 2, None)


def test_two_workers_never_run_the_same_row_at_once(engine, rec):
    """Two workers (threads, each with its own handler threads) drain 40 rows side by side: PostgreSQL hands them
    disjoint rows (SKIP LOCKED), SQLite serialises their claims (writer lock); every row runs exactly once."""
    rec.delay_s = 0.005
    ids = [put(engine, f"s{n}") for n in range(40)]
    config = dataclasses.replace(CONFIG, batch=4, concurrency=2)
    workers = [Worker(engine, config, topics=["test-a"]) for _ in range(2)]
    start = threading.Barrier(2)
    drained: list[Any] = []

    def run(w: Worker) -> None:
        start.wait()
        drained.append(w.drain(now=T0))

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for w in workers:
        w.close()
    assert rec.overlaps == []
    assert Counter(c.id for c in rec.calls) == Counter(ids)  # each exactly once
    assert sum(d.done for d in drained) == 40
    assert all(d.done > 0 for d in drained), "both workers took a share"
    assert {r.status for r in all_rows(engine)} == {"done"}


def test_a_worker_takes_only_the_topics_it_knows(engine, rec):
    put(engine, topic="test-b")
    with transaction(engine, write=True) as conn:
        enqueue(conn, "from-a-newer-release", "s1", now=T0)
    only_a = Worker(engine, CONFIG, topics=["test-a"])
    try:
        assert only_a.drain(now=T0).ran == 0
    finally:
        only_a.close()
    every = Worker(engine, CONFIG)
    try:
        assert every.drain(now=T0).done == 1  # test-b; the unknown topic waits for a worker that knows it
    finally:
        every.close()
    assert sorted((r.topic, r.status) for r in all_rows(engine)) == [
        ("from-a-newer-release", "pending"), ("test-b", "done")]


# --- the loop: wake-up, stop, the command, the served app -------------------------------------------------------


def test_a_commit_that_enqueued_wakes_the_worker_of_its_process(engine, rec):
    """The loop polls only every 30 s here, yet a row enqueued by this process is run within a second."""
    loop = Worker(engine, dataclasses.replace(CONFIG, poll_s=30.0), topics=["test-a"])
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        time.sleep(0.2)  # the loop is now idle, waiting
        with transaction(engine, write=True) as conn:
            row_id = enqueue(conn, "test-a", "s1")
        deadline = time.monotonic() + 5
        while not rec.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [c.id for c in rec.calls] == [row_id]
    finally:
        loop.stop()
        thread.join(10)
        loop.close()
    assert not thread.is_alive()
    assert row(engine, row_id).status == "done"


def test_while_rows_keep_coming_a_worker_takes_them_a_few_at_a_time(engine, rec, monkeypatch):
    """A worker's write transactions (each records the last batch's outcomes and claims the rows due since; on
    SQLite a turn at the writer lock the requests wait for) are `batch_interval_s` apart: rows enqueued one by one
    meanwhile are claimed together. An idle worker claims a new row at once."""
    from hifhir.outbox import worker as worker_module

    interval = 0.5
    turns: list[float] = []
    real = worker_module.transaction

    def counted(engine: Engine, *, write: bool) -> Any:
        if write:
            turns.append(time.monotonic())
        return real(engine, write=write)

    def enqueue_one(subject: str) -> None:
        with transaction(engine, write=True) as conn:
            enqueue(conn, "test-a", subject)

    def wait_for_calls(count: int) -> float:
        deadline = time.monotonic() + 10
        while len(rec.calls) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return time.monotonic()

    monkeypatch.setattr(worker_module, "transaction", counted)
    loop = Worker(engine, dataclasses.replace(CONFIG, poll_s=30.0, batch_interval_s=interval), topics=["test-a"])
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        time.sleep(0.2)  # idle, waiting
        asked = time.monotonic()
        enqueue_one("s0")
        first = wait_for_calls(1)
        for i in range(1, 5):
            enqueue_one(f"s{i}")
        wait_for_calls(5)
        taken = [t for t in turns if t >= asked]  # not the purge of delivered rows the loop starts with
    finally:
        loop.stop()
        thread.join(10)
        loop.close()

    assert first - asked < interval / 2  # claimed at once
    assert [c.subject for c in rec.calls] == ["s0", "s1", "s2", "s3", "s4"]
    assert len(taken) == 2  # s0 claimed; then s0 recorded and s1…s4 claimed together
    assert taken[1] - taken[0] >= interval - 0.01
    assert {r.status for r in all_rows(engine)} == {"done"}


def test_a_stop_asked_by_a_signal_while_the_loop_holds_its_wake_up_lock_does_not_wait_for_it(engine):
    """A signal handler runs in the loop's own thread, between two bytecodes: perhaps while the loop holds the lock
    of the event it waits on (in `Event.wait` or `clear`). The stop it asks for must not wait for that lock, which
    the interrupted thread cannot give back: `hifhir worker` once hung on SIGTERM that way."""
    loop = Worker(engine, CONFIG, topics=["test-a"])
    try:
        with loop._wake._cond:  # the state the interrupted loop is in
            asked = threading.Thread(target=loop.stop_from_signal)
            asked.start()
            asked.join(2)
            assert not asked.is_alive()  # the handler returned while the lock was still held
        assert loop._stop.wait(2) and loop._wake.wait(2)  # and the loop, once it let go, is told to stop
    finally:
        loop.close()


def test_hifhir_worker_once_delivers_what_is_due(engine, rec, command_env, capsys):
    ids = [put(engine, "s1", now=0), put(engine, "s2", now=0)]
    assert cli.main(["worker", "--once", "--topic", "test-a"]) == 0
    assert "2 done" in capsys.readouterr().out
    assert [c.id for c in rec.calls] == ids
    assert cli.main(["worker", "--status"]) == 0
    assert "2 done" in capsys.readouterr().out


def test_hifhir_worker_stops_cleanly_on_sigterm(backend, rec):
    settings, _ = backend
    env = {**os.environ, "HIFHIR_DATABASE_URL": settings.database_url, "HIFHIR_JWT_SECRET": "x" * 40,
           "HIFHIR_OUTBOX_POLL_S": "0.05"}
    proc = subprocess.Popen([sys.executable, "-m", "hifhir.cli", "worker"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        lines: list[str] = []
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "outbox worker started" in line or not line:
                break
        assert any("outbox worker started" in line for line in lines), lines
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "outbox worker stopped" in out


def test_the_served_app_runs_a_worker_in_each_process(backend, rec):
    settings, engine = backend
    served = dataclasses.replace(settings, outbox=dataclasses.replace(CONFIG, in_app=True, poll_s=0.05))
    assert Settings().outbox.in_app is False  # tests (and embedders) drive the outbox themselves
    assert outbox_config_from_env({}).in_app is True  # `hifhir serve` runs one unless HIFHIR_OUTBOX_IN_APP=0
    assert outbox_config_from_env({"HIFHIR_OUTBOX_IN_APP": "0"}).in_app is False
    app = HifhirApp(served, engine)
    with TestClient(app):
        assert app._outbox is not None and app._outbox.thread.is_alive()
        with transaction(engine, write=True) as conn:
            row_id = enqueue(conn, "test-a", "s1")
        deadline = time.monotonic() + 10
        while row(engine, row_id).status != "done" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert row(engine, row_id).status == "done"
        thread = app._outbox.thread
    assert app._outbox is None and not thread.is_alive()  # stopped with the app
