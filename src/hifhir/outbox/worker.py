"""The outbox worker: claim due rows, run their handlers outside any transaction, record the outcomes.

One loop per process: `hifhir worker` runs it in the foreground, and every process of `hifhir serve` runs one in a
thread (`start_background`), so that `make run` delivers without a second command. Any number of loops, in any
number of processes, share the work (outbox/store.py: leases, SKIP LOCKED on PostgreSQL, the writer lock on SQLite).

Wake-up: an idle loop looks for due rows every `poll_s` (one unlocked index probe, nothing written), and is woken
at once when a transaction of its own process that enqueued a row has committed (`store.db.after_commit`), so a
delivery enqueued by a request of this process starts within milliseconds; rows enqueued by other processes wait
at most one poll interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine

from hifhir.config import OutboxConfig
from hifhir.outbox import store
from hifhir.outbox.registry import Delivery, PermanentFailure, RetryLater, handler_for, load_handlers
from hifhir.store.db import connection, hold, reader, release, transaction

log = logging.getLogger("hifhir.outbox")

PURGE_INTERVAL_S = 3600.0
ERROR_PAUSE_S = 2.0  # after a failure of the loop itself (database unreachable), before trying again


@dataclass(slots=True)
class Drained:
    """What a run of the worker did, by outcome."""

    done: int = 0
    retrying: int = 0
    failed: int = 0
    lost: int = 0  # finished after their lease was taken over
    errors: list[str] = field(default_factory=list)

    @property
    def ran(self) -> int:
        return self.done + self.retrying + self.failed + self.lost

    def add(self, statuses: list[str], errors: list[str]) -> None:
        for status in statuses:
            if status == store.DONE:
                self.done += 1
            elif status == store.PENDING:
                self.retrying += 1
            elif status == store.FAILED:
                self.failed += 1
            else:
                self.lost += 1
        self.errors.extend(errors)

    def merge(self, other: Drained) -> None:
        self.done += other.done
        self.retrying += other.retrying
        self.failed += other.failed
        self.lost += other.lost
        self.errors.extend(other.errors)


class Worker:
    """Claims and runs outbox rows on one engine. `topics` limits it to some topics (default: every registered
    one). Not thread-safe itself: one thread runs `run_forever` (or `drain`), others may only call `stop`."""

    def __init__(self, engine: Engine, config: OutboxConfig, *, topics: Collection[str] | None = None) -> None:
        load_handlers()
        self.engine = engine
        self.reader = reader(engine)
        self.config = config
        self._only = frozenset(topics) if topics is not None else None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="hifhir-outbox") \
            if config.concurrency > 1 else None
        self._last_purge = 0.0
        self._last_turn = 0.0  # time.monotonic() of its last write transaction (`_pace`)
        store.subscribe(engine, self._wake)

    def topics(self) -> list[str]:
        from hifhir.outbox.registry import topics

        return [t for t in topics() if self._only is None or t in self._only]

    # --- one batch ---------------------------------------------------------------------------------------------

    def _claim(self, now: int | None) -> list[store.Claimed]:
        """The due rows this worker leases (none when nothing is due: an unlocked probe first). `now` (µs) replaces
        the clock for the scheduling (tests travel in time with it); handlers see the real clock."""
        topics = self.topics()
        at = now if now is not None else store.now_us()
        if not topics:
            return []
        with connection(self.reader) as conn:
            if not store.any_due(conn, topics, at):
                return []
        self._last_turn = time.monotonic()
        with transaction(self.engine, write=True) as conn:
            return store.claim(conn, topics, now=at, lease_s=self.config.lease_s, limit=self.config.batch)

    def _finish(self, outcomes: list[store.Outcome], result: Drained, now: int | None, *,
                claim_next: bool) -> list[store.Claimed]:
        """Record the outcomes and, with `claim_next`, claim the rows due by then in the same write transaction:
        while notifications keep coming, each batch then costs one turn at SQLite's writer lock instead of two
        (the writes that enqueue them queue there too)."""
        finished = now if now is not None else store.now_us()
        topics = self.topics() if claim_next else []
        self._last_turn = time.monotonic()
        with transaction(self.engine, write=True) as conn:
            statuses = store.record(conn, outcomes, self.config, now=finished)
            following = store.claim(conn, topics, now=finished, lease_s=self.config.lease_s,
                                    limit=self.config.batch) if topics else []
        result.add(statuses, [o.error for o in outcomes if o.error is not None])
        for o, status in zip(outcomes, statuses, strict=True):
            if o.error is not None:
                level = logging.ERROR if status == store.FAILED else logging.WARNING
                log.log(level, "outbox %s %s (subject %s) attempt %d %s: %s", o.row.topic, o.row.id, o.row.subject,
                        o.row.attempt, "failed for good" if status == store.FAILED else "failed", o.error)
        return following

    def _run(self, rows: list[store.Claimed]) -> list[store.Outcome]:
        if self._pool is None or len(rows) == 1:
            return [self._attempt(row) for row in rows]
        return list(self._pool.map(self._attempt, rows))

    def _attempt(self, row: store.Claimed) -> store.Outcome:
        if row.attempt > self.config.max_attempts:
            # Only a row whose last allowed attempt never finished (its worker was killed) gets here.
            return store.Outcome(row, f"gave up: attempt {row.attempt - 1} of {self.config.max_attempts} never "
                                      "finished (worker stopped or lease expired)", permanent=True)
        handler = handler_for(row.topic)
        if handler is None:  # unregistered after the claim: cannot happen with the module-level registry
            return store.Outcome(row, f"no handler for topic {row.topic}")
        delivery = Delivery(row.id, row.topic, row.subject, row.payload, row.attempt, row.created, self.engine)
        try:
            handler(delivery)
        except PermanentFailure as exc:
            return store.Outcome(row, _describe(exc), permanent=True)
        except RetryLater as exc:
            return store.Outcome(row, _describe(exc))
        except Exception as exc:
            log.warning("outbox %s %s: handler raised unexpectedly", row.topic, row.id, exc_info=True)
            return store.Outcome(row, _describe(exc))
        return store.Outcome(row)

    # --- loops -----------------------------------------------------------------------------------------------

    def drain(self, now: int | None = None) -> Drained:
        """Run batches until nothing is due (rows that fail are rescheduled after `now`, so this ends); used by
        `hifhir worker --once` and by tests."""
        total = Drained()
        rows = self._claim(now)
        while rows:
            rows = self._finish(self._run(rows), total, now, claim_next=True)
        return total

    def run_forever(self) -> None:
        """The loop, until `stop()`: the batch in hand is finished and recorded before it returns, and a batch
        claimed with its outcomes is run too (its rows would otherwise wait for their lease to run out)."""
        log.info("outbox worker started (topics: %s)", ", ".join(self.topics()) or "none")
        hold(self.engine, self.reader)  # one batch after another: this thread keeps its connections
        try:
            self._loop()
        finally:
            release(self.engine, self.reader)
        log.info("outbox worker stopped")

    def _loop(self) -> None:
        rows: list[store.Claimed] = []
        while rows or not self._stop.is_set():
            self._wake.clear()
            try:
                if not rows:
                    self._pace()
                    rows = self._claim(None)
                if not rows:
                    self._purge()
                    self._wake.wait(self.config.poll_s)
                    continue
                outcomes = self._run(rows)
                self._pace()
                rows = self._finish(outcomes, Drained(), None, claim_next=not self._stop.is_set())
                self._purge()
            except Exception:
                log.exception("outbox worker: batch failed; retrying in %.0f s", ERROR_PAUSE_S)
                rows = []  # unrecorded or unrun: their leases run out and they are claimed again
                self._stop.wait(ERROR_PAUSE_S)

    def _pace(self) -> None:
        """Wait until `batch_interval_s` after the previous write transaction of this worker (not at all when it is
        older, or when stopping): while rows keep coming, each turn claims those due meanwhile."""
        wait = self._last_turn + self.config.batch_interval_s - time.monotonic()
        if wait > 0:
            self._stop.wait(wait)

    def _purge(self) -> None:
        clock = time.monotonic()
        if clock - self._last_purge < PURGE_INTERVAL_S:
            return
        self._last_purge = clock
        with transaction(self.engine, write=True) as conn:
            purged = store.purge_done(conn, older_than=store.now_us() - int(self.config.keep_done_s * 1_000_000))
        if purged:
            log.info("outbox: %d delivered rows purged", purged)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def stop_from_signal(self) -> None:
        """`stop`, for a signal handler: Python runs the handler in the main thread between two bytecodes, which may
        be while that thread, in `run_forever`, holds the lock of the event `stop` sets; setting it there would wait
        for the thread itself, forever. Another thread sets it once the loop lets go of the lock."""
        threading.Thread(target=self.stop, name="hifhir-outbox-stop", daemon=True).start()

    def close(self) -> None:
        store.unsubscribe(self.engine, self._wake)
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Background:
    """A worker running in a daemon thread of the served process."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.run_forever, name="hifhir-outbox-worker", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop after the batch in hand (blocking: call it off the event loop)."""
        self.worker.stop()
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("outbox worker still busy after %.0f s; its rows are taken again when their lease expires",
                        timeout)
            return
        self.worker.close()


def start_background(engine: Engine, config: OutboxConfig) -> Background:
    return Background(Worker(engine, config))
