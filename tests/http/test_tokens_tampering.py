"""Forged, altered and stale bearer tokens: each is a 401 with WWW-Authenticate and an OperationOutcome, never a
read — whatever part of the token was tampered with."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import orjson
import pytest

from hifhir.api.app import HifhirApp
from tests.conftest import ADMIN

PATHS = ("/fhir/Patient", "/fhir/Location/some-id", "/api/api_fhir_r4/Patient")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand, so that any header (alg included) can be paired with any signature."""
    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}"
    signature = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def valid_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"username": ADMIN[0], "sub": ADMIN[0], "iat": now, "nbf": now, "exp": now + 3600,
                              "jti": "0f0e6f0c-1d1b-4c57-9d16-3d2f1c1b0a01"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


HS256 = {"alg": "HS256", "typ": "JWT"}


def assert_refused(client: Any, authorization: str) -> None:
    for path in PATHS:
        resp = client.get(path, headers={"Authorization": authorization.encode()})
        assert resp.status_code == 401, (path, authorization[:60], resp.text)
        assert resp.headers["www-authenticate"].startswith("Bearer"), path
        body = resp.json()
        assert body["resourceType"] == "OperationOutcome"
        assert body["issue"][0]["code"] == "login"
        assert "Admin" not in resp.text and "secret" not in resp.text.lower()


@pytest.fixture
def secret(app: HifhirApp) -> bytes:
    return app.settings.jwt_secret.encode()


def test_the_genuine_token_is_accepted(client, secret):
    """The baseline the forgeries below are measured against: the hand-made signature is the server's own."""
    token = sign(HS256, valid_claims(), secret)

    assert client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_an_altered_payload_is_401(client, app):
    token, _exp = app.tokens.issue("clerk")
    head, payload, signature = token.split(".")
    claims = orjson.loads(unb64(payload))
    claims["sub"] = claims["username"] = ADMIN[0]

    assert_refused(client, f"Bearer {head}.{b64(orjson.dumps(claims))}.{signature}")


def test_an_altered_signature_is_401(client, app):
    token, _exp = app.tokens.issue(ADMIN[0])
    head, payload, signature = token.split(".")
    raw = bytearray(unb64(signature))
    raw[0] ^= 0x01

    assert_refused(client, f"Bearer {head}.{payload}.{b64(bytes(raw))}")
    assert_refused(client, f"Bearer {head}.{payload}.")
    assert_refused(client, f"Bearer {head}.{payload}")


def test_an_expired_token_is_401(client, secret):
    now = int(time.time())

    assert_refused(client, f"Bearer {sign(HS256, valid_claims(iat=now - 7200, nbf=now - 7200, exp=now - 60), secret)}")


def test_an_expired_token_once_accepted_is_401(client, app, secret):
    """The verified-token cache must not outlive the token."""
    now = int(time.time())
    token = sign(HS256, valid_claims(exp=now + 2), secret)
    assert client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    time.sleep(2.5)

    assert_refused(client, f"Bearer {token}")


def test_a_token_not_yet_valid_is_401(client, secret):
    now = int(time.time())

    assert_refused(client, f"Bearer {sign(HS256, valid_claims(nbf=now + 3600, exp=now + 7200), secret)}")


def test_a_token_signed_with_another_key_is_401(client):
    assert_refused(client, f"Bearer {sign(HS256, valid_claims(), b'another-secret-' + b'y' * 32)}")


def test_alg_none_is_401(client):
    for alg in ("none", "None", "NONE", "nOnE"):
        assert_refused(client, f"Bearer {sign({'alg': alg, 'typ': 'JWT'}, valid_claims(), None)}")


def test_hs256_signed_with_an_empty_key_is_401(client):
    assert_refused(client, f"Bearer {sign(HS256, valid_claims(), b'')}")


def test_an_rs256_header_over_an_hmac_of_the_secret_is_401(client, secret):
    """Algorithm confusion: the HS secret used as if it were an RSA public key."""
    for alg in ("RS256", "ES256", "PS256", "HS512", "EdDSA"):
        assert_refused(client, f"Bearer {sign({'alg': alg, 'typ': 'JWT'}, valid_claims(), secret)}")


def test_a_token_without_sub_or_exp_is_401(client, secret):
    assert_refused(client, f"Bearer {sign(HS256, valid_claims(sub=None), secret)}")
    assert_refused(client, f"Bearer {sign(HS256, valid_claims(exp=None), secret)}")


def test_a_sub_that_is_not_a_string_is_401(client, secret):
    for sub in ({"username": ADMIN[0]}, [ADMIN[0]], 1, True, ""):
        assert_refused(client, f"Bearer {sign(HS256, valid_claims(sub=sub), secret)}")


def test_a_validly_signed_token_of_an_unknown_user_is_401(client, secret):
    for sub in ("ghost", "admin", "Admin ", "' OR '1'='1", "x" * 5000):
        assert_refused(client, f"Bearer {sign(HS256, valid_claims(sub=sub), secret)}")


def test_garbage_is_401(client):
    for token in ("garbage", "a.b.c", "...", "eyJhbGciOiJIUzI1NiJ9", "a" * 10000, "é.é.é", "Bearer",
                  b64(b'{"alg":"HS256"}') + ".%%%." + b64(b"x")):
        assert_refused(client, f"Bearer {token}")


def test_a_wrong_scheme_is_401(client, app):
    token, _exp = app.tokens.issue(ADMIN[0])
    for authorization in (f"Basic {token}", f"Token {token}", token, f"Bearer{token}", "Basic QWRtaW46YWRtaW4xMjM=",
                          f"JWT {token}"):
        assert_refused(client, authorization)
