"""Claim review by a medical officer (reference/openimis-domain.md §3.4.1; right 111008 "deliver review"). No HTTP,
no FHIR.

Selection — `select_for_review(conn, claim_pk, rule=, today=) -> bool`, on a checked claim (status 4) whose review
status is still Idle (1); anything else is a ValueError. The rule is feedback's (`feedback.parse_rule`, configured
by `HIFHIR_REVIEW_SELECTION`, evaluated as feedback evaluates it: `off`, `all:<min claimed>`, `random:<percent>`,
`variance:<percent>[:<min claimed>]`). `off` (the default) changes nothing (Idle, False); otherwise the claim gets
review status 4 Selected (True) or 2 Not selected (False) — per claim as it is submitted, like feedback (see
feedback.py on "random"). Unlike feedback, a review needs nobody to be found
first: any user holding 111008 may deliver it. A selected claim is not processed: it waits for the review — and
for its feedback too when it was selected for both (`may_process`).

Delivery — `deliver(conn, claim_pk, lines, adjustment=, today=, now=) -> new claim status`, on a claim that is
checked (4), current and Selected for review (4) (`NotPending` otherwise). Per line the reviewer may (§3.4.1):
* reject it: status 2, reason −1 (rejected by a medical officer), qty approved 0;
* approve a smaller quantity: qty approved, 0 < qty ≤ qty provided (to approve none, reject the line);
* approve a lower unit price: price approved, 0 ≤ price ≤ price asked.
openIMIS bounds neither (its GUI takes any number); hifhir does, because a review approves what a facility
claimed, it does not claim more on its behalf: a larger quantity or a higher price than the facility asked for
would be paid for care nobody claimed. Only lines that passed the checks can be reviewed (a rejected line has
nothing to approve). Lines not named keep what they had (qty and price approved unset: the provided quantity and
the price the product line gives at processing).
Then: the claim's adjustment (the reviewer's comment) is set, `approved` recomputed (Σ over passed lines of
coalesce(price approved, price adjusted, price asked) × coalesce(qty approved, qty provided), as openIMIS), and
the review status becomes 8 Delivered. When no line is left the claim is rejected (status 1) with the reason all
its lines share, else 1 — as the checks reject a claim whose every line failed (checks.py). Otherwise, unless the
claim still waits for its feedback (feedback status 4), it is processed and valuated at once
(`valuation.process`), in the same transaction: the review was what held it. Legacy also recomputes the
ClaimDedRem "preview" at review; hifhir writes ClaimDedRem when it processes, which here follows immediately
(or after the feedback), so there is nothing to preview. A claim the review rejects keeps a pending feedback request
as it is (openIMIS's review delivery touches the review status only): the feedback may still be delivered, and
then processes nothing.
The reviewer's identity is the write's user, kept in the ClaimResponse's history (the schema has no Adjuster
column); line justifications have no FHIR element in the IG profile and are not recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Connection, String, bindparam, literal, select, union_all, update

from hifhir.domain.claims import (
    DELIVERED,
    IDLE,
    INVALID_ITEM_OR_SERVICE,
    NOT_SELECTED,
    REJECTED_BY_MEDICAL_OFFICER,
    SELECTED,
    valuation,
)
from hifhir.domain.claims.feedback import SelectionRule, _chosen
from hifhir.store.tables import (
    CLAIM_CHECKED,
    CLAIM_REJECTED,
    LINE_REJECTED,
    claim,
    claim_item,
    claim_service,
)

ZERO, CENT = Decimal(0), Decimal("0.01")
LINE_TABLES = {"item": claim_item, "service": claim_service}


class ReviewError(ValueError):
    """A review that cannot be recorded (the API answers 422 unless a subclass says otherwise)."""


class NotPending(ReviewError):
    """The claim is not awaiting a review: not checked, never selected, not selected, bypassed or reviewed."""


class LineReviewError(ReviewError):
    """One line's decision is not acceptable; `field` is `quantity` or `price` (or None: the line itself)."""

    def __init__(self, message: str, line: LineReview, field: str | None) -> None:
        super().__init__(message)
        self.line = line
        self.field = field


@dataclass(frozen=True, slots=True)
class LineReview:
    """The reviewer's decision on one line: reject it, or approve a quantity and/or a unit price (None: as is)."""

    kind: str  # item | service
    line_pk: int
    rejected: bool = False
    qty_approved: Decimal | None = None
    price_approved: Decimal | None = None


def is_pending(status: int, review_status: int, deleted: bool = False) -> bool:
    """Whether a claim in this state takes a review."""
    return not deleted and status == CLAIM_CHECKED and review_status == SELECTED


def may_process(review_status: int, feedback_status: int) -> bool:
    """Whether a checked claim may be processed: it waits for neither a review nor a feedback."""
    return review_status != SELECTED and feedback_status != SELECTED


# --- selection -----------------------------------------------------------------------------------------------


def select_for_review(conn: Connection, claim_pk: int, *, rule: SelectionRule, today: date) -> bool:
    """Apply the selection rule to a checked claim (status 4, review Idle): True when it is now Selected (4),
    False when the rule left it out (2) or is `off` (nothing written). ValueError when the claim does not exist,
    is not checked, or went through the review selection already."""
    if rule.kind == "off":
        return False
    c = conn.execute(select(claim.c.status, claim.c.review_status, claim.c.claimed, claim.c.icd_code)
                     .where(claim.c.pk == claim_pk)).first()
    if c is None or c.status != CLAIM_CHECKED:
        raise ValueError(f"Claim {claim_pk} is not a checked claim (status {CLAIM_CHECKED})")
    if c.review_status != IDLE:
        raise ValueError(f"Claim {claim_pk} went through review selection already (status {c.review_status})")
    chosen = _chosen(conn, claim_pk, rule, c.claimed or ZERO, c.icd_code, today)
    conn.execute(update(claim).where(claim.c.pk == claim_pk)
                 .values(review_status=SELECTED if chosen else NOT_SELECTED))
    return chosen


