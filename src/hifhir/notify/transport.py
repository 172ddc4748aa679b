"""The POST of a notification, to the address the allow-list checked.

Like outbox/http.py (no proxy from the environment, no redirects, a size cap on the answer, one kept-alive
connection per thread and endpoint), but the connection is made to an address `endpoints.resolve` checked, never by
a second lookup of the name: a DNS answer that changes between the check and the connect (rebinding) cannot send a
notification to an internal address. https still verifies the certificate against the URL's host name (SNI)."""

from __future__ import annotations

import http.client
import ssl
import threading
from typing import Any

from hifhir.notify.endpoints import IPAddress, Target, resolve
from hifhir.outbox.http import MAX_ANSWER_BYTES, Answer, HttpFailure

_local = threading.local()
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest)
_TLS = ssl.create_default_context()


class _PinnedHTTPS(http.client.HTTPSConnection):
    """TLS to a given address, with the certificate checked for the URL's host name."""

    def __init__(self, address: str, port: int, server_name: str, timeout: float) -> None:
        super().__init__(address, port, timeout=timeout, context=_TLS)
        self._server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)  # type: ignore[attr-defined]


def _key(target: Target) -> tuple[str, str, int]:
    return target.scheme, target.host, target.port


def _cache() -> dict[tuple[str, str, int], http.client.HTTPConnection]:
    found: dict[tuple[str, str, int], http.client.HTTPConnection] = _local.__dict__.setdefault("connections", {})
    return found


def _new_connection(target: Target, address: IPAddress, timeout: float) -> http.client.HTTPConnection:
    if target.scheme == "https":
        return _PinnedHTTPS(str(address), target.port, target.host, timeout)
    return http.client.HTTPConnection(str(address), target.port, timeout=timeout)


def _open(target: Target, timeout: float) -> http.client.HTTPConnection:
    """A new connection to the first checked address that answers (a name may have IPv6 and IPv4 ones)."""
    failure: Exception | None = None
    for address in resolve(target):
        conn = _new_connection(target, address, timeout)
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            failure = exc
            continue
        _cache()[_key(target)] = conn
        return conn
    raise HttpFailure(f"{type(failure).__name__}: {failure}" if failure else "no address")


def _drop(target: Target) -> None:
    conn = _cache().pop(_key(target), None)
    if conn is not None:
        conn.close()


def post(target: Target, body: bytes, headers: dict[str, str], *, timeout: float) -> Answer:
    """POST to a checked endpoint. A kept-alive connection (to an address checked when it was opened) is reused;
    a new one resolves and checks the name first (EndpointRefused). HttpFailure when no answer could be had."""
    sent: dict[str, Any] = {**headers, "Host": target.host_header, "Content-Length": str(len(body))}
    for reused in (True, False):
        conn = _cache().get(_key(target))
        fresh = conn is None or conn.sock is None
        if fresh:  # none yet, or closed after its last answer: a new one, the name resolved and checked again
            _drop(target)
            conn = _open(target, timeout)
        assert conn is not None and conn.sock is not None
        conn.timeout = timeout
        conn.sock.settimeout(timeout)
        try:
            conn.request("POST", target.target, body=body, headers=sent)
            resp = conn.getresponse()
            data = resp.read(MAX_ANSWER_BYTES + 1)
            if len(data) > MAX_ANSWER_BYTES:
                _drop(target)
                raise HttpFailure(f"answer larger than {MAX_ANSWER_BYTES} bytes")
            answer = Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
            if resp.will_close:
                _drop(target)
            return answer
        except _STALE as exc:
            _drop(target)
            # A kept-alive connection the receiver closed meanwhile: once more on a new one.
            if reused and not fresh:
                continue
            raise HttpFailure(f"{type(exc).__name__}: {exc}") from None
        except HttpFailure:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            _drop(target)
            raise HttpFailure(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
    raise AssertionError("not reached")


def close_all() -> None:
    """Close this thread's kept-alive connections (tests; a receiver that restarted)."""
    for key in list(_cache()):
        conn = _cache().pop(key)
        conn.close()
