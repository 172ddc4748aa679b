"""PostgreSQL statements that psycopg has prepared, run straight through libpq.

A statement through a psycopg cursor costs ~40 µs of client CPU (its generators, wait loop and result
bookkeeping); `PGconn.exec_prepared`, with the parameters dumped and the rows loaded by psycopg's own adapters,
~12 µs. Every request runs a dozen or more statements, so this is where the hot statements of `store.fast` go.

Round trips cost both sides ~25 µs of CPU each (the server's part is its per-message work, whatever the
statement), so this module also saves some:
* a statement that opens a transaction is sent with psycopg's BEGIN (with the isolation level) in one pipeline;
* a statement whose outcome nobody waits for (`defer=True`: the history rows of a flush, a claim's line writes)
  waits on the connection
  and goes in the pipeline of whatever comes next — the next statement, or the COMMIT (`commit`, the dialect's
  `do_commit`): statements still run in the order they were issued, and an error of a deferred one is raised by
  the statement or the COMMIT it travelled with, failing the transaction as it would have. A rollback drops them
  (`rollback`, the dialect's `do_rollback`); anything else on the connection sends them first (`drain`; the engine
  calls it before each SQLAlchemy statement).

Plans. PostgreSQL plans a prepared statement for its parameters (a custom plan) at its first five executions, then
runs a generic plan — unless that one's estimated cost is above the custom plans' average, and then it plans anew at
every execution. The statements of `store.fast.DriverQuery` are lookups by key whose plan does not depend
on the values, yet some fall into that branch (an array of pks, whose length a generic estimate cannot know; a join
estimated from statistics taken while a table was nearly empty): ~0.2 ms of planning each, every time — 0.6 ms
a claim in one benchmark run. So they run with `plan_cache_mode = force_generic_plan`, set for the transaction
(`SET LOCAL`) in the pipeline of the first of them, and set back to the default in the pipeline of a statement that
wants plans for its values (a search: `generic=False`) or before anything sent by a cursor (`drain`). A cursor
statement therefore always runs with the default setting — SAVEPOINTs included, so a ROLLBACK TO one never brings a
forced setting back.

psycopg stays the owner of the prepared statements: its registry of names is the one consulted, so a name used here
is one the server has. A statement psycopg has not prepared (it prepares at the 6th execution; it drops them all at
a rollback, and the least used beyond `prepared_max`) is left to its cursor (`NOT_PREPARED`). These are psycopg
internals (`_prepared`, `_pipeline`, `_get_tx_start_command`, `psycopg._queries`): pyproject pins psycopg 3.3, and
tests/http/test_driver_statements.py checks that statements take this path.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import errors, pq

NOT_PREPARED = object()

_IDLE, _INTRANS = pq.TransactionStatus.IDLE, pq.TransactionStatus.INTRANS
_TUPLES_OK, _COMMAND_OK = pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK
_PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC
_TEXT, _BINARY = pq.Format.TEXT, pq.Format.BINARY
_COMMIT = b"COMMIT"
_FORCE_GENERIC = b"SET LOCAL plan_cache_mode = force_generic_plan"
_DEFAULT_PLANS = b"SET LOCAL plan_cache_mode TO DEFAULT"

# (statement name or None for a command, the command, parameters, parameter formats, result format)
_Step = tuple[bytes | None, bytes, Sequence[Any] | None, Sequence[Any] | None, pq.Format]


@dataclass(slots=True)
class _Session:
    """What one psycopg connection keeps here: psycopg's adapters and query converters, and the deferred steps."""

    transformer: Any  # dumps the parameters (through the converters) and loads the rows, as a cursor's does
    raw_query: Any  # `$n` placeholders (RawCursor's conversion)
    query: Any  # `%s` / `%(name)s` placeholders (Cursor's)
    deferred: list[_Step] = field(default_factory=list)
    generic: bool = False  # the transaction in progress forces generic plans (see "Plans")


_SESSIONS: weakref.WeakKeyDictionary[Any, _Session] = weakref.WeakKeyDictionary()


def _session(raw: Any) -> _Session:
    session = _SESSIONS.get(raw)
    if session is None:
        from psycopg._queries import PostgresQuery, PostgresRawQuery  # psycopg's conversion: its keys
        from psycopg.adapt import Transformer

        transformer = Transformer(raw)
        session = _SESSIONS[raw] = _Session(transformer, PostgresRawQuery(transformer), PostgresQuery(transformer))
    return session


