"""Hot-path statements compiled once per dialect and run through the driver directly.

SQLAlchemy Core spends ~100 µs per execution on cache-key generation and result wrapping; for the few
statements every read request runs (read by id, the page's bodies) that is most of the request's cost.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import orjson
from sqlalchemy import Connection, Integer, String, bindparam, insert
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import Executable
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.types import TypeDecorator

# Called with each statement these classes send to the driver, which SQLAlchemy's cursor events do not see (tests
# count a request's statements with both).
STATEMENT_OBSERVERS: list[Callable[[str], None]] = []

_T = TypeVar("_T")
_K = TypeVar("_K")


def _on_driver(conn: Connection, sql: str, args: Any, *, fetch: bool, describe: bool = False,
               make_cursor: Callable[[Any], Any] | None = None, defer: bool = False,
               generic: bool | None = None) -> Any:
    """Run one statement on the DB-API connection of the caller's transaction: its rows when `fetch` — with
    `describe`, (column names, rows) —, else the number of rows changed. Only a caller that does not know its
    statement's columns asks for them: psycopg builds a description object per column at each access (an
    eligibility enquiry's 60 columns cost more than its insert). On PostgreSQL a statement psycopg has prepared goes
    through libpq (`store.pg_direct`), and with `defer` (no result wanted) it may wait for the next round trip;
    `generic` says which plans it wants there (`pg_direct.execute`).
    Driver errors are raised wrapped as SQLAlchemy's (`IntegrityError`, `OperationalError`…), as
    `Connection.execute` would raise them, for the callers."""
    raw = conn.connection.driver_connection
    assert raw is not None
    observed((sql,))
    with _as_sqlalchemy_errors(conn, sql, args):
        if conn.dialect.name == "postgresql":
            from hifhir.store import pg_direct  # psycopg: loaded by PostgreSQL deployments only (~8 MB a worker)

            done = pg_direct.execute(raw, sql, args, fetch=fetch, describe=describe, defer=defer, generic=generic,
                                     raw_query=make_cursor is _raw_cursor, binary=make_cursor is _binary_cursor)
            if done is not pg_direct.NOT_PREPARED:
                return done
            pg_direct.drain(raw)
        cursor = raw.cursor() if make_cursor is None else make_cursor(raw)
        try:
            cursor.execute(sql, args)
            if not fetch:
                return cursor.rowcount
            if not describe:
                return cursor.fetchall()
            description = cursor.description
            if description is None:
                return (), []
            return tuple(d[0] for d in description), cursor.fetchall()
        finally:
            cursor.close()


@contextlib.contextmanager
def _as_sqlalchemy_errors(conn: Connection, sql: str, args: Any) -> Iterator[None]:
    """Driver errors raised inside, wrapped as SQLAlchemy's (`IntegrityError`, `OperationalError`…)."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as exc:
        raise DBAPIError.instance(sql, args, exc, dbapi_error, dialect=conn.dialect) from exc


def observed(statements: Iterable[str]) -> None:
    """Tell the STATEMENT_OBSERVERS of statements sent to the driver directly (every such path calls this)."""
    for sql in statements:
        for observer in STATEMENT_OBSERVERS:
            observer(sql)


def _binary_cursor(raw: Any) -> Any:
    return raw.cursor(binary=True)


def _raw_cursor(raw: Any) -> Any:
    from psycopg import RawCursor

    return RawCursor(raw)


