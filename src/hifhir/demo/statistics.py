"""Planner statistics after a demo load (PostgreSQL).

The load writes the registers, the catalogue and the population in a few minutes; autovacuum analyses the tables it
filled when it gets to them, and until then PostgreSQL plans their statements as if they were nearly empty. A
generic plan made then is kept: measured on the benchmark's database, a claim's coverage lines were read by walking
a product's whole coverage list (0.9 ms a claim) instead of probing it (0.08 ms).
"""

from __future__ import annotations

from sqlalchemy import Engine, literal, select, text

from hifhir.store.tables import metadata


def analyze_loaded_tables(engine: Engine) -> list[str]:
    """ANALYZE every table that holds rows (PostgreSQL; SQLite plans without statistics) and return their names.
    Empty tables are left to autovacuum: statistics taken while the claims' tables are empty would mislead the plans
    of their first thousands of rows (bench/README.md, ninth session)."""
    if engine.dialect.name != "postgresql":
        return []
    quote = engine.dialect.identifier_preparer.quote
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        filled = [table.name for table in metadata.sorted_tables
                  if conn.execute(select(literal(1)).select_from(table).limit(1)).first() is not None]
        if filled:
            conn.execute(text("ANALYZE " + ", ".join(quote(name) for name in filled)))
    return filled
