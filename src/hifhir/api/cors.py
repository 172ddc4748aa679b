"""CORS for browser clients: off unless HIFHIR_CORS_ORIGINS lists the origins allowed to call the API.

A listed origin's requests get Access-Control-Allow-Origin (its own origin echoed, never `*`, since requests carry
an Authorization header) and the response headers a FHIR client reads; its preflight `OPTIONS` is answered 204 before
any authentication. Any other origin gets no CORS header at all, so the browser withholds the answer. `*` allows
every origin and must be configured explicitly (production mode refuses it).
"""

from __future__ import annotations

from hifhir.api.http import HttpResponse

ALLOW_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Accept, If-Match, If-None-Exist, If-None-Match, Prefer"
EXPOSE_HEADERS = "ETag, Location, Content-Location, Last-Modified, Warning"
MAX_AGE_S = "600"

_VARY = (b"vary", b"Origin")
_EXPOSE = (b"access-control-expose-headers", EXPOSE_HEADERS.encode())


class Cors:
    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any_origin = "*" in origins
        self.origins = frozenset(o.lower() for o in origins if o != "*")

    def allows(self, origin: str | None) -> bool:
        return origin is not None and (self.any_origin or origin.lower() in self.origins)

    def headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        """The CORS headers of an ordinary response (Vary: Origin on every one, as the answer depends on it)."""
        if not self.allows(origin):
            return [_VARY]
        assert origin is not None
        return [_VARY, (b"access-control-allow-origin", origin.encode("latin-1", "replace")), _EXPOSE]

    def preflight(self, method: str, headers: dict[str, str]) -> HttpResponse | None:
        """The 204 answer to an allowed origin's preflight; None when this is not one (it is then routed as any
        OPTIONS request, and gets no CORS header)."""
        if method != "OPTIONS" or "access-control-request-method" not in headers:
            return None
        if not self.allows(headers.get("origin")):
            return None
        return HttpResponse(204, b"", None, [
            ("Access-Control-Allow-Methods", ALLOW_METHODS),
            ("Access-Control-Allow-Headers", ALLOW_HEADERS),
            ("Access-Control-Max-Age", MAX_AGE_S),
        ])
