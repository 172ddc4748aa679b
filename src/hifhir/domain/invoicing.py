"""Invoices (money owed to the scheme) and bills (money the scheme owes), created by the business events that
give rise to them (reference/openimis-domain.md §2.23, §3.6). No HTTP, no FHIR JSON: the Invoice and Bill kinds
(`hifhir.fhir.profiles.invoice`) render these rows.

**Amounts** follow the IG's priceComponent formulas (ig/README.md §6), so that what FHIR shows and what is stored
agree to the cent (`line_amounts`): base = quantity × unit price; discount = base × discount rate, rounded half-up
to the cent (the rounding of the policy value's own discounts, `hifhir.domain.policy`); deduction = an amount;
net = base − discount − deduction; tax = net × tax rate, rounded half-up (the IG computes it from the unrounded
discount: a cent at most apart, and never used here: no rule sets a tax); total = net + tax. An invoice's
`amount_discount` / `amount_net` / `amount_total` are the sums over its lines.

**Contribution invoice of a policy** (`invoice_for_policy`, openIMIS `PolicyCreatedInvoice`):
* one per policy (`invoice.policy_pk`): a second call finds it and creates nothing;
* type `contribution` with subject the family and payer the head insuree (informal sector), type `contract` with
  subject and payer the policy holder (formal sector);
* code `IV-<product code>-<head CHFID>-<YYYY-MM of the start date>` (the policy holder's code when a formal-sector
  policy names no head); should a current invoice already use it (a policy deleted and enrolled again in the same
  month), `-2`, `-3`… is appended, as the code is unique among current invoices;
* issued on the enrolment date, due on the effective date (or the enrolment date while idle), status validated;
  `terms` (FHIR paymentTerms) states the due date and, while unpaid, the last day for payment when the product
  sets one (`last_payment_date`); `note` the policy period;
* one line: type policy, the product's code and name, ledger account = the product's premiums account, quantity 1.
  The policy value already includes the discount the product granted (renewal discount at stage R, early-
  enrolment discount at stage N, §3.1.3): the line shows it instead of hiding it, with unit price = the value
  before the discount and discount = the product's percentage as a rate, so that the line's net is exactly the
  policy value. openIMIS sets the renewal discount on top of an already discounted value (and never shows the
  enrolment one); here the discount is shown only when the value really got it (recomputed with
  `policy_value`), and a value that no longer matches the product's current terms is shown undiscounted;
* contributions already recorded with the policy (premiums sent with the Contract, photo fees excluded) are
  counted as paid: `amount_paid` and `date_paid` (the last payment), status paid when they cover the total.

**Bills of a batch run** (`bills_for_run`, openIMIS `BatchPayment` / third-party payment): one bill per (run,
health facility, product) over the claims the run valuated (`claim.run_pk`):
* type `claim-batch`, subject the batch run, payee the facility, issued on the run date, due 30 days later,
  status validated, terms = the product name and the due date;
* code `IV-<product code>-<facility code>-<YYYY-MM>` of the month the run valuated (openIMIS takes the run date's
  month: two catch-up runs in the same month would then share codes), with the same `-2` suffix rule;
* one line per claim: type claim, code = the claim code, description `<ICD code> <ICD name>`, ledger account =
  the product's remuneration account, quantity 1, unit price = what was claimed, deduction = claimed −
  remunerated, so the line's net is what the run remunerated. Relative pricing can remunerate more than was
  claimed: the unit price is then the remunerated amount and the deduction 0 (a negative deduction would read
  as a surcharge);
* a claim whose lines were paid under several products (a national and a regional policy) is split: each
  product's bill gets the remunerated amount of its lines and the claimed amount of its lines; the lines no
  product took (rejected before assignment) go with the first product, so the claim's parts add up to its
  claimed and remunerated amounts;
* calling it again for the same run creates nothing for the (facility, product) pairs already billed.

**Status** (`status` column, openIMIS codes, for the payments that change it):
0 draft, 1 validated (issued and owed; also while partly paid), 2 paid (settled: `amount_paid` ≥ `amount_total`,
`date_paid` set), 3 cancelled, 4 deleted (with the row's `deleted` flag), 5 suspended (a payment was refunded or
cancelled: owed again), 6 unpaid, 7 reconciliated (paid and matched by a reconciliation report).
`amount_paid` is the sum of the accepted payments. FHIR shows 0/1/5/6 as `issued`, 2/7 as `balanced`, 3/4 as
`cancelled` (`hifhir.fhir.profiles.invoice`). A change to these columns must re-version the resource: mark kind
`invoice` or `bill` with the row's pk in the writing WriteContext.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, func, insert, select, union_all, update

from hifhir.config import SCHEME_CURRENCY
from hifhir.domain.policy import (
    NEW,
    SUSPENDED,
    Member,
    ProductTerms,
    last_payment_date,
    policy_value,
)
from hifhir.store.codelists import DIAGNOSIS_LIST
from hifhir.store.fast import DriverQuery
from hifhir.store.tables import (
    INVOICE_CANCELLED,
    INVOICE_PAID,
    INVOICE_UNPAID,
    INVOICE_VALIDATED,
    LINE_PASSED,
    batch_run,
    bill,
    bill_line,
    claim,
    claim_item,
    claim_service,
    code_list_entry,
    health_facility,
    insuree,
    insuree_policy,
    invoice,
    invoice_line,
    is_current,
    policy,
    policy_holder,
    premium,
    product,
)

CENT = Decimal("0.01")
ZERO = Decimal(0)
CODE_MAX = 64
BILL_DUE_DAYS = 30

STATUS_NAMES = {0: "draft", 1: "validated", 2: "paid", 3: "cancelled", 4: "deleted", 5: "suspended",
                6: "unpaid", 7: "reconciliated"}

# invoice-type / bill-type codes (the IG CodeSystems)
TYPE_CONTRIBUTION, TYPE_CONTRACT, TYPE_FUNDING = "contribution", "contract", "funding"
TYPE_CLAIM_BATCH, TYPE_COMMISSION, TYPE_FEES = "claim-batch", "commission", "fees"
INVOICE_TYPES = (TYPE_CONTRIBUTION, TYPE_CONTRACT, TYPE_FUNDING)
BILL_TYPES = (TYPE_CLAIM_BATCH, TYPE_COMMISSION, TYPE_FEES)

# subject_type / payer_type / payee_type: what the *_pk columns point at
FAMILY, POLICY_HOLDER, INSUREE, HEALTH_FACILITY, BATCH_RUN = (
    "family", "policy-holder", "insuree", "health-facility", "batch-run")
# line_type: what line_pk points at
LINE_POLICY, LINE_CLAIM = "policy", "claim"


# --- amounts ---------------------------------------------------------------------------------------------------


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class LineAmounts:
    """The price components of one line (positive amounts; FHIR shows discount and deduction negated)."""

    base: Decimal
    discount: Decimal
    deduction: Decimal
    tax: Decimal

    @property
    def net(self) -> Decimal:
        return self.base - self.discount - self.deduction

    @property
    def total(self) -> Decimal:
        return self.net + self.tax


def line_amounts(quantity: int, unit_price: Decimal, discount_rate: Decimal = ZERO, deduction: Decimal = ZERO,
                 tax_rate: Decimal | None = None) -> LineAmounts:
    """The IG's formulas (module docstring): base, discount, deduction and tax of a line."""
    base = cents(unit_price * quantity)
    discount = cents(base * discount_rate)
    net = base - discount - deduction
    tax = cents(net * tax_rate) if tax_rate else ZERO
    return LineAmounts(base, discount, deduction, tax)


