"""Eligibility: is an insuree covered today, for what, and how much is left (domain §3.2).

`evaluate()` answers an enquiry for one insuree, optionally about medical items and services given by code, as of
`today`. It returns plain dataclasses (the FHIR mapping lives in `fhir/profiles/eligibility.py`).

Which coverage counts: the insuree's current `insuree_policy` rows that have an effective date, whose policy is
Active (status 2) and not expired (policy and member expiry dates ≥ today; expired is never stored, see
`store/tables.py`). Idle, ready and suspended policies do not cover. Each such row is one `PolicyEligibility`, in
the order of the member's effective dates.

Per requested service or item and per policy (§3.2.1, `uspServiceItemEnquiry`):
* covered = the policy's product has a coverage line (product_service / product_item) for it;
* MinDate = the member's effective date + the line's waiting period for adults or children (exact age today,
  adult = 18+, domain §6.1); months are added calendar-wise, clamped to the month's last day (T-SQL DATEADD);
* Left = the line's LimitNo for adults/children (0 or none = unlimited, as legacy NULLIF) − Σ coalesce(qty
  approved, qty provided) of that service/item on passed lines (status 1) of the insuree's claims with status > 2
  (checked, processed, valuated), clamped at 0;
* OK = covered, MinDate reached, Left ≠ 0, and for service categories S, C and D: surgeries / consultations /
  deliveries left ≠ 0 and the product's MaxAmountSurgery / …Consultation / …Delivery (when set) > 0.
The summary over the policies (`LineSummary`) keeps the legacy semantics: MinDate = the earliest MinDate already
reached, else the earliest overall; Left = unlimited if a reached policy has no limit, else the largest Left among
reached policies; OK = OK under at least one policy.

Product counters per claim category H, V, C, S, D, A: MaxNo<Category> − the insuree's claims with status > 2 of
that category having a passed service line, clamped at 0; none when the product sets no maximum (unlimited).
Amounts per category are the product's MaxAmount<Category> unchanged: they cap each claim of the category
(§3.4.3), usage does not reduce them (legacy, "amount must remain constant").

Deductibles and ceilings (§3.2.3, §3.4.3) for the general, in-patient (IP) and out-patient (OP) families, each
taken from the first of the treatment, insuree and policy columns that is set and non-zero (0 means "not this
kind", as the product GUI writes it):
* treatment: the amount as is (it applies afresh to each claim);
* insuree: the amount − what this insuree's processed claims on the policy consumed (claim_ded_rem: Σ DedG /
  DedIP / DedOP for deductibles, Σ RemG / RemIP / RemOP for ceilings);
* policy: the amount − what all members' claims on the policy consumed; the policy ceiling is first raised by
  (members − Threshold) × the extra-member ceiling and capped by MaxCeilingPolicy.

Deliberate differences from the legacy procedure (documented divergences):
* usage (quantities and category counts) is counted within the member's coverage window [effective date, expiry
  date] of each policy, by the claim's last day, and for lines assigned to that policy's product (or not yet
  assigned): the limits are "per insurance period" (domain §2.14) while the legacy sums every claim ever made;
* counters and the category checks are per policy instead of the legacy `TOP 1` product;
* items and services are never swapped (the reference converter swaps them, domain §3.2.2).

Cost: `evaluate_reference()` (an enquiry about at most one item and one service, the IG's maximum) answers with one
indexed statement — the insuree, its policies with their product terms and the requested codes' coverage lines —
plus, only when a limit or a category maximum applies, the claim usage, and only when the product sets
deductibles or ceilings, what earlier claims consumed; `evaluate()` (any number of codes) adds one statement for the
codes. None runs per policy. They run through `store.fast.DriverQuery` (compiled once, executed on the DB-API
connection): SQLAlchemy's per-execution overhead (~60 µs a statement) would cap the enquiries per second, and on
PostgreSQL each statement also costs the driver ~50 µs and the server as much again.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Connection, String, and_, bindparam, false, func, literal, null, select, union_all

from hifhir.domain.policy import add_months, age_on
from hifhir.store.fast import DriverQuery, rows_together
from hifhir.store.tables import (
    CLAIM_ENTERED,
    LINE_PASSED,
    POLICY_ACTIVE,
    claim,
    claim_ded_rem,
    claim_item,
    claim_service,
    coverage,
    insuree,
    insuree_policy,
    is_current,
    medical_item,
    medical_service,
    policy,
    product,
    product_item,
    product_service,
)

ProvisionKind = Literal["item", "service"]
ADULT_AGE = 18

# Claim categories with a product maximum (domain §2.14): code → the product's MaxNo / MaxAmount column suffix.
CATEGORIES: dict[str, tuple[str, str | None]] = {
    "H": ("hospitalization", "hospitalization"),
    "V": ("visits", None),  # visits have a maximum number but no maximum amount
    "C": ("consultation", "consultation"),
    "S": ("surgery", "surgery"),
    "D": ("delivery", "delivery"),
    "A": ("antenatal", "antenatal"),
}
# Service categories whose coverage also depends on the product's counter and amount for that category (§3.2.1).
CHECKED_SERVICE_CATEGORIES = ("S", "C", "D")
CARE = {"general": "", "ip": "_ip", "op": "_op"}  # deductible/ceiling families → column infix
SCOPES = ("treatment", "insuree", "policy")


# --- results -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Counter:
    """A product's maximum number of claims of one category per insuree and insurance period."""

    category: str
    maximum: int | None  # None: the product sets no maximum (unlimited)
    used: int

    @property
    def left(self) -> int | None:
        return None if self.maximum is None else max(0, self.maximum - self.used)