class FastStatement:
    """A statement without expanding parameters and without type conversions, run on the driver; on PostgreSQL with
    the default plan choice (a search wants a plan for its values: a LIKE prefix, a skewed code)."""

    def __init__(self, statement: Executable) -> None:
        self._statement = statement
        self._compiled: dict[str, tuple[str, tuple[str, ...], bool, dict[str, Any]]] = {}
        self._row_classes: dict[str, type[DriverRow]] = {}  # per dialect, from the first execution's columns

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
        """The rows, with the columns as attributes, straight from the driver (`Connection.exec_driver_sql` still
        cost ~30 µs of SQLAlchemy's work a statement: a tenth of a read by id). `binary`: on PostgreSQL, fetch in
        the binary protocol — bytea columns (stored FHIR JSON) then arrive as raw bytes instead of hex text twice
        their size that the driver must decode (halves a 1,000-body page)."""
        sql, order, positional, defaults = self._for(conn)
        values = {**defaults, **params}
        args = tuple(values[k] for k in order) if positional else {k: values[k] for k in order}
        dialect = conn.dialect.name
        binary_cursor = _binary_cursor if binary and dialect == "postgresql" else None
        row_class = self._row_classes.get(dialect)
        if row_class is None:
            names, fetched = _on_driver(conn, sql, args, fetch=True, describe=True, make_cursor=binary_cursor,
                                        generic=False)
            row_class = self._row_classes[dialect] = _row_class_of(names)
        else:
            fetched = _on_driver(conn, sql, args, fetch=True, make_cursor=binary_cursor, generic=False)
        make = row_class._make  # type: ignore[attr-defined]
        return [make(row) for row in fetched]

    def execute_many(self, conn: Connection, rows: list[dict[str, Any]], *, defer: bool = False) -> None:
        """An executemany through the driver (plain values: no result, no type processing needed); on PostgreSQL
        one libpq pipeline once psycopg has prepared the statement (`store.pg_direct.run_all`), or with `defer`
        none of its own: the transaction's next round trip carries it."""
        sql, order, positional, defaults = self._for(conn)
        if positional:
            arg_sets: list[Any] = [tuple({**defaults, **r}[k] for k in order) for r in rows]
        else:
            arg_sets = [{k: {**defaults, **r}[k] for k in order} for r in rows]
        if conn.dialect.name == "postgresql":
            from hifhir.store import pg_direct

            with _as_sqlalchemy_errors(conn, sql, arg_sets):
                done = pg_direct.run_all(conn.connection.driver_connection, [(sql, arg_sets)], defer=defer)
            if done:
                observed((sql,))
                return
        conn.exec_driver_sql(sql, arg_sets)


class DriverRow(tuple[Any, ...]):
    """A result row: columns as attributes and in `_mapping` (the interface of SQLAlchemy's Row used here).
    `DriverQuery` makes one namedtuple subclass of it per statement; `_mapping` is built once, when first used."""

    _fields: tuple[str, ...] = ()

    @functools.cached_property
    def _mapping(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))


def _row_class(names: tuple[str, ...], *, rename: bool = False) -> type[DriverRow]:
    base = collections.namedtuple("Row", names, rename=rename)  # type: ignore[misc]
    return type("DriverRow", (base, DriverRow), {})


@functools.lru_cache(maxsize=512)
def _row_class_of(names: tuple[str, ...]) -> type[DriverRow]:
    """The row class of a cursor's column names (FastStatement: one per statement shape; a name that cannot be an
    attribute, or a repeated one, is reachable by position only)."""
    return _row_class(names, rename=True)


_Compiled = tuple[str, tuple[str, ...], bool, dict[str, Any], dict[str, Callable[[Any], Any]], type[DriverRow],
                  tuple[tuple[int, Callable[[Any], Any]], ...]]


class _Bound(NamedTuple):
    """A DriverQuery's statement bound to parameters (`DriverQuery.bound`), to run and then read (`made`)."""

    sql: str
    args: Any
    compiled: _Compiled


