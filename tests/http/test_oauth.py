"""System clients: OAuth2 client credentials at /oauth/token (client secret, or a JWT assertion as SMART Backend
Services sign it), SMART system scopes narrowing the technical user's rights, and the discovery documents."""

from __future__ import annotations

import base64
import dataclasses
import time
import uuid
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import Engine, insert, select
from starlette.testclient import TestClient

from hifhir.api.app import HifhirApp
from hifhir.auth import admin, clients
from hifhir.store.db import transaction
from hifhir.store.tables import oauth_assertion
from tests.builders import location, patient
from tests.conftest import Api
from tests.http.test_claims import claim_of, world  # noqa: F401  (the claim world fixture)
from tests.responses import created, refused

TOKEN_URL = "http://testserver/oauth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TECH = "integration"


# --- set-up helpers ---------------------------------------------------------------------------------------------


def technical_user(engine: Engine, name: str = TECH, roles: tuple[str, ...] = ("IMIS Administrator",)) -> None:
    with transaction(engine, write=True) as conn:
        admin.create_account(conn, admin.NewUser(name, "Tech-user-pass-42", user_type="technical",
                                                 roles=list(roles)))


def register(engine: Engine, client_id: str, scopes: str, *, user: str = TECH, jwks: dict[str, Any] | None = None,
             ) -> str | None:
    with transaction(engine, write=True) as conn:
        return clients.create_client(conn, client_id, user, scopes, jwks=orjson.dumps(jwks).decode() if jwks else None)


def rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> Any:
    return ec.generate_private_key(ec.SECP384R1())


def jwks_of(private_key: Any, kid: str) -> dict[str, Any]:
    if isinstance(private_key, rsa.RSAPrivateKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {"keys": [{**jwk, "kid": kid, "use": "sig"}]}


def assertion(private_key: Any, client_id: str, *, alg: str | None = None, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": now + 240, "jti": str(uuid.uuid4()),
            **claims}
    alg = alg or ("RS384" if isinstance(private_key, rsa.RSAPrivateKey) else "ES384")
    return jwt.encode({k: v for k, v in body.items() if v is not None}, private_key, algorithm=alg,
                      headers={"kid": kid})


def by_assertion(client: Any, signed: str, **extra: str) -> Any:
    return client.post("/oauth/token", data={"grant_type": "client_credentials", "client_assertion_type":
                                             ASSERTION_TYPE, "client_assertion": signed, **extra})


def token_by_secret(client: Any, client_id: str, secret: str, scope: str | None = None) -> Any:
    data = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
    return client.post("/oauth/token", data=data, auth=(client_id, secret))


def granted(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["pragma"] == "no-cache"
    body = resp.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 300
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    return body


def oauth_error(resp: Any, status: int, error: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["error"] == error, body
    assert body["error_description"]
    return body


def as_client(api: Api, body: dict[str, Any]) -> Api:
    return Api(api.client, body["access_token"])


def a_patient(api: Api) -> tuple[str, str]:
    """(patient id, village id)"""
    region = created(api.post("Location", location("R1", "Ultha", "R")))["id"]
    district = created(api.post("Location", location("R1D1", "Rapta", "D", region)))["id"]
    ward = created(api.post("Location", location("R1D1W1", "Jamu", "W", district)))["id"]
    village = created(api.post("Location", location("R1D1W1V1", "Jamula", "V", ward)))["id"]
    return str(created(api.post("Patient", patient("100000001", "Doe", "John", village)))["id"]), village


# --- client secrets ---------------------------------------------------------------------------------------------


def test_client_secret_basic_gives_a_bearer_token_that_works(api, client, engine):
    technical_user(engine)
    secret = register(engine, "hospital-1", "system/*.read")
    assert secret
    body = granted(token_by_secret(client, "hospital-1", secret))
    assert body["scope"] == "system/*.read"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert (claims["client_id"], claims["sub"], claims["scope"]) == ("hospital-1", "hospital-1", "system/*.read")
    assert claims["exp"] - claims["iat"] == 300
    resp = as_client(api, body).get("Patient")
    assert resp.status_code == 200, resp.text


def test_client_secret_post_gives_a_token(api, client, engine):
    technical_user(engine)
    secret = register(engine, "hospital-1", "system/Patient.read")
    resp = client.post("/fhir/oauth/token", data={"grant_type": "client_credentials", "client_id": "hospital-1",
                                                  "client_secret": secret})
    assert granted(resp)["scope"] == "system/Patient.read"


def test_a_wrong_secret_or_an_unknown_client_is_invalid_client(client, engine):
    technical_user(engine)
    secret = register(engine, "hospital-1", "system/*.read")
    for resp in (token_by_secret(client, "hospital-1", secret + "x"), token_by_secret(client, "nobody", secret)):
        oauth_error(resp, 401, "invalid_client")
        assert resp.headers["www-authenticate"].startswith("Basic")
    posted = client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "nobody",
                                               "client_secret": "x" * 20})
    oauth_error(posted, 401, "invalid_client")
    oauth_error(client.post("/oauth/token", data={"grant_type": "client_credentials"}), 401, "invalid_client")


def test_a_client_id_with_a_nul_character_is_an_unknown_client(client, engine):
    # PostgreSQL refuses NUL in text: the lookup answered the FHIR server's 400 OperationOutcome (found by fuzzing)
    technical_user(engine)
    secret = register(engine, "hospital-1", "system/*.read")
    posted = client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "hospital-1\x00",
                                               "client_secret": secret})
    oauth_error(posted, 401, "invalid_client")
    oauth_error(token_by_secret(client, "\x00", secret), 401, "invalid_client")


