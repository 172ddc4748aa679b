"""Bring a database to a usable state: schema, code lists, the configured insurer, the first administrator."""

from __future__ import annotations

from sqlalchemy import Engine, select

from hifhir.auth.roles import converge_system_roles
from hifhir.auth.users import create_user
from hifhir.config import Settings
from hifhir.fhir.profiles.organization import sync_insurer
from hifhir.jobs import start_job_clock
from hifhir.store import migrate
from hifhir.store.codelists import seed_code_lists
from hifhir.store.db import transaction
from hifhir.store.tables import app_user

DEMO_ADMIN = ("Admin", "admin123")


def prepare(settings: Settings, engine: Engine) -> None:
    migrate.upgrade(settings.database_url)
    with transaction(engine, write=True) as conn:
        seed_code_lists(conn)
        converge_system_roles(conn)
        sync_insurer(conn, settings.insurer)
        start_job_clock(conn)


def ensure_admin(engine: Engine, username: str = DEMO_ADMIN[0], password: str = DEMO_ADMIN[1]) -> bool:
    """Create the administrator when the database has no user at all; returns whether it was created."""
    with transaction(engine, write=True) as conn:
        if conn.execute(select(app_user.c.pk).limit(1)).first() is not None:
            return False
        create_user(conn, username, password, roles=["IMIS Administrator"], last_name="Admin",
                    other_names="Admin")
        return True
