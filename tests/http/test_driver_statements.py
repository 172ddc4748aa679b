"""Statements run at the driver level (store/fast): the same rows and the same errors however the driver runs them.
On PostgreSQL a statement goes through psycopg's cursor until psycopg has prepared it, then straight through libpq
(`PGconn.exec_prepared`) under the name psycopg gave it; a rollback makes psycopg drop every prepared statement,
and the cursor prepares them again."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, bindparam, insert, select
from sqlalchemy.exc import IntegrityError

from hifhir.store import fast
from hifhir.store.fast import DriverQuery, FastStatement
from hifhir.store.tables import code_list_entry

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
    original = fast._pg_prepared

    def spy(*args: Any, **kwargs: Any) -> Any:
        try:
            result = original(*args, **kwargs)
        except Exception:
            seen["error"] += 1
            raise
        seen["cursor" if result is fast._NOT_PREPARED else "prepared"] += 1
        return result

    monkeypatch.setattr(fast, "_pg_prepared", spy)
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
