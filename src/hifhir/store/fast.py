"""Hot-path statements compiled once per dialect and run through the driver directly.

SQLAlchemy Core spends ~100 µs per execution on cache-key generation and result wrapping; for the few
statements every read request runs (read by id, the page's bodies) that is most of the request's cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.sql import Executable


class FastStatement:
    """A statement without expanding parameters, executed with `exec_driver_sql` and positional values."""

    def __init__(self, statement: Executable) -> None:
        self._statement = statement
        self._compiled: dict[str, tuple[str, tuple[str, ...], bool, dict[str, Any]]] = {}

    def _for(self, conn: Connection) -> tuple[str, tuple[str, ...], bool, dict[str, Any]]:
        name = conn.dialect.name
        found = self._compiled.get(name)
        if found is None:
            compiled = self._statement.compile(dialect=conn.dialect)  # type: ignore[attr-defined]
            rendered = compiled.construct_params(_check=False)  # keyed by the names rendered in the SQL
            positional = bool(compiled.positiontup)
            order = tuple(compiled.positiontup or rendered.keys())
            # Values fixed in the statement itself (e.g. LIMIT 1) are binds too.
            defaults = {k: v for k, v in rendered.items() if v is not None}
            found = self._compiled[name] = (compiled.string, order, positional, defaults)
        return found

    def execute(self, conn: Connection, params: dict[str, Any], *, binary: bool = False) -> Sequence[Any]:
        """`binary`: on PostgreSQL, fetch in the binary protocol — bytea columns (stored FHIR JSON) then arrive as
        raw bytes instead of hex text twice their size that the driver must decode (halves a 1,000-body page)."""
        sql, order, positional, defaults = self._for(conn)
        values = {**defaults, **params}
        if binary and conn.dialect.name == "postgresql" and not positional:
            from psycopg.rows import namedtuple_row

            raw = conn.connection.driver_connection
            with raw.cursor(binary=True, row_factory=namedtuple_row) as cursor:  # type: ignore[union-attr]
                cursor.execute(sql, {k: values[k] for k in order})
                return cursor.fetchall()
        if positional:
            return conn.exec_driver_sql(sql, tuple(values[k] for k in order)).all()
        return conn.exec_driver_sql(sql, {k: values[k] for k in order}).all()

    def execute_many(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """An executemany through the driver (for plain INSERTs: no result, no type processing needed)."""
        sql, order, positional, defaults = self._for(conn)
        if positional:
            conn.exec_driver_sql(sql, [tuple({**defaults, **r}[k] for k in order) for r in rows])
        else:
            conn.exec_driver_sql(sql, [{k: {**defaults, **r}[k] for k in order} for r in rows])