@dataclass(frozen=True, slots=True)
class Balance:
    """A deductible or a ceiling of one family (general, ip, op) and what is left of it."""

    scope: str  # treatment | insuree | policy: which product column applies
    amount: Decimal  # the product's amount (a policy ceiling raised for extra members, capped)
    consumed: Decimal  # by earlier processed claims (0 for a per-treatment amount)

    @property
    def left(self) -> Decimal:
        return max(Decimal(0), self.amount - self.consumed)


@dataclass(frozen=True, slots=True)
class Provision:
    """A requested item or service; `pk` None when no current item/service has the code."""

    kind: ProvisionKind
    code: str
    pk: int | None = None
    category: str | None = None  # a service's category (S, C, D, A, H, O, V) or none


@dataclass(frozen=True, slots=True)
class LineCoverage:
    """One requested item or service under one policy."""

    provision: Provision
    covered: bool  # the product has a coverage line for it
    min_date: date | None = None  # earliest date of coverage (after the waiting period)
    limit: int | None = None  # max quantity per insurance period; None = unlimited
    used: Decimal = Decimal(0)
    ok: bool = False
    reason: str | None = None  # why it is not OK, in words

    @property
    def left(self) -> int | None:
        if self.limit is None:
            return None
        return max(0, int(Decimal(self.limit) - self.used))


@dataclass(frozen=True, slots=True)
class PolicyEligibility:
    """What one active policy gives the insuree today."""

    policy_pk: int
    policy_id: str
    coverage_id: str  # the Coverage resource of the policy
    product_pk: int
    product_code: str
    product_name: str
    effective_date: date  # the member's own coverage window (insuree_policy)
    expiry_date: date
    counters: dict[str, Counter]  # by claim category, H V C S D A
    amounts: dict[str, Decimal | None]  # MaxAmount by category H C S D A; None = no maximum
    deductibles: dict[str, Balance]  # by family general | ip | op; absent when the product has none
    ceilings: dict[str, Balance]
    lines: tuple[LineCoverage, ...]


@dataclass(frozen=True, slots=True)
class LineSummary:
    """A requested item or service over all active policies (legacy semantics, see the module docstring)."""

    provision: Provision
    covered: bool
    min_date: date | None
    left: int | None
    ok: bool

    @property
    def known(self) -> bool:
        return self.provision.pk is not None


