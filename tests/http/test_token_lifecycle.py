"""Token lifecycle: tokens expire; a user's tokens can be revoked; a disabled user's (or client's) tokens stop working
at once in the process that made the change, and in every other process within about a second (auth epoch)."""

from __future__ import annotations

import time

import jwt
from sqlalchemy import select
from starlette.testclient import TestClient

from hifhir.api.app import HifhirApp
from hifhir.auth import admin
from hifhir.store.db import transaction
from hifhir.store.tables import app_user
from tests.conftest import CLERK, Api, login
from tests.responses import refused


def clerk(api: Api, app: HifhirApp) -> Api:
    return Api(api.client, app.tokens.issue(CLERK[0])[0])


def test_an_expired_token_is_a_401(api, app):
    token, exp = app.tokens.issue(CLERK[0], lifetime_s=-5)
    assert exp < time.time()
    resp = Api(api.client, token).get("Patient")
    refused(resp, 401)
    assert resp.headers["www-authenticate"].startswith("Bearer")


def test_a_token_of_another_key_is_a_401(api, app):
    claims = jwt.decode(app.tokens.issue(CLERK[0])[0], options={"verify_signature": False})
    forged = jwt.encode(claims, "another-secret-of-at-least-32-bytes!!", algorithm="HS256")
    refused(Api(api.client, forged).get("Patient"), 401)


def test_revoked_tokens_are_refused_at_once_and_later_tokens_work(api, app, client):
    before = clerk(api, app)
    assert before.get("Patient").status_code == 200
    resp = api.post("/api/admin/users/clerk/revoke-tokens", {})
    assert resp.status_code == 200, resp.text
    assert resp.json()["tokensValidAfter"]
    refused(before.get("Patient"), 401)
    with app.engine.connect() as conn:
        valid_after = conn.execute(select(app_user.c.tokens_valid_after).where(app_user.c.username == "clerk")).scalar()
    time.sleep(max(0.0, valid_after - time.time()))  # tokens carry whole seconds: the revocation's second is out
    after = Api(client, login(client, CLERK))
    assert after.get("Patient").status_code == 200
    refused(before.get("Patient"), 401)


def test_a_disabled_users_tokens_stop_at_once_and_work_again_when_enabled(api, app):
    token = clerk(api, app)
    assert token.get("Patient").status_code == 200
    assert api.client.patch("/api/admin/users/clerk", json={"active": False},
                            headers={"Authorization": f"Bearer {api.token}"}).status_code == 200
    refused(token.get("Patient"), 401)
    refused(api.client.post("/api/login", json={"username": CLERK[0], "password": CLERK[1]}), 401)
    assert api.client.patch("/api/admin/users/clerk", json={"active": True},
                            headers={"Authorization": f"Bearer {api.token}"}).status_code == 200
    assert token.get("Patient").status_code == 200


def test_a_role_removed_takes_effect_at_once(api, app):
    token = clerk(api, app)
    assert token.get("Patient").status_code == 200
    assert api.client.patch("/api/admin/users/clerk", json={"roles": []},
                            headers={"Authorization": f"Bearer {api.token}"}).status_code == 200
    refused(token.get("Patient"), 403)


def test_another_process_sees_a_revocation_within_a_second(api, app, backend):
    settings, engine = backend
    other = HifhirApp(settings, engine)  # a second server process on the same database
    with TestClient(other, base_url="http://testserver") as other_client:
        token = app.tokens.issue(CLERK[0])[0]
        other_api = Api(other_client, token)
        assert other_api.get("Patient").status_code == 200  # now cached there (for 30 s, but for the epoch)
        with transaction(engine, write=True) as conn:  # as `hifhir user disable clerk` does, from a third process
            admin.set_active(conn, CLERK[0], False)
        started = time.monotonic()
        while other_api.get("Patient").status_code == 200:
            # the poll interval is 1 s; the margin is for a loaded test machine
            assert time.monotonic() - started < 2.5, "the other process still accepts the disabled user's token"
            time.sleep(0.05)
        refused(other_api.get("Patient"), 401)


def test_the_epoch_is_read_at_most_once_a_second(api, app, monkeypatch):
    from hifhir.auth import epoch

    reads = []
    original = epoch.read
    monkeypatch.setattr(epoch, "read", lambda conn: reads.append(1) or original(conn))
    app.sessions._watch._next_poll = 0.0
    for _ in range(20):
        assert api.get("Patient").status_code == 200
    assert len(reads) == 1


def test_revoking_the_technical_users_tokens_revokes_its_clients_tokens(api, app, engine, client):
    from tests.http.test_oauth import granted, register, technical_user, token_by_secret

    technical_user(engine)
    secret = register(engine, "hospital-1", "system/*.read") or ""
    client_api = Api(client, granted(token_by_secret(client, "hospital-1", secret))["access_token"])
    assert client_api.get("Patient").status_code == 200
    assert api.post("/api/admin/users/integration/revoke-tokens", {}).status_code == 200
    refused(client_api.get("Patient"), 401)
