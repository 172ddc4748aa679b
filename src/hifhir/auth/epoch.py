"""The auth epoch: one counter every process compares with the value it last saw, so that a user disabled, tokens
revoked, roles or rights edited or a client disabled in one process (or by the CLI) reach the auth caches of all the
others within about a second, at the cost of one small query per second per process instead of one per request."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from hifhir.store.db import reader
from hifhir.store.tables import auth_epoch

POLL_INTERVAL_S = 1.0
_ROW = 1


def bump(conn: Connection) -> None:
    """Count one change, inside the transaction that makes it (other processes see both at commit)."""
    if conn.execute(update(auth_epoch).where(auth_epoch.c.pk == _ROW)
                    .values(epoch=auth_epoch.c.epoch + 1)).rowcount:
        return
    try:
        with conn.begin_nested():  # the first change ever: the row is created (two creators: one wins)
            conn.execute(insert(auth_epoch).values(pk=_ROW, epoch=1))
    except IntegrityError:
        conn.execute(update(auth_epoch).where(auth_epoch.c.pk == _ROW).values(epoch=auth_epoch.c.epoch + 1))


def read(conn: Connection) -> int:
    return int(conn.execute(select(auth_epoch.c.epoch).where(auth_epoch.c.pk == _ROW)).scalar() or 0)


class EpochWatch:
    """Calls `on_change` when another process has bumped the epoch; reads it at most once per interval."""

    def __init__(self, engine: Engine, on_change: Callable[[], None], interval_s: float = POLL_INTERVAL_S) -> None:
        self._engine = reader(engine)
        self._on_change = on_change
        self._interval = interval_s
        self._seen: int | None = None
        self._next_poll = 0.0

    def poll(self) -> None:
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + self._interval
        with self._engine.connect() as conn:
            current = read(conn)
        if self._seen is not None and current != self._seen:
            self._on_change()
        self._seen = current
