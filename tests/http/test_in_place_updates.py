"""Rows that are updated again and again (`store.tables.UPDATED_IN_PLACE`: insurees, families, policies, Coverages,
invoices) are updated in place on PostgreSQL — heap-only tuple updates, which write no index entry — and a search by
_lastUpdated still finds exactly the resources changed in the range, on both backends."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, text

from hifhir.fhir.registry import KINDS
from hifhir.store.db import transaction
from hifhir.store.fast import STATEMENT_OBSERVERS
from hifhir.store.tables import UPDATED_IN_PLACE, insuree, is_current
from tests.builders_enrolment import contract as contract_of
from tests.builders_enrolment import days_ago, family_contract, make_family, make_scheme
from tests.conftest import Api
from tests.http.test_payments import invoice_of, notice
from tests.responses import created

TYPES = {"insuree": "Patient", "family": "Group", "policy": "Contract", "coverage": "Coverage", "invoice": "Invoice"}
# Every column an index of the table names: its keys, its expressions' and its predicate's columns.
_INDEXED = text("""
    SELECT DISTINCT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum > 0
    WHERE i.indrelid = CAST(:table AS regclass)
      AND (a.attnum = ANY(i.indkey)
           OR coalesce(pg_get_expr(i.indexprs, i.indrelid), '') ~ ('\\m' || a.attname || '\\M')
           OR coalesce(pg_get_expr(i.indpred, i.indrelid), '') ~ ('\\m' || a.attname || '\\M'))
""")


def on_postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("heap-only tuple updates and fillfactor are PostgreSQL's")


def updates_sent(engine: Engine, call: Any) -> list[str]:
    """The UPDATE statements `call()` sends, whichever way they reach the driver."""
    seen: list[str] = []

    def record(sql: str) -> None:
        seen.append(" ".join(sql.split()))

    def record_sqlalchemy(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        record(sql)

    STATEMENT_OBSERVERS.append(record)
    event.listen(engine, "before_cursor_execute", record_sqlalchemy)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", record_sqlalchemy)
        STATEMENT_OBSERVERS.remove(record)
    return [sql for sql in seen if sql.startswith("UPDATE ")]


def set_columns(update: str) -> tuple[str, set[str]]:
    """The table an UPDATE changes and the columns it sets."""
    m = re.match(r"UPDATE (\w+) SET (.*?) WHERE ", update)
    assert m, update
    return m.group(1), set(re.findall(r"(\w+)\s*=", m.group(2)))


def listing(api: Api, resource_type: str) -> dict[str, str]:
    """id → meta.lastUpdated of every resource of the type."""
    resp = api.get(f"{resource_type}?_count=200")
    assert resp.status_code == 200, resp.text
    bundle = resp.json()
    assert "next" not in {link["relation"] for link in bundle.get("link", [])}
    return {e["resource"]["id"]: e["resource"]["meta"]["lastUpdated"] for e in bundle.get("entry", [])}


def found(api: Api, query: str) -> set[str]:
    resp = api.get(query)
    assert resp.status_code == 200, resp.text
    return {e["resource"]["id"] for e in resp.json().get("entry", [])}


@pytest.fixture
def paid(api: Api, engine: Engine) -> Any:
    """A scheme with two families, each enrolled; the instant after that; the updates the payment in full of the
    first family's contribution (which activates its policy) sent. The second family is not touched again."""
    s = make_scheme(api)
    other, members = make_family(api, s.places["V1"], prefix="2000000")
    untouched = created(api.post("Contract", contract_of(
        f"Group/{other}", members["head"], list(members.values()), s.products["BC01"], issued=days_ago(10),
        officer_id=s.officer)))
    contract = created(api.post("Contract", family_contract(s, "BC01", issued=days_ago(10))))
    invoice_of(api, engine, untouched["id"])  # its contribution invoice, never paid
    invoice_id = invoice_of(api, engine, contract["id"])
    enrolled = max(max(listing(api, t).values()) for t in TYPES.values())

    def pay() -> None:
        created(api.post("PaymentNotice", notice(f"Invoice/{invoice_id}", 10000, "TX-HOT-1", pay_date=days_ago(1))))

    return s, contract, enrolled, updates_sent(engine, pay)


