"""Claim submission: the claim category and the openIMIS checks (reference/openimis-domain.md §3.3.2–3.3.4).

`submit()` takes an entered claim (status 2) as stored, with its item and service lines, and decides it:
category, each line's status and rejection reason, the claim's status (4 checked when at least one line passed,
1 rejected otherwise), approved amount and submit stamp. `check_submission()` decides the same of a claim being
submitted, before it is stored: its caller inserts the claim and its lines once, decided. No HTTP, no FHIR.

Claim category (§3.3.2), computed first and stored in `claim.category`: the claim has a current service of
category S → S, else D → D, else A → A, else the claim is multi-day (target date ≠ date from) → H, else C → C,
else V.

The checks, in order. The target date is `date_to`, or `date_from` for a single-day claim. A line that has a
reason is skipped by every later check, so it carries the first reason found (a line entered already rejected
keeps its reason and is not checked at all).

Claim-level checks: each rejects the whole claim, every line getting the reason (in parentheses when it differs).
 7  Family: the insuree or its family is not current, or the insuree belongs to no family.
21  No coverage (lines 7): no current insuree_policy of the insuree, with an effective date, covers the claim
    dates (effective ≤ date from and expiry ≥ target date), whatever its policy's status (a suspended policy
    then fails the product search: 3).
 9  Target date: date to before date from, date claimed before date from, or the treatment is in the future.
20  Invalid claim (hifhir rule; openIMIS defines the code but never sets it): `claimed` (the total the facility
    declares) is not Σ qty provided × price asked of its lines — within half a cent per line, since a client may
    round each line's amount.
 8  Diagnosis not in list (hifhir rule, "not implemented" in openIMIS): the main or a secondary diagnosis is not
    an active code of the diagnosis list (`code_list_entry`, list `diagnosis-ICD10-level1`). A scheme that has
    configured no diagnosis at all checks nothing.
Line checks, services first, then items (legacy cursor order), each in sequence order:
 1  Registers: the item/service is no longer current (deleted after the claim was entered).
 2  Price list: the item/service is not on the facility's current items/services price list.
 6  Duplicated (hifhir rule, "not implemented" in openIMIS): a passed line of another current claim of the same
    insuree with status > 2 (checked, processed, valuated) has the same item/service on the same target date.
10  Care type (legacy rule, see below).
 4  Patient category: the line's mask (1 male, 2 female, 4 adult, 8 child; 0 = everybody) does not contain the
    insuree's (1 for gender M or O, else 2; + 4 if 18 or older on the target date, else 8).
    Product search: the candidates are the insuree's policies with status active (2) or expired (8) whose policy
    and member windows both contain the target date, whose product is current and covers the item/service;
    they are tried in the order of member effective date + the line's waiting period, the first that passes
    covers the line:
17    waiting period: when the policy is new (stage N) or the insuree joined after it started, the target date is
      before the member's effective date + the adult/child waiting period (months, calendar-wise);
16    max provisions: the adult/child quantity limit is set (non-zero) and the quantity already used in the
      member's window (Σ coalesce(qty approved, qty provided) of passed lines of the insuree's other claims with
      status > 2, assigned to that product or not yet assigned, plus the earlier lines of this claim that passed)
      plus this line's quantity exceeds it;
11–15, 19  category maximum (service lines only): the product's MaxNo for the claim's category is set and the
      insuree's other claims with status > 2 of that category (NULL counted as V) in the member's window reach it.
 3  No candidate at all. When candidates exist but none passes, the line gets the first candidate's failure;
    when that is a category maximum (13 C, 14 S, 15 D, 19 A, 11 H, 12 V), the whole claim is rejected with it.
 5  Frequency, after the product search: the item/service has a frequency (days) and a passed line of the same
    item/service on another claim of the insuree with status > 2 has a target date less than that many days away.
Outcome: rejected lines get status 2 and qty approved 0; passed lines stay status 1, reason 0. At least one passed
line → claim status 4 (checked), rejection reason 0. None → status 1 (rejected) with the claim-level reason, or,
when every line failed on its own, the reason all lines share, else 1 (openIMIS's "every item and service
rejected"). `approved` = Σ qty provided × price asked of the passed lines (0 for a rejected claim): the asked
price, because which price the scheme pays (price list or own price) depends on the product line chosen at
processing (§3.4.3, price origin), which then sets price_adjusted; at submission openIMIS's Approved
(Σ coalesce(price approved, price adjusted, price asked) × coalesce(qty approved, qty provided)) is that sum.

Where legacy (`uspSubmitSingleClaim`) and Python (`claim/validations.py`) differ, hifhir chooses:
* Care type — legacy: a line of care type I is rejected at an out-patient (O) facility or on a single-day claim,
  a line of care type O at an in-patient (I) facility or on a multi-day claim; B lines always pass; a facility
  without care type counts as B. Python's variant lets an O line through on a multi-day claim at a B facility,
  which makes the line's care type meaningless there: the care type says in which kind of care an item is paid,
  and a multi-day claim is in-patient care whatever the facility.
* Max provisions — reject the line with 16 when it would exceed the limit (legacy rejects only when the limit is
  already used up, letting one line overshoot it; Python reduces the quantity). Adjusting quantities is the
  medical officer's review (qty approved), and a reduced line would tell the facility nothing about why; the
  rule also agrees with eligibility's "left" (a line passes exactly when its quantity ≤ what is left). A quantity
  limit of 0 means "no limit", as in eligibility (legacy NULLIF in the enquiry).
* Frequency window — legacy |difference| < frequency: Python's "other target ≥ this target − frequency" also
  rejects a treatment given well before a later one submitted first, which claims submitted out of order do.
* Category maxima reject the whole claim (legacy; Python only with check_max): the maximum counts claims, and the
  excess claim is the whole admission or visit, not one of its services. openIMIS stops at the first candidate
  that reaches its maximum; hifhir tries the other candidates first (another policy may still have visits left).
* Max provisions and category maxima count usage as eligibility does (domain/eligibility.py): within the member's
  coverage window, the reviewed quantity when there is one.

Cost: six indexed reads, none per line. Five of them read what no other claim changes (`CheckFacts`: the
registers of the claim's items and services with their price-list entries, the insuree's member windows, the
diagnosis list's change marker — its active codes are cached per marker, `store.codelists.snapshots` —, the insuree
with its family and the facility, then the coverage lines of the candidates' products), in two steps
(`facts_plan`, `store.fast.run_plans`: one round trip each on PostgreSQL). A submission reads them before its claim
is inserted, on SQLite outside the writer lock. With the claim's checks go only the passed lines of the insuree's
earlier claims (only when a line is still unchecked): what concurrent submissions change — on PostgreSQL in the
round trip that takes the insuree's turn (a stored claim's checks read the claim with it first). A submission's
claim and lines are in memory (`NewLine`): the submission inserts them once processing has decided them too; a
stored claim is updated, and its rejected lines. They run through `store.fast.DriverQuery` / `FastStatement`
(SQLAlchemy's per-statement overhead is most of a submission's cost).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Connection,
    Date,
    String,
    bindparam,
    false,
    func,
    literal,
    null,
    select,
    union_all,
    update,
)

from hifhir.domain.claims import (
    ACCEPTED,
    CARE_TYPE,
    CATEGORY_LIMITATION,
    CATEGORY_MAX_REASONS,
    DIAGNOSIS_NOT_IN_LIST,
    DUPLICATED,
    FAMILY,
    FREQUENCY_FAILURE,
    INVALID_CLAIM,
    INVALID_ITEM_OR_SERVICE,
    NO_COVERAGE,
    NO_PRODUCT_FOUND,
    NOT_IN_PRICE_LIST,
    QTY_OVER_LIMIT,
    TARGET_DATE,
    WAITING_PERIOD_FAIL,
    NewLine,
    target_pks,
)
from hifhir.domain.eligibility import ADULT_AGE, CATEGORIES
from hifhir.domain.policy import add_months, age_on
from hifhir.store.codelists import DIAGNOSIS_LIST, LIST_CHANGED_READ, snapshots
from hifhir.store.fast import DriverQuery, FastStatement, Plan, any_pk, rows_together, run_plan
from hifhir.store.locks import CLAIM_CHECKS, turn
from hifhir.store.tables import (
    CLAIM_CHECKED,
    CLAIM_ENTERED,
    CLAIM_REJECTED,
    LINE_PASSED,
    LINE_REJECTED,
    POLICY_ACTIVE,
    POLICY_EXPIRED,
    claim,
    claim_item,
    claim_service,
    family,
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

MALE, FEMALE, ADULT, CHILD = 1, 2, 4, 8
# Claim-level reasons: the claim is rejected as a whole, each line with the reason given here.
_LINE_REASON_OF = {NO_COVERAGE: FAMILY}
_MAX_COLUMNS = tuple(f"max_no_{name}" for name, _ in CATEGORIES.values())

# --- statements (compiled once per dialect) --------------------------------------------------------------------

# The claim, once the checks of its insuree's claims have their turn (store.locks): the checks that count the
# insuree's other claims (same day, frequency, quantity limits, category maximums) then see every claim of the
# insuree committed before, and two never run beside each other. A row lock on the insuree would do the same, but
# Contract writes lock a policy then its members, and processing locks the member's policies after the checks.
_CLAIM = DriverQuery(
    select(
        claim.c.status, claim.c.hf_pk, claim.c.insuree_pk, claim.c.date_from, claim.c.date_to, claim.c.date_claimed,
        claim.c.claimed, claim.c.icd_code, *(claim.c[f"icd_code_{i}"] for i in range(1, 5)),
        turn(CLAIM_CHECKS, claim.c.insuree_pk).label("turn"),
    )
    .where(claim.c.pk == bindparam("claim"), is_current(claim))
)

# The claim's insuree with its family, and its facility, as the checks need them (one of the facts).
_SUBJECT = DriverQuery(
    select(insuree.c.dob, insuree.c.gender, insuree.c.deleted.label("insuree_deleted"), insuree.c.family_pk,
           family.c.deleted.label("family_deleted"), health_facility.c.care_type.label("hf_care_type"))
    .select_from(insuree.outerjoin(family, family.c.pk == insuree.c.family_pk)
                 .join(health_facility, health_facility.c.pk == bindparam("hf")))
    .where(insuree.c.pk == bindparam("insuree"))
)
# A submission's turn (see `_CLAIM`), taken in the round trip that reads the insuree's other claims: PostgreSQL runs
# the usage read once the turn is held, with a snapshot taken then.
_TURN = DriverQuery(select(turn(CLAIM_CHECKS, bindparam("insuree")).label("turn")))


def _targets_branch(kind: str, target: Any, fk: str, listed: Any) -> Any:
    """The registers of the claim's items or services (pks `<kind>_pks`) with their entry in the current price list
    of the claim's facility (`hf`). The entry is a correlated subquery, one index probe per register whatever the
    statistics: joined, PostgreSQL's generic plan hash-joined the facility's whole price list once its statistics
    were taken (0.8 ms a claim on the benchmark's catalogue)."""
    category = target.c.category if kind == "service" else null()
    facility, prices = health_facility.alias(f"{kind}_hf"), price_list.alias(f"{kind}_prices")
    current_list = (select(prices.c.pk)
                    .select_from(facility.join(prices, prices.c.pk == facility.c[f"{kind}_price_list_pk"]))
                    .where(facility.c.pk == bindparam("hf"), prices.c.deleted == false())
                    .scalar_subquery())
    entry = (select(listed.c.price_list_pk)
             .where(listed.c[fk] == target.c.pk, listed.c.price_list_pk == current_list)
             .scalar_subquery())
    return (
        select(literal(kind, String).label("kind"), target.c.pk.label("target_pk"), target.c.deleted,
               target.c.care_type, target.c.patient_category, target.c.frequency, category.label("category"),
               entry.label("listed"))
        .where(any_pk(target.c.pk, f"{kind}_pks"))
    )


_TARGETS = DriverQuery(union_all(
    _targets_branch("service", medical_service, "service_pk", price_list_service),
    _targets_branch("item", medical_item, "item_pk", price_list_item),
))

# The lines of a stored claim (a submission's are in memory).
_STORED_LINES = DriverQuery(union_all(*(
    select(literal(kind, String).label("kind"), t.c.pk, t.c.sequence, t.c[fk].label("target_pk"), t.c.qty_provided,
           t.c.price_asked, t.c.rejection_reason).where(t.c.claim_pk == bindparam("claim"))
    for kind, t, fk in (("service", claim_service, "service_pk"), ("item", claim_item, "item_pk")))))

# Every current member window of the insuree that overlaps the claim's dates (`date_from` to `target`), with its
# policy and product.
_POLICIES = DriverQuery(
    select(insuree_policy.c.effective_date.label("member_from"), insuree_policy.c.expiry_date.label("member_to"),
           policy.c.pk.label("policy_pk"), policy.c.product_pk, policy.c.status, policy.c.stage,
           policy.c.effective_date, policy.c.expiry_date, product.c.deleted.label("product_deleted"),
           *(product.c[c] for c in _MAX_COLUMNS))
    .select_from(insuree_policy.join(policy, policy.c.pk == insuree_policy.c.policy_pk)
                 .join(product, product.c.pk == policy.c.product_pk))
    .where(insuree_policy.c.insuree_pk == bindparam("insuree"), insuree_policy.c.deleted == false(),
           insuree_policy.c.effective_date.is_not(None),
           insuree_policy.c.effective_date <= bindparam("target", type_=Date),
           insuree_policy.c.expiry_date >= bindparam("date_from", type_=Date), policy.c.deleted == false())
    .order_by(insuree_policy.c.effective_date, policy.c.pk)
)

_COVERAGE_COLUMNS = ("waiting_period_adult", "waiting_period_child", "limit_no_adult", "limit_no_child")


@functools.lru_cache(maxsize=16)
def _coverage_query(n_products: int) -> DriverQuery:
    """The coverage lines the given products (binds p0…) have for the claim's items and services (`<kind>_pks`):
    one statement per number of products (driver-level statements take no expanding IN)."""
    products = [bindparam(f"p{i}") for i in range(n_products)]

    def branch(kind: str, coverage: Any, fk: str) -> Any:
        return (select(literal(kind, String).label("kind"), coverage.c.product_pk, coverage.c[fk].label("target_pk"),
                       *(coverage.c[c] for c in _COVERAGE_COLUMNS))
                .where(coverage.c.product_pk.in_(products), any_pk(coverage.c[fk], f"{kind}_pks")))

    return DriverQuery(union_all(branch("service", product_service, "service_pk"),
                                 branch("item", product_item, "item_pk")))


def _usage_branch(kind: str, lines: Any, fk: str) -> Any:
    day = func.coalesce(claim.c.date_to, claim.c.date_from)
    return (
        select(literal(kind, String).label("kind"), claim.c.pk.label("claim_pk"), claim.c.category,
               day.label("day"), lines.c[fk].label("target_pk"), lines.c.product_pk,
               func.coalesce(lines.c.qty_approved, lines.c.qty_provided).label("qty"))
        .select_from(claim.join(lines, lines.c.claim_pk == claim.c.pk))
        .where(claim.c.insuree_pk == bindparam("insuree"), claim.c.status > CLAIM_ENTERED,
               is_current(claim), claim.c.pk != bindparam("claim"), lines.c.status == LINE_PASSED,
               lines.c.rejection_reason == ACCEPTED, day >= bindparam("since"))
    )


# The passed lines of the insuree's other checked/processed/valuated claims since a date: duplicates, frequency,
# quantities used and claims per category all come from it.
_USAGE = DriverQuery(union_all(_usage_branch("service", claim_service, "service_pk"),
                               _usage_branch("item", claim_item, "item_pk")))

# Conditional on the claim still being entered: of two concurrent submissions, the second updates nothing.
_CLAIM_SET = (
    update(claim)
    .where(claim.c.pk == bindparam("claim"), claim.c.status == CLAIM_ENTERED)
    .values(status=bindparam("new_status"), category=bindparam("new_category"),
            rejection_reason=bindparam("new_reason"), approved=bindparam("new_approved"),
            submit_stamp=bindparam("new_stamp"))
)
_CLAIM_UPDATE = DriverQuery(_CLAIM_SET.returning(claim.c.pk))


def _line_update(lines: Any) -> FastStatement:
    # Only rejected lines are written, with plain values: qty_approved 0 is 0 in the Amount column's hundredths.
    return FastStatement(update(lines).where(lines.c.pk == bindparam("line")).values(
        status=bindparam("new_status"), rejection_reason=bindparam("new_reason"),
        qty_approved=bindparam("new_qty")))


_LINE_UPDATES = {"item": _line_update(claim_item), "service": _line_update(claim_service)}

# --- evaluation -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Line:
    kind: str  # item | service
    pk: int
    sequence: int
    target_pk: int
    qty: Decimal
    price: Decimal
    reason: int
    deleted: bool
    care_type: str
    patient_category: int
    frequency: int | None
    category: str | None
    listed: bool


@dataclass(slots=True)
class _Use:
    kind: str
    claim_pk: int
    category: str
    day: date
    target_pk: int
    product_pk: int | None
    qty: Decimal


@dataclass(frozen=True, slots=True)
class CheckFacts:
    """What the checks read that no other claim changes, for a claim of an insuree at a facility, between two dates,
    with lines of given items and services: the registers with their price-list entries, the insuree's member
    windows overlapping the dates, the category (§3.3.2), the active diagnosis codes (None: the list is empty),
    the candidate policies at the target date and their products' coverage of the registers. A submission reads them
    before its claim is inserted (`facts_plan`, from `read_ahead`: on SQLite outside the writer lock); the checks of
    a stored claim read them themselves. Only the insuree's other claims are read with the claim's checks: those
    are what concurrent submissions change."""

    hf_pk: int
    insuree_pk: int
    date_from: date
    date_to: date | None
    registers: dict[tuple[str, int], Any]
    policies: list[Any]
    category: str
    diagnoses: frozenset[str] | None
    candidates: list[Any]
    coverage: dict[tuple[str, int, int], Any]
    subject: Any  # the insuree and facility as `_CLAIM` joins them (`_SUBJECT`); None when the insuree is gone

    def of(self, c: Any) -> bool:
        """Whether these are the facts of the claim `c` (its facility, insuree and dates)."""
        return (self.hf_pk, self.insuree_pk, self.date_from, self.date_to) == (c.hf_pk, c.insuree_pk, c.date_from,
                                                                              c.date_to)


def facts_plan(conn: Connection, hf_pk: int, insuree_pk: int, date_from: date, date_to: date | None,
               lines: Sequence[Any]) -> Plan[CheckFacts]:
    """The facts in two steps (registers, member windows and the diagnosis list's marker; then the coverage lines
    of the candidates' products). `lines`: anything with kind and target_pk."""
    target = date_to or date_from
    pks = target_pks(lines)
    targets, policies, diagnoses, subject = yield [
        (_TARGETS, {"hf": hf_pk, **pks}), (_POLICIES, {"insuree": insuree_pk, "date_from": date_from,
                                                       "target": target}),
        (LIST_CHANGED_READ, {"list_name": DIAGNOSIS_LIST}), (_SUBJECT, {"insuree": insuree_pk, "hf": hf_pk})]
    registers = {(t.kind, t.target_pk): t for t in targets}
    changed_at = int(diagnoses[0][0] or 0) if diagnoses else 0
    diagnosis_list = snapshots.at(conn, DIAGNOSIS_LIST, changed_at).active_codes if changed_at else None
    candidates = [p for p in policies
                  if p.status in (POLICY_ACTIVE, POLICY_EXPIRED) and not p.product_deleted
                  and p.effective_date is not None and p.effective_date <= target <= p.expiry_date
                  and p.member_from <= target <= p.member_to]
    coverage: dict[tuple[str, int, int], Any] = {}
    if candidates and any(pks.values()):
        product_pks = sorted({p.product_pk for p in candidates})
        params: dict[str, Any] = dict(pks)
        params.update((f"p{i}", pk) for i, pk in enumerate(product_pks))
        coverage = {(r.kind, r.target_pk, r.product_pk): r
                    for r in (yield [(_coverage_query(len(product_pks)), params)])[0]}
    return CheckFacts(hf_pk, insuree_pk, date_from, date_to, registers, policies,
                      _category(registers.values(), multi_day=target != date_from), diagnosis_list, candidates,
                      coverage, subject[0] if subject else None)


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """What the checks decide of the claim itself (its lines' reasons are set on the lines)."""

    status: int  # 4 checked, 1 rejected
    rejection_reason: int
    category: str
    approved: Decimal

    def columns(self, now: int) -> dict[str, Any]:
        """The claim's columns the checks set, with the submit stamp `now`."""
        return {"status": self.status, "rejection_reason": self.rejection_reason, "category": self.category,
                "approved": self.approved, "submit_stamp": now}


def submit(conn: Connection, claim_pk: int, *, today: date, now: int, facts: CheckFacts | None = None) -> int:
    """Check an entered claim (status 2) as stored, with its stored lines, and record the outcome (the claim and its
    rejected lines updated); returns the new status (4 checked, 1 rejected). ValueError when the claim does not
    exist or is not entered. `facts`: the claim's, read ahead (else they are read here)."""
    claim_only = {"claim": claim_pk}
    head, stored = rows_together(conn, [(_CLAIM, claim_only), (_STORED_LINES, claim_only)])
    if not head or head[0].status != CLAIM_ENTERED:
        raise ValueError(f"Claim {claim_pk} is not an entered claim (status {CLAIM_ENTERED})")
    c = head[0]
    if facts is None:
        facts = run_plan(conn, facts_plan(conn, c.hf_pk, c.insuree_pk, c.date_from, c.date_to, stored))
    elif not facts.of(c):
        raise ValueError(f"Claim {claim_pk}: the facts given are of another facility, insuree or dates")
    lines = [_line(r.kind, r.pk, r.sequence or 0, r.target_pk, r.qty_provided, r.price_asked, r.rejection_reason,
                   facts.registers.get((r.kind, r.target_pk))) for r in stored]
    checked = _Checked.of(facts, c.date_claimed, c.claimed,
                          (c.icd_code, c.icd_code_1, c.icd_code_2, c.icd_code_3, c.icd_code_4))
    outcome = _decide(conn, claim_pk, checked, lines, today, facts, take_turn=False)  # `_CLAIM` took it
    params = {"claim": claim_pk, "new_status": outcome.status, "new_category": outcome.category,
              "new_reason": outcome.rejection_reason, "new_approved": outcome.approved, "new_stamp": now}
    if not _CLAIM_UPDATE.rows(conn, params):
        raise ValueError(f"Claim {claim_pk} is no longer an entered claim (submitted concurrently)")
    for kind, statement in _LINE_UPDATES.items():
        rejected = [{"line": line.pk, "new_status": LINE_REJECTED, "new_reason": line.reason, "new_qty": 0}
                    for line in lines if line.kind == kind and line.reason]
        if rejected:
            statement.execute_many(conn, rejected, defer=True)
    return outcome.status


@dataclass(frozen=True, slots=True)
class _Checked:
    """A claim as the checks read it: its values, and its insuree, family and facility (the facts' subject)."""

    insuree_pk: int
    date_from: date
    date_to: date | None
    date_claimed: date
    claimed: Decimal | None
    icd_code: str | None
    icd_code_1: str | None
    icd_code_2: str | None
    icd_code_3: str | None
    icd_code_4: str | None
    dob: date | None
    gender: str | None
    insuree_deleted: bool
    family_pk: int | None
    family_deleted: bool | None
    hf_care_type: str | None

    @classmethod
    def of(cls, facts: CheckFacts, date_claimed: date, claimed: Decimal | None,
           diagnoses: Sequence[str | None]) -> _Checked:
        """`diagnoses`: the main one, then the secondary ones (up to 5 in all)."""
        s = facts.subject
        codes = [*diagnoses, None, None, None, None, None][:5]
        return cls(facts.insuree_pk, facts.date_from, facts.date_to, date_claimed, claimed, *codes,
                   s.dob if s else None, s.gender if s else None, s is None or bool(s.insuree_deleted),
                   s.family_pk if s else None, s.family_deleted if s else None, s.hf_care_type if s else None)


def check_submission(conn: Connection, facts: CheckFacts, *, date_claimed: date, claimed: Decimal | None,
                     diagnoses: Sequence[str], new_lines: Sequence[NewLine], today: date) -> CheckOutcome:
    """Check a claim this transaction is about to insert (status entered, with `new_lines`, not stored either):
    each line's `reason` is set, and the outcome is for the caller to insert the claim with — a claim is inserted
    once, decided, as its lines are (no UPDATE of a row the same transaction inserted)."""
    c = _Checked.of(facts, date_claimed, claimed, diagnoses)
    lines = [_line(n.kind, n.order, n.sequence, n.target_pk, n.qty, n.price, n.reason,
                   facts.registers.get((n.kind, n.target_pk))) for n in new_lines]
    outcome = _decide(conn, None, c, lines, today, facts, take_turn=True)
    reasons = {(line.kind, line.pk): line.reason for line in lines}
    for new in new_lines:
        new.reason = reasons[(new.kind, new.order)]
    return outcome


def _decide(conn: Connection, claim_pk: int | None, c: _Checked, lines: list[_Line], today: date, facts: CheckFacts,
            *, take_turn: bool) -> CheckOutcome:
    """The checks of the claim `c` (`claim_pk` None when not stored yet): each line's reason set in place, and the
    claim's outcome."""
    lines.sort(key=lambda line: (line.kind != "service", line.sequence, line.pk))  # the legacy cursors' order
    target = c.date_to or c.date_from
    claim_reason = _claim_reason(c, lines, target, today, facts.policies, facts.diagnoses)
    if claim_reason == ACCEPTED:
        claim_reason = _check_lines(conn, claim_pk, c, lines, target, facts, take_turn=take_turn)
    if claim_reason != ACCEPTED:
        line_reason = _LINE_REASON_OF.get(claim_reason, claim_reason)
        for line in lines:
            line.reason = line_reason
    return _outcome(lines, facts.category, claim_reason)


def _line(kind: str, pk: int, sequence: int, target_pk: int, qty: Decimal, price: Decimal, reason: int,
          register: Any) -> _Line:
    """A line with its register (None: no longer there — the line is then an invalid item or service)."""
    if register is None:
        return _Line(kind, pk, sequence, target_pk, qty, price, reason, True, "B", 0, None, None, False)
    return _Line(kind, pk, sequence, target_pk, qty, price, reason, bool(register.deleted), register.care_type,
                 register.patient_category or 0, register.frequency, register.category, register.listed is not None)


def _category(registers: Iterable[Any], *, multi_day: bool) -> str:
    """§3.3.2: S, D, A (in that order) when one of the claim's current services (`registers`, `_TARGETS` rows) has
    that category, else H for a multi-day claim, else C, else V."""
    found = {r.category for r in registers if r.kind == "service" and not r.deleted}
    for code in ("S", "D", "A"):
        if code in found:
            return code
    if multi_day:
        return "H"
    return "C" if "C" in found else "V"


def _claim_reason(c: Any, lines: Sequence[_Line], target: date, today: date, policies: Sequence[Any],
                  diagnosis_list: frozenset[str] | None) -> int:
    """The first claim-level check that fails (7, 21, 9, 20, 8) or 0. `policies`: the insuree's member windows
    overlapping the claim; `diagnosis_list`: the active codes of the diagnosis list, None when the list has no
    entry at all (nothing to check against)."""
    if c.insuree_deleted or c.family_pk is None or c.family_deleted:
        return FAMILY
    if not any(p.member_from <= c.date_from and p.member_to >= target for p in policies):
        return NO_COVERAGE
    if (c.date_to is not None and c.date_to < c.date_from) or c.date_claimed < c.date_from or target > today:
        return TARGET_DATE
    if c.claimed is not None:
        total = sum((line.qty * line.price for line in lines), Decimal(0))
        if abs(c.claimed - total) > _HALF_CENT * max(1, len(lines)):
            return INVALID_CLAIM
    diagnoses = [d for d in (c.icd_code, c.icd_code_1, c.icd_code_2, c.icd_code_3, c.icd_code_4) if d]
    if diagnosis_list is not None and not diagnosis_list.issuperset(diagnoses):
        return DIAGNOSIS_NOT_IN_LIST
    return ACCEPTED


_HALF_CENT = Decimal("0.005")


def _check_lines(conn: Connection, claim_pk: int | None, c: Any, lines: Sequence[_Line], target: date,
                 facts: CheckFacts, *, take_turn: bool) -> int:
    """The line checks (1, 2, 6, 10, 4, product search, 5), each line's reason set in place; returns the reason
    of a category maximum that rejects the whole claim, else 0."""
    for line in lines:
        if line.reason:
            continue
        if line.deleted:
            line.reason = INVALID_ITEM_OR_SERVICE
        elif not line.listed:
            line.reason = NOT_IN_PRICE_LIST
    pending = [line for line in lines if not line.reason]
    if not pending:
        return ACCEPTED

    since = min([target, *(p.member_from for p in facts.candidates),
                 *(target - timedelta(days=line.frequency) for line in pending if line.frequency)])
    # A claim not stored yet excludes no claim of the insuree's (pks start at 1).
    read = (_USAGE, {"insuree": c.insuree_pk, "claim": claim_pk or 0, "since": since})
    if take_turn and conn.dialect.name == "postgresql":  # SQLite's writer lock is the turn
        used = rows_together(conn, [(_TURN, {"insuree": c.insuree_pk}), read])[1]
    else:
        used = read[0].rows(conn, read[1])
    usage = [_Use(u.kind, u.claim_pk, u.category or "V", u.day, u.target_pk, u.product_pk, u.qty or Decimal(0))
             for u in used]

    adult = age_on(c.dob, target) >= ADULT_AGE
    mask = (MALE if c.gender in ("M", "O") else FEMALE) | (ADULT if adult else CHILD)
    multi_day = target != c.date_from
    hf_care = c.hf_care_type or "B"
    same_day = {(u.kind, u.target_pk) for u in usage if u.day == target}
    search = _ProductSearch(facts.candidates, facts.coverage, usage, adult, target, facts.category)
    for line in pending:
        if (line.kind, line.target_pk) in same_day:
            line.reason = DUPLICATED
        elif _wrong_care_type(line.care_type, hf_care, multi_day):
            line.reason = CARE_TYPE
        elif line.patient_category and line.patient_category & mask != mask:
            line.reason = CATEGORY_LIMITATION
        else:
            line.reason = search.cover(line)
            if line.reason in _CATEGORY_MAX_CODES:
                return line.reason
    for line in pending:
        if not line.reason and line.frequency and any(
                u.kind == line.kind and u.target_pk == line.target_pk and abs((u.day - target).days) < line.frequency
                for u in usage):
            line.reason = FREQUENCY_FAILURE
    return ACCEPTED


_CATEGORY_MAX_CODES = frozenset(CATEGORY_MAX_REASONS.values())


def _wrong_care_type(line_care: str, hf_care: str, multi_day: bool) -> bool:
    """Legacy check 10: in-patient lines need in-patient care (a multi-day claim at a facility that gives it),
    out-patient lines out-patient care; B lines fit both."""
    if line_care == "I":
        return hf_care == "O" or not multi_day
    if line_care == "O":
        return hf_care == "I" or multi_day
    return False


class _ProductSearch:
    """Which of the insuree's policies covers a line (waiting period 17, max provisions 16, category maximum);
    remembers what the claim's earlier lines took of each policy's quantity limits."""

    def __init__(self, candidates: Sequence[Any], coverage: dict[tuple[str, int, int], Any], usage: list[_Use],
                 adult: bool, target: date, category: str) -> None:
        self.candidates = candidates
        self.coverage = coverage
        self.usage = usage
        self.adult = adult
        self.target = target
        self.category = category
        self.max_column = f"max_no_{CATEGORIES[category][0]}"
        self.taken: dict[tuple[str, int, int], Decimal] = {}  # (kind, target pk, policy pk) → passed on this claim
        self.claims_in_category: dict[int, int] = {}  # policy pk → other claims of the category in its window

    def cover(self, line: _Line) -> int:
        options = []
        for p in self.candidates:
            cov = self.coverage.get((line.kind, line.target_pk, p.product_pk))
            if cov is not None:
                waiting = (cov.waiting_period_adult if self.adult else cov.waiting_period_child) or 0
                options.append((add_months(p.member_from, waiting), p.policy_pk, p, cov))
        if not options:
            return NO_PRODUCT_FOUND
        options.sort(key=lambda o: (o[0], o[1]))
        first_failure = ACCEPTED
        for min_date, _, p, cov in options:
            reason = self._fails(line, p, cov, min_date)
            if reason == ACCEPTED:
                key = (line.kind, line.target_pk, p.policy_pk)
                self.taken[key] = self.taken.get(key, Decimal(0)) + line.qty
                return ACCEPTED
            first_failure = first_failure or reason
        return first_failure

    def _fails(self, line: _Line, p: Any, cov: Any, min_date: date) -> int:
        waits = p.stage == "N" or p.effective_date < p.member_from
        if waits and self.target < min_date:
            return WAITING_PERIOD_FAIL
        limit = (cov.limit_no_adult if self.adult else cov.limit_no_child) or None  # 0: no limit (eligibility)
        if limit is not None:
            used = sum((u.qty for u in self.usage
                        if u.kind == line.kind and u.target_pk == line.target_pk
                        and p.member_from <= u.day <= p.member_to and u.product_pk in (None, p.product_pk)),
                       self.taken.get((line.kind, line.target_pk, p.policy_pk), Decimal(0)))
            if used + line.qty > limit:
                return QTY_OVER_LIMIT
        maximum = p._mapping[self.max_column]
        if line.kind == "service" and maximum is not None:
            count = self.claims_in_category.get(p.policy_pk)
            if count is None:
                count = self.claims_in_category[p.policy_pk] = len(
                    {u.claim_pk for u in self.usage
                     if u.category == self.category and p.member_from <= u.day <= p.member_to})
            if count >= maximum:
                return CATEGORY_MAX_REASONS[self.category]
        return ACCEPTED


def _outcome(lines: Sequence[_Line], category: str, claim_reason: int) -> CheckOutcome:
    passed = [line for line in lines if not line.reason]
    if claim_reason == ACCEPTED and passed:
        status, reason = CLAIM_CHECKED, ACCEPTED
    elif claim_reason != ACCEPTED:
        status, reason = CLAIM_REJECTED, claim_reason
    else:  # every line failed on its own: their common reason, else openIMIS's "every line rejected"
        reasons = {line.reason for line in lines}
        status, reason = CLAIM_REJECTED, reasons.pop() if len(reasons) == 1 else INVALID_ITEM_OR_SERVICE
    approved = sum((line.qty * line.price for line in passed), Decimal(0)) if status == CLAIM_CHECKED else Decimal(0)
    return CheckOutcome(status, reason, category, approved)
