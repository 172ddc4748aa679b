"""A thread that holds its connections (`store.db.hold`: a served process's event loop, an outbox loop) runs its
transactions and reads on one connection per engine instead of the pool's, and leaves it as the pool would."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, text
from starlette.testclient import TestClient

from hifhir.api import rest
from hifhir.api.app import HifhirApp
from hifhir.fhir.errors import FhirError
from hifhir.store.db import after_commit, connection, hold, reader, release, transaction
from hifhir.store.tables import outbox
from tests.builders import location


@pytest.fixture
def held(app: HifhirApp) -> Iterator[Engine]:
    """The test's thread holds its connections to the app's engine (the app resets the tables first)."""
    engine = app.engine
    hold(engine)
    try:
        yield engine
    finally:
        release(engine)


@pytest.fixture
def checkouts(app: HifhirApp) -> Iterator[list[int]]:
    """The threads (idents) that take a connection out of the app engine's pool, from now on."""
    seen: list[int] = []

    def taken(*_args: Any) -> None:
        seen.append(threading.get_ident())

    event.listen(app.engine, "checkout", taken)
    try:
        yield seen
    finally:
        event.remove(app.engine, "checkout", taken)


def _driver(conn: Any) -> Any:
    return conn.connection.driver_connection


def _outbox_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(text("count(*)")).select_from(outbox)).scalar_one())


def _enqueue_row(conn: Any, row_id: str) -> None:
    conn.execute(outbox.insert().values(id=row_id, topic="test-held", status="pending", attempts=0,
                                        next_attempt=0, locked_until=0, created=0))


def test_a_holding_thread_runs_its_transactions_on_one_connection(held, checkouts):
    with transaction(held, write=True) as conn:
        first = _driver(conn)
    with transaction(held, write=False) as conn:
        second = _driver(conn)
    with transaction(held, write=True) as conn:
        third = _driver(conn)

    assert first is second is third
    assert checkouts == [threading.get_ident()]  # taken from the pool once, for the first transaction


def test_a_thread_that_does_not_hold_takes_a_connection_from_the_pool_each_time(app, checkouts):
    for _ in range(3):
        with transaction(app.engine, write=False):
            pass

    assert checkouts == [threading.get_ident()] * 3


def test_a_transaction_inside_a_transaction_gets_a_connection_of_its_own(held):
    with transaction(held, write=True) as outer:
        _enqueue_row(outer, "outer")
        with transaction(held, write=False) as inner:
            assert _driver(inner) is not _driver(outer)
    with transaction(held, write=False) as again:
        assert _driver(again) is _driver(outer)  # the held one, free again

    assert _outbox_rows(held) == 1


def test_a_failed_transaction_leaves_nothing_behind_on_the_held_connection(held):
    with pytest.raises(FhirError), transaction(held, write=True) as conn:
        _enqueue_row(conn, "rolled-back")
        raise FhirError.one(422, "business-rule", "refused")
    with transaction(held, write=True) as conn:
        _enqueue_row(conn, "kept")

    with held.connect() as other:
        assert other.execute(select(outbox.c.id)).scalars().all() == ["kept"]


def test_a_commit_that_fails_leaves_the_held_connection_usable(held):
    """PostgreSQL checks a unique key the transaction's deferred INSERT breaks at the COMMIT, and a failed COMMIT
    leaves the transaction aborted: the next transaction on the held connection still works."""
    with transaction(held, write=True) as conn:
        _enqueue_row(conn, "dup")
    with pytest.raises(Exception), transaction(held, write=True) as conn:  # noqa: B017 (the driver's IntegrityError)
        _enqueue_row(conn, "dup")
    with transaction(held, write=True) as conn:
        _enqueue_row(conn, "next")

    assert _outbox_rows(held) == 2


def test_a_held_connection_found_broken_is_replaced(held):
    with transaction(held, write=False) as conn:
        lost = _driver(conn)
    conn.invalidate()  # what SQLAlchemy does to a connection whose statement failed on a broken link
    with transaction(held, write=True) as conn:
        _enqueue_row(conn, "after")
        assert _driver(conn) is not lost

    assert _outbox_rows(held) == 1


def test_reads_on_the_held_connection_leave_no_transaction_open(app, held):
    read = reader(held)
    hold(read)
    try:
        with connection(read) as conn:
            conn.execute(select(outbox.c.id)).all()
            used = _driver(conn)
        with connection(read) as conn:
            assert _driver(conn) is used
            assert not conn.in_transaction()
        with transaction(held, write=True) as conn:  # a writer is not kept waiting by a read snapshot
            _enqueue_row(conn, "written")
        with connection(read) as conn:
            assert conn.execute(select(outbox.c.id)).scalars().all() == ["written"]
    finally:
        release(read)


def test_after_commit_callbacks_run_once_committed_and_never_after_a_rollback(held):
    seen: list[tuple[str, int]] = []
    with transaction(held, write=True) as conn:
        _enqueue_row(conn, "a")
        after_commit(conn, lambda: seen.append(("committed", _outbox_rows(held))))
    with pytest.raises(RuntimeError), transaction(held, write=True) as conn:
        _enqueue_row(conn, "b")
        after_commit(conn, lambda: seen.append(("rolled back", _outbox_rows(held))))
        raise RuntimeError("boom")
    with transaction(held, write=True):
        pass

    assert seen == [("committed", 1)]  # run after the commit: another connection sees the row


def test_a_failing_after_commit_callback_does_not_undo_or_fail_the_transaction(held, caplog):
    def broken() -> None:
        raise ValueError("callback bug")

    with transaction(held, write=True) as conn:
        _enqueue_row(conn, "kept")
        after_commit(conn, broken)

    assert _outbox_rows(held) == 1
    assert "after-commit callback failed" in caplog.text


def test_release_gives_the_connection_back_to_the_pool(held):
    returned: list[int] = []

    def checked_in(*_args: Any) -> None:
        returned.append(threading.get_ident())

    with transaction(held, write=False):
        pass
    event.listen(held, "checkin", checked_in)
    try:
        release(held)
        assert returned == [threading.get_ident()]
        with transaction(held, write=False):
            pass
        assert len(returned) == 2  # no longer held: back to the pool at the end
    finally:
        event.remove(held, "checkin", checked_in)


def test_the_served_app_runs_its_requests_on_held_connections(app, checkouts, monkeypatch):
    """Under its lifespan (as `hifhir serve` runs it) the thread that serves the requests takes its connections from
    the pool during its first requests, and none after them."""
    serving: list[int] = []
    create = rest.create

    def creating(*args: Any, **kwargs: Any) -> Any:
        serving.append(threading.get_ident())
        return create(*args, **kwargs)

    monkeypatch.setattr(rest, "create", creating)
    with TestClient(app, base_url="http://testserver") as client:
        headers = {"Authorization": f"Bearer {app.tokens.issue('Admin')[0]}",
                   "Content-Type": "application/fhir+json"}
        taken_by_round = []
        for n in range(4):
            created = client.post("/fhir/Location", json=location(f"H{n}", f"Held {n}", "R"), headers=headers)
            assert created.status_code == 201, created.text
            found = client.get(f"/fhir/Location?identifier=H{n}", headers=headers)
            assert found.status_code == 200 and len(found.json()["entry"]) == 1
            assert client.get(f"/fhir/Location/{created.json()['id']}", headers=headers).status_code == 200
            taken_by_round.append(checkouts.count(serving[0]))

    assert len(serving) == 4 and set(serving) == {serving[0]}
    assert taken_by_round[0] >= 1
    assert taken_by_round == [taken_by_round[0]] * 4  # nothing taken from the pool after the first round
