"""Statements run at the driver level (store/fast): the same rows and the same errors however the driver runs them.
On PostgreSQL a statement goes through psycopg's cursor until psycopg has prepared it, then straight through libpq
(`PGconn.exec_prepared`) under the name psycopg gave it; a rollback makes psycopg drop every prepared statement,
and the cursor prepares them again. There, key lookups (`DriverQuery`) run with generic plans forced, and searches
(`FastStatement`) and cursor statements with PostgreSQL's default choice."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, bindparam, delete, event, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from hifhir.store import pg_direct
from hifhir.store.db import reader
from hifhir.store.fast import DriverQuery, FastStatement, MultiRowInsert, Plan, any_pk, rows_together, run_plans
from hifhir.store.tables import code_list_entry
from tests.builders import location

LIST = "test-driver-statements"
_ADD = DriverQuery(insert(code_list_entry).values(
    list_name=bindparam("name"), code=bindparam("code"), display=bindparam("display"),
    active=bindparam("active")).returning(code_list_entry.c.pk))
_ENTRIES = DriverQuery(select(code_list_entry.c.code, code_list_entry.c.display, code_list_entry.c.active,
                              code_list_entry.c.last_updated)
                       .where(code_list_entry.c.list_name == bindparam("name"))
                       .order_by(code_list_entry.c.code))
_ENTRIES_RAW = FastStatement(select(code_list_entry.c.code, code_list_entry.c.display)
                             .where(code_list_entry.c.list_name == bindparam("name"))
                             .order_by(code_list_entry.c.code))


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """How each PostgreSQL statement ran: `prepared` (libpq, psycopg's prepared name), `cursor` (psycopg's cursor)
    or `error` (raised on the prepared path)."""
    seen: Counter[str] = Counter()
    original = pg_direct.execute

    def spy(*args: Any, **kwargs: Any) -> Any:
        try:
            result = original(*args, **kwargs)
        except Exception:
            seen["error"] += 1
            raise
        seen["cursor" if result is pg_direct.NOT_PREPARED else "prepared"] += 1
        return result

    monkeypatch.setattr(pg_direct, "execute", spy)
    yield seen


def _add(conn: Any, code: str, display: str, active: bool = True) -> int:
    return int(_ADD.rows(conn, {"name": LIST, "code": code, "display": display, "active": active})[0].pk)


def test_a_statement_gives_the_same_rows_before_and_after_the_driver_prepared_it(engine: Engine,
                                                                                 paths: Counter[str]) -> None:
    with engine.connect() as conn, conn.begin() as tx:
        _add(conn, "B", "Beta", active=False)
        _add(conn, "A", "Alpha")
        runs = [_ENTRIES.rows(conn, {"name": LIST}) for _ in range(8)]
        raw_runs = [_ENTRIES_RAW.execute(conn, {"name": LIST}) for _ in range(8)]
        tx.rollback()

    assert [(r.code, r.display, r.active, r.last_updated) for r in runs[0]] == [
        ("A", "Alpha", True, 0), ("B", "Beta", False, 0)]
    assert all(run == runs[0] for run in runs)
    assert [(r.code, r.display) for r in raw_runs[0]] == [("A", "Alpha"), ("B", "Beta")]
    assert all(run == raw_runs[0] for run in raw_runs)
    if engine.dialect.name == "postgresql":
        # psycopg prepares a statement at its 6th execution: the 7th and 8th of each query went through libpq
        assert paths["prepared"] == 4


def test_a_unique_violation_on_a_prepared_statement_is_an_integrity_error_and_the_next_transaction_runs(
        engine: Engine, paths: Counter[str]) -> None:
    with engine.connect() as conn:
        conn.begin()
        for i in range(8):
            _add(conn, f"C{i}", f"Entry {i}")
        with pytest.raises(IntegrityError):
            _add(conn, "C0", "Again")
        conn.rollback()  # psycopg deallocates all its prepared statements
        refused = paths["error"]
        paths.clear()

        conn.begin()
        pks = [_add(conn, f"D{i}", f"Entry {i}") for i in range(8)]
        rows = _ENTRIES.rows(conn, {"name": LIST})
        conn.rollback()

    assert len(set(pks)) == 8
    assert [r.code for r in rows] == [f"D{i}" for i in range(8)]
    if engine.dialect.name == "postgresql":
        assert refused == 1  # the duplicate was refused on the prepared path
        assert paths["prepared"] == 2  # prepared anew by psycopg's cursor, then through libpq again


# --- statements that wait for the next round trip (PostgreSQL; SQLite runs them at once) --------------------------

_INSERT = MultiRowInsert(code_list_entry, ("list_name", "code", "display"))


def _row(code: str) -> dict[str, Any]:
    return {"list_name": LIST, "code": code, "display": f"Entry {code}"}


def _codes(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(code_list_entry.c.code).where(code_list_entry.c.list_name == LIST)
                                 .order_by(code_list_entry.c.code)).scalars())


@pytest.fixture
def cleanup(engine: Engine) -> Iterator[None]:
    yield
    with engine.begin() as conn:
        conn.execute(delete(code_list_entry).where(code_list_entry.c.list_name == LIST))


def test_a_deferred_insert_runs_before_the_next_statement_and_with_the_commit(engine: Engine,
                                                                              cleanup: None) -> None:
    with engine.connect() as conn:
        conn.begin()
        for i in range(6):
            _INSERT.execute(conn, [_row(f"P{i}")])  # psycopg prepares it
        _INSERT.execute(conn, [_row("Q1")], defer=True)
        if engine.dialect.name == "postgresql":  # Q1 waits for the next round trip
            assert len(pg_direct._SESSIONS[conn.connection.driver_connection].deferred) == 1
        seen_by_driver = [r.code for r in _ENTRIES.rows(conn, {"name": LIST})]
        _INSERT.execute(conn, [_row("Q2")], defer=True)
        seen_by_sqlalchemy = list(conn.execute(
            select(code_list_entry.c.code).where(code_list_entry.c.list_name == LIST)
            .order_by(code_list_entry.c.code)).scalars())
        _INSERT.execute(conn, [_row("Q3")], defer=True)
        conn.commit()

    assert seen_by_driver[-1] == "Q1"
    assert seen_by_sqlalchemy[-2:] == ["Q1", "Q2"]
    assert _codes(engine) == ["P0", "P1", "P2", "P3", "P4", "P5", "Q1", "Q2", "Q3"]


def test_a_multi_row_insert_of_many_parameters_writes_each_value_in_its_place_and_is_prepared(
        engine: Engine, cleanup: None, paths: Counter[str]) -> None:
    rows = [_row(f"M{i:02d}") for i in range(30)]  # 90 parameters: psycopg would re-parse a %s statement each time
    with engine.connect() as conn, conn.begin():
        for _ in range(6):
            _INSERT.execute(conn, rows)
            conn.execute(delete(code_list_entry).where(code_list_entry.c.list_name == LIST))
        _INSERT.execute(conn, rows)
    with engine.connect() as conn:
        written = conn.execute(select(code_list_entry.c.code, code_list_entry.c.display)
                               .where(code_list_entry.c.list_name == LIST).order_by(code_list_entry.c.code)).all()

    assert [tuple(r) for r in written] == [(f"M{i:02d}", f"Entry M{i:02d}") for i in range(30)]
    if engine.dialect.name == "postgresql":
        assert paths["prepared"] >= 1  # the 7th execution ran through libpq


_SORTED_INSERT = MultiRowInsert(code_list_entry, ("list_name", "code", "display", "sort_order", "last_updated"))


def test_a_multi_row_insert_is_one_prepared_statement_whatever_the_size_of_its_numbers(
        engine: Engine, cleanup: None, paths: Counter[str]) -> None:
    """psycopg types an int parameter by its size (int2, int4, int8) and prepares a statement per types: a claim's
    lines (prices, quantities) would make a new statement of nearly every insert, run by a cursor."""
    orders, stamps = [7, 40_000], [7, 40_000, 3_000_000_000]  # an int2 and an int4; and an int8
    expected = [(f"S{i:02d}{j}", orders[(i + j) % 2], stamps[(i + j) % 3]) for i in range(12) for j in range(2)]
    with engine.connect() as conn, conn.begin():
        for i in range(12):
            _SORTED_INSERT.execute(conn, [{**_row(code), "sort_order": order, "last_updated": stamp}
                                          for code, order, stamp in expected[2 * i:2 * i + 2]])
    with engine.connect() as conn:
        written = conn.execute(select(code_list_entry.c.code, code_list_entry.c.sort_order,
                                      code_list_entry.c.last_updated)
                               .where(code_list_entry.c.list_name == LIST).order_by(code_list_entry.c.code)).all()

    assert [tuple(r) for r in written] == expected
    if engine.dialect.name == "postgresql":
        # one statement, which psycopg prepares after its first runs: libpq runs the others (six mixes of sizes,
        # each a statement of its own, would leave all twelve to the cursor)
        assert paths["prepared"] >= 6 and paths["cursor"] + paths["prepared"] == 12


def test_a_deferred_insert_that_fails_fails_the_commit_and_nothing_is_written(engine: Engine,
                                                                              cleanup: None) -> None:
    with engine.connect() as conn:
        conn.begin()
        for i in range(6):
            _INSERT.execute(conn, [_row(f"R{i}")])
        with pytest.raises(IntegrityError):
            _INSERT.execute(conn, [_row("R0")], defer=True)  # a duplicate: refused when it is sent
            conn.commit()
        conn.rollback()

    assert _codes(engine) == []


def test_a_rollback_drops_the_deferred_insert(engine: Engine, cleanup: None) -> None:
    with engine.connect() as conn:
        conn.begin()
        for i in range(6):
            _INSERT.execute(conn, [_row(f"S{i}")])
        _INSERT.execute(conn, [_row("S9")], defer=True)
        conn.rollback()

        conn.begin()
        _INSERT.execute(conn, [_row("T1")])
        conn.commit()

    assert _codes(engine) == ["T1"]


def test_a_connection_lost_under_a_prepared_statement_is_an_operational_error(engine: Engine,
                                                                              paths: Counter[str]) -> None:
    """What the API answers with a 503 (database unavailable), as psycopg's cursor reports it."""
    if engine.dialect.name != "postgresql":
        pytest.skip("a server connection to lose: PostgreSQL")
    with engine.connect() as conn:
        conn.begin()
        for _ in range(6):
            _ENTRIES.rows(conn, {"name": LIST})  # prepared by psycopg at the 6th
        # The network goes: no error message from the server, no SQLSTATE.
        link = socket.socket(fileno=conn.connection.driver_connection.pgconn.socket)
        link.shutdown(socket.SHUT_RDWR)
        link.detach()  # the descriptor stays libpq's
        with pytest.raises(OperationalError):
            _ENTRIES.rows(conn, {"name": LIST})
        conn.invalidate()

    assert paths["error"] == 1  # raised on the prepared path


