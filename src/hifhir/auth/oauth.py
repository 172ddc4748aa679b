"""The OAuth2 token endpoint for system clients: the client-credentials grant (RFC 6749 §4.4) with a client secret
(`client_secret_basic`, `client_secret_post`) or a JWT assertion signed by a key of the client's JWK set
(`private_key_jwt`, SMART Backend Services / RFC 7523), granting SMART system scopes; and the
`.well-known/smart-configuration` document. Errors are RFC 6749 §5.2 objects, raised as OAuthError."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import jwt
from sqlalchemy import Engine, delete, insert
from sqlalchemy.exc import IntegrityError

from hifhir.auth.clients import SIGNING_ALGORITHMS, Client, find_client, parse_scopes, signing_keys
from hifhir.auth.passwords import hash_password, verify_password
from hifhir.auth.scopes import ScopeError
from hifhir.auth.tokens import TokenService
from hifhir.store.db import transaction
from hifhir.store.tables import oauth_assertion

TOKEN_PATH = "/oauth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME_S = 300  # SMART: an assertion expires at most five minutes after it is made
CLOCK_SKEW_S = 10
_JTI_MAX = 200
_MAX_FIELDS = 20
CAPABILITIES = ["client-confidential-symmetric", "client-confidential-asymmetric", "permission-v1",
                "permission-v2"]
SCOPES_SUPPORTED = ["system/*.read", "system/*.write", "system/*.*", "system/*.rs", "system/*.cruds"]
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: `error` code, a description, the HTTP status and headers to answer with."""

    def __init__(self, error: str, description: str, status: int = 400, basic: bool = False) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = {"WWW-Authenticate": 'Basic realm="hifhir"'} if basic else {}

    def payload(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def throttled(headers: dict[str, str]) -> OAuthError:
    """Too many failed client authentications from the caller's address (auth/throttle.py): 429, Retry-After."""
    error = OAuthError("temporarily_unavailable", "Too many failed client authentications; try again later", 429)
    error.headers.update(headers)
    return error


@dataclass(frozen=True, slots=True)
class Grant:
    access_token: str
    expires_in: int
    scope: str
    client_id: str = ""
    username: str = ""  # the client's technical user

    def payload(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "token_type": "bearer", "expires_in": self.expires_in,
                "scope": self.scope}


def parse_form(content_type: str | None, body: bytes) -> dict[str, str]:
    """The token request's parameters: form-encoded, each at most once (RFC 6749 §3.2)."""
    if (content_type or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "The token request is application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=_MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "Malformed form body") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise OAuthError("invalid_request", f"Parameter {key[:40]} is repeated")
        form[key] = value
    return form


def issue_token(engine: Engine, tokens: TokenService, form: dict[str, str], authorization: str | None, *,
                audiences: Collection[str], lifetime_s: int) -> Grant:
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required")
    if grant_type != "client_credentials":
        raise OAuthError("unsupported_grant_type", "Only the client_credentials grant is supported")
    client = _authenticate_client(engine, form, authorization, audiences)
    if not client.user_active:
        raise OAuthError("unauthorized_client", "The client's user is disabled")
    try:
        allowed = parse_scopes(client.scopes)
        requested = form.get("scope", "").strip()
        granted = parse_scopes(requested).narrowed_to(allowed) if requested else allowed
    except ScopeError as exc:
        raise OAuthError("invalid_scope", str(exc)) from None
    if not granted:
        raise OAuthError("invalid_scope", "None of the requested scopes is granted to this client")
    scope = str(granted)
    token, _exp = tokens.issue(client.username, client_id=client.client_id, scope=scope, lifetime_s=lifetime_s)
    return Grant(token, lifetime_s, scope, client.client_id, client.username)


def smart_configuration(root_url: str) -> dict[str, Any]:
    return {
        "token_endpoint": root_url + TOKEN_PATH,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": sorted(SIGNING_ALGORITHMS),
        "scopes_supported": SCOPES_SUPPORTED,
        "capabilities": CAPABILITIES,
    }


# --- client authentication ------------------------------------------------------------------------------------------


def _authenticate_client(engine: Engine, form: dict[str, str], authorization: str | None,
                         audiences: Collection[str]) -> Client:
    scheme, _, credentials = (authorization or "").partition(" ")
    basic = scheme.lower() == "basic"
    methods = [basic, "client_secret" in form, "client_assertion" in form or "client_assertion_type" in form]
    if sum(methods) > 1:
        raise OAuthError("invalid_request", "Use one client authentication method only", basic=basic)
    if basic:
        client_id, secret = _basic_credentials(credentials.strip())
        if form.get("client_id", client_id) != client_id:
            raise OAuthError("invalid_request", "client_id differs from the authenticated client", basic=True)
        return _by_secret(engine, client_id, secret, basic=True)
    if methods[1]:
        return _by_secret(engine, form.get("client_id", ""), form["client_secret"], basic=False)
    if methods[2]:
        return _by_assertion(engine, form, audiences)
    raise OAuthError("invalid_client", "Client authentication is required", 401)


def claimed_client_id(authorization: str | None, body: bytes) -> str | None:
    """Which client a refused token request claimed to be (for the audit trail; never verified, never raises)."""
    scheme, _, credentials = (authorization or "").partition(" ")
    try:
        if scheme.lower() == "basic":
            return _basic_credentials(credentials.strip())[0][:100] or None
        form = dict(parse_qsl(body.decode("utf-8", "replace"), max_num_fields=20))
        if form.get("client_id"):
            return form["client_id"][:100]
        if form.get("client_assertion"):
            issuer = jwt.decode(form["client_assertion"], options={"verify_signature": False}).get("iss")
            return str(issuer)[:100] if issuer else None
    except (OAuthError, ValueError, jwt.PyJWTError):
        pass
    return None


def _basic_credentials(credentials: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "Malformed Basic credentials", 401, basic=True) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise OAuthError("invalid_client", "Malformed Basic credentials", 401, basic=True)
    # RFC 6749 §2.3.1: the id and secret are form-encoded before Basic encoding.
    return unquote_plus(client_id), unquote_plus(secret)


def _by_secret(engine: Engine, client_id: str, secret: str, *, basic: bool) -> Client:
    with engine.connect() as conn:
        client = find_client(conn, client_id) if client_id else None
    if client is None or client.secret_hash is None:
        verify_password(_DUMMY_HASH, secret)  # the same cost whether or not the client exists
        raise OAuthError("invalid_client", "Client authentication failed", 401, basic=basic)
    if not verify_password(client.secret_hash, secret) or not client.active:
        raise OAuthError("invalid_client", "Client authentication failed", 401, basic=basic)
    return client


_DUMMY_HASH = hash_password("not-a-real-client-secret")


def _by_assertion(engine: Engine, form: dict[str, str], audiences: Collection[str]) -> Client:
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
    assertion = form.get("client_assertion", "")
    failed = OAuthError("invalid_client", "Client assertion refused", 401)
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise failed from None
    alg, kid, issuer = header.get("alg"), header.get("kid"), unverified.get("iss")
    if alg not in SIGNING_ALGORITHMS or not isinstance(issuer, str) or (kid is not None and not isinstance(kid, str)):
        raise failed
    if form.get("client_id", issuer) != issuer:
        raise OAuthError("invalid_request", "client_id differs from the assertion's issuer")
    with engine.connect() as conn:
        client = find_client(conn, issuer)
    if client is None or not client.active or not client.jwks:
        raise failed
    claims = None
    for key in signing_keys(client, alg, kid):
        try:
            claims = jwt.decode(assertion, key, algorithms=[alg], audience=list(audiences), issuer=client.client_id,
                                leeway=CLOCK_SKEW_S, options={"require": ["iss", "sub", "aud", "exp", "jti"]})
            break
        except jwt.PyJWTError:
            continue
    if claims is None or claims["sub"] != client.client_id:
        raise failed
    jti, exp = claims["jti"], claims["exp"]
    now = int(time.time())
    if not isinstance(jti, str) or not jti or len(jti) > _JTI_MAX or not isinstance(exp, int | float) \
            or exp > now + MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S:
        raise failed
    _record_assertion(engine, client.pk, jti, int(exp), now)
    return client


def _record_assertion(engine: Engine, client_pk: int, jti: str, exp: int, now: int) -> None:
    """An assertion is good once: its id is kept until it expires; a second use is refused."""
    try:
        with transaction(engine, write=True) as conn:
            conn.execute(delete(oauth_assertion).where(oauth_assertion.c.expires < now - CLOCK_SKEW_S))
            conn.execute(insert(oauth_assertion).values(jti=f"{client_pk}:{jti}", client_pk=client_pk,
                                                        expires=exp))
    except IntegrityError:
        raise OAuthError("invalid_client", "Client assertion already used", 401) from None