def execute(raw: Any, sql: str, args: Any, *, fetch: bool, describe: bool, raw_query: bool, binary: bool,
            defer: bool = False, generic: bool | None = None) -> Any:
    """Run `sql` if psycopg has prepared it on `raw`: its rows when `fetch` (with `describe`, (names, rows)), else
    the number of rows changed (0 for a deferred statement). `NOT_PREPARED` (nothing sent, deferred steps
    included) when it does not apply: psycopg has not prepared it, psycopg is in pipeline mode, or the transaction
    has failed (psycopg's cursor reports that). `generic`: True runs it with generic plans forced, False with the
    default setting, None (a write whose plan is the same either way) with whichever is in effect ("Plans")."""
    begin = _begin_needed(raw)
    if begin is None:
        return NOT_PREPARED
    session = _session(raw)
    step = _step(raw, session.raw_query if raw_query else session.query, sql, args, binary)
    if step is None:
        return NOT_PREPARED
    if defer and not fetch and raw.pgconn.transaction_status == _INTRANS:  # its COMMIT carries it, at the latest
        session.deferred.append(step)
        return 0
    result = _send(raw, session, begin, [step], generic)[-1]
    if not fetch:
        return int(result.command_tuples or 0)
    if describe:
        if result.status != _TUPLES_OK:
            return (), []
        return tuple(result.fname(i).decode() for i in range(result.nfields)), _rows(session, result)
    return _rows(session, result)


def fetch_all(raw: Any, statements: Sequence[tuple[str, Any]]) -> list[list[Any]] | Any:
    """The rows of each statement (`$n` placeholders, `DriverQuery` reads: generic plans), all sent in one pipeline
    — one round trip for reads that do not depend on each other; `NOT_PREPARED` (nothing sent) unless psycopg has
    prepared every one of them."""
    begin = _begin_needed(raw)
    if begin is None:
        return NOT_PREPARED
    session = _session(raw)
    steps = []
    for sql, args in statements:
        step = _step(raw, session.raw_query, sql, args, False)
        if step is None:
            return NOT_PREPARED
        steps.append(step)
    results = _send(raw, session, begin, steps, True)[-len(steps):]
    return [_rows(session, result) for result in results]


def _begin_needed(raw: Any) -> bool | None:
    """Whether a statement on `raw` opens its transaction (psycopg's BEGIN goes with it); None when this module
    does not apply: psycopg's pipeline mode, or a transaction that failed or is in an unexpected state."""
    if raw._pipeline is not None:
        return None
    status = raw.pgconn.transaction_status
    if status == _INTRANS or raw.autocommit:
        return False
    return True if status == _IDLE else None


def _step(raw: Any, query: Any, sql: str, args: Any, binary: bool) -> _Step | None:
    query.convert(sql, args)
    name = _prepared_name(raw, query)
    if name is None:
        return None
    return (name, b"", query.params, query.formats, _BINARY if binary else _TEXT)


def _send(raw: Any, session: _Session, begin: bool, steps: list[_Step], generic: bool | None = None) -> list[Any]:
    """The steps in one round trip, after psycopg's BEGIN when the transaction opens, the deferred steps and the
    plan setting the steps want (`generic`, "Plans"): their results are the last `len(steps)`."""
    head: list[_Step] = []
    if begin:
        head.append((None, raw._get_tx_start_command(), None, None, _TEXT))
        session.generic = False  # a new transaction: SET LOCAL ended with the last one
    if session.deferred:
        head += session.deferred
        session.deferred = []
    if generic is not None and generic != session.generic and not raw.autocommit:
        head.append((None, _FORCE_GENERIC if generic else _DEFAULT_PLANS, None, None, _TEXT))
        session.generic = generic
    return _pipeline(raw, head + steps if head else steps)


def _rows(session: _Session, result: Any) -> list[Any]:
    if result.status != _TUPLES_OK:
        return []
    transformer = session.transformer
    transformer.set_pgresult(result)
    rows = transformer.load_rows(0, result.ntuples, tuple)
    transformer.set_pgresult(None)
    return rows  # type: ignore[no-any-return]


def run_all(raw: Any, statements: Sequence[tuple[str, Sequence[Any]]], *, defer: bool = False) -> bool:
    """Run each statement (`%s` / `%(name)s` placeholders) once per parameter set, in order, in one pipeline after
    the deferred steps, without their results — when psycopg has prepared every one of them and no transaction
    needs opening; else False, nothing sent: the caller's cursor runs them (and psycopg prepares them). With
    `defer`, they join the deferred steps instead (sent by the transaction's next round trip)."""
    if raw._pipeline is not None or raw.autocommit or raw.pgconn.transaction_status != _INTRANS:
        return False
    session = _session(raw)
    steps: list[_Step] = []
    for sql, arg_sets in statements:
        for args in arg_sets:
            step = _step(raw, session.query, sql, args, False)
            if step is None:
                return False
            steps.append(step)
    if defer:
        session.deferred.extend(steps)
    elif steps or session.deferred:
        _send(raw, session, False, steps)
    return True