@dataclass(frozen=True, slots=True)
class LineIn:
    line_type: str
    line_pk: int
    code: str
    description: str | None
    ledger_account: str | None
    unit_price: Decimal
    quantity: int = 1
    discount: Decimal = ZERO  # a rate, 0..1
    deduction: Decimal = ZERO

    @property
    def amounts(self) -> LineAmounts:
        return line_amounts(self.quantity, self.unit_price, self.discount, self.deduction)


def line_rows(parent: str, parent_pk: int, lines: list[LineIn]) -> list[dict[str, Any]]:
    rows = []
    for sequence, ln in enumerate(lines, start=1):
        a = ln.amounts
        rows.append({f"{parent}_pk": parent_pk, "sequence": sequence, "line_type": ln.line_type,
                     "line_pk": ln.line_pk, "code": ln.code[:CODE_MAX], "description": ln.description,
                     "ledger_account": ln.ledger_account, "quantity": ln.quantity, "unit_price": ln.unit_price,
                     "discount": ln.discount, "deduction": ln.deduction, "tax_rate": None,
                     "amount_net": a.net, "amount_total": a.total})
    return rows


def totals_of(lines: list[LineIn]) -> dict[str, Decimal]:
    amounts = [ln.amounts for ln in lines]
    return {"amount_discount": sum((a.discount for a in amounts), ZERO),
            "amount_net": sum((a.net for a in amounts), ZERO),
            "amount_total": sum((a.total for a in amounts), ZERO)}