class DriverQuery:
    """A statement without expanding parameters (a SELECT, or an INSERT … RETURNING), compiled once per dialect and
    executed on the DB-API connection of the caller's transaction, with the column types' own bind and result
    conversions (dates on SQLite, `Amount` hundredths): ~10 µs instead of ~60 µs through `Connection.execute`
    (`store/fast.FastStatement` skips the conversions, which these statements need). Driver errors are raised
    wrapped as SQLAlchemy's (`sqlalchemy.exc.IntegrityError`…), as `Connection.execute` would. Each is a lookup or
    a write by key, whose plan is the same for every value: on PostgreSQL it runs with generic plans forced
    (`store/pg_direct`, "Plans")."""

    def __init__(self, statement: Any, *, postgresql: Any = None) -> None:
        """`postgresql`: the statement to run there instead (same columns): a form SQLite cannot run, such as a
        LATERAL join, that keeps PostgreSQL's generic plan to index probes."""
        self._statement = statement
        self._statements = {"postgresql": postgresql} if postgresql is not None else {}
        self._compiled: dict[tuple[str, int], _Compiled] = {}
        self._pk_arrays: tuple[str, ...] | None = None  # the parameters bound to `any_pk` (PkArray)

    def _for(self, conn: Connection, slots: int) -> _Compiled:
        dialect = conn.dialect
        found = self._compiled.get((dialect.name, slots))
        if found is None:
            statement = self._statements.get(dialect.name, self._statement)
            compiled = statement.compile(dialect=dialect, compile_kwargs={"any_pk_slots": slots})
            if self._pk_arrays is None:
                self._pk_arrays = tuple(name for name, bind in compiled.binds.items()
                                        if isinstance(bind.type, PkArray))
            rendered = compiled.construct_params(_check=False)
            positional = bool(compiled.positiontup)
            order = tuple(compiled.positiontup or rendered)
            defaults = {k: v for k, v in rendered.items() if v is not None}  # values fixed in the statement
            binds = dict(compiled._bind_processors)
            columns = statement.exported_columns
            row_class = _row_class(tuple(columns.keys()))
            # A type may offer a conversion of its own for driver values (tables.Amount), quicker than the
            # processor SQLAlchemy wraps around a TypeDecorator.
            results = tuple((i, proc) for i, c in enumerate(columns)
                            if (proc := getattr(c.type, "driver_result", None)
                                or c.type._cached_result_processor(dialect, None)) is not None)
            sql = compiled.string
            if dialect.name == "postgresql" and not positional:
                sql, order = _dollar_placeholders(sql)
                positional = True
            found = self._compiled[(dialect.name, slots)] = (sql, order, positional, defaults, binds,
                                                             row_class, results)
        return found

    def rows(self, conn: Connection, params: dict[str, Any]) -> list[DriverRow]:
        bound = self.bound(conn, params)
        fetched = self._execute(conn, bound.sql, bound.args, fetch=True)
        assert isinstance(fetched, list)
        return self.made(bound, fetched)

    def bound(self, conn: Connection, params: dict[str, Any]) -> _Bound:
        """The statement for these parameters and its driver arguments."""
        slots = 0
        if self._pk_arrays is None:
            self._for(conn, 0)  # the first compilation finds the parameters bound to `any_pk`
        if conn.dialect.name == "postgresql" and self._pk_arrays:
            arrays = {name: params.get(name) or () for name in self._pk_arrays}
            slots = _pk_slots(list(arrays.values()))
            if slots:
                params = params | {name: _padded(pks, slots) for name, pks in arrays.items() if pks}
        compiled = self._for(conn, slots)
        sql, order, positional, defaults, binds = compiled[:5]
        return _Bound(sql, self._args(params, order, positional, defaults, binds), compiled)

    @staticmethod
    def made(bound: _Bound, fetched: list[Any]) -> list[DriverRow]:
        """The driver's rows of a `bound` statement, converted, as rows with the columns as attributes."""
        row_class, results = bound.compiled[5:]
        make = row_class._make  # type: ignore[attr-defined]
        if not results:
            return [make(row) for row in fetched]
        out = []
        for row in fetched:
            cells = list(row)
            for i, proc in results:
                cells[i] = proc(cells[i])
            out.append(make(cells))
        return out

    def run(self, conn: Connection, params: dict[str, Any], *, defer: bool = False) -> int:
        """Execute a statement that returns no rows (an UPDATE, a DELETE); the number of rows it changed — unless
        `defer`: then it may wait for the transaction's next round trip (`_on_driver`) and the count is 0."""
        bound = self.bound(conn, params)
        count = self._execute(conn, bound.sql, bound.args, fetch=False, defer=defer)
        assert isinstance(count, int)
        return count

    @staticmethod
    def _args(params: dict[str, Any], order: tuple[str, ...], positional: bool, defaults: dict[str, Any],
              binds: dict[str, Callable[[Any], Any]]) -> Any:
        values = defaults | params
        for name, proc in binds.items():
            if name in values:
                values[name] = proc(values[name])
        return [values[k] for k in order] if positional else {k: values[k] for k in order}

    @staticmethod
    def _execute(conn: Connection, sql: str, args: Any, *, fetch: bool, defer: bool = False) -> list[Any] | int:
        # PostgreSQL statements are compiled to `$n` placeholders (_dollar_placeholders): a RawCursor sends them.
        # Lookups by key: the same plan suits every value (store/pg_direct, "Plans").
        return _on_driver(conn, sql, args, fetch=fetch, defer=defer, generic=True,  # type: ignore[no-any-return]
                          make_cursor=_raw_cursor if conn.dialect.name == "postgresql" else None)


@functools.cache
def _row_insert(table: Any, columns: tuple[str, ...]) -> DriverQuery:
    return DriverQuery(insert(table).values({c: bindparam(c) for c in columns}))


def insert_rows(conn: Connection, table: Any, rows: Iterable[dict[str, Any]]) -> None:
    """Insert rows nobody reads back in this statement (their keys are not needed) through the driver, with the
    columns' type conversions; on PostgreSQL they wait for the transaction's next round trip."""
    for row in rows:
        _row_insert(table, tuple(row)).run(conn, row, defer=True)