@dataclass(frozen=True, slots=True)
class Eligibility:
    insuree_pk: int
    today: date
    policies: tuple[PolicyEligibility, ...]
    lines: tuple[LineSummary, ...]  # the requested items, then services, in request order

    @property
    def insured(self) -> bool:
        return bool(self.policies)


# --- queries (built once) ------------------------------------------------------------------------------------

_DED_MAX_COLUMNS = tuple(f"{kind}{CARE[care]}_{scope}" for kind in ("ded", "max") for care in CARE
                         for scope in SCOPES)
_EXTRA_COLUMNS = ("max_policy_extra_member", "max_policy_extra_member_ip", "max_policy_extra_member_op",
                  "max_ceiling_policy", "max_ceiling_policy_ip", "max_ceiling_policy_op")
_PRODUCT_COLUMNS = (
    "code", "name", "threshold",
    *(f"max_no_{name}" for name, _ in CATEGORIES.values()),
    *(f"max_amount_{name}" for _, name in CATEGORIES.values() if name),
    *_DED_MAX_COLUMNS, *_EXTRA_COLUMNS,
)

# The row keys the evaluation reads, named once (an enquiry reads ~60 of them).
_DED_MAX_KEYS = tuple(f"p_{c}" for c in _DED_MAX_COLUMNS)
_MAX_NO_KEYS = tuple((cat, f"p_max_no_{name}") for cat, (name, _) in CATEGORIES.items())
_MAX_AMOUNT_KEYS = tuple((cat, f"p_max_amount_{name}") for cat, (_, name) in CATEGORIES.items() if name)
# kind (ded | max) → per deductible/ceiling family: (family, infix, consumed column, ((scope, row key), …))
_BALANCE_KEYS = {kind: tuple((care, infix, ("ded_" if kind == "ded" else "rem_") + ("g" if care == "general" else care),
                              tuple((scope, f"p_{kind}{infix}_{scope}") for scope in SCOPES))
                             for care, infix in CARE.items())
                 for kind in ("ded", "max")}

_members = insuree_policy.alias("members")
_MEMBER_COUNT = (
    select(func.count())
    .where(_members.c.policy_pk == policy.c.pk, _members.c.deleted == false(),
           _members.c.effective_date <= bindparam("today"), _members.c.expiry_date >= bindparam("today"))
    .scalar_subquery()
)
_POLICIES = DriverQuery(
    select(
        insuree_policy.c.policy_pk, insuree_policy.c.effective_date, insuree_policy.c.expiry_date,
        policy.c.id.label("policy_id"), policy.c.product_pk, coverage.c.id.label("coverage_id"),
        insuree.c.dob, _MEMBER_COUNT.label("members"),
        *(product.c[name].label(f"p_{name}") for name in _PRODUCT_COLUMNS),
    )
    .select_from(
        insuree_policy.join(policy, policy.c.pk == insuree_policy.c.policy_pk)
        .join(product, product.c.pk == policy.c.product_pk)
        .join(insuree, insuree.c.pk == insuree_policy.c.insuree_pk)
        .outerjoin(coverage, coverage.c.policy_pk == policy.c.pk)
    )
    .where(
        insuree_policy.c.insuree_pk == bindparam("insuree"),
        insuree_policy.c.deleted == false(),
        insuree_policy.c.effective_date.is_not(None),
        insuree_policy.c.expiry_date >= bindparam("today"),
        policy.c.deleted == false(),
        policy.c.status == POLICY_ACTIVE,
        policy.c.expiry_date >= bindparam("today"),
    )
    .order_by(insuree_policy.c.effective_date, policy.c.pk)
)


_LINE_COLUMNS = ("waiting_period_adult", "waiting_period_child", "limit_no_adult", "limit_no_child")

# prefix (i: the item, s: the service) → the enquiry row's keys of its pk, category, coverage line's product and
# coverage line (_LINE_COLUMNS)
_REQUESTED_KEYS = {prefix: (f"{prefix}_pk", f"{prefix}_category", f"{prefix}_product_pk",
                            tuple(f"{prefix}_{c}" for c in _LINE_COLUMNS)) for prefix in ("i", "s")}


