"""User and role administration, shared by the `hifhir user|role` commands and the admin API (api/admin_routes.py).

Every change that narrows what someone may do (disable, revoke, roles, rights, districts) bumps the auth epoch in
its transaction, so that every process drops its cached principals within about a second; the caller drops its own
process's caches at once after the commit."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, select, update

from hifhir.auth import epoch
from hifhir.auth.password_policy import DEFAULT_MIN_LENGTH, WeakPassword, check_password
from hifhir.auth.passwords import hash_password
from hifhir.store.tables import (
    app_user,
    claim_admin,
    health_facility,
    is_current,
    location,
    officer,
    role,
    role_right,
    user_district,
    user_role,
)

USER_TYPES = ("interactive", "officer", "claim_admin", "technical")
_USERNAME_MAX = 50
_ROLE_NAME_MAX = 50
_RIGHT_MIN, _RIGHT_MAX = 100000, 999999
DEFAULT_ROLE = "IMIS Administrator"  # `hifhir user create` of an interactive user without --role (the first admin)


class AdminError(ValueError):
    """A refused administration request: status 400 (invalid), 404 (unknown user or role) or 409 (conflict)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class NewUser:
    username: str
    password: str  # may be empty for a technical user (it never logs in)
    user_type: str | None = None  # None: officer / claim_admin when that link is given, else interactive
    roles: list[str] = field(default_factory=list)
    districts: list[str] = field(default_factory=list)  # location codes of districts
    officer: str | None = None  # officer code
    claim_admin: str | None = None  # claim administrator code
    hf: str | None = None  # health facility code
    last_name: str = ""
    other_names: str = ""
    email: str | None = None
    language: str = "en"


# --- users ----------------------------------------------------------------------------------------------------------


def create_account(conn: Connection, new: NewUser, *, min_length: int = DEFAULT_MIN_LENGTH,
                   default_role: str | None = None) -> int:
    _check_username(new.username)
    user_type = new.user_type or ("officer" if new.officer else "claim_admin" if new.claim_admin else "interactive")
    if user_type not in USER_TYPES:
        raise AdminError(f"user type must be one of {', '.join(USER_TYPES)}")
    if user_type == "officer" and not new.officer:
        raise AdminError("an officer user needs the code of its enrolment officer (--officer)")
    if user_type == "claim_admin" and not new.claim_admin:
        raise AdminError("a claim administrator user needs the code of its claim administrator (--claim-admin)")
    if (new.officer and user_type != "officer") or (new.claim_admin and user_type != "claim_admin"):
        raise AdminError("--officer goes with --type officer, --claim-admin with --type claim_admin")
    if new.districts and user_type != "interactive":
        raise AdminError("districts limit interactive users; officers and claim administrators are limited by "
                         "their villages and facility")
    roles = new.roles or ([default_role] if default_role and user_type == "interactive" else [])
    if not roles and user_type != "interactive":
        raise AdminError("give the user at least one role: its rights come from its roles")
    if conn.execute(select(app_user.c.pk).where(app_user.c.username == new.username)).first() is not None:
        raise AdminError(f"user '{new.username}' already exists", 409)
    password = new.password
    if user_type == "technical" and not password:
        password = secrets.token_urlsafe(32)  # never used: technical users do not log in (their clients do)
    else:
        _check_password(password, new.username, min_length)
    links = {
        "officer_pk": _code_pk(conn, officer, new.officer, "enrolment officer") if new.officer else None,
        "claim_admin_pk": _code_pk(conn, claim_admin, new.claim_admin, "claim administrator")
        if new.claim_admin else None,
        "hf_pk": _code_pk(conn, health_facility, new.hf, "health facility") if new.hf else None,
    }
    district_pks = _district_pks(conn, new.districts)
    role_pks = _role_pks(conn, roles)
    now = int(time.time())
    pk = conn.execute(insert(app_user).values(
        id=str(uuid.uuid4()), username=new.username, password_hash=hash_password(password),
        last_name=new.last_name[:100], other_names=new.other_names[:100], email=new.email, language=new.language[:5],
        user_type=user_type, password_changed=now, **links)).inserted_primary_key[0]
    if role_pks:
        conn.execute(insert(user_role), [{"user_pk": pk, "role_pk": r} for r in role_pks])
    if district_pks:
        conn.execute(insert(user_district), [{"user_pk": pk, "location_pk": d} for d in district_pks])
    return int(pk)


def user_pk(conn: Connection, username: str) -> int:
    pk = None if len(username) > _USERNAME_MAX else conn.execute(
        select(app_user.c.pk).where(app_user.c.username == username)).scalar()
    if pk is None:
        raise AdminError(f"no user '{username[:_USERNAME_MAX]}'", 404)
    return int(pk)


def set_active(conn: Connection, username: str, active: bool) -> None:
    conn.execute(update(app_user).where(app_user.c.pk == user_pk(conn, username)).values(active=active))
    epoch.bump(conn)


