"""Payments against invoices and bills, and the reconciliation that clears them (domain §2.23, §3.6).

What a payment does to the invoice or bill it pays, to the policy a contribution invoice is for, and what a
reconciliation report changes. SQL on the invoice, premium and payment tables; no HTTP, no FHIR JSON. The FHIR
mapping (PaymentNotice, PaymentReconciliation) is `hifhir.fhir.profiles.payment`.

Decisions where openIMIS leaves a choice or where its rules do not fit installments:

* **Partial payments are accepted.** openIMIS's PaymentInvoice service refuses a payment whose AmountReceived is not
  exactly the Σ of the invoice's line totals. hifhir accepts installments: a payment may be smaller than what is
  left to pay; the invoice stays validated (1, FHIR `issued`) with `amount_paid` recorded, and becomes paid (2, FHIR
  `balanced`, `date_paid` = the completing payment's date) once its accepted payments reach `amount_total`.
  Contributions are paid in installments (a product's `max_installments`; the Contract path accepts partial
  premiums), and the issue asks for "issued → balanced (or partially paid per the rules)".
* **Over-payment** — a payment beyond what is left (`amount_total − amount_paid`), which includes any payment of an
  invoice already paid — is refused (`PaymentRefused`, 422) and nothing is written: the platform must not take
  more than is owed, and an extra amount would have nowhere to go (no credit notes).
* **Payable states**: validated (1) and unpaid (6). Paid (2) and reconciliated (7) fall under the over-payment
  rule. Draft (0), cancelled (3), deleted (4) and suspended (5) refuse any payment (`PaymentConflict`, 409: the
  state of the invoice, not the payment, is at fault).
* **Payment statuses** (openIMIS DetailPaymentInvoice.Status 0 rejected, 1 accepted, 2 refunded, 3 cancelled):
  - `active` → 1 accepted: counts toward the invoice;
  - `cancelled` on a new notice → 3 cancelled: the validated or paid invoice is suspended (5), as openIMIS's
    `cancel`; an accepted payment cancelled later is a refund → 2 refunded: its amount leaves `amount_paid` and the
    invoice is suspended (openIMIS `refund` → 5);
  - `entered-in-error` → 0 rejected: a new one changes nothing (a notice sent by mistake should not suspend
    anything, unlike openIMIS); one that corrects an accepted payment takes its amount out of `amount_paid` and a
    paid invoice returns to validated (the payment never happened; nothing to suspend);
  - `draft` → 0 (openIMIS has no pending detail status): no effect until it becomes active.
  A notice moves draft → any status, active → cancelled or entered-in-error; cancelled and entered-in-error are
  final (`transition`).
* **Contribution invoices** (`invoice.policy_pk`): every accepted payment is a contribution (premium) of the policy:
  receipt = the payment reference (the notice id when there is none or it exceeds a receipt's 50 characters),
  pay date = the payment date, pay type `B` (a payments platform's transfer), category C. Then the Contract path's
  activation (`hifhir.domain.policy.activation_date`: an idle policy whose contributions cover its value, within
  the product's installments) turns it active and re-versions the Contract, the Coverage and the members whose
  Patient.active changes. A receipt already used for the product is a 409. A withdrawn payment (refund,
  correction) deletes its premium; a policy it activated stays active (openIMIS never deactivates a policy on a
  payment change: suspension is an explicit act on the Contract).
* **Reconciliation** (`reconcile`): a reconciliation report lists accepted payments; while it is active each is
  reconciliated (PaymentNotice.paymentStatus `cleared`, openIMIS ReconciliationStatus 1) and points at it. A
  payment is cleared by one reconciliation at most; a cancelled (or draft) report leaves its payments `paid`. The
  invoices are not moved to 7 reconciliated: hifhir keeps reconciliation on the payments (where openIMIS's
  PaymentInvoice keeps it), and an invoice paid in several installments may be only partly reconciled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, false, insert, null, select, update
from sqlalchemy.exc import IntegrityError

from hifhir.store.fast import DriverQuery
from hifhir.store.tables import (
    INVOICE_CANCELLED,
    INVOICE_DELETED,
    INVOICE_DRAFT,
    INVOICE_PAID,
    INVOICE_RECONCILIATED,
    INVOICE_SUSPENDED,
    INVOICE_UNPAID,
    INVOICE_VALIDATED,
    bill,
    invoice,
    is_current,
    payment_notice,
    policy,
    premium,
)

if TYPE_CHECKING:
    from hifhir.fhir.kind import WriteContext

# openIMIS DetailPaymentInvoice.Status
REJECTED, ACCEPTED, REFUNDED, CANCELLED = 0, 1, 2, 3
# PaymentNotice.status ↔ the detail status a new notice gets
DETAIL_STATUS = {"active": ACCEPTED, "cancelled": CANCELLED, "entered-in-error": REJECTED, "draft": REJECTED}
NEXT_STATUSES = {"draft": {"draft", "active", "cancelled", "entered-in-error"},
                 "active": {"active", "cancelled", "entered-in-error"},
                 "cancelled": {"cancelled"}, "entered-in-error": {"entered-in-error"}}
PAID, CLEARED = "paid", "cleared"  # PaymentNotice.paymentStatus ↔ openIMIS ReconciliationStatus 0 / 1

PAYABLE = frozenset({INVOICE_VALIDATED, INVOICE_UNPAID, INVOICE_PAID, INVOICE_RECONCILIATED})
STATUS_WORDS = {INVOICE_DRAFT: "a draft", INVOICE_CANCELLED: "cancelled", INVOICE_DELETED: "deleted",
                INVOICE_SUSPENDED: "suspended"}
PAY_TYPE = "B"  # bank transfer: what a payments platform settles
RECEIPT_MAX = 50  # premium.receipt
ZERO = Decimal(0)


class PaymentError(ValueError):
    """A payment the rules refuse; nothing it would have changed is written (the caller's transaction rolls
    back). `about` names what is at fault: the `amount`, the `invoice` paid, the payment `reference` or the
    `status` change."""

    def __init__(self, message: str, about: str = "invoice") -> None:
        super().__init__(message)
        self.about = about


class PaymentRefused(PaymentError):
    """The payment itself breaks a rule (over-payment, a payment not accepted)."""


class PaymentConflict(PaymentError):
    """The current state forbids it (a cancelled invoice, a receipt already used, a cleared payment)."""


# --- the invoice or bill a payment is for ------------------------------------------------------------------------


@dataclass(slots=True)
class Payable:
    """An invoice (money owed to the scheme) or a bill (owed by it), as a payment sees it. `kind` is both the
    table's and the FHIR kind's name."""

    kind: str
    pk: int
    id: str
    code: str
    status: int
    amount_total: Decimal
    amount_paid: Decimal
    policy_pk: int | None
    version: int  # as locked by `find_payable`: this transaction takes the next one

    @property
    def left(self) -> Decimal:
        return self.amount_total - self.amount_paid


def _payable_query(table: Any, column: str) -> DriverQuery:
    # FOR UPDATE (PostgreSQL): concurrent payments of one invoice add up one after the other.
    policy_pk = table.c.policy_pk if table is invoice else null()
    return DriverQuery(
        select(table.c.pk, table.c.id, table.c.code, table.c.status, table.c.amount_total, table.c.amount_paid,
               policy_pk.label("policy_pk"), table.c.version_id)
        .where(table.c[column] == bindparam("v"), is_current(table))
        .with_for_update(of=table))


_FIND = {(name, column): _payable_query(table, column)
         for name, table in (("invoice", invoice), ("bill", bill)) for column in ("id", "code")}


def find_payable(conn: Connection, kinds: Iterable[str], column: str, value: Any) -> Payable | None:
    """The current invoice or bill (of `kinds`, in that order) whose `column` (id or code) is `value`,
    locked for the payment."""
    for kind in kinds:
        rows = _FIND[(kind, column)].rows(conn, {"v": value})
        if rows:
            r = rows[0]
            return Payable(kind, int(r.pk), r.id, r.code, int(r.status), r.amount_total, r.amount_paid,
                           r.policy_pk, int(r.version_id))
    return None


def _store(ctx: WriteContext, p: Payable, paid: Decimal, status: int, date_paid: date | None) -> None:
    ctx.versioned_update(p.kind, [p.pk], {"amount_paid": paid, "status": status, "date_paid": date_paid},
                         locked={p.pk: (p.id, p.version)})
    p.amount_paid, p.status = paid, status


# --- rules ----------------------------------------------------------------------------------------------------


def check_payable(p: Payable, amount: Decimal) -> None:
    """May `amount` be paid against `p` now? Raises PaymentConflict / PaymentRefused."""
    what = f"{p.kind.capitalize()} {p.code}"
    if p.status not in PAYABLE:
        raise PaymentConflict(f"{what} is {STATUS_WORDS.get(p.status, f'in status {p.status}')}: it accepts "
                              "no payment")
    if amount <= ZERO:
        raise PaymentRefused("A payment amount must be positive", "amount")
    if amount > p.left:
        owed = "nothing is left to pay" if p.left <= ZERO else f"only {p.left} is left to pay"
        raise PaymentRefused(f"Over-payment: {what} totals {p.amount_total} and {p.amount_paid} is paid; "
                             f"{owed}, not {amount}", "amount")


def transition(old: str, new: str) -> None:
    if new not in NEXT_STATUSES[old]:
        raise PaymentConflict(f"A {old} payment notice cannot become {new}"
                              + (" (it is final)" if old in ("cancelled", "entered-in-error") else ""), "status")


# --- effects --------------------------------------------------------------------------------------------------


def receipt_for(reference: str | None, notice_id: str) -> str:
    return reference if reference and len(reference) <= RECEIPT_MAX else notice_id


def accept(ctx: WriteContext, p: Payable, amount: Decimal, pay_date: date, receipt: str) -> None:
    """An accepted payment: added to what is paid (the invoice paid once complete); a contribution invoice's
    payment becomes a contribution of its policy, which may activate it."""
    check_payable(p, amount)
    paid = p.amount_paid + amount
    if paid == p.amount_total:
        _store(ctx, p, paid, INVOICE_PAID, pay_date)
    else:  # an installment: still owed (validated or unpaid)
        _store(ctx, p, paid, p.status, None)
    if p.policy_pk is not None:
        add_contribution(ctx, p.policy_pk, amount, pay_date, receipt)


def suspend(ctx: WriteContext, p: Payable) -> None:
    """A cancelled payment stops the invoice (openIMIS cancel → 5 suspended) unless it is already stopped."""
    if p.status in (INVOICE_VALIDATED, INVOICE_UNPAID, INVOICE_PAID, INVOICE_RECONCILIATED):
        _store(ctx, p, p.amount_paid, INVOICE_SUSPENDED, None)


def withdraw(ctx: WriteContext, p: Payable, amount: Decimal, receipt: str, *, refund: bool) -> None:
    """An accepted payment taken back: refunded (the invoice is suspended) or entered in error (a paid invoice
    returns to validated). Its contribution, if any, is deleted."""
    paid = max(p.amount_paid - amount, ZERO)
    if refund:
        _store(ctx, p, paid, INVOICE_SUSPENDED if p.status in PAYABLE else p.status, None)
    elif p.status in (INVOICE_PAID, INVOICE_RECONCILIATED):
        _store(ctx, p, paid, INVOICE_VALIDATED, None)
    else:
        _store(ctx, p, paid, p.status, None)
    if p.policy_pk is not None:
        remove_contribution(ctx, p.policy_pk, receipt)


# --- the policy of a contribution invoice ---------------------------------------------------------------------

# The premium takes its product from the current policy row: none is inserted when the policy is gone (which the
# activation's read of the policy then finds). No one waits for it: on PostgreSQL it travels with that read.
_ADD_PREMIUM = DriverQuery(insert(premium).from_select(
    ["policy_pk", "product_pk", "amount", "receipt", "pay_date", "pay_type", "is_photo_fee", "created"],
    select(policy.c.pk, policy.c.product_pk, bindparam("amount", type_=premium.c.amount.type),
           bindparam("receipt", type_=premium.c.receipt.type), bindparam("pay_date", type_=premium.c.pay_date.type),
           bindparam("pay_type", type_=premium.c.pay_type.type), false(),
           bindparam("created", type_=premium.c.created.type))
    .where(policy.c.pk == bindparam("pk"), is_current(policy))))


def add_contribution(ctx: WriteContext, policy_pk: int, amount: Decimal, pay_date: date, receipt: str) -> None:
    """The payment as a contribution (premium) of the policy, then the Contract path's activation
    (`activate_if_paid`), so both paths activate the same way."""
    from hifhir.fhir.profiles.contract import PolicyGone, activate_if_paid

    try:  # the partial unique index (product, receipt) decides; the error rolls the whole write back
        _ADD_PREMIUM.run(ctx.conn, {"pk": policy_pk, "amount": amount, "receipt": receipt, "pay_date": pay_date,
                                    "pay_type": PAY_TYPE, "created": ctx.now}, defer=True)
        # The Contract shows the contribution: written into its stored body (unless it does not come last)
        ctx.mark_patch("contract", policy_pk, {"premium": {
            "receipt": receipt, "amount": amount, "pay_date": pay_date, "pay_type": PAY_TYPE}})
        activate_if_paid(ctx, policy_pk, added_receipt=receipt)
    except IntegrityError as exc:
        if ctx.conflict_for(exc) is not None:  # a statement this write sent before (e.g. its notice's insert)
            raise
        raise PaymentConflict(f"Receipt {receipt} is already used for a contribution to this policy's product; "
                              "the payment reference must be new", "reference") from None
    except PolicyGone:  # deleted after its invoice was issued: a payment cannot resurrect it
        raise PaymentConflict("The policy this invoice is for no longer exists; cancel the invoice") from None


def remove_contribution(ctx: WriteContext, policy_pk: int, receipt: str) -> None:
    done = ctx.conn.execute(update(premium).where(
        premium.c.policy_pk == policy_pk, premium.c.receipt == receipt, is_current(premium)).values(deleted=True))
    if done.rowcount:
        ctx.mark("contract", policy_pk)


# --- reconciliation -----------------------------------------------------------------------------------------------

_LINK = update(payment_notice).where(payment_notice.c.pk.in_(bindparam("pks", expanding=True))).values(
    reconciliation_pk=bindparam("rec"), reconciliation_ref=None, payment_status=bindparam("state"))
_UNLINK = update(payment_notice).where(payment_notice.c.pk.in_(bindparam("pks", expanding=True))).values(
    reconciliation_pk=None, reconciliation_ref=bindparam("ref"), payment_status=PAID)


def reconcile(ctx: WriteContext, reconciliation_pk: int, reconciliation_ref: str, notices: Iterable[Any], *,
              cleared: bool, previous: Iterable[int] = ()) -> None:
    """A reconciliation written with the payments it lists (`notices`: rows with pk, reconciliation_pk and
    payment_status): they point at it and are `cleared` while it is active (`paid` otherwise). Those it listed
    before (`previous`) and no longer does are `paid` again and keep naming it as an external reference
    (`reconciliation_ref`). Every notice whose rendering changes is re-versioned, and so is another
    reconciliation a notice leaves."""
    state = CLEARED if cleared else PAID
    listed = {n.pk for n in notices}
    changed = sorted(n.pk for n in notices if n.reconciliation_pk != reconciliation_pk or n.payment_status != state)
    for n in notices:
        if n.reconciliation_pk not in (None, reconciliation_pk):
            ctx.mark("payment-reconciliation", n.reconciliation_pk)
    if changed:
        ctx.conn.execute(_LINK, {"pks": changed, "rec": reconciliation_pk, "state": state})
    dropped = sorted(set(previous) - listed)
    if dropped:
        ctx.conn.execute(_UNLINK, {"pks": dropped, "ref": reconciliation_ref})
    for pk in (*changed, *dropped):
        ctx.mark("payment-notice", pk)
