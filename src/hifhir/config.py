"""Runtime settings, read once from the environment (12-factor style)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SQLITE_PATH = Path("var") / "hifhir.db"


def _secret_from_file(path: Path) -> str:
    # A generated secret that survives restarts, so tokens stay valid across `make run` invocations.
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    path.write_text(value)
    path.chmod(0o600)
    return value


# Settings the FHIR mappings need outside any request (rendering happens inside write transactions and the demo
# loader): read once per process from the environment.
SCHEME_CURRENCY = os.environ.get("HIFHIR_CURRENCY", "EUR")  # every amount of the scheme (prices, premiums)
PUBLIC_BASE_URL = os.environ.get("HIFHIR_PUBLIC_BASE_URL", "http://127.0.0.1:8080/fhir").rstrip("/")
# Which checked claims are selected for feedback (domain §3.4.1, domain/claims/feedback.py parse_rule): off,
# all:<min claimed>, random:<percent> or variance:<percent>[:<min claimed>].
FEEDBACK_SELECTION = os.environ.get("HIFHIR_FEEDBACK_SELECTION", "off")


@dataclass(slots=True)
class InsurerConfig:
    """The insurer Organization (`ins`) has no table in openIMIS: it is module configuration."""

    id: str = "openIMIS-Implementation"
    code: str = "openIMIS"
    name: str = "openIMIS Implementation"
    email: str | None = "implementation@openimis.org"
    phone: str | None = None
    fax: str | None = None


@dataclass(slots=True)
class Settings:
    database_url: str = f"sqlite:///{DEFAULT_SQLITE_PATH}"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    jwt_secret: str = ""
    token_lifetime_s: int = 24 * 3600
    page_size_default: int = 10
    page_size_max: int = 1000
    max_body_bytes: int = 5 * 1024 * 1024
    include_max: int = 1000  # resources _include/_revinclude may add to one page
    # How far the sync point handed to clients (Bundle.meta.lastUpdated) lags behind the clock: a write transaction
    # stamps its changes when it starts, so one still running when a client reads commits changes older than the
    # read. The lag must exceed the longest write transaction.
    sync_settle_ms: int = 5000
    insurer: InsurerConfig = field(default_factory=InsurerConfig)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings() -> Settings:
    env = os.environ
    url = env.get("HIFHIR_DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE_PATH}"
    # Accept the usual postgres:// spellings and pick the psycopg 3 driver.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    secret = env.get("HIFHIR_JWT_SECRET") or _secret_from_file(Path("var") / "jwt-secret")
    return Settings(
        database_url=url,
        host=env.get("HIFHIR_HOST", "127.0.0.1"),
        port=int(env.get("HIFHIR_PORT", "8080")),
        workers=int(env.get("HIFHIR_WORKERS", str(os.cpu_count() or 1))),
        jwt_secret=secret,
        page_size_default=int(env.get("HIFHIR_PAGE_SIZE", "10")),
        page_size_max=int(env.get("HIFHIR_PAGE_SIZE_MAX", "1000")),
        max_body_bytes=int(env.get("HIFHIR_MAX_BODY_BYTES", str(5 * 1024 * 1024))),
        include_max=int(env.get("HIFHIR_INCLUDE_MAX", "1000")),
        sync_settle_ms=int(env.get("HIFHIR_SYNC_SETTLE_MS", "5000")),
    )
