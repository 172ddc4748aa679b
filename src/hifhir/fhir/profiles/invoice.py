"""OpenIMISInvoice (`openimis-invoice-invoice`) and OpenIMISBill (`openimis-invoice-bill`): both FHIR Invoice
(IG §1b rows 22–23; domain §2.23, §3.6). The rows are created by business events (`hifhir.domain.invoicing`: a
policy's contribution invoice, the bills of a batch run; `hifhir.domain.commissions`: the monthly commission and
fees bills) and changed by payments: both kinds are read-only
(create, update and delete answer 405).

Mapping (both kinds):
* `id` / identifier[UUID] ↔ `id`/`uuid` (server UUIDs); identifier[Code] ↔ `code` (e.g. IV-BC01-100000000-2026-01).
* `status` (IG VS invoice-status: issued | balanced | cancelled only) ↔ the openIMIS status: draft (0),
  validated (1, also while partly paid), suspended (5: a payment was refunded or cancelled, so it is owed again)
  and unpaid (6) → `issued`; paid (2) and reconciliated (7) → `balanced`; cancelled (3) and deleted (4) →
  `cancelled`. The exact status is in the hifhir extension `https://hifhir.org/fhir/StructureDefinition/invoice-
  status` (valueCode draft | validated | paid | cancelled | deleted | suspended | unpaid | reconciliated), and
  what has been paid so far (`amount_paid`, when not 0) in `…/invoice-amount-paid` (valueMoney).
* `type.coding` ↔ `type_code`: IG CodeSystem invoice-type (contribution, contract, funding) for invoices,
  bill-type (claim-batch, commission, fees) for bills.
* `recipient` ↔ the third party (`payer_*` / `payee_*`): Patient (an insuree: the head paying a family's
  contribution), Organization (a policy holder, a health facility), Practitioner (the enrolment officer paid a
  commission: the IG's recipient allows Organization and Patient only, yet its own bill-type `commission` pays an
  officer, whom the IG models as a Practitioner), or, for the payments platform paid its fees (no register holds
  it), a Reference with `type` Organization and `display` = `HIFHIR_PAYMENT_PLATFORM_NAME` (not searchable).
  `subject` is 0..0 in the IG: the family / policy holder / batch run / month the document is about is not
  rendered (the `subject` search parameter finds an invoice's).
* `date` ↔ `date_issued`; `issuer` → the insurer Organization (as the IG example); `paymentTerms` ↔ `terms` (due
  date, payment deadline); `note[0].text` ↔ `note`.
* `lineItem` (one per line, `sequence` is 0..0 in the IG): `chargeItemCodeableConcept` = invoice-charge-item
  `policy` (a policy's contribution) or bill-charge-item `claim`, `commission` (a contribution an officer
  collected) or `fees` (an accepted payment), with `text` = the line's description (product name, `<ICD code>
  <ICD name>`, the product and family of a contribution, the invoice paid). `priceComponent` per the IG's
  formulas (computed by `hifhir.domain.invoicing.line_amounts`, the same function that stored the totals), each
  with the unit-price extension (1..1 on every component in the profile):
  - `base`: code.text = the line's code (product or claim code, coding.code `Code`), factor = quantity, amount =
    unit price × quantity;
  - `discount` (when the rate is not 0): factor = the rate, amount = −base × rate;
  - `deduction` (when not 0): factor 1, amount = −deduction;
  - `tax` (when a rate is set): factor = rate, amount = (base − discount − deduction) × rate.
* `totalNet` ↔ `amount_net` (Σ line nets), `totalGross` ↔ `amount_total` (Σ line totals, taxes included).

Search (both kinds): `_id`, `_lastUpdated`, `identifier` (Code or UUID), `type` (contribution | contract |
funding | claim-batch | commission | fees, and `invoice` / `bill` for the whole kind, which the reference server
offered as `resourceType=invoice|bill`: also accepted under that name), `status` (issued | balanced | cancelled),
`invoice-status` (the openIMIS status names), `recipient` (Patient, Organization; Practitioner for bills), `date`
(the issue date); invoices also `subject` (Group: the family; Organization: the policy holder). Sort: `date`.

Rights (auth/matrix.py; domain §4.3, the reference server's FHIRApiInvoicePermissions / FHIRApiBillPermissions):
reading an invoice needs 155101 (invoice search), a bill 156101 (bill search). A user holding only one of them
searching `Invoice` gets only that kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Row, Table, case, false, not_, select, true

from hifhir import config
from hifhir.auth import scope as location_scope
from hifhir.domain import commissions as cm
from hifhir.domain import invoicing as inv
from hifhir.fhir.elements import coding, identifiers, reference
from hifhir.fhir.errors import FhirError, invalid
from hifhir.fhir.kind import CS, IDENTIFIER_SYSTEM, ResourceKind, WriteContext
from hifhir.fhir.profiles.claim import insurer_id
from hifhir.fhir.profiles.contract import HIFHIR_CS, HIFHIR_EXT, choice_param, typed_reference_param
from hifhir.fhir.profiles.medication import money, number
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import (
    Clause,
    RefPath,
    SearchParam,
    SortKey,
    check_token,
    date_param,
    link_ref,
    split_token,
)
from hifhir.store.fast import DriverQuery, Plan, any_pk, run_plan
from hifhir.store.tables import (
    bill,
    bill_line,
    health_facility,
    insuree,
    invoice,
    invoice_line,
    officer,
    policy_holder,
)

STATUS_URL = HIFHIR_EXT + "invoice-status"
AMOUNT_PAID_URL = HIFHIR_EXT + "invoice-amount-paid"
UNIT_PRICE_URL = "https://openimis.github.io/openimis_fhir_r4_ig/StructureDefinition/unit-price"
FHIR_STATUS_SYSTEM = "http://hl7.org/fhir/invoice-status"

# FHIR Invoice.status → openIMIS statuses (module docstring)
STORED_BY_FHIR_STATUS: dict[str, tuple[int, ...]] = {"issued": (0, 1, 5, 6), "balanced": (2, 7), "cancelled": (3, 4)}
FHIR_STATUS = {stored: fhir for fhir, codes in STORED_BY_FHIR_STATUS.items() for stored in codes}
STORED_BY_NAME = {name: code for code, name in inv.STATUS_NAMES.items()}

TYPE_DISPLAYS = {
    inv.TYPE_CONTRIBUTION: "Contribution", inv.TYPE_CONTRACT: "Contract", inv.TYPE_FUNDING: "Funding",
    inv.TYPE_CLAIM_BATCH: "Claim batch payment", inv.TYPE_COMMISSION: "Commission", inv.TYPE_FEES: "Fees",
}
CHARGE_ITEMS = {inv.LINE_POLICY: ("invoice-charge-item", "policy", "Policy"),
                inv.LINE_CLAIM: ("bill-charge-item", "claim", "Claim"),
                cm.LINE_PREMIUM: ("bill-charge-item", "commission", "Commission"),
                cm.LINE_PAYMENT: ("bill-charge-item", "fees", "Fees")}
RECIPIENT_TYPES = frozenset({"Patient", "Organization", "Practitioner"})  # of both kinds (`_recipient_param`)
KIND_MARKERS = ("invoice", "bill")  # `type=invoice|bill`: the whole kind
ALL_TYPE_CODES = frozenset((*inv.INVOICE_TYPES, *inv.BILL_TYPES, *KIND_MARKERS))
TYPE_SYSTEMS = frozenset({CS + "invoice-type", CS + "bill-type"})

# The third party of a row: party type → (FHIR type, table holding the target, kind name of the target)
PARTIES: dict[str, tuple[str, Table, str]] = {
    inv.INSUREE: ("Patient", insuree, "patient"),
    inv.POLICY_HOLDER: ("Organization", policy_holder, "policy-holder"),
    inv.HEALTH_FACILITY: ("Organization", health_facility, "health-facility"),
    cm.OFFICER: ("Practitioner", officer, "enrolment-officer"),
}


def party_label(party_type: str) -> str:
    return "party_" + party_type.replace("-", "_")


def _view(table: Table, party: str) -> DriverQuery:
    """The rows with the id of their third party, whatever its type (one keyed sub-select per possible type: outer
    joins on `type = … AND pk = …` led PostgreSQL to merge-join the whole insuree index for one invoice)."""
    columns: list[Any] = [table]
    for party_type, (_, target, _kind) in PARTIES.items():
        found = select(target.c.id).where(target.c.pk == table.c[f"{party}_pk"]).scalar_subquery()
        columns.append(case((table.c[f"{party}_type"] == party_type, found)).label(party_label(party_type)))
    return DriverQuery(select(*columns).where(any_pk(table.c.pk)))


def _unit_price(value: Decimal) -> list[dict[str, Any]]:
    return [{"url": UNIT_PRICE_URL, "valueMoney": money(value)}]


def price_components(line: Row) -> list[dict[str, Any]]:
    """The IG's priceComponents of a stored line (module docstring)."""
    a = inv.line_amounts(line.quantity, line.unit_price, line.discount, line.deduction, line.tax_rate)
    unit = _unit_price(line.unit_price)
    out: list[dict[str, Any]] = [{
        "extension": unit, "type": "base",
        "code": {"coding": [{"system": IDENTIFIER_SYSTEM, "code": "Code"}], "text": line.code},
        "factor": line.quantity, "amount": money(a.base),
    }]
    if line.discount:
        out.append({"extension": unit, "type": "discount", "factor": number(line.discount),
                    "amount": money(-a.discount)})
    if line.deduction:
        out.append({"extension": unit, "type": "deduction", "factor": 1, "amount": money(-a.deduction)})
    if line.tax_rate is not None:
        out.append({"extension": unit, "type": "tax", "factor": number(line.tax_rate), "amount": money(a.tax)})
    return out


