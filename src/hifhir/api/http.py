"""A minimal HTTP request/response layer over raw ASGI (the hot path avoids framework overhead)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl

import orjson

from hifhir.fhir.errors import FhirError, operation_outcome

FHIR_JSON = "application/fhir+json"
JSON = "application/json"


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    raw_query: str
    headers: dict[str, str]
    body: bytes = b""
    scheme: str = "http"
    host: str = "127.0.0.1"
    _query: list[tuple[str, str]] | None = None
    principal: Any = None  # the authenticated caller (auth.users.Principal), once known: the audit trail's "who"

    @property
    def query(self) -> list[tuple[str, str]]:
        if self._query is None:
            try:
                self._query = parse_qsl(self.raw_query, keep_blank_values=True, strict_parsing=False,
                                        max_num_fields=200)
            except ValueError:
                raise FhirError.one(400, "invalid", "Too many query parameters") from None
        return self._query

    def query_value(self, name: str) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str | None = FHIR_JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    # (type, id, version) of each resource the interaction read, wrote or returned, for the audit trail (audit/);
    # None: the interaction reported nothing (the resource the path names stands in).
    audit: list[tuple[str, str, int | None]] | None = None


def json_response(status: int, payload: Any, content_type: str = FHIR_JSON, **headers: str) -> HttpResponse:
    extra = [(k.replace("_", "-"), v) for k, v in headers.items()]
    return HttpResponse(status, orjson.dumps(payload), content_type, extra)


def outcome_response(error: FhirError, content_type: str = FHIR_JSON) -> HttpResponse:
    resp = json_response(error.status, operation_outcome(error.issues), content_type)
    resp.headers.extend(error.headers.items())
    return resp


def http_date(epoch_us: int) -> str:
    """The Last-Modified form of an instant (RFC 9110 IMF-fixdate, whole seconds)."""
    return _http_date_of_second(epoch_us // 1_000_000)


@functools.lru_cache(maxsize=256)  # the writes of one second share their Last-Modified: formatdate costs ~10 µs
def _http_date_of_second(second: int) -> str:
    return formatdate(second, usegmt=True)


class BodyTooLarge(Exception):
    pass


MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 16 * 1024
MAX_QUERY_BYTES = 8 * 1024


def check_request_size(raw_headers: list[tuple[bytes, bytes]], raw_query: str) -> None:
    """Requests no client needs are refused before any work: too many or too large headers (431), an over-long
    query string (414; a long search goes in a POST _search form body, under the body limit)."""
    if len(raw_headers) > MAX_HEADER_COUNT or sum(len(k) + len(v) for k, v in raw_headers) > MAX_HEADER_BYTES:
        raise FhirError.one(431, "too-costly", f"Request headers too large (at most {MAX_HEADER_COUNT} headers, "
                            f"{MAX_HEADER_BYTES // 1024} KB in total)")
    if len(raw_query) > MAX_QUERY_BYTES:
        raise FhirError.one(414, "too-costly", f"Query string longer than {MAX_QUERY_BYTES // 1024} KB; send long "
                            "searches as POST <type>/_search with a form body")


async def read_body(receive: Any, limit: int, declared: str | None) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


# On every response: an API answer is never a page to render, frame or sniff, and nothing is cached along the way
# (answers carry personal data; a response that sets its own Cache-Control keeps it).
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
)
_NO_STORE = (b"cache-control", b"no-store")
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


async def send_response(send: Any, resp: HttpResponse, *, https: bool = False,
                        extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-length", str(len(resp.body)).encode())]
    if resp.content_type and resp.body:
        ctype = resp.content_type
        if ctype.endswith("json"):
            ctype += "; charset=utf-8"
        headers.append((b"content-type", ctype.encode()))
    headers.extend((k.lower().encode(), v.encode("latin-1", "replace")) for k, v in resp.headers)
    headers.extend(SECURITY_HEADERS)
    if not any(k == b"cache-control" for k, _v in headers):
        headers.append(_NO_STORE)
    if https:
        headers.append(_HSTS)
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": resp.body})
