"""Commission bills (what the scheme owes its enrolment officers) and fees bills (what it owes the payments
platform), created by the monthly business events that give rise to them (openIMIS calcrule_commission and the
"overview of commissions" report; the IG's bill-type `commission` and `fees`). No HTTP, no FHIR JSON: the Bill kind
(`hifhir.fhir.profiles.invoice`) renders these rows; the amounts, codes and suffix rule are those of
`hifhir.domain.invoicing` (its module docstring).

**A month** (`period`): both runs bill a calendar month once it is over (a run for the current or a future month is
refused: contributions and payments of the rest of the month would be left out for good). The bill's subject is
that month: `subject_type` `period`, `subject_pk` = YYYYMM (e.g. 202610), which is how a second run finds what is
already billed: running again for the same month creates nothing for a payee already billed, and does not add a
contribution or payment recorded after the first run (bill it by hand or cancel and re-run).

**Commission bills** (`commission_bills`): one per enrolment officer who sold (`policy.officer_pk`) a current policy
with contributions paid in the month (`premium.pay_date`; current premiums, photo fees excluded: they are no
contribution):
* type `commission`, payee the officer (`payee_type` `enrolment-officer`), issued on the run date, due 30 days
  later (`BILL_DUE_DAYS`), status validated; code `CM-<officer code>-<YYYY-MM>` with the `-2` suffix rule;
  `terms` states the rate and the due date;
* one line per contribution: type `premium`, line_pk the premium, code = its receipt, description = the product
  and the family's head (or the policy holder) of the policy, quantity 1. **Base and commission**: the unit price
  is the contribution (the IG's `base` component shows what the officer collected) and the deduction is the part
  the scheme keeps, contribution − commission, so the line's net is the commission: rate × contribution rounded
  half-up to the cent, rounded per contribution (as each line shows it), the bill's total being their sum. Not a
  discount rate of (1 − rate): discounts are rounded on their own (`line_amounts`), which would round a half-cent
  commission down, and a rate is stored with two decimals only. The same shape as a claim-batch line (claimed,
  deduction, remunerated).

**Fees** (`payment_fee`): the platform's tariff is configuration (`HIFHIR_PAYMENT_FEE_PERCENT`,
`HIFHIR_PAYMENT_FEE_FIXED`; both 0 by default: no fees). An accepted payment (PaymentNotice active, when it is
written or becomes active) records its fee in `payment_notice.fees`: percent × amount + fixed, rounded half-up to
the cent; none (NULL) without a tariff or for a payment not accepted. A payment withdrawn later keeps its fee
recorded but is no longer billed (only accepted payments are).

**Fees bills** (`fees_bill`): one per month, over the accepted payments of that month (`payment_date`) with a fee:
* type `fees`, payee the payments platform (`payee_type` `payments-platform`, `payee_pk` 0: there is no register
  of platforms; FHIR shows the configured name), code `FE-<YYYY-MM>` with the suffix rule, dates and status as
  commissions;
* one line per payment: type `payment`, line_pk the notice, code = the payment reference (the notice id without
  one), description = what was paid (invoice or bill code) and the amount, quantity 1, unit price = the fee.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, insert, select

from hifhir.config import SCHEME_CURRENCY
from hifhir.domain.invoicing import (
    BILL_DUE_DAYS,
    TYPE_COMMISSION,
    TYPE_FEES,
    ZERO,
    LineIn,
    cents,
    free_code,
    line_rows,
    new_ids,
    totals_of,
)
from hifhir.domain.payments import ACCEPTED
from hifhir.store.tables import (
    INVOICE_VALIDATED,
    bill,
    bill_line,
    insuree,
    invoice,
    is_current,
    officer,
    payment_notice,
    policy,
    policy_holder,
    premium,
    product,
)

# payee_type / subject_type of these bills (invoicing's constants name the others)
OFFICER, PAYMENTS_PLATFORM, PERIOD = "enrolment-officer", "payments-platform", "period"
PLATFORM_PK = 0  # payee_pk of the payments platform: no register holds it
# line_type: what line_pk points at
LINE_PREMIUM, LINE_PAYMENT = "premium", "payment"
HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class Month:
    year: int
    month: int

    @property
    def first(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def last(self) -> date:
        return date(self.year, self.month, calendar.monthrange(self.year, self.month)[1])

    @property
    def key(self) -> int:  # subject_pk of the month's bills
        return self.year * 100 + self.month

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def _check_over(period: Month, today: date) -> None:
    if not 1 <= period.month <= 12:
        raise ValueError(f"month {period.month} is not 1..12")
    if period.last >= today:
        raise ValueError(f"{period} is not over yet (today is {today.isoformat()})")


def _billed(conn: Connection, type_code: str, period: Month) -> set[tuple[str, int]]:
    """(payee type, payee pk) of the current bills of this type already made for the month."""
    return {(r.payee_type, r.payee_pk) for r in conn.execute(
        select(bill.c.payee_type, bill.c.payee_pk).where(
            bill.c.type_code == type_code, bill.c.subject_type == PERIOD, bill.c.subject_pk == period.key,
            is_current(bill)))}


def _insert_bill(conn: Connection, values: dict[str, Any], lines: list[LineIn], now: int) -> int:
    row = {**new_ids(), "version_id": 0, "last_updated": now, "status": INVOICE_VALIDATED,
           "currency": SCHEME_CURRENCY, **values, **totals_of(lines)}
    pk = int(conn.execute(insert(bill), row).inserted_primary_key[0])
    conn.execute(insert(bill_line), line_rows("bill", pk, lines))
    return pk


# --- commissions ---------------------------------------------------------------------------------------------------


def commission(contribution: Decimal, rate_percent: Decimal) -> Decimal:
    """The officer's share of one contribution, rounded half-up to the cent."""
    return cents(contribution * rate_percent / HUNDRED)


