"""OpenIMISPaymentNotice (IG row 24, `openimis-payment-notice`) ↔ `payment_notice`, and PaymentReconciliation ↔
`payment_reconciliation` (base R4: the IG has no profile for it). The rules — what a payment changes on the
invoice, the policy and the reconciliation — are in `hifhir.domain.payments`.

PaymentNotice (a payment of an invoice or a bill, openIMIS PaymentInvoice + DetailPaymentInvoice):
* `identifier` (0..1, type `UUID` by the IG's pattern) ↔ `reference`: the payment platform's reference of the
  payment (receipt, transaction id; letters, digits and `-._@+:`, at most 128). Unique among current notices: the
  same payment sent twice is a 409 and changes nothing. A UUID-shaped reference also becomes the id of a POSTed
  notice (as a client's identifier[UUID] does for every kind). Rendered back as sent; a notice without one shows
  its id there (the openIMIS reference server renders its payment's UUID).
* `request` (0..1 in the IG, **required** here: the reference server would fetch the invoice from the
  reconciliation at an external URL, which hifhir does not call) → `Invoice/<id>` of an invoice or a bill, or a
  logical reference by identifier (`Code` → the invoice's code, `UUID` → its id). The openIMIS clients'
  `request.type` `invoice` / `bill` narrows the lookup to that kind; an unknown, deleted or not current target is a
  422. Stored as `invoice_pk` / `bill_pk`, rendered `Invoice/<id>`.
* `amount.value` ↔ `amount` (> 0, at most 2 decimals, in the scheme currency); `paymentDate` ↔ `payment_date`
  (a date, not in the future); `created` ↔ `created` as sent.
* `status` ↔ `status` and openIMIS `detail_status`: active ↔ 1 accepted, cancelled ↔ 3 cancelled (2 refunded when
  an accepted payment is cancelled later), entered-in-error and draft ↔ 0. What each does to the invoice:
  `hifhir.domain.payments` (accepted: paid amount, invoice paid when complete, contribution and activation of
  the policy; over-payment 422; cancelled/suspended/draft invoice 409; cancelled: invoice suspended).
* `paymentStatus` (`http://terminology.hl7.org/CodeSystem/paymentstatus`) ↔ `payment_status`: paid ↔ openIMIS
  reconciliation status 0, cleared ↔ 1. A PaymentReconciliation listing the payment sets `cleared`.
* `payment` (1..1; the IG describes it as the external URL of the PaymentReconciliation): a reference to a stored
  current PaymentReconciliation is linked (`reconciliation_pk`, rendered `PaymentReconciliation/<id>`): the notice
  joins that report's details (the report gets a new version), as `paid` until the report is written again
  listing it; anything else — an absolute URL, or a `PaymentReconciliation/<id>` not (yet) stored here — is kept
  as sent (`reconciliation_ref`, at most 255 characters). Listing the notice in a stored reconciliation replaces
  it.
* `recipient` (1..1) → the insurer Organization (server configuration); rendered as the insurer.
* Update (PUT) changes the status along `domain.payments.transition` (draft → any; active → cancelled, a refund,
  or entered-in-error, a correction; cancelled and entered-in-error are final), `paymentStatus`, `payment` and
  `created`. Another invoice, amount, payment date or identifier is a 409: post a new notice. A payment cleared
  by a stored reconciliation keeps `cleared` and its `payment` (409): cancel the reconciliation instead.
* Delete: 405 — a payment is a record; cancel it (status `cancelled` or `entered-in-error`).

PaymentReconciliation (the payments platform's settlement report; no IG profile, so the kind's profile is the
base R4 StructureDefinition and incoming resources get the base R4 checks only: the R4 JSON schema and the base
definition's cardinalities, choices and required bindings, exactly as for a resource without a profile):
* id / identifier[UUID] as for every kind (a client UUID becomes the id); rendered identifier = the UUID.
* `status` ↔ `status` (active | cancelled | draft | entered-in-error; the same transitions as a notice),
  `created` ↔ `created` as sent, `paymentDate` ↔ `payment_date` (not in the future), `paymentAmount` ↔ `amount`,
  `paymentIdentifier.value` ↔ `payment_identifier` (the platform's reference of the settlement; searchable as
  `identifier`), `outcome` ↔ `outcome` (queued | complete | error | partial), `disposition` ↔ `disposition`.
* `paymentIssuer` (0..1): the insurer Organization only (the scheme is the one party hifhir knows to pay or be
  paid through the platform; the schema has no column for another), always rendered as the insurer.
* `detail[]` — the payments the report settles, each a PaymentNotice: `identifier.value` = the notice's reference
  (or id), or `request` = `PaymentNotice/<id>`, or `request` = `Invoice/<id>` (every accepted payment of that
  invoice or bill not reconciled elsewhere); with both, they must agree. `type` must be `payment`
  (`http://terminology.hl7.org/CodeSystem/payment-type`), `amount` (optional) must equal the payment(s), `date`
  (optional) the payment date. The listed notices must be accepted (active; 409 otherwise) and not cleared by
  another reconciliation (409). Σ of their amounts must equal `paymentAmount` (422): a report that does not add
  up is refused. Effect (`domain.payments.reconcile`): they point at the reconciliation (PaymentNotice.payment)
  and, while it is `active`, are `cleared` (else `paid`). Rendered from the linked notices: identifier (the
  notice's, as the notice renders it), type payment, request → the Invoice, date, amount.
* Elements hifhir does not keep (period, request, requestor, formCode, processNote, other identifiers, other
  detail elements, paymentIdentifier parts other than `value`) are refused (422) rather than silently dropped.
* Update (PUT): status (same transitions), outcome, disposition, created and the details (a notice no longer
  listed is unlinked and `paid` again); paymentDate/paymentAmount/paymentIdentifier may change too (the Σ rule
  applies). Delete: 405 (cancel it instead: its payments become `paid`).

Search: PaymentNotice `_id`, `_lastUpdated`, `identifier` (id or reference, whatever the type given), `status`,
`payment-status`, `created`, `request` (Invoice), `payment` (PaymentReconciliation); PaymentReconciliation `_id`,
`_lastUpdated`, `identifier` (id, or the payment identifier), `status`, `created`, `outcome`, `payment-issuer`
(the insurer: all or nothing), `request` (R4 searches PaymentReconciliation.request, a Task hifhir does not keep;
here the Invoice a listed payment settles, i.e. detail.request). `created` matches the date as written (its first
10 characters). Sort: `created` on both.

Rights (auth/matrix.py; domain §4.3): the openIMIS invoice-payment rights, as the reference server's
FHIRApiPaymentPermissions — 155201 read/search, 155202 create, 155203 update, 155204 delete — for both resources
(openIMIS keeps reconciliation on the invoice payments). Bill payments use the same rights (the reference server does
too): the bill-payment rights 1562xx are not checked.

Speed (POST PaymentNotice): the invoice row read and locked by id (one statement), the insert, the invoice update,
the notice's body built in `write` (no re-read), the invoice's render and the two history rows; a contribution
invoice adds the premium insert and the activation check (policy, product and premiums reads).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Row, String, and_, bindparam, exists, func, or_, select, type_coerce, union
from sqlalchemy.types import TypeDecorator

from hifhir import config
from hifhir.auth import scope as location_scope
from hifhir.domain import payments as pay
from hifhir.domain.commissions import payment_fee
from hifhir.fhir import patching
from hifhir.fhir.elements import first_code, identifiers, reference
from hifhir.fhir.errors import FhirError, business_rule, conflict, invalid
from hifhir.fhir.kind import IDENTIFIER_SYSTEM, KeyedInsert, ResourceKind, WriteContext, require
from hifhir.fhir.profiles.claim import insurer_id
from hifhir.fhir.profiles.common import is_uuid, resolve_new_id, uuid_for_update
from hifhir.fhir.profiles.contract import typed_reference_param
from hifhir.fhir.profiles.medication import money, parse_money
from hifhir.fhir.profiles.organization import is_current_insurer
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import (
    Clause,
    SearchParam,
    SortKey,
    check_token,
    column_ref,
    date_param,
    link_ref,
    parse_reference_value,
    reference_param,
    token_param,
)
from hifhir.store.fast import DriverQuery, send_deferred
from hifhir.store.tables import (
    bill,
    coverage,
    insuree_policy,
    insurer_org,
    invoice,
    is_current,
    payment_notice,
    payment_reconciliation,
    policy,
)

NOTICE, RECONCILIATION = "PaymentNotice", "PaymentReconciliation"
NOTICE_KIND, RECONCILIATION_KIND = "payment-notice", "payment-reconciliation"
PAYMENT_STATUS_SYSTEM = "http://terminology.hl7.org/CodeSystem/paymentstatus"
PAYMENT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/payment-type"
FINANCIAL_STATUSES = ("active", "cancelled", "draft", "entered-in-error")
OUTCOMES = ("queued", "complete", "error", "partial")
PAYMENT_STATUS_DISPLAYS = {pay.PAID: "Paid", pay.CLEARED: "Cleared"}
REFERENCE_RE = re.compile(r"^[A-Za-z0-9\-._@+:]{1,128}$")  # a token the identifier search can find again
EXTERNAL_REF_MAX, CREATED_MAX = 255, 40
BASE_SD = "http://hl7.org/fhir/StructureDefinition/"


class _BaseProfile(str):
    """The canonical URL of a base R4 resource definition used as a kind's profile (meta.profile, the
    CapabilityStatement, `BY_PROFILE`). It is falsy so that `validate_resource(resource, kind.profile)` takes its
    "no profile: base R4 definition" path — the IG registry does not know base URLs."""

    def __bool__(self) -> bool:
        return False


def _uuid_identifier(value: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": IDENTIFIER_SYSTEM, "code": "UUID"}]}, "value": value}


_FAULTS = {"amount": "PaymentNotice.amount", "invoice": "PaymentNotice.request",
           "reference": "PaymentNotice.identifier", "status": "PaymentNotice.status"}


def _refused(exc: pay.PaymentError) -> FhirError:
    expression = _FAULTS.get(exc.about, "PaymentNotice")
    if isinstance(exc, pay.PaymentConflict):
        return conflict(str(exc), expression)
    return business_rule(str(exc), expression)


def _full_date(value: Any, what: str, expression: str) -> date:
    if not (isinstance(value, str) and len(value) >= 10):
        raise invalid(f"{what} must be a date (YYYY-MM-DD)", expression)
    try:
        day = date.fromisoformat(value[:10])
    except ValueError:
        raise invalid(f"{what} '{value[:20]}' is not a calendar date", expression) from None
    require(day <= date.today(), f"{what} cannot be in the future", expression)
    return day


def _created(value: Any, expression: str) -> str:
    if not (isinstance(value, str) and 4 <= len(value) <= CREATED_MAX):
        raise invalid(f"created must be a FHIR dateTime (at most {CREATED_MAX} characters)", expression)
    return value


def _status(value: Any, expression: str) -> str:
    if value not in FINANCIAL_STATUSES:
        raise invalid(f"status must be one of {', '.join(FINANCIAL_STATUSES)}", expression)
    return str(value)


def _literal(ref: Any) -> tuple[str, str] | None:
    from hifhir.fhir.registry import parse_reference  # the registry imports this module

    literal = ref.get("reference") if isinstance(ref, dict) else None
    return parse_reference(literal) if isinstance(literal, str) else None


def _insurer(ctx: WriteContext, ref: Any, expression: str) -> None:
    parsed = _literal(ref)
    if parsed is not None and parsed[0] == "Organization" and is_current_insurer(ctx.conn, parsed[1]):
        return
    ctx.resolve(ref, ["Organization"], expression, kinds=["insurer"])  # the 422 for anything else


def _refuse_unknown(obj: dict[str, Any], allowed: frozenset[str], expression: str) -> None:
    extra = sorted(k for k in obj if k not in allowed and not k.startswith("_"))
    if extra:
        raise business_rule(f"hifhir does not keep {', '.join(extra)} of a {expression.split('.')[0]}; leave "
                            f"{'it' if len(extra) == 1 else 'them'} out", f"{expression}.{extra[0]}")


class _IsoDay(TypeDecorator[date]):
    """Compares a text column's `YYYY-MM-DD` prefix with date bounds as ISO text, on both engines."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else value.isoformat()