def free_code(conn: Connection, table: Table, base: str) -> str:
    """`base`, or `base-2`, `base-3`… : the first code no current row of the table uses."""
    base = base[:CODE_MAX - 4]
    if not _CODE_TAKEN[table.name].rows(conn, {"code": base}):
        return base  # the usual case, in one indexed lookup
    n = 1
    while True:
        candidates = [base if i == 1 else f"{base}-{i}" for i in range(n, n + 20)]
        taken = set(conn.execute(select(table.c.code).where(table.c.code.in_(candidates), is_current(table)))
                    .scalars())
        free = next((c for c in candidates if c not in taken), None)
        if free is not None:
            return free
        n += 20


_CODE_TAKEN = {t.name: DriverQuery(select(t.c.pk).where(t.c.code == bindparam("code"), is_current(t)).limit(1))
               for t in (invoice, bill)}


def new_ids() -> dict[str, str]:
    """`id` and `uuid` of a new invoice or bill (the same UUID)."""
    new_id = str(uuid.uuid4())
    return {"id": new_id, "uuid": new_id}


# --- the contribution invoice of a policy ------------------------------------------------------------------------

_HOLDER = policy_holder.alias("holder")
_POLICY = DriverQuery(
    select(policy.c.pk, policy.c.family_pk, policy.c.policy_holder_pk, policy.c.head_insuree_pk,
           policy.c.product_pk, policy.c.enroll_date, policy.c.start_date, policy.c.effective_date,
           policy.c.expiry_date, policy.c.status, policy.c.stage, policy.c.value, policy.c.previous_policy_pk,
           insuree.c.chf_id.label("head_chf_id"), _HOLDER.c.code.label("holder_code"))
    .select_from(policy.outerjoin(insuree, insuree.c.pk == policy.c.head_insuree_pk)
                 .outerjoin(_HOLDER, _HOLDER.c.pk == policy.c.policy_holder_pk))
    .where(policy.c.pk == bindparam("pk"), is_current(policy))
)
# Through the driver (store/fast.DriverQuery): these run in every enrolment's write transaction, where
# SQLAlchemy's per-statement work cost more than the statements.
_INVOICE_OF_POLICY = DriverQuery(
    select(invoice.c.pk).where(invoice.c.policy_pk == bindparam("pk"), is_current(invoice)).limit(1))
_PRODUCT = DriverQuery(select(product).where(product.c.pk == bindparam("pk")))
_PAID = DriverQuery(select(func.coalesce(func.sum(premium.c.amount), 0).label("paid"),
                           func.max(premium.c.pay_date).label("last_paid")).where(
    premium.c.policy_pk == bindparam("pk"), is_current(premium), premium.c.is_photo_fee.is_(False)))
_MEMBERS = (
    select(insuree.c.dob, insuree.c.relationship)
    .join(insuree_policy, insuree_policy.c.insuree_pk == insuree.c.pk)
    .where(insuree_policy.c.policy_pk == bindparam("pk"), is_current(insuree_policy))
    .order_by(insuree.c.is_head.desc(), insuree.c.pk)  # family order, as the Contract counts them
)
_EXPIRY = select(policy.c.expiry_date).where(policy.c.pk == bindparam("pk"))


