"""Login throttling: after repeated failed logins for one user name or from one address, further attempts are
refused (429 + Retry-After) without checking the password until the lock expires.

The counters live in the `login_failure` table (keys `user:<name>` and `addr:<ip>`), so every server process sees
the same locks. Only login-like requests (the login endpoint, OAuth2 client authentication) touch it: other requests
pay nothing.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from hifhir.config import Settings
from hifhir.fhir.errors import FhirError
from hifhir.store.db import transaction
from hifhir.store.tables import login_failure

_KEY_MAX = 120  # login_failure.key


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    user_max: int = 5  # failures for one user name within the window before it is locked
    addr_max: int = 20  # failures from one address within the window before it is locked
    window_s: int = 15 * 60
    lock_s: int = 15 * 60


def policy_from_settings(settings: Settings) -> ThrottlePolicy:
    return ThrottlePolicy(settings.login_max_failures, settings.login_max_failures_per_address,
                          settings.login_window_s, settings.login_lock_s)


def user_key(username: str) -> str:
    return ("user:" + username)[:_KEY_MAX]


def address_key(address: str) -> str:
    return ("addr:" + address)[:_KEY_MAX]


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: Container[str]) -> str:
    """The caller's address: the TCP peer (ASGI scope `client`), or — only when that peer is a trusted proxy — the
    last address in X-Forwarded-For that is not itself a trusted proxy (the left-most entries are client-written)."""
    address = peer or "unknown"
    if forwarded_for and address in trusted_proxies:
        for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
            if not _is_ip(hop):
                break
            address = hop
            if hop not in trusted_proxies:
                break
    return address


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def throttled(retry_after_s: int) -> FhirError:
    return FhirError(
        429,
        [{"severity": "error", "code": "throttled",
          "diagnostics": "Too many failed login attempts; try again later"}],
        {"Retry-After": str(retry_after_s)},
    )


class LoginThrottle:
    """One per application; the state is in the database."""

    def __init__(self, engine: Engine, policy: ThrottlePolicy | None = None) -> None:
        self._engine = engine
        self.policy = policy or ThrottlePolicy()

    def check(self, keys: Sequence[str]) -> frozenset[str]:
        """Raise the 429 when any of the keys (`user_key`, `address_key`) is locked now; otherwise return the keys
        that have failures counted (a success only needs a write when its user name is among them)."""
        now = time.time()
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(select(login_failure.c.key, login_failure.c.locked_until).where(
                    login_failure.c.key.in_(list(keys)))).all()
        except OperationalError:
            return frozenset()  # a busy database must not lock everyone out: the password check still applies
        until = max((r.locked_until for r in rows), default=0)
        if until > now:
            raise throttled(max(1, math.ceil(until - now)))
        return frozenset(r.key for r in rows)

    def failed(self, user: str | None, address: str | None) -> None:
        """Count one failed authentication (a login, an OAuth2 client's credentials) against the user name and the
        address; the one that reaches its limit is locked for `lock_s`."""
        limits = [(user_key(user), self.policy.user_max)] if user else []
        if address:
            limits.append((address_key(address), self.policy.addr_max))
        for _attempt in range(2):  # a concurrent first failure may insert the same key: count again
            try:
                with transaction(self._engine, write=True) as conn:
                    for key, limit in limits:
                        self._count(conn, key, limit, time.time())
                return
            except IntegrityError:
                continue
            except OperationalError:
                return

    def succeeded(self, user: str) -> None:
        """A successful login forgets the user's failures (the address keeps its count: one address trying many
        user names is still an attack)."""
        try:
            with transaction(self._engine, write=True) as conn:
                conn.execute(delete(login_failure).where(login_failure.c.key == user_key(user)))
        except OperationalError:
            pass

    def _count(self, conn: Connection, key: str, limit: int, now: float) -> None:
        p = self.policy
        stmt = select(login_failure.c.failures, login_failure.c.window_start, login_failure.c.locked_until).where(
            login_failure.c.key == key)
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).first()
        now_s = int(now)
        if row is None:
            failures, window_start = 1, now_s
        elif row.window_start + p.window_s <= now_s or 0 < row.locked_until <= now_s:
            failures, window_start = 1, now_s  # the window (or a lock) is over: a fresh count
        else:
            failures, window_start = row.failures + 1, row.window_start
        locked_until = now_s + p.lock_s if failures >= limit else 0
        values = {"failures": failures, "window_start": window_start, "locked_until": locked_until}
        if row is None:
            conn.execute(insert(login_failure).values(key=key, **values))
        else:
            conn.execute(update(login_failure).where(login_failure.c.key == key).values(**values))