def _created_param(column: Any, doc: str) -> SearchParam:
    return date_param("created", type_coerce(func.substr(column, 1, 10), _IsoDay()), doc)


# --- the invoice or bill a payment is for --------------------------------------------------------------------


def _payable(ctx: WriteContext, ref: Any, expression: str) -> pay.Payable:
    """The current invoice or bill a `request` names, locked for the payment."""
    require(isinstance(ref, dict), "request is required: the Invoice (invoice or bill) paid", expression)
    # openIMIS clients say which kind in `type` (lower case); R4's `type` is the resource type, `Invoice`, for both.
    narrowed = ref.get("type")
    kinds = [narrowed] if narrowed in ("invoice", "bill") else ["invoice", "bill"]
    literal = ref.get("reference")
    if isinstance(literal, str):
        parsed = _literal(ref)
        require(parsed is not None and parsed[0] == "Invoice", "request must be Invoice/<id> (an invoice or a bill)",
                expression)
        assert parsed is not None
        found = pay.find_payable(ctx.conn, kinds, "id", parsed[1])
        if found is None and ctx.lenient:  # the openIMIS alias: business codes where ids belong
            found = pay.find_payable(ctx.conn, kinds, "code", parsed[1])
        require(found is not None, f"Invoice/{parsed[1]} does not exist or is not current", expression)
        return found  # type: ignore[return-value]
    ident = ref.get("identifier")
    value = ident.get("value") if isinstance(ident, dict) else None
    require(isinstance(value, str) and bool(value), "request needs Invoice/<id> or an identifier (Code or UUID)",
            expression)
    type_code = str(first_code(ident.get("type") if isinstance(ident.get("type"), dict) else None) or "").lower()
    found = None
    if type_code in ("code", ""):
        found = pay.find_payable(ctx.conn, kinds, "code", value)
    if found is None and type_code in ("uuid", ""):
        found = pay.find_payable(ctx.conn, kinds, "id", value)
    require(found is not None, f"No current invoice or bill has identifier {value[:64]}", expression)
    return found  # type: ignore[return-value]


