"""A database made by another development version of the schema gets a clear message, not a traceback."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hifhir.cli import main
from hifhir.store.migrate import UnknownSchemaVersion, upgrade


def stale_database(tmp_path: Path) -> str:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('0123456789ab')")
    return f"sqlite:///{path}"


def test_an_unknown_revision_is_reported_with_what_to_do(tmp_path):
    with pytest.raises(UnknownSchemaVersion, match="Recreate it"):
        upgrade(stale_database(tmp_path))


def test_the_cli_says_so_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HIFHIR_DATABASE_URL", stale_database(tmp_path))
    assert main(["migrate"]) == 2
    assert "made by another hifhir version" in capsys.readouterr().err


def test_a_fresh_database_migrates(tmp_path):
    upgrade(f"sqlite:///{tmp_path / 'new.db'}")
    with sqlite3.connect(tmp_path / "new.db") as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