def send_deferred(conn: Connection) -> None:
    """Send now the statements waiting for the transaction's next round trip (PostgreSQL; SQLite defers nothing): a
    caller about to fail for a reason of its own lets a violation one of them raises come first."""
    if conn.dialect.name == "postgresql":
        from hifhir.store import pg_direct

        with _as_sqlalchemy_errors(conn, "(statements sent with the next round trip)", None):
            pg_direct.drain(conn.connection.driver_connection)


def rows_together(conn: Connection, queries: Sequence[tuple[DriverQuery, dict[str, Any]]]) -> list[list[DriverRow]]:
    """The rows of each query, for reads that do not depend on each other: on PostgreSQL sent in one round trip once
    psycopg has prepared them all (`store.pg_direct.fetch_all`), else — and on SQLite — one after the other."""
    if not queries:
        return []
    if conn.dialect.name == "postgresql":
        from hifhir.store import pg_direct

        bound = [query.bound(conn, params) for query, params in queries]
        with _as_sqlalchemy_errors(conn, bound[0].sql, bound[0].args):
            fetched = pg_direct.fetch_all(conn.connection.driver_connection, [(b.sql, b.args) for b in bound])
        if fetched is not pg_direct.NOT_PREPARED:
            observed(b.sql for b in bound)
            return [DriverQuery.made(b, rows) for b, rows in zip(bound, fetched, strict=True)]
    return [query.rows(conn, params) for query, params in queries]


Read = tuple[DriverQuery, dict[str, Any]]
# A computation that needs the database in steps, each step a list of independent reads: it yields the step's reads,
# is sent their rows (one list per read, in order) and finally returns its result. `run_plans` runs several together.
Plan = Generator[list[Read], list[list[DriverRow]], _T]


def run_plans(conn: Connection, plans: Mapping[_K, Plan[_T]]) -> dict[_K, _T]:
    """The results of the plans, run in lockstep: the reads every plan asks for at one step go together
    (`rows_together`: one round trip on PostgreSQL), so that plans of depth 2 cost two round trips however many
    there are. Results are delivered in the mapping's order, so a plan may leave something (e.g. in a memo) that a
    later plan's next step uses."""
    done: dict[_K, _T] = {}
    waiting: dict[_K, list[Read]] = {}

    def advance(key: _K, sent: list[list[DriverRow]] | None) -> None:
        try:
            waiting[key] = plans[key].send(sent)  # type: ignore[arg-type]  # None starts a generator
        except StopIteration as finished:
            done[key] = finished.value

    for key in plans:
        advance(key, None)
    while waiting:
        step, waiting = waiting, {}
        fetched = rows_together(conn, [read for reads in step.values() for read in reads])
        start = 0
        for key, reads in step.items():
            advance(key, fetched[start:start + len(reads)])
            start += len(reads)
    return done


def run_plan(conn: Connection, plan: Plan[_T]) -> _T:
    return run_plans(conn, {0: plan})[0]


_NAMED = re.compile(r"%\(([^)]+)\)s|%%")