# --- delivery ------------------------------------------------------------------------------------------------


def _lines_statement() -> Any:
    parts = [select(literal(kind, String).label("kind"), t.c.pk, t.c.status, t.c.rejection_reason, t.c.qty_provided,
                    t.c.qty_approved, t.c.price_asked, t.c.price_approved, t.c.price_adjusted)
             .where(t.c.claim_pk == bindparam("claim")) for kind, t in LINE_TABLES.items()]
    return union_all(*parts)


_LINES = _lines_statement()
_HEAD = select(claim.c.status, claim.c.review_status, claim.c.feedback_status, claim.c.deleted)
_LINE_UPDATES = {kind: update(t).where(t.c.pk == bindparam("line")) for kind, t in LINE_TABLES.items()}


def deliver(conn: Connection, claim_pk: int, lines: Iterable[LineReview], *, adjustment: str | None,
            today: date, now: int) -> int:
    """Record a medical officer's review (see the module docstring); returns the claim's new status: 1 when no
    line is left, 4 when it still waits for its feedback, else what processing made of it (8, 16, or 1)."""
    head = conn.execute(_HEAD.where(claim.c.pk == claim_pk)).first()
    if head is None or not is_pending(head.status, head.review_status, head.deleted):
        raise NotPending(f"Claim {claim_pk} is not awaiting a review (claim status "
                         f"{head.status if head else '?'}, review status {head.review_status if head else '?'})")
    rows = {(r.kind, r.pk): r for r in conn.execute(_LINES, {"claim": claim_pk})}
    decisions: dict[tuple[str, int], LineReview] = {}
    for review in lines:
        row = rows.get((review.kind, review.line_pk))
        if row is None or row.status == LINE_REJECTED:
            raise LineReviewError("Only the claim's lines that passed the checks can be reviewed", review, None)
        if (review.kind, review.line_pk) in decisions:
            raise LineReviewError("A line is reviewed once", review, None)
        if not review.rejected:
            _check_bounds(review, row)
        decisions[(review.kind, review.line_pk)] = review

    updates: dict[str, list[dict[str, object]]] = {kind: [] for kind in LINE_TABLES}
    state: dict[tuple[str, int], tuple[int, int, Decimal, Decimal]] = {}  # key → status, reason, qty, unit price
    for key, row in rows.items():
        review = decisions.get(key)
        qty = row.qty_approved if row.qty_approved is not None else row.qty_provided
        price = next(p for p in (row.price_approved, row.price_adjusted, row.price_asked) if p is not None)
        status, reason = row.status, row.rejection_reason
        if review is not None and review.rejected:
            status, reason, qty = LINE_REJECTED, REJECTED_BY_MEDICAL_OFFICER, ZERO
            updates[key[0]].append({"line": key[1], "status": status, "rejection_reason": reason,
                                    "qty_approved": ZERO})
        elif review is not None and (review.qty_approved is not None or review.price_approved is not None):
            values: dict[str, object] = {"line": key[1]}
            if review.qty_approved is not None:
                qty = values["qty_approved"] = review.qty_approved
            if review.price_approved is not None:
                price = values["price_approved"] = review.price_approved
            updates[key[0]].append(values)
        state[key] = (status, reason, qty, price)
    for kind, values_list in updates.items():
        # Rows differ in the columns they set: one statement per shape, each run for all its rows.
        by_shape: dict[tuple[str, ...], list[dict[str, object]]] = {}
        for values in values_list:
            by_shape.setdefault(tuple(sorted(values)), []).append(values)
        for shape, batch in by_shape.items():
            stmt = _LINE_UPDATES[kind].values({c: bindparam(c) for c in shape if c != "line"})
            conn.execute(stmt, batch)

    passed = [s for s in state.values() if s[0] != LINE_REJECTED]
    changes: dict[str, object] = {"review_status": DELIVERED, "adjustment": adjustment}
    if passed:
        # rounded per line, half up, as valuation rounds what legacy stores in a decimal(18,2)
        changes["approved"] = sum(((qty * price).quantize(CENT, rounding=ROUND_HALF_UP)
                                   for _, _, qty, price in passed), ZERO)
        new_status = CLAIM_CHECKED
    else:
        reasons = {reason for _, reason, _, _ in state.values()}
        changes.update(status=CLAIM_REJECTED, approved=ZERO,
                       rejection_reason=reasons.pop() if len(reasons) == 1 else INVALID_ITEM_OR_SERVICE)
        new_status = CLAIM_REJECTED
    conn.execute(update(claim).where(claim.c.pk == claim_pk).values(changes))
    if new_status == CLAIM_CHECKED and may_process(DELIVERED, head.feedback_status):
        new_status = valuation.process(conn, claim_pk, today=today, now=now)
    return new_status


def _check_bounds(review: LineReview, row: Any) -> None:
    qty_provided: Decimal = row.qty_provided
    price_asked: Decimal = row.price_asked
    if review.qty_approved is not None and not ZERO < review.qty_approved <= qty_provided:
        raise LineReviewError(f"The approved quantity must be above 0 and at most the {qty_provided} provided "
                              "(to approve none, reject the line with reason -1)", review, "quantity")
    if review.price_approved is not None and not ZERO <= review.price_approved <= price_asked:
        raise LineReviewError(f"The approved unit price must be between 0 and the {price_asked} asked", review,
                              "price")
