"""The transactional outbox: work to be done outside a request, recorded in the request's own transaction.

Writing side — `enqueue(conn, topic, subject, payload)` inserts a row in the caller's transaction: it exists if and
only if the change that needs it commits (a claim sent to the AI, later a notification of a change). Nothing is sent
from inside a transaction.

Delivering side — a worker (outbox/worker.py) claims due rows, runs the handler registered for the row's topic
(outbox/registry.py) outside any transaction, and records the outcome:
* the handler returns → `done`;
* it raises → `pending` again, due after base × 2^(attempt−1) seconds (at most the cap, with jitter), or `failed`
  with `last_error` once `max_attempts` attempts failed, or at once on `PermanentFailure`. A failed row stays until
  an operator requeues it (`hifhir worker --requeue-failed`);
* the worker dies mid-way (SIGKILL, crash) → the row's lease (`locked_until`) expires and another claim takes it:
  delivery is **at least once**. The row's `id` is the same at every attempt and handlers send it along (as
  `X-Request-Id` / `Idempotency-Key`), so a receiver can drop a repeat; handlers that apply a result check that it
  still applies (the claim-AI handler ignores an answer for a claim no longer waiting for one).
Claims: on PostgreSQL `UPDATE … WHERE pk IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`, so concurrent workers
(threads or processes) take disjoint rows without waiting on each other; on SQLite the same statement in a write
transaction, serialised by the writer lock. The attempt number fences the outcome: a worker whose lease ran out
cannot overwrite the outcome of the attempt that took its row over.

Configuration: `Settings.outbox` (config.OutboxConfig, HIFHIR_OUTBOX_* variables).
"""

from __future__ import annotations

from hifhir.outbox.registry import Delivery, PermanentFailure, RetryLater, register
from hifhir.outbox.store import DONE, FAILED, PENDING, enqueue, requeue_failed

__all__ = ["DONE", "FAILED", "PENDING", "Delivery", "PermanentFailure", "RetryLater", "enqueue", "register",
           "requeue_failed"]
