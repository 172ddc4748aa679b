"""Which endpoints a subscription may reach: the allow-list, checked when a subscription is written and again at
every delivery (the configuration, and what a name resolves to, may have changed since).

Rules (config.NotifyConfig.allow_http, `HIFHIR_NOTIFY_ALLOW_HTTP`):
* `https` to any host; plain `http` only to a host on the allow-list (a name, an IP address or a CIDR network).
* No user name or password in the URL (credentials go in `channel.header`), no fragment.
* Internal addresses — loopback, private, link-local, shared (CGNAT), multicast, reserved, unspecified, and the
  IPv6 forms that embed such an IPv4 address — are refused unless the host (or, for an address, a network on the
  list) is allowed. An address written in the URL is checked when the subscription is written; a name is checked
  when it is resolved, at delivery, and the connection goes to the address that was checked (no second lookup a
  changed DNS answer could divert: transport.py pins it). `localhost` and `*.localhost` count as loopback names.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from hifhir import config

ENDPOINT_MAX = 2000  # the column's length

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class EndpointRefused(Exception):
    """The endpoint may not be reached (the message says why, for the client or for Subscription.error)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A checked endpoint: where to connect and what to send as the request target and Host header."""

    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int
    target: str  # path and query
    host_header: str
    allowed: bool  # on the allow-list: http and internal addresses permitted
    address: IPAddress | None  # the host when it is an IP address


def _address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_internal(ip: IPAddress) -> bool:
    """Not a public unicast address (or an IPv6 address carrying a non-public IPv4 one)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and is_internal(embedded):
            return True
        if ip in _NAT64:
            return is_internal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return (not ip.is_global or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _listed(host: str, ip: IPAddress | None) -> bool:
    """The host, or the address, is on the allow-list (names exactly, addresses exactly or by network)."""
    allow = config.NOTIFY.allow_http
    if host in allow:
        return True
    if ip is None:
        return False
    for entry in allow:
        if "/" in entry:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        elif _address(entry) == ip:
            return True
    return False


def check_endpoint(url: object) -> Target:
    """The endpoint as far as it can be checked without resolving it (EndpointRefused otherwise)."""
    if not isinstance(url, str) or not url.strip():
        raise EndpointRefused("The endpoint must be an http(s) URL")
    if len(url) > ENDPOINT_MAX:
        raise EndpointRefused(f"The endpoint is longer than {ENDPOINT_MAX} characters")
    if any(ord(ch) < 33 or ord(ch) == 127 for ch in url):
        raise EndpointRefused("The endpoint contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EndpointRefused(f"The endpoint is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise EndpointRefused("The endpoint must be an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise EndpointRefused("The endpoint must not carry credentials: send them in channel.header")
    if parts.fragment:
        raise EndpointRefused("The endpoint must not have a fragment")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise EndpointRefused("The endpoint has no host")
    ip = _address(host)
    allowed = _listed(host, ip)
    if scheme == "http" and not allowed:
        raise EndpointRefused(f"Plain http is allowed only to the hosts of HIFHIR_NOTIFY_ALLOW_HTTP; use https "
                              f"(host {host[:100]})")
    if not allowed and (host == "localhost" or host.endswith(".localhost") or (ip is not None and is_internal(ip))):
        raise EndpointRefused(f"The endpoint's host {host[:100]} is an internal address; only the hosts of "
                              "HIFHIR_NOTIFY_ALLOW_HTTP may be")
    default_port = 443 if scheme == "https" else 80
    netloc_host = f"[{host}]" if isinstance(ip, ipaddress.IPv6Address) else host
    host_header = netloc_host if port in (None, default_port) else f"{netloc_host}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port or default_port, target, host_header, allowed, ip)


def resolve(target: Target) -> list[IPAddress]:
    """The addresses to connect to, each checked (EndpointRefused when none may be used)."""
    if target.address is not None:
        return [target.address]
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise EndpointRefused(f"The endpoint's host {target.host[:100]} cannot be resolved: {exc}") from None
    found: list[IPAddress] = []
    for info in infos:
        ip = _address(str(info[4][0]).split("%", 1)[0])
        if ip is not None and ip not in found:
            found.append(ip)
    refused = [ip for ip in found if is_internal(ip) and not target.allowed and not _listed(target.host, ip)]
    if refused:
        # One internal answer refuses the name: a receiver cannot need an internal address beside public ones.
        raise EndpointRefused(f"The endpoint's host {target.host[:100]} resolves to an internal address "
                              f"({refused[0]}); only the hosts of HIFHIR_NOTIFY_ALLOW_HTTP may")
    if not found:
        raise EndpointRefused(f"The endpoint's host {target.host[:100]} has no address")
    return found
