"""no foreign keys from the record tables on PostgreSQL

Revision ID: 9b4e6f1d2c8a
Revises: 5e8d2c41a7f3
Create Date: 2026-11-27 11:00:00

Claims and their lines and deductions, eligibility enquiries, payment notices and audit entities are records the
server alone inserts, each after reading in the same transaction the rows it refers to. On PostgreSQL a foreign
key check locks the row referred to (FOR KEY SHARE): the lock is written into that row's header (a dirtied page and
a WAL record per reference; a ten-line claim made about fifty) and the rows every claim refers to — its facility,
the products, the common items — become MultiXacts shared by the concurrent transactions. The rows referred to are
never physically deleted (registers are soft-deleted and keep their history). SQLite checks a reference with an
index lookup and locks nothing: it keeps its foreign keys. See `store.tables.record_reference`.
"""

from alembic import op

revision = "9b4e6f1d2c8a"
down_revision = "5e8d2c41a7f3"
branch_labels = None
depends_on = None

# (table, column, table referred to); the constraint is fk_<table>_<column>_<referred> (the naming convention)
REFERENCES = (
    ("eligibility_enquiry", "insuree_pk", "insuree"),
    ("claim", "hf_pk", "health_facility"),
    ("claim", "insuree_pk", "insuree"),
    ("claim", "claim_admin_pk", "claim_admin"),
    ("claim", "run_pk", "batch_run"),
    *((lines, column, referred) for lines in ("claim_item", "claim_service")
      for column, referred in (("claim_pk", "claim"), ("product_pk", "product"), ("policy_pk", "policy"))),
    ("claim_item", "item_pk", "medical_item"),
    ("claim_service", "service_pk", "medical_service"),
    ("claim_ded_rem", "claim_pk", "claim"),
    ("claim_ded_rem", "policy_pk", "policy"),
    ("claim_ded_rem", "insuree_pk", "insuree"),
    ("payment_notice", "invoice_pk", "invoice"),
    ("payment_notice", "bill_pk", "bill"),
    ("payment_notice", "reconciliation_pk", "payment_reconciliation"),
    ("audit_entity", "event_pk", "audit_event"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, referred in REFERENCES:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS fk_{table}_{column}_{referred}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, referred in REFERENCES:
        op.create_foreign_key(f"fk_{table}_{column}_{referred}", table, referred, [column], ["pk"])