@functools.lru_cache(maxsize=64)
def _lines_query(n_items: int, n_services: int, n_products: int) -> DriverQuery:
    """The requested codes (binds i0…, s0…) with the coverage lines the given products (p0…) have for them: one
    row per code without a line, one per (code, product) with one. One statement per shape (an enquiry has at
    most one item and one service), since driver-level statements take no expanding IN."""
    products = [bindparam(f"p{i}") for i in range(n_products)]

    def branch(kind: str, n: int, target: Any, lines: Any, fk: str, category: Any) -> Any:
        head = (literal(kind, String).label("kind"), target.c.code, target.c.pk, category.label("category"))
        if products:
            query = (select(*head, lines.c.product_pk, *(lines.c[c] for c in _LINE_COLUMNS))
                     .select_from(target.outerjoin(lines, and_(lines.c[fk] == target.c.pk,
                                                               lines.c.product_pk.in_(products)))))
        else:  # no active policy: the codes alone (a join on a false condition costs SQLite a scan)
            query = select(*head, *(null().label(c) for c in ("product_pk", *_LINE_COLUMNS)))
        return query.where(target.c.code.in_([bindparam(f"{kind[0]}{i}") for i in range(n)]), is_current(target))

    branches = []
    if n_items:
        branches.append(branch("item", n_items, medical_item, product_item, "item_pk", null()))
    if n_services:
        branches.append(branch("service", n_services, medical_service, product_service, "service_pk",
                               medical_service.c.category))
    return DriverQuery(branches[0] if len(branches) == 1 else union_all(*branches))


# Two index lookups (by id, by insurance number) rather than an OR, which SQLite answers with a scan; the id wins.
_INSUREE_BY_REF = DriverQuery(union_all(
    select(insuree.c.pk, insuree.c.id).where(insuree.c.id == bindparam("ref"), is_current(insuree)),
    select(insuree.c.pk, insuree.c.id).where(insuree.c.chf_id == bindparam("ref"), is_current(insuree)),
))


@functools.lru_cache(maxsize=4)
def _enquiry_query(with_item: bool, with_service: bool) -> DriverQuery:
    """One row per policy of the insuree `ref` (rows with empty policy columns for what does not cover), with
    the product terms, the requested item's (`i0`) and service's (`s0`) pk and the product's coverage line for
    each (`i_*`, `s_*` columns, empty when the product does not cover it)."""
    # Both lookups are unique (the id; the insurance number among current insurees): no LIMIT, no sort, two plan
    # nodes fewer for PostgreSQL to set up at each execution than a ranked union.
    target = func.coalesce(
        select(insuree.c.pk).where(insuree.c.id == bindparam("ref"), is_current(insuree)).scalar_subquery(),
        select(insuree.c.pk).where(insuree.c.chf_id == bindparam("ref"), is_current(insuree)).scalar_subquery(),
    )
    ins = insuree.alias("ins")
    # A chain of left joins, not a parenthesised inner join (which SQLite materialises for every insuree): a
    # member row whose policy does not cover gets empty policy columns, and the caller skips it.
    source = (
        ins.outerjoin(insuree_policy, and_(
            insuree_policy.c.insuree_pk == ins.c.pk, insuree_policy.c.deleted == false(),
            insuree_policy.c.effective_date.is_not(None), insuree_policy.c.expiry_date >= bindparam("today")))
        .outerjoin(policy, and_(policy.c.pk == insuree_policy.c.policy_pk, policy.c.deleted == false(),
                                policy.c.status == POLICY_ACTIVE, policy.c.expiry_date >= bindparam("today")))
        .outerjoin(coverage, coverage.c.policy_pk == policy.c.pk)
    )
    columns: list[Any] = [
        ins.c.pk.label("insuree_pk"), ins.c.id.label("insuree_id"), ins.c.dob,
        policy.c.pk.label("policy_pk"), insuree_policy.c.effective_date, insuree_policy.c.expiry_date,
        policy.c.id.label("policy_id"), policy.c.product_pk, coverage.c.id.label("coverage_id"),
        _MEMBER_COUNT.label("members"),
    ]
    for wanted, prefix, target_table, lines, fk, code_param in (
            (with_item, "i", medical_item, product_item, "item_pk", "i0"),
            (with_service, "s", medical_service, product_service, "service_pk", "s0")):
        if not wanted:
            continue
        requested = (select(target_table.c.pk)
                     .where(target_table.c.code == bindparam(code_param), is_current(target_table))
                     .limit(1).scalar_subquery())
        line = lines.alias(f"{prefix}_line")
        source = source.outerjoin(line, and_(line.c.product_pk == policy.c.product_pk, line.c[fk] == requested))
        columns += [requested.label(f"{prefix}_pk"), line.c.product_pk.label(f"{prefix}_product_pk"),
                    *(line.c[c].label(f"{prefix}_{c}") for c in _LINE_COLUMNS)]
        if prefix == "s":
            columns.append(select(medical_service.c.category)
                           .where(medical_service.c.code == bindparam("s0"), is_current(medical_service))
                           .limit(1).scalar_subquery().label("s_category"))
    # The product's terms (38 columns) are joined last, to the rows of the rest: joined among the others, PostgreSQL
    # carries them through every join above and sets up their descriptors at each execution (a fifth of the
    # statement's instructions).
    found = select(*columns).select_from(source).where(ins.c.pk == target).subquery("found")
    return DriverQuery(  # the caller sorts the policies
        select(found, *(product.c[name].label(f"p_{name}") for name in _PRODUCT_COLUMNS))
        .select_from(found.outerjoin(product, product.c.pk == found.c.product_pk)))