@dataclass(frozen=True, slots=True)
class PolicyFacts:
    """What the contribution invoice of a policy is made from: the policy, its product, its covered members (in
    family order: the head first, then by registration) and the contributions recorded with it. An enrolment
    holds all of it already (`hifhir.fhir.profiles.contract`); `invoice_for_policy` reads it back otherwise."""

    pk: int
    family_pk: int | None
    policy_holder_pk: int | None
    head_insuree_pk: int | None
    who: str  # the head's CHFID, else the policy holder's code, else the policy pk (the invoice code)
    enroll_date: date
    start_date: date
    effective_date: date | None
    expiry_date: date
    stage: str
    value: Decimal
    previous_expiry: date | None
    product: Any  # the product row
    members: list[Member]
    paid: Decimal  # contributions recorded (photo fees excluded) and the last one's date
    last_paid: date | None


def _discount(facts: PolicyFacts, terms: ProductTerms) -> tuple[Decimal, Decimal]:
    """(unit price, discount rate) of a policy's line: the value before the product's discount and its rate when
    the stored value got that discount, else (value, 0). See the module docstring."""
    value = Decimal(facts.value)
    percent = terms.enrolment_discount_perc if facts.stage == NEW else terms.renewal_discount_perc
    if percent <= 0:
        return value, ZERO
    args: dict[str, Any] = {"stage": facts.stage, "enroll_date": facts.enroll_date, "start_date": facts.start_date,
                            "previous_expiry": facts.previous_expiry}
    if policy_value(terms, facts.members, **args) != value:
        return value, ZERO  # the product's terms changed since the value was computed
    undiscounted = policy_value(replace(terms, enrolment_discount_perc=0, renewal_discount_perc=0), facts.members,
                                **args)
    rate = Decimal(percent) / 100
    if undiscounted == value or line_amounts(1, undiscounted, rate).net != value:
        return value, ZERO
    return undiscounted, rate


@dataclass(frozen=True, slots=True)
class NewInvoice:
    """An invoice ready to insert: its row (without pk, version and stamps) and its lines' rows (without the
    parent pk), both in the columns' terms."""

    values: dict[str, Any]
    lines: list[dict[str, Any]]

    def line_rows(self, parent_pk: int) -> list[dict[str, Any]]:
        return [{**ln, "invoice_pk": parent_pk} for ln in self.lines]


def policy_invoice(conn: Connection, facts: PolicyFacts, *, today: date, new_code: bool = True) -> NewInvoice:
    """The contribution invoice of a policy (module docstring), computed from `facts`; the only read is the check
    that its code is free (`new_code` False: for an invoice that has its code already, left out of the values)."""
    product_row = facts.product
    terms = ProductTerms.from_row(product_row)
    unit_price, rate = _discount(facts, terms)
    line = LineIn(LINE_POLICY, facts.pk, product_row.code, product_row.name, product_row.acc_code_premiums,
                  unit_price, discount=rate)
    informal = facts.family_pk is not None
    code = None
    if new_code:
        code = free_code(conn, invoice, f"IV-{product_row.code}-{facts.who}-{facts.start_date:%Y-%m}")
    totals = totals_of([line])
    paid = Decimal(facts.paid)
    settled = paid > 0 and paid >= totals["amount_total"]
    deadline = None if settled else last_payment_date(terms, facts.stage, facts.enroll_date, facts.start_date,
                                                      facts.previous_expiry)
    due = facts.effective_date or facts.enroll_date
    values = {
        **({"code": code} if code is not None else {}),
        "type_code": TYPE_CONTRIBUTION if informal else TYPE_CONTRACT,
        "status": INVOICE_PAID if settled else INVOICE_VALIDATED,
        "subject_type": FAMILY if informal else POLICY_HOLDER,
        "subject_pk": facts.family_pk if informal else facts.policy_holder_pk,
        "payer_type": INSUREE if informal else POLICY_HOLDER,
        "payer_pk": facts.head_insuree_pk if informal else facts.policy_holder_pk,
        "date_issued": min(facts.enroll_date, today),
        "date_due": due,
        "date_paid": facts.last_paid if paid > 0 else None,
        "amount_paid": paid,
        "currency": SCHEME_CURRENCY,
        "note": f"Policy of product {product_row.code} from {facts.start_date} to {facts.expiry_date}"
                + (" (renewal)" if facts.stage != NEW else ""),
        "terms": f"Due {due}" + ("" if deadline is None else f", payable until {deadline}"),
        "policy_pk": facts.pk,
        **totals,
    }
    lines = [{k: v for k, v in row.items() if k != "invoice_pk"} for row in line_rows("invoice", 0, [line])]
    return NewInvoice(values, lines)


