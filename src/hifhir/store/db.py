"""Engine creation and the per-request transaction boundary."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, create_engine, event

log = logging.getLogger("hifhir.store")

_NO_TRANSACTION = "hifhir_no_transaction"  # the execution option of `reader` on SQLite


# PostgreSQL: each engine's reader engine (`reader`), made once.
_READERS: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()
_READERS_GUARD = threading.Lock()


def reader(engine: Engine) -> Engine:
    """`engine` for reads that need no transaction (each statement sees the latest commit): no BEGIN and no COMMIT.

    SQLite: the connections already run without pysqlite's implicit transactions; an option of ours tells the `begin`
    listener to send no BEGIN. SQLAlchemy's AUTOCOMMIT would do the same, but it resets the isolation level at every
    checkin, which on SQLite runs `PRAGMA read_uncommitted`, and that PRAGMA makes SQLite prepare again every statement
    the connection has cached: a search by identifier took 0.54–0.63 ms of CPU in-process with it, 0.33–0.39 without.

    PostgreSQL: an engine of its own, whose connections are put in psycopg's autocommit once, when they are made, and
    stay in it (disposed with `engine`). The AUTOCOMMIT execution option on the writers' engine switched a connection
    into autocommit at each checkout and back at each checkin: ~15 % of a search by identifier's CPU in-process
    (`python -m bench.inprocess --scenario identifier`, 0.33–0.40 ms against 0.39–0.51)."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{_NO_TRANSACTION: True})
    with _READERS_GUARD:
        found = _READERS.get(engine)
        if found is None:
            found = _READERS[engine] = make_engine(engine.url.render_as_string(hide_password=False),
                                                   autocommit=True)
            event.listen(engine, "engine_disposed", lambda _engine: found.dispose())
    return found