def _prepared_name(raw: Any, query: Any) -> bytes | None:
    """psycopg's name for the statement as converted, marked as just used in its LRU (beyond `prepared_max` it
    deallocates the least recently used: without this, the statements run here would look the least used)."""
    names = raw._prepared._names
    key = (query.query, query.types)
    name = names.get(key)
    if name is not None:
        names.move_to_end(key)
    return name  # type: ignore[no-any-return]


def drain(raw: Any) -> None:
    """Send the deferred steps of `raw` now, and set plans back to the default setting if they were forced (before a
    statement that does not come through `execute`)."""
    session = _SESSIONS.get(raw)
    if session is None:
        return
    steps, session.deferred = session.deferred, []
    if session.generic:
        session.generic = False
        if raw.pgconn.transaction_status == _INTRANS:
            steps.append((None, _DEFAULT_PLANS, None, None, _TEXT))
    if steps:
        _pipeline(raw, steps)


def _driver(connection: Any) -> Any:
    """The psycopg connection of what SQLAlchemy hands a dialect's `do_commit`/`do_rollback` (a pool proxy)."""
    return getattr(connection, "dbapi_connection", connection)


def commit(connection: Any) -> None:
    """The COMMIT of a transaction in progress, with the deferred steps, in one round trip (the dialect's
    `do_commit`); anything else — no transaction, a failed one, pipeline mode, psycopg's transaction blocks — is
    psycopg's `commit()`, after the deferred steps."""
    raw = _driver(connection)
    if (raw.pgconn.transaction_status != _INTRANS or raw._pipeline is not None or raw._num_transactions
            or raw._tpc):
        drain(raw)
        raw.commit()
        return
    session = _SESSIONS.get(raw)
    steps = session.deferred if session is not None else []
    if session is not None:
        session.deferred = []
        session.generic = False
    _pipeline(raw, [*steps, (None, _COMMIT, None, None, _TEXT)])


def rollback(connection: Any) -> None:
    """The dialect's `do_rollback`: the deferred steps are dropped with the transaction."""
    raw = _driver(connection)
    session = _SESSIONS.get(raw)
    if session is not None:
        session.deferred = []
        session.generic = False
    if raw.pgconn.transaction_status == _IDLE and raw._pipeline is None and not raw._num_transactions:
        return  # nothing to roll back (every pool checkin asks): psycopg's rollback() would only cost its wait loop
    raw.rollback()


def _pipeline(raw: Any, steps: list[_Step]) -> list[Any]:
    """Send the steps in one libpq pipeline (one round trip) and return their results; the first failure is raised
    (the steps after it were not run)."""
    pgconn = raw.pgconn
    if len(steps) == 1:
        name, command, params, formats, result_format = steps[0]
        result = (pgconn.exec_prepared(name, params, formats, result_format=result_format) if name is not None
                  else pgconn.exec_(command))
        _check(raw, result)
        return [result]
    pgconn.enter_pipeline_mode()
    results: list[Any] = []
    try:
        for name, command, params, formats, result_format in steps:
            if name is None:
                pgconn.send_query_params(command, None)
            else:
                pgconn.send_query_prepared(name, params, formats, result_format=result_format)
        pgconn.pipeline_sync()
        ended = False
        while True:
            result = pgconn.get_result()
            if result is None:  # the end of one step's results
                if ended:  # twice in a row: nothing more is coming (the connection is lost)
                    raise errors.OperationalError("the connection to the server was lost in a pipeline")
                ended = True
                continue
            ended = False
            if result.status == _PIPELINE_SYNC:
                break
            results.append(result)
    finally:
        pgconn.exit_pipeline_mode()
    for result in results:
        _check(raw, result)
    return results


def _check(raw: Any, result: Any) -> None:
    if result.status not in (_TUPLES_OK, _COMMAND_OK):
        encoding = raw.info.encoding
        if raw.pgconn.status == pq.ConnStatus.BAD:  # no SQLSTATE: psycopg's cursor calls this an OperationalError
            raise errors.OperationalError(result.get_error_message(encoding) or "the connection to the server was lost")
        raise errors.error_from_result(result, encoding=encoding)