def test_repeated_failed_client_authentications_are_throttled(backend, engine, app):
    settings, _ = backend
    strict = HifhirApp(dataclasses.replace(settings, login_max_failures_per_address=3), engine)
    technical_user(engine)
    secret = register(engine, "hospital-1", "system/*.read") or ""
    with TestClient(strict, base_url="http://testserver") as throttled_client:
        for _ in range(3):
            oauth_error(token_by_secret(throttled_client, "hospital-1", "wrong"), 401, "invalid_client")
        resp = token_by_secret(throttled_client, "hospital-1", secret)  # even the right secret, until the lock ends
        oauth_error(resp, 429, "temporarily_unavailable")
        assert int(resp.headers["retry-after"]) > 0


def test_a_disabled_client_gets_no_token_and_its_tokens_stop_at_once(api, client, engine, app):
    technical_user(engine)
    secret = register(engine, "hospital-1", "system/*.read")
    client_api = as_client(api, granted(token_by_secret(client, "hospital-1", secret)))
    assert client_api.get("Patient").status_code == 200
    with transaction(engine, write=True) as conn:
        clients.set_client_active(conn, "hospital-1", False)
    app.sessions.forget()  # what the CLI's epoch bump makes every process do within a second
    refused(client_api.get("Patient"), 401)
    oauth_error(token_by_secret(client, "hospital-1", secret), 401, "invalid_client")


def test_a_technical_user_cannot_log_in_with_its_password(client, engine):
    technical_user(engine)
    refused(client.post("/api/login", json={"username": TECH, "password": "Tech-user-pass-42"}), 401)


def test_a_disabled_technical_user_is_unauthorized_client(client, engine):
    technical_user(engine)
    secret = register(engine, "hospital-1", "system/*.read")
    with transaction(engine, write=True) as conn:
        admin.set_active(conn, TECH, False)
    oauth_error(token_by_secret(client, "hospital-1", secret), 400, "unauthorized_client")


# --- private_key_jwt (SMART Backend Services) -------------------------------------------------------------------


@pytest.mark.parametrize("make_key", [rsa_key, ec_key], ids=["RS384", "ES384"])
def test_a_signed_assertion_gives_a_token(api, client, engine, make_key):
    key = make_key()
    technical_user(engine)
    assert register(engine, "lab-1", "system/*.rs", jwks=jwks_of(key, "k1")) is None  # no secret
    body = granted(by_assertion(client, assertion(key, "lab-1")))
    assert body["scope"] == "system/*.rs"
    assert as_client(api, body).get("Patient").status_code == 200


def test_a_replayed_assertion_is_refused(client, engine):
    key = rsa_key()
    technical_user(engine)
    register(engine, "lab-1", "system/*.read", jwks=jwks_of(key, "k1"))
    signed = assertion(key, "lab-1")
    granted(by_assertion(client, signed))
    oauth_error(by_assertion(client, signed), 401, "invalid_client")


def test_used_assertion_ids_are_purged_once_expired(client, engine):
    key = rsa_key()
    technical_user(engine)
    register(engine, "lab-1", "system/*.read", jwks=jwks_of(key, "k1"))
    with transaction(engine, write=True) as conn:
        lab = clients.find_client(conn, "lab-1")
        assert lab is not None
        conn.execute(insert(oauth_assertion).values(jti=f"{lab.pk}:old", client_pk=lab.pk,
                                                    expires=int(time.time()) - 60))
    granted(by_assertion(client, assertion(key, "lab-1", jti="new")))
    with engine.connect() as conn:
        assert conn.execute(select(oauth_assertion.c.jti)).scalars().all() == [f"{lab.pk}:new"]