def _usage_statement() -> Any:
    """Passed lines of the insuree's checked/processed/valuated claims since a date. Every line, not only the
    requested items' and services': the category counters need all service lines, and filtering on an item
    would let a planner drive the query from that item's lines across all insurees."""
    day = func.coalesce(claim.c.date_to, claim.c.date_from)

    def branch(kind: str, lines: Any, fk: str) -> Any:
        return (
            select(literal(kind, String).label("kind"), claim.c.pk.label("claim_pk"), claim.c.category,
                   day.label("day"), lines.c[fk].label("provision_pk"), lines.c.product_pk,
                   func.coalesce(lines.c.qty_approved, lines.c.qty_provided).label("qty"))
            .select_from(claim.join(lines, lines.c.claim_pk == claim.c.pk))
            .where(claim.c.insuree_pk == bindparam("insuree"), claim.c.status > CLAIM_ENTERED, is_current(claim),
                   lines.c.status == LINE_PASSED, day >= bindparam("since"))
        )

    return union_all(
        branch("service", claim_service, "service_pk"),
        branch("item", claim_item, "item_pk"),
    )


_USAGE = DriverQuery(_usage_statement())
_CONSUMED_COLUMNS = ("ded_g", "ded_ip", "ded_op", "rem_g", "rem_ip", "rem_op")
_NOTHING_CONSUMED = dict.fromkeys(_CONSUMED_COLUMNS, Decimal(0))  # read only


@functools.lru_cache(maxsize=16)
def _consumed_query(n_policies: int) -> DriverQuery:
    """What the claims on the given policies (binds p0…) consumed, by policy and insuree."""
    return DriverQuery(
        select(claim_ded_rem.c.policy_pk, claim_ded_rem.c.insuree_pk,
               *(func.sum(claim_ded_rem.c[c]).label(c) for c in _CONSUMED_COLUMNS))
        .where(claim_ded_rem.c.policy_pk.in_([bindparam(f"p{i}") for i in range(n_policies)]))
        .group_by(claim_ded_rem.c.policy_pk, claim_ded_rem.c.insuree_pk)
    )


# --- evaluation ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Line:
    """A product's coverage line for a requested provision."""

    waiting_adult: int | None
    waiting_child: int | None
    limit_adult: int | None
    limit_child: int | None


@dataclass(slots=True)
class _Use:
    kind: ProvisionKind
    claim_pk: int
    category: str | None
    day: date
    provision_pk: int
    product_pk: int | None
    qty: Decimal


