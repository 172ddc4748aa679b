"""The contract every IG profile implements, and the write context that versions what a write touched.

A *kind* is one IG profile backed by one entity table (Organization has three kinds: health facility, policy
holder, insurer). The REST layer, search, history and the CapabilityStatement only talk to kinds; adding a
profile means writing one module in `profiles/` and one registry line.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from sqlalchemy import Connection, Row, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from hifhir.fhir import patching
from hifhir.fhir.errors import FhirError, business_rule, conflict
from hifhir.store.fast import DriverQuery, MultiRowInsert, Plan, any_pk, run_plans
from hifhir.store.tables import is_current, resource_version

if TYPE_CHECKING:
    from hifhir.fhir.search import SearchParam

IG = "https://openimis.github.io/openimis_fhir_r4_ig"
PROFILE_BASE = f"{IG}/StructureDefinition/"
EXT = PROFILE_BASE
CS = f"{IG}/CodeSystem/"
IDENTIFIER_SYSTEM = f"{CS}openimis-identifiers"


class ResourceKind:
    """Base class for a profile ↔ entity mapping. Subclasses set the class attributes and override hooks."""

    resource_type: str = ""
    name: str = ""
    profile_id: str = ""
    table: Table
    code_column: str | None = "code"  # the column behind identifier[Code]
    # The rights guarding each interaction are not here: auth/matrix.py declares them all, by kind name.
    writable: bool = True
    # Writable kinds that are records of an event (an eligibility enquiry) are created once and never changed;
    # a kind the server creates as a side effect (a ClaimResponse) may still take updates (a review) but no create.
    creatable: bool = True
    updatable: bool = True
    deletable: bool = True
    search_params: dict[str, SearchParam]
    sort_params: dict[str, Any]
    # The columns holding this kind's version and change time. Two kinds may share one row (a claim and its
    # ClaimResponse): the one that changes on its own then keeps its versions in columns of its own.
    version_column: str = "version_id"
    updated_column: str = "last_updated"
    # Elements only users holding a right may see (element → right): stored versions keep them, every response
    # drops them for other users (api/rest.visible_body). The IG: ClaimResponse.communicationRequest needs 111009.
    restricted_elements: ClassVar[Mapping[str, int]] = MappingProxyType({})
    # Values a write may change that `patch_body` writes into the stored body of the previous version, sparing the
    # flush a render (fhir/patching.py): columns of a `versioned_update`, or what `WriteContext.mark_patch` names.
    patchable: ClassVar[frozenset[str]] = frozenset()
    # How this kind's rows reach a location, for location scoping: a rule of auth/scope.py (`at("location_pk")`,
    # `via(…)`, …) giving the condition on `table` for a user's scope. None: master data, every reader sees every row.
    scope: ClassVar[Callable[[Table, Any], Any] | None] = None

    @property
    def version(self) -> Any:
        return self.table.c[self.version_column]

    @property
    def updated(self) -> Any:
        return self.table.c[self.updated_column]

    @property
    def profile(self) -> str:
        return PROFILE_BASE + self.profile_id

    def accepts(self, resource: dict[str, Any]) -> bool:
        """For types with several kinds: does this incoming resource belong to this kind?"""
        return True

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        """to_fhir for a batch of rows: the resource without resourceType, id and meta."""
        raise NotImplementedError

    def render_plan(self, conn: Connection, pks: list[int]) -> Plan[dict[int, dict[str, Any]]]:
        """`render` as a plan of reads (store.fast.Plan): a flush runs the plans of every kind it re-versions
        together, so that their reads share round trips. A kind whose render reads in steps overrides this (and
        defines `render` as `run_plan(conn, self.render_plan(conn, pks))`); by default the render runs by itself
        when its plan starts."""
        yield from ()
        return self.render(conn, pks)

    def patch_body(self, body: dict[str, Any], change: Mapping[str, Any]) -> bool:
        """Write `change` (keys of `patchable`) into `body`, the previous version as stored without resourceType, id
        and meta, so that it is what `render` would now give; False when it cannot (the flush then renders)."""
        return False

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        """from_fhir plus domain rules; inserts or updates the entity and returns its pk (ctx.mark is implicit)."""
        raise NotImplementedError

    # Creates whose reads can run before the write transaction (see read_ahead).
    reads_ahead: bool = False

    def read_ahead(self, ctx: WriteContext, resource: dict[str, Any]) -> Any:
        """The read-only part of a create (resolving references, evaluating rules), run in a read transaction
        before the write one where that shortens the write (SQLite: outside its single writer lock); write()
        finds the result in `ctx.read_ahead`, or calls this itself on its own connection when it is None."""
        return None

    def delete(self, ctx: WriteContext, current: Row) -> None:
        """Domain rules for a logical delete (e.g. a family head cannot just vanish). Default: allowed."""

    def create_answer(self, ctx: WriteContext, pk: int) -> tuple[str, int, int]:
        """What a create answers with, as (kind name, pk, HTTP status): the created resource and 201, except for
        the IG's RPC-style creates, which answer with another resource written in the same transaction
        (POST CoverageEligibilityRequest → 200 with the CoverageEligibilityResponse, put in ctx.answers)."""
        answer = ctx.answers.get((self.name, pk))
        return (answer[0], answer[1], 200) if answer else (self.name, pk, 201)

    def current_row(self, conn: Connection, res_id: str, *, for_update: bool = False) -> Row | None:
        stmt = select(self.table).where(self.table.c.id == res_id)
        if for_update:
            stmt = stmt.with_for_update()
        return conn.execute(stmt).first()


def _set_values(table: Table, columns: tuple[str, ...]) -> dict[str, Any]:
    return {c: bindparam("set_" + c, type_=table.c[c].type) for c in columns}


@functools.cache
def _update_query(table: Table, columns: tuple[str, ...], *, many: bool = False) -> DriverQuery:
    """An UPDATE of these columns (values as `set_<column>`) of one row (`target_pk`) or of rows (`pks`), through
    the driver: writes update a few rows each, and SQLAlchemy's per-execution work costs more than the UPDATE."""
    which = any_pk(table.c.pk) if many else table.c.pk == bindparam("target_pk")
    return DriverQuery(update(table).where(which).values(_set_values(table, columns)))