@pytest.mark.parametrize("case", ["wrong-aud", "expired", "too-long", "no-jti", "other-issuer", "other-key",
                                  "unknown-kid", "hs256", "none", "garbage"])
def test_a_bad_assertion_is_invalid_client(client, engine, case):
    key = rsa_key()
    technical_user(engine)
    register(engine, "lab-1", "system/*.read", jwks=jwks_of(key, "k1"))
    register(engine, "lab-2", "system/*.read", jwks=jwks_of(rsa_key(), "k1"))
    now = int(time.time())
    signed = {
        "wrong-aud": lambda: assertion(key, "lab-1", aud="https://elsewhere.example/oauth/token"),
        "expired": lambda: assertion(key, "lab-1", exp=now - 60),
        "too-long": lambda: assertion(key, "lab-1", exp=now + 3600),
        "no-jti": lambda: assertion(key, "lab-1", jti=None),
        "other-issuer": lambda: assertion(key, "lab-2"),  # signed with lab-1's key, claiming to be lab-2
        "other-key": lambda: assertion(rsa_key(), "lab-1"),
        "unknown-kid": lambda: assertion(key, "lab-1", kid="k2"),
        "hs256": lambda: jwt.encode({"iss": "lab-1", "sub": "lab-1", "aud": TOKEN_URL, "exp": now + 60,
                                     "jti": "x"}, "secret", algorithm="HS256"),
        "none": lambda: jwt.encode({"iss": "lab-1", "sub": "lab-1", "aud": TOKEN_URL, "exp": now + 60, "jti": "y"},
                                   None, algorithm="none"),
        "garbage": lambda: "not.a.jwt",
    }[case]()
    oauth_error(by_assertion(client, signed), 401, "invalid_client")


def test_a_secret_client_cannot_use_an_assertion_nor_a_key_client_a_secret(client, engine):
    key = rsa_key()
    technical_user(engine)
    secret = register(engine, "hospital-1", "system/*.read")
    register(engine, "lab-1", "system/*.read", jwks=jwks_of(key, "k1"))
    oauth_error(by_assertion(client, assertion(key, "hospital-1")), 401, "invalid_client")
    oauth_error(token_by_secret(client, "lab-1", secret or ""), 401, "invalid_client")


# --- scopes -----------------------------------------------------------------------------------------------------


def test_system_patient_read_reads_patients_but_neither_creates_them_nor_reads_claims(api, client, engine):
    patient_id, village = a_patient(api)
    technical_user(engine)  # an IMIS Administrator: the scope alone narrows it
    secret = register(engine, "hospital-1", "system/Patient.read")
    reader = as_client(api, granted(token_by_secret(client, "hospital-1", secret)))
    assert reader.get(f"Patient/{patient_id}").status_code == 200
    found = reader.get("Patient?family=Doe")
    assert found.status_code == 200, found.text
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [patient_id]
    refused(reader.post("Patient", patient("100000002", "Doe", "Jane", village)), 403, text="scope")
    refused(reader.get("Claim"), 403)
    refused(reader.get(f"Claim/{uuid.uuid4()}"), 403)
    refused(reader.delete(f"Patient/{patient_id}"), 403)


def test_v2_claim_cr_creates_and_reads_claims_but_does_not_search_them(api, client, engine, world):  # noqa: F811
    technical_user(engine)
    secret = register(engine, "hospital-1", "system/Claim.cr system/ClaimResponse.r")
    claims = as_client(api, granted(token_by_secret(client, "hospital-1", secret)))
    resp = claims.post("Claim", claim_of(world))
    assert resp.status_code == 200, resp.text
    claim_id = resp.json()["id"]
    assert claims.get(f"Claim/{claim_id}").status_code == 200
    refused(claims.get("Claim?identifier=C0001"), 403)
    refused(claims.get("Patient"), 403)


def test_the_technical_users_rights_still_apply(api, client, engine):
    technical_user(engine, roles=("Clerk",))  # insurees and families, no claims
    secret = register(engine, "hospital-1", "system/*.read")
    reader = as_client(api, granted(token_by_secret(client, "hospital-1", secret)))
    assert reader.get("Patient").status_code == 200
    refused(reader.get("Claim"), 403)