def commission_line(premium_pk: int, receipt: str, description: str, contribution: Decimal,
                    rate_percent: Decimal) -> LineIn:
    """Unit price = the contribution, deduction = what the scheme keeps: the net is the commission (module)."""
    amount = Decimal(contribution)
    return LineIn(LINE_PREMIUM, premium_pk, receipt, description, None, amount,
                  deduction=amount - commission(amount, rate_percent))


def _who(row: Any) -> str:
    """Whose policy: the family (by its head) in the informal sector, the policy holder in the formal one."""
    if row.family_pk is not None and row.chf_id is not None:
        return f"family of {row.chf_id} {row.last_name} {row.other_names}"
    if row.holder_code is not None:
        return f"policy holder {row.holder_code} {row.trade_name}"
    return f"policy {row.policy_id}"


def commission_bills(conn: Connection, year: int, month: int, rate_percent: Decimal, *, today: date,
                     now: int) -> list[int]:
    """Create the month's commission bills (module docstring); returns the new bills' pks (none for officers
    already billed for the month). The caller records the FHIR versions (kind `bill`)."""
    period = Month(year, month)
    _check_over(period, today)
    if not ZERO < rate_percent <= HUNDRED:
        raise ValueError(f"the commission rate is a percentage above 0 and at most 100, not {rate_percent}")
    rows = conn.execute(
        select(premium.c.pk, premium.c.receipt, premium.c.amount, policy.c.officer_pk, policy.c.family_pk,
               policy.c.id.label("policy_id"),
               product.c.code.label("product_code"), product.c.name.label("product_name"), insuree.c.chf_id,
               insuree.c.last_name, insuree.c.other_names, policy_holder.c.code.label("holder_code"),
               policy_holder.c.trade_name)
        .select_from(premium.join(policy, policy.c.pk == premium.c.policy_pk)
                     .join(product, product.c.pk == policy.c.product_pk)
                     .outerjoin(insuree, insuree.c.pk == policy.c.head_insuree_pk)
                     .outerjoin(policy_holder, policy_holder.c.pk == policy.c.policy_holder_pk))
        .where(premium.c.pay_date >= period.first, premium.c.pay_date <= period.last,
               premium.c.is_photo_fee.is_(False), is_current(premium), is_current(policy),
               policy.c.officer_pk.is_not(None))
        .order_by(premium.c.pay_date, premium.c.pk)).all()
    billed = {pk for kind, pk in _billed(conn, TYPE_COMMISSION, period) if kind == OFFICER}
    by_officer: dict[int, list[LineIn]] = defaultdict(list)
    for r in rows:
        if r.officer_pk not in billed:
            by_officer[r.officer_pk].append(commission_line(
                r.pk, r.receipt, f"{r.product_code} {r.product_name}: {_who(r)}", r.amount, rate_percent))
    if not by_officer:
        return []
    codes = {r.pk: r.code for r in conn.execute(select(officer.c.pk, officer.c.code).where(
        officer.c.pk.in_(sorted(by_officer))))}
    due = today + timedelta(days=BILL_DUE_DAYS)
    created = []
    for officer_pk in sorted(by_officer, key=lambda pk: codes[pk]):
        created.append(_insert_bill(conn, {
            "code": free_code(conn, bill, f"CM-{codes[officer_pk]}-{period}"),
            "type_code": TYPE_COMMISSION,
            "subject_type": PERIOD, "subject_pk": period.key,
            "payee_type": OFFICER, "payee_pk": officer_pk,
            "date_issued": today, "date_due": due,
            "note": f"Commission on the contributions collected in {period}",
            "terms": f"{rate_percent.normalize():f} % of the contributions: due {due}",
        }, by_officer[officer_pk], now))
    return created


