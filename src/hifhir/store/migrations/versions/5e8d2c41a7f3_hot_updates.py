"""in-place updates of insurees, families, policies, Coverages and invoices on PostgreSQL

Revision ID: 5e8d2c41a7f3
Revises: c3f1a9d2e4b7
Create Date: 2026-11-27 09:40:00

A payment that activates a policy re-versions its insurees, their family, the policy, its Coverage and the invoice:
each an UPDATE that sets `last_updated`. On PostgreSQL an UPDATE that changes an indexed column writes an entry in
every index of the table (insuree has ten); one that changes none can be a heap-only tuple (HOT) update, which
writes none, when the row's page has room. So on PostgreSQL these tables lose their `last_updated` index (a search
by _lastUpdated reaches their rows through resource_version's time index instead) and keep 15 % of each page
free for the updated rows (fillfactor 85). The fillfactor applies to pages written from now on: rows already
stored move to pages with room at their first update, and VACUUM makes the pages they leave usable again.
SQLite updates only the indexes whose columns changed: it keeps the index, and has no fillfactor.
"""

from alembic import op

revision = "5e8d2c41a7f3"
down_revision = "c3f1a9d2e4b7"
branch_labels = None
depends_on = None

TABLES = ("insuree", "family", "policy", "coverage", "invoice")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP INDEX IF EXISTS ix_{table}_last_updated")
        op.execute(f"ALTER TABLE {table} SET (fillfactor = 85)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
        op.execute(f"CREATE INDEX IF NOT EXISTS ix_{table}_last_updated ON {table} (last_updated)")