def _line_item(line: Row) -> dict[str, Any]:
    cs_id, code, display = CHARGE_ITEMS.get(line.line_type, CHARGE_ITEMS[inv.LINE_POLICY])
    concept: dict[str, Any] = {"coding": [coding(CS + cs_id, code, display)]}
    if line.description:
        concept["text"] = line.description
    return {"chargeItemCodeableConcept": concept, "priceComponent": price_components(line)}


def _payment_state(status: int, amount_paid: Decimal | None) -> tuple[list[dict[str, Any]], str]:
    """The extensions and the FHIR status that show how far an invoice or bill is paid: what a payment changes."""
    extensions: list[dict[str, Any]] = [{"url": STATUS_URL, "valueCode": inv.STATUS_NAMES.get(status, "draft")}]
    if amount_paid:
        extensions.append({"url": AMOUNT_PAID_URL, "valueMoney": money(amount_paid)})
    return extensions, FHIR_STATUS.get(status, "issued")


def render_invoice(row: Row, lines: list[Row], party: str, type_cs: str, insurer: str) -> dict[str, Any]:
    extensions, status = _payment_state(row.status, row.amount_paid)
    res: dict[str, Any] = {
        "extension": extensions,
        "identifier": identifiers(row.code, row.uuid or row.id),
        "status": status,
        "type": {"coding": [coding(CS + type_cs, row.type_code, TYPE_DISPLAYS.get(row.type_code))]},
    }
    party_type = getattr(row, f"{party}_type")
    target_id = getattr(row, party_label(party_type), None) if party_type in PARTIES else None
    if target_id is not None:
        res["recipient"] = reference(PARTIES[party_type][0], target_id)
    elif party_type == cm.PAYMENTS_PLATFORM:  # no register of platforms: named from the configuration
        res["recipient"] = {"type": "Organization", "display": config.PAYMENTS.platform_name}
    res["date"] = row.date_issued.isoformat()
    res["issuer"] = reference("Organization", insurer)
    res["lineItem"] = [_line_item(ln) for ln in lines]
    res["totalNet"] = money(row.amount_net)
    res["totalGross"] = money(row.amount_total)
    if row.terms:
        res["paymentTerms"] = row.terms
    if row.note:
        res["note"] = [{"text": row.note}]
    return res


