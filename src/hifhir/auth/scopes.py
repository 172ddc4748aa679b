"""SMART on FHIR system scopes (Backend Services), v1 (`system/Patient.read`, `.write`, `.*`) and v2
(`system/Claim.cr`, `system/*.cruds`): parsing, what a set of scopes allows, and narrowing a request to what a
client may be granted."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

INTERACTIONS = ("create", "read", "update", "delete", "search")
_V2_LETTERS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
_V1 = {
    "read": frozenset({"read", "search"}),
    "write": frozenset({"create", "update", "delete"}),
    "*": frozenset(INTERACTIONS),
}
_V1_BY_SET = {v: k for k, v in _V1.items()}
_SCOPE_RE = re.compile(r"^system/(\*|[A-Z][A-Za-z]{0,63})\.([a-z*]{1,5})$")
_V2_RE = re.compile(r"^c?r?u?d?s?$")  # the letters, each at most once and in this order (SMART v2)
MAX_SCOPES = 100


class ScopeError(ValueError):
    """A scope that is not a SMART system scope hifhir grants (OAuth2 `invalid_scope`)."""


@dataclass(frozen=True, slots=True)
class SmartScope:
    resource_type: str  # a FHIR type or "*"
    interactions: frozenset[str]
    v2: bool  # written with the v2 letters: rendered back the same way

    def allows(self, resource_type: str, interaction: str) -> bool:
        return interaction in self.interactions and self.resource_type in ("*", resource_type)

    def narrow(self, other: SmartScope) -> SmartScope | None:
        """What this (requested) scope keeps when the client may only have `other`."""
        if self.resource_type == "*":
            rtype = other.resource_type
        elif other.resource_type in ("*", self.resource_type):
            rtype = self.resource_type
        else:
            return None
        kept = self.interactions & other.interactions
        return SmartScope(rtype, kept, self.v2) if kept else None

    def covers(self, other: SmartScope) -> bool:
        return self.resource_type in ("*", other.resource_type) and other.interactions <= self.interactions

    def __str__(self) -> str:
        suffix = None if self.v2 else _V1_BY_SET.get(self.interactions)
        if suffix is None:
            suffix = "".join(letter for letter, name in _V2_LETTERS.items() if name in self.interactions)
        return f"system/{self.resource_type}.{suffix}"


def parse_scope(text: str, known_types: Collection[str] | None = None) -> SmartScope:
    match = _SCOPE_RE.match(text)
    if match is None:
        raise ScopeError(f"unsupported scope '{text[:80]}': only SMART system scopes (system/Type.read, "
                         "system/*.cruds) are granted")
    rtype, suffix = match.groups()
    if known_types is not None and rtype != "*" and rtype not in known_types:
        raise ScopeError(f"unknown resource type in scope '{text[:80]}'")
    if suffix in _V1:
        return SmartScope(rtype, _V1[suffix], v2=False)
    if suffix != "*" and _V2_RE.match(suffix):
        return SmartScope(rtype, frozenset(_V2_LETTERS[c] for c in suffix), v2=True)
    raise ScopeError(f"invalid permissions in scope '{text[:80]}' (read, write, * or the letters cruds in order)")


class SmartScopes:
    """The scopes of one client token: an interaction is allowed when some scope allows it."""

    __slots__ = ("_allowed", "scopes")

    def __init__(self, scopes: Iterable[SmartScope]) -> None:
        self.scopes: tuple[SmartScope, ...] = tuple(dict.fromkeys(scopes))
        # Tokens are checked on every request: the (type, interaction) answers are precomputed per type.
        self._allowed: dict[str, frozenset[str]] = {}
        for scope in self.scopes:
            self._allowed[scope.resource_type] = self._allowed.get(scope.resource_type, frozenset()) \
                | scope.interactions

    @classmethod
    def parse(cls, text: str, known_types: Collection[str] | None = None) -> SmartScopes:
        parts = text.split()
        if len(parts) > MAX_SCOPES:
            raise ScopeError("too many scopes")
        return cls(parse_scope(p, known_types) for p in parts)

    def allows(self, resource_type: str, interaction: str) -> bool:
        return interaction in self._allowed.get(resource_type, ()) or interaction in self._allowed.get("*", ())

    def narrowed_to(self, allowed: SmartScopes) -> SmartScopes:
        """The requested scopes (self) cut down to what `allowed` permits: `system/*.read` asked by a client allowed
        `system/Patient.read` becomes `system/Patient.read`."""
        kept: list[SmartScope] = []
        for wanted in self.scopes:
            for granted in allowed.scopes:
                part = wanted.narrow(granted)
                if part is not None:
                    kept.append(part)
        # Drop what another kept scope already covers (`system/Patient.read` beside `system/*.read`).
        unique = list(dict.fromkeys(kept))
        return SmartScopes(s for i, s in enumerate(unique)
                           if not any(o.covers(s) and (o != s) and (not s.covers(o) or j < i)
                                      for j, o in enumerate(unique)))

    def __bool__(self) -> bool:
        return bool(self.scopes)

    def __str__(self) -> str:
        return " ".join(str(s) for s in self.scopes)

    def __repr__(self) -> str:
        return f"SmartScopes({str(self)!r})"