@functools.cache
def _versioned_update(table: Table, version_column: str, updated_column: str, columns: tuple[str, ...], *,
                      returning: bool = True) -> DriverQuery:
    """An UPDATE of these columns of rows (`pks`) that also takes their next version (see versioned_update),
    returning it unless the caller knows it."""
    version = table.c[version_column]
    statement = update(table).where(any_pk(table.c.pk)).values(
        {**_set_values(table, columns), version_column: version + 1, updated_column: bindparam("now")})
    return DriverQuery(statement.returning(table.c.pk, table.c.id, version) if returning else statement)


@functools.cache
def _bump_versions(table: Table, version_column: str = "version_id", updated_column: str = "last_updated"
                   ) -> DriverQuery:
    """The next version of a batch of entities, with their ids (one statement: UPDATE … RETURNING; every write's
    flush runs it once per touched kind, hence through the driver)."""
    t = table
    version = t.c[version_column]
    return DriverQuery(
        update(t)
        .where(any_pk(t.c.pk))
        .values({version_column: version + 1, updated_column: bindparam("now")})
        .returning(t.c.pk, t.c.id, version)
    )


_RENDER_MEMO = "hifhir.render_memo"
_BUMPS = ""  # the flush's plan key of the version bumps (no kind is named so)
_STORED = "stored:"  # prefix of the flush's plan keys of the stored bodies a patch starts from


def _bump_plan(reads: list[tuple[DriverQuery, dict[str, Any]]]) -> Plan[list[list[Any]]]:
    return (yield reads) if reads else []


def render_memo(conn: Connection) -> dict[str, Any] | None:
    """A scratch dict for the renders of one flush (None outside a flush): a render may leave rows there that another
    kind's render of the same flush reads again (a Contract and its Coverage both show the policy). Dropped when the
    flush ends, so nothing outlives the statements that changed the rows."""
    return conn.info.get(_RENDER_MEMO)


# Every write appends here: through the driver, without SQLAlchemy's per-execution work (the columns need no type
# processing: strings, integers, bytes), all of a write's versions in one statement.
_HISTORY_INSERT = MultiRowInsert(resource_version, ("res_type", "res_id", "kind", "version", "last_updated",
                                                    "operation", "user_name", "body"))