def test_on_postgresql_the_tables_updated_in_place_keep_room_in_their_pages_and_no_index_on_their_change_time(
        engine):
    on_postgresql(engine)
    with transaction(engine, write=False) as conn:
        for table in UPDATED_IN_PLACE:
            options = conn.execute(text("SELECT reloptions FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                                   {"t": table}).scalar_one()
            assert options == ["fillfactor=85"], table
            assert "last_updated" not in set(conn.execute(_INDEXED, {"table": table}).scalars()), table
            assert "last_updated" in set(conn.execute(_INDEXED, {"table": "bill"}).scalars())  # others keep it


def test_on_sqlite_the_tables_updated_in_place_keep_their_change_time_index(engine):
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's schema")
    with transaction(engine, write=False) as conn:
        names = set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'")).scalars())
    assert {f"ix_{table}_last_updated" for table in UPDATED_IN_PLACE} <= names


def test_on_postgresql_a_payment_that_activates_a_policy_changes_no_indexed_column_of_the_rows_it_updates(
        engine, paid):
    """Each UPDATE can then be a heap-only tuple: no entry in any of the table's indexes (ten for insuree)."""
    on_postgresql(engine)
    _s, _contract, _enrolled, updates = paid
    with transaction(engine, write=False) as conn:
        indexed = {table: set(conn.execute(_INDEXED, {"table": table}).scalars()) for table in UPDATED_IN_PLACE}
    changed: dict[str, set[str]] = {}
    for update in updates:
        table, columns = set_columns(update)
        changed.setdefault(table, set()).update(columns)
    assert set(UPDATED_IN_PLACE) <= changed.keys()
    assert {table: sorted(changed[table] & indexed[table]) for table in UPDATED_IN_PLACE} == \
        {table: [] for table in UPDATED_IN_PLACE}


@pytest.mark.parametrize("resource_type", list(TYPES.values()))
def test_a_search_by_last_updated_finds_exactly_the_resources_changed_in_the_range(api, paid, resource_type):
    _s, _contract, enrolled, _updates = paid
    every = listing(api, resource_type)
    changed = {rid for rid, at in every.items() if at > enrolled}
    assert changed and changed != set(every)  # the payment re-versioned some of them, not all
    newest = max(every.values())

    assert found(api, f"{resource_type}?_lastUpdated=gt{enrolled}&_count=200") == changed
    assert found(api, f"{resource_type}?_lastUpdated=ge{newest}&_count=200") == \
        {rid for rid, at in every.items() if at == newest}
    assert found(api, f"{resource_type}?_lastUpdated=eq{newest}&_count=200") == \
        {rid for rid, at in every.items() if at == newest}
    assert found(api, f"{resource_type}?_lastUpdated=le{enrolled}&_count=200") == set(every) - changed
    assert found(api, f"{resource_type}?_lastUpdated=gt{newest}&_count=200") == set()


def test_on_postgresql_a_search_since_an_instant_reaches_the_insurees_through_the_stored_versions(api, engine, paid):
    """Without an index on insuree.last_updated, the rows changed since an instant are found from the stored
    versions' indexes and the ids' unique index: with sequential scans ruled out, none is left."""
    on_postgresql(engine)
    _s, _contract, enrolled, _updates = paid
    since = KINDS["patient"].search_params["_lastUpdated"].clause(f"gt{enrolled}", None, "_lastUpdated")
    query = select(insuree.c.pk).where(is_current(insuree), since)
    sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with transaction(engine, write=False) as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(conn.execute(text("EXPLAIN " + sql)).scalars())
    assert "Seq Scan" not in plan, plan
    assert "resource_version" in plan and "uq_insuree_id" in plan, plan
