"""A minimal HTTP POST for handlers: stdlib only, no proxy from the environment, no redirects, a size cap on the
answer, and one kept-alive connection per thread and origin (a handler thread delivering many rows to the same
receiver pays the TCP set-up once)."""

from __future__ import annotations

import http.client
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_ANSWER_BYTES = 5 * 1024 * 1024


class HttpFailure(Exception):
    """The request could not be made or the answer not read (connection refused, timeout, too large)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


_local = threading.local()
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest)


def _connection(scheme: str, netloc: str, timeout: float) -> http.client.HTTPConnection:
    cache: dict[tuple[str, str], http.client.HTTPConnection] = _local.__dict__.setdefault("connections", {})
    conn = cache.get((scheme, netloc))
    if conn is None:
        if scheme == "https":
            conn = http.client.HTTPSConnection(netloc, timeout=timeout, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(netloc, timeout=timeout)
        cache[(scheme, netloc)] = conn
    conn.timeout = timeout
    if conn.sock is not None:
        conn.sock.settimeout(timeout)
    return conn


def _drop(scheme: str, netloc: str) -> None:
    cache = _local.__dict__.get("connections", {})
    conn = cache.pop((scheme, netloc), None)
    if conn is not None:
        conn.close()


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Answer:
    """POST `body` to an http(s) URL; HttpFailure when no answer could be had."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HttpFailure(f"not an http(s) URL: {url[:200]}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    for reused in (True, False):
        conn = _connection(parts.scheme, parts.netloc, timeout)
        fresh = conn.sock is None
        try:
            conn.request("POST", target, body=body, headers={**headers, "Content-Length": str(len(body))})
            resp = conn.getresponse()
            data = resp.read(MAX_ANSWER_BYTES + 1)
            if len(data) > MAX_ANSWER_BYTES:
                _drop(parts.scheme, parts.netloc)
                raise HttpFailure(f"answer larger than {MAX_ANSWER_BYTES} bytes")
            answer = Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
            if resp.will_close:
                _drop(parts.scheme, parts.netloc)
            return answer
        except _STALE as exc:
            _drop(parts.scheme, parts.netloc)
            # A kept-alive connection the receiver closed meanwhile: once more on a new one.
            if reused and not fresh:
                continue
            raise HttpFailure(f"{type(exc).__name__}: {exc}") from None
        except HttpFailure:
            raise
        except (OSError, http.client.HTTPException) as exc:
            _drop(parts.scheme, parts.netloc)
            raise HttpFailure(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
    raise AssertionError("not reached")
