"""User, role and client administration: the `hifhir user|role|client` commands and the admin API (/api/admin/…),
with the password policy on every password chosen."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from hifhir import cli
from hifhir.auth.password_policy import WeakPassword, check_password
from hifhir.auth.passwords import verify_password
from hifhir.store.tables import app_user, oauth_client, officer, user_district
from tests.builders import location
from tests.builders_practitioner import enrolment_officer
from tests.conftest import CLERK, NOBODY, Api, login
from tests.responses import created, refused

GOOD = "Correct-Horse-42"


def user_row(engine: Any, username: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(app_user).where(app_user.c.username == username)).first()


def districts(api: Api) -> tuple[str, str]:
    """Two districts (R1D1, R1D2) of region R1; returns their ids."""
    region = created(api.post("Location", location("R1", "Ultha", "R")))["id"]
    d1 = created(api.post("Location", location("R1D1", "Rapta", "D", region)))["id"]
    d2 = created(api.post("Location", location("R1D2", "Jaber", "D", region)))["id"]
    return d1, d2


def as_user(api: Api, app: Any, username: str) -> Api:
    return Api(api.client, app.tokens.issue(username)[0])


def stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))


# --- password policy --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("password", "reason"), [
    ("Short-1a", "at least 12 characters"),
    ("alllowercaseletters", None),  # 19 characters: long enough to need no mix
    ("lowercase-only", "mix 3 of lower case"),
    ("Password1234", "not be a common password"),
    ("Jdoe-Secret-99", "not contain the user name"),
    ("jdoe", "at least 12 characters"),
    ("x" * 201, "at most 200"),
])
def test_the_password_policy(password, reason):
    if reason is None:
        check_password(password, "jdoe")
        return
    with pytest.raises(WeakPassword, match=reason):
        check_password(password, "jdoe")


def test_the_minimum_length_is_configurable(api, engine, command_env, capsys, monkeypatch):
    monkeypatch.setenv("HIFHIR_PASSWORD_MIN_LENGTH", "20")
    assert cli.main(["user", "create", "jdoe", "--password", GOOD, "--role", "Clerk"]) == 1
    assert "at least 20 characters" in capsys.readouterr().err
    assert user_row(engine, "jdoe") is None


# --- the CLI ----------------------------------------------------------------------------------------------------


def test_cli_creates_an_interactive_user_limited_to_districts(api, engine, command_env, capsys, client):
    districts(api)
    assert cli.main(["user", "create", "jdoe", "--password", GOOD, "--role", "Clerk", "--district", "R1D1",
                     "--district", "R1D2", "--last-name", "Doe"]) == 0
    assert capsys.readouterr().out.strip() == "user jdoe created"
    row = user_row(engine, "jdoe")
    assert (row.user_type, row.last_name, row.active) == ("interactive", "Doe", True)
    assert row.password_changed > 0
    with engine.connect() as conn:
        found = set(conn.execute(select(user_district.c.location_pk).where(user_district.c.user_pk == row.pk))
                    .scalars())
    assert len(found) == 2
    login(client, ("jdoe", GOOD))


def test_cli_creates_an_officer_user(api, engine, command_env, capsys):
    d1, _d2 = districts(api)
    created(api.post("Practitioner", enrolment_officer("EO001", district_id=d1)))
    assert cli.main(["user", "create", "EO001", "--password", GOOD, "--role", "Enrolment Officer",
                     "--officer", "EO001"]) == 0
    row = user_row(engine, "EO001")
    with engine.connect() as conn:
        officer_pk = conn.execute(select(officer.c.pk).where(officer.c.code == "EO001")).scalar()
    assert (row.user_type, row.officer_pk) == ("officer", officer_pk)


@pytest.mark.parametrize(("args", "message"), [
    (["jdoe", "--password", "short"], "at least 12 characters"),
    (["jdoe", "--password", "jdoe-Secret-123"], "not contain the user name"),
    (["jdoe", "--password", GOOD, "--district", "NOPE"], "no district with code 'NOPE'"),
    (["jdoe", "--password", GOOD, "--role", "Nope"], "unknown role 'Nope'"),
    (["jdoe", "--password", GOOD, "--type", "officer", "--role", "Clerk"], "needs the code of its enrolment officer"),
    (["jdoe", "--password", GOOD, "--officer", "EO404", "--role", "Clerk"], "no enrolment officer with code 'EO404'"),
    (["jdoe", "--password", GOOD, "--type", "technical"], "at least one role"),
    (["clerk", "--password", GOOD], "already exists"),
    (["j doe", "--password", GOOD], "without spaces"),
])
def test_cli_refuses_bad_users(api, engine, command_env, capsys, args, message):
    assert cli.main(["user", "create", *args]) == 1
    assert message in capsys.readouterr().err
    assert user_row(engine, "jdoe") is None


def test_cli_reads_passwords_from_stdin(api, engine, command_env, capsys, client, monkeypatch):
    stdin(monkeypatch, GOOD + "\n")
    assert cli.main(["user", "create", "jdoe", "--role", "Clerk"]) == 0
    login(client, ("jdoe", GOOD))
    before = user_row(engine, "jdoe").password_changed
    stdin(monkeypatch, "too-weak\n")
    assert cli.main(["user", "set-password", "jdoe"]) == 1
    assert "at least 12 characters" in capsys.readouterr().err
    stdin(monkeypatch, "An0ther-Long-One\n")
    assert cli.main(["user", "set-password", "jdoe"]) == 0
    row = user_row(engine, "jdoe")
    assert verify_password(row.password_hash, "An0ther-Long-One")
    assert row.password_changed >= before
    login(client, ("jdoe", "An0ther-Long-One"))


def test_cli_disables_enables_and_revokes(api, app, engine, command_env, capsys):
    token = as_user(api, app, CLERK[0])
    assert cli.main(["user", "disable", "clerk"]) == 0
    assert user_row(engine, "clerk").active is False
    app.sessions.forget()  # the server process sees the CLI's change through the epoch within a second
    refused(token.get("Patient"), 401)
    assert cli.main(["user", "enable", "clerk"]) == 0
    app.sessions.forget()
    assert token.get("Patient").status_code == 200
    assert cli.main(["user", "revoke-tokens", "clerk"]) == 0
    app.sessions.forget()
    refused(token.get("Patient"), 401)
    assert cli.main(["user", "disable", "nope"]) == 1
    assert "no user 'nope'" in capsys.readouterr().err


def test_cli_lists_users_and_changes_their_roles(api, app, engine, command_env, capsys):
    assert cli.main(["user", "roles", "clerk", "--add", "Medical Officer", "--remove", "Clerk"]) == 0
    capsys.readouterr()
    assert cli.main(["user", "list"]) == 0
    lines = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()}
    assert lines["clerk"] == ["clerk", "interactive", "active", "-", "Medical Officer"]
    assert lines["Admin"][4] == "IMIS Administrator"
    app.sessions.forget()
    token = as_user(api, app, CLERK[0])
    refused(token.get("Patient"), 403)
    assert token.get("Claim").status_code == 200


def test_cli_administers_roles(api, app, engine, command_env, capsys):
    assert cli.main(["role", "create", "Auditor", "--rights", "101001,101101"]) == 0
    assert cli.main(["user", "roles", "nobody", "--add", "Auditor"]) == 0
    app.sessions.forget()
    token = as_user(api, app, NOBODY[0])
    assert token.get("Patient").status_code == 200
    assert cli.main(["role", "rights", "Auditor", "--remove", "101101", "--add", "101201"]) == 0
    capsys.readouterr()
    assert cli.main(["role", "list"]) == 0
    lines = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()}
    assert lines["Auditor"] == ["Auditor", "custom", "1 users", "101001,101201"]
    assert lines["Clerk"][1] == "system"
    app.sessions.forget()
    refused(token.get("Patient"), 403)
    assert cli.main(["role", "create", "Bad", "--rights", "12x"]) == 1
    assert cli.main(["role", "create", "Auditor"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_cli_registers_clients(api, engine, command_env, capsys, client, tmp_path):
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    assert cli.main(["user", "create", "hospital", "--type", "technical", "--role", "Clerk"]) == 0  # no password
    assert cli.main(["client", "create", "his-1", "--user", "hospital", "--scopes", "system/Patient.rs"]) == 0
    out = capsys.readouterr().out
    secret = out.split("client secret (shown once, store it now): ")[1].strip()
    resp = client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=("his-1", secret))
    assert resp.status_code == 200, resp.text
    with engine.connect() as conn:
        stored = conn.execute(select(oauth_client.c.secret_hash).where(oauth_client.c.client_id == "his-1")).scalar()
    assert secret not in stored
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    (tmp_path / "jwks.json").write_bytes(orjson.dumps({"keys": [jwk]}))
    assert cli.main(["client", "create", "lab-1", "--user", "hospital", "--scopes", "system/*.read",
                     "--jwks", str(tmp_path / "jwks.json")]) == 0
    assert "secret" not in capsys.readouterr().out
    assert cli.main(["client", "disable", "his-1"]) == 0
    capsys.readouterr()
    assert cli.main(["client", "list"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert lines == [["his-1", "hospital", "disabled", "client_secret", "system/Patient.rs"],
                     ["lab-1", "hospital", "active", "private_key_jwt", "system/*.read"]]
    assert cli.main(["client", "create", "his-2", "--user", "clerk", "--scopes", "system/*.read"]) == 1
    assert "not a technical user" in capsys.readouterr().err
    assert cli.main(["client", "create", "his-2", "--user", "hospital", "--scopes", "patient/*.read"]) == 1


# --- the admin API ----------------------------------------------------------------------------------------------


def test_the_api_creates_reads_and_lists_users(api, engine, client):
    districts(api)
    resp = api.post("/api/admin/users", {"username": "jdoe", "password": GOOD, "roles": ["Clerk"],
                                         "districts": ["R1D1"], "lastName": "Doe", "email": "jdoe@example.org"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert {k: body[k] for k in ("username", "type", "active", "roles", "districts", "lastName")} == {
        "username": "jdoe", "type": "interactive", "active": True, "roles": ["Clerk"], "districts": ["R1D1"],
        "lastName": "Doe"}
    assert body["passwordChanged"].endswith("Z")
    assert "password" not in orjson.dumps(body).decode().lower().replace("passwordchanged", "")
    assert api.get("/api/admin/users/jdoe").json() == body
    listed = api.get("/api/admin/users").json()["users"]
    assert [u["username"] for u in listed] == ["Admin", "clerk", "jdoe", "nobody"]
    login(client, ("jdoe", GOOD))


@pytest.mark.parametrize(("payload", "status", "text"), [
    ({"username": "jdoe", "password": "weak"}, 400, "at least 12 characters"),
    ({"username": "jdoe", "password": "Password1234"}, 400, "common password"),
    ({"username": "clerk", "password": GOOD}, 409, "already exists"),
    ({"username": "jdoe", "password": GOOD, "roles": ["Nope"]}, 400, "unknown role"),
    ({"username": "jdoe", "password": GOOD, "roles": "Clerk"}, 400, "must be a list"),
    ({"username": "jdoe", "password": GOOD, "roles": [1]}, 400, "list of strings"),
    ({"username": "jdoe", "password": GOOD, "type": "robot"}, 400, "user type must be one of"),
    ({"username": "jdoe", "password": GOOD, "admin": True}, 400, "Unknown field 'admin'"),
    ({"username": "jdoe"}, 400, "at least 12 characters"),
    ({"password": GOOD}, 400, "'username' is required"),
    ([], 400, "JSON object"),
])
def test_the_api_refuses_bad_users(api, engine, payload, status, text):
    refused(api.post("/api/admin/users", payload), status, text=text)
    assert user_row(engine, "jdoe") is None


def test_the_api_changes_roles_districts_password_and_state(api, app, engine, client):
    districts(api)
    token = as_user(api, app, CLERK[0])
    resp = api.client.patch("/api/admin/users/clerk", headers=api.headers(), content=orjson.dumps(
        {"roles": ["Clerk", "Medical Officer"], "districts": ["R1D2"], "password": "N3w-Secret-Pass"}))
    assert resp.status_code == 200, resp.text
    assert (resp.json()["roles"], resp.json()["districts"]) == (["Clerk", "Medical Officer"], ["R1D2"])
    assert token.get("Claim").status_code == 200  # the new role's right, at once
    login(client, ("clerk", "N3w-Secret-Pass"))
    weak = api.client.patch("/api/admin/users/clerk", headers=api.headers(), content=b'{"password": "clerk12345678"}')
    refused(weak, 400, text="user name")
    me = api.client.patch("/api/admin/users/Admin", headers=api.headers(), content=b'{"active": false}')
    refused(me, 409)
    refused(api.client.patch("/api/admin/users/ghost", headers=api.headers(), content=b'{"active": false}'), 404)
    refused(api.client.patch("/api/admin/users/clerk", headers=api.headers(), content=b'{"active": "no"}'), 400)


def test_the_api_administers_roles(api, app):
    resp = api.post("/api/admin/roles", {"name": "Auditor", "rights": [101001, 101101]})
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"name": "Auditor", "system": False, "blocked": False, "users": 0,
                           "rights": [101001, 101101]}
    refused(api.post("/api/admin/roles", {"name": "Auditor"}), 409)
    refused(api.post("/api/admin/roles", {"name": "Bad", "rights": [12]}), 400)
    refused(api.post("/api/admin/roles", {"name": "Bad", "rights": ["101001"]}), 400)
    api.client.patch("/api/admin/users/nobody", headers=api.headers(), content=b'{"roles": ["Auditor"]}')
    token = as_user(api, app, NOBODY[0])
    assert token.get("Patient").status_code == 200
    changed = api.client.patch("/api/admin/roles/Auditor", headers=api.headers(),
                               content=orjson.dumps({"removeRights": [101101], "addRights": [101201]}))
    assert changed.status_code == 200, changed.text
    assert changed.json()["rights"] == [101001, 101201]
    refused(token.get("Patient"), 403)
    blocked = api.client.patch("/api/admin/roles/Auditor", headers=api.headers(), content=b'{"blocked": true}')
    assert blocked.json()["blocked"] is True
    names = [r["name"] for r in api.get("/api/admin/roles").json()["roles"]]
    assert "Auditor" in names and "IMIS Administrator" in names
    refused(api.get("/api/admin/roles/Nope"), 404)


def test_the_admin_api_needs_the_user_and_role_rights(api, app):
    clerk = as_user(api, app, CLERK[0])
    for path in ("/api/admin/users", "/api/admin/users/clerk", "/api/admin/roles"):
        refused(clerk.get(path), 403)
    refused(clerk.post("/api/admin/users", {"username": "jdoe", "password": GOOD}), 403)
    refused(clerk.post("/api/admin/users/Admin/revoke-tokens", {}), 403)
    refused(Api(api.client, "not-a-token").get("/api/admin/users"), 401)
    refused(api.get("/api/admin/nothing"), 404)
    refused(api.delete("/api/admin/users/clerk"), 405)
    refused(api.post("/api/admin/users", b"{not json"), 400)