def test_a_connection_lost_under_a_pipeline_is_an_operational_error(engine: Engine, cleanup: None) -> None:
    """The COMMIT carrying a deferred insert, on a connection that is gone: an error, not a wait for results."""
    if engine.dialect.name != "postgresql":
        pytest.skip("a server connection to lose: PostgreSQL")
    with engine.connect() as conn:
        conn.begin()
        for i in range(6):
            _INSERT.execute(conn, [_row(f"U{i}")])
        _INSERT.execute(conn, [_row("U9")], defer=True)
        link = socket.socket(fileno=conn.connection.driver_connection.pgconn.socket)
        link.shutdown(socket.SHUT_RDWR)
        link.detach()
        with pytest.raises(OperationalError):
            conn.commit()
        conn.invalidate()

    assert _codes(engine) == []


# --- reads sent together, writes that wait for them ---------------------------------------------------------------

_COUNT = DriverQuery(select(func.count().label("n")).select_from(code_list_entry)
                     .where(code_list_entry.c.list_name == bindparam("name"), code_list_entry.c.active.is_(True)))
_RENAME = DriverQuery(update(code_list_entry).where(code_list_entry.c.list_name == bindparam("name"),
                                                    code_list_entry.c.code == bindparam("code"))
                      .values(display=bindparam("display")))