def _stored_facts(conn: Connection, policy_pk: int) -> PolicyFacts | None:
    found = _POLICY.rows(conn, {"pk": policy_pk})
    row = found[0] if found else None
    if row is None or row.status == SUSPENDED:
        return None
    product_row = _PRODUCT.rows(conn, {"pk": row.product_pk})[0]
    previous_expiry = (conn.execute(_EXPIRY, {"pk": row.previous_policy_pk}).scalar()
                       if row.previous_policy_pk is not None else None)
    members = [Member(r.dob, r.relationship) for r in conn.execute(_MEMBERS, {"pk": row.pk})]
    paid, last_paid = _PAID.rows(conn, {"pk": row.pk})[0]
    return PolicyFacts(
        pk=row.pk, family_pk=row.family_pk, policy_holder_pk=row.policy_holder_pk,
        head_insuree_pk=row.head_insuree_pk, who=row.head_chf_id or row.holder_code or str(row.pk),
        enroll_date=row.enroll_date, start_date=row.start_date, effective_date=row.effective_date,
        expiry_date=row.expiry_date, stage=row.stage, value=Decimal(row.value), previous_expiry=previous_expiry,
        product=product_row, members=members, paid=Decimal(paid), last_paid=last_paid)


def invoice_for_policy(conn: Connection, policy_pk: int, *, today: date, now: int) -> int | None:
    """Create the contribution invoice of a stored policy (module docstring); returns its pk, or None when the
    policy already has one, is not current or is suspended. Run it in the transaction that wrote the policy, after
    its covered insurees and premiums; the caller records the FHIR version (kind `invoice`). `today` bounds the
    issue date (the enrolment date, never in the future); `now` stamps the row."""
    if _INVOICE_OF_POLICY.rows(conn, {"pk": policy_pk}):
        return None
    facts = _stored_facts(conn, policy_pk)
    if facts is None:
        return None
    new = policy_invoice(conn, facts, today=today)
    pk = int(conn.execute(insert(invoice), {**new.values, **new_ids(), "version_id": 0, "last_updated": now})
             .inserted_primary_key[0])
    conn.execute(insert(invoice_line), new.line_rows(pk))
    return pk


_INVOICE_STATE = DriverQuery(
    select(invoice.c.pk, invoice.c.status, invoice.c.date_issued, invoice.c.date_due, invoice.c.date_paid,
           invoice.c.amount_paid, invoice.c.amount_discount, invoice.c.amount_net, invoice.c.amount_total,
           invoice.c.note, invoice.c.terms)
    .where(invoice.c.policy_pk == bindparam("pk"), is_current(invoice)).limit(1))
_INVOICE_LINES = select(invoice_line).where(invoice_line.c.invoice_pk == bindparam("pk")).order_by(
    invoice_line.c.sequence)
_LINE_COLUMNS = ("line_type", "line_pk", "code", "description", "ledger_account", "quantity", "unit_price",
                 "discount", "deduction", "tax_rate", "amount_net", "amount_total")
# What a Contract write can change on its policy's invoice; the code, parties and type stay (the code is the
# identifier payers quote).
_FOLLOWED = ("status", "date_issued", "date_due", "date_paid", "amount_paid", "amount_discount", "amount_net",
             "amount_total", "note", "terms")
# An invoice past these (cancelled, suspended after a refund, reconciled…) belongs to the payments' history.
_FOLLOWING_STATUSES = (INVOICE_VALIDATED, INVOICE_PAID, INVOICE_UNPAID)


def _open_invoice(conn: Connection, policy_pk: int) -> Any:
    """The policy's current invoice while a Contract write may still change it (`_FOLLOWING_STATUSES`), or None."""
    found = _INVOICE_STATE.rows(conn, {"pk": policy_pk})
    return found[0] if found and found[0].status in _FOLLOWING_STATUSES else None