# Called by every flush with what it wrote, in the writing transaction: what an observer records (notification rows
# in the outbox) commits or rolls back with the change itself. Registered at import by the modules that need it.
FLUSH_OBSERVERS: list[Callable[[Connection, list[Written]], None]] = []


def now_us() -> int:
    return time.time_ns() // 1000


def instant(us: int) -> str:
    """A FHIR instant (UTC, microseconds) of an epoch time in microseconds."""
    second, micro = divmod(us, 1_000_000)
    return f"{_instant_second(second)}.{micro:06d}Z"


@functools.lru_cache(maxsize=256)  # every resource a request writes shares its second
def _instant_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")[:-6]  # without "+00:00"


class KeyedInsert:
    """A new entity's INSERT at the driver level (`values` carrying version 1), registered for the flush: what
    `WriteContext.insert` runs for any table, and what a write inserting its own set of columns keeps as a constant.
    On PostgreSQL its key is drawn ahead (store/pk_blocks), so the insert waits for the transaction's next round trip
    instead of taking one for `RETURNING pk`; a uniqueness violation, raised here or by the statement that carries
    it, is the 409 the write registered with `WriteContext.expect_unique`."""

    def __init__(self, table: Table, columns: tuple[str, ...]) -> None:
        self._table = table
        self._returning = DriverQuery(insert(table).values({c: bindparam(c) for c in columns}).returning(table.c.pk))
        self._keyed = DriverQuery(insert(table).values({c: bindparam(c) for c in ("pk", *columns)}))

    def insert(self, ctx: WriteContext, values: dict[str, Any]) -> int:
        from hifhir.store.pk_blocks import next_pk

        try:
            if ctx.conn.dialect.name == "postgresql":
                pk = next_pk(ctx.conn, self._table)
                self._keyed.run(ctx.conn, {**values, "pk": pk}, defer=True)
            else:
                pk = int(self._returning.rows(ctx.conn, values)[0].pk)
        except IntegrityError as exc:
            raise ctx.conflict_for(exc, self._table.name) or exc from None
        ctx.created[(self._table.name, pk)] = values["id"]
        return pk


@functools.cache
def _keyed_insert(table: Table, columns: tuple[str, ...]) -> KeyedInsert:
    return KeyedInsert(table, columns)


@dataclass(slots=True)
class Written:
    kind: ResourceKind
    pk: int
    id: str
    version: int
    last_updated: int
    body: bytes | None
    operation: str