# --- search parameters -----------------------------------------------------------------------------------------


def _type_param(table: Table, marker: str, own_codes: tuple[str, ...], own_system: str) -> SearchParam:
    """`type`: the IG type codes of both kinds (a code of the other kind matches nothing here) and `invoice` /
    `bill` for a whole kind."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        system, code = split_token(value, expression)
        check_token(code, expression)
        if code not in ALL_TYPE_CODES:
            raise invalid(f"Unknown code '{code}' for '{expression}' ({', '.join(sorted(ALL_TYPE_CODES))})",
                          expression)
        match: Clause
        if system and system not in TYPE_SYSTEMS:
            match = false()
        elif code == marker and not system:
            match = true()
        elif code in own_codes and system in (None, "", own_system):
            match = table.c.type_code == code
        else:
            match = false()
        return not_(match) if modifier == "not" else match

    return SearchParam("type", "token", clause, frozenset({"not"}),
                       "contribution, contract, funding (invoices), claim-batch, commission, fees (bills); "
                       "invoice or bill for all of a kind")


def _kind_param(marker: str) -> SearchParam:
    """`resourceType=invoice|bill`, the reference server's spelling of `type=invoice|bill`."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        if value not in KIND_MARKERS:
            raise invalid(f"'{expression}' takes invoice or bill", expression)
        return true() if value == marker else false()

    return SearchParam("resourceType", "token", clause, frozenset(), "invoice or bill (openIMIS compatibility)")