def follow_policy(conn: Connection, policy_pk: int, *, today: date) -> int | None:
    """After a Contract update of a stored policy: its contribution invoice made to agree with it again — the line
    and totals from the policy's value (an idle policy's members, product or dates changed), what is paid from the
    contributions recorded with it (premiums added or corrected with the Contract, photo fees excluded: the same
    sum `invoice_for_policy` starts from, and that payments keep), and the status from both (paid when covered).
    Without it a contribution added with the Contract left the invoice owing, and could be paid a second time.
    Returns the invoice's pk when it changed (the caller re-versions it, kind `invoice`), else None."""
    current = _open_invoice(conn, policy_pk)
    if current is None:
        return None
    facts = _stored_facts(conn, policy_pk)
    if facts is None:
        return None
    new = policy_invoice(conn, facts, today=today, new_code=False)
    if new.values["status"] == INVOICE_VALIDATED and current.status == INVOICE_UNPAID:
        new.values["status"] = INVOICE_UNPAID  # still owed: it stays past its deadline
    changes = {k: new.values[k] for k in _FOLLOWED if new.values[k] != getattr(current, k)}
    stored_lines = [tuple(getattr(r, c) for c in _LINE_COLUMNS)
                    for r in conn.execute(_INVOICE_LINES, {"pk": current.pk})]
    lines_changed = stored_lines != [tuple(ln[c] for c in _LINE_COLUMNS) for ln in new.lines]
    if not changes and not lines_changed:
        return None
    if changes:
        conn.execute(update(invoice).where(invoice.c.pk == current.pk).values(**changes))
    if lines_changed:
        conn.execute(delete(invoice_line).where(invoice_line.c.invoice_pk == current.pk))
        conn.execute(insert(invoice_line), new.line_rows(current.pk))
    return int(current.pk)


def cancel_policy_invoice(conn: Connection, policy_pk: int) -> int | None:
    """The invoice of a policy deleted while idle is cancelled (it no longer takes payments; what was paid stays
    recorded). Returns its pk when it changed (the caller re-versions it), else None."""
    current = _open_invoice(conn, policy_pk)
    if current is None:
        return None
    conn.execute(update(invoice).where(invoice.c.pk == current.pk).values(status=INVOICE_CANCELLED))
    return int(current.pk)


# --- the bills of a batch run ------------------------------------------------------------------------------------


@dataclass
class _ClaimPart:
    claim_pk: int
    code: str
    icd: str
    claimed: Decimal
    remunerated: Decimal


def _claim_lines(run_pk: int) -> Any:
    claims = select(claim.c.pk).where(claim.c.run_pk == run_pk, is_current(claim))
    return union_all(*(
        select(t.c.claim_pk, t.c.product_pk, t.c.status, t.c.qty_provided, t.c.price_asked, t.c.remunerated_amount)
        .where(t.c.claim_pk.in_(claims)) for t in (claim_item, claim_service)))


def _split(claim_row: Any, lines: list[Any]) -> dict[int, tuple[Decimal, Decimal]]:
    """product pk → (claimed, remunerated) of a valuated claim's parts (module docstring)."""
    products = sorted({ln.product_pk for ln in lines if ln.status == LINE_PASSED and ln.product_pk is not None})
    claimed = Decimal(claim_row.claimed or 0)
    remunerated = Decimal(claim_row.remunerated or 0)
    if len(products) <= 1:
        return {products[0]: (claimed, remunerated)} if products else {}
    parts: dict[int, tuple[Decimal, Decimal]] = {}
    for p in products[1:]:
        mine = [ln for ln in lines if ln.product_pk == p]
        parts[p] = (cents(sum((Decimal(ln.qty_provided) * Decimal(ln.price_asked) for ln in mine), ZERO)),
                    sum((Decimal(ln.remunerated_amount or 0) for ln in mine if ln.status == LINE_PASSED), ZERO))
    parts[products[0]] = (claimed - sum((c for c, _ in parts.values()), ZERO),
                          remunerated - sum((r for _, r in parts.values()), ZERO))
    return parts


