"""Users, roles and openIMIS rights: who is calling and what they may do."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from hifhir.auth.passwords import hash_password, verify_password
from hifhir.auth.scope import load_scope
from hifhir.store.tables import app_user, role, role_right, user_role

IMIS_ADMIN_SYSTEM_FLAG = 64  # openIMIS "IMIS Administrator" system role: every right check passes
_PRINCIPAL_TTL_S = 30.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an interactive user, an officer, a claim administrator, or a system client (OAuth2)."""

    username: str
    rights: frozenset[int]
    is_admin: bool
    user_pk: int = 0
    user_type: str = "interactive"  # interactive | officer | claim_admin | technical (app_user.user_type)
    # The location scope (auth/scope.py fills it): None = every location (administrators, national users, system
    # clients); otherwise the pks of the locations whose data this user may see.
    locations: frozenset[int] | None = None
    hf_pk: int | None = None  # claim administrators: only this facility's claims
    location_ancestors: frozenset[int] = frozenset()  # the scope's ancestors: their Location resources only
    client_id: str | None = None  # set when an OAuth2 client calls (auth/oauth.py)
    # SMART system scopes granted to a client's token (auth/scopes.SmartScopes; None for users): an interaction
    # needs both the right and a scope that allows it.
    scopes: Any = None
    # Tokens issued before this instant (epoch seconds) are refused (auth/sessions.py): a revocation.
    tokens_valid_after: int = 0

    def has(self, right: int | None) -> bool:
        return right is None or self.is_admin or right in self.rights


class PrincipalCache:
    """Rights change rarely; a short TTL keeps one DB query off every request."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def get(self, username: str) -> Principal | None:
        hit = self._cache.get(username)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        with self._engine.connect() as conn:
            principal = load_principal(conn, username)
        self._cache[username] = (now + _PRINCIPAL_TTL_S, principal)
        return principal

    def clear(self) -> None:
        self._cache.clear()


def load_principal(conn: Connection, username: str) -> Principal | None:
    user = conn.execute(
        select(app_user.c.pk, app_user.c.tokens_valid_after, app_user.c.user_type, app_user.c.hf_pk,
               app_user.c.officer_pk, app_user.c.claim_admin_pk)
        .where(app_user.c.username == username, app_user.c.active.is_(True))
    ).first()
    if user is None:
        return None
    rows = conn.execute(
        select(role.c.is_system, role_right.c.right_code)
        .select_from(user_role.join(role, role.c.pk == user_role.c.role_pk).outerjoin(
            role_right, role_right.c.role_pk == role.c.pk))
        .where(user_role.c.user_pk == user.pk, role.c.is_blocked.is_(False))
    ).all()
    rights = frozenset(r.right_code for r in rows if r.right_code is not None)
    is_admin = any((r.is_system or 0) & IMIS_ADMIN_SYSTEM_FLAG for r in rows)
    locations, ancestors, hf_pk = load_scope(conn, user, is_admin)
    return Principal(username, rights, is_admin, user_pk=int(user.pk), user_type=user.user_type or "interactive",
                     locations=locations, location_ancestors=ancestors, hf_pk=hf_pk,
                     tokens_valid_after=int(user.tokens_valid_after or 0))


def authenticate(conn: Connection, username: str, password: str) -> bool:
    # Technical users act only through their OAuth2 clients: a password login would escape the clients' scopes.
    row = conn.execute(
        select(app_user.c.password_hash).where(app_user.c.username == username, app_user.c.active.is_(True),
                                               app_user.c.user_type != "technical")
    ).first()
    if row is None:
        verify_password(_DUMMY_HASH, password)  # same cost whether or not the user exists
        return False
    return verify_password(row.password_hash, password)


_DUMMY_HASH = hash_password("not-a-real-password")


def ensure_role(conn: Connection, name: str, is_system: int, rights: list[int]) -> int:
    existing = conn.execute(select(role.c.pk).where(role.c.name == name)).scalar()
    if existing is not None:
        return int(existing)
    pk = conn.execute(insert(role).values(name=name, is_system=is_system)).inserted_primary_key[0]
    if rights:
        conn.execute(insert(role_right), [{"role_pk": pk, "right_code": r} for r in sorted(set(rights))])
    return int(pk)


def create_user(
    conn: Connection,
    username: str,
    password: str,
    *,
    roles: list[str],
    last_name: str = "",
    other_names: str = "",
    email: str | None = None,
    password_hash: str | None = None,
) -> int:
    if conn.execute(select(app_user.c.pk).where(app_user.c.username == username)).first() is not None:
        raise ValueError(f"user {username!r} already exists")
    pk = conn.execute(
        insert(app_user).values(
            id=str(uuid.uuid4()),
            username=username,
            password_hash=password_hash or hash_password(password),
            last_name=last_name,
            other_names=other_names,
            email=email,
        )
    ).inserted_primary_key[0]
    for role_name in roles:
        role_pk = conn.execute(select(role.c.pk).where(role.c.name == role_name)).scalar()
        if role_pk is None:
            raise ValueError(f"unknown role {role_name!r}")
        conn.execute(insert(user_role).values(user_pk=pk, role_pk=role_pk))
    return int(pk)