# --- payment-platform fees -------------------------------------------------------------------------------------------


def payment_fee(amount: Decimal, percent: Decimal, fixed: Decimal) -> Decimal | None:
    """The platform's fee for an accepted payment of `amount`; None without a tariff (module docstring)."""
    if not percent and not fixed:
        return None
    return cents(Decimal(amount) * percent / HUNDRED + fixed)


def fees_bill(conn: Connection, year: int, month: int, *, today: date, now: int) -> int | None:
    """Create the month's fees bill (module docstring); returns its pk, or None when the month is billed already or
    has no accepted payment with a fee. The caller records the FHIR version (kind `bill`)."""
    period = Month(year, month)
    _check_over(period, today)
    if _billed(conn, TYPE_FEES, period):
        return None
    n = payment_notice
    rows = conn.execute(
        select(n.c.pk, n.c.id, n.c.reference, n.c.amount, n.c.fees, n.c.payment_date,
               invoice.c.code.label("invoice_code"), bill.c.code.label("bill_code"))
        .select_from(n.outerjoin(invoice, invoice.c.pk == n.c.invoice_pk).outerjoin(bill, bill.c.pk == n.c.bill_pk))
        .where(n.c.payment_date >= period.first, n.c.payment_date <= period.last, n.c.detail_status == ACCEPTED,
               n.c.fees > 0, is_current(n))
        .order_by(n.c.payment_date, n.c.pk)).all()
    if not rows:
        return None
    lines = [LineIn(LINE_PAYMENT, r.pk, r.reference or r.id,
                    f"Payment of {r.invoice_code or r.bill_code} on {r.payment_date}: {r.amount}", None, r.fees)
             for r in rows]
    due = today + timedelta(days=BILL_DUE_DAYS)
    return _insert_bill(conn, {
        "code": free_code(conn, bill, f"FE-{period}"),
        "type_code": TYPE_FEES,
        "subject_type": PERIOD, "subject_pk": period.key,
        "payee_type": PAYMENTS_PLATFORM, "payee_pk": PLATFORM_PK,
        "date_issued": today, "date_due": due,
        "note": f"Payment-platform fees of the payments accepted in {period}",
        "terms": f"Due {due}",
    }, lines, now)