def revoke_tokens(conn: Connection, username: str) -> int:
    """Refuse every token issued so far to the user (tokens carry whole seconds: those of the current second too).
    Returns the instant from which tokens are accepted again."""
    after = int(time.time()) + 1
    conn.execute(update(app_user).where(app_user.c.pk == user_pk(conn, username)).values(tokens_valid_after=after))
    epoch.bump(conn)
    return after


def set_password(conn: Connection, username: str, password: str, *, min_length: int = DEFAULT_MIN_LENGTH) -> None:
    pk = user_pk(conn, username)
    _check_password(password, username, min_length)
    conn.execute(update(app_user).where(app_user.c.pk == pk).values(
        password_hash=hash_password(password), password_changed=int(time.time())))


def change_roles(conn: Connection, username: str, *, add: Sequence[str] = (), remove: Sequence[str] = (),
                 replace: Sequence[str] | None = None) -> None:
    pk = user_pk(conn, username)
    current = set(conn.execute(select(user_role.c.role_pk).where(user_role.c.user_pk == pk)).scalars())
    wanted = set(_role_pks(conn, replace)) if replace is not None else current
    wanted = (wanted | set(_role_pks(conn, add))) - set(_role_pks(conn, remove))
    if wanted == current:
        return
    if current - wanted:
        conn.execute(delete(user_role).where(user_role.c.user_pk == pk, user_role.c.role_pk.in_(current - wanted)))
    if wanted - current:
        conn.execute(insert(user_role), [{"user_pk": pk, "role_pk": r} for r in sorted(wanted - current)])
    epoch.bump(conn)


def set_districts(conn: Connection, username: str, codes: Sequence[str]) -> None:
    pk = user_pk(conn, username)
    user_type = conn.execute(select(app_user.c.user_type).where(app_user.c.pk == pk)).scalar()
    if codes and user_type != "interactive":
        raise AdminError("districts limit interactive users only")
    pks = _district_pks(conn, codes)
    conn.execute(delete(user_district).where(user_district.c.user_pk == pk))
    if pks:
        conn.execute(insert(user_district), [{"user_pk": pk, "location_pk": d} for d in pks])
    epoch.bump(conn)


def get_user(conn: Connection, username: str) -> dict[str, Any]:
    found = _users(conn, app_user.c.pk == user_pk(conn, username))
    return found[0]


def list_users(conn: Connection) -> list[dict[str, Any]]:
    return _users(conn, None)


def _users(conn: Connection, where: Any) -> list[dict[str, Any]]:
    query = (
        select(app_user, officer.c.code.label("officer_code"), claim_admin.c.code.label("claim_admin_code"),
               health_facility.c.code.label("hf_code"))
        .select_from(app_user.outerjoin(officer, officer.c.pk == app_user.c.officer_pk)
                     .outerjoin(claim_admin, claim_admin.c.pk == app_user.c.claim_admin_pk)
                     .outerjoin(health_facility, health_facility.c.pk == app_user.c.hf_pk))
        .order_by(app_user.c.username)
    )
    rows = conn.execute(query if where is None else query.where(where)).all()
    pks = [r.pk for r in rows]
    roles: dict[int, list[str]] = {}
    districts: dict[int, list[str]] = {}
    if pks:
        for user, name in conn.execute(select(user_role.c.user_pk, role.c.name)
                                       .join(role, role.c.pk == user_role.c.role_pk)
                                       .where(user_role.c.user_pk.in_(pks)).order_by(role.c.name)):
            roles.setdefault(user, []).append(name)
        for user, code in conn.execute(select(user_district.c.user_pk, location.c.code)
                                       .join(location, location.c.pk == user_district.c.location_pk)
                                       .where(user_district.c.user_pk.in_(pks)).order_by(location.c.code)):
            districts.setdefault(user, []).append(code)
    return [{
        "username": r.username,
        "type": r.user_type,
        "active": bool(r.active),
        "lastName": r.last_name,
        "otherNames": r.other_names,
        "email": r.email,
        "language": r.language,
        "roles": roles.get(r.pk, []),
        "districts": districts.get(r.pk, []),
        "officer": r.officer_code,
        "claimAdmin": r.claim_admin_code,
        "healthFacility": r.hf_code,
        "passwordChanged": _instant(r.password_changed),
        "tokensValidAfter": _instant(r.tokens_valid_after),
    } for r in rows]


# --- roles ----------------------------------------------------------------------------------------------------------


def list_roles(conn: Connection) -> list[dict[str, Any]]:
    return _roles(conn, None)


def get_role(conn: Connection, name: str) -> dict[str, Any]:
    return _roles(conn, role.c.pk == _role_pk(conn, name))[0]


def create_role(conn: Connection, name: str, rights: Iterable[int]) -> int:
    name = name.strip()
    if not name or len(name) > _ROLE_NAME_MAX or not name.isprintable():
        raise AdminError(f"a role name is 1 to {_ROLE_NAME_MAX} printable characters")
    if conn.execute(select(role.c.pk).where(role.c.name == name)).first() is not None:
        raise AdminError(f"role '{name}' already exists", 409)
    codes = _check_rights(rights)
    pk = int(conn.execute(insert(role).values(name=name, is_system=0)).inserted_primary_key[0])
    if codes:
        conn.execute(insert(role_right), [{"role_pk": pk, "right_code": c} for c in codes])
    return pk