def evaluate(conn: Connection, insuree_pk: int, today: date, *, items: Sequence[str] = (),
             services: Sequence[str] = ()) -> Eligibility:
    """The insuree's eligibility today, for the given item and service codes (either may be empty)."""
    rows = _POLICIES.rows(conn, {"insuree": insuree_pk, "today": today})
    product_pks = sorted({r.product_pk for r in rows})
    provisions, lines = _provisions(conn, items, services, product_pks)
    return _evaluate(conn, insuree_pk, today, rows, provisions, lines)


def evaluate_reference(conn: Connection, ref: str, today: date, *, items: Sequence[str] = (),
                       services: Sequence[str] = ()) -> tuple[int, str, Eligibility] | None:
    """`evaluate()` for the current insuree whose id is `ref` or, failing that, whose insurance number is `ref`:
    (insuree pk, insuree id, eligibility), or None when there is none. An enquiry about at most one item and one
    service (the IG's maximum) is answered by one statement — the insuree, its policies with their product terms
    and the coverage lines of the requested codes together — plus the usage queries when a limit applies."""
    item_codes, service_codes = _unique(items), _unique(services)
    if len(item_codes) > 1 or len(service_codes) > 1:
        found = _INSUREE_BY_REF.rows(conn, {"ref": ref})
        match = next((r for r in found if r.id == ref), found[0] if found else None)
        if match is None:
            return None
        return int(match.pk), str(match.id), evaluate(conn, int(match.pk), today, items=items, services=services)
    params: dict[str, Any] = {"ref": ref, "today": today}
    if item_codes:
        params["i0"] = item_codes[0]
    if service_codes:
        params["s0"] = service_codes[0]
    rows = _enquiry_query(bool(item_codes), bool(service_codes)).rows(conn, params)
    if not rows:
        return None
    head = rows[0]
    policies = sorted((r for r in rows if r.policy_pk is not None), key=lambda r: (r.effective_date, r.policy_pk))
    provisions: list[Provision] = []
    lines: dict[tuple[str, int, int], _Line] = {}
    m = head._mapping
    for kind, code, (pk_key, category_key, product_key, line_keys) in (
            ("item", item_codes, _REQUESTED_KEYS["i"]), ("service", service_codes, _REQUESTED_KEYS["s"])):
        if not code:
            continue
        pk = m[pk_key]
        provisions.append(Provision(kind, code[0], pk, (m.get(category_key) or None)))  # type: ignore[arg-type]
        for r in policies:
            rm = r._mapping
            if pk is not None and rm[product_key] is not None:
                lines[(kind, pk, r.product_pk)] = _Line(*(rm[key] for key in line_keys))
    insuree_pk = int(head.insuree_pk)
    return insuree_pk, str(head.insuree_id), _evaluate(conn, insuree_pk, today, policies, provisions, lines)


def _evaluate(conn: Connection, insuree_pk: int, today: date, rows: list[Any], provisions: list[Provision],
              lines: dict[tuple[str, int, int], _Line]) -> Eligibility:
    adult = bool(rows) and age_on(rows[0].dob, today) >= ADULT_AGE

    # The usage and the consumed amounts, when needed, in one round trip on PostgreSQL.
    reads: dict[str, tuple[DriverQuery, dict[str, Any]]] = {}
    if rows and _needs_usage(rows, lines, adult):
        reads["usage"] = (_USAGE, {"insuree": insuree_pk, "since": min(r.effective_date for r in rows)})
    if any(r._mapping[key] for r in rows for key in _DED_MAX_KEYS):
        reads["consumed"] = (_consumed_query(len(rows)), {f"p{i}": r.policy_pk for i, r in enumerate(rows)})
    found = dict(zip(reads, rows_together(conn, list(reads.values())), strict=True)) if reads else {}
    usage = [_Use(u.kind, u.claim_pk, u.category, u.day, u.provision_pk, u.product_pk, u.qty or Decimal(0))
             for u in found.get("usage", ())]
    consumed: dict[tuple[int, bool], dict[str, Decimal]] = {}
    if "consumed" in found:
        for c in found["consumed"]:
            key = (c.policy_pk, c.insuree_pk == insuree_pk)
            sums = consumed.setdefault(key, dict.fromkeys(_CONSUMED_COLUMNS, Decimal(0)))
            for name in _CONSUMED_COLUMNS:
                sums[name] += c._mapping[name] or Decimal(0)

    policies = tuple(_policy(r, provisions, lines, usage, consumed, adult, today) for r in rows)
    return Eligibility(insuree_pk, today, policies, tuple(_summary(p, policies, today) for p in provisions))