def _party_path(table: Table, prefix: str, party_type: str) -> RefPath:
    """The third party (or the subject) as a reference path: its pk column, restricted to one party type."""
    link = table.alias(f"{table.name}_{prefix}_{party_type.replace('-', '_')}")
    kind_name = {inv.FAMILY: "group"}.get(party_type) or PARTIES[party_type][2]
    return link_ref(table.c.pk, link.c.pk, link.c[f"{prefix}_pk"], kind_name,
                    link.c[f"{prefix}_type"] == party_type)


def _recipient_param(param: SearchParam) -> SearchParam:
    """`recipient` of one kind accepting the types a recipient of either kind may be: a search of `Invoice` runs on
    both kinds, so `recipient=Practitioner/<id>` (an officer: bills only) must match nothing among invoices rather
    than be refused by them."""
    own = param.modifiers

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        parts = value.rstrip("/").split("/")
        rtype = parts[-2] if len(parts) >= 2 else modifier
        if rtype in RECIPIENT_TYPES and rtype not in own:
            return false()
        return param.clause(value, modifier, expression)

    return replace(param, clause=clause, modifiers=own | RECIPIENT_TYPES)


def _status_options(table: Table) -> dict[str, Callable[[], Clause]]:
    return {code: (lambda stored=stored: table.c.status.in_(stored)) for code, stored in STORED_BY_FHIR_STATUS.items()}


# --- the kinds ---------------------------------------------------------------------------------------------------