def change_role(conn: Connection, name: str, *, add: Iterable[int] = (), remove: Iterable[int] = (),
                replace: Iterable[int] | None = None, blocked: bool | None = None) -> None:
    pk = _role_pk(conn, name)
    current = set(conn.execute(select(role_right.c.right_code).where(role_right.c.role_pk == pk)).scalars())
    wanted = set(_check_rights(replace)) if replace is not None else set(current)
    wanted = (wanted | set(_check_rights(add))) - set(_check_rights(remove))
    changed = False
    if current - wanted:
        conn.execute(delete(role_right).where(role_right.c.role_pk == pk,
                                              role_right.c.right_code.in_(current - wanted)))
        changed = True
    if wanted - current:
        conn.execute(insert(role_right), [{"role_pk": pk, "right_code": c} for c in sorted(wanted - current)])
        changed = True
    if blocked is not None:
        done = conn.execute(update(role).where(role.c.pk == pk, role.c.is_blocked.is_not(blocked))
                            .values(is_blocked=blocked))
        changed = changed or bool(done.rowcount)
    if changed:
        epoch.bump(conn)


def parse_rights(text: str) -> list[int]:
    """`101001,101002` (commas or spaces) → the right codes; AdminError on anything else."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not all(p.isdigit() for p in parts):
        raise AdminError("rights are numeric openIMIS right codes, e.g. 101001,101002")
    return _check_rights(int(p) for p in parts)


def _roles(conn: Connection, where: Any) -> list[dict[str, Any]]:
    users = select(func.count()).where(user_role.c.role_pk == role.c.pk).scalar_subquery()
    query = select(role.c.pk, role.c.name, role.c.is_system, role.c.is_blocked, users.label("users")).order_by(
        role.c.name)
    rows = conn.execute(query if where is None else query.where(where)).all()
    rights: dict[int, list[int]] = {}
    if rows:
        for role_pk, code in conn.execute(select(role_right.c.role_pk, role_right.c.right_code)
                                          .where(role_right.c.role_pk.in_([r.pk for r in rows]))
                                          .order_by(role_right.c.right_code)):
            rights.setdefault(role_pk, []).append(code)
    return [{"name": r.name, "system": bool(r.is_system), "blocked": bool(r.is_blocked), "users": int(r.users),
             "rights": rights.get(r.pk, [])} for r in rows]


# --- helpers --------------------------------------------------------------------------------------------------------


def _check_username(username: str) -> None:
    if not username or len(username) > _USERNAME_MAX or not username.isprintable() \
            or any(c.isspace() or c == ":" for c in username):
        raise AdminError(f"a user name is 1 to {_USERNAME_MAX} printable characters without spaces or ':'")


def _check_password(password: str, username: str, min_length: int) -> None:
    try:
        check_password(password, username, min_length)
    except WeakPassword as exc:
        raise AdminError(str(exc)) from None


def _check_rights(rights: Iterable[int] | None) -> list[int]:
    codes = list(rights or ())
    if not all(isinstance(c, int) and not isinstance(c, bool) and _RIGHT_MIN <= c <= _RIGHT_MAX for c in codes):
        raise AdminError("rights are six-digit openIMIS right codes (e.g. 101001)")
    return sorted(set(codes))


def _role_pk(conn: Connection, name: str) -> int:
    pk = None if len(name) > _ROLE_NAME_MAX else conn.execute(select(role.c.pk).where(role.c.name == name)).scalar()
    if pk is None:
        raise AdminError(f"no role '{name[:_ROLE_NAME_MAX]}'", 404)
    return int(pk)


def _role_pks(conn: Connection, names: Iterable[str] | None) -> list[int]:
    names = list(dict.fromkeys(names or ()))
    if not names:
        return []
    if not all(isinstance(n, str) for n in names):
        raise AdminError("roles are given by name")
    found = dict(conn.execute(select(role.c.name, role.c.pk).where(role.c.name.in_(names))).all())
    missing = [n for n in names if n not in found]
    if missing:
        raise AdminError(f"unknown role '{missing[0][:_ROLE_NAME_MAX]}'")
    return [int(found[n]) for n in names]


def _code_pk(conn: Connection, table: Table, code: str, what: str) -> int:
    pk = conn.execute(select(table.c.pk).where(table.c.code == code, is_current(table))).scalar()
    if pk is None:
        raise AdminError(f"no {what} with code '{code[:50]}'")
    return int(pk)


def _district_pks(conn: Connection, codes: Iterable[str]) -> list[int]:
    codes = list(dict.fromkeys(codes))
    if not codes:
        return []
    if not all(isinstance(c, str) for c in codes):
        raise AdminError("districts are given by location code")
    found = dict(conn.execute(select(location.c.code, location.c.pk).where(
        location.c.code.in_(codes), location.c.type == "D", is_current(location))).all())
    missing = [c for c in codes if c not in found]
    if missing:
        raise AdminError(f"no district with code '{missing[0][:50]}'")
    return [int(found[c]) for c in codes]


def _instant(epoch_s: int | None) -> str | None:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z") if epoch_s else None