_DEACTIVATE = FastStatement(update(code_list_entry).where(code_list_entry.c.list_name == bindparam("name"),
                                                          code_list_entry.c.code == bindparam("code"))
                            .values(active=False))


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of statements in each libpq pipeline (one round trip each) on PostgreSQL."""
    sent: list[int] = []
    original = pg_direct._pipeline

    def spy(raw: Any, steps: list[Any]) -> Any:
        sent.append(len(steps))
        return original(raw, steps)

    monkeypatch.setattr(pg_direct, "_pipeline", spy)
    return sent


def test_reads_sent_together_give_what_each_gives_alone_in_one_round_trip(engine: Engine, cleanup: None,
                                                                          round_trips: list[int]) -> None:
    with engine.connect() as conn:
        conn.begin()
        _add(conn, "A", "Alpha")
        _add(conn, "B", "Beta", active=False)
        for _ in range(6):  # psycopg prepares both
            alone = (_ENTRIES.rows(conn, {"name": LIST}), _COUNT.rows(conn, {"name": LIST}))
        round_trips.clear()
        together = rows_together(conn, [(_ENTRIES, {"name": LIST}), (_COUNT, {"name": LIST})])
        conn.rollback()

    assert [(r.code, r.display, r.active) for r in together[0]] == [("A", "Alpha", True), ("B", "Beta", False)]
    assert together[1][0].n == 1
    assert together == list(alone)
    if engine.dialect.name == "postgresql":  # the two reads, after the setting that forces their generic plans
        assert round_trips == [3]


def _count_then_codes() -> Plan[tuple[int, list[str]]]:
    count, = yield [(_COUNT, {"name": LIST})]
    entries, = yield [(_ENTRIES, {"name": LIST})]
    return count[0].n, [r.code for r in entries]


def _reads_nothing() -> Plan[str]:
    yield from ()
    return "nothing read"


def test_plans_run_in_lockstep_the_reads_of_one_step_of_every_plan_in_one_round_trip(
        engine: Engine, cleanup: None, round_trips: list[int]) -> None:
    with engine.connect() as conn:
        conn.begin()
        _add(conn, "A", "Alpha")
        _add(conn, "B", "Beta", active=False)
        for _ in range(6):  # psycopg prepares both
            _ENTRIES.rows(conn, {"name": LIST})
            _COUNT.rows(conn, {"name": LIST})
        round_trips.clear()
        results = run_plans(conn, {"one": _count_then_codes(), "none": _reads_nothing(),
                                   "two": _count_then_codes()})
        conn.rollback()

    assert results == {"one": (1, ["A", "B"]), "none": "nothing read", "two": (1, ["A", "B"])}
    if engine.dialect.name == "postgresql":  # two steps: two round trips, each with both plans' read (the first
        assert round_trips == [3, 2]  # after the setting that forces generic plans)


def test_deferred_writes_are_seen_by_the_reads_that_carry_them(engine: Engine, cleanup: None,
                                                               round_trips: list[int]) -> None:
    with engine.connect() as conn:
        conn.begin()
        for i in range(6):
            _add(conn, f"C{i}", f"Code {i}")
            _RENAME.run(conn, {"name": LIST, "code": f"C{i}", "display": f"Renamed {i}"})
            _DEACTIVATE.execute_many(conn, [{"name": LIST, "code": f"C{i}"}])
            _ENTRIES.rows(conn, {"name": LIST})
            _COUNT.rows(conn, {"name": LIST})
        _add(conn, "D", "Delta")
        _add(conn, "E", "Echo")
        round_trips.clear()
        assert _RENAME.run(conn, {"name": LIST, "code": "D", "display": "Renamed D"}, defer=True) in (0, 1)
        _DEACTIVATE.execute_many(conn, [{"name": LIST, "code": "E"}], defer=True)
        entries, count = rows_together(conn, [(_ENTRIES, {"name": LIST}), (_COUNT, {"name": LIST})])
        conn.commit()

    assert [(r.code, r.display, r.active) for r in entries][-2:] == [("D", "Renamed D", True), ("E", "Echo", False)]
    assert count[0].n == 1
    if engine.dialect.name == "postgresql":  # the two writes travelled with the two reads
        assert round_trips[:1] == [4]


def test_a_deferred_write_that_fails_fails_the_reads_that_carry_it(engine: Engine, cleanup: None) -> None:
    with engine.connect() as conn:
        conn.begin()
        for i in range(6):
            _INSERT.execute(conn, [_row(f"F{i}")])
            rows_together(conn, [(_ENTRIES, {"name": LIST}), (_COUNT, {"name": LIST})])
        with pytest.raises(IntegrityError):
            _INSERT.execute(conn, [_row("F0")], defer=True)  # a duplicate
            rows_together(conn, [(_ENTRIES, {"name": LIST}), (_COUNT, {"name": LIST})])
        conn.rollback()

    assert _codes(engine) == []


# --- keys drawn ahead (PostgreSQL) ---------------------------------------------------------------------------


def test_keys_drawn_ahead_are_new_and_never_handed_out_twice_even_after_the_sequence_is_set_back(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("keys drawn from a sequence: PostgreSQL")
    from sqlalchemy import text

    from hifhir.store import pk_blocks
    from hifhir.store.tables import eligibility_enquiry

    monkeypatch.setattr(pk_blocks, "BLOCK", 3)
    monkeypatch.setattr(pk_blocks, "_BY_ENGINE", type(pk_blocks._BY_ENGINE)())
    with engine.begin() as conn:
        first = [pk_blocks.next_pk(conn, eligibility_enquiry) for _ in range(4)]  # two blocks
        # a restore or TRUNCATE … RESTART IDENTITY sets the sequence back under the running server
        conn.execute(text("SELECT setval(pg_get_serial_sequence('eligibility_enquiry', 'pk'), 1, false)"))
        later = [pk_blocks.next_pk(conn, eligibility_enquiry) for _ in range(4)]
        plain = conn.execute(text("SELECT nextval(pg_get_serial_sequence('eligibility_enquiry', 'pk'))")).scalar()

    keys = first + later
    assert len(set(keys)) == len(keys)
    assert first == sorted(first) and later == sorted(later)
    assert min(later[1:]) > max(first)  # the first of `later` is the rest of the second block, drawn before
    assert plain > max(keys)  # the sequence itself was moved past them


# --- any_pk: a list of pks as one parameter --------------------------------------------------------------------

_BY_PKS = DriverQuery(select(code_list_entry.c.pk, code_list_entry.c.code).where(any_pk(code_list_entry.c.pk)))


def test_a_pk_list_of_any_length_finds_each_of_its_rows_once(engine: Engine, cleanup: None) -> None:
    with engine.connect() as conn:
        conn.begin()
        pks = [_add(conn, f"P{i:02}", f"Entry {i}") for i in range(40)]
        # 1 to 32 pks run through the IN-slot variants (padded to a power of two), 33 and more through `= ANY`
        found = {n: sorted(r.pk for r in _BY_PKS.rows(conn, {"pks": pks[:n]})) for n in range(1, 41)}
        reversed_order = sorted(r.pk for r in _BY_PKS.rows(conn, {"pks": pks[4::-1]}))
        conn.rollback()

    assert all(found[n] == sorted(pks[:n]) for n in found), [n for n in found if found[n] != sorted(pks[:n])]
    assert reversed_order == sorted(pks[:5])


def test_pk_lists_of_nearby_lengths_share_one_statement_to_prepare_and_plan(engine: Engine, cleanup: None) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("IN-slot variants: PostgreSQL (SQLite reads the list as JSON)")
    sent: list[str] = []
    with engine.connect() as conn:
        conn.begin()
        pks = [_add(conn, f"S{i:02}", f"Entry {i}") for i in range(20)]
        for n in (1, 2, 3, 4, 5, 8, 9, 16, 17):
            sent.append(_BY_PKS.bound(conn, {"pks": pks[:n]}).sql)
        conn.rollback()

    variants = dict(zip((1, 2, 3, 4, 5, 8, 9, 16, 17), sent, strict=True))
    assert variants[3] == variants[4] != variants[2]
    assert variants[5] == variants[8] != variants[4]
    assert variants[9] == variants[16] != variants[17]
    assert variants[1] != variants[2]
    assert len(set(sent)) == 6  # 1, 2, 4, 8, 16 and 32 slots


# --- reads without a transaction ---------------------------------------------------------------------------------


def test_searches_run_only_their_own_statements_and_leave_the_connection_as_the_writers_need_it(
        api: Any, engine: Engine) -> None:
    """A GET runs through `store.db.reader`: no transaction, and on SQLite no `PRAGMA read_uncommitted` at checkin
    (SQLAlchemy's AUTOCOMMIT ran one to reset the isolation level; SQLite then re-prepared every statement the
    connection had cached, the next write's included); on PostgreSQL no switch of the connection into psycopg's
    autocommit and back at each checkout."""
    assert api.post("Location", location("R9", "Reader Region", "R")).status_code == 201
    if engine.dialect.name == "sqlite":
        seen: list[str] = []

        def trace(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
            dbapi_conn.set_trace_callback(seen.append)

        def untrace(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.set_trace_callback(None)

        event.listen(engine, "checkout", trace)
        event.listen(engine, "checkin", untrace)
        try:
            for _ in range(3):
                found = api.get("Location?identifier=R9")
                assert found.status_code == 200 and len(found.json()["entry"]) == 1
        finally:
            event.remove(engine, "checkout", trace)
            event.remove(engine, "checkin", untrace)
        # (the app's outbox worker may have polled meanwhile, in transactions of its own)
        searches = [s for s in seen if "FROM location" in s]
        assert len(searches) >= 3, seen
        assert not [s for s in seen if "read_uncommitted" in s], seen
    else:
        import psycopg

        switched: list[bool] = []
        original = psycopg.Connection._set_autocommit

        def spy(self: Any, value: bool) -> None:
            switched.append(value)
            original(self, value)

        assert api.get("Location?identifier=R9").status_code == 200  # the reader's connection is made
        psycopg.Connection._set_autocommit = spy  # type: ignore[method-assign]
        try:
            for _ in range(3):
                found = api.get("Location?identifier=R9")
                assert found.status_code == 200 and len(found.json()["entry"]) == 1
        finally:
            psycopg.Connection._set_autocommit = original  # type: ignore[method-assign]
        assert switched == []  # its connections stay in autocommit: nothing to switch at checkout or checkin
        with reader(engine).connect() as conn:
            assert conn.connection.driver_connection.autocommit  # type: ignore[union-attr]
        with engine.connect() as conn:  # and the writers' connections are in transactions
            assert not conn.connection.driver_connection.autocommit  # type: ignore[union-attr]

    assert api.post("Location", location("R8", "Writer Region", "R")).status_code == 201  # writes still commit
    assert len(api.get("Location?identifier=R8").json()["entry"]) == 1


def test_disposing_an_engine_closes_its_readers_connections(engine: Engine) -> None:
    with reader(engine).connect() as conn:
        conn.execute(select(1))
    if engine.dialect.name == "postgresql":
        assert reader(engine).pool.checkedin() >= 1  # type: ignore[attr-defined]

    engine.dispose()

    assert reader(engine).pool.checkedin() == 0  # type: ignore[attr-defined]


# --- plans on PostgreSQL (store/pg_direct, "Plans") -----------------------------------------------------------

_MODE = select(func.current_setting("plan_cache_mode").label("mode"))
_MODE_OF_LOOKUPS = DriverQuery(_MODE)
_MODE_OF_SEARCHES = FastStatement(_MODE.where(func.length(bindparam("search")) > 0))


def on_postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("plan_cache_mode is PostgreSQL's")


def prepared_plans(conn: Any, sql_start: str) -> tuple[int, int]:
    """(generic plans, custom plans) PostgreSQL made for the statement of this session that starts with `sql_start`."""
    row = conn.exec_driver_sql(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
        (sql_start.replace("%", "%%") + "%",)).one()
    return int(row.generic_plans), int(row.custom_plans)


def test_a_prepared_key_lookup_is_planned_once_not_for_each_of_its_values(engine: Engine, cleanup: None) -> None:
    on_postgresql(engine)
    with engine.connect() as conn, conn.begin():
        _add(conn, "A", "Alpha")
        for _ in range(12):
            assert [r.code for r in _ENTRIES.rows(conn, {"name": LIST})] == ["A"]
        # psycopg's cursor prepares it at its 6th execution, with the default setting (one custom plan); the next
        # six go through libpq with generic plans forced, where PostgreSQL would have made four more custom plans
        assert prepared_plans(conn, "SELECT code_list_entry.code, code_list_entry.display") == (6, 1)


def test_lookups_force_generic_plans_and_searches_and_cursor_statements_get_the_default_setting(
        engine: Engine) -> None:
    on_postgresql(engine)
    with engine.connect() as conn, conn.begin():
        for _ in range(7):  # prepared by psycopg at the 6th execution of each: the 7th goes through libpq
            lookup = _MODE_OF_LOOKUPS.rows(conn, {})[0].mode
            search = _MODE_OF_SEARCHES.execute(conn, {"search": "x"})[0].mode
            shown = conn.exec_driver_sql("SHOW plan_cache_mode").scalar()
        assert (lookup, search, shown) == ("force_generic_plan", "auto", "auto")
        assert _MODE_OF_LOOKUPS.rows(conn, {})[0].mode == "force_generic_plan"
        nested = conn.begin_nested()
        assert _MODE_OF_LOOKUPS.rows(conn, {})[0].mode == "force_generic_plan"  # set again inside the savepoint
        nested.rollback()
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "auto"
        # the ROLLBACK TO made psycopg drop its prepared statements: the lookup is prepared again at its 6th run
        assert [_MODE_OF_LOOKUPS.rows(conn, {})[0].mode for _ in range(7)] == ["auto"] * 6 + ["force_generic_plan"]
    with engine.connect() as conn, conn.begin():  # SET LOCAL ended with the transaction
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "auto"