def bills_for_run(conn: Connection, run_pk: int, *, today: date, now: int) -> list[int]:
    """Create the bills of a batch run (module docstring); returns the new bills' pks (none for the (facility,
    product) pairs already billed for this run). Run it in the batch run's transaction, after `batch.run`; the
    caller records the FHIR versions (kind `bill`). `today` bounds the issue date (the run date)."""
    run_row = conn.execute(select(batch_run).where(batch_run.c.pk == run_pk)).first()
    if run_row is None:
        raise ValueError(f"no batch run {run_pk}")
    claims = {r.pk: r for r in conn.execute(
        select(claim.c.pk, claim.c.code, claim.c.hf_pk, claim.c.icd_code, claim.c.claimed, claim.c.remunerated)
        .where(claim.c.run_pk == run_pk, is_current(claim)).order_by(claim.c.pk))}
    if not claims:
        return []
    lines: dict[int, list[Any]] = defaultdict(list)
    for ln in conn.execute(_claim_lines(run_pk)):
        lines[ln.claim_pk].append(ln)
    groups: dict[tuple[int, int], list[_ClaimPart]] = defaultdict(list)
    for c in claims.values():
        for product_pk, (claimed, remunerated) in _split(c, lines[c.pk]).items():
            groups[(c.hf_pk, product_pk)].append(_ClaimPart(c.pk, c.code, c.icd_code, claimed, remunerated))
    billed = {(r.payee_pk, r.product_pk) for r in conn.execute(select(bill.c.payee_pk, bill.c.product_pk).where(
        bill.c.run_pk == run_pk, bill.c.payee_type == HEALTH_FACILITY, is_current(bill)))}
    groups = {key: parts for key, parts in groups.items() if key not in billed}
    if not groups:
        return []
    products = {r.pk: r for r in conn.execute(select(product.c.pk, product.c.code, product.c.name,
                                                     product.c.acc_code_remuneration)
                                              .where(product.c.pk.in_(sorted({p for _, p in groups}))))}
    facilities = {r.pk: r.code for r in conn.execute(select(health_facility.c.pk, health_facility.c.code).where(
        health_facility.c.pk.in_(sorted({hf for hf, _ in groups}))))}
    names = _diagnosis_names(conn, {part.icd for parts in groups.values() for part in parts})
    issued = min(run_row.run_date, today)
    due = issued + timedelta(days=BILL_DUE_DAYS)
    period = f"{run_row.run_year:04d}-{run_row.run_month:02d}"
    created: list[int] = []
    for hf_pk, product_pk in sorted(groups, key=lambda k: (facilities[k[0]], products[k[1]].code)):
        prod = products[product_pk]
        bill_lines = [_bill_line(part, names, prod.acc_code_remuneration) for part in groups[(hf_pk, product_pk)]]
        values = {
            **new_ids(),
            "version_id": 0, "last_updated": now,
            "code": free_code(conn, bill, f"IV-{prod.code}-{facilities[hf_pk]}-{period}"),
            "type_code": TYPE_CLAIM_BATCH,
            "status": INVOICE_VALIDATED,
            "subject_type": BATCH_RUN, "subject_pk": run_pk,
            "payee_type": HEALTH_FACILITY, "payee_pk": hf_pk,
            "date_issued": issued, "date_due": due,
            "currency": SCHEME_CURRENCY,
            "note": f"Claims valuated by the batch run of {period}",
            "terms": f"{prod.name}: due {due}",
            "run_pk": run_pk, "product_pk": product_pk,
            **totals_of(bill_lines),
        }
        pk = int(conn.execute(insert(bill), values).inserted_primary_key[0])
        conn.execute(insert(bill_line), line_rows("bill", pk, bill_lines))
        created.append(pk)
    return created


def _bill_line(part: _ClaimPart, names: dict[str, str], account: str | None) -> LineIn:
    name = names.get(part.icd)
    unit = max(part.claimed, part.remunerated)
    return LineIn(LINE_CLAIM, part.claim_pk, part.code, f"{part.icd} {name}" if name else part.icd, account,
                  unit, deduction=unit - part.remunerated)


def _diagnosis_names(conn: Connection, codes: Iterable[str]) -> dict[str, str]:
    wanted = sorted(set(codes))
    if not wanted:
        return {}
    return {r.code: r.display for r in conn.execute(select(code_list_entry.c.code, code_list_entry.c.display).where(
        code_list_entry.c.list_name == DIAGNOSIS_LIST, code_list_entry.c.code.in_(wanted)))}