def _provisions(conn: Connection, items: Sequence[str], services: Sequence[str], product_pks: list[int]
                ) -> tuple[list[Provision], dict[tuple[str, int, int], _Line]]:
    """The requested provisions (in request order, unknown codes with pk None) and the coverage lines the
    products have for them, by (kind, provision pk, product pk)."""
    requested = [("item", c) for c in _unique(items)] + [("service", c) for c in _unique(services)]
    if not requested:
        return [], {}
    found: dict[tuple[str, str], tuple[int, str | None]] = {}
    lines: dict[tuple[str, int, int], _Line] = {}
    item_codes, service_codes = _unique(items), _unique(services)
    params = {f"p{i}": pk for i, pk in enumerate(product_pks)}
    params.update((f"i{i}", code) for i, code in enumerate(item_codes))
    params.update((f"s{i}", code) for i, code in enumerate(service_codes))
    for r in _lines_query(len(item_codes), len(service_codes), len(product_pks)).rows(conn, params):
        found[(r.kind, r.code)] = (r.pk, r.category or None)
        if r.product_pk is not None:
            lines[(r.kind, r.pk, r.product_pk)] = _Line(r.waiting_period_adult, r.waiting_period_child,
                                                        r.limit_no_adult, r.limit_no_child)
    provisions = []
    for kind, code in requested:
        pk, category = found.get((kind, code), (None, None))
        provisions.append(Provision(kind, code, pk, category))  # type: ignore[arg-type]
    return provisions, lines


def _unique(codes: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(codes))


def _limit(line: _Line, adult: bool) -> int | None:
    limit = line.limit_adult if adult else line.limit_child
    return limit or None  # 0 means no limit (legacy NULLIF(LimitNo, 0))


def _needs_usage(rows: list[Any], lines: dict[tuple[str, int, int], _Line], adult: bool) -> bool:
    """Claims matter only when a requested line has a quantity limit or a product sets a category maximum."""
    if any(_limit(line, adult) is not None for line in lines.values()):
        return True
    return any(r._mapping[key] is not None for r in rows for _, key in _MAX_NO_KEYS)


def _in_window(use: _Use, row: Any) -> bool:
    return row.effective_date <= use.day <= row.expiry_date and use.product_pk in (None, row.product_pk)


def _policy(row: Any, provisions: list[Provision], lines: dict[tuple[str, int, int], _Line], usage: list[_Use],
            consumed: dict[tuple[int, bool], dict[str, Decimal]], adult: bool, today: date) -> PolicyEligibility:
    p = row._mapping
    mine = [u for u in usage if _in_window(u, row)]
    # A claim counts for its category when one of its service lines passed (legacy: tblClaimServices).
    claims_by_category: dict[str, set[int]] = defaultdict(set)
    for u in mine:
        if u.kind == "service" and u.category:
            claims_by_category[u.category].add(u.claim_pk)
    counters = {cat: Counter(cat, p[key], len(claims_by_category[cat])) for cat, key in _MAX_NO_KEYS}
    amounts = {cat: p[key] for cat, key in _MAX_AMOUNT_KEYS}
    covered = []
    for prov in provisions:
        line = lines.get((prov.kind, prov.pk, row.product_pk)) if prov.pk is not None else None
        covered.append(_line(prov, line, row, mine, counters, amounts, adult, today))
    return PolicyEligibility(
        policy_pk=row.policy_pk, policy_id=row.policy_id, coverage_id=row.coverage_id or row.policy_id,
        product_pk=row.product_pk, product_code=p["p_code"], product_name=p["p_name"],
        effective_date=row.effective_date, expiry_date=row.expiry_date,
        counters=counters, amounts=amounts,
        deductibles=_balances(row, "ded", consumed),
        ceilings=_balances(row, "max", consumed),
        lines=tuple(covered),
    )


