"""Production mode: `hifhir serve` refuses to start with the development or a weak JWT secret, with demo users
still on the demo password, or with CORS open to every origin; secrets come from the environment or a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, update

from hifhir import cli
from hifhir.api.app import HifhirApp
from hifhir.auth.passwords import hash_password
from hifhir.auth.users import create_user
from hifhir.config import DEV_SECRET_PREFIX, Settings, load_settings
from hifhir.store.db import transaction
from hifhir.store.tables import app_user
from tests.conftest import _reset

STRONG = "s" * 48


@pytest.fixture
def env(backend: tuple[Settings, Engine], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """The test database, run from an empty directory (a development secret is generated into ./var), with the
    conftest users — whose Admin has the demo password — given a real one."""
    settings, engine = backend
    _reset(settings, engine)
    with transaction(engine, write=True) as conn:
        conn.execute(update(app_user).values(password_hash=hash_password("a-real-password-1")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HIFHIR_DATABASE_URL", settings.database_url)
    monkeypatch.delenv("HIFHIR_JWT_SECRET", raising=False)
    monkeypatch.delenv("HIFHIR_JWT_SECRET_FILE", raising=False)
    monkeypatch.delenv("HIFHIR_CORS_ORIGINS", raising=False)
    monkeypatch.delenv("HIFHIR_ENV", raising=False)
    return monkeypatch


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """`serve` replaces itself with uvicorn: record the exec instead."""
    calls: list[list[str]] = []
    monkeypatch.setattr(cli.os, "execv", lambda _exe, argv: calls.append(argv))
    return calls


def serve(capsys: Any, *args: str) -> tuple[int, str]:
    code = cli.main(["serve", *args])
    captured = capsys.readouterr()
    return code, captured.err


def test_production_refuses_the_generated_development_secret(env, served, capsys):
    env.setenv("HIFHIR_ENV", "production")

    code, err = serve(capsys)

    assert code != 0 and not served
    assert "development secret" in err
    assert (Path("var") / "jwt-secret").read_text().startswith(DEV_SECRET_PREFIX)


def test_production_refuses_a_short_secret(env, served, capsys):
    env.setenv("HIFHIR_JWT_SECRET", "too-short")

    code, err = serve(capsys, "--production")

    assert code != 0 and not served
    assert "shorter than 32 bytes" in err


def test_production_refuses_a_missing_secret_file(env, served, capsys):
    env.setenv("HIFHIR_JWT_SECRET_FILE", "/nonexistent/jwt-secret")

    code, err = serve(capsys, "--production")

    assert code != 0 and not served
    assert "HIFHIR_JWT_SECRET_FILE" in err


def test_production_refuses_the_development_secret_copied_into_the_environment(env, served, capsys):
    env.setenv("HIFHIR_JWT_SECRET", DEV_SECRET_PREFIX + "x" * 60)

    code, err = serve(capsys, "--production")

    assert code != 0 and "development secret" in err


def test_production_refuses_demo_users_with_the_demo_password(env, served, capsys, engine):
    env.setenv("HIFHIR_JWT_SECRET", STRONG)
    demo_hash = hash_password("admin123")
    with transaction(engine, write=True) as conn:
        conn.execute(update(app_user).where(app_user.c.username == "Admin").values(password_hash=demo_hash))

    code, err = serve(capsys, "--production")

    assert code != 0 and not served
    assert "demo password" in err and "Admin" in err


def test_production_finds_demo_staff_sharing_the_demo_password(env, served, capsys, engine):
    """The demo's officers and claim administrators share one hash of the demo password."""
    env.setenv("HIFHIR_JWT_SECRET", STRONG)
    demo_hash = hash_password("admin123")
    with transaction(engine, write=True) as conn:
        for name in ("E00001", "E00002", "RHOS0011"):
            create_user(conn, name, "", roles=[], password_hash=demo_hash)

    code, err = serve(capsys, "--production")

    assert code != 0 and "E00001 and 2 others" in err


def test_production_refuses_cors_for_every_origin(env, served, capsys):
    env.setenv("HIFHIR_JWT_SECRET", STRONG)
    env.setenv("HIFHIR_CORS_ORIGINS", "https://app.example.org, *")

    code, err = serve(capsys, "--production")

    assert code != 0 and "HIFHIR_CORS_ORIGINS" in err


def test_production_refuses_demo_data(env, served, capsys):
    env.setenv("HIFHIR_JWT_SECRET", STRONG)

    code, err = serve(capsys, "--production", "--demo-if-empty")

    assert code != 0 and "--demo-if-empty" in err


def test_production_serves_a_safe_set_up_from_a_secret_file(env, served, capsys, tmp_path):
    secret_file = tmp_path / "jwt.key"
    secret_file.write_text(STRONG + "\n")
    env.setenv("HIFHIR_JWT_SECRET_FILE", str(secret_file))
    env.setenv("HIFHIR_CORS_ORIGINS", "https://app.example.org")
    env.setenv("HIFHIR_ENV", "production")

    code = cli.main(["serve"])

    assert code == 0 and len(served) == 1
    assert "admin123" not in capsys.readouterr().out  # no demo credentials advertised
    assert load_settings().jwt_secret == STRONG


def test_development_mode_keeps_serving_with_the_generated_secret(env, served, capsys):
    code = cli.main(["serve"])

    assert code == 0 and len(served) == 1
    assert load_settings().jwt_secret_source == "dev-file"


def test_no_secret_at_all_is_refused_in_any_mode(env, served, capsys, backend):
    env.setenv("HIFHIR_JWT_SECRET_FILE", "/nonexistent/jwt-secret")

    code, err = serve(capsys)

    assert code != 0 and not served
    assert "no JWT secret" in err
    with pytest.raises(ValueError, match="no JWT secret"):
        HifhirApp(load_settings(), backend[1])
