"""OAuth2 clients (system integrations): registration, their keys and secrets, and the Principal a client token
acts as — the client's technical user (its roles' rights) narrowed to the scopes the token was granted."""

from __future__ import annotations

import dataclasses
import functools
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from sqlalchemy import Connection, insert, select, update

from hifhir.auth import epoch
from hifhir.auth.passwords import hash_password
from hifhir.auth.scopes import ScopeError, SmartScopes
from hifhir.auth.users import Principal, load_principal
from hifhir.store.tables import app_user, oauth_client

# SMART Backend Services: the algorithms an assertion may be signed with, and the key type each needs.
SIGNING_ALGORITHMS = {"RS384": "RSA", "ES384": "EC"}
_MIN_RSA_BITS = 2048
_CLIENT_ID_MAX = 100


class ClientError(ValueError):
    """A client registration refused (bad id, scopes or key set); the message says why."""


@functools.cache
def fhir_resource_types() -> frozenset[str]:
    """Every FHIR R4 resource type: a scope naming anything else is refused."""
    from hifhir.fhir.validation.terminology import valueset_codes

    codes = valueset_codes("http://hl7.org/fhir/ValueSet/resource-types") or set()
    return frozenset(code for _system, code in codes)


def parse_scopes(text: str) -> SmartScopes:
    return SmartScopes.parse(text, fhir_resource_types())


@dataclass(frozen=True, slots=True)
class Client:
    pk: int
    client_id: str
    username: str  # the technical user it acts as
    user_active: bool
    secret_hash: str | None
    jwks: str | None
    scopes: str
    active: bool


def find_client(conn: Connection, client_id: str) -> Client | None:
    if len(client_id) > _CLIENT_ID_MAX or "\x00" in client_id:  # no client has one (PostgreSQL refuses NUL in text)
        return None
    row = conn.execute(
        select(oauth_client.c.pk, oauth_client.c.client_id, app_user.c.username, app_user.c.active.label("user_active"),
               oauth_client.c.secret_hash, oauth_client.c.jwks, oauth_client.c.scopes, oauth_client.c.active)
        .select_from(oauth_client.join(app_user, app_user.c.pk == oauth_client.c.user_pk))
        .where(oauth_client.c.client_id == client_id)
    ).first()
    return None if row is None else Client(**row._mapping)


def load_client_principal(conn: Connection, client_id: str, scope: str) -> Principal | None:
    """None when the client is unknown or disabled, or its technical user is disabled: its tokens stop working."""
    client = find_client(conn, client_id)
    if client is None or not client.active:
        return None
    principal = load_principal(conn, client.username)
    if principal is None:
        return None
    try:
        scopes = parse_scopes(scope)
    except ScopeError:
        return None
    return dataclasses.replace(principal, client_id=client.client_id, scopes=scopes, user_type="technical")


def signing_keys(client: Client, alg: str, kid: str | None) -> list[Any]:
    """The public keys of the client's JWK set that may have signed an assertion with `alg` (and `kid`)."""
    if not client.jwks:
        return []
    keys = []
    for jwk in orjson.loads(client.jwks).get("keys", []):
        if jwk.get("kty") != SIGNING_ALGORITHMS.get(alg) or (kid is not None and jwk.get("kid") != kid):
            continue
        if jwk.get("alg") not in (None, alg) or jwk.get("use") not in (None, "sig"):
            continue
        try:
            keys.append(jwt.PyJWK(jwk, alg).key)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # checked at registration; a key this library version cannot read signs nothing
    return keys


def check_jwks(text: str) -> str:
    """A JWK set of public RSA (≥ 2048 bits) or P-384 EC keys, returned compact; ClientError otherwise."""
    try:
        jwks = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ClientError("the JWK set is not JSON") from None
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ClientError('a JWK set is an object {"keys": [...]} with at least one key')
    for jwk in keys:
        if not isinstance(jwk, dict):
            raise ClientError("each key of the JWK set is an object")
        if "d" in jwk:
            raise ClientError("the JWK set holds a private key: register only the public keys")
        kty = jwk.get("kty")
        alg = jwk.get("alg") or ("RS384" if kty == "RSA" else "ES384")
        if SIGNING_ALGORITHMS.get(alg) != kty:
            raise ClientError(f"keys must be RSA (RS384) or EC P-384 (ES384), not {str(kty)[:10]} {str(alg)[:10]}")
        try:
            key = jwt.PyJWK(jwk, alg).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            raise ClientError("a key of the JWK set cannot be read") from None
        if kty == "RSA" and key.key_size < _MIN_RSA_BITS:
            raise ClientError(f"RSA keys need at least {_MIN_RSA_BITS} bits")
        if kty == "EC" and jwk.get("crv") != "P-384":
            raise ClientError("EC keys must be on the P-384 curve (ES384)")
    return orjson.dumps(jwks).decode()


def create_client(conn: Connection, client_id: str, username: str, scopes: str, *, jwks: str | None = None,
                  name: str = "") -> str | None:
    """Register a client acting as the technical user `username`; returns its secret (shown once, stored hashed)
    when it has no JWK set, None otherwise."""
    if not client_id or len(client_id) > _CLIENT_ID_MAX or not client_id.isprintable() or " " in client_id \
            or ":" in client_id:
        raise ClientError(f"a client id is 1 to {_CLIENT_ID_MAX} printable characters without spaces or ':'")
    if find_client(conn, client_id) is not None:
        raise ClientError(f"client '{client_id}' already exists")
    user = conn.execute(select(app_user.c.pk, app_user.c.user_type).where(app_user.c.username == username)).first()
    if user is None:
        raise ClientError(f"no user '{username}'")
    if user.user_type != "technical":
        raise ClientError(f"user '{username}' is not a technical user (create it with --type technical)")
    try:
        allowed = parse_scopes(scopes)
    except ScopeError as exc:
        raise ClientError(str(exc)) from None
    if not allowed:
        raise ClientError("a client needs at least one scope (e.g. system/*.read)")
    secret = None if jwks else secrets.token_urlsafe(32)
    conn.execute(insert(oauth_client).values(
        client_id=client_id, name=name, user_pk=user.pk, scopes=str(allowed),
        secret_hash=hash_password(secret) if secret else None, jwks=check_jwks(jwks) if jwks else None,
        created=int(time.time())))
    return secret


def set_client_active(conn: Connection, client_id: str, active: bool) -> None:
    done = conn.execute(update(oauth_client).where(oauth_client.c.client_id == client_id).values(active=active))
    if not done.rowcount:
        raise ClientError(f"no client '{client_id}'")
    epoch.bump(conn)


def list_clients(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(oauth_client.c.client_id, app_user.c.username, oauth_client.c.scopes, oauth_client.c.active,
               oauth_client.c.jwks.is_not(None).label("has_jwks"))
        .select_from(oauth_client.join(app_user, app_user.c.pk == oauth_client.c.user_pk))
        .order_by(oauth_client.c.client_id)
    ).all()
    return [{"clientId": r.client_id, "user": r.username, "scopes": r.scopes, "active": bool(r.active),
             "authentication": "private_key_jwt" if r.has_jwks else "client_secret"} for r in rows]
