"""Claim processing and valuation (reference/openimis-domain.md §3.4.2–3.4.3; legacy `uspProcessSingleClaimStep1`
and `uspProcessSingleClaimStep2`).

`process(conn, claim_pk, today=, now=)` takes a checked claim (status 4) to Processed (8) or Valuated (16), or to
Rejected (1) when no line keeps a covering product.

Step 1, product assignment, for each passed line:
* the candidate coverage lines are those of the products of the insuree's valid policies at the target date
  (claim `date_to`, else `date_from`): policy active (2) or expired (8) with effective date ≤ target ≤ expiry date,
  and the insuree's own `insuree_policy` row effective at the target date (the §3.3.4 window rules);
* the visit type picks the limitation columns: `E` → `limitation_type_e` / `limit_adult_e` / `limit_child_e`,
  `R` → the `_r` columns, `O` or none → the plain ones; adult or child by exact age at the target date (§6.1);
* best co-insurance line C = the highest percentage, best fixed line F = the highest amount with 0 counting as
  unlimited (legacy ordering). With both, F wins when its limit is 0 or above the claimed unit price (the larger
  of asked and approved), else the one leaving the insuree less to pay (price − fixed vs (1 − pct/100) × price;
  C on a tie). Ties between products go to the policy the member joined first;
* the line gets product, policy (the member's first valid policy of that product), price origin, limitation
  (C/F) and limitation value (percentage or amount); no candidate → rejected with reason 3 (no product).
  Step 1 also re-checks what valuation itself depends on: a line whose item/service was deleted since the checks
  is rejected with 1, one no longer in the facility's price list with 2 (its price comes from that list). The
  patient-category re-check (4) is left to the checks, which just ran on the same registers.

Step 2, per policy used (a policy has one product, so (product, policy) = policy):
* hospital care = (ceiling interpretation `I`, the default, and a multi-day claim) or (`H` and facility level
  `H`);
* deductible and ceiling: the first non-zero of the treatment / insuree / policy columns, general first, else the
  IP (hospital care) or OP variants; previous usage from the other claims' `claim_ded_rem` rows (insuree: this
  insuree's rows on the policy, policy: all rows of the policy, treatment: none). The policy ceiling is raised by
  (members effective at the target date − Threshold) × the extra-member ceiling and capped by MaxCeilingPolicy
  (of the same family) when that cap is set;
* the claim category's MaxAmount (S, D, A, H, C; none for V) caps the claim: legacy reads no earlier usage for
  it ("amount must remain constant", as eligibility shows it);
* per passed line, items then services, by line pk: (1) quantity = approved else provided; (2) unit price =
  origin O: approved else asked; P/R: approved else the price-list price (override, else the register price),
  stored as `price_adjusted`; (3) value = qty × price, capped at qty × fixed limit for an F line; (4) what is left
  of the deductible is absorbed first (`deductable_amount`), a fully absorbed line is valuated 0; (5) C line:
  value × pct / 100; (6) category ceiling; (7) a line excluded from ceilings for this patient and care kind
  (`B` always, `H` hospital care, `N` otherwise) is paid in full and not counted, else the general ceiling caps
  it (excess in `exceed_ceiling_amount`) and it counts; (8) `price_valuated` = the value, and for origin P/O
  `remunerated_amount` too (origin R waits for the batch run).
* one `claim_ded_rem` row per policy: ded_g / rem_g, the same amounts in ded_ip / rem_ip (hospital care) or
  ded_op / rem_op, and the category's remunerated amount (rem_surgery…). Rows this claim had are replaced.
* claim: Processed (8) when a passed line has origin R, else Valuated (16); `date_processed`, `process_stamp`,
  `approved` = Σ coalesce(price approved, price adjusted) × quantity of passed lines; for Valuated claims
  `valuated` = Σ price valuated and `remunerated` = Σ remunerated amounts (both stay empty on a Processed claim
  until the batch run valuates it); review and feedback status Selected (4) → Bypassed (16).
Amounts are rounded half up to cents wherever legacy assigns a decimal(18,2).

Where legacy and the Python module differ (domain §3.4.3 DIVERGENCE), legacy is followed, because it is right:
* relative-price lines keep their `price_valuated` (Python sets NULL): the batch run's relative index divides the
  period's money by exactly that sum (§3.4.4);
* origin O honours a reviewer's `price_approved` (Python overrides it with the asked price);
* IP and OP columns are read as named (Python's product service swaps them when saving).
Legacy bugs not copied:
* deductible and ceiling precedence is first non-zero treatment → insuree → policy (as documented and as
  eligibility reports balances); the legacy procedure lets a later non-zero column overwrite an earlier one;
* the OP deductible reads the OP columns (legacy tests DedIPInsuree/DedIPPolicy before taking the OP amounts);
* policy members are counted at the target date (legacy uses DateTo, so a single-day claim counts none);
* an F line with limit 0 is unlimited in step 2 too (legacy picks it as unlimited in step 1, then pays 0);
* one `claim_ded_rem` row per policy (legacy writes one, for the last product of its loop).
A product without a Threshold counts every member as extra for the policy ceiling (legacy ISNULL(Threshold, 0)).

Cost, whatever the number of lines: two reads of what no other claim changes (`ClaimTerms`: the insuree's valid
policies with their product terms and the facility's price lists; the lines with their register price, price-list
line and the products' coverage lines), which a submission reads before its claim is inserted (`terms_plan`: on
SQLite outside the writer lock), a third only when a product has an insuree or policy deductible or ceiling (what
earlier claims consumed), then the writes (lines, ded-rem rows, claim) — all compiled once and run on the DB-API
connection; on PostgreSQL the writes go in one pipeline (one round trip). A submission's lines are not stored yet
(`NewLine`): the second read is of their registers, and what is decided goes back to them, for the submission to
insert the lines once. When nothing can hold a submission before processing (no review or feedback selection, no
external adjudicator), the claim itself is not stored yet either (`process_submission`): the submission inserts it
as processing decided it, then its ded-rem rows (`record_consumption`). A stored claim (a review, a feedback, an
external adjudicator's answer) is read first.
On PostgreSQL, the policies whose deductible or ceiling this claim consumes are first locked (FOR NO KEY UPDATE,
in pk order) in a statement of their own, so that the usage read after it sees every claim committed before, and
two claims of one family processed at once cannot both spend the same deductible.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Date,
    String,
    and_,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    true,
    util,
)
from sqlalchemy import update as sql_update
from sqlalchemy.exc import DBAPIError

from hifhir.domain.claims import (
    BYPASSED,
    INVALID_ITEM_OR_SERVICE,
    NO_PRODUCT_FOUND,
    NOT_IN_PRICE_LIST,
    SELECTED,
    NewLine,
    target_pks,
)
from hifhir.domain.eligibility import ADULT_AGE, CARE, CATEGORIES, SCOPES
from hifhir.domain.policy import age_on
from hifhir.store.fast import DriverQuery, Plan, any_pk, observed, rows_together, run_plan
from hifhir.store.tables import (
    CLAIM_CHECKED,
    CLAIM_PROCESSED,
    CLAIM_REJECTED,
    CLAIM_VALUATED,
    LINE_PASSED,
    LINE_REJECTED,
    POLICY_ACTIVE,
    POLICY_EXPIRED,
    claim,
    claim_ded_rem,
    claim_item,
    claim_service,
    health_facility,
    insuree,
    insuree_policy,
    is_current,
    medical_item,
    medical_service,
    policy,
    price_list,
    price_list_item,
    price_list_service,
    product,
    product_item,
    product_service,
)

CENT = Decimal("0.01")
ZERO = Decimal(0)
HUNDRED = Decimal(100)
VISIT_SUFFIX = {"E": "_e", "R": "_r"}  # visit type → limitation columns; O or none → the plain ones
ALL_REJECTED = 1  # the claim-level reason when no line is left (as the Python module sets it, §2.19)
CATEGORY_REMS = {"C": "rem_consult", "S": "rem_surgery", "D": "rem_delivery", "H": "rem_hospitalization",
                 "A": "rem_antenatal"}


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


# --- statements (compiled once per dialect) ---------------------------------------------------------------------

_TERMS = (
    "threshold", "ceiling_interpretation",
    *(f"{kind}{infix}_{scope}" for kind in ("ded", "max") for infix in CARE.values() for scope in SCOPES),
    *(f"max_policy_extra_member{infix}" for infix in CARE.values()),
    *(f"max_ceiling_policy{infix}" for infix in CARE.values()),
    *(f"max_amount_{name}" for _, name in CATEGORIES.values() if name),
)


def _terms_statement() -> Any:
    """The facility's level and current price lists, the insuree's birth date, and one row per valid policy of the
    insuree at the target date (§3.3.4 windows) with its product terms and the number of its members covered that
    day — one row with empty policy columns when there is none. Binds: `hf`, `insuree`, `target`: nothing of the
    claim row itself, so that a submission reads it before its claim is inserted."""
    item_list, service_list = price_list.alias("item_list"), price_list.alias("service_list")
    target = bindparam("target", type_=Date)
    members = insuree_policy.alias("members")
    member_count = (
        select(func.count())
        .where(members.c.policy_pk == policy.c.pk, members.c.deleted == false(),
               members.c.effective_date <= target, members.c.expiry_date >= target)
        .scalar_subquery()
    )
    return (
        select(health_facility.c.level.label("hf_level"), insuree.c.dob,
               item_list.c.pk.label("item_list_pk"), service_list.c.pk.label("service_list_pk"),
               # empty unless the member row, its policy and the product all qualify (see the joins)
               case((product.c.pk.is_not(None), policy.c.pk)).label("policy_pk"),
               product.c.pk.label("product_pk"), member_count.label("members"),
               *(product.c[name].label(f"p_{name}") for name in _TERMS))
        .select_from(
            health_facility.join(insuree, insuree.c.pk == bindparam("insuree"))
            .outerjoin(item_list, and_(item_list.c.pk == health_facility.c.item_price_list_pk,
                                       item_list.c.deleted == false()))
            .outerjoin(service_list, and_(service_list.c.pk == health_facility.c.service_price_list_pk,
                                          service_list.c.deleted == false()))
            # A chain of left joins, not a parenthesised inner join (which SQLite materialises over every member
            # row of every policy): rows of members, policies or products that do not qualify have empty columns.
            .outerjoin(insuree_policy, and_(insuree_policy.c.insuree_pk == insuree.c.pk,
                                            insuree_policy.c.deleted == false(),
                                            insuree_policy.c.effective_date <= target,
                                            insuree_policy.c.expiry_date >= target))
            .outerjoin(policy, and_(policy.c.pk == insuree_policy.c.policy_pk, policy.c.deleted == false(),
                                    or_(policy.c.status == POLICY_ACTIVE, policy.c.status == POLICY_EXPIRED),
                                    policy.c.effective_date <= target, policy.c.expiry_date >= target))
            .outerjoin(product, and_(product.c.pk == policy.c.product_pk, is_current(product)))
        )
        .where(health_facility.c.pk == bindparam("hf"))
        .order_by(insuree_policy.c.effective_date, policy.c.pk)
    )


_POLICY_TERMS = DriverQuery(_terms_statement())
# The claim as processing needs it (a stored claim's; a submission's is in memory).
_CLAIM_HEAD = DriverQuery(
    select(claim.c.status, claim.c.hf_pk, claim.c.insuree_pk, claim.c.date_from, claim.c.date_to,
           claim.c.visit_type, claim.c.category)
    .where(claim.c.pk == bindparam("claim"), is_current(claim)))

_COVERAGE_COLUMNS = (
    "product_pk", "price_origin", "limitation_type", "limitation_type_r", "limitation_type_e",
    "limit_adult", "limit_child", "limit_adult_r", "limit_child_r", "limit_adult_e", "limit_child_e",
    "ceiling_exclusion_adult", "ceiling_exclusion_child",
)


@functools.lru_cache(maxsize=32)
def _lines_query(n_products: int, stored: bool) -> DriverQuery:
    """The claim's passed lines (`stored`), items then services, each with its register price, its line in the
    facility's price list (`item_list` / `service_list` binds) and one row per coverage line the products (p0…)
    have for it (a single row with empty coverage columns when none has). Not `stored`: the same for the registers
    (`item_pks` / `service_pks`) of the lines of a submission, which are not inserted yet."""
    products = [bindparam(f"p{i}") for i in range(n_products)]

    def branch(kind: str, lines: Any, target: Any, fk: str, listed: Any, list_bind: str, cover: Any, *,
               lateral: bool) -> Any:
        target_pk = lines.c[fk] if stored else target.c.pk
        source = lines.join(target, target.c.pk == target_pk) if stored else target
        entry_where = (listed.c[fk] == target_pk, listed.c.price_list_pk == bindparam(list_bind))
        cover_where = (cover.c[fk] == target_pk, cover.c.product_pk.in_(products))
        # PostgreSQL: probes by the line's register (joined, its generic plan hashed the whole lists). The LIMITs,
        # which the keys make true anyway, keep it from pulling the subqueries up into joins again.
        if lateral:
            entry: Any = select(listed.c.price_list_pk, listed.c.price_override).where(*entry_where).limit(1) \
                .lateral(f"{kind}_entry")
            source = source.outerjoin(entry, true())
        else:
            entry = listed
            source = source.outerjoin(listed, and_(*entry_where))
        if products:
            covered: Any = select(*(cover.c[c] for c in _COVERAGE_COLUMNS)).where(*cover_where) \
                .limit(n_products).lateral(f"{kind}_cover") if lateral else cover
            source = source.outerjoin(covered, true() if lateral else and_(*cover_where))
            coverage_columns = [covered.c[c] for c in _COVERAGE_COLUMNS]
        else:  # no valid policy: the lines alone
            coverage_columns = [null().label(c) for c in _COVERAGE_COLUMNS]
        line_columns = ([lines.c.pk, lines.c.qty_provided, lines.c.qty_approved, lines.c.price_asked,
                         lines.c.price_approved] if stored else [target_pk.label("target_pk")])
        return (
            select(literal(kind, String).label("kind"), *line_columns, target.c.price, target.c.deleted.label("gone"),
                   entry.c.price_list_pk.label("listed"), entry.c.price_override, *coverage_columns)
            .select_from(source)
            .where(*((lines.c.claim_pk == bindparam("claim"), lines.c.status == LINE_PASSED) if stored
                     else (any_pk(target.c.pk, f"{kind}_pks"),)))
        )

    def statement(*, lateral: bool) -> Any:
        return (branch("item", claim_item, medical_item, "item_pk", price_list_item, "item_list", product_item,
                       lateral=lateral)
                .union_all(branch("service", claim_service, medical_service, "service_pk", price_list_service,
                                  "service_list", product_service, lateral=lateral)))

    return DriverQuery(statement(lateral=False), postgresql=statement(lateral=True))


_USED = ("ded_g", "ded_ip", "ded_op", "rem_g", "rem_ip", "rem_op")


@functools.lru_cache(maxsize=16)
def _consumed_query(n_policies: int) -> DriverQuery:
    """What the other claims on the policies (p0…) consumed, by policy and by whether `insuree` made them."""
    mine = case((claim_ded_rem.c.insuree_pk == bindparam("insuree"), 1), else_=0)
    return DriverQuery(
        select(claim_ded_rem.c.policy_pk, mine.label("mine"), *(func.sum(claim_ded_rem.c[c]).label(c) for c in _USED))
        .where(claim_ded_rem.c.policy_pk.in_([bindparam(f"p{i}") for i in range(n_policies)]),
               claim_ded_rem.c.claim_pk != bindparam("claim"))
        .group_by(claim_ded_rem.c.policy_pk, mine)
    )


@functools.lru_cache(maxsize=16)
def _lock_query(n_policies: int) -> DriverQuery:
    return DriverQuery(select(policy.c.pk).where(policy.c.pk.in_([bindparam(f"p{i}") for i in range(n_policies)]))
                       .order_by(policy.c.pk).with_for_update(key_share=True))


class _Dml:
    """An INSERT/UPDATE/DELETE compiled once per dialect for the given parameter keys, its rows converted with the
    columns' own bind conversions (Amount hundredths, SQLite dates); `_write` runs several of them."""

    def __init__(self, statement: Any, keys: Sequence[str]) -> None:
        self._statement = statement
        self._keys = list(keys)
        self._compiled: dict[str, tuple[str, tuple[str, ...], bool, dict[str, Any], dict[str, Any]]] = {}

    def _for(self, conn: Connection) -> tuple[str, tuple[str, ...], bool, dict[str, Any], dict[str, Any]]:
        found = self._compiled.get(conn.dialect.name)
        if found is None:
            compiled = self._statement.compile(dialect=conn.dialect, column_keys=self._keys)
            rendered = compiled.construct_params(_check=False)
            order = tuple(compiled.positiontup or rendered)
            # values written into the statement itself (the CASE constants); the rest are per-row parameters
            fixed = {k: v for k, v in rendered.items() if v is not None and not isinstance(v, util.symbol)}
            found = self._compiled[conn.dialect.name] = (compiled.string, order, bool(compiled.positiontup), fixed,
                                                         dict(compiled._bind_processors))
        return found

    def bound(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> tuple[str, list[Any]]:
        sql, order, positional, fixed, binds = self._for(conn)
        args: list[Any] = []
        for row in rows:
            values = fixed | row
            for name, proc in binds.items():
                if name in values:
                    values[name] = proc(values[name])
            args.append([values[k] for k in order] if positional else {k: values[k] for k in order})
        return sql, args


def _write(conn: Connection, batches: Sequence[tuple[_Dml, Sequence[dict[str, Any]]]]) -> None:
    """Run the statements, in order, on the DB-API connection. On PostgreSQL they wait for the transaction's next
    round trip (the claim's render, or the COMMIT): no round trip of their own for all the claim's writes."""
    raw = conn.connection.driver_connection
    assert raw is not None
    bound = [dml.bound(conn, rows) for dml, rows in batches if rows]
    observed(sql for sql, _ in bound)
    dbapi_error = conn.dialect.loaded_dbapi.Error
    sql, args = "", []
    try:
        if conn.dialect.name == "postgresql":
            from hifhir.store import pg_direct

            if pg_direct.run_all(raw, bound, defer=True):  # once psycopg has prepared them: libpq, not psycopg
                return
            pg_direct.drain(raw)  # statements left waiting for a round trip go first
            with raw.pipeline(), raw.cursor() as cursor:
                for sql, args in bound:
                    _send(cursor, sql, args)
        else:
            cursor = raw.cursor()
            try:
                for sql, args in bound:
                    _send(cursor, sql, args)
            finally:
                cursor.close()
    except dbapi_error as exc:
        raise DBAPIError.instance(sql, args, exc, dbapi_error, dialect=conn.dialect) from exc


def _send(cursor: Any, sql: str, args: list[Any]) -> None:
    if len(args) == 1:
        cursor.execute(sql, args[0])
    else:
        cursor.executemany(sql, args)


_LINE_RESULT = ("status", "rejection_reason", "qty_approved", "product_pk", "policy_pk", "price_origin",
                "limitation", "limitation_value", "price_adjusted", "price_valuated", "deductable_amount",
                "exceed_ceiling_amount", "exceed_ceiling_amount_category", "remunerated_amount")

# One UPDATE per line, sent as one executemany: in PostgreSQL's pipeline that measured as fast as a single
# UPDATE … FROM (VALUES …) for the claim, and it needs no hand-written SQL.
_LINE_UPDATES = {
    kind: _Dml(sql_update(table).where(table.c.pk == bindparam("line_pk")), _LINE_RESULT)
    for kind, table in (("item", claim_item), ("service", claim_service))
}
_DROP_DED_REM = _Dml(delete(claim_ded_rem).where(claim_ded_rem.c.insuree_pk == bindparam("insuree"),
                                                 claim_ded_rem.c.claim_pk == bindparam("claim")), ())
_DED_REM_COLUMNS = ("claim_pk", "policy_pk", "insuree_pk", "ded_g", "ded_op", "ded_ip", "rem_g", "rem_op", "rem_ip",
                    "rem_consult", "rem_surgery", "rem_delivery", "rem_hospitalization", "rem_antenatal")
_INSERT_DED_REM = _Dml(insert(claim_ded_rem).inline(), _DED_REM_COLUMNS)
_CLAIM_RESULT = ("status", "rejection_reason", "date_processed", "process_stamp", "approved", "valuated",
                 "remunerated")


def _bypass(column: Any) -> Any:
    return case((column == SELECTED, BYPASSED), else_=column)


_UPDATE_CLAIM = _Dml(
    sql_update(claim).where(claim.c.pk == bindparam("claim_pk"))
    .values(review_status=_bypass(claim.c.review_status), feedback_status=_bypass(claim.c.feedback_status)),
    _CLAIM_RESULT,
)
_REJECT_CLAIM = _Dml(sql_update(claim).where(claim.c.pk == bindparam("claim_pk")),
                     ("status", "rejection_reason", "approved"))


# --- the claim in memory --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Line:
    kind: str
    pk: int
    qty_provided: Decimal
    qty_approved: Decimal | None
    price_asked: Decimal
    price_approved: Decimal | None
    register_price: Decimal
    gone: bool
    listed: bool
    price_override: Decimal | None
    candidates: list[Any] = field(default_factory=list)  # coverage lines, one per product
    # step 1
    reason: int = 0
    product_pk: int | None = None
    policy_pk: int | None = None
    price_origin: str | None = None
    limitation: str | None = None
    limitation_value: Decimal | None = None
    exclusion: str | None = None  # the coverage line's ceiling exclusion for this patient (H/N/B)
    # step 2
    price_adjusted: Decimal | None = None
    price_valuated: Decimal | None = None
    deductable_amount: Decimal | None = None
    exceed_ceiling_amount: Decimal | None = None
    exceed_ceiling_amount_category: Decimal | None = None
    remunerated_amount: Decimal | None = None

    @property
    def quantity(self) -> Decimal:
        return self.qty_approved if self.qty_approved is not None else self.qty_provided

    @property
    def pl_price(self) -> Decimal:
        return self.price_override if self.price_override is not None else self.register_price

    def result(self) -> dict[str, Any]:
        rejected = self.reason != 0
        return {
            "line_pk": self.pk, "status": LINE_REJECTED if rejected else LINE_PASSED,
            "rejection_reason": self.reason, "qty_approved": ZERO if rejected else self.qty_approved,
            "product_pk": self.product_pk, "policy_pk": self.policy_pk, "price_origin": self.price_origin,
            "limitation": self.limitation, "limitation_value": self.limitation_value,
            "price_adjusted": self.price_adjusted, "price_valuated": self.price_valuated,
            "deductable_amount": self.deductable_amount, "exceed_ceiling_amount": self.exceed_ceiling_amount,
            "exceed_ceiling_amount_category": self.exceed_ceiling_amount_category,
            "remunerated_amount": self.remunerated_amount,
        }


@dataclass(slots=True)
class _Account:
    """One policy's deductible, ceilings and what this claim has used of them so far."""

    policy_pk: int
    hospital: bool
    deductible: Decimal  # 0: none
    prev_deducted: Decimal
    ceiling: Decimal  # 0: none
    prev_remunerated: Decimal
    category_ceiling: Decimal  # 0: none
    deducted: Decimal = ZERO
    remunerated: Decimal = ZERO
    category_remunerated: Decimal = ZERO


# --- processing ---------------------------------------------------------------------------------------------


class ClaimHead(NamedTuple):
    """The claim as processing needs it: a stored claim's row (`_CLAIM_HEAD`), or a submission's values."""

    status: int
    hf_pk: int
    insuree_pk: int
    date_from: date
    date_to: date | None
    visit_type: str | None
    category: str | None

    @property
    def target(self) -> date:
        return self.date_to or self.date_from


@dataclass(frozen=True, slots=True)
class ClaimTerms:
    """What processing reads that no other claim changes: the facility's price lists and level, the insuree's
    birth date and valid policies at the target date with their product terms (`policies`: `_POLICY_TERMS` rows,
    at least one), and the lines' registers with their price-list lines and the products' coverage lines (`lines`).
    A submission reads them before its claim is inserted (`terms_plan`, from `read_ahead`: on SQLite outside the
    writer lock); `process` reads a stored claim's itself."""

    head: ClaimHead
    policies: list[Any]
    lines: list[Any]


def _first_policies(policies: Sequence[Any]) -> dict[int, Any]:
    """Product pk → the member's first valid policy of it (`_POLICY_TERMS` rows, in the order of the member's
    windows)."""
    first_policy: dict[int, Any] = {}
    for p in policies:
        if p.policy_pk is not None:
            first_policy.setdefault(p.product_pk, p)
    return first_policy


def terms_plan(head: ClaimHead, lines: Sequence[Any] | None, claim_pk: int | None = None) -> Plan[ClaimTerms]:
    """The claim's terms in two steps: its policies and price lists, then its lines' registers and coverage — of
    `lines` (anything with kind and target_pk: a submission's, not stored yet), or else of the stored claim's passed
    lines (`claim_pk`)."""
    policies = (yield [(_POLICY_TERMS, {"hf": head.hf_pk, "insuree": head.insuree_pk, "target": head.target})])[0]
    if not policies:
        return ClaimTerms(head, [], [])
    c = policies[0]
    products = list(_first_policies(policies))
    params: dict[str, Any] = {"item_list": c.item_list_pk, "service_list": c.service_list_pk}
    params.update((f"p{i}", pk) for i, pk in enumerate(products))
    if lines is None:
        read = (_lines_query(len(products), True), {**params, "claim": claim_pk})
    else:
        read = (_lines_query(len(products), False), {**params, **target_pks(lines)})
    return ClaimTerms(head, policies, (yield [read])[0])


@dataclass(frozen=True, slots=True)
class Processed:
    """What processing decided of a claim besides its lines: its new status, the claim's columns it sets, and what
    the claim consumes of each used policy (`claim_ded_rem` rows without the claim's pk)."""

    status: int
    columns: dict[str, Any]
    consumed: tuple[dict[str, Any], ...]


def process(conn: Connection, claim_pk: int, *, today: date, now: int,
            new_lines: Sequence[NewLine] | None = None, terms: ClaimTerms | None = None) -> int:
    """Process and valuate a checked claim (§3.4.2–3.4.3, see the module docstring); returns its new status (16
    Valuated, 8 Processed, or 1 Rejected when no line keeps a product). ValueError when the claim does not exist
    or is not checked (4). `new_lines`: the lines of a claim this transaction submits, not inserted yet (the
    passed ones, `reason` 0, are processed: what is decided goes to their `decided`, and the caller inserts them),
    with `terms`, read ahead for them all, whose head has the status and category the checks gave the claim;
    else the claim, its terms and its stored passed lines are read, and the lines updated."""
    processed, lines, insuree_pk = _decide(conn, claim_pk, today, now, new_lines, terms)
    claim_update = _UPDATE_CLAIM if processed.status != CLAIM_REJECTED else _REJECT_CLAIM
    _write(conn, [
        *_settle_lines(lines, new_lines),
        # rows a claim had before processing (a review's preview) are replaced, not added to
        *_drop_ded_rem(insuree_pk, claim_pk, new_lines),
        (_INSERT_DED_REM, [{**row, "claim_pk": claim_pk} for row in processed.consumed]),
        (claim_update, [{**processed.columns, "claim_pk": claim_pk}]),
    ])
    return processed.status


def process_submission(conn: Connection, *, today: date, now: int, new_lines: Sequence[NewLine],
                       terms: ClaimTerms) -> Processed:
    """`process` for a claim the checks passed that is not stored yet, because nothing can hold it before
    processing (no selection for review or feedback, no adjudicator): what is decided, written by nothing here. The
    new lines get their `decided`; the caller inserts the claim with `columns`, its lines, then
    `record_consumption` — one INSERT each, no UPDATE of a row the transaction inserted."""
    processed, lines, _ = _decide(conn, None, today, now, new_lines, terms)
    _settle_lines(lines, new_lines)  # for new lines: their `decided`, nothing to write
    return processed


def record_consumption(conn: Connection, claim_pk: int, processed: Processed) -> None:
    """The consumption rows of a claim `process_submission` decided, once it is inserted."""
    if processed.consumed:
        _write(conn, [(_INSERT_DED_REM, [{**row, "claim_pk": claim_pk} for row in processed.consumed])])


def _decide(conn: Connection, claim_pk: int | None, today: date, now: int, new_lines: Sequence[NewLine] | None,
            terms: ClaimTerms | None) -> tuple[Processed, list[_Line], int]:
    """Processing's reads and decisions (`claim_pk` None: a claim not stored yet, with `new_lines` and `terms`):
    (what is decided, the lines, the insuree's pk)."""
    if terms is None:
        assert claim_pk is not None
        found = _CLAIM_HEAD.rows(conn, {"claim": claim_pk})
        if not found:
            raise ValueError(f"claim {claim_pk} does not exist")
        head = ClaimHead(*found[0])
        if head.status == CLAIM_CHECKED:
            terms = run_plan(conn, terms_plan(head, new_lines, claim_pk))
    else:
        head = terms.head
    if head.status != CLAIM_CHECKED:
        raise ValueError(f"claim {claim_pk} is in status {head.status}, only a checked claim (4) can be processed")
    assert terms is not None
    if not terms.policies:
        raise ValueError(f"claim {claim_pk}: its facility or insuree does not exist")
    c = terms.policies[0]
    target = head.target
    multi_day = head.date_to is not None and head.date_to != head.date_from
    adult = age_on(c.dob, target) >= ADULT_AGE

    first_policy = _first_policies(terms.policies)
    products = list(first_policy)
    if new_lines is None:
        lines = _read_lines(terms.lines)
    else:
        lines = _submitted_lines([n for n in new_lines if n.reason == 0], terms.lines)

    order = {pk: i for i, pk in enumerate(products)}
    suffix = VISIT_SUFFIX.get(head.visit_type or "O", "")
    for line in lines:
        _assign(line, first_policy, order, suffix, adult)
    passed = [line for line in lines if line.reason == 0]

    if not passed:
        return (Processed(CLAIM_REJECTED, {"status": CLAIM_REJECTED, "rejection_reason": ALL_REJECTED,
                                           "approved": ZERO}, ()), lines, head.insuree_pk)

    category = head.category or "V"
    # A claim not stored yet has no consumption rows to leave out (pks start at 1).
    accounts = _accounts(conn, claim_pk or 0, head.insuree_pk, c.hf_level, category, [
        first_policy[pk] for pk in dict.fromkeys(line.product_pk for line in passed if line.product_pk is not None)],
        multi_day)
    for line in passed:
        _valuate(line, accounts[line.policy_pk], category, adult)

    relative = any(line.price_origin == "R" for line in passed)
    status = CLAIM_PROCESSED if relative else CLAIM_VALUATED
    approved = sum((_money((line.price_approved if line.price_approved is not None else line.price_adjusted
                            or ZERO) * line.quantity) for line in passed), ZERO)
    valuated = remunerated = None
    if status == CLAIM_VALUATED:
        valuated = sum((line.price_valuated or ZERO for line in passed), ZERO)
        remunerated = sum((line.remunerated_amount or ZERO for line in passed), ZERO)
    columns = {"status": status, "rejection_reason": 0, "date_processed": today, "process_stamp": now,
               "approved": approved, "valuated": valuated, "remunerated": remunerated}
    consumed = tuple(_ded_rem(head.insuree_pk, a, category) for a in accounts.values())
    return Processed(status, columns, consumed), lines, head.insuree_pk


def _submitted_lines(new_lines: Sequence[NewLine], rows: list[Any]) -> list[_Line]:
    """A `_Line` per line of a submission (`pk`: its `order`, the rank a stored line's pk has), with its register's
    price-list line and candidate coverage lines (`rows`, by register)."""
    by_target: dict[tuple[str, int], list[Any]] = {}
    for r in rows:
        by_target.setdefault((r.kind, r.target_pk), []).append(r)
    lines = []
    for n in new_lines:
        found = by_target.get((n.kind, n.target_pk))
        if not found:  # the register is gone: rejected by step 1
            lines.append(_Line(n.kind, n.order, n.qty, None, n.price, None, ZERO, True, False, None))
            continue
        r = found[0]
        line = _Line(n.kind, n.order, n.qty, None, n.price, None, r.price, bool(r.gone), r.listed is not None,
                     r.price_override)
        line.candidates = [r for r in found if r.product_pk is not None]
        lines.append(line)
    return sorted(lines, key=lambda line: (line.kind != "item", line.pk))


def _read_lines(rows: list[Any]) -> list[_Line]:
    """One `_Line` per claim line (items first, then services, each by pk) with its candidate coverage lines."""
    by_key: dict[tuple[str, int], _Line] = {}
    for r in rows:
        line = by_key.get((r.kind, r.pk))
        if line is None:
            line = by_key[(r.kind, r.pk)] = _Line(
                r.kind, r.pk, r.qty_provided, r.qty_approved, r.price_asked, r.price_approved, r.price,
                bool(r.gone), r.listed is not None, r.price_override)
        if r.product_pk is not None:
            line.candidates.append(r)
    return sorted(by_key.values(), key=lambda line: (line.kind != "item", line.pk))


def _assign(line: _Line, first_policy: dict[int, Any], order: dict[int, int], suffix: str, adult: bool) -> None:
    """Step 1 for one line: the coverage line leaving the insuree least to pay, or a rejection reason."""
    if line.gone:
        line.reason = INVALID_ITEM_OR_SERVICE
        return
    if not line.listed:
        line.reason = NOT_IN_PRICE_LIST
        return
    limit_column = f"limit_{'adult' if adult else 'child'}{suffix}"
    best_c = best_f = None
    for cand in sorted(line.candidates, key=lambda cand: order[cand.product_pk]):
        kind, limit = cand._mapping[f"limitation_type{suffix}"], cand._mapping[limit_column]
        if kind == "C" and (best_c is None or limit > best_c[1]):
            best_c = (cand, limit)
        elif kind == "F" and (best_f is None or _fixed_rank(limit) > _fixed_rank(best_f[1])):
            best_f = (cand, limit)
    if best_c is None and best_f is None:
        line.reason = NO_PRODUCT_FOUND
        return
    chosen = best_c or best_f
    if best_c is not None and best_f is not None:
        price = max(line.price_asked, line.price_approved or ZERO)
        fixed, pct = best_f[1], best_c[1]
        if fixed == 0 or fixed > price:
            chosen = best_f
        else:
            own_fixed = price - fixed
            own_co = (HUNDRED - pct) / HUNDRED * price
            chosen = best_f if own_co > own_fixed else best_c
    assert chosen is not None
    cand, limit = chosen
    line.product_pk = cand.product_pk
    line.policy_pk = first_policy[cand.product_pk].policy_pk
    line.price_origin = cand.price_origin
    line.limitation = cand._mapping[f"limitation_type{suffix}"]
    line.limitation_value = limit
    line.exclusion = cand.ceiling_exclusion_adult if adult else cand.ceiling_exclusion_child


def _fixed_rank(limit: Decimal) -> Decimal:
    return Decimal("Infinity") if limit == 0 else limit  # a fixed limit of 0 is no limit (legacy ordering)


def _accounts(conn: Connection, claim_pk: int, insuree_pk: int, hf_level: str | None, category: str,
              used: list[Any], multi_day: bool) -> dict[int, _Account]:
    """Each used policy's deductible and ceilings, and what earlier claims consumed of them."""
    needing = [p for p in used if any(p._mapping[f"p_{kind}{infix}_{scope}"] for kind in ("ded", "max")
                                      for infix in CARE.values() for scope in SCOPES if scope != "treatment")]
    consumed: dict[tuple[int, bool], Any] = {}
    if needing:
        params: dict[str, Any] = {f"p{i}": p.policy_pk for i, p in enumerate(sorted(needing,
                                                                                    key=lambda p: p.policy_pk))}
        reads = [(_consumed_query(len(needing)), {**params, "claim": claim_pk, "insuree": insuree_pk})]
        if conn.dialect.name == "postgresql":  # the lock first, in the same round trip (a pipeline keeps the order)
            reads.insert(0, (_lock_query(len(needing)), params))
        consumed = {(r.policy_pk, bool(r.mine)): r for r in rows_together(conn, reads)[-1]}

    accounts: dict[int, _Account] = {}
    for p in used:
        terms = p._mapping
        interpretation = terms["p_ceiling_interpretation"] or "I"
        hospital = (interpretation == "I" and multi_day) or (interpretation == "H" and hf_level == "H")
        mine, others = consumed.get((p.policy_pk, True)), consumed.get((p.policy_pk, False))

        def used_of(scope: str, column: str, mine: Any = mine, others: Any = others) -> Decimal:
            if scope == "treatment":
                return ZERO
            total = (mine._mapping[column] or ZERO) if mine is not None else ZERO
            if scope == "policy" and others is not None:
                total += others._mapping[column] or ZERO
            return total

        deductible, prev_deducted = _first(p, "ded", hospital, used_of)
        ceiling, prev_remunerated = _first(p, "max", hospital, used_of)
        category_ceiling = ZERO
        if category in CATEGORY_REMS:
            category_ceiling = terms[f"p_max_amount_{CATEGORIES[category][1]}"] or ZERO
        accounts[p.policy_pk] = _Account(p.policy_pk, hospital, deductible, prev_deducted, ceiling,
                                         prev_remunerated, category_ceiling)
    return accounts


def _first(p: Any, kind: str, hospital: bool, used_of: Any) -> tuple[Decimal, Decimal]:
    """(amount, previous usage) of the first non-zero deductible (`ded`) or ceiling (`max`): general, else the IP
    or OP family; (0, 0) when the product has none."""
    terms = p._mapping
    for care in ("general", "ip" if hospital else "op"):
        infix = CARE[care]
        for scope in SCOPES:
            amount = terms[f"p_{kind}{infix}_{scope}"]
            if not amount:
                continue
            if kind == "max" and scope == "policy":
                amount = _policy_ceiling(p, amount, infix)
            return amount, used_of(scope, ("ded_" if kind == "ded" else "rem_") + ("g" if care == "general" else care))
    return ZERO, ZERO


def _policy_ceiling(p: Any, amount: Decimal, infix: str) -> Decimal:
    terms = p._mapping
    threshold = terms["p_threshold"] or 0
    if p.members > threshold:
        amount += (p.members - threshold) * (terms[f"p_max_policy_extra_member{infix}"] or ZERO)
        cap = terms[f"p_max_ceiling_policy{infix}"]
        if cap and amount > cap:
            amount = cap
    return amount


def _valuate(line: _Line, account: _Account, category: str, adult: bool) -> None:
    """Step 2 for one passed line (the eight steps of the module docstring)."""
    qty = line.quantity
    if line.price_origin == "O":
        unit = line.price_approved if line.price_approved is not None else line.price_asked
    else:
        unit = line.price_approved if line.price_approved is not None else line.pl_price
    line.price_adjusted = unit
    value = _money(qty * unit)
    if line.limitation == "F" and line.limitation_value:
        value = min(value, _money(qty * line.limitation_value))
    line.deductable_amount = ZERO
    line.exceed_ceiling_amount = ZERO
    line.exceed_ceiling_amount_category = ZERO

    left = account.deductible - account.prev_deducted - account.deducted
    if left > 0:
        if left >= value:
            line.deductable_amount = value
            account.deducted += value
            _valuated(line, ZERO)
            return
        line.deductable_amount = left
        value -= left
        account.deducted += left

    if line.limitation == "C":
        value = _money((line.limitation_value or ZERO) / HUNDRED * value)

    if category != "V" and account.category_ceiling > 0:
        room = account.category_ceiling - account.category_remunerated
        if value > room:
            line.exceed_ceiling_amount_category = value - max(room, ZERO)
            value = max(room, ZERO)
        account.category_remunerated += value

    hospital = account.hospital
    if line.exclusion == "B" or line.exclusion == ("H" if hospital else "N"):
        _valuated(line, value)  # excluded from the ceilings: paid in full, not counted
        return
    if account.ceiling > 0:
        room = account.ceiling - account.prev_remunerated - account.remunerated
        if room <= 0:
            line.exceed_ceiling_amount = value
            value = ZERO
        elif value > room:
            line.exceed_ceiling_amount = value - room
            value = room
    account.remunerated += value
    _valuated(line, value)


def _valuated(line: _Line, value: Decimal) -> None:
    line.price_valuated = value
    line.remunerated_amount = None if line.price_origin == "R" else value


def _ded_rem(insuree_pk: int, a: _Account, category: str) -> dict[str, Any]:
    row = dict.fromkeys(_DED_REM_COLUMNS, ZERO)
    del row["claim_pk"]
    care = "ip" if a.hospital else "op"
    row.update(policy_pk=a.policy_pk, insuree_pk=insuree_pk, ded_g=a.deducted,
               rem_g=a.remunerated, **{f"ded_{care}": a.deducted, f"rem_{care}": a.remunerated})
    if category in CATEGORY_REMS:
        row[CATEGORY_REMS[category]] = a.category_remunerated
    return row


def _settle_lines(lines: list[_Line], new_lines: Sequence[NewLine] | None
                  ) -> list[tuple[_Dml, list[dict[str, Any]]]]:
    """What processing decided of the lines: the UPDATEs of a stored claim's lines; a submission's lines get it in
    their `decided` (they are inserted with it, so there is nothing to write here)."""
    if new_lines is None:
        return [(_LINE_UPDATES[kind], [line.result() for line in lines if line.kind == kind])
                for kind in ("item", "service")]
    decided = {(line.kind, line.pk): line.result() for line in lines}
    for n in new_lines:
        result = decided.get((n.kind, n.order))
        if result is not None:
            del result["line_pk"]
            n.decided = result
    return []


def _drop_ded_rem(insuree_pk: int, claim_pk: int, new_lines: Sequence[NewLine] | None
                  ) -> list[tuple[_Dml, list[dict[str, Any]]]]:
    """The claim's consumption rows of an earlier processing (a review's preview) go; a new claim has none."""
    return [] if new_lines is not None else [(_DROP_DED_REM, [{"insuree": insuree_pk, "claim": claim_pk}])]
