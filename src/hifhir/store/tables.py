"""The relational domain model: one table per openIMIS entity, plus history and security tables.

Every FHIR-exposed entity table shares the same resource columns (see `resource_columns`):
`pk` (internal integer key, also the stable keyset-paging order), `id` (the FHIR id, a UUID for server-created
rows), `version_id` and `last_updated` (of the latest FHIR version) and `deleted` (logical delete).
Timestamps are integer microseconds since the Unix epoch (UTC) so both engines compare them exactly.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator, TypeEngine

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Spelled per dialect exactly as `is_current()` renders, so the planner can use the partial indexes.
NOT_DELETED_SQLITE = text("deleted = 0")
NOT_DELETED_PG = text("deleted = false")


def is_current(table: Table) -> ColumnElement[bool]:
    """Not logically deleted (renders `deleted = 0` / `deleted = false`, matching the partial indexes)."""
    return table.c.deleted == false()


def SortText(length: int) -> TypeEngine[str]:
    """Text compared byte-wise on both engines: prefix search ranges and the cross-kind merge of keyset paging
    assume byte order, which a PostgreSQL database with a linguistic default collation would not give."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


class DefaultCollation(ColumnElement[Any]):
    """`expr` (an entity's id, `SortText`) compared in the database's default collation. PostgreSQL: entity ids are
    collated "C" and resource_version.res_id is not, and a comparison in "C" cannot use resource_version's key index:
    it reads every stored version of the type instead. SQLite has one collation for both."""

    inherit_cache = True
    _traverse_internals: ClassVar[Any] = [("expr", InternalTraversal.dp_clauseelement)]

    def __init__(self, expr: ColumnElement[Any]) -> None:
        self.expr = expr
        self.type = expr.type


@compiles(DefaultCollation)
def _compile_plain(element: DefaultCollation, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.expr, **kw))


@compiles(DefaultCollation, "postgresql")
def _compile_default_collation(element: DefaultCollation, compiler: Any, **kw: Any) -> str:
    return f'{compiler.process(element.expr, **kw)} COLLATE "default"'


class OnPostgresql(ColumnElement[bool]):
    """`clause` on PostgreSQL, always true elsewhere: a condition that only gives PostgreSQL's planner a way in that
    SQLite has in an index of its own (`UPDATED_IN_PLACE`)."""

    inherit_cache = True
    _traverse_internals: ClassVar[Any] = [("clause", InternalTraversal.dp_clauseelement)]
    type = Boolean()

    def __init__(self, clause: ColumnElement[bool]) -> None:
        self.clause = clause


@compiles(OnPostgresql)
def _compile_always_true(element: OnPostgresql, compiler: Any, **kw: Any) -> str:
    return "1"  # a boolean expression in a WHERE: SQLite's compiler compares it with 1


@compiles(OnPostgresql, "postgresql")
def _compile_on_postgresql(element: OnPostgresql, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clause, **kw))


class Amount(TypeDecorator[Decimal]):
    """A decimal(18,2) amount (prices, premiums, limits, percentages) stored as integer hundredths: exact on both
    engines (SQLite has no decimal type and would round through floats)."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> int | None:
        if value is None:
            return None
        return int((Decimal(str(value)) * 100).to_integral_value())

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        return self.driver_result(value)

    @staticmethod
    def driver_result(value: Any) -> Decimal | None:
        """`process_result_value` for `store.fast`'s statements, without SQLAlchemy's wrapper around it."""
        return None if value is None else amount_of_hundredths(value)


_AMOUNTS: dict[int, Decimal] = {}  # amounts repeat (prices, limits, premiums); a Decimal is immutable


def amount_of_hundredths(value: Any) -> Decimal:
    found = _AMOUNTS.get(value)
    if found is None:
        if len(_AMOUNTS) >= 4096:
            _AMOUNTS.clear()
        found = _AMOUNTS[value] = Decimal(int(value)).scaleb(-2)
    return found


# Tables whose rows are updated in place again and again: a payment that activates a policy re-versions its insurees,
# their family, the policy, its Coverage and the invoice. On PostgreSQL an UPDATE that changes an indexed column
# writes an entry in every index of the table (insuree has ten), while one that changes none can be a heap-only
# tuple (HOT) update, which writes none, when the row's page has room. `last_updated` changes with every version, so
# there these tables have no index on it (migration 5e8d2c41a7f3; a search by _lastUpdated reaches their rows
# through resource_version's indexes, `fhir.search.common_params`) and their pages are filled to 85 % only.
# SQLite updates only the indexes whose columns changed: it keeps the index.
UPDATED_IN_PLACE = ("insuree", "family", "policy", "coverage", "invoice")
IN_PLACE_OPTIONS: dict[str, Any] = {"postgresql_with": {"fillfactor": 85}}  # the table options of each of them


def updated_index_on_sqlite(name: str) -> Index:
    """The `last_updated` index of a table of `UPDATED_IN_PLACE`: SQLite's alone."""
    return Index(f"ix_{name}_last_updated", "last_updated").ddl_if(dialect="sqlite")


# Records: rows the server alone inserts, in bulk, each after reading in the same transaction the rows it refers
# to — claims and their lines and deductions, eligibility enquiries, payment notices, audit entities. On PostgreSQL
# their references are not foreign keys (migration 9b4e6f1d2c8a): a foreign key check locks the row referred to
# (FOR KEY SHARE), which writes the lock into that row's header — a page dirtied and a WAL record per reference, ten
# a claim line for its item, product, policy and claim —, and turns the rows every claim refers to (its facility,
# the products, the common items) into MultiXacts shared by the concurrent transactions. The rows referred to are
# never physically deleted (registers are soft-deleted and keep their history), and each write path resolves its
# references to current rows before writing. SQLite checks a reference with an index lookup and locks nothing: it
# keeps them.
_RECORD_REFERENCES: list[ForeignKeyConstraint] = []


def record_reference(column: str, target: str) -> ForeignKeyConstraint:
    """The reference `column` → `target` ("table.pk") of a record table: a foreign key on SQLite alone."""
    constraint = ForeignKeyConstraint([column], [target]).ddl_if(dialect="sqlite")
    _RECORD_REFERENCES.append(constraint)
    return constraint


def record_references() -> list[tuple[str, str, str]]:
    """(table, column, table referred to) of every reference made by `record_reference`."""
    return [(c.table.name, c.column_keys[0], c.elements[0].column.table.name) for c in _RECORD_REFERENCES]


def resource_columns(*, uuid_index: bool = True, updated_index: bool = True) -> list[Column]:
    """`updated_index`: False for a table of `UPDATED_IN_PLACE`, whose index is `updated_index_on_sqlite`."""
    return [
        Column("pk", Integer, primary_key=True, autoincrement=True),
        Column("id", SortText(64), nullable=False, unique=True),
        # identifier[UUID]; equals id for server-created resources (always, where it is not indexed)
        Column("uuid", String(36), index=uuid_index),
        Column("version_id", Integer, nullable=False, server_default="0"),
        Column("last_updated", BigInteger, nullable=False, server_default="0", index=updated_index),
        Column("deleted", Boolean, nullable=False, server_default=text("false")),
    ]