# --- PaymentNotice ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class NoticeIn:
    reference: str | None
    status: str
    payable: pay.Payable
    created: str
    payment_date: date
    amount: Decimal
    payment_status: str
    reconciliation_pk: int | None
    reconciliation_id: str | None
    reconciliation_ref: str | None  # an external one, kept as sent
    # the stored bodies of what the payment may re-version, read ahead (`WriteContext.prefetched`)
    stored: dict[tuple[str, int], tuple[int, bytes | None]] = field(default_factory=dict)


# What a contribution's payment may re-version besides its invoice (contract.activate_if_paid): the Contract, its
# Coverage, the members' Patients and their Group.
_ACTIVATED = DriverQuery(
    select(coverage.c.pk.label("coverage_pk"), policy.c.family_pk, insuree_policy.c.insuree_pk)
    .select_from(policy.outerjoin(coverage, coverage.c.policy_pk == policy.c.pk)
                 .outerjoin(insuree_policy, and_(insuree_policy.c.policy_pk == policy.c.pk,
                                                 is_current(insuree_policy))))
    .where(policy.c.pk == bindparam("pk")))
_RECONCILIATION_BY_ID = DriverQuery(select(payment_reconciliation.c.pk).where(
    payment_reconciliation.c.id == bindparam("id"), is_current(payment_reconciliation)))
# PostgreSQL: with its key drawn beforehand, the insert travels with the transaction's next round trip.
_INSERT_NOTICE = KeyedInsert(payment_notice, (
    "id", "uuid", "invoice_pk", "bill_pk", "reconciliation_pk", "reconciliation_ref", "status", "detail_status",
    "payment_status", "created", "payment_date", "amount", "fees", "reference", "version_id", "last_updated"))


def _fee(amount: Decimal) -> Decimal | None:
    """The platform's fee for an accepted payment (HIFHIR_PAYMENT_FEE_*; `hifhir.domain.commissions`)."""
    tariff = config.PAYMENTS
    return payment_fee(amount, tariff.fee_percent, tariff.fee_fixed)