def _dollar_placeholders(sql: str) -> tuple[str, tuple[str, ...]]:
    """A statement compiled for psycopg (`%(name)s`) with PostgreSQL's own `$n` placeholders, and the parameter
    names in their order. psycopg parses a query's placeholders at every execution unless it is short (≤ 4,096
    characters: an eligibility enquiry or a claim's lines are longer), ~0.1 ms; a RawCursor sends `$n` as it is."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _NAMED.sub(number, sql), tuple(names)


class MultiRowInsert:
    """`INSERT … VALUES (…), (…), …` of plain values (no type processing) through the driver: one statement, one
    round trip on PostgreSQL, where an executemany costs a pipeline set-up and a round trip of its own. PostgreSQL
    gets `$n` placeholders: psycopg converts a `%s` statement with more than 50 parameters anew at every execution
    (a regular-expression split, ~2 µs a parameter: 0.2 ms for a claim's five item lines)."""

    _MAX_ROWS = 100  # statements are cached per row count; larger inserts go in chunks of this size

    def __init__(self, table: Any, columns: Sequence[str]) -> None:
        self._head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
        self._columns = tuple(columns)

    @functools.lru_cache(maxsize=256)  # noqa: B019 — a few module-level instances live as long as the process
    def _sql(self, dialect: str, n: int) -> str:
        width = len(self._columns)
        if dialect == "postgresql":
            rows = ("(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")" for r in range(n))
        else:
            rows = ("(" + ", ".join(["?"] * width) + ")" for _ in range(n))
        return self._head + ", ".join(rows)

    def execute(self, conn: Connection, rows: Sequence[dict[str, Any]], *, defer: bool = False) -> None:
        """`defer`: an insert of one chunk may wait for the transaction's next round trip (`_on_driver`)."""
        dialect = conn.dialect.name
        make_cursor = _raw_cursor if dialect == "postgresql" else None
        defer = defer and len(rows) <= self._MAX_ROWS
        for start in range(0, len(rows), self._MAX_ROWS):
            chunk = rows[start:start + self._MAX_ROWS]
            args = [row[c] for row in chunk for c in self._columns]
            if dialect == "postgresql":
                # psycopg types an int parameter by its size (int2, int4 or int8), and keys its prepared statements
                # by their parameters' types: the same INSERT would be a new statement for each mix of sizes (a
                # claim's lines: nearly every claim, run by a cursor, never by libpq). An int sent as text has no
                # type of its own: the INSERT gives it its column's, whatever its size.
                args = [str(v) if type(v) is int else v for v in args]
            _on_driver(conn, self._sql(dialect, len(chunk)), args, fetch=False, make_cursor=make_cursor,
                       defer=defer)


# --- any number of pks as one bind parameter ------------------------------------------------------------------


class PkArray(TypeDecorator[list[int]]):
    """Any number of pks as one bind parameter: a PostgreSQL integer array, a JSON array on SQLite. An expanding IN
    renders one placeholder per pk, which the driver (psycopg parses every statement with more than 50 parameters
    anew) and the planner pay for at each execution."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        return dialect.type_descriptor(ARRAY(Integer) if dialect.name == "postgresql" else String())

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return orjson.dumps(list(value)).decode()


class _AnyPk(FunctionElement[Any]):
    """`column` is one of the pks of a `PkArray` parameter. Untyped: a Boolean would be compared with 1 on SQLite
    (no native boolean), which hides the condition from the planner."""

    inherit_cache = True
    name = "any_pk"


# PostgreSQL plans `= ANY($1)` anew at every execution of a prepared statement (a custom plan for the array it is
# given looks cheaper than the generic one, estimated for 10 elements): up to 1.7 ms of planning for a Patient
# render's joins, at every write. DriverQuery therefore runs a small array through a variant `IN ($1[1], …, $1[n])`
# with n its length: its generic plan costs what a custom one would, and the server keeps it. (Slots past the end of
# a shorter array would be NULLs, which a custom plan counts as no row: with them, the custom plans of a family's
# render looked cheaper than the generic one and were made again at every execution.) Larger arrays keep `= ANY`.
# Each variant is planned anew by each connection (up to 11 times: 5 executions before psycopg prepares it, 5 custom
# plans, then the generic one) and again after every ANALYZE of its tables: n rounds up to a power of two, the array
# padded with its last pk (a pk twice in an IN list matches its row once), so a family's re-render of 1 to 16 members
# has 5 variants to plan, not 16 (a Patient render takes over a millisecond to plan).
_MAX_PK_SLOTS = 32


def _pk_slots(arrays: list[Any]) -> int:
    """The variant of a statement for these any_pk arrays: the power of two ≥ the longest, or 0 for `= ANY` (none,
    or one longer than _MAX_PK_SLOTS)."""
    longest = max((len(a) for a in arrays), default=0)
    return 1 << (longest - 1).bit_length() if 0 < longest <= _MAX_PK_SLOTS else 0


def _padded(pks: Iterable[int], slots: int) -> list[int]:
    """`pks` filled up to `slots` with its last pk (slots past the end of an array would be NULLs, see above)."""
    padded = list(pks)
    return padded + [padded[-1]] * (slots - len(padded))


@compiles(_AnyPk)
def _any_pk_pg(element: _AnyPk, compiler: Any, **kw: Any) -> str:
    column, values = (compiler.process(c, **kw) for c in element.clauses)
    slots = kw.get("any_pk_slots", 0)
    if slots:
        return f"{column} IN ({', '.join(f'(CAST({values} AS INTEGER[]))[{i}]' for i in range(1, slots + 1))})"
    return f"{column} = ANY(CAST({values} AS INTEGER[]))"


@compiles(_AnyPk, "sqlite")
def _any_pk_sqlite(element: _AnyPk, compiler: Any, **kw: Any) -> str:
    column, values = (compiler.process(c, **kw) for c in element.clauses)
    return f"{column} IN (SELECT value FROM json_each({values}))"


def any_pk(column: Any, name: str = "pks", value: list[int] | None = None) -> Any:
    """`column` is one of the pks bound to parameter `name` (a list of ints, whatever its length); with `value`, the
    pks are bound in the expression itself (a unique parameter named after `name`)."""
    if value is not None:
        return _AnyPk(column, bindparam(name, value, type_=PkArray(), unique=True))
    return _AnyPk(column, bindparam(name, type_=PkArray()))
