"""Shared fixtures: the same HTTP tests run on SQLite and on a real PostgreSQL server.

`make test` starts a throw-away PostgreSQL cluster and exports HIFHIR_TEST_PG_URL; a bare `pytest` starts one
itself. Each pytest-xdist worker gets its own databases; each test starts from a clean, seeded database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from hifhir.api.app import HifhirApp
from hifhir.auth.users import create_user
from hifhir.config import Settings
from hifhir.setup import prepare
from hifhir.store.db import make_engine, transaction
from hifhir.store.tables import metadata

# Every resource a write re-versions by patching its stored body is rendered too, and the two must agree
# (hifhir.fhir.patching); servers the tests start inherit it.
os.environ.setdefault("HIFHIR_VERIFY_PATCHES", "1")

EXAMPLES = Path(__file__).parent / "fixtures" / "ig_examples"
ADMIN = ("Admin", "admin123")
CLERK = ("clerk", "clerk123")  # openIMIS Clerk: insurees and families, no location or facility writes
NOBODY = ("nobody", "nobody123")  # a user with no role at all


def load_example(name: str) -> dict[str, Any]:
    return orjson.loads((EXAMPLES / f"{name}.json").read_bytes())


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    url = os.environ.get("HIFHIR_TEST_PG_URL")
    if url:
        yield url
        return
    from tests import pg_cluster

    url = pg_cluster.start()
    try:
        yield url
    finally:
        pg_cluster.stop()


def _worker() -> str:
    # HIFHIR_TEST_DB_TAG keeps concurrent pytest runs sharing one cluster on separate databases.
    return os.environ.get("HIFHIR_TEST_DB_TAG", "") + os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, Engine]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db')}/hifhir.db"
    else:
        from tests import pg_cluster

        admin_url = request.getfixturevalue("pg_admin_url")
        url = pg_cluster.create_database(admin_url, f"hifhir_test_{_worker()}")
    settings = Settings(database_url=url, jwt_secret="test-secret-" + "x" * 32, port=8080)
    engine = make_engine(url)
    prepare(settings, engine)
    yield settings, engine
    engine.dispose()


def _reset(settings: Settings, engine: Engine) -> None:
    names = [t.name for t in reversed(metadata.sorted_tables)]
    for attempt in range(3):
        try:
            with transaction(engine, write=True) as conn:
                if settings.is_sqlite:
                    conn.exec_driver_sql("PRAGMA defer_foreign_keys=ON")
                    for name in names:
                        conn.execute(text(f'DELETE FROM "{name}"'))
                else:
                    conn.execute(text("TRUNCATE " + ", ".join(f'"{n}"' for n in names) + " RESTART IDENTITY CASCADE"))
            break
        except OperationalError:
            # An earlier test's app may still be writing its audit trail (asynchronously): PostgreSQL then breaks
            # the deadlock between that INSERT and this TRUNCATE of every table by failing one of them.
            if attempt == 2:
                raise
    prepare(settings, engine)
    with transaction(engine, write=True) as conn:
        create_user(conn, ADMIN[0], "", roles=["IMIS Administrator"], password_hash=_HASHES[ADMIN])
        create_user(conn, CLERK[0], "", roles=["Clerk"], password_hash=_HASHES[CLERK])
        create_user(conn, NOBODY[0], "", roles=[], password_hash=_HASHES[NOBODY])


def _hashes() -> dict[tuple[str, str], str]:
    from hifhir.auth.passwords import hash_password

    return {user: hash_password(user[1]) for user in (ADMIN, CLERK, NOBODY)}


_HASHES = _hashes()


class Api:
    """A thin client over the real ASGI app, logged in as one user."""

    def __init__(self, client: TestClient, token: str, base: str = "/fhir") -> None:
        self.client = client
        self.token = token
        self.base = base

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/fhir+json"}
        h.update(extra or {})
        return h

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(self._url(path), headers=self.headers(kw.pop("headers", None)), **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return self.client.post(self._url(path), content=data, headers=self.headers(kw.pop("headers", None)), **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Any:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return self.client.put(self._url(path), content=data, headers=self.headers(kw.pop("headers", None)), **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.client.delete(self._url(path), headers=self.headers(kw.pop("headers", None)), **kw)

    def _url(self, path: str) -> str:
        return path if path.startswith(("/", "http")) else f"{self.base}/{path}"

    def as_alias(self) -> Api:
        return Api(self.client, self.token, "/api/api_fhir_r4")


def login(client: TestClient, user: tuple[str, str]) -> str:
    resp = client.post("/api/api_fhir_r4/login/", json={"username": user[0], "password": user[1]})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["token"])


@pytest.fixture
def app(backend: tuple[Settings, Engine]) -> HifhirApp:
    settings, engine = backend
    _reset(settings, engine)
    return HifhirApp(settings, engine)


@pytest.fixture
def client(app: HifhirApp) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def api(client: TestClient, app: HifhirApp) -> Api:
    # Login (argon2, deliberately slow) is tested on its own; other tests take a token straight from the issuer.
    return Api(client, app.tokens.issue(ADMIN[0])[0])


@pytest.fixture
def engine(backend: tuple[Settings, Engine]) -> Engine:
    return backend[1]


@pytest.fixture
def command_env(backend: tuple[Settings, Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment a `hifhir` command run in the test (cli.main) needs to reach the test's database."""
    settings, _engine = backend
    monkeypatch.setenv("HIFHIR_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("HIFHIR_JWT_SECRET", "x" * 40)