def _notice_body(*, res_id: str, ref: str | None, status: str, request_id: str, created: str,
                 payment: dict[str, Any], payment_date: date, recipient: str, amount: Decimal,
                 payment_status: str) -> dict[str, Any]:
    return {
        "identifier": [_uuid_identifier(ref or res_id)],
        "status": status,
        "request": reference("Invoice", request_id),
        "created": created,
        "payment": payment,
        "paymentDate": payment_date.isoformat(),
        "recipient": reference("Organization", recipient),
        "amount": money(amount),
        "paymentStatus": {"coding": [{"system": PAYMENT_STATUS_SYSTEM, "code": payment_status,
                                      "display": PAYMENT_STATUS_DISPLAYS[payment_status]}]},
    }


def _payment_ref(rec_id: str | None, external: str | None) -> dict[str, Any]:
    return reference(RECONCILIATION, rec_id) if rec_id is not None else {"reference": external}


_NOTICE_VIEW = (
    select(payment_notice, invoice.c.id.label("invoice_id"), bill.c.id.label("bill_id"),
           payment_reconciliation.c.id.label("reconciliation_id"))
    .select_from(payment_notice.outerjoin(invoice, invoice.c.pk == payment_notice.c.invoice_pk)
                 .outerjoin(bill, bill.c.pk == payment_notice.c.bill_pk)
                 .outerjoin(payment_reconciliation,
                            payment_reconciliation.c.pk == payment_notice.c.reconciliation_pk))
)


