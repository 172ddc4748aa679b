"""Primary keys drawn ahead from a PostgreSQL table's own sequence, so that an insert need not wait for its key.

An `INSERT … RETURNING pk` is a round trip of its own: the caller needs the key before it can go on. With the key
known beforehand the insert can wait for the transaction's next round trip (`store.fast`'s `defer`), and a request
whose only write is that insert (an eligibility enquiry) saves a round trip. Keys come from the column's sequence,
`BLOCK` at a time per process and table: one extra round trip every `BLOCK` inserts. A key drawn and not used is a
gap in the sequence, as a rolled-back insert leaves one anyway. Every insert into such a table must take its key
here. A sequence set back under a running server (a restore, `TRUNCATE … RESTART IDENTITY`) is moved past the keys
already handed out when the next block is drawn. SQLite does not need this (no round trips).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy import Connection, Table, text

BLOCK = 64

_DRAW = text("SELECT nextval(pg_get_serial_sequence(:table, 'pk')) FROM generate_series(1, :n)")
# Never backwards, whatever another process moved it to meanwhile.
_MOVE_PAST = text("SELECT setval(s, greatest(CAST(:last AS bigint), nextval(s))) "
                  "FROM pg_get_serial_sequence(:table, 'pk') AS s")


class _Blocks:
    def __init__(self) -> None:
        self.keys: dict[str, list[int]] = {}
        self.handed: dict[str, int] = {}  # the highest key handed out, per table
        self.lock = threading.Lock()


# Per engine (a process may serve several databases, e.g. tests): keys of one database are no use in another.
_BY_ENGINE: weakref.WeakKeyDictionary[Any, _Blocks] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def next_pk(conn: Connection, table: Table) -> int:
    """A new primary key for `table` (PostgreSQL), drawn from its sequence."""
    engine = conn.engine
    with _GUARD:
        blocks = _BY_ENGINE.get(engine)
        if blocks is None:
            blocks = _BY_ENGINE[engine] = _Blocks()
    with blocks.lock:
        keys = blocks.keys.setdefault(table.name, [])
        if not keys:
            keys.extend(_draw(conn, table.name, blocks.handed.get(table.name, 0)))
        key = keys.pop()
        blocks.handed[table.name] = max(key, blocks.handed.get(table.name, 0))
        return key


def _draw(conn: Connection, table: str, handed: int) -> list[int]:
    """A block of keys, highest first, all above `handed`."""
    drawn = [int(k) for k in conn.execute(_DRAW, {"table": table, "n": BLOCK}).scalars()]
    if min(drawn) <= handed:  # the sequence was set back
        conn.execute(_MOVE_PAST, {"table": table, "last": handed})
        drawn = [int(k) for k in conn.execute(_DRAW, {"table": table, "n": BLOCK}).scalars()]
    return sorted(drawn, reverse=True)
