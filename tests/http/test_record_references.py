"""The record tables' references (`store.tables.record_reference`: claims, their lines and deductions, eligibility
enquiries, payment notices, audit entities) are foreign keys on SQLite only: on PostgreSQL a foreign key check would
lock each row referred to, writing into rows that every claim or enquiry shares."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, Table, select, text

from hifhir.store.db import transaction
from hifhir.store.tables import (
    claim_admin,
    health_facility,
    insuree,
    medical_item,
    medical_service,
    metadata,
    policy,
    product,
    record_references,
)
from tests.builders_eligibility import enquiry
from tests.http.test_claims import World, answered, claim_of, world  # noqa: F401 (the fixture)

RECORD_TABLES = {"claim", "claim_item", "claim_service", "claim_ded_rem", "eligibility_enquiry", "payment_notice",
                 "audit_entity"}


def foreign_keys(engine: Engine) -> set[tuple[str, str, str]]:
    """(table, column, table referred to) of every foreign key of the record tables in the database."""
    found = set()
    with transaction(engine, write=False) as conn:
        for table in RECORD_TABLES:
            if engine.dialect.name == "postgresql":
                rows = conn.execute(text(
                    "SELECT a.attname, c.confrelid::regclass::text FROM pg_constraint c JOIN pg_attribute a"
                    " ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
                    " WHERE c.contype = 'f' AND c.conrelid = CAST(:t AS regclass)"), {"t": table}).all()
            else:
                rows = [(r.from_, r.table) for r in conn.execute(text(
                    f"SELECT [from] AS from_, [table] AS 'table' FROM pragma_foreign_key_list('{table}')")).all()]
            found |= {(table, column, referred) for column, referred in rows}
    return found


def xmax(engine: Engine, rows: list[tuple[Table, Any]]) -> list[int]:
    """The xmax of each (table, pk) row: the transaction that last locked, updated or deleted it."""
    with transaction(engine, write=False) as conn:
        return [int(conn.execute(select(text("xmax::text::bigint")).select_from(t).where(t.c.pk == pk)).scalar_one())
                for t, pk in rows]


def referred_rows(engine: Engine, w: World) -> list[tuple[Table, Any]]:
    """The rows a claim of the world refers to."""
    with transaction(engine, write=False) as conn:
        def pk(t: Table, **where: Any) -> Any:
            return conn.execute(select(t.c.pk).where(*(t.c[k] == v for k, v in where.items()))).scalar_one()

        return [(health_facility, pk(health_facility, id=w.places.facility)),
                (insuree, pk(insuree, id=w.patient["id"])),
                (claim_admin, pk(claim_admin, id=w.ca)),
                (medical_item, pk(medical_item, code="0001")),
                (medical_service, pk(medical_service, code="A1")),
                (product, pk(product, code="BASIC")),
                (policy, conn.execute(select(policy.c.pk)).scalar_one())]


def test_the_record_tables_have_foreign_keys_on_sqlite_and_none_on_postgresql(engine):
    expected = set(record_references())
    assert {table for table, _, _ in expected} == RECORD_TABLES
    assert ("claim_item", "item_pk", "medical_item") in expected
    found = foreign_keys(engine)
    assert found == (set() if engine.dialect.name == "postgresql" else expected)


def test_the_other_tables_keep_their_foreign_keys_in_the_model(engine):
    recorded = {(t, c) for t, c, _ in record_references()}
    kept = {(t.name, fk.parent.name) for t in metadata.tables.values() for fk in t.foreign_keys}
    assert ("insuree_policy", "policy_pk") in kept and ("price_list_item", "item_pk") in kept
    assert recorded <= kept  # the model still knows every reference (joins, SQLite's schema)


def test_on_postgresql_a_claim_locks_none_of_the_rows_it_refers_to(api, engine, world):  # noqa: F811
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks taken by foreign key checks are PostgreSQL's")
    rows = referred_rows(engine, world)
    before = xmax(engine, rows)
    answered(api.post("Claim", claim_of(world)))
    assert xmax(engine, rows) == before


def test_on_postgresql_an_enquiry_does_not_lock_its_insuree(api, engine, world):  # noqa: F811
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks taken by foreign key checks are PostgreSQL's")
    rows = referred_rows(engine, world)[1:2]
    before = xmax(engine, rows)
    resp = api.post("CoverageEligibilityRequest", enquiry(f"Patient/{world.patient['id']}", service="A1",
                                                          item="0001"))
    assert resp.status_code == 200, resp.text
    assert xmax(engine, rows) == before