@dataclass
class WriteContext:
    """Everything one write transaction needs; collects the entities whose FHIR representation changed."""

    conn: Connection
    user_name: str | None
    lenient: bool = False
    new_id: str = ""  # the id a create will get (server UUID for POST, the URL id for update-as-create)
    id_from_client: bool = False
    now: int = field(default_factory=now_us)
    touched: dict[str, set[int]] = field(default_factory=dict)
    deleted: list[tuple[ResourceKind, int]] = field(default_factory=list)
    created: dict[tuple[str, int], str] = field(default_factory=dict)  # (table, pk) → id, inserted at version 1
    # (table, column) → (value, message, expression, index columns) for uniqueness left to the partial unique indexes
    unique: dict[tuple[str, str], tuple[str, str, str, tuple[str, ...]]] = field(default_factory=dict)
    # (kind name, pk) → body a write built itself, used by flush instead of render() (resources whose content
    # is not in columns, e.g. an eligibility enquiry and its answer)
    prerendered: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    # (kind name, pk) of a create → (kind name, pk) of the resource that answers it (RPC-style creates)
    answers: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    read_ahead: Any = None  # what the created kind's read_ahead() computed before this transaction
    # (kind name, pk) → (id, version) of the rows whose next version an UPDATE already took (versioned_update): the
    # flush bumps them no further
    bumped: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    # (kind name, pk) → the changes that are all this write did to the resource: its new version is the previous
    # stored body with them written in (fhir/patching.py), unless anything else marks it
    patches: dict[tuple[str, int], list[Mapping[str, Any]]] = field(default_factory=dict)
    # (kind name, pk) → (version, body) stored for resources a write expects to patch, read before its transaction
    # (read_ahead: on SQLite outside the writer lock); the flush reads only the others, and renders a resource whose
    # version moved on meanwhile (`patching.patched` checks it)
    prefetched: dict[tuple[str, int], tuple[int, bytes | None]] = field(default_factory=dict)

    def insert(self, table: Table, values: dict[str, Any]) -> int:
        """Insert a new entity already at version 1, so that flush needs no version bump for it (a KeyedInsert: on
        PostgreSQL the insert waits for the transaction's next round trip, the render that reads it back at the
        latest; a uniqueness the write registered with `expect_unique` is its 409 wherever it is raised)."""
        row = {**values, "version_id": 1, "last_updated": self.now}
        return _keyed_insert(table, tuple(row)).insert(self, row)

    def update(self, table: Table, pk: int, values: dict[str, Any]) -> None:
        if self.patches:  # a column no patch covers may change: render the row's resources
            from hifhir.fhir.registry import KINDS

            for key in [k for k in self.patches if k[1] == pk and KINDS[k[0]].table is table]:
                del self.patches[key]
        try:
            _update_query(table, tuple(values)).run(
                self.conn, {"target_pk": pk, **{"set_" + k: v for k, v in values.items()}})
        except IntegrityError as exc:
            raise self._unique_violation(table, exc) from None

    def versioned_update(self, kind_name: str, pks: Iterable[int], values: dict[str, Any], *,
                         locked: Mapping[int, tuple[str, int]] | None = None) -> None:
        """Update rows of a kind and mark them, each taking its next version in the same UPDATE, so the flush
        does not bump it again: one UPDATE a row instead of two. On PostgreSQL each UPDATE writes a new row version
        and, when an indexed column changes (last_updated), an entry in every index of the table. A row already
        bumped by this write, or created by it, is only updated. `locked`: pk → (id, version) of rows this
        transaction read under a row lock (FOR [NO KEY] UPDATE), whose next version nobody else can take: their UPDATE
        returns nothing and so waits for the transaction's next round trip (PostgreSQL)."""
        from hifhir.fhir.registry import KINDS

        kind = KINDS[kind_name]
        table = kind.table
        params = {"set_" + k: v for k, v in values.items()}
        fresh, known, done = [], [], []
        if self.conn.dialect.name != "postgresql":
            locked = None  # nothing waits for a round trip there; and a read-ahead's rows may be older
        patchable = values.keys() <= kind.patchable
        for pk in pks:
            settled = (kind_name, pk) in self.bumped or (table.name, pk) in self.created
            (done if settled else known if locked is not None and pk in locked else fresh).append(pk)
            if patchable:
                self.mark_patch(kind_name, pk, values)
            else:
                self.prerendered.pop((kind_name, pk), None)  # built before these columns changed
                self.mark(kind_name, pk)
        try:
            if known:
                statement = _versioned_update(table, kind.version_column, kind.updated_column, tuple(values),
                                              returning=False)
                statement.run(self.conn, {**params, "pks": known, "now": self.now}, defer=True)
                assert locked is not None
                for pk in known:
                    res_id, version = locked[pk]
                    self.bumped[(kind_name, pk)] = (res_id, version + 1)
            if fresh:
                statement = _versioned_update(table, kind.version_column, kind.updated_column, tuple(values))
                for row in statement.rows(self.conn, {**params, "pks": fresh, "now": self.now}):
                    self.bumped[(kind_name, row[0])] = (row[1], row[2])
            if done:
                _update_query(table, tuple(values), many=True).run(self.conn, {**params, "pks": done})
        except IntegrityError as exc:
            raise self._unique_violation(table, exc) from None

    def expect_unique(self, table: Table, column: str, value: str, what: str, expression: str, *,
                      columns: tuple[str, ...] = (), message: str | None = None) -> None:
        """Uniqueness among current rows, enforced by the partial unique index rather than a SELECT first:
        a violation becomes this 409 ("{what} {value} is already used", or `message`) instead of a generic
        conflict. `columns`: the index's columns when it has more than `column` (e.g. a code unique per facility)."""
        self.unique[(table.name, column)] = (value, message or f"{what} {value} is already used", expression,
                                             columns or (column,))

    def _unique_violation(self, table: Table, exc: IntegrityError) -> Exception:
        return self.conflict_for(exc, table.name) or exc

    def conflict_for(self, exc: IntegrityError, table_name: str | None = None) -> FhirError | None:
        """The 409 naming what is already used, when `exc` violates a uniqueness this write expects (of `table_name`,
        or of any table: a statement that waited for a later round trip fails there, see store/pg_direct)."""
        text = str(exc.orig)
        for (table, _column), (_value, message, expression, columns) in self.unique.items():
            if table_name not in (None, table):
                continue
            # SQLite names the columns ("claim.hf_pk, claim.code"), PostgreSQL the index (uq_claim_hf_pk_code_current).
            index = f"uq_{table}_{'_'.join(columns)}"
            if (", ".join(f"{table}.{c}" for c in columns) in text or f"{index}_current" in text
                    or f'"{index}"' in text):
                return conflict(message, expression)
        return None

    def mark(self, kind_name: str, pk: int) -> None:
        """The resource changed: the flush re-versions and renders it."""
        self.touched.setdefault(kind_name, set()).add(pk)
        if self.patches:
            self.patches.pop((kind_name, pk), None)

    def mark_patch(self, kind_name: str, pk: int, change: Mapping[str, Any]) -> None:
        """The resource changed by `change` (keys of its kind's `patchable`) alone, unless something else marks it
        in this write: the flush re-versions it, writing the change into its stored body rather than rendering."""
        touched = self.touched.setdefault(kind_name, set())
        key = (kind_name, pk)
        built = self.prerendered.get(key)
        if built is not None:
            # A body this write built, changed again before the flush (an enrolment transaction's payment flags
            # the Patients it created active): the change goes into it, or the resource is rendered.
            from hifhir.fhir.registry import KINDS

            if not KINDS[kind_name].patch_body(built, change):
                del self.prerendered[key]
        if key in self.patches:
            self.patches[key].append(change)
        elif pk not in touched:
            self.patches[key] = [change]
        touched.add(pk)

    def resolve(
        self, reference: Any, target_types: Iterable[str], expression: str, *, kinds: Iterable[str] = ()
    ) -> tuple[ResourceKind, int]:
        """Resolve a literal reference `Type/id` to a current entity; a missing or deleted target is a 422."""
        from hifhir.fhir.registry import kinds_of_type, parse_reference

        allowed = set(target_types)
        wanted = set(kinds)
        if not isinstance(reference, dict):
            raise business_rule("A reference is required", expression)
        ref = reference.get("reference")
        if ref is None and isinstance(reference.get("identifier"), dict):
            return self._resolve_logical(reference, allowed, wanted, expression)
        if not isinstance(ref, str):
            raise business_rule("A literal reference 'Type/id' is required", expression)
        parsed = parse_reference(ref)
        if parsed is None or parsed[0] not in allowed:
            raise business_rule(
                f"Reference '{ref[:100]}' must point to {' or '.join(sorted(allowed))}", expression
            )
        rtype, rid = parsed
        for kind in kinds_of_type(rtype):
            if wanted and kind.name not in wanted:
                continue
            found = self._current_pk(kind, kind.table.c.id == rid)
            # openIMIS clients also put business codes where ids belong; the compatible alias resolves them.
            if found is None and self.lenient and kind.code_column:
                found = self._current_pk(kind, kind.table.c[kind.code_column] == rid)
            if found is not None:
                return kind, found
        raise business_rule(f"Referenced resource {rtype}/{rid} does not exist or is deleted", expression)

    def _resolve_logical(
        self, reference: dict[str, Any], allowed: set[str], wanted: set[str], expression: str
    ) -> tuple[ResourceKind, int]:
        """`{type, identifier: {type: Code|UUID, value}}`, the logical references openIMIS clients send."""
        from hifhir.fhir.registry import kinds_of_type

        rtype = reference.get("type")
        if rtype not in allowed:
            raise business_rule(
                f"A logical reference needs 'type' ({' or '.join(sorted(allowed))})", expression
            )
        ident = reference["identifier"]
        value = ident.get("value")
        codings = ((ident.get("type") or {}).get("coding") or [{}]) if isinstance(ident.get("type"), dict) else [{}]
        type_code = str((codings[0] or {}).get("code") or "").lower()
        if not isinstance(value, str) or not value:
            raise business_rule("A logical reference needs identifier.value", expression)
        for kind in kinds_of_type(rtype):
            if wanted and kind.name not in wanted:
                continue
            t = kind.table
            if type_code == "code" and kind.code_column:
                found = self._current_pk(kind, t.c[kind.code_column] == value)
            else:
                # Where uuid is not indexed it always equals the id (an OR with an unindexed column scans).
                by_uuid = (t.c.uuid == value) | (t.c.id == value) if t.c.uuid.index else t.c.id == value
                found = self._current_pk(kind, by_uuid)
            if found is not None:
                return kind, found
        raise business_rule(f"No current {rtype} has identifier {value[:64]}", expression)

    def _current_pk(self, kind: ResourceKind, condition: Any) -> int | None:
        row = self.conn.execute(
            select(kind.table.c.pk).where(condition, is_current(kind.table)).limit(1)
        ).first()
        return None if row is None else int(row.pk)

    def flush(self) -> dict[tuple[str, int], Written]:
        """Bump versions, render and append one history row per touched entity (in this transaction)."""
        out: dict[tuple[str, int], Written] = {}
        history_rows: list[dict[str, Any]] = []
        self.conn.info[_RENDER_MEMO] = {}
        try:
            self._render_touched(out, history_rows)
        finally:
            self.conn.info.pop(_RENDER_MEMO, None)
        for kind, pk in self.deleted:
            t = kind.table
            self.conn.execute(
                update(t)
                .where(t.c.pk == pk)
                .values(version_id=t.c.version_id + 1, last_updated=self.now, deleted=True)
            )
            row = self.conn.execute(select(t.c.id, t.c.version_id).where(t.c.pk == pk)).one()
            out[(kind.name, pk)] = Written(kind, pk, row.id, row.version_id, self.now, None, "delete")
            history_rows.append(self._history_row(kind, row.id, row.version_id, "delete", None))
        if history_rows:  # no one waits for it: on PostgreSQL it may travel with the next statement or the COMMIT
            _HISTORY_INSERT.execute(self.conn, history_rows, defer=True)
        if out and FLUSH_OBSERVERS:
            written = list(out.values())
            for observer in FLUSH_OBSERVERS:
                observer(self.conn, written)
        self.touched.clear()
        self.deleted.clear()
        self.created.clear()
        self.prerendered.clear()
        self.bumped.clear()
        self.patches.clear()
        self.prefetched.clear()
        return out

    def _render_touched(self, out: dict[tuple[str, int], Written], history_rows: list[dict[str, Any]]) -> None:
        from hifhir.fhir.registry import KINDS

        # Every kind's version bump (a bump changes nothing a render shows but the kind's own version and time,
        # which come from its RETURNING).
        versions: dict[str, list[Any]] = {}
        bumps: list[tuple[str, tuple[DriverQuery, dict[str, Any]]]] = []
        for kind_name, pks in self.touched.items():
            kind = KINDS[kind_name]
            t = kind.table
            pk_list = sorted(pks)
            rows: list[Any] = [(pk, self.created[(t.name, pk)], 1) for pk in pk_list if (t.name, pk) in self.created]
            rows += [(pk, *self.bumped[(kind_name, pk)]) for pk in pk_list if (kind_name, pk) in self.bumped]
            versions[kind_name] = rows
            existing = [pk for pk in pk_list if (t.name, pk) not in self.created
                        and (kind_name, pk) not in self.bumped]
            if existing:
                bumps.append((kind_name, (_bump_versions(t, kind.version_column, kind.updated_column),
                                          {"pks": existing, "now": self.now})))
        # The renders' reads go with the bumps, each step of every kind's plan in one round trip on PostgreSQL.
        plans: dict[str, Plan[Any]] = {_BUMPS: _bump_plan([read for _, read in bumps])}
        given: dict[str, dict[int, dict[str, Any]]] = {}
        changes: dict[str, dict[int, list[Mapping[str, Any]]]] = {}
        for kind_name, pks in self.touched.items():
            kind = KINDS[kind_name]
            pk_list = sorted(pks)
            given[kind_name] = {pk: self.prerendered.pop((kind_name, pk)) for pk in pk_list
                                if (kind_name, pk) in self.prerendered}
            changes[kind_name] = {pk: self.patches[(kind_name, pk)] for pk in pk_list
                                  if (kind_name, pk) in self.patches and pk not in given[kind_name]
                                  and (kind.table.name, pk) not in self.created} if self.patches else {}
            to_render = [pk for pk in pk_list if pk not in given[kind_name] and pk not in changes[kind_name]]
            if to_render:
                plans[kind_name] = kind.render_plan(self.conn, to_render)
            if changes[kind_name]:
                unread = [pk for pk in changes[kind_name] if (kind_name, pk) not in self.prefetched]
                if unread:
                    plans[_STORED + kind_name] = patching.stored_plan(kind, unread)
        rendered = run_plans(self.conn, plans)
        for (kind_name, _), bumped in zip(bumps, rendered.pop(_BUMPS), strict=True):
            versions[kind_name] += bumped
        self._patch(versions, changes, rendered, given)

        for kind_name in self.touched:
            kind = KINDS[kind_name]
            rows = versions[kind_name]
            bodies = {**rendered.get(kind_name, {}), **given[kind_name]}
            for pk, res_id, version in rows:
                resource: dict[str, Any] = {
                    "resourceType": kind.resource_type,
                    "id": res_id,
                    "meta": {
                        "versionId": str(version),
                        "lastUpdated": instant(self.now),
                        "profile": [kind.profile],
                    },
                }
                resource.update(bodies[pk])
                body = orjson.dumps(resource)
                op = "create" if version == 1 else "update"
                if op == "create" and self.id_from_client:
                    op = "put"  # update-as-create: history must show PUT Type/id, answered 201
                out[(kind_name, pk)] = Written(kind, pk, res_id, version, self.now, body, op)
                history_rows.append(self._history_row(kind, res_id, version, op, body))

    def _patch(self, versions: dict[str, list[Any]], changes: dict[str, dict[int, list[Mapping[str, Any]]]],
               rendered: dict[str, Any], given: dict[str, dict[int, dict[str, Any]]]) -> None:
        """The bodies of the patched resources (into `given`), and renders of those that cannot be patched (into
        `rendered`)."""
        from hifhir.fhir.registry import KINDS

        fallback: dict[str, list[int]] = {}
        for kind_name, by_pk in changes.items():
            if not by_pk:
                continue
            kind = KINDS[kind_name]
            stored = rendered.pop(_STORED + kind_name, {})
            new_versions = {row[0]: row[2] for row in versions[kind_name]}
            for pk, pending in by_pk.items():
                body = patching.patched(kind, stored.get(pk) or self.prefetched.get((kind_name, pk)),
                                        new_versions[pk], pending)
                if body is None:
                    fallback.setdefault(kind_name, []).append(pk)
                else:
                    given[kind_name][pk] = body
        if patching.verifying():
            fallback_set = {(k, pk) for k, pks in fallback.items() for pk in pks}
            checked = {k: [pk for pk in by_pk if (k, pk) not in fallback_set] for k, by_pk in changes.items()}
            renders = run_plans(self.conn, {k: KINDS[k].render_plan(self.conn, pks)
                                            for k, pks in checked.items() if pks})
            for kind_name, bodies in renders.items():
                for pk, body in bodies.items():
                    patching.check(KINDS[kind_name], pk, given[kind_name][pk], body)
        if fallback:
            more = run_plans(self.conn, {k: KINDS[k].render_plan(self.conn, pks) for k, pks in fallback.items()})
            for kind_name, bodies in more.items():
                rendered.setdefault(kind_name, {}).update(bodies)

    def _history_row(
        self, kind: ResourceKind, res_id: str, version: int, op: str, body: bytes | None
    ) -> dict[str, Any]:
        return {
            "res_type": kind.resource_type,
            "res_id": res_id,
            "kind": kind.name,
            "version": version,
            "last_updated": self.now,
            "operation": op,
            "user_name": self.user_name,
            "body": body,
        }


def without_restricted(body: bytes, restricted: Mapping[str, int], may_see: Callable[[int], bool]) -> bytes:
    """A stored body without the elements (`restricted_elements`: element → right) whose right `may_see` denies;
    most bodies hold none of them and pass through untouched, without parsing."""
    hidden = [element for element, right in restricted.items()
              if not may_see(right) and f'"{element}"'.encode() in body]
    if not hidden:
        return body
    resource = orjson.loads(body)
    for element in hidden:
        resource.pop(element, None)
    return orjson.dumps(resource)


def require(condition: bool, diagnostics: str, expression: str | None = None, status: int = 422) -> None:
    if not condition:
        code = "business-rule" if status == 422 else "invalid"
        raise FhirError.one(status, code, diagnostics, expression=expression)