def make_engine(url: str, *, cache_kib: int = 4096, pool_size: int = 4, autocommit: bool = False) -> Engine:
    """`cache_kib`, `pool_size`: SQLite's page cache per connection and the pool size (a background writer that
    appends to a few tables needs one connection and little cache). `autocommit`: PostgreSQL connections in
    psycopg's autocommit for good (`reader`)."""
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, pool_size=pool_size, max_overflow=12)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL lets readers run beside the single writer; NORMAL sync is durable across app crashes in WAL.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute(f"PRAGMA cache_size=-{cache_kib}")  # small: the OS keeps the file cached; up to 16 per worker
            # The WAL is copied back into the database by a background thread (Checkpointer); a commit runs an
            # automatic checkpoint only if that thread falls behind by this many pages (~32 MB).
            cur.execute(f"PRAGMA wal_autocheckpoint={Checkpointer.FALLBACK_PAGES}")
            cur.close()
            # pysqlite's implicit BEGIN is deferred; take the write lock at BEGIN so two writers never deadlock
            # on a lock upgrade (SQLITE_BUSY without waiting on busy_timeout).
            dbapi_conn.isolation_level = None

        if path and path != ":memory:":
            Checkpointer.ensure(os.path.abspath(path))

        @event.listens_for(engine, "checkout")
        def _sqlite_manual_transactions(dbapi_conn, _record, _proxy) -> None:  # type: ignore[no-untyped-def]
            # An AUTOCOMMIT checkout hands the connection back with pysqlite's implicit BEGIN re-armed.
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            options = conn.get_execution_options()
            if options.get(_NO_TRANSACTION) or options.get("isolation_level") == "AUTOCOMMIT":
                return  # single-statement reads run without a transaction (`reader`)
            # Straight to the driver: SQLAlchemy's statement machinery costs more than the BEGIN itself, and a
            # write's BEGIN runs inside the writer lock.
            conn.connection.driver_connection.execute(  # type: ignore[union-attr]
                "BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

        return engine
    from hifhir.store import pg_direct  # imports psycopg, which SQLite deployments never load

    engine = create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=False,
                           **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}))
    # store/pg_direct: every request's COMMIT through libpq, with the statements waiting for a round trip; a
    # rollback drops them; any other statement sends them first.
    engine.dialect.do_commit = pg_direct.commit  # type: ignore[method-assign]
    engine.dialect.do_rollback = pg_direct.rollback  # type: ignore[method-assign]

    @event.listens_for(engine, "before_cursor_execute")
    def _deferred_first(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        pg_direct.drain(conn.connection.driver_connection)

    return engine


class Checkpointer:
    """Checkpoints one SQLite file's WAL from a background thread (one per file and process).

    SQLite's automatic checkpoint runs inside the commit that crosses 1,000 WAL pages: that commit copies the pages
    into the database and syncs it while holding the writer lock — half the commit time of an enrolment. A PASSIVE
    checkpoint from another connection does the same work beside the writers, without blocking them.
    """

    INTERVAL_S = 0.05
    FALLBACK_PAGES = 8000
    _running: ClassVar[dict[str, Checkpointer]] = {}
    _guard = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = threading.Thread(target=self._run, name=f"sqlite-checkpoint:{Path(path).name}", daemon=True)

    @classmethod
    def ensure(cls, path: str) -> None:
        with cls._guard:
            if path not in cls._running:
                cls._running[path] = cls(path)
                cls._running[path]._thread.start()

    def _run(self) -> None:
        import sqlite3
        import time

        conn: sqlite3.Connection | None = None
        inode = None
        try:
            while True:
                time.sleep(self.INTERVAL_S)
                try:
                    current = os.stat(self.path).st_ino
                except OSError:
                    return  # the database is gone (a test's or benchmark's throw-away file)
                if conn is None or current != inode:  # (re)created in place: follow the new file
                    if conn is not None:
                        conn.close()
                    conn, inode = sqlite3.connect(self.path, timeout=0, check_same_thread=False), current
                with contextlib.suppress(sqlite3.Error):  # busy, or not in WAL mode yet: the next tick tries again
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            if conn is not None:
                conn.close()
            with self._guard:
                if self._running.get(self.path) is self:
                    del self._running[self.path]


class WriterLock:
    """Queues the writers of one SQLite file across processes and threads.

    SQLite lets one writer in at a time and makes the others poll with growing sleeps (busy_timeout), which
    under load wastes most of the write capacity and gives 0.5 s tail latencies. A blocking flock on a file
    beside the database hands the turn over as soon as the previous writer commits.
    """

    _registry: ClassVar[dict[str, WriterLock]] = {}
    _registry_guard = threading.Lock()

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._threads = threading.Lock()  # flock is per open file: threads of one process queue here first

    @classmethod
    def for_database(cls, database: str) -> WriterLock:
        with cls._registry_guard:
            lock = cls._registry.get(database)
            if lock is None:
                lock = cls._registry[database] = cls(database + ".writer-lock")
            return lock

    def __enter__(self) -> WriterLock:
        self._threads.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(self, *_exc: Any) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()


_NO_LOCK = nullcontext()
_WRITER_LOCK = "_hifhir_writer_lock"  # the engine's WriterLock (or a null context), kept on the engine


def _writer_lock(engine: Engine) -> Any:
    found = engine.__dict__.get(_WRITER_LOCK)
    if found is None:
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        found = nullcontext() if not database or database == ":memory:" \
            else WriterLock.for_database(os.path.abspath(database))
        engine.__dict__[_WRITER_LOCK] = found
    return found


# --- connections a thread keeps between its requests --------------------------------------------------------------


class _Held(threading.local):
    """The calling thread's connection to one engine while the thread holds its connections (`hold`)."""

    enabled = False
    busy = False  # in use by a `transaction` or `connection` of this thread (a nested one takes a pooled one)
    conn: Connection | None = None


_HOLDER = "_hifhir_held"  # the engine's _Held, an attribute of the engine: found without a weak reference
_HOLDERS_GUARD = threading.Lock()
_AFTER_COMMIT = "hifhir.after_commit"


def _holder(engine: Engine) -> _Held:
    found: _Held | None = getattr(engine, _HOLDER, None)
    if found is None:
        with _HOLDERS_GUARD:
            found = engine.__dict__.setdefault(_HOLDER, _Held())
    return found


def hold(*engines: Engine) -> None:
    """From now on the calling thread keeps one connection per engine between its `transaction`s and
    `connection`s, until `release`: a served process's event loop and an outbox loop, which run one request or
    batch after another. A checkout and checkin of the pool cost ~33 µs of SQLAlchemy's work (~15 µs a transaction
    on a held connection), and on SQLite a connection that wrote last keeps its page cache, which a commit from any
    other connection empties."""
    for engine in engines:
        _holder(engine).enabled = True


def release(*engines: Engine) -> None:
    """Stop holding (`hold`) and give the thread's held connections back to their pools."""
    for engine in engines:
        held = _holder(engine)
        held.enabled = False
        conn, held.conn = held.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a connection the database dropped
                conn.close()


def _held_connection(engine: Engine, held: _Held) -> Connection:
    conn = held.conn
    if conn is not None and (conn.closed or conn.invalidated):  # e.g. PostgreSQL restarted under it
        with contextlib.suppress(Exception):
            conn.close()
        conn = None
    if conn is None:
        conn = held.conn = engine.connect()
    return conn


@contextmanager
def connection(engine: Engine) -> Iterator[Connection]:
    """A connection for statements outside `transaction` (reads through `reader`): the thread's held one (`hold`),
    or one from the pool. Whatever the statements began is rolled back at the end, as the pool's checkin would."""
    held = _holder(engine)
    if not held.enabled or held.busy:
        with engine.connect() as conn:
            yield conn
        return
    conn = _held_connection(engine, held)
    held.busy = True
    ended = False
    try:
        yield conn
        if conn.in_transaction():
            conn.rollback()
        ended = True
    finally:
        held.busy = False
        if not ended:
            _reset(engine, held, conn)


def _reset(engine: Engine, held: _Held, conn: Connection) -> None:
    """What the pool's checkin does to a connection (a rollback), for a held one after a use that did not commit:
    a COMMIT that fails (a unique key PostgreSQL checks at the end) leaves the transaction open and aborted. A
    connection that cannot be reset is given up."""
    try:
        if conn.in_transaction():
            conn.rollback()
        engine.dialect.do_rollback(conn.connection.dbapi_connection)
    except Exception:
        held.conn = None
        with contextlib.suppress(Exception):
            conn.close()


def after_commit(conn: Connection, callback: Callable[[], None]) -> None:
    """Call `callback` once the `transaction` of `conn` has committed (never if it rolls back; never for a
    connection outside `transaction`)."""
    conn.info.setdefault(_AFTER_COMMIT, []).append(callback)


@contextmanager
def transaction(engine: Engine, *, write: bool) -> Iterator[Connection]:
    """One DB transaction per request: commit on success, roll back on any exception. The SQLite writer lock covers
    the transaction alone: a pool's checkout and checkin happen outside it."""
    held = _holder(engine)
    holding = held.enabled and not held.busy
    if holding:
        conn = _held_connection(engine, held)
        held.busy = True
    else:
        conn = engine.connect()
    info = conn.info
    info["write"] = write
    info.pop(_AFTER_COMMIT, None)  # left by statements outside a transaction of ours: never to be called
    committed = False
    try:
        with _writer_lock(engine) if write else _NO_LOCK, conn.begin():
            yield conn
        committed = True
    finally:
        callbacks = info.pop(_AFTER_COMMIT, None)
        info.pop("write", None)
        if not holding:
            conn.close()
        else:
            held.busy = False
            if not committed:
                _reset(engine, held, conn)
    if not committed or not callbacks:
        return
    for callback in callbacks:
        try:
            callback()
        except Exception:  # what is committed stays committed: the request still succeeds
            log.exception("after-commit callback failed")
