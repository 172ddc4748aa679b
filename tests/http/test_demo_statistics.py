"""After a demo load the planner has statistics for every table the load filled (PostgreSQL), and none are taken of
the empty ones (the claims' tables, which requests fill)."""

from __future__ import annotations

from sqlalchemy import text

from hifhir.demo.statistics import analyze_loaded_tables
from tests.builders import location
from tests.responses import created


def test_the_tables_a_load_filled_are_analysed_and_the_empty_ones_left_alone(api, engine):
    created(api.post("Location", location("R9", "Ultha", "R")))

    analysed = analyze_loaded_tables(engine)

    if engine.dialect.name == "sqlite":
        assert analysed == []  # SQLite plans without statistics
        return
    assert "location" in analysed and "resource_version" in analysed
    assert "claim" not in analysed and "claim_item" not in analysed
    with engine.connect() as conn:
        columns = conn.execute(text("SELECT attname FROM pg_stats WHERE schemaname = current_schema() "
                                    "AND tablename = 'location'")).scalars().all()
    assert "type" in columns and "name" in columns
