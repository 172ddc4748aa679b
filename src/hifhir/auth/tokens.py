"""JWT bearer tokens (HS256). Verified tokens are cached so the hot path does not re-verify signatures."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from typing import Any

import jwt

_CACHE_SIZE = 4096


class TokenService:
    def __init__(self, secret: str, lifetime_s: int) -> None:
        self._secret = secret
        self._lifetime = lifetime_s
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def issue(self, username: str, *, client_id: str | None = None, scope: str | None = None,
              lifetime_s: int | None = None) -> tuple[str, int]:
        """A user's token, or (client_id set) an OAuth2 client's: `sub` is then the client id (RFC 9068) and
        `scope` the SMART scopes granted; the client's technical user is looked up from the client, not trusted
        from the token."""
        now = int(time.time())
        exp = now + (self._lifetime if lifetime_s is None else lifetime_s)
        claims: dict[str, Any] = {"username": username, "sub": client_id or username, "iat": now, "nbf": now,
                                  "exp": exp, "jti": str(uuid.uuid4())}
        if client_id is not None:
            claims["client_id"] = client_id
            claims["scope"] = scope or ""
        return jwt.encode(claims, self._secret, algorithm="HS256"), exp

    def clear(self) -> None:
        """Forget every verified token (a revocation: tokens are re-checked against the users' state)."""
        self._cache.clear()

    def verify(self, token: str) -> dict[str, Any] | None:
        cached = self._cache.get(token)
        now = time.time()
        if cached is not None:
            if cached["exp"] > now:
                return cached
            self._cache.pop(token, None)
            return None
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], options={"require": ["exp", "sub", "iat"]})
        except jwt.PyJWTError:
            return None
        self._cache[token] = claims
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return claims
