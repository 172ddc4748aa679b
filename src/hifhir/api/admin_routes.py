"""The JSON administration API for administrators (`/api/admin/…`): users and roles, with the same rules as the
`hifhir user|role` commands (auth/admin.py). Users need 121701–121704, roles 122001–122004; system clients (OAuth2
tokens) are refused: their scopes cover FHIR resources only. The rights are the matrix's (auth/matrix.py rows
admin/users and admin/roles). Errors are OperationOutcomes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import Connection, Engine

from hifhir.api.http import JSON, HttpResponse, json_response
from hifhir.auth import admin, matrix
from hifhir.auth.users import Principal
from hifhir.fhir.errors import FhirError, invalid
from hifhir.store.db import transaction

ADMIN_BASE = "/api/admin"
_INTERACTIONS = {"GET": "read", "POST": "create", "PATCH": "update"}  # the matrix's columns (auth/matrix.py)
_ISSUE_CODES = {400: "invalid", 404: "not-found", 409: "conflict"}
_NEW_USER_FIELDS = {"username": str, "password": str, "type": str, "roles": list, "districts": list,
                    "officer": str, "claimAdmin": str, "healthFacility": str, "lastName": str, "otherNames": str,
                    "email": str, "language": str}
_USER_PATCH_FIELDS = {"active": bool, "roles": list, "districts": list, "password": str}
_NEW_ROLE_FIELDS = {"name": str, "rights": list}
_ROLE_PATCH_FIELDS = {"rights": list, "addRights": list, "removeRights": list, "blocked": bool}


class AdminApi:
    """One request's context: the database, the caller, the policy settings, and how to drop this process's auth
    caches once a change is committed."""

    def __init__(self, engine: Engine, principal: Principal, password_min_length: int,
                 forget: Callable[[], None]) -> None:
        self.engine = engine
        self.principal = principal
        self.min_length = password_min_length
        self.forget = forget

    def handle(self, method: str, segments: list[str], body: bytes) -> HttpResponse:
        if self.principal.scopes is not None:
            raise FhirError.one(403, "forbidden", "System clients cannot use the administration API")
        if segments[:1] == ["users"]:
            return self._users(method, segments[1:], body)
        if segments[:1] == ["roles"]:
            return self._roles(method, segments[1:], body)
        raise FhirError.one(404, "not-found", "Unknown administration path")

    # --- users ------------------------------------------------------------------------------------------------------

    def _users(self, method: str, rest: list[str], body: bytes) -> HttpResponse:
        if len(rest) == 0 and method in ("GET", "POST"):
            self._require("admin/users", method)
            if method == "GET":
                return self._read(lambda conn: {"users": admin.list_users(conn)})
            payload = _object(body, _NEW_USER_FIELDS, required=("username",))
            new = admin.NewUser(
                username=payload["username"], password=payload.get("password", ""), user_type=payload.get("type"),
                roles=_strings(payload, "roles"), districts=_strings(payload, "districts"),
                officer=payload.get("officer"), claim_admin=payload.get("claimAdmin"),
                hf=payload.get("healthFacility"), last_name=payload.get("lastName", ""),
                other_names=payload.get("otherNames", ""), email=payload.get("email"),
                language=payload.get("language", "en"))
            return self._write(lambda conn: admin.create_account(conn, new, min_length=self.min_length),
                               lambda conn: admin.get_user(conn, new.username), status=201)
        if len(rest) == 1 and method in ("GET", "PATCH"):
            name = rest[0]
            self._require("admin/users", method)
            if method == "GET":
                return self._read(lambda conn: admin.get_user(conn, name))
            payload = _object(body, _USER_PATCH_FIELDS)
            if payload.get("active") is False and name == self.principal.username:
                raise FhirError.one(409, "conflict", "You cannot disable your own account")
            return self._write(lambda conn: self._patch_user(conn, name, payload),
                               lambda conn: admin.get_user(conn, name))
        if len(rest) == 2 and rest[1] == "revoke-tokens" and method == "POST":
            name = rest[0]
            self._require("admin/users", "PATCH")
            return self._write(lambda conn: admin.revoke_tokens(conn, name), lambda conn: admin.get_user(conn, name))
        raise _not_here(method, len(rest) <= 1 or (len(rest) == 2 and rest[1] == "revoke-tokens"))

    def _patch_user(self, conn: Connection, name: str, payload: dict[str, Any]) -> None:
        admin.user_pk(conn, name)  # 404 before anything else
        if "password" in payload:
            admin.set_password(conn, name, payload["password"], min_length=self.min_length)
        if "roles" in payload:
            admin.change_roles(conn, name, replace=_strings(payload, "roles"))
        if "districts" in payload:
            admin.set_districts(conn, name, _strings(payload, "districts"))
        if "active" in payload:
            admin.set_active(conn, name, payload["active"])

    # --- roles ------------------------------------------------------------------------------------------------------

    def _roles(self, method: str, rest: list[str], body: bytes) -> HttpResponse:
        if len(rest) == 0 and method in ("GET", "POST"):
            self._require("admin/roles", method)
            if method == "GET":
                return self._read(lambda conn: {"roles": admin.list_roles(conn)})
            payload = _object(body, _NEW_ROLE_FIELDS, required=("name",))
            name = payload["name"]
            return self._write(lambda conn: admin.create_role(conn, name, _rights(payload, "rights")),
                               lambda conn: admin.get_role(conn, name.strip()), status=201)
        if len(rest) == 1 and method in ("GET", "PATCH"):
            name = rest[0]
            self._require("admin/roles", method)
            if method == "GET":
                return self._read(lambda conn: admin.get_role(conn, name))
            payload = _object(body, _ROLE_PATCH_FIELDS)
            return self._write(
                lambda conn: admin.change_role(
                    conn, name, add=_rights(payload, "addRights"), remove=_rights(payload, "removeRights"),
                    replace=_rights(payload, "rights") if "rights" in payload else None,
                    blocked=payload.get("blocked")),
                lambda conn: admin.get_role(conn, name))
        raise _not_here(method, len(rest) <= 1)

    # --- plumbing ---------------------------------------------------------------------------------------------------

    def _require(self, subject: str, method: str) -> None:
        interaction = _INTERACTIONS[method]
        matrix.require(self.principal, subject, interaction, f"{interaction} {subject.removeprefix('admin/')}")

    def _read(self, produce: Callable[[Connection], Any]) -> HttpResponse:
        try:
            with transaction(self.engine, write=False) as conn:
                return json_response(200, produce(conn), JSON)
        except admin.AdminError as exc:
            raise _error(exc) from None

    def _write(self, change: Callable[[Connection], Any], produce: Callable[[Connection], Any],
               status: int = 200) -> HttpResponse:
        try:
            with transaction(self.engine, write=True) as conn:
                change(conn)
                result = produce(conn)
        except admin.AdminError as exc:
            raise _error(exc) from None
        self.forget()
        return json_response(status, result, JSON)


def _object(body: bytes, fields: dict[str, type], required: tuple[str, ...] = ()) -> dict[str, Any]:
    try:
        payload = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise invalid("The body is not JSON") from None
    if not isinstance(payload, dict):
        raise invalid("The body is a JSON object")
    unknown = sorted(set(payload) - set(fields))
    if unknown:
        raise invalid(f"Unknown field '{str(unknown[0])[:40]}' (known: {', '.join(sorted(fields))})")
    for key, value in payload.items():
        kind = fields[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise invalid(f"Field '{key}' must be a {'list' if kind is list else kind.__name__}")
    missing = [k for k in required if not payload.get(k)]
    if missing:
        raise invalid(f"Field '{missing[0]}' is required")
    return payload


def _strings(payload: dict[str, Any], key: str) -> list[str]:
    values = payload.get(key, [])
    if not all(isinstance(v, str) for v in values):
        raise invalid(f"Field '{key}' is a list of strings")
    return list(values)


def _rights(payload: dict[str, Any], key: str) -> list[int]:
    values = payload.get(key, [])
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise invalid(f"Field '{key}' is a list of numeric right codes")
    return list(values)


def _error(exc: admin.AdminError) -> FhirError:
    return FhirError.one(exc.status, _ISSUE_CODES.get(exc.status, "invalid"), str(exc))


def _not_here(method: str, known_path: bool) -> FhirError:
    if known_path:
        return FhirError(405, [{"severity": "error", "code": "not-supported",
                                "diagnostics": f"Method {method[:10]} not allowed here"}])
    return FhirError.one(404, "not-found", "Unknown administration path")