def current_index(table_name: str, *columns: str) -> Index:
    """A search index over current rows only: every search filters on `deleted`, and the partial index lets the
    planner answer the filter from the index alone (SQLite: ~6x faster on a 100k-insuree family search)."""
    return Index(
        f"ix_{table_name}_{'_'.join(columns)}_current",
        *columns,
        sqlite_where=NOT_DELETED_SQLITE,
        postgresql_where=NOT_DELETED_PG,
    )


def current_unique(table_name: str, *columns: str) -> Index:
    """Uniqueness among current (not deleted) rows, as openIMIS enforces it (domain §1.3)."""
    return Index(
        f"uq_{table_name}_{'_'.join(columns)}_current",
        *columns,
        unique=True,
        sqlite_where=NOT_DELETED_SQLITE,
        postgresql_where=NOT_DELETED_PG,
    )


# --- FHIR version history: the one append-only table every write goes through -----------------------------
resource_version = Table(
    "resource_version",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("res_type", String(40), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("kind", String(40), nullable=False),  # which profile/entity the version belongs to
    Column("version", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("operation", String(8), nullable=False),  # create (POST) | put (update-as-create) | update | delete
    Column("user_name", String(50)),
    Column("body", LargeBinary),  # the FHIR JSON of this version; NULL for a delete
    UniqueConstraint("res_type", "res_id", "version", name="uq_resource_version_key"),
    Index("ix_resource_version_type_seq", "res_type", "seq"),  # type history, newest first
    Index("ix_resource_version_time", "last_updated"),
)

# --- Code lists (openIMIS reference tables, editable configuration) ------------------------------------------
code_list_entry = Table(
    "code_list_entry",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("list_name", String(64), nullable=False),  # the IG CodeSystem id, e.g. patient-profession
    Column("code", String(16), nullable=False),
    Column("display", String(255), nullable=False),
    Column("sort_order", Integer, nullable=False, server_default="0"),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    # When the entry last changed: the CodeSystem/ValueSet built from a list is as new as its newest entry.
    Column("last_updated", BigInteger, nullable=False, server_default="0"),
    UniqueConstraint("list_name", "code", name="uq_code_list_entry_list_code"),
    Index("ix_code_list_entry_list_changed", "list_name", "last_updated"),
)

# --- Locations R → D → W → V -------------------------------------------------------------------------------
location = Table(
    "location",
    metadata,
    *resource_columns(),
    Column("code", String(8), nullable=False),
    Column("name", String(50), nullable=False),
    Column("name_norm", SortText(50), nullable=False),
    Column("type", String(1), nullable=False),  # R | D | W | V
    Column("parent_pk", Integer, ForeignKey("location.pk")),
    # Denormalised ancestors so address searches and location scoping need no recursive query.
    Column("region_pk", Integer),
    Column("district_pk", Integer),
    Column("ward_pk", Integer),
    Column("male_population", Integer),
    Column("female_population", Integer),
    Column("other_population", Integer),
    Column("families", Integer),
    current_unique("location", "code"),
    current_index("location", "name_norm"),
    current_index("location", "parent_pk"),
)

# --- Health facility (Organization type prov) -----------------------------------------------------------------
health_facility = Table(
    "health_facility",
    metadata,
    *resource_columns(),
    Column("code", String(8), nullable=False),
    Column("name", String(100), nullable=False),
    Column("name_norm", SortText(100), nullable=False),
    Column("legal_form", String(1), nullable=False),
    Column("level", String(1), nullable=False),
    Column("sub_level", String(1)),
    Column("location_pk", Integer, ForeignKey("location.pk"), nullable=False),  # district
    Column("address", String(100)),
    Column("phone", String(50)),
    Column("fax", String(50)),
    Column("email", String(50)),
    Column("care_type", String(1), nullable=False),
    Column("acc_code", String(25)),
    Column("status", String(2), nullable=False, server_default="AC"),
    # The facility's price lists (domain §2.13): what it may claim, at which price.
    Column("item_price_list_pk", Integer, ForeignKey("price_list.pk", use_alter=True)),
    Column("service_price_list_pk", Integer, ForeignKey("price_list.pk", use_alter=True)),
    current_unique("health_facility", "code"),
    current_index("health_facility", "name_norm"),
)

# --- Policy holder (Organization type bus) --------------------------------------------------------------------
policy_holder = Table(
    "policy_holder",
    metadata,
    *resource_columns(),
    Column("code", String(32), nullable=False),
    Column("trade_name", String(255), nullable=False),
    Column("name_norm", SortText(255), nullable=False),
    Column("legal_form", String(8)),
    Column("activity", String(8)),
    Column("address", String(255)),
    Column("location_pk", Integer, ForeignKey("location.pk"), nullable=False),  # village
    Column("phone", String(50)),
    Column("fax", String(50)),
    Column("email", String(255)),
    Column("contact_name", String(255)),
    current_unique("policy_holder", "code"),
    current_index("policy_holder", "name_norm"),
)

# --- The insurer itself (Organization type ins): one row, synchronised from configuration -----------------
insurer_org = Table(
    "insurer_org",
    metadata,
    *resource_columns(),
    Column("code", String(32), nullable=False),
    Column("name", String(255), nullable=False),
    Column("name_norm", SortText(255), nullable=False),
    Column("email", String(255)),
    Column("phone", String(50)),
    Column("fax", String(50)),
)

# --- Family (Group) ----------------------------------------------------------------------------------------
family = Table(
    "family",
    metadata,
    *resource_columns(updated_index=False),
    updated_index_on_sqlite("family"),
    Column("code", String(50), nullable=False),
    Column("head_insuree_pk", Integer, ForeignKey("insuree.pk", use_alter=True)),
    Column("location_pk", Integer, ForeignKey("location.pk"), nullable=False),  # village
    Column("poverty", Boolean),
    Column("family_type", String(2)),
    Column("family_type_system", String(100)),
    Column("address", String(200)),
    Column("confirmation_no", String(12)),
    Column("confirmation_type", String(3)),
    current_unique("family", "code"),
    Index("ix_family_head", "head_insuree_pk"),
    **IN_PLACE_OPTIONS,
)

# --- Insuree (Patient) ----------------------------------------------------------------------------------------
insuree = Table(
    "insuree",
    metadata,
    *resource_columns(updated_index=False),
    updated_index_on_sqlite("insuree"),
    Column("chf_id", String(12), nullable=False),
    Column("last_name", String(100), nullable=False),
    Column("other_names", String(100), nullable=False),
    Column("family_norm", SortText(100), nullable=False),
    Column("given_norm", SortText(100), nullable=False),
    Column("dob", Date, nullable=False),
    Column("gender", String(1), nullable=False),  # M | F | O | U
    Column("marital", String(3)),
    Column("is_head", Boolean, nullable=False, server_default=text("false")),
    Column("family_pk", Integer, ForeignKey("family.pk")),
    Column("id_number", String(25)),
    Column("id_type", String(1)),
    Column("phone", String(50)),
    Column("email", String(100)),
    Column("card_issued", Boolean, nullable=False, server_default=text("false")),
    Column("vulnerability", Boolean),
    Column("relationship", String(8)),
    Column("profession", String(8)),
    Column("education", String(8)),
    Column("hf_pk", Integer, ForeignKey("health_facility.pk")),
    Column("address_use", String(4), nullable=False, server_default="home"),  # home (family) | temp (own)
    Column("address_line", String(200)),
    Column("village_pk", Integer, ForeignKey("location.pk")),
    Column("has_active_policy", Boolean, nullable=False, server_default=text("false")),
    Column("status", String(2), nullable=False, server_default="AC"),
    current_unique("insuree", "chf_id"),
    current_index("insuree", "family_norm"),
    current_index("insuree", "given_norm"),
    current_index("insuree", "family_pk"),
    current_index("insuree", "village_pk"),
    current_index("insuree", "dob"),
    **IN_PLACE_OPTIONS,
)

insuree_photo = Table(
    "insuree_photo",
    metadata,
    Column("insuree_pk", Integer, ForeignKey("insuree.pk"), primary_key=True),
    Column("content_type", String(100), nullable=False),
    Column("title", String(250), nullable=False),
    Column("creation", String(40), nullable=False),
    Column("hash", String(100)),
    Column("data", LargeBinary, nullable=False),
)

# --- Claim administrators and enrolment officers (Practitioner) and their roles (PractitionerRole) --------------
def _person_columns() -> list[Column]:
    return [
        Column("code", String(50), nullable=False),
        Column("last_name", String(100), nullable=False),
        Column("other_names", String(100), nullable=False),
        Column("family_norm", SortText(100), nullable=False),
        Column("given_norm", SortText(100), nullable=False),
        Column("dob", Date),
        Column("phone", String(50)),
        Column("email", String(200)),
    ]


claim_admin = Table(
    "claim_admin",
    metadata,
    *resource_columns(),
    *_person_columns(),
    current_unique("claim_admin", "code"),
    current_index("claim_admin", "family_norm"),
    current_index("claim_admin", "given_norm"),
)

# A claim administrator's assignment to the health facility whose claims they enter (the CA PractitionerRole).
claim_admin_role = Table(
    "claim_admin_role",
    metadata,
    *resource_columns(),
    Column("code", String(50), nullable=False),
    Column("claim_admin_pk", Integer, ForeignKey("claim_admin.pk"), nullable=False),
    Column("hf_pk", Integer, ForeignKey("health_facility.pk"), nullable=False),
    Column("phone", String(50)),
    Column("email", String(200)),
    current_unique("claim_admin_role", "code"),
    current_index("claim_admin_role", "claim_admin_pk"),
    current_index("claim_admin_role", "hf_pk"),
)

officer = Table(
    "officer",
    metadata,
    *resource_columns(),
    *_person_columns(),
    Column("location_pk", Integer, ForeignKey("location.pk")),  # district
    Column("address", String(100)),
    current_unique("officer", "code"),
    current_index("officer", "family_norm"),
    current_index("officer", "given_norm"),
)

# An enrolment officer's assignment (the EO PractitionerRole): villages served, "works to" date, substitute.
officer_role = Table(
    "officer_role",
    metadata,
    *resource_columns(),
    Column("code", String(50), nullable=False),
    Column("officer_pk", Integer, ForeignKey("officer.pk"), nullable=False),
    Column("works_to", Date),
    Column("substitute_officer_pk", Integer, ForeignKey("officer.pk")),
    Column("phone", String(50)),
    Column("email", String(200)),
    current_unique("officer_role", "code"),
    current_index("officer_role", "officer_pk"),
)

officer_role_village = Table(
    "officer_role_village",
    metadata,
    Column("role_pk", Integer, ForeignKey("officer_role.pk"), primary_key=True),
    Column("location_pk", Integer, ForeignKey("location.pk"), primary_key=True),
    Index("ix_officer_role_village_location", "location_pk"),
)

# --- Medical items (Medication) and services (ActivityDefinition) --------------------------------------------
def _provision_columns() -> list[Column]:
    return [
        Column("code", SortText(16), nullable=False),
        Column("name", String(100), nullable=False),
        Column("name_norm", SortText(100), nullable=False),
        Column("price", Amount(), nullable=False),
        Column("care_type", String(1), nullable=False),  # O | I | B
        Column("frequency", Integer),  # minimum days between two provisions to the same insuree
        Column("patient_category", Integer, nullable=False, server_default="15"),  # 1 M, 2 F, 4 adult, 8 child
    ]


medical_item = Table(
    "medical_item",
    metadata,
    *resource_columns(),
    *_provision_columns(),
    Column("item_type", String(1), nullable=False),  # D drug | M medical consumable
    Column("package", String(255)),
    Column("quantity", Amount()),
    # What a client codes beyond openIMIS's columns, kept so that it reads back what it sent: code.coding (e.g.
    # SNOMED CT or ATC) and the whole form CodeableConcept, as JSON.
    Column("code_coding", Text),
    Column("form_json", Text),
    current_unique("medical_item", "code"),
    current_index("medical_item", "name_norm"),
)

medical_service = Table(
    "medical_service",
    metadata,
    *resource_columns(),
    *_provision_columns(),
    Column("service_type", String(1), nullable=False),  # P preventive | C curative
    Column("level", String(1), nullable=False),  # S simple | V visit | D day of stay | H hospital case
    Column("category", String(1)),  # S D A H C O V, or none
    Column("package_type", String(1), nullable=False, server_default="S"),
    current_unique("medical_service", "code"),
    current_index("medical_service", "name_norm"),
)

# --- Price lists (ValueSet items-pricelist / services-pricelist) ----------------------------------------------
price_list = Table(
    "price_list",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("id", SortText(64), nullable=False, unique=True),
    Column("kind", String(8), nullable=False),  # item | service
    Column("name", String(100), nullable=False),
    Column("date_pl", Date, nullable=False),
    Column("location_pk", Integer, ForeignKey("location.pk")),  # region or district; none = national
    Column("last_updated", BigInteger, nullable=False, server_default="0"),
    Column("deleted", Boolean, nullable=False, server_default=text("false")),
    current_unique("price_list", "kind", "name"),
)

price_list_item = Table(
    "price_list_item",
    metadata,
    Column("price_list_pk", Integer, ForeignKey("price_list.pk"), primary_key=True),
    Column("item_pk", Integer, ForeignKey("medical_item.pk"), primary_key=True),
    Column("price_override", Amount()),  # replaces the item's price for facilities using this list
)

price_list_service = Table(
    "price_list_service",
    metadata,
    Column("price_list_pk", Integer, ForeignKey("price_list.pk"), primary_key=True),
    Column("service_pk", Integer, ForeignKey("medical_service.pk"), primary_key=True),
    Column("price_override", Amount()),
)

# --- Products (InsurancePlan) and their coverage lines -------------------------------------------------------
_PRODUCT_AMOUNTS = (
    # contribution plan
    "premium_adult", "premium_child", "registration_lump_sum", "registration_fee",
    "general_assembly_lump_sum", "general_assembly_fee",
    # deductibles and ceilings per treatment / insuree / policy, general, out-patient (op) and in-patient (ip)
    *(f"{kind}{care}_{scope}" for kind in ("ded", "max") for scope in ("treatment", "insuree", "policy")
      for care in ("", "_op", "_ip")),
    "max_policy_extra_member", "max_policy_extra_member_ip", "max_policy_extra_member_op",
    "max_ceiling_policy", "max_ceiling_policy_ip", "max_ceiling_policy_op",
    "max_amount_consultation", "max_amount_surgery", "max_amount_delivery", "max_amount_hospitalization",
    "max_amount_antenatal",
)
_PRODUCT_COUNTS = (
    "threshold", "max_installments", "administration_period", "recurrence",
    "enrolment_discount_perc", "enrolment_discount_period", "renewal_discount_perc", "renewal_discount_period",
    "grace_period_renewal", "grace_period_payment",
    "max_no_consultation", "max_no_surgery", "max_no_delivery", "max_no_hospitalization", "max_no_visits",
    "max_no_antenatal",
)

product = Table(
    "product",
    metadata,
    *resource_columns(),
    Column("code", String(8), nullable=False),
    Column("name", String(100), nullable=False),
    Column("name_norm", SortText(100), nullable=False),
    Column("status", String(8), nullable=False, server_default="active"),  # draft | active | retired
    Column("location_pk", Integer, ForeignKey("location.pk")),  # coverage area; none = national
    Column("date_from", Date, nullable=False),
    Column("date_to", Date, nullable=False),
    Column("conversion_product_pk", Integer, ForeignKey("product.pk")),
    Column("insurance_period", Integer, nullable=False, server_default="12"),  # months
    Column("lump_sum", Amount(), nullable=False, server_default="0"),
    Column("member_count", Integer, nullable=False),
    Column("grace_period", Integer, nullable=False, server_default="0"),  # enrolment grace period, months
    *(Column(name, Amount()) for name in _PRODUCT_AMOUNTS),
    *(Column(name, Integer) for name in _PRODUCT_COUNTS),
    *(Column(f"start_cycle_{i}", String(5)) for i in range(1, 5)),  # dd-mm
    Column("ceiling_interpretation", String(1)),  # I by claim type | H by facility level
    Column("ceiling_type", String(1)),  # I insuree | T treatment | P policy
    Column("period_rel_prices", String(1)),
    Column("period_rel_prices_op", String(1)),
    Column("period_rel_prices_ip", String(1)),
    *(Column(f"level_{i}", String(1)) for i in range(1, 5)),
    *(Column(f"sublevel_{i}", String(1)) for i in range(1, 5)),
    Column("share_contribution", Amount(), nullable=False, server_default="10000"),
    Column("weight_population", Amount(), nullable=False, server_default="0"),
    Column("weight_number_families", Amount(), nullable=False, server_default="0"),
    Column("weight_insured_population", Amount(), nullable=False, server_default="10000"),
    Column("weight_number_insured_families", Amount(), nullable=False, server_default="0"),
    Column("weight_number_visits", Amount(), nullable=False, server_default="0"),
    Column("weight_adjusted_amount", Amount(), nullable=False, server_default="0"),
    Column("acc_code_premiums", String(25)),
    Column("acc_code_remuneration", String(25)),
    current_unique("product", "code"),
    current_index("product", "name_norm"),
    current_index("product", "location_pk"),
)


def _coverage_line_columns() -> list[Column]:
    """A product's coverage of one item or service (domain §2.14, tblProductItems / tblProductServices)."""
    return [
        Column("price_origin", String(1), nullable=False, server_default="P"),  # P scheme | O own | R relative
        Column("limitation_type", String(1), nullable=False, server_default="C"),  # C co-insurance | F fixed
        Column("limitation_type_r", String(1), nullable=False, server_default="C"),  # referral
        Column("limitation_type_e", String(1), nullable=False, server_default="C"),  # emergency
        Column("limit_adult", Amount(), nullable=False, server_default="10000"),
        Column("limit_child", Amount(), nullable=False, server_default="10000"),
        Column("limit_adult_r", Amount(), nullable=False, server_default="10000"),
        Column("limit_child_r", Amount(), nullable=False, server_default="10000"),
        Column("limit_adult_e", Amount(), nullable=False, server_default="10000"),
        Column("limit_child_e", Amount(), nullable=False, server_default="10000"),
        Column("waiting_period_adult", Integer),  # months
        Column("waiting_period_child", Integer),
        Column("limit_no_adult", Integer),  # max quantity per insuree per insurance period
        Column("limit_no_child", Integer),
        Column("ceiling_exclusion_adult", String(1)),  # H | N | B
        Column("ceiling_exclusion_child", String(1)),
    ]


product_item = Table(
    "product_item",
    metadata,
    Column("product_pk", Integer, ForeignKey("product.pk"), primary_key=True),
    Column("item_pk", Integer, ForeignKey("medical_item.pk"), primary_key=True),
    *_coverage_line_columns(),
    Index("ix_product_item_item", "item_pk"),
)

product_service = Table(
    "product_service",
    metadata,
    Column("product_pk", Integer, ForeignKey("product.pk"), primary_key=True),
    Column("service_pk", Integer, ForeignKey("medical_service.pk"), primary_key=True),
    *_coverage_line_columns(),
    Index("ix_product_service_service", "service_pk"),
)

# --- Policies (Contract, Coverage), members' coverage and contributions -------------------------------------
POLICY_IDLE, POLICY_ACTIVE, POLICY_SUSPENDED, POLICY_EXPIRED, POLICY_READY = 1, 2, 4, 8, 16

policy = Table(
    "policy",
    metadata,
    *resource_columns(updated_index=False),
    updated_index_on_sqlite("policy"),
    Column("family_pk", Integer, ForeignKey("family.pk")),  # informal sector: the family enrolled
    Column("policy_holder_pk", Integer, ForeignKey("policy_holder.pk")),  # formal sector: the policy holder
    Column("product_pk", Integer, ForeignKey("product.pk"), nullable=False),
    Column("officer_pk", Integer, ForeignKey("officer.pk")),  # the enrolment officer who sold it
    Column("head_insuree_pk", Integer, ForeignKey("insuree.pk")),  # Contract.term.offer.party (the head)
    Column("enroll_date", Date, nullable=False),
    Column("start_date", Date, nullable=False),
    Column("effective_date", Date),  # set at activation; none while idle
    Column("expiry_date", Date, nullable=False),
    # 1 idle, 2 active, 4 suspended, 16 ready. Expired (8) is not stored: a policy is expired once its expiry
    # date has passed, whatever the stored status says, so the status can never be stale.
    Column("status", Integer, nullable=False, server_default="1"),
    Column("stage", String(1), nullable=False, server_default="N"),  # N new | R renewal
    Column("value", Amount(), nullable=False, server_default="0"),
    Column("previous_policy_pk", Integer, ForeignKey("policy.pk")),  # the policy a renewal continues
    current_index("policy", "family_pk"),
    current_index("policy", "policy_holder_pk"),
    current_index("policy", "product_pk"),
    current_index("policy", "expiry_date"),
    **IN_PLACE_OPTIONS,
)

# The Coverage view of a policy: its own versions and id space (Coverage/<policy uuid>), one row per policy.
coverage = Table(
    "coverage",
    metadata,
    *resource_columns(updated_index=False),
    updated_index_on_sqlite("coverage"),
    Column("policy_pk", Integer, ForeignKey("policy.pk"), nullable=False, unique=True),
    **IN_PLACE_OPTIONS,
)

# A member's own coverage window under a policy (domain §2.16); effective_date none = listed, not yet covered.
insuree_policy = Table(
    "insuree_policy",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("policy_pk", Integer, ForeignKey("policy.pk"), nullable=False),
    Column("insuree_pk", Integer, ForeignKey("insuree.pk"), nullable=False),
    Column("enroll_date", Date, nullable=False),
    Column("start_date", Date, nullable=False),
    Column("effective_date", Date),
    Column("expiry_date", Date, nullable=False),
    Column("deleted", Boolean, nullable=False, server_default=text("false")),
    current_unique("insuree_policy", "policy_pk", "insuree_pk"),
    current_index("insuree_policy", "insuree_pk"),
    # the calendar job looks up the coverage windows that opened or closed since its last run
    current_index("insuree_policy", "effective_date"),
    current_index("insuree_policy", "expiry_date"),
)

# When each calendar-driven job (jobs.py) last completed, so that a run only looks at what changed since.
job_run = Table(
    "job_run",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("last_day", Date, nullable=False),
)

premium = Table(
    "premium",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("policy_pk", Integer, ForeignKey("policy.pk"), nullable=False),
    Column("product_pk", Integer, ForeignKey("product.pk"), nullable=False),  # receipts are unique per product
    Column("payer", String(32)),  # contract-premium-payer code
    Column("amount", Amount(), nullable=False),
    Column("receipt", String(50), nullable=False),
    Column("pay_date", Date, nullable=False),
    Column("pay_type", String(1), nullable=False),  # C cash | B bank transfer | M mobile phone | F funding
    Column("is_photo_fee", Boolean, nullable=False, server_default=text("false")),  # category P; never counts
    Column("created", BigInteger, nullable=False, server_default="0"),
    Column("deleted", Boolean, nullable=False, server_default=text("false")),
    current_unique("premium", "product_pk", "receipt"),
    current_index("premium", "policy_pk"),
)

# --- Eligibility enquiries (CoverageEligibilityRequest → CoverageEligibilityResponse) ------------------------
# One row per enquiry carries both resources: the request and its answer share the pk and the id (FHIR ids are
# per type), so an enquiry's commit touches one table and three indexes instead of two tables and eleven — it
# runs inside SQLite's single writer lock, where every index page written limits the enquiries per second.
eligibility_enquiry = Table(
    "eligibility_enquiry",
    metadata,
    *resource_columns(uuid_index=False),  # uuid = id: identifier[UUID] searches use the id's unique index
    Column("insuree_pk", Integer, nullable=False),
    record_reference("insuree_pk", "insuree.pk"),
    Column("created", Date, nullable=False),  # the request's own date
    Column("answered", Date, nullable=False),  # the evaluation date (the response's `created`)
    current_index("eligibility_enquiry", "insuree_pk"),
)

# --- Claims (domain §2.19–2.20): the rows eligibility counts today, and the claim issue fills -------------------
CLAIM_REJECTED, CLAIM_ENTERED, CLAIM_CHECKED, CLAIM_PROCESSED, CLAIM_VALUATED = 1, 2, 4, 8, 16
LINE_PASSED, LINE_REJECTED = 1, 2

claim = Table(
    "claim",
    metadata,
    *resource_columns(),
    Column("code", String(50), nullable=False),
    Column("hf_pk", Integer, nullable=False),
    Column("insuree_pk", Integer, nullable=False),
    Column("claim_admin_pk", Integer),
    record_reference("hf_pk", "health_facility.pk"),
    record_reference("insuree_pk", "insuree.pk"),
    record_reference("claim_admin_pk", "claim_admin.pk"),
    Column("date_from", Date, nullable=False),
    Column("date_to", Date),
    Column("date_claimed", Date, nullable=False),
    Column("date_processed", Date),
    Column("status", Integer, nullable=False, server_default="2"),
    Column("review_status", Integer, nullable=False, server_default="1"),
    Column("feedback_status", Integer, nullable=False, server_default="1"),
    Column("rejection_reason", Integer, nullable=False, server_default="0"),
    Column("visit_type", String(1)),  # E | R | O
    Column("category", String(1)),  # S D A H C V (computed at submission)
    Column("icd_code", String(16), nullable=False),  # main diagnosis
    *(Column(f"icd_code_{i}", String(16)) for i in range(1, 5)),  # secondary diagnoses (at most 4)
    Column("claimed", Amount()),
    Column("approved", Amount()),
    Column("valuated", Amount()),
    Column("remunerated", Amount()),
    Column("explanation", Text),
    Column("adjustment", Text),
    Column("guarantee_id", String(50)),
    Column("feedback_available", Boolean, nullable=False, server_default=text("false")),
    Column("submit_stamp", BigInteger),  # µs since the epoch, set by the checks (status 4 or 1)
    Column("process_stamp", BigInteger),  # µs since the epoch, set by processing (status 8 or 16)
    Column("run_pk", Integer),  # the batch run that valuated it (§3.4.4)
    record_reference("run_pk", "batch_run.pk"),
    # The ClaimResponse (the same row) changes as the claim is processed and valuated while the Claim stays as
    # submitted: its versions and change time are its own (ResourceKind.version_column / updated_column).
    Column("response_version", Integer, nullable=False, server_default="0"),
    Column("response_updated", BigInteger, nullable=False, server_default="0", index=True),
    current_unique("claim", "hf_pk", "code"),
    current_index("claim", "insuree_pk"),
    current_index("claim", "hf_pk", "date_claimed"),
    current_index("claim", "icd_code", "date_processed"),  # feedback selection by variance (§3.4.1)
)

# Attachments sent with a claim (Claim.supportingInfo:attachment); the document bytes themselves.
claim_attachment = Table(
    "claim_attachment",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("claim_pk", Integer, ForeignKey("claim.pk"), nullable=False),
    Column("sequence", Integer, nullable=False),  # supportingInfo.sequence
    Column("title", String(250)),
    Column("content_type", String(100)),
    Column("filename", String(250)),
    Column("creation", String(40)),  # Attachment.creation as sent (a FHIR dateTime)
    Column("hash", String(40)),  # SHA-1 of the bytes, hex
    Column("data", LargeBinary),
    Index("ix_claim_attachment_claim", "claim_pk"),
)


def _claim_line_columns() -> list[Column]:
    return [
        Column("claim_pk", Integer, nullable=False),
        Column("product_pk", Integer),  # assigned at processing
        Column("policy_pk", Integer),
        Column("status", Integer, nullable=False, server_default="1"),  # 1 passed | 2 rejected
        Column("qty_provided", Amount(), nullable=False),
        Column("qty_approved", Amount()),
        Column("price_asked", Amount(), nullable=False),
        Column("price_adjusted", Amount()),
        Column("price_approved", Amount()),
        Column("price_valuated", Amount()),
        Column("remunerated_amount", Amount()),
        Column("deductable_amount", Amount()),
        Column("exceed_ceiling_amount", Amount()),
        Column("exceed_ceiling_amount_category", Amount()),  # cut by the claim category's amount ceiling
        Column("limitation", String(1)),
        Column("limitation_value", Amount()),
        Column("price_origin", String(1)),
        Column("explanation", Text),
        Column("justification", Text),
        Column("rejection_reason", Integer, nullable=False, server_default="0"),
        Column("sequence", Integer),  # Claim.item.sequence as submitted
    ]


def _claim_line_references(target_column: str, target: str) -> list[ForeignKeyConstraint]:
    return [record_reference("claim_pk", "claim.pk"), record_reference("product_pk", "product.pk"),
            record_reference("policy_pk", "policy.pk"), record_reference(target_column, target)]


claim_item = Table(
    "claim_item",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    *_claim_line_columns(),
    Column("item_pk", Integer, nullable=False),
    *_claim_line_references("item_pk", "medical_item.pk"),
    Column("availability", Boolean, nullable=False, server_default=text("true")),
    Index("ix_claim_item_claim", "claim_pk"),
    Index("ix_claim_item_item", "item_pk"),
)

claim_service = Table(
    "claim_service",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    *_claim_line_columns(),
    Column("service_pk", Integer, nullable=False),
    *_claim_line_references("service_pk", "medical_service.pk"),
    Index("ix_claim_service_claim", "claim_pk"),
    Index("ix_claim_service_service", "service_pk"),
)

# What earlier claims consumed of a policy's deductibles and ceilings (tblClaimDedRem), one row per (claim, policy).
claim_ded_rem = Table(
    "claim_ded_rem",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("claim_pk", Integer, nullable=False),
    Column("policy_pk", Integer, nullable=False),
    Column("insuree_pk", Integer, nullable=False),
    record_reference("claim_pk", "claim.pk"),
    record_reference("policy_pk", "policy.pk"),
    record_reference("insuree_pk", "insuree.pk"),
    *(Column(name, Amount(), nullable=False, server_default="0") for name in (
        "ded_g", "ded_op", "ded_ip", "rem_g", "rem_op", "rem_ip", "rem_consult", "rem_surgery", "rem_delivery",
        "rem_hospitalization", "rem_antenatal")),
    Index("ix_claim_ded_rem_policy", "policy_pk"),
    Index("ix_claim_ded_rem_claim", "claim_pk"),
    Index("ix_claim_ded_rem_insuree", "insuree_pk"),
)

# --- Feedback (domain §2.21, §3.5): the prompt to an enrolment officer and the answers collected ----------------
# A prompt is the CommunicationRequest of its claim (same id as the claim); the answers are a Communication.
feedback_prompt = Table(
    "feedback_prompt",
    metadata,
    *resource_columns(uuid_index=False),
    Column("claim_pk", Integer, ForeignKey("claim.pk"), nullable=False),
    Column("officer_pk", Integer, ForeignKey("officer.pk"), nullable=False),
    Column("prompt_date", Date, nullable=False),
    Column("phone", String(50)),
    Column("sms_status", Integer, nullable=False, server_default="0"),
    current_unique("feedback_prompt", "claim_pk"),
)

feedback = Table(
    "feedback",
    metadata,
    *resource_columns(),
    Column("claim_pk", Integer, ForeignKey("claim.pk"), nullable=False),
    Column("officer_pk", Integer, ForeignKey("officer.pk")),
    Column("care_rendered", Boolean, nullable=False),
    Column("payment_asked", Boolean, nullable=False),
    Column("drug_prescribed", Boolean, nullable=False),
    Column("drug_received", Boolean, nullable=False),
    Column("assessment", Integer, nullable=False),  # 0–5
    Column("feedback_date", Date, nullable=False),
    current_unique("feedback", "claim_pk"),
)

# --- Batch run and relative pricing (domain §2.22, §3.4.4) ----------------------------------------------------
batch_run = Table(
    "batch_run",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("location_pk", Integer, ForeignKey("location.pk")),  # region or district; none = national
    Column("run_date", Date, nullable=False),
    Column("run_year", Integer, nullable=False),
    Column("run_month", Integer, nullable=False),
    Column("created", BigInteger, nullable=False, server_default="0"),
    Index("ix_batch_run_period", "run_year", "run_month", "location_pk"),
)

# A product's relative distribution (tblRelDistr): the share of the allocated contributions each period pays out.
rel_distr = Table(
    "rel_distr",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("product_pk", Integer, ForeignKey("product.pk"), nullable=False),
    Column("dist_type", Integer, nullable=False),  # 12 monthly | 4 quarterly | 1 yearly
    Column("care_type", String(1), nullable=False),  # B both | I in-patient | O out-patient
    Column("period", Integer, nullable=False),  # 1..12, 1..4 or 1
    Column("percent", Amount(), nullable=False),  # hundredths of a percent (Amount)
    Index("ix_rel_distr_product", "product_pk", "dist_type", "care_type", "period", unique=True),
)

# The relative index a batch run computed (tblRelIndex), in ten-thousandths (decimal(18,4) in openIMIS).
rel_index = Table(
    "rel_index",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("product_pk", Integer, ForeignKey("product.pk"), nullable=False),
    Column("rel_type", Integer, nullable=False),  # 12 | 4 | 1
    Column("care_type", String(1), nullable=False),  # B | I | O
    Column("rel_year", Integer, nullable=False),
    Column("rel_period", Integer, nullable=False),
    Column("calc_date", Date, nullable=False),
    Column("index_e4", BigInteger, nullable=False),
    Column("location_pk", Integer, ForeignKey("location.pk")),
    Column("run_pk", Integer, ForeignKey("batch_run.pk")),
    Index("ix_rel_index_product", "product_pk", "rel_year", "rel_period"),
)

# --- Invoices, bills and payments (domain §2.23, §3.6) -------------------------------------------------------
# openIMIS statuses: 0 draft, 1 validated, 2 paid, 3 cancelled, 4 deleted, 5 suspended, 6 unpaid, 7 reconciliated.
INVOICE_DRAFT, INVOICE_VALIDATED, INVOICE_PAID, INVOICE_CANCELLED, INVOICE_DELETED = 0, 1, 2, 3, 4
INVOICE_SUSPENDED, INVOICE_UNPAID, INVOICE_RECONCILIATED = 5, 6, 7


def _invoice_columns(thirdparty: str, *, updated_index: bool = True) -> list[Column]:
    """The GenericInvoice fields an invoice (owed to the scheme) and a bill (owed by it) share."""
    return [
        *resource_columns(updated_index=updated_index),
        Column("code", String(64), nullable=False),
        Column("type_code", String(32), nullable=False),  # invoice-type / bill-type code (contribution, claim-batch…)
        Column("status", Integer, nullable=False, server_default="1"),
        # what it is for: a family or policy holder (invoice), a batch run or officer (bill) — type + pk
        Column("subject_type", String(32)),
        Column("subject_pk", Integer),
        # who pays (invoice: the head insuree or the policy holder) / who is paid (bill: the facility, the officer)
        Column(f"{thirdparty}_type", String(32), nullable=False),
        Column(f"{thirdparty}_pk", Integer, nullable=False),
        Column("date_issued", Date, nullable=False),
        Column("date_due", Date),
        Column("date_paid", Date),
        Column("amount_discount", Amount(), nullable=False, server_default="0"),
        Column("amount_net", Amount(), nullable=False, server_default="0"),
        Column("amount_total", Amount(), nullable=False, server_default="0"),
        Column("amount_paid", Amount(), nullable=False, server_default="0"),  # Σ accepted payments
        Column("currency", String(3), nullable=False),
        Column("note", Text),
        Column("terms", Text),
        Column("payment_reference", String(64)),
    ]


def _invoice_line_columns(parent: str) -> list[Column]:
    return [
        Column("pk", Integer, primary_key=True, autoincrement=True),
        Column(f"{parent}_pk", Integer, ForeignKey(f"{parent}.pk"), nullable=False),
        Column("sequence", Integer, nullable=False),
        Column("line_type", String(32), nullable=False),  # policy | contract | claim | …
        Column("line_pk", Integer),
        Column("code", String(64), nullable=False),
        Column("description", Text),
        Column("ledger_account", String(64)),
        Column("quantity", Integer, nullable=False, server_default="1"),
        Column("unit_price", Amount(), nullable=False),
        Column("discount", Amount(), nullable=False, server_default="0"),  # a rate (0..1) applied to qty × price
        Column("deduction", Amount(), nullable=False, server_default="0"),  # an amount
        Column("tax_rate", Amount()),
        Column("amount_net", Amount(), nullable=False),
        Column("amount_total", Amount(), nullable=False),
    ]


invoice = Table(
    "invoice",
    metadata,
    *_invoice_columns("payer", updated_index=False),
    Column("policy_pk", Integer, ForeignKey("policy.pk")),  # a contribution invoice's policy (paid → activation)
    current_unique("invoice", "code"),
    current_index("invoice", "policy_pk"),
    current_index("invoice", "payer_type", "payer_pk"),
    updated_index_on_sqlite("invoice"),
    **IN_PLACE_OPTIONS,
)
invoice_line = Table("invoice_line", metadata, *_invoice_line_columns("invoice"),
                     Index("ix_invoice_line_invoice", "invoice_pk"))

bill = Table(
    "bill",
    metadata,
    *_invoice_columns("payee"),
    Column("run_pk", Integer, ForeignKey("batch_run.pk")),  # a claim-batch bill's batch run
    Column("product_pk", Integer, ForeignKey("product.pk")),
    current_unique("bill", "code"),
    current_index("bill", "payee_type", "payee_pk"),
    current_index("bill", "run_pk"),
)
bill_line = Table("bill_line", metadata, *_invoice_line_columns("bill"), Index("ix_bill_line_bill", "bill_pk"))

# A payments platform's reconciliation report (PaymentReconciliation): the payments it settled.
payment_reconciliation = Table(
    "payment_reconciliation",
    metadata,
    *resource_columns(),
    Column("status", String(16), nullable=False),  # active | cancelled | draft | entered-in-error
    Column("created", String(40), nullable=False),  # a FHIR dateTime as sent
    Column("payment_date", Date, nullable=False),
    Column("amount", Amount(), nullable=False),
    Column("outcome", String(16)),  # queued | complete | error | partial
    Column("disposition", Text),
    Column("payment_identifier", String(128)),  # the platform's reference for the settlement
    current_index("payment_reconciliation", "payment_identifier"),
)

# A payment against an invoice or a bill (PaymentNotice; openIMIS PaymentInvoice + DetailPaymentInvoice).
payment_notice = Table(
    "payment_notice",
    metadata,
    *resource_columns(),
    Column("invoice_pk", Integer),
    Column("bill_pk", Integer),
    Column("reconciliation_pk", Integer),
    record_reference("invoice_pk", "invoice.pk"),
    record_reference("bill_pk", "bill.pk"),
    record_reference("reconciliation_pk", "payment_reconciliation.pk"),
    Column("reconciliation_ref", String(255)),  # PaymentNotice.payment as sent (an external URL in the IG)
    Column("status", String(16), nullable=False),  # FHIR financial status: active | cancelled | draft | entered-…
    Column("detail_status", Integer, nullable=False),  # 0 rejected, 1 accepted, 2 refunded, 3 cancelled
    Column("payment_status", String(16), nullable=False),  # paid | cleared (reconciliated)
    Column("created", String(40), nullable=False),
    Column("payment_date", Date, nullable=False),
    Column("amount", Amount(), nullable=False),
    Column("fees", Amount()),
    Column("reference", String(128)),  # the payer's receipt / transaction reference (identifier)
    Column("payer_ref", String(128)),
    current_index("payment_notice", "invoice_pk"),
    current_index("payment_notice", "bill_pk"),
    current_index("payment_notice", "reconciliation_pk"),
    current_unique("payment_notice", "reference"),
)

# --- Subscriptions (R4 rest-hook): who is notified of which changes -------------------------------------------
subscription = Table(
    "subscription",
    metadata,
    *resource_columns(),
    Column("status", String(16), nullable=False),  # requested | active | error | off
    Column("reason", Text, nullable=False),
    Column("criteria", String(2000), nullable=False),  # a FHIR search: Type?params
    Column("resource_type", String(40), nullable=False),  # the criteria's type (what changes are matched)
    Column("endpoint", String(2000), nullable=False),
    Column("headers", LargeBinary),  # channel.header as sent (JSON list); never rendered back
    Column("payload", String(64)),  # none (the IG: empty notification) or application/fhir+json
    Column("end_instant", BigInteger),  # µs since the epoch; after it the subscription is off
    Column("error", Text),
    Column("failures", Integer, nullable=False, server_default="0"),  # consecutive failed deliveries
    Column("owner", String(50)),  # the user who created it (notifications respect what that user may read)
    Column("secret", String(64), nullable=False),  # HMAC key of the signature header
    current_index("subscription", "resource_type"),
)

# --- Outbox: work to do after a commit, written in the same transaction as the change it follows ---------------
# (claim-AI deliveries, notifications). A worker claims due rows, runs the topic's handler, and retries with
# backoff; at-least-once, so every row carries an id its receiver can deduplicate on.
outbox = Table(
    "outbox",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),  # delivery id (UUID), stable across retries
    Column("topic", String(40), nullable=False),  # which handler runs it, e.g. claim-ai
    Column("subject", String(64)),  # what it is about (e.g. the claim id), for searches and deduplication
    Column("payload", LargeBinary),  # JSON the handler needs
    Column("status", String(10), nullable=False, server_default="pending"),  # pending | done | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt", BigInteger, nullable=False, server_default="0"),  # µs since the epoch
    Column("locked_until", BigInteger, nullable=False, server_default="0"),  # a worker's claim on the row
    Column("last_error", Text),
    Column("created", BigInteger, nullable=False),
    Column("finished", BigInteger),
    Index("ix_outbox_due", "status", "next_attempt"),
    Index("ix_outbox_topic_subject", "topic", "subject"),
)

# --- Users, roles, rights ---------------------------------------------------------------------------------
app_user = Table(
    "app_user",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("username", String(50), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("last_name", String(100), nullable=False, server_default=""),
    Column("other_names", String(100), nullable=False, server_default=""),
    Column("email", String(200)),
    Column("language", String(5), nullable=False, server_default="en"),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("hf_pk", Integer, ForeignKey("health_facility.pk")),
    # openIMIS user types (domain §4.1): interactive | officer | claim_admin | technical. The officer and claim
    # administrator records only narrow the location scope; rights always come from the roles.
    Column("user_type", String(12), nullable=False, server_default="interactive"),
    Column("officer_pk", Integer, ForeignKey("officer.pk")),
    Column("claim_admin_pk", Integer, ForeignKey("claim_admin.pk")),
    # Tokens issued before this instant (epoch seconds) are refused: "revoke this user's tokens".
    Column("tokens_valid_after", BigInteger, nullable=False, server_default="0"),
    Column("password_changed", BigInteger, nullable=False, server_default="0"),
)

role = Table(
    "role",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("name", String(50), nullable=False, unique=True),
    Column("is_system", Integer, nullable=False, server_default="0"),
    Column("is_blocked", Boolean, nullable=False, server_default=text("false")),
)

role_right = Table(
    "role_right",
    metadata,
    Column("role_pk", Integer, ForeignKey("role.pk"), primary_key=True),
    Column("right_code", Integer, primary_key=True),
)

user_role = Table(
    "user_role",
    metadata,
    Column("user_pk", Integer, ForeignKey("app_user.pk"), primary_key=True),
    Column("role_pk", Integer, ForeignKey("role.pk"), primary_key=True),
)

user_district = Table(
    "user_district",
    metadata,
    Column("user_pk", Integer, ForeignKey("app_user.pk"), primary_key=True),
    Column("location_pk", Integer, ForeignKey("location.pk"), primary_key=True),
)

# Bumped by every change that must reach other processes' auth caches at once (a user disabled, tokens revoked,
# roles or rights edited, a client disabled): each process compares it with the value it last saw.
auth_epoch = Table(
    "auth_epoch",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("epoch", BigInteger, nullable=False, server_default="0"),
)

# OAuth2 client-credentials clients (system integrations). A client acts as a technical user (its rights) narrowed
# to the SMART system scopes it is granted; it authenticates with a secret or a JWT assertion signed by a key of
# its registered JWK set.
oauth_client = Table(
    "oauth_client",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("client_id", String(100), nullable=False, unique=True),
    Column("name", String(100), nullable=False, server_default=""),
    Column("user_pk", Integer, ForeignKey("app_user.pk"), nullable=False),
    Column("secret_hash", String(200)),
    Column("jwks", Text),  # JSON Web Key Set (public keys) for private_key_jwt
    Column("scopes", String(2000), nullable=False, server_default=""),  # space-separated scopes it may ask for
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("created", BigInteger, nullable=False, server_default="0"),
)

# JWT assertion ids already used (replay protection), kept until the assertion expires.
oauth_assertion = Table(
    "oauth_assertion",
    metadata,
    Column("jti", String(255), primary_key=True),
    Column("client_pk", Integer, ForeignKey("oauth_client.pk"), nullable=False),
    Column("expires", BigInteger, nullable=False),
)

# Login throttling: failures counted per user name and per address (key "user:<name>" / "addr:<ip>").
login_failure = Table(
    "login_failure",
    metadata,
    Column("key", String(120), primary_key=True),
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("window_start", BigInteger, nullable=False, server_default="0"),
    Column("locked_until", BigInteger, nullable=False, server_default="0"),
)

# The audit trail (FHIR AuditEvent): append-only, never updated or deleted through the API.
audit_event = Table(
    "audit_event",
    metadata,
    # AuditEvent.id is the pk: a generated UUID would cost every audited request a random insert into one more
    # index, for an id nobody chooses.
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("recorded", BigInteger, nullable=False),  # epoch microseconds
    Column("action", String(1), nullable=False),  # C R U D E
    Column("subtype", String(32), nullable=False),  # the FHIR restful interaction (read, search-type, create, …)
    Column("outcome", String(2), nullable=False),  # 0 success, 4 minor failure, 8 serious failure, 12 major failure
    Column("status", Integer, nullable=False),  # HTTP status answered
    Column("username", String(50)),
    Column("client_id", String(100)),
    Column("source_address", String(64)),
    Column("user_agent", String(200)),
    Column("resource_type", String(64)),  # the type the request was about
    Column("query", Text),  # a search's query string
    Column("description", String(300)),
    Index("ix_audit_event_recorded", "recorded"),
    Index("ix_audit_event_username", "username"),
)

# What an audit event touched: the resource read or written, or each resource a search or history page returned.
audit_entity = Table(
    "audit_entity",
    metadata,
    Column("event_pk", Integer, primary_key=True),
    record_reference("event_pk", "audit_event.pk"),
    Column("position", Integer, primary_key=True),
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("version_id", Integer),
    Index("ix_audit_entity_resource", "resource_type", "resource_id"),
)

__all__ = [
    "Amount",
    "app_user",
    "audit_entity",
    "audit_event",
    "auth_epoch",
    "batch_run",
    "bill",
    "bill_line",
    "claim",
    "claim_admin",
    "claim_admin_role",
    "claim_attachment",
    "claim_ded_rem",
    "claim_item",
    "claim_service",
    "code_list_entry",
    "coverage",
    "eligibility_enquiry",
    "family",
    "feedback",
    "feedback_prompt",
    "health_facility",
    "insuree",
    "insuree_photo",
    "insuree_policy",
    "insurer_org",
    "invoice",
    "invoice_line",
    "location",
    "login_failure",
    "medical_item",
    "medical_service",
    "metadata",
    "oauth_assertion",
    "oauth_client",
    "officer",
    "officer_role",
    "officer_role_village",
    "outbox",
    "payment_notice",
    "payment_reconciliation",
    "policy",
    "policy_holder",
    "premium",
    "price_list",
    "price_list_item",
    "price_list_service",
    "product",
    "product_item",
    "product_service",
    "rel_distr",
    "rel_index",
    "resource_version",
    "role",
    "role_right",
    "subscription",
    "user_district",
    "user_role",
]
