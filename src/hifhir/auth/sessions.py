"""Bearer token → Principal, honouring revocations: tokens issued before the user's `tokens_valid_after` are refused,
a disabled user's or client's tokens at once. This process's caches are dropped by `forget()` when it makes such a
change, and other processes' within about a second through the auth epoch (auth/epoch.py)."""

from __future__ import annotations

import time

from sqlalchemy import Engine

from hifhir.auth.clients import load_client_principal
from hifhir.auth.epoch import EpochWatch
from hifhir.auth.tokens import TokenService
from hifhir.auth.users import Principal, PrincipalCache

_CLIENT_TTL_S = 30.0
_CLIENT_CACHE_MAX = 4096


class Sessions:
    def __init__(self, engine: Engine, tokens: TokenService, principals: PrincipalCache) -> None:
        self._engine = engine
        self._tokens = tokens
        self._principals = principals
        # (client id, granted scope) → the client principal, until the deadline
        self._clients: dict[tuple[str, str], tuple[float, Principal | None]] = {}
        self._watch = EpochWatch(engine, self.forget)

    def principal(self, token: str) -> Principal | None:
        self._watch.poll()
        claims = self._tokens.verify(token)
        if claims is None:
            return None
        client_id = claims.get("client_id")
        if client_id is None:
            principal = self._principals.get(str(claims["sub"]))
        else:
            principal = self._client(str(client_id), str(claims.get("scope", "")))
        if principal is None or claims["iat"] < principal.tokens_valid_after:
            return None
        return principal

    def forget(self) -> None:
        """Drop every cached token and principal: the next requests see the database's state."""
        self._tokens.clear()
        self._principals.clear()
        self._clients.clear()

    def _client(self, client_id: str, scope: str) -> Principal | None:
        key = (client_id, scope)
        now = time.monotonic()
        hit = self._clients.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        with self._engine.connect() as conn:
            principal = load_client_principal(conn, client_id, scope)
        if len(self._clients) >= _CLIENT_CACHE_MAX:
            self._clients.clear()
        self._clients[key] = (now + _CLIENT_TTL_S, principal)
        return principal