def _identifier_param(t: Any) -> SearchParam:
    """identifier: the notice's id or its payment reference, whatever identifier type the client names (the IG
    types the reference `UUID`)."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        code = check_token(value.split("|")[-1], expression)
        return t.c.pk.in_(union(select(t.c.pk).where(t.c.id == code),
                                select(t.c.pk).where(t.c.reference == code, is_current(t))))

    return SearchParam("identifier", "token", clause, frozenset({"of-type"}),
                       "The payment reference (identifier) or the id")


class PaymentNoticeKind(ResourceKind):
    resource_type = NOTICE
    name = NOTICE_KIND
    profile_id = "openimis-payment-notice"
    table = payment_notice
    scope = location_scope.PAYMENT_NOTICE
    code_column = "reference"
    deletable = False

    def __init__(self) -> None:
        t = payment_notice
        self.search_params = {
            **common_params(self),
            "identifier": _identifier_param(t),
            "status": token_param("status", t.c.status, codes={s: s for s in FINANCIAL_STATUSES},
                                  doc="active, cancelled, draft or entered-in-error"),
            "payment-status": token_param("payment-status", t.c.payment_status,
                                          codes={s: s for s in PAYMENT_STATUS_DISPLAYS},
                                          systems=frozenset({PAYMENT_STATUS_SYSTEM}), doc="paid or cleared"),
            "created": _created_param(t.c.created, "When the notice was created (its date as written)"),
            "request": typed_reference_param(
                "request", [("Invoice", column_ref(t.c.invoice_pk, "invoice")),
                            ("Invoice", column_ref(t.c.bill_pk, "bill"))], "The invoice or bill paid"),
            "payment": reference_param("payment", RECONCILIATION,
                                       column_ref(t.c.reconciliation_pk, RECONCILIATION_KIND),
                                       doc="The stored PaymentReconciliation that settles it"),
        }
        self.sort_params = {**common_sorts(self), "created": SortKey(t.c.created)}

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        insurer = insurer_id(conn)
        rows = conn.execute(_NOTICE_VIEW.where(payment_notice.c.pk.in_(pks))).all()
        return {r.pk: _notice_body(
            res_id=r.id, ref=r.reference, status=r.status, request_id=r.invoice_id or r.bill_id, created=r.created,
            payment=_payment_ref(r.reconciliation_id, r.reconciliation_ref), payment_date=r.payment_date,
            recipient=insurer, amount=r.amount, payment_status=r.payment_status) for r in rows}

    def delete(self, ctx: WriteContext, current: Row) -> None:
        raise FhirError.one(405, "not-supported", "A payment notice is a record; cancel it (status cancelled or "
                            "entered-in-error)")

    reads_ahead = True

    def read_ahead(self, ctx: WriteContext, resource: dict[str, Any]) -> NoticeIn:
        """The notice parsed and its references looked up (on SQLite before the writer lock: a payment that
        activates a policy holds it for every row it re-versions); `write` reads the invoice or bill again. For a
        contribution, the stored bodies of what its activation re-versions too, which the flush patches."""
        data = self._parse(ctx, resource)
        p = data.payable
        if p.policy_pk is not None and data.status == "active":
            rows = _ACTIVATED.rows(ctx.conn, {"pk": p.policy_pk})
            data.stored = patching.current_bodies(ctx.conn, {
                p.kind: [p.pk], "contract": [p.policy_pk],
                "coverage": [r.coverage_pk for r in rows if r.coverage_pk is not None],
                "patient": [r.insuree_pk for r in rows if r.insuree_pk is not None],
                "group": [r.family_pk for r in rows if r.family_pk is not None]})
        return data

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        if current is None and isinstance(ctx.read_ahead, NoticeIn):
            data = ctx.read_ahead
            # What is paid and the status as of now, under the lock: another payment may have come in since.
            payable = pay.find_payable(ctx.conn, [data.payable.kind], "id", data.payable.id)
            require(payable is not None, f"Invoice/{data.payable.id} does not exist or is not current",
                    "PaymentNotice.request")
            assert payable is not None
            data.payable = payable
            ctx.prefetched.update(data.stored)
        else:
            data = self._parse(ctx, resource)
        try:
            pk = self._create(ctx, data) if current is None else self._update(ctx, data, current)
        except pay.PaymentError as exc:
            # The notice's insert may still wait for a round trip (PostgreSQL): a payment sent twice is the 409 its
            # insert raises, before the invoice (already paid by it) could call it an over-payment.
            send_deferred(ctx.conn)
            raise _refused(exc) from None
        return pk

    # --- parsing -------------------------------------------------------------------------------------------

    def _parse(self, ctx: WriteContext, resource: dict[str, Any]) -> NoticeIn:
        idents = resource.get("identifier") or []
        ref = idents[0].get("value") if idents and isinstance(idents[0], dict) else None
        if ref is not None and not (isinstance(ref, str) and REFERENCE_RE.match(ref)):
            raise invalid("identifier.value (the payment reference) takes letters, digits and - . _ @ + : only, "
                          "at most 128", "PaymentNotice.identifier[0].value")
        status = _status(resource.get("status"), "PaymentNotice.status")
        payable = _payable(ctx, resource.get("request"), "PaymentNotice.request")
        amount = parse_money(resource.get("amount"), "The payment amount", "PaymentNotice.amount")
        require(amount > 0, "The payment amount must be positive", "PaymentNotice.amount")
        payment_date = _full_date(resource.get("paymentDate"), "paymentDate", "PaymentNotice.paymentDate")
        created = _created(resource.get("created"), "PaymentNotice.created")
        concept = resource.get("paymentStatus")
        payment_status = first_code(concept) if isinstance(concept, dict) else None
        require(payment_status in PAYMENT_STATUS_DISPLAYS, "paymentStatus must be paid or cleared "
                f"({PAYMENT_STATUS_SYSTEM})", "PaymentNotice.paymentStatus")
        _insurer(ctx, resource.get("recipient"), "PaymentNotice.recipient")
        rec_pk, rec_id, external = self._payment(ctx, resource.get("payment"))
        return NoticeIn(ref, status, payable, created, payment_date, amount, str(payment_status), rec_pk, rec_id,
                        external)

    @staticmethod
    def _payment(ctx: WriteContext, ref: Any) -> tuple[int | None, str | None, str | None]:
        expression = "PaymentNotice.payment"
        literal = ref.get("reference") if isinstance(ref, dict) else None
        require(isinstance(literal, str) and 0 < len(literal) <= EXTERNAL_REF_MAX,
                "payment needs a reference: PaymentReconciliation/<id> or the URL of the platform's "
                f"reconciliation (at most {EXTERNAL_REF_MAX} characters)", expression)
        assert isinstance(literal, str)
        parsed = _literal(ref)
        if parsed is not None and parsed[0] == RECONCILIATION and literal.count("/") == 1:
            rows = _RECONCILIATION_BY_ID.rows(ctx.conn, {"id": parsed[1]})
            if rows:
                return int(rows[0].pk), parsed[1], None
        return None, None, literal

    # --- create / update -----------------------------------------------------------------------------------

    def _create(self, ctx: WriteContext, data: NoticeIn) -> int:
        p = data.payable
        new_id = data.reference if data.reference and is_uuid(data.reference) and not ctx.id_from_client \
            else ctx.new_id
        values = {
            "id": new_id, "uuid": new_id,
            "invoice_pk": p.pk if p.kind == "invoice" else None, "bill_pk": p.pk if p.kind == "bill" else None,
            "reconciliation_pk": data.reconciliation_pk, "reconciliation_ref": data.reconciliation_ref,
            "status": data.status, "detail_status": pay.DETAIL_STATUS[data.status],
            "payment_status": data.payment_status, "created": data.created, "payment_date": data.payment_date,
            "amount": data.amount, "reference": data.reference, "version_id": 1, "last_updated": ctx.now,
            "fees": _fee(data.amount) if data.status == "active" else None,
        }
        # First the insert: a payment sent twice is the 409 it is, before the invoice (already paid by it) could
        # call it an over-payment (see `write`).
        if data.reference is not None:
            ctx.expect_unique(payment_notice, "reference", data.reference, "Payment reference",
                              "PaymentNotice.identifier", message=f"Payment reference {data.reference} is already "
                              "recorded (a payment sent twice?)")
        ctx.expect_unique(payment_notice, "id", new_id, "PaymentNotice id", "PaymentNotice.identifier")
        pk = _INSERT_NOTICE.insert(ctx, values)
        if data.reconciliation_pk is not None:  # it joins the stored reconciliation's details
            ctx.mark(RECONCILIATION_KIND, data.reconciliation_pk)
        receipt = pay.receipt_for(data.reference, new_id)
        if data.status == "active":
            pay.accept(ctx, p, data.amount, data.payment_date, receipt)
        elif data.status == "cancelled":
            pay.suspend(ctx, p)
        self._prerender(ctx, pk, new_id, data)
        return pk

    def _update(self, ctx: WriteContext, data: NoticeIn, current: Row) -> int:
        p = data.payable
        same_request = (current.invoice_pk if p.kind == "invoice" else current.bill_pk) == p.pk
        same_reference = data.reference in (current.reference, None if current.reference else current.id)
        if not (same_request and data.amount == current.amount and data.payment_date == current.payment_date
                and same_reference):
            raise conflict("The invoice, amount, payment date and identifier of a payment notice cannot change; "
                           "cancel it and post a new PaymentNotice", "PaymentNotice")
        pay.transition(current.status, data.status)
        rec_pk, rec_ref = data.reconciliation_pk, data.reconciliation_ref
        cleared_here = current.payment_status == pay.CLEARED and current.reconciliation_pk is not None
        if cleared_here and (data.payment_status != pay.CLEARED or rec_pk != current.reconciliation_pk):
            raise conflict("This payment is cleared by a stored PaymentReconciliation: its paymentStatus and "
                           "payment stay; cancel the reconciliation instead", "PaymentNotice.payment")
        # identifier omitted, or the id a notice without reference shows there: the reference stays as it was
        reference_kept = current.reference if data.reference in (None, current.id) else data.reference
        receipt = pay.receipt_for(reference_kept, current.id)
        detail = current.detail_status
        fees: dict[str, Any] = {}
        if current.status != data.status:
            if data.status == "active":
                pay.accept(ctx, p, data.amount, data.payment_date, receipt)
                detail = pay.ACCEPTED
                fees = {"fees": _fee(data.amount)}  # accepted now (a draft until then)
            elif current.status == "active":
                refund = data.status == "cancelled"
                pay.withdraw(ctx, p, current.amount, receipt, refund=refund)
                detail = pay.REFUNDED if refund else pay.REJECTED
            else:
                if data.status == "cancelled":
                    pay.suspend(ctx, p)
                detail = pay.DETAIL_STATUS[data.status]
        if rec_pk != current.reconciliation_pk:  # the details of the reconciliations it leaves or joins change
            for moved in (rec_pk, current.reconciliation_pk):
                if moved is not None:
                    ctx.mark(RECONCILIATION_KIND, moved)
        ctx.update(payment_notice, current.pk, {
            "status": data.status, "detail_status": detail, "payment_status": data.payment_status,
            "created": data.created, "reconciliation_pk": rec_pk, "reconciliation_ref": rec_ref,
            "reference": reference_kept, **fees})
        data.reference = reference_kept
        self._prerender(ctx, int(current.pk), current.id, data)
        return int(current.pk)

    def _prerender(self, ctx: WriteContext, pk: int, res_id: str, data: NoticeIn) -> None:
        ctx.prerendered[(self.name, pk)] = _notice_body(
            res_id=res_id, ref=data.reference, status=data.status, request_id=data.payable.id, created=data.created,
            payment=_payment_ref(data.reconciliation_id, data.reconciliation_ref), payment_date=data.payment_date,
            recipient=insurer_id(ctx.conn), amount=data.amount, payment_status=data.payment_status)


# --- PaymentReconciliation -----------------------------------------------------------------------------------

_RECONCILIATION_KEYS = frozenset({
    "resourceType", "id", "meta", "text", "language", "identifier", "status", "created", "paymentIssuer",
    "outcome", "disposition", "paymentDate", "paymentAmount", "paymentIdentifier", "detail"})
_DETAIL_KEYS = frozenset({"identifier", "type", "request", "date", "amount"})

_NOTICE_COLUMNS = (payment_notice.c.pk, payment_notice.c.id, payment_notice.c.reference, payment_notice.c.status,
                   payment_notice.c.amount, payment_notice.c.payment_date, payment_notice.c.payment_status,
                   payment_notice.c.reconciliation_pk, payment_notice.c.invoice_pk, payment_notice.c.bill_pk)
# Locked (PostgreSQL): two reports listing the same payment clear it one after the other, the second then sees it
# cleared (409).
_NOTICE_BY_IDENTIFIER = select(*_NOTICE_COLUMNS).where(
    or_(payment_notice.c.reference == bindparam("v"), payment_notice.c.id == bindparam("v")),
    is_current(payment_notice)).limit(1).with_for_update()
_NOTICE_BY_ID = select(*_NOTICE_COLUMNS).where(payment_notice.c.id == bindparam("v"),
                                               is_current(payment_notice)).with_for_update()
_NOTICES_OF = {kind: select(*_NOTICE_COLUMNS).where(
    payment_notice.c[f"{kind}_pk"] == bindparam("v"), payment_notice.c.status == "active", is_current(payment_notice))
    .order_by(payment_notice.c.pk).with_for_update() for kind in ("invoice", "bill")}
_DETAILS = (
    select(payment_notice.c.reconciliation_pk, payment_notice.c.id, payment_notice.c.reference,
           payment_notice.c.amount, payment_notice.c.payment_date, invoice.c.id.label("invoice_id"),
           bill.c.id.label("bill_id"))
    .select_from(payment_notice.outerjoin(invoice, invoice.c.pk == payment_notice.c.invoice_pk)
                 .outerjoin(bill, bill.c.pk == payment_notice.c.bill_pk))
    .where(payment_notice.c.reconciliation_pk.in_(bindparam("pks", expanding=True)), is_current(payment_notice))
    .order_by(payment_notice.c.reconciliation_pk, payment_notice.c.pk)
)
_LINKED = select(payment_notice.c.pk).where(payment_notice.c.reconciliation_pk == bindparam("rec"),
                                            is_current(payment_notice))
_OTHER_RECONCILIATION = select(payment_reconciliation.c.id).where(payment_reconciliation.c.pk == bindparam("pk"))


@dataclass(slots=True)
class ReconciliationIn:
    status: str
    created: str
    payment_date: date
    amount: Decimal
    payment_identifier: str | None
    outcome: str | None
    disposition: str | None
    notices: list[Row]


def _payment_type(concept: Any, expression: str) -> None:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    ok = isinstance(codings, list) and any(
        isinstance(c, dict) and c.get("code") == "payment" and c.get("system") in (None, PAYMENT_TYPE_SYSTEM)
        for c in codings)
    require(ok, f"detail.type must be payment ({PAYMENT_TYPE_SYSTEM}): hifhir records payments only", expression)


def _issuer_param() -> SearchParam:
    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        if modifier is not None and modifier != "Organization":
            raise invalid(f"'{expression}' references Organization only", expression)
        rid = parse_reference_value(value, "Organization", expression)
        return exists(select(insurer_org.c.pk).where(insurer_org.c.id == rid, is_current(insurer_org)))

    return SearchParam("payment-issuer", "reference", clause, frozenset({"Organization"}),
                       "The insurer Organization (every reconciliation's issuer)")


def _token_choice(name: str, column: Any, codes: tuple[str, ...], doc: str,
                  systems: frozenset[str] = frozenset()) -> SearchParam:
    return token_param(name, column, codes={c: c for c in codes}, systems=systems, doc=doc)


class PaymentReconciliationKind(ResourceKind):
    resource_type = RECONCILIATION
    name = RECONCILIATION_KIND
    profile_id = RECONCILIATION
    table = payment_reconciliation
    code_column = "payment_identifier"
    deletable = False

    @property
    def profile(self) -> str:
        return _BaseProfile(BASE_SD + RECONCILIATION)

    def __init__(self) -> None:
        t = payment_reconciliation
        pn = payment_notice
        self.search_params = {
            **common_params(self),
            "status": _token_choice("status", t.c.status, FINANCIAL_STATUSES,
                                    "active, cancelled, draft or entered-in-error"),
            "outcome": _token_choice("outcome", t.c.outcome, OUTCOMES, "queued, complete, error or partial"),
            "created": _created_param(t.c.created, "When the report was created (its date as written)"),
            "payment-issuer": _issuer_param(),
            "request": typed_reference_param(
                "request", [("Invoice", link_ref(t.c.pk, pn.c.reconciliation_pk, pn.c.invoice_pk, "invoice",
                                                 is_current(pn))),
                            ("Invoice", link_ref(t.c.pk, pn.c.reconciliation_pk, pn.c.bill_pk, "bill",
                                                 is_current(pn)))],
                "An invoice or bill a listed payment settles (detail.request)"),
        }
        self.sort_params = {**common_sorts(self), "created": SortKey(t.c.created)}

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        t = payment_reconciliation
        rows = conn.execute(select(t).where(t.c.pk.in_(pks))).all()
        details: dict[int, list[Row]] = {pk: [] for pk in pks}
        for d in conn.execute(_DETAILS, {"pks": pks}):
            details[d.reconciliation_pk].append(d)
        insurer = insurer_id(conn)
        return {r.pk: self._body(r, details[r.pk], insurer) for r in rows}

    @staticmethod
    def _body(r: Any, details: list[Row], insurer: str) -> dict[str, Any]:
        body: dict[str, Any] = {"identifier": identifiers(None, r.uuid) if r.uuid else [], "status": r.status,
                                "created": r.created, "paymentIssuer": reference("Organization", insurer)}
        if not body["identifier"]:
            del body["identifier"]
        if r.outcome:
            body["outcome"] = r.outcome
        if r.disposition:
            body["disposition"] = r.disposition
        body["paymentDate"] = r.payment_date.isoformat()
        body["paymentAmount"] = money(r.amount)
        if r.payment_identifier:
            body["paymentIdentifier"] = {"value": r.payment_identifier}
        if details:
            body["detail"] = [{
                "identifier": _uuid_identifier(d.reference or d.id),
                "type": {"coding": [{"system": PAYMENT_TYPE_SYSTEM, "code": "payment", "display": "Payment"}]},
                "request": reference("Invoice", d.invoice_id or d.bill_id),
                "date": d.payment_date.isoformat(),
                "amount": money(d.amount),
            } for d in details]
        return body

    def delete(self, ctx: WriteContext, current: Row) -> None:
        raise FhirError.one(405, "not-supported", "A reconciliation report is a record; cancel it (status "
                            "cancelled) to make its payments uncleared")

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        rec_pk = None if current is None else int(current.pk)
        data = self._parse(ctx, resource, rec_pk)
        values = {"status": data.status, "created": data.created, "payment_date": data.payment_date,
                  "amount": data.amount, "outcome": data.outcome, "disposition": data.disposition,
                  "payment_identifier": data.payment_identifier}
        t = payment_reconciliation
        previous: list[int] = []
        if current is None:
            values["id"], values["uuid"] = resolve_new_id(ctx, resource, t)
            pk = ctx.insert(t, values)
        else:
            try:
                pay.transition(current.status, data.status)
            except pay.PaymentConflict as exc:
                raise conflict(str(exc).replace("payment notice", "reconciliation"),
                               "PaymentReconciliation.status") from None
            values["uuid"] = uuid_for_update(ctx, resource, t, current)
            pk = int(current.pk)
            ctx.update(t, pk, values)
            previous = [r[0] for r in ctx.conn.execute(_LINKED, {"rec": pk})]
        res_id = values.get("id") or current.id  # type: ignore[union-attr]
        pay.reconcile(ctx, pk, f"{RECONCILIATION}/{res_id}", data.notices, cleared=data.status == "active",
                      previous=previous)
        return pk

    def _parse(self, ctx: WriteContext, resource: dict[str, Any], rec_pk: int | None) -> ReconciliationIn:
        r = RECONCILIATION
        _refuse_unknown(resource, _RECONCILIATION_KEYS, r)
        for i, ident in enumerate(resource.get("identifier") or ()):
            codes = {c.get("code") for c in ((ident.get("type") or {}).get("coding") or ())}
            require("UUID" in codes, "Only identifier[UUID] (which becomes the id) is kept; the platform's "
                    "reference of the settlement goes in paymentIdentifier", f"{r}.identifier[{i}]")
        status = _status(resource.get("status"), f"{r}.status")
        created = _created(resource.get("created"), f"{r}.created")
        payment_date = _full_date(resource.get("paymentDate"), "paymentDate", f"{r}.paymentDate")
        amount = parse_money(resource.get("paymentAmount"), "paymentAmount", f"{r}.paymentAmount")
        payment_identifier = None
        pid = resource.get("paymentIdentifier")
        if pid is not None:
            _refuse_unknown(pid, frozenset({"value"}), f"{r}.paymentIdentifier")
            payment_identifier = pid.get("value")
            if not (isinstance(payment_identifier, str) and REFERENCE_RE.match(payment_identifier)):
                raise invalid("paymentIdentifier.value takes letters, digits and - . _ @ + : only, at most 128",
                              f"{r}.paymentIdentifier.value")
        outcome = resource.get("outcome")
        if outcome is not None and outcome not in OUTCOMES:
            raise invalid(f"outcome must be one of {', '.join(OUTCOMES)}", f"{r}.outcome")
        disposition = resource.get("disposition")
        if resource.get("paymentIssuer") is not None:
            _insurer(ctx, resource["paymentIssuer"], f"{r}.paymentIssuer")
        notices: list[Row] = []
        seen: set[int] = set()
        for i, detail in enumerate(resource.get("detail") or ()):
            expression = f"{r}.detail[{i}]"
            for row in self._detail(ctx, detail, expression, rec_pk):
                require(row.pk not in seen, f"Payment {row.reference or row.id} is listed twice", expression)
                seen.add(row.pk)
                notices.append(row)
        if notices:
            total = sum((n.amount for n in notices), Decimal(0))
            require(total == amount, f"paymentAmount {amount} must equal the sum of the payments listed in detail "
                    f"({total})", f"{r}.paymentAmount")
        return ReconciliationIn(status, created, payment_date, amount, payment_identifier,
                                outcome if isinstance(outcome, str) else None,
                                disposition if isinstance(disposition, str) else None, notices)

    def _detail(self, ctx: WriteContext, detail: Any, expression: str, rec_pk: int | None) -> list[Row]:
        """The PaymentNotices one detail names (module docstring), checked."""
        conn = ctx.conn
        require(isinstance(detail, dict), "A detail is an object", expression)
        _refuse_unknown(detail, _DETAIL_KEYS, expression)
        _payment_type(detail.get("type"), f"{expression}.type")
        ident = detail.get("identifier")
        value = ident.get("value") if isinstance(ident, dict) else None
        request = _literal(detail.get("request")) if detail.get("request") is not None else None
        require(detail.get("request") is None or request is not None,
                "detail.request must be PaymentNotice/<id> or Invoice/<id>", f"{expression}.request")
        rows: list[Row]
        if isinstance(value, str) and value:
            row = conn.execute(_NOTICE_BY_IDENTIFIER, {"v": value}).first()
            require(row is not None, f"No current PaymentNotice has identifier {value[:64]}",
                    f"{expression}.identifier")
            rows = [row]  # type: ignore[list-item]
        elif request is not None and request[0] == NOTICE:
            row = conn.execute(_NOTICE_BY_ID, {"v": request[1]}).first()
            require(row is not None, f"PaymentNotice/{request[1]} does not exist", f"{expression}.request")
            rows = [row]  # type: ignore[list-item]
        elif request is not None and request[0] == "Invoice":
            p = _payable(ctx, detail["request"], f"{expression}.request")
            rows = [n for n in conn.execute(_NOTICES_OF[p.kind], {"v": p.pk})
                    if n.reconciliation_pk in (None, rec_pk) or n.payment_status != pay.CLEARED]
            require(bool(rows), f"Invoice/{p.id} has no accepted payment left to reconcile", f"{expression}.request")
        else:
            raise business_rule("A detail names its payment: identifier (the PaymentNotice's reference or id) or "
                                "request (PaymentNotice/<id> or Invoice/<id>)", expression)
        if request is not None and request[0] in ("Invoice", NOTICE) and isinstance(value, str) and value:
            target = rows[0]
            if request[0] == NOTICE:
                agree = target.id == request[1]
            else:
                p = _payable(ctx, detail["request"], f"{expression}.request")
                agree = (target.invoice_pk if p.kind == "invoice" else target.bill_pk) == p.pk
            require(agree, "detail.identifier and detail.request name different payments", f"{expression}.request")
        for n in rows:
            name = n.reference or n.id
            if n.reconciliation_pk != rec_pk or rec_pk is None:
                if n.status != "active":
                    raise conflict(f"Payment {name} is {n.status}: only accepted payments are reconciled",
                                   expression)
                if n.reconciliation_pk is not None and n.payment_status == pay.CLEARED:
                    other = conn.execute(_OTHER_RECONCILIATION, {"pk": n.reconciliation_pk}).scalar()
                    raise conflict(f"Payment {name} is already cleared by PaymentReconciliation/{other}", expression)
        if detail.get("amount") is not None:
            given = parse_money(detail["amount"], "detail.amount", f"{expression}.amount")
            total = sum((n.amount for n in rows), Decimal(0))
            require(given == total, f"detail.amount {given} differs from the payment's {total}",
                    f"{expression}.amount")
        if detail.get("date") is not None and len(rows) == 1:
            require(detail["date"] == rows[0].payment_date.isoformat(),
                    f"detail.date differs from the payment's date {rows[0].payment_date}", f"{expression}.date")
        return rows

