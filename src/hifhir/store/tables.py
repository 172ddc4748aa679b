"""The relational domain model: one table per openIMIS entity, plus history and security tables.

Every FHIR-exposed entity table shares the same resource columns (see `resource_columns`):
`pk` (internal integer key, also the stable keyset-paging order), `id` (the FHIR id, a UUID for server-created
rows), `version_id` and `last_updated` (of the latest FHIR version) and `deleted` (logical delete).
Timestamps are integer microseconds since the Unix epoch (UTC) so both engines compare them exactly.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

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


def resource_columns() -> list[Column]:
    return [
        Column("pk", Integer, primary_key=True, autoincrement=True),
        Column("id", SortText(64), nullable=False, unique=True),
        Column("uuid", String(36), index=True),  # identifier[UUID]; equals id for server-created resources
        Column("version_id", Integer, nullable=False, server_default="0"),
        Column("last_updated", BigInteger, nullable=False, server_default="0", index=True),
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
    UniqueConstraint("list_name", "code", name="uq_code_list_entry_list_code"),
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
    *resource_columns(),
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
)

# --- Insuree (Patient) ----------------------------------------------------------------------------------------
insuree = Table(
    "insuree",
    metadata,
    *resource_columns(),
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

__all__ = [
    "app_user",
    "code_list_entry",
    "family",
    "health_facility",
    "insuree",
    "insuree_photo",
    "insurer_org",
    "location",
    "metadata",
    "policy_holder",
    "resource_version",
    "role",
    "role_right",
    "user_district",
    "user_role",
]