def test_the_requested_scope_is_narrowed_to_the_clients(client, engine):
    technical_user(engine)
    secret = register(engine, "hospital-1", "system/*.read system/Claim.c") or ""
    assert granted(token_by_secret(client, "hospital-1", secret))["scope"] == "system/*.read system/Claim.c"
    narrowed = token_by_secret(client, "hospital-1", secret, "system/Patient.read system/Claim.cud")
    assert granted(narrowed)["scope"] == "system/Patient.read system/Claim.c"
    oauth_error(token_by_secret(client, "hospital-1", secret, "system/Patient.write"), 400, "invalid_scope")
    oauth_error(token_by_secret(client, "hospital-1", secret, "user/*.read"), 400, "invalid_scope")
    oauth_error(token_by_secret(client, "hospital-1", secret, "system/Nothing.read"), 400, "invalid_scope")


def test_client_tokens_cannot_use_the_admin_api(api, client, engine):
    technical_user(engine)
    secret = register(engine, "hospital-1", "system/*.*")
    admin_client = as_client(api, granted(token_by_secret(client, "hospital-1", secret)))
    refused(admin_client.get("/api/admin/users"), 403)


# --- protocol errors --------------------------------------------------------------------------------------------


def test_protocol_errors_are_rfc6749_errors(client, engine):
    technical_user(engine)
    secret = register(engine, "hospital-1", "system/*.read") or ""
    basic = {"Authorization": "Basic " + base64.b64encode(f"hospital-1:{secret}".encode()).decode()}
    oauth_error(client.post("/oauth/token", data={"grant_type": "password"}, headers=basic), 400,
                "unsupported_grant_type")
    oauth_error(client.post("/oauth/token", data={"scope": "system/*.read"}, headers=basic), 400, "invalid_request")
    oauth_error(client.post("/oauth/token", json={"grant_type": "client_credentials"}, headers=basic), 400,
                "invalid_request")
    oauth_error(client.post("/oauth/token", content=b"grant_type=client_credentials&grant_type=client_credentials",
                            headers={**basic, "Content-Type": "application/x-www-form-urlencoded"}), 400,
                "invalid_request")
    both = client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "hospital-1",
                                             "client_secret": secret}, headers=basic)
    oauth_error(both, 400, "invalid_request")
    oauth_error(client.post("/oauth/token", data={"grant_type": "client_credentials"},
                            headers={"Authorization": "Basic %%%"}), 401, "invalid_client")
    assert client.get("/oauth/token").status_code == 405


# --- discovery --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"])
def test_the_smart_configuration_document(client, path):
    resp = client.get(path)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_endpoint"] == TOKEN_URL
    assert body["grant_types_supported"] == ["client_credentials"]
    assert set(body["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic", "client_secret_post", "private_key_jwt"}
    assert set(body["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert "system/*.read" in body["scopes_supported"]
    assert set(body["capabilities"]) == {"client-confidential-symmetric", "client-confidential-asymmetric",
                                         "permission-v1", "permission-v2"}


def test_the_capability_statement_names_smart_and_the_token_endpoint(client):
    security = client.get("/fhir/metadata").json()["rest"][0]["security"]
    codes = {c["code"] for s in security["service"] for c in s["coding"]}
    assert "SMART-on-FHIR" in codes
    uris = security["extension"][0]
    assert uris["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    assert uris["extension"] == [{"url": "token", "valueUri": TOKEN_URL}]


def test_a_client_needs_a_technical_user_and_valid_scopes_and_keys(api, engine):  # api: a reset database
    technical_user(engine)
    with transaction(engine, write=True) as conn:
        for client_id, user, scopes, jwks in (
            ("c1", "clerk", "system/*.read", None),  # not a technical user
            ("c2", TECH, "user/*.read", None),
            ("c3", TECH, "", None),
            ("c4", TECH, "system/*.read", '{"keys": []}'),
            ("c5", TECH, "system/*.read", orjson.dumps({"keys": [{**jwk_private(), "kid": "k"}]}).decode()),
            ("c 6", TECH, "system/*.read", None),
        ):
            with pytest.raises(clients.ClientError):
                clients.create_client(conn, client_id, user, scopes, jwks=jwks)


def jwk_private() -> dict[str, Any]:
    return jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key(), as_dict=True)


def test_token_requests_are_in_the_audit_trail_whether_granted_or_refused(api, client, engine):
    technical_user(engine)
    secret = register(engine, "hospital-audit", "system/*.read")
    assert token_by_secret(client, "hospital-audit", secret).status_code == 200
    assert token_by_secret(client, "hospital-audit", "wrong-secret").status_code == 401

    found = api.get("AuditEvent?agent=hospital-audit&type=110114")
    assert found.status_code == 200
    outcomes = [e["resource"]["outcome"] for e in found.json()["entry"]]
    assert outcomes == ["4", "0"]  # newest first: the refusal, then the grant
    granted_event = found.json()["entry"][1]["resource"]
    assert granted_event["agent"][0]["who"]["identifier"]["value"] == "hospital-audit"
