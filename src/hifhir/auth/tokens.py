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

    def issue(self, username: str) -> tuple[str, int]:
        now = int(time.time())
        exp = now + self._lifetime
        claims = {"username": username, "sub": username, "iat": now, "nbf": now, "exp": exp,
                  "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self._secret, algorithm="HS256"), exp

    def verify(self, token: str) -> dict[str, Any] | None:
        cached = self._cache.get(token)
        now = time.time()
        if cached is not None:
            if cached["exp"] > now:
                return cached
            self._cache.pop(token, None)
            return None
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], options={"require": ["exp", "sub"]})
        except jwt.PyJWTError:
            return None
        self._cache[token] = claims
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return claims