class _InvoiceKindBase(ResourceKind):
    resource_type = "Invoice"
    writable = False
    line_table: Table
    party: str  # payer | payee
    marker: str  # invoice | bill
    type_cs: str
    own_types: tuple[str, ...]
    party_types: tuple[tuple[str, str], ...]  # (FHIR type, party type) a recipient may be

    def __init__(self) -> None:
        t = self.table
        self.search_params = {
            **common_params(self),
            "type": _type_param(t, self.marker, self.own_types, CS + self.type_cs),
            "resourceType": _kind_param(self.marker),
            "status": choice_param("status", _status_options(t), frozenset({FHIR_STATUS_SYSTEM}),
                                   "issued (draft, validated, suspended, unpaid), balanced (paid, reconciliated) "
                                   "or cancelled"),
            "invoice-status": choice_param(
                "invoice-status",
                {name: (lambda code=code: t.c.status == code) for name, code in STORED_BY_NAME.items()},
                frozenset({HIFHIR_CS + "invoice-status"}),
                "The openIMIS status: draft, validated, paid, cancelled, deleted, suspended, unpaid, reconciliated"),
            "recipient": _recipient_param(typed_reference_param(
                "recipient", [(rtype, _party_path(t, self.party, ptype)) for rtype, ptype in self.party_types],
                "The third party: who pays (an insuree, a policy holder) or is paid (a health facility, an "
                "enrolment officer)")),
            "date": date_param("date", t.c.date_issued, "The issue date"),
        }
        self.sort_params = {**common_sorts(self), "date": SortKey(t.c.date_issued, "date")}
        self._view = _view(t, self.party)
        parent = self.line_table.c[f"{self.table.name}_pk"]
        self._lines = DriverQuery(select(self.line_table).where(any_pk(parent))
                                  .order_by(parent, self.line_table.c.sequence))

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        return run_plan(conn, self.render_plan(conn, pks))

    def render_plan(self, conn: Connection, pks: list[int]) -> Plan[dict[int, dict[str, Any]]]:
        rows, line_rows = yield [(self._view, {"pks": pks}), (self._lines, {"pks": pks})]
        lines: dict[int, list[Row]] = {pk: [] for pk in pks}
        parent = f"{self.table.name}_pk"
        for ln in line_rows:
            lines[getattr(ln, parent)].append(ln)
        insurer = insurer_id(conn)
        return {r.pk: render_invoice(r, lines[r.pk], self.party, self.type_cs, insurer) for r in rows}

    # A payment (domain/payments.py) changes only these, and writes them with `WriteContext.versioned_update`.
    patchable = frozenset({"status", "amount_paid", "date_paid"})

    def patch_body(self, body: dict[str, Any], change: Mapping[str, Any]) -> bool:
        if "status" not in change or "amount_paid" not in change:
            return False
        # date_paid is not shown
        body["extension"], body["status"] = _payment_state(change["status"], change["amount_paid"])
        return True

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        raise FhirError.one(405, "not-supported", "Invoices and bills are created by business events (enrolment, "
                            "batch runs) and changed by payments (PaymentNotice); they are read-only")


class InvoiceKind(_InvoiceKindBase):
    name = "invoice"
    profile_id = "openimis-invoice-invoice"
    table = invoice
    scope = location_scope.INVOICE
    line_table = invoice_line
    party = "payer"
    marker = "invoice"
    type_cs = "invoice-type"
    own_types = inv.INVOICE_TYPES
    party_types = (("Patient", inv.INSUREE), ("Organization", inv.POLICY_HOLDER))

    def __init__(self) -> None:
        super().__init__()
        t = self.table
        self.search_params["subject"] = typed_reference_param(
            "subject", [("Group", _party_path(t, "subject", inv.FAMILY)),
                        ("Organization", _party_path(t, "subject", inv.POLICY_HOLDER))],
            "What the invoice is for: the family (informal sector) or the policy holder (formal sector)")


class BillKind(_InvoiceKindBase):
    name = "bill"
    profile_id = "openimis-invoice-bill"
    table = bill
    scope = location_scope.BILL
    line_table = bill_line
    party = "payee"
    marker = "bill"
    type_cs = "bill-type"
    own_types = inv.BILL_TYPES
    party_types = (("Organization", inv.HEALTH_FACILITY), ("Patient", inv.INSUREE), ("Practitioner", cm.OFFICER))


def record_versions(conn: Connection, kind_name: str, pks: Iterable[int], *, now: int,
                    user_name: str | None = None) -> None:
    """Record the FHIR version of invoices or bills a business event created or changed outside a FHIR write
    (e.g. a batch run's bills): version 1 for new rows. Inside a FHIR write, `ctx.mark(kind_name, pk)` does it."""
    ctx = WriteContext(conn, user_name, now=now)
    for pk in pks:
        ctx.mark(kind_name, pk)
    ctx.flush()