_CATEGORY_WORDS = {"S": ("surgeries", "surgery"), "C": ("consultations", "consultation"),
                   "D": ("deliveries", "delivery")}


def _line(prov: Provision, line: _Line | None, row: Any, uses: list[_Use], counters: dict[str, Counter],
          amounts: dict[str, Decimal | None], adult: bool, today: date) -> LineCoverage:
    if prov.pk is None:
        return LineCoverage(prov, False, reason=f"unknown {prov.kind} code '{prov.code}'")
    if line is None:
        return LineCoverage(prov, False, reason=f"not covered by product {row._mapping['p_code']}")
    waiting = (line.waiting_adult if adult else line.waiting_child) or 0
    min_date = add_months(row.effective_date, waiting)
    limit = _limit(line, adult)
    used = sum((u.qty for u in uses if u.provision_pk == prov.pk and u.kind == prov.kind), Decimal(0))
    result = LineCoverage(prov, True, min_date, limit, used)
    reason = None
    if min_date > today:
        reason = f"waiting period until {min_date.isoformat()}"
    elif result.left == 0:
        reason = "quantity limit reached"
    elif prov.kind == "service" and prov.category in CHECKED_SERVICE_CATEGORIES:
        many, one = _CATEGORY_WORDS[prov.category]
        amount = amounts[prov.category]
        if counters[prov.category].left == 0:
            reason = f"no {many} left"
        elif amount is not None and amount <= 0:
            reason = f"no {one} amount"
    return LineCoverage(prov, True, min_date, limit, used, reason is None, reason)


def _balances(row: Any, kind: str, consumed: dict[tuple[int, bool], dict[str, Decimal]]) -> dict[str, Balance]:
    p = row._mapping
    by_insuree = consumed.get((row.policy_pk, True), _NOTHING_CONSUMED)
    by_others = consumed.get((row.policy_pk, False), _NOTHING_CONSUMED)
    out: dict[str, Balance] = {}
    for care, infix, used_column, scopes in _BALANCE_KEYS[kind]:
        for scope, key in scopes:
            amount = p[key]
            if not amount:
                continue
            if scope == "treatment":
                out[care] = Balance(scope, amount, Decimal(0))
            elif scope == "insuree":
                out[care] = Balance(scope, amount, by_insuree[used_column])
            else:
                if kind == "max":
                    amount = _policy_ceiling(row, amount, infix)
                out[care] = Balance(scope, amount, by_insuree[used_column] + by_others[used_column])
            break
    return out


def _policy_ceiling(row: Any, amount: Decimal, infix: str) -> Decimal:
    """MaxPolicy raised by (members − Threshold) × MaxPolicyExtraMember, capped by MaxCeilingPolicy (§3.4.3)."""
    p = row._mapping
    threshold, extra = p["p_threshold"], p[f"p_max_policy_extra_member{infix}"]
    if threshold is not None and extra and row.members > threshold:
        amount += (row.members - threshold) * extra
        cap = p[f"p_max_ceiling_policy{infix}"]
        if cap:
            amount = min(amount, cap)
    return amount


def _summary(prov: Provision, policies: tuple[PolicyEligibility, ...], today: date) -> LineSummary:
    mine = [line for p in policies for line in p.lines if line.provision == prov]
    covering = [line for line in mine if line.covered]
    if not covering:
        return LineSummary(prov, False, None, None, False)
    reached = [line for line in covering if line.min_date is not None and line.min_date <= today]
    min_date = min(line.min_date for line in (reached or covering) if line.min_date is not None)
    if not reached or any(line.limit is None for line in reached):
        left = None
    else:
        left = max(line.left for line in reached if line.left is not None)
    return LineSummary(prov, True, min_date, left, any(line.ok for line in mine))
