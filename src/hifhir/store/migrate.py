"""Schema migrations (Alembic), callable from the CLI and the tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util import CommandError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class UnknownSchemaVersion(RuntimeError):
    """The database records a schema revision this code does not know."""


def upgrade(url: str) -> None:
    try:
        command.upgrade(alembic_config(url), "head")
    except CommandError as exc:
        if "Can't locate revision" not in str(exc):
            raise
        # Until the first release the schema is one initial revision, regenerated when tables change: a database
        # made by an earlier development version cannot be upgraded, only recreated.
        raise UnknownSchemaVersion(
            f"The database at {url.split('@')[-1]} was made by another hifhir version ({exc}). "
            "Recreate it: delete the SQLite file (var/hifhir.db by default) or drop the PostgreSQL database, "
            "then start again (`make run` loads the demo into an empty database)."
        ) from None


def revision(url: str, message: str) -> None:
    """Developer helper: autogenerate a new migration from the table definitions."""
    command.revision(alembic_config(url), message=message, autogenerate=True)
