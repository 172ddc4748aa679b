"""OpenIMISContract ↔ policy: enrolment of a family or a policy holder's insurees (IG §1b row 19, §2
contract-premium; domain §2.15–2.17, §3.1). The rules themselves are in `hifhir.domain.policy`.

Mapping:
* `id` / identifier[UUID] ↔ the policy's id/uuid (a client UUID becomes the id, as for every register).
* `scope` informal → `subject` = the family (Group); formal → `subject` = the policy holder (Organization).
* `issued` (a full date; a time part is ignored) ↔ `enroll_date`, not in the future.
* `author` ↔ the enrolment officer (optional, as in the IG).
* exactly one `term` with one `asset` and one `valuedItem` (one policy per Contract):
  - `term.offer.party.reference` ↔ `head_insuree_pk`: for the informal sector the family's head (422 otherwise);
  - `asset.typeReference` ↔ the covered insurees (`insuree_policy` rows, each carrying the policy's dates). For
    the informal sector they must be current members of the family; at most the product's member count (422
    rather than silently leaving some uncovered). The value counts exactly these insurees, in family order (the
    head first, then by registration);
  - `valuedItem.entityReference` ↔ the product: current, `active`, sold at the enrolment date (`period`) and
    available where the family (or policy holder) lives: national, or its coverage area is the village or one
    of its ancestors (422 otherwise);
  - `asset.extension[premium]` (contract-premium) ↔ `premium` rows: category C contribution / P photo fee
    (never counts toward the value), amount > 0 in the scheme currency, receipt (unique among the product's
    current contributions: 409), pay date (not in the future), pay type C/B/M, payer code.
* **Computed by the server, never taken from the client** (the profile makes the client send them, but their
  content is ignored: a point of service cannot know the scheme's rules exactly, and openIMIS recomputes them
  too): the stage, `period` (start/expiry, domain §3.1.4), `usePeriod` (effective/expiry), `net.value` (the
  policy value, §3.1.3) and `status`. The 201 answer carries what was stored.
* Stage: R (renewal) when the family's latest effective policy of this product, or of a product converting into
  it, expires within the renewal window after the enrolment date (`hifhir.domain.policy.previous_policy`);
  N otherwise. For the formal sector the previous policy is looked for among the policy holder's.
* A second policy of the same product overlapping an existing one (same family; for the formal sector: covering
  one of the same insurees) is a 409 "Contract exists" — also the answer to an enrolment sent twice.
* `status` (required binding `contract-status-codes`: offered | executed only): `executed` once the policy took
  effect (EffectiveDate set: active, expired, or suspended after activation), `offered` otherwise (idle, ready, or
  suspended before it was ever paid). The exact openIMIS status is rendered in the hifhir extension
  `https://hifhir.org/fhir/StructureDefinition/policy-status` (valueCode idle | active | suspended | expired |
  ready; expired is computed: an active policy past its expiry date) and the stage in `…/policy-stage` (N | R).
* `usePeriod.start` (1..1 in the IG) while the policy is not yet effective: the element carries only a
  data-absent-reason extension (`temp-unknown`): FHIR's way of saying "required, known later".

Lifecycle:
* Create: Idle; activated at once when the premiums sent already cover the value (activation option 1).
* Update (PUT) keeps the enrolled family / policy holder and sector (409 otherwise) and, for the rest:
  - while the policy is Idle, everything else may change (product, officer, enrolment date, covered insurees,
    premiums added, changed or removed by receipt): dates and value are recomputed;
  - once it is not Idle, only new premiums (a receipt not yet on the policy) may be added; changing the content
    or changing/removing a recorded premium is a 409;
  - status transitions are asked through the `policy-status` extension (a value equal to the stored status asks
    nothing, so a client may send back what it read): `suspended` from active or idle; `active` from suspended
    (reactivation) when the contributions cover the value and the policy has not expired. Idle → active only
    happens through contributions; anything else is a 409.
  - adding premiums to an Idle policy activates it when they cover the value; suspended policies are not
    reactivated by payments.
* Delete: only an Idle policy (409 otherwise); its insuree-policy rows, premiums and Coverage go with it.
* Every write re-versions the policy's Coverage, and re-computes `insuree.has_active_policy` (Patient.active,
  Group.active: covered today by an active policy, as `hifhir.jobs.covered_on` defines it) of the insurees it
  touched, re-versioning the Patients and Groups whose flag changed. A policy paid before its start date makes
  its members active only when the start arrives (the calendar job flips them then).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Date, Row, bindparam, false, insert, not_, or_, select, update

from hifhir.auth import scope as location_scope
from hifhir.domain.invoicing import PolicyFacts, cancel_policy_invoice, follow_policy, new_ids, policy_invoice
from hifhir.domain.policy import (
    ACTIVE,
    EXPIRED,
    IDLE,
    READY,
    STATUS_NAMES,
    SUSPENDED,
    TERMS_COLUMNS,
    Member,
    Payment,
    PolicyDates,
    PolicyPeriod,
    ProductTerms,
    Stage,
    activation_date,
    paid_amount,
    policy_period,
    policy_value,
    previous_policy,
    renewal_sources,
    renewal_window,
    stage_after,
    status_on,
)
from hifhir.fhir.elements import coding, first_code, identifiers, reference, sub_extension
from hifhir.fhir.errors import conflict, invalid
from hifhir.fhir.kind import CS, EXT, ResourceKind, WriteContext, render_memo, require
from hifhir.fhir.profiles.common import resolve_new_id, uuid_for_update
from hifhir.fhir.profiles.medication import money, parse_money
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import (
    Clause,
    RefPath,
    SearchParam,
    SortKey,
    check_token,
    column_ref,
    date_param,
    link_ref,
    split_token,
)
from hifhir.store.fast import DriverQuery, FastStatement, Plan, Read, any_pk, insert_rows, rows_together, run_plan
from hifhir.store.tables import (
    coverage,
    family,
    insuree,
    insuree_policy,
    invoice,
    invoice_line,
    is_current,
    location,
    officer,
    policy,
    policy_holder,
    premium,
    product,
)

HIFHIR_EXT = "https://hifhir.org/fhir/StructureDefinition/"
HIFHIR_CS = "https://hifhir.org/fhir/CodeSystem/"
POLICY_STATUS_URL = HIFHIR_EXT + "policy-status"
POLICY_STAGE_URL = HIFHIR_EXT + "policy-stage"
PREMIUM_URL = EXT + "contract-premium"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
CONTRACT_STATUS_SYSTEM = "http://hl7.org/fhir/contract-status"

SCOPES = {"informal": "Informal Sector", "formal": "Formal Sector"}
CATEGORIES = {"C": "Contribution and Others", "P": "Photo Fee"}
PAY_TYPES = {"C": "Cash", "B": "Bank Transfer", "M": "Mobile Phone"}
PAYERS = {"beneficiary": "Beneficiary"}
STATUS_BY_NAME = {name: code for code, name in STATUS_NAMES.items()}
RECEIPT_MAX, PAYER_MAX = 50, 32

TERM = "Contract.term[0]"
ASSET = f"{TERM}.asset[0]"
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def today() -> date:
    return date.today()


def not_yet_known() -> dict[str, Any]:
    """A required primitive without a value yet (an effective date before payment): data-absent-reason."""
    return {"extension": [{"url": DATA_ABSENT, "valueCode": "temp-unknown"}]}


# --- search helpers shared with Coverage -----------------------------------------------------------------------


def _kind_table(kind_name: str) -> Any:
    from hifhir.fhir.registry import KINDS

    return KINDS[kind_name].table


def typed_reference_param(name: str, paths: list[tuple[str, RefPath]], doc: str) -> SearchParam:
    """A reference parameter whose targets have several types (`Type/id`, `id`, or `param:Type=id`), each path
    given with the resource type of its target kind."""
    types = frozenset(rtype for rtype, _ in paths)

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        if modifier is not None and modifier not in types:
            raise invalid(f"'{expression}' references {' or '.join(sorted(types))} only", expression)
        parts = value.rstrip("/").split("/")
        rtype = parts[-2] if len(parts) >= 2 else modifier
        rid = parts[-1]
        if rtype is not None and rtype not in types:
            raise invalid(f"'{expression}' must reference {' or '.join(sorted(types))}", expression)
        if not _ID_RE.match(rid):
            raise invalid(f"Invalid reference value for '{expression}'", expression)
        options = []
        for path_type, path in paths:
            if rtype is None or path_type == rtype:
                target = _kind_table(path.target_kind)
                options.append(path.matches(select(target.c.pk).where(target.c.id == rid)))
        return options[0] if len(options) == 1 else or_(*options)

    def present(path: RefPath) -> Clause:
        if path.is_column:
            return path.target.is_not(None)
        stmt = select(path.source).where(path.target.is_not(None))
        return path.owner.in_(stmt if path.condition is None else stmt.where(path.condition))

    def missing(is_missing: bool) -> Clause:
        found = or_(*[present(p) for _, p in paths])
        return not_(found) if is_missing else found

    return SearchParam(name, "reference", clause, types, doc, missing, paths=tuple(p for _, p in paths))


def choice_param(name: str, options: dict[str, Callable[[], Clause]], systems: frozenset[str],
                 doc: str) -> SearchParam:
    """A token parameter over computed states: each code maps to a clause built at query time (some depend on
    today's date)."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        system, code = split_token(value, expression)
        check_token(code, expression)
        if system and system not in systems:
            return false()
        if code not in options:
            raise invalid(f"Unknown code '{code}' for '{expression}' ({', '.join(options)})", expression)
        match = options[code]()
        return not_(match) if modifier == "not" else match

    return SearchParam(name, "token", clause, frozenset({"not"}), doc)


def policy_status_options(t: Any = policy) -> dict[str, Callable[[], Clause]]:
    """The openIMIS status of a policy row, expired computed from today's date."""
    return {
        "idle": lambda: t.c.status == IDLE,
        "active": lambda: (t.c.status == ACTIVE) & (t.c.expiry_date >= today()),
        "expired": lambda: (t.c.status == ACTIVE) & (t.c.expiry_date < today()),
        "suspended": lambda: t.c.status == SUSPENDED,
        "ready": lambda: t.c.status == READY,
    }


# --- Patient.active / Group.active -----------------------------------------------------------------------------


_FAMILY_FLAGS = select(insuree.c.pk, insuree.c.family_pk, insuree.c.has_active_policy).where(
    insuree.c.family_pk.in_(bindparam("families", expanding=True)), is_current(insuree))
_MEMBER = insuree.alias("member")
# Group.active before this write: a current member of the insuree's family is flagged.
_FAMILY_WAS_ACTIVE = select(_MEMBER.c.pk).where(
    _MEMBER.c.family_pk == insuree.c.family_pk, is_current(_MEMBER), _MEMBER.c.has_active_policy).exists()
_MEMBERS_OF = select(insuree_policy.c.insuree_pk).where(insuree_policy.c.policy_pk == bindparam("policy"),
                                                        is_current(insuree_policy))



def refresh_active_policy_flags(ctx: WriteContext, insuree_pks: Iterable[int], on: date | None = None) -> None:
    """Recompute `insuree.has_active_policy` (Patient.active: an active policy covers the insuree today, the same
    test as the calendar job `hifhir.jobs.covered_on`, which flips it when a window opens or closes) and
    re-version the Patients, and the Groups (Group.active: a member is covered), whose flag changed."""
    pks = sorted(set(insuree_pks))
    if pks:
        _refresh_flags(ctx, "insurees", {"pks": pks}, on)


def _flags_query(which: Any) -> DriverQuery:
    from hifhir.jobs import covered_on

    return DriverQuery(select(
        insuree.c.pk, insuree.c.family_pk, insuree.c.has_active_policy,
        covered_on(bindparam("today", type_=Date)).label("covered"),
        _FAMILY_WAS_ACTIVE.label("family_active"), insuree.c.id, insuree.c.version_id).where(which)
        .with_for_update(of=insuree, key_share=True))


# The insurees' flags, whether they are covered today and whether their Group was active: of a list of insurees, or
# of a policy's members. They are locked: the flags may change, and their next versions are this transaction's.
_FLAGS = {"insurees": _flags_query(any_pk(insuree.c.pk)),
          "policy": _flags_query(insuree.c.pk.in_(_MEMBERS_OF))}


def _refresh_flags(ctx: WriteContext, which: str, params: dict[str, Any], on: date | None) -> None:
    """`refresh_active_policy_flags` of the insurees `which` names (a key of _FLAGS), in one read."""
    rows = _FLAGS[which].rows(ctx.conn, {**params, "today": on or today()})
    changed = [r for r in rows if bool(r.covered) != bool(r.has_active_policy)]
    if not changed:
        return
    group_was_active = {r.family_pk: bool(r.family_active) for r in rows if r.family_pk is not None}
    locked = {r.pk: (r.id, r.version_id) for r in changed}
    for flag in (True, False):
        apply_active_policy_flags(ctx, [(r.pk, r.family_pk) for r in changed if bool(r.covered) is flag], flag,
                                  group_was_active, locked)


def apply_active_policy_flags(ctx: WriteContext, flipped: list[tuple[int, int | None]], flag: bool,
                              group_was_active: dict[int, bool] | None = None,
                              locked: dict[int, tuple[str, int]] | None = None) -> None:
    """Set `has_active_policy` to `flag` for the insurees (pk, family pk) whose flag is the opposite, re-version
    their Patients and the Groups whose `active` changed with them. `group_was_active` (family pk → a member was
    flagged before), when the caller knows it, spares the read of the families' members; `locked`: the insurees'
    (id, version) as the caller read them under a row lock (`WriteContext.versioned_update`)."""
    if not flipped:
        return
    conn = ctx.conn
    ctx.versioned_update("patient", sorted(pk for pk, _ in flipped), {"has_active_policy": flag}, locked=locked)
    families = sorted({family_pk for _, family_pk in flipped if family_pk is not None})
    if not families:
        return
    if group_was_active is not None and flag and all(f in group_was_active for f in families):
        # Members were only switched on: a Group changes when none of its members was on before.
        for family_pk in families:
            if not group_was_active[family_pk]:
                ctx.mark_patch("group", family_pk, {"active": True})
        return
    before: dict[int, bool] = dict.fromkeys(families, False)
    after: dict[int, bool] = dict.fromkeys(families, False)
    flipped_pks = {pk for pk, _ in flipped}
    for r in conn.execute(_FAMILY_FLAGS, {"families": families}):  # read after the update above
        now = bool(r.has_active_policy)
        was = (not now) if r.pk in flipped_pks else now
        before[r.family_pk] |= was
        after[r.family_pk] |= now
    for family_pk in families:
        if before[family_pk] != after[family_pk]:
            ctx.mark_patch("group", family_pk, {"active": after[family_pk]})


# --- activation ------------------------------------------------------------------------------------------------

# The policy with its product's terms and Coverage, as activation needs them: one read. Policy columns are labelled
# (the product has a status too); the product's keep their names for `ProductTerms.from_row`. The policy is locked: two
# payments completing its value one beside the other each see the other's contribution (PostgreSQL reads the
# contributions after the lock is granted), and its next version is this transaction's to take.
_STANDING = DriverQuery(
    select(policy.c.status.label("policy_status"), policy.c.value.label("policy_value"),
           policy.c.start_date.label("policy_start"), policy.c.expiry_date.label("policy_expiry"),
           policy.c.effective_date.label("policy_effective"), policy.c.id.label("policy_id"),
           policy.c.version_id.label("policy_version"), policy.c.deleted.label("policy_deleted"),
           select(coverage.c.pk).where(coverage.c.policy_pk == policy.c.pk).scalar_subquery().label("coverage_pk"),
           *(product.c[name] for name in TERMS_COLUMNS))
    .select_from(policy.join(product, product.c.pk == policy.c.product_pk))
    .where(policy.c.pk == bindparam("pk"))
    .with_for_update(of=policy, key_share=True))


class PolicyGone(LookupError):
    """The policy to activate was deleted (a payment of an invoice issued before)."""
_PAYMENTS = DriverQuery(select(premium.c.pk, premium.c.receipt, premium.c.amount, premium.c.pay_date,
                               premium.c.is_photo_fee)
                        .where(premium.c.policy_pk == bindparam("pk"), is_current(premium)))
_SET_MEMBERS_EFFECTIVE = DriverQuery(update(insuree_policy).where(
    insuree_policy.c.policy_pk == bindparam("policy"), is_current(insuree_policy)).values(
    effective_date=bindparam("effective", type_=insuree_policy.c.effective_date.type)))


def activate_if_paid(ctx: WriteContext, policy_pk: int, *, requested: int | None = None,
                     members: Iterable[int] | None = None, coverage_pk: int | None = None,
                     added_receipt: str | None = None) -> bool:
    """Activate the policy `policy_pk` when it is idle and its current contributions cover its value
    (`hifhir.domain.policy.activation_date`: option 1, within the product's installments), then apply the status
    change a Contract write asks (`requested`, None when it asks nothing; a refused change is a 409). Returns
    whether the contributions activated it.

    What it re-versions, in the caller's transaction:
    * when the status or effective date changes: the policy row (the Contract: the caller marks it) and its
      members' `insuree_policy.effective_date`, the Coverage, and the Patients and Groups whose `active` flag
      changed (`refresh_active_policy_flags` over the policy's current members);
    * with `members` (a Contract write, which changed the policy whatever its status): the Coverage
      (`coverage_pk`, or the policy's) and the flags of `members` — the insurees the write touched — always.
    A payment that does not activate its policy changes nothing here. `added_receipt`: the contribution a payment
    just added (its Contract is patched, `ContractKind.patch_body`, when that contribution comes last)."""
    conn = ctx.conn
    standing, paid = rows_together(conn, [(_STANDING, {"pk": policy_pk}), (_PAYMENTS, {"pk": policy_pk})])
    row = standing[0]
    if row.policy_deleted:
        raise PolicyGone(policy_pk)
    if added_receipt is not None and max(paid, key=lambda r: r.pk).receipt != added_receipt:
        # A contribution committed meanwhile sorts after this one (PostgreSQL's sequence): render the Contract.
        ctx.mark("contract", policy_pk)
    payments = [Payment(r.amount, r.pay_date, bool(r.is_photo_fee)) for r in paid]
    status, effective = row.policy_status, row.policy_effective
    activated = activation_date(status, row.policy_value, payments, ProductTerms.from_row(row), row.policy_start)
    if activated is not None:
        status, effective = ACTIVE, activated
    if requested is not None:
        status, effective = _transition(status, effective, requested, row, payments, today())
    moved = (status, effective) != (row.policy_status, row.policy_effective)
    if moved:
        ctx.versioned_update("contract", [policy_pk], {"status": status, "effective_date": effective},
                             locked={policy_pk: (row.policy_id, row.policy_version)})
        _SET_MEMBERS_EFFECTIVE.run(conn, {"policy": policy_pk, "effective": effective}, defer=True)
    elif members is None:
        return False
    if coverage_pk is None:
        coverage_pk = row.coverage_pk
    if coverage_pk is not None:
        if members is None:  # a payment's activation: the policy's status and effective date changed, nothing else
            ctx.mark_patch("coverage", int(coverage_pk), {"status": status, "effective_date": effective,
                                                          "expiry_date": row.policy_expiry})
        else:
            ctx.mark("coverage", int(coverage_pk))
    if members is None:
        _refresh_flags(ctx, "policy", {"policy": policy_pk}, None)
    else:
        refresh_active_policy_flags(ctx, members)
    return activated is not None


def _transition(status: int, effective: date | None, requested: int, row: Any, payments: list[Payment],
                day: date) -> tuple[int, date | None]:
    """A status change asked through the policy-status extension (after this write's contributions); `row` is
    the policy as `_STANDING` reads it."""
    now = status_on(status, row.policy_expiry, day)
    expression = "Contract.extension[policy-status]"
    if requested == now:
        return status, effective
    if requested == SUSPENDED and now in (ACTIVE, IDLE):
        return SUSPENDED, effective
    if requested == ACTIVE and now == SUSPENDED:
        if paid_amount(payments) < row.policy_value:
            raise conflict("A suspended policy is reactivated only once its contributions cover its value",
                           expression)
        if row.policy_expiry < day:
            raise conflict("A policy past its expiry date cannot be reactivated", expression)
        if effective is None:
            last_paid = max((p.pay_date for p in payments if not p.photo_fee), default=row.policy_start)
            effective = max(last_paid, row.policy_start)
        return ACTIVE, effective
    hint = " (contributions covering its value activate an idle policy)" if now == IDLE else ""
    raise conflict(f"A policy cannot go from {STATUS_NAMES[now]} to {STATUS_NAMES[requested]}{hint}",
                   expression)


# --- input -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PremiumIn:
    receipt: str
    amount: Decimal
    pay_date: date
    pay_type: str
    photo_fee: bool
    payer: str | None
    expression: str

    def same_as(self, row: Row) -> bool:
        return (self.amount, self.pay_date, self.pay_type, self.photo_fee, self.payer) == (
            row.amount, row.pay_date, row.pay_type, bool(row.is_photo_fee), row.payer)

    def values(self) -> dict[str, Any]:
        return {"receipt": self.receipt, "amount": self.amount, "pay_date": self.pay_date,
                "pay_type": self.pay_type, "is_photo_fee": self.photo_fee, "payer": self.payer}


@dataclass(slots=True)
class ContractIn:
    informal: bool
    family_pk: int | None
    holder_pk: int | None
    officer_pk: int | None
    enroll_date: date
    head_pk: int
    covered: list[Row]  # insuree rows, in family order
    product: Row
    premiums: list[PremiumIn]
    requested_status: int | None
    positions: dict[int, int]  # insuree pk → index in asset.typeReference (for error expressions)
    owner: Row  # the family (_FAMILY_INFO) or policy holder (_HOLDER_INFO), locked, with its place
    officer_id: str | None
    head_id: str
    head_chf_id: str | None


@dataclass(frozen=True, slots=True)
class Computed:
    stage: Stage
    period: PolicyPeriod
    value: Decimal
    previous_pk: int | None
    previous_expiry: date | None


def _full_date(value: Any, what: str, expression: str) -> date:
    require(isinstance(value, str) and len(value) >= 10, f"{what} must be a full date (YYYY-MM-DD)", expression)
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise invalid(f"{what} '{str(value)[:20]}' is not a calendar date", expression) from None


def _code(concept: Any, allowed: dict[str, str], what: str, expression: str) -> str:
    code = first_code(concept) if isinstance(concept, dict) else None
    require(code in allowed, f"{what} must be one of {', '.join(allowed)}", expression)
    return str(code)


def parse_premium(ext: dict[str, Any], expression: str) -> PremiumIn:
    """One contract-premium extension; amounts > 0 in the scheme currency, dates not in the future."""

    def part(url: str) -> dict[str, Any]:
        sub = sub_extension(ext, url)
        require(sub is not None, f"A premium needs its {url}", f"{expression}.extension[{url}]")
        return sub  # type: ignore[return-value]

    category = _code(part("category").get("valueCodeableConcept"), CATEGORIES, "The premium category",
                     f"{expression}.extension[category]")
    amount = parse_money(part("amount").get("valueMoney"), "The premium amount", f"{expression}.extension[amount]")
    require(amount > 0, "The premium amount must be positive", f"{expression}.extension[amount]")
    receipt = part("receipt").get("valueString")
    require(isinstance(receipt, str) and 0 < len(receipt.strip()) <= RECEIPT_MAX,
            f"The receipt number is required (at most {RECEIPT_MAX} characters)", f"{expression}.extension[receipt]")
    pay_date = _full_date(part("date").get("valueDate"), "The payment date", f"{expression}.extension[date]")
    require(pay_date <= today(), "The payment date cannot be in the future", f"{expression}.extension[date]")
    pay_type = _code(part("type").get("valueCodeableConcept"), PAY_TYPES, "The payment type",
                     f"{expression}.extension[type]")
    payer_ext = sub_extension(ext, "payer")
    payer = first_code(payer_ext.get("valueCodeableConcept")) if payer_ext else None
    require(payer is None or len(payer) <= PAYER_MAX, f"The payer code is at most {PAYER_MAX} characters",
            f"{expression}.extension[payer]")
    return PremiumIn(receipt.strip(), amount, pay_date, pay_type, category == "P", payer, expression)


_INSUREE_COLUMNS = (insuree.c.pk, insuree.c.id, insuree.c.chf_id, insuree.c.family_pk, insuree.c.dob,
                    insuree.c.relationship, insuree.c.is_head, insuree.c.has_active_policy, insuree.c.version_id)
_INSUREES_BY_ID = select(*_INSUREE_COLUMNS).where(insuree.c.id.in_(bindparam("ids", expanding=True)),
                                                  is_current(insuree))
_INSUREE_BY_PK = select(*_INSUREE_COLUMNS).where(insuree.c.pk == bindparam("pk"))
# An enrolment locks them (PostgreSQL, where the read is in the write transaction): it may flip their Patient.active,
# and their next versions are then its to take. An update of a Contract flips flags through `_refresh_flags`, which
# reads and locks them itself, after the policy (the order a payment's activation takes too).
_LOCKED = {False: (_INSUREES_BY_ID, _INSUREE_BY_PK),
           True: (_INSUREES_BY_ID.with_for_update(of=insuree, key_share=True),
                  _INSUREE_BY_PK.with_for_update(of=insuree, key_share=True))}


# Statements of the enrolment path, built once (building and cache-keying a statement costs more than running it).
# Each referenced entity is read once, by id, with everything the checks and the rendering need.
_PLACE_COLUMNS = (location.c.ward_pk, location.c.district_pk, location.c.region_pk)
_FAMILY_INFO = select(
    family.c.pk, family.c.id, family.c.head_insuree_pk, family.c.location_pk, *_PLACE_COLUMNS,
    select(insuree.c.pk).where(insuree.c.family_pk == family.c.pk, is_current(insuree),
                               insuree.c.has_active_policy).exists().label("any_active"),
).select_from(family.outerjoin(location, location.c.pk == family.c.location_pk))
_HOLDER_INFO = select(
    policy_holder.c.pk, policy_holder.c.id, policy_holder.c.code, policy_holder.c.location_pk, *_PLACE_COLUMNS,
).select_from(policy_holder.outerjoin(location, location.c.pk == policy_holder.c.location_pk))


class _Lookup:
    """A row by current id (a literal reference) or by pk (after `ctx.resolve`), through the driver."""

    def __init__(self, stmt: Any, table: Any, *, lock: bool = False) -> None:
        by_id = stmt.where(table.c.id == bindparam("id"), is_current(table))
        by_pk = stmt.where(table.c.pk == bindparam("pk"))
        if lock:  # the family / policy holder row serialises enrolments of the same owner
            by_id, by_pk = by_id.with_for_update(of=table), by_pk.with_for_update(of=table)
        self.by_id, self.by_pk = DriverQuery(by_id), DriverQuery(by_pk)

    def find(self, conn: Connection, rid: str) -> Any:
        rows = self.by_id.rows(conn, {"id": rid})
        return rows[0] if rows else None

    def get(self, conn: Connection, pk: int) -> Any:
        rows = self.by_pk.rows(conn, {"pk": pk})
        return rows[0] if rows else None


_LOOKUPS = {
    "family": _Lookup(_FAMILY_INFO, family, lock=True),
    "policy_holder": _Lookup(_HOLDER_INFO, policy_holder, lock=True),
    "product": _Lookup(select(product), product),
    "officer": _Lookup(select(officer.c.pk, officer.c.id, officer.c.code, officer.c.location_pk), officer),
    "insuree": _Lookup(select(insuree.c.pk, insuree.c.id, insuree.c.chf_id), insuree),
}
_CONVERSIONS = select(product.c.pk, product.c.conversion_product_pk).where(
    product.c.conversion_product_pk.is_not(None), is_current(product))
_OTHERS = {  # the other current policies of the same family / policy holder
    "family": (policy.c.family_pk == bindparam("owner"), is_current(policy), policy.c.pk != bindparam("exclude")),
    "holder": (policy.c.policy_holder_pk == bindparam("owner"), is_current(policy),
               policy.c.pk != bindparam("exclude")),
}
_POLICY_DATES = (policy.c.pk, policy.c.product_pk, policy.c.start_date, policy.c.expiry_date,
                 policy.c.effective_date)
# A family has a handful of policies: all of them at once serve both the renewal and the overlap checks.
_FAMILY_POLICIES = select(*_POLICY_DATES).where(*_OTHERS["family"]).order_by(policy.c.pk)
_HOLDER_CANDIDATES = select(*_POLICY_DATES).where(
    *_OTHERS["holder"], policy.c.product_pk.in_(bindparam("sources", expanding=True)),
    policy.c.effective_date.is_not(None))
_INSUREE_OVERLAP = select(insuree.c.chf_id).select_from(
    insuree_policy.join(policy, policy.c.pk == insuree_policy.c.policy_pk)
    .join(insuree, insuree.c.pk == insuree_policy.c.insuree_pk)).where(
    insuree_policy.c.insuree_pk.in_(bindparam("insurees", expanding=True)), is_current(insuree_policy),
    is_current(policy), policy.c.pk != bindparam("exclude"), policy.c.product_pk == bindparam("product"),
    policy.c.start_date <= bindparam("expiry"), policy.c.expiry_date >= bindparam("start")).limit(1)
_RECEIPT_TAKEN = select(premium.c.receipt).where(
    premium.c.product_pk == bindparam("product"), premium.c.receipt.in_(bindparam("receipts", expanding=True)),
    premium.c.policy_pk != bindparam("policy"), is_current(premium)).limit(1)
# The usual single receipt: ints and a string only, so the driver-level statement needs no type processing.
_ONE_RECEIPT_TAKEN = FastStatement(select(premium.c.receipt).where(
    premium.c.product_pk == bindparam("product"), premium.c.receipt == bindparam("receipt"),
    premium.c.policy_pk != bindparam("policy"), is_current(premium)).limit(1))
_COVERAGE_OF = select(coverage.c.pk).where(coverage.c.policy_pk == bindparam("pk"))


def _product_reference(resource: dict[str, Any]) -> Any:
    """term[0].asset[0].valuedItem[0].entityReference when the Contract has that shape (checked later, in order)."""
    try:
        return resource["term"][0]["asset"][0]["valuedItem"][0].get("entityReference")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def _literal_id(ref: Any, rtype: str) -> str | None:
    literal = ref.get("reference") if isinstance(ref, dict) else None
    prefix = rtype + "/"
    if isinstance(literal, str) and literal.startswith(prefix) and literal.count("/") == 1:
        return literal[len(prefix):]
    return None


def _prefetch(ctx: WriteContext, wanted: list[tuple[Any, str, str]]) -> dict[tuple[str, str], Row]:
    """The rows of the literal `Type/id` references among `wanted` (reference, type, table), read together (one
    round trip on PostgreSQL); `_fetch` takes them from there and still checks each reference in its turn."""
    keys, reads = [], []
    for ref, rtype, table_name in wanted:
        rid = _literal_id(ref, rtype)
        if rid is not None:
            keys.append((table_name, rid))
            reads.append((_LOOKUPS[table_name].by_id, {"id": rid}))
    return {key: rows[0] for key, rows in zip(keys, rows_together(ctx.conn, reads), strict=True) if rows}


def _fetch(ctx: WriteContext, ref: Any, rtype: str, kind_name: str, table_name: str, expression: str,
           known: dict[tuple[str, str], Row] | None = None) -> Row:
    """The row of a `Type/id` reference in one prebuilt query (or among the `known` rows `_prefetch` read);
    anything else (codes on the openIMIS alias, logical references, missing targets and their 422) is resolved by
    `ctx.resolve` first."""
    lookup = _LOOKUPS[table_name]
    rid = _literal_id(ref, rtype)
    if rid is not None:
        row = (known or {}).get((table_name, rid)) or lookup.find(ctx.conn, rid)
        if row is not None:
            return row
    pk = ctx.resolve(ref, [rtype], expression, kinds=[kind_name])[1]
    row = lookup.get(ctx.conn, pk)
    assert row is not None  # ctx.resolve found it current in this transaction
    return row


# --- render ----------------------------------------------------------------------------------------------------


def _render_statement() -> Any:
    head = insuree.alias("head")
    return (
        select(policy, family.c.id.label("family_id"), policy_holder.c.id.label("holder_id"),
               officer.c.id.label("officer_id"), product.c.id.label("product_id"),
               product.c.code.label("product_code"), product.c.name.label("product_name"),
               head.c.id.label("head_id"))
        .select_from(policy.outerjoin(family, family.c.pk == policy.c.family_pk)
                     .outerjoin(policy_holder, policy_holder.c.pk == policy.c.policy_holder_pk)
                     .outerjoin(officer, officer.c.pk == policy.c.officer_pk)
                     .join(product, product.c.pk == policy.c.product_pk)
                     .outerjoin(head, head.c.pk == policy.c.head_insuree_pk))
        .where(any_pk(policy.c.pk))
    )


# Renders run at every write that re-versions a policy (an enrolment, a payment that activates it): prebuilt.
_POLICY_VIEW = DriverQuery(_render_statement())  # the policy with the ids and names its Contract and Coverage show

_COVERED = DriverQuery(
    select(insuree_policy.c.policy_pk, insuree.c.id)
    .join(insuree, insuree.c.pk == insuree_policy.c.insuree_pk)
    .where(any_pk(insuree_policy.c.policy_pk), is_current(insuree_policy))
    .order_by(insuree_policy.c.policy_pk, insuree.c.is_head.desc(), insuree.c.pk)
)
_PREMIUMS = DriverQuery(
    select(premium).where(any_pk(premium.c.policy_pk), is_current(premium))
    .order_by(premium.c.policy_pk, premium.c.pk)
)


def _policy_views_known(conn: Connection, pks: list[int]) -> tuple[dict[int, Any], list[Read]]:
    """The policy views this flush's renders read already (`render_memo`: a policy re-versioned re-versions its
    Contract and its Coverage, which both show it), and the read of the others (none when all are known); the
    caller adds what that read finds to the dict."""
    memo = render_memo(conn)
    views: dict[int, Any] = memo.setdefault("policy_view", {}) if memo is not None else {}
    missing = [pk for pk in pks if pk not in views]
    return views, [(_POLICY_VIEW, {"pks": missing})] if missing else []


def policy_views_plan(conn: Connection, pks: list[int]) -> Plan[dict[int, Any]]:
    """The policies as their Contract and Coverage show them, by pk."""
    views, reads = _policy_views_known(conn, pks)
    if reads:
        found, = yield reads
        views.update((r.pk, r) for r in found)
    return {pk: views[pk] for pk in pks if pk in views}


def _premium_extension(row: Row) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if row.payer:
        parts.append({"url": "payer", "valueCodeableConcept": {"coding": [
            coding(CS + "contract-premium-payer", row.payer, PAYERS.get(row.payer))]}})
    category = "P" if row.is_photo_fee else "C"
    parts += [
        {"url": "category", "valueCodeableConcept": {"coding": [
            coding(CS + "contract-premium-category", category, CATEGORIES[category])]}},
        {"url": "amount", "valueMoney": money(row.amount)},
        {"url": "receipt", "valueString": row.receipt},
        {"url": "date", "valueDate": row.pay_date.isoformat()},
        {"url": "type", "valueCodeableConcept": {"coding": [
            coding(CS + "contract-premium-type", row.pay_type, PAY_TYPES.get(row.pay_type))]}},
    ]
    return {"url": PREMIUM_URL, "extension": parts}


def _stored_amount(value: Decimal) -> Decimal:
    """An amount as the `Amount` column gives it back (integer hundredths)."""
    return Decimal(int((Decimal(str(value)) * 100).to_integral_value())).scaleb(-2)


def _use_period(effective_date: date | None, expiry: str) -> dict[str, Any]:
    use_period: dict[str, Any] = (
        {"start": effective_date.isoformat()} if effective_date is not None else {"_start": not_yet_known()})
    use_period["end"] = expiry
    return use_period


def _contract(row: Row, covered: list[str], premiums: list[Row], day: date) -> dict[str, Any]:
    informal = row.family_pk is not None
    expiry = row.expiry_date.isoformat()
    use_period = _use_period(row.effective_date, expiry)
    res: dict[str, Any] = {
        "extension": [
            {"url": POLICY_STATUS_URL, "valueCode": STATUS_NAMES[status_on(row.status, row.expiry_date, day)]},
            {"url": POLICY_STAGE_URL, "valueCode": row.stage},
        ],
        "identifier": identifiers(None, row.uuid),
        "status": "executed" if row.effective_date is not None else "offered",
        "issued": row.enroll_date.isoformat(),
        "subject": [reference("Group", row.family_id) if informal else reference("Organization", row.holder_id)],
    }
    if row.officer_id is not None:
        res["author"] = reference("Practitioner", row.officer_id)
    scope = "informal" if informal else "formal"
    res["scope"] = {"coding": [coding(CS + "contract-scope", scope, SCOPES[scope])]}
    asset: dict[str, Any] = {}
    if premiums:
        asset["extension"] = [_premium_extension(p) for p in premiums]
    asset["typeReference"] = [reference("Patient", pid) for pid in covered]
    asset["period"] = [{"start": row.start_date.isoformat(), "end": expiry}]
    asset["usePeriod"] = [use_period]
    asset["valuedItem"] = [{"entityReference": reference("InsurancePlan", row.product_id),
                            "net": money(row.value)}]
    offer: dict[str, Any] = {"party": [{
        "reference": [reference("Patient", row.head_id)] if row.head_id else [],
        "role": {"coding": [coding(CS + "contract-resource-party-role", "beneficiary", "Beneficiary")]}}]}
    res["term"] = [{"offer": offer, "asset": [asset]}]
    return res


# --- the kind --------------------------------------------------------------------------------------------------


class ContractKind(ResourceKind):
    resource_type = "Contract"
    name = "contract"
    profile_id = "openimis-contract"
    table = policy
    scope = location_scope.POLICY
    code_column = None
    # A payment's contribution (`premium`: the receipt, amount, pay date and type of a category C premium without
    # payer, the last by pk) and the activation it brings (status, effective date): payments.add_contribution.
    patchable = frozenset({"status", "effective_date", "premium"})

    def __init__(self) -> None:
        t = policy
        ip = insuree_policy
        self.search_params = {
            **common_params(self),
            "patient": typed_reference_param(
                "patient", [("Patient", link_ref(t.c.pk, ip.c.policy_pk, ip.c.insuree_pk, "patient",
                                                 is_current(ip)))],
                "A covered insuree (term.asset.typeReference)"),
            "beneficiary": typed_reference_param(
                "beneficiary", [("Patient", column_ref(t.c.head_insuree_pk, "patient"))],
                "The head of the family (term.offer.party)"),
            "subject": typed_reference_param(
                "subject", [("Group", column_ref(t.c.family_pk, "group")),
                            ("Organization", column_ref(t.c.policy_holder_pk, "policy-holder"))],
                "The family (informal sector) or the policy holder (formal sector)"),
            "author": typed_reference_param(
                "author", [("Practitioner", column_ref(t.c.officer_pk, "enrolment-officer"))],
                "The enrolment officer"),
            "product": typed_reference_param(
                "product", [("InsurancePlan", column_ref(t.c.product_pk, "insurance-plan"))],
                "The product (term.asset.valuedItem.entityReference)"),
            "status": choice_param(
                "status", {"offered": lambda: t.c.effective_date.is_(None),
                           "executed": lambda: t.c.effective_date.is_not(None)},
                frozenset({CONTRACT_STATUS_SYSTEM}), "offered (not yet effective) or executed"),
            "policy-status": choice_param(
                "policy-status", policy_status_options(t), frozenset({HIFHIR_CS + "policy-status"}),
                "The openIMIS policy status: idle, active, suspended, expired or ready"),
            "issued": date_param("issued", t.c.enroll_date, doc="The enrolment (or renewal) date"),
        }
        self.sort_params = {**common_sorts(self), "issued": SortKey(t.c.enroll_date, "date")}

    # --- to FHIR -------------------------------------------------------------------------------------------

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        return run_plan(conn, self.render_plan(conn, pks))

    def patch_body(self, body: dict[str, Any], change: Mapping[str, Any]) -> bool:
        try:
            term = body["term"][0]
            asset = term["asset"][0]
            status_ext = body["extension"][0]
            expiry = asset["usePeriod"][0]["end"]
        except (KeyError, IndexError, TypeError):
            return False
        if status_ext.get("url") != POLICY_STATUS_URL:
            return False
        if "premium" in change:
            premium_in = {**change["premium"], "amount": _stored_amount(change["premium"]["amount"])}
            added = _premium_extension(SimpleNamespace(payer=None, is_photo_fee=False, **premium_in))
            # the render's key order: the contributions first
            asset = term["asset"][0] = {"extension": [*asset.get("extension", []), added],
                                        **{k: v for k, v in asset.items() if k != "extension"}}
        if "status" in change:
            status_ext["valueCode"] = STATUS_NAMES[status_on(change["status"], date.fromisoformat(expiry), today())]
            effective = change["effective_date"]
            body["status"] = "executed" if effective is not None else "offered"
            asset["usePeriod"] = [_use_period(effective, expiry)]
        return True

    def render_plan(self, conn: Connection, pks: list[int]) -> Plan[dict[int, dict[str, Any]]]:
        # The policies (unless this flush's Coverage render read them), members and contributions: one step.
        views, view_reads = _policy_views_known(conn, pks)
        member_rows, premium_rows, *viewed = yield [(_COVERED, {"pks": pks}), (_PREMIUMS, {"pks": pks}), *view_reads]
        for found in viewed:
            views.update((r.pk, r) for r in found)
        covered: dict[int, list[str]] = {pk: [] for pk in pks}
        for policy_pk, insuree_id in member_rows:
            covered[policy_pk].append(insuree_id)
        premiums: dict[int, list[Row]] = {pk: [] for pk in pks}
        for p in premium_rows:
            premiums[p.policy_pk].append(p)
        day = today()
        return {pk: _contract(views[pk], covered[pk], premiums[pk], day) for pk in pks if pk in views}

    # --- from FHIR -----------------------------------------------------------------------------------------

    # An enrolment's register reads (family, officer, product, covered insurees) and the checks on them run before
    # the SQLite writer lock; the reads that decide against other policies (renewal, overlap, receipts) stay in
    # the write transaction.
    reads_ahead = True

    def read_ahead(self, ctx: WriteContext, resource: dict[str, Any]) -> ContractIn:
        data = self._parse(ctx, resource, lock=True)
        self._check(ctx, data)
        return data

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        if current is not None and current.deleted:
            raise conflict("This Contract was deleted; enrol again with a new Contract", "Contract")
        if current is None:
            data = ctx.read_ahead if isinstance(ctx.read_ahead, ContractIn) else self.read_ahead(ctx, resource)
            return self._create(ctx, resource, data)
        return self._update(ctx, resource, self._parse(ctx, resource), current)

    def delete(self, ctx: WriteContext, current: Row) -> None:
        if current.status != IDLE:
            name = STATUS_NAMES[status_on(current.status, current.expiry_date, today())]
            raise conflict(f"Only an idle policy can be deleted; this one is {name} (suspend it instead)",
                           "Contract")
        conn, pk = ctx.conn, current.pk
        members = [r[0] for r in conn.execute(select(insuree_policy.c.insuree_pk).where(
            insuree_policy.c.policy_pk == pk, is_current(insuree_policy)))]
        conn.execute(update(insuree_policy).where(insuree_policy.c.policy_pk == pk).values(deleted=True))
        conn.execute(update(premium).where(premium.c.policy_pk == pk).values(deleted=True))
        if (invoice_pk := cancel_policy_invoice(conn, pk)) is not None:
            ctx.mark("invoice", invoice_pk)
        from hifhir.fhir.registry import KINDS

        cov_pk = conn.execute(_COVERAGE_OF, {"pk": pk}).scalar()
        if cov_pk is not None:
            ctx.deleted.append((KINDS["coverage"], int(cov_pk)))
        refresh_active_policy_flags(ctx, members)

    # --- parsing -------------------------------------------------------------------------------------------

    def _parse(self, ctx: WriteContext, resource: dict[str, Any], *, lock: bool = False) -> ContractIn:
        scope = _code(resource.get("scope"), SCOPES, "scope", "Contract.scope")
        informal = scope == "informal"
        subjects = resource.get("subject") or []
        require(len(subjects) == 1, "A Contract enrols exactly one subject", "Contract.subject")
        known = _prefetch(ctx, [
            (subjects[0], "Group", "family") if informal else (subjects[0], "Organization", "policy_holder"),
            (resource.get("author"), "Practitioner", "officer"),
            (_product_reference(resource), "InsurancePlan", "product")])
        family_pk = holder_pk = None
        if informal:
            owner = _fetch(ctx, subjects[0], "Group", "group", "family", "Contract.subject[0]", known)
            family_pk = int(owner.pk)
        else:
            owner = _fetch(ctx, subjects[0], "Organization", "policy-holder", "policy_holder", "Contract.subject[0]",
                           known)
            holder_pk = int(owner.pk)
        officer = None
        if resource.get("author") is not None:
            officer = _fetch(ctx, resource["author"], "Practitioner", "enrolment-officer", "officer",
                             "Contract.author", known)
            # openIMIS sells through the officers of the family's district (legacy EnterPolicy code 5: "officer
            # not applicable to the family's location"); an officer without a district is not restricted.
            require(officer.location_pk is None or owner.district_pk is None
                    or officer.location_pk == owner.district_pk,
                    f"Enrolment officer {officer.code} works in another district than the "
                    f"{'family' if informal else 'policy holder'}", "Contract.author")
        enroll_date = _full_date(resource.get("issued"), "issued (the enrolment date)", "Contract.issued")
        require(enroll_date <= today(), "The enrolment date (issued) cannot be in the future", "Contract.issued")

        terms = resource.get("term") or []
        require(len(terms) == 1, "One policy per Contract: exactly one term", "Contract.term")
        parties = (terms[0].get("offer") or {}).get("party") or []
        refs = (parties[0].get("reference") or []) if len(parties) == 1 else []
        require(len(refs) == 1, "term.offer.party needs exactly one reference: the head of the family (Patient)",
                f"{TERM}.offer.party")
        assets = terms[0].get("asset") or []
        require(len(assets) == 1, "One policy per Contract: exactly one asset", f"{TERM}.asset")
        asset = assets[0]
        items = asset.get("valuedItem") or []
        require(len(items) == 1, "One product per Contract: exactly one valuedItem", f"{ASSET}.valuedItem")
        product_row = _fetch(ctx, items[0].get("entityReference"), "InsurancePlan", "insurance-plan", "product",
                             f"{ASSET}.valuedItem[0].entityReference", known)
        covered, positions = self._covered(ctx, asset.get("typeReference") or [], family_pk, lock)
        head_ref = refs[0].get("reference") if isinstance(refs[0], dict) else None
        head = next((r for r in covered if head_ref == f"Patient/{r.id}"), None)
        if head is None:
            head = _fetch(ctx, refs[0], "Patient", "patient", "insuree", f"{TERM}.offer.party[0].reference[0]")

        premiums = [parse_premium(e, f"{ASSET}.extension[{i}]")
                    for i, e in enumerate(asset.get("extension") or []) if e.get("url") == PREMIUM_URL]
        seen: set[str] = set()
        for p in premiums:
            if p.receipt in seen:
                raise conflict(f"Receipt {p.receipt} is listed twice", f"{p.expression}.extension[receipt]")
            seen.add(p.receipt)
        requested = None
        for e in resource.get("extension") or ():
            if e.get("url") == POLICY_STATUS_URL:
                requested = STATUS_BY_NAME.get(e.get("valueCode"))
                require(requested is not None and requested != EXPIRED,
                        "policy-status must be idle, active, suspended or ready", "Contract.extension[policy-status]")
        return ContractIn(informal, family_pk, holder_pk, None if officer is None else int(officer.pk), enroll_date,
                          int(head.pk), covered, product_row, premiums, requested, positions, owner,
                          None if officer is None else officer.id, head.id, head.chf_id)

    @staticmethod
    def _covered(ctx: WriteContext, refs: list[Any], family_pk: int | None, lock: bool
                 ) -> tuple[list[Row], dict[int, int]]:
        """The covered insurees (one query for the usual `Patient/<id>` references), in family order for the
        informal sector: the head first, then by registration."""
        conn = ctx.conn
        require(bool(refs), "A policy covers at least one insuree", f"{ASSET}.typeReference")
        ids: list[str | None] = []
        for ref in refs:
            literal = ref.get("reference") if isinstance(ref, dict) else None
            ok = isinstance(literal, str) and literal.startswith("Patient/") and literal.count("/") == 1
            ids.append(literal[8:] if ok else None)  # type: ignore[index]
        wanted = [i for i in ids if i]
        by_ids, by_pk = _LOCKED[lock]
        by_id = {r.id: r for r in conn.execute(by_ids, {"ids": wanted})} if wanted else {}
        rows: list[Row] = []
        seen: set[int] = set()
        for i, (ref, rid) in enumerate(zip(refs, ids, strict=True)):
            expression = f"{ASSET}.typeReference[{i}]"
            row = by_id.get(rid) if rid else None
            if row is None:
                _, pk = ctx.resolve(ref, ["Patient"], expression)
                row = conn.execute(by_pk, {"pk": pk}).one()
            require(row.pk not in seen, f"Insuree {row.chf_id} is listed twice", expression)
            seen.add(row.pk)
            rows.append(row)
        positions = {r.pk: i for i, r in enumerate(rows)}
        return (sorted(rows, key=lambda r: (not r.is_head, r.pk)) if family_pk is not None else rows), positions

    # --- rules ---------------------------------------------------------------------------------------------

    def _check(self, ctx: WriteContext, data: ContractIn) -> None:
        """Who may be covered, and whether the product can be sold to them on the enrolment date."""
        owner = data.owner
        if data.informal:
            for row in data.covered:
                require(row.family_pk == data.family_pk, f"Insuree {row.chf_id} is not a member of the family",
                        f"{ASSET}.typeReference[{data.positions[row.pk]}]")
            require(owner.head_insuree_pk == data.head_pk,
                    "term.offer.party must be the head of the enrolled family", f"{TERM}.offer.party[0].reference[0]")
        p = data.product
        expression = f"{ASSET}.valuedItem[0].entityReference"
        require(p.status == "active", f"Product {p.code} is {p.status}: it cannot be sold", expression)
        require(p.date_from <= data.enroll_date <= p.date_to,
                f"Product {p.code} is sold from {p.date_from} to {p.date_to}, not on {data.enroll_date}", expression)
        if p.location_pk is not None:
            place = {owner.location_pk, owner.ward_pk, owner.district_pk, owner.region_pk}
            require(p.location_pk in place, f"Product {p.code} is not sold where the "
                    f"{'family' if data.informal else 'policy holder'} lives", expression)
        require(len(data.covered) <= p.member_count,
                f"Product {p.code} covers at most {p.member_count} insurees; {len(data.covered)} are listed",
                f"{ASSET}.typeReference")

    def _compute(self, ctx: WriteContext, data: ContractIn, exclude_pk: int | None) -> Computed:
        """Stage, dates and value (domain §3.1.3–3.1.4, §3.1.6), and the refusal of an overlapping policy."""
        conn = ctx.conn
        terms = ProductTerms.from_row(data.product)
        product_pk = data.product.pk
        owner = {"owner": data.family_pk if data.informal else data.holder_pk, "exclude": exclude_pk or -1}
        others: list[PolicyDates] = []
        if data.informal:
            others = [PolicyDates(*r) for r in conn.execute(_FAMILY_POLICIES, owner)]
            candidates = [p for p in others if p.effective_date is not None]
            # Conversions matter only when the family has policies of other products.
            sources = ({product_pk} if all(p.product_pk == product_pk for p in candidates)
                       else renewal_sources(product_pk, dict(conn.execute(_CONVERSIONS).all())))
        else:
            sources = renewal_sources(product_pk, dict(conn.execute(_CONVERSIONS).all()))
            candidates = [PolicyDates(*r) for r in conn.execute(_HOLDER_CANDIDATES,
                                                                {**owner, "sources": sorted(sources)})]
        previous = previous_policy(candidates, sources, data.enroll_date, renewal_window(terms))
        stage = stage_after(previous)
        previous_expiry = previous.expiry_date if previous is not None else None
        try:
            period = policy_period(terms, data.enroll_date, stage, previous_expiry)
        except ValueError as exc:  # a malformed cycle start stored on the product
            raise conflict(f"Product {terms.code} has an unusable start cycle: {exc}",
                           f"{ASSET}.valuedItem[0].entityReference") from None
        members = [Member(r.dob, r.relationship) for r in data.covered]
        value = policy_value(terms, members, stage=stage, enroll_date=data.enroll_date, start_date=period.start,
                             previous_expiry=previous_expiry)
        window = {"product": product_pk, "start": period.start, "expiry": period.expiry}
        if data.informal:
            overlapping = next((p for p in others if p.product_pk == product_pk and p.start_date <= period.expiry
                                and p.expiry_date >= period.start), None)
            if overlapping is not None:
                raise conflict(f"Contract exists: the family already has a policy of product {terms.code} from "
                               f"{overlapping.start_date} to {overlapping.expiry_date}", "Contract.subject[0]")
        else:
            overlapping = conn.execute(_INSUREE_OVERLAP, {
                **window, "exclude": owner["exclude"], "insurees": [r.pk for r in data.covered]}).first()
            if overlapping is not None:
                raise conflict(f"Contract exists: insuree {overlapping.chf_id} already has a policy of product "
                               f"{terms.code} in that period", f"{ASSET}.typeReference")
        return Computed(stage, period, value, previous.pk if previous is not None else None, previous_expiry)

    @staticmethod
    def _policy_values(data: ContractIn, computed: Computed) -> dict[str, Any]:
        return {
            "family_pk": data.family_pk, "policy_holder_pk": data.holder_pk, "product_pk": data.product.pk,
            "officer_pk": data.officer_pk, "head_insuree_pk": data.head_pk, "enroll_date": data.enroll_date,
            "start_date": computed.period.start, "expiry_date": computed.period.expiry, "stage": computed.stage,
            "value": computed.value, "previous_policy_pk": computed.previous_pk,
        }

    @staticmethod
    def _check_receipts(ctx: WriteContext, product_row: Row, premiums: list[PremiumIn], policy_pk: int) -> None:
        """Receipts are unique among the product's current contributions (other policies' ones here; the
        partial unique index is the backstop under concurrency)."""
        if not premiums:
            return
        by_receipt = {p.receipt: p for p in premiums}
        if len(premiums) == 1:
            found = _ONE_RECEIPT_TAKEN.execute(ctx.conn, {"product": product_row.pk, "receipt": premiums[0].receipt,
                                                          "policy": policy_pk})
            if found:
                raise conflict(f"Receipt {found[0][0]} is already used for a contribution to product "
                               f"{product_row.code}", f"{premiums[0].expression}.extension[receipt]")
            return
        taken = ctx.conn.execute(_RECEIPT_TAKEN, {"product": product_row.pk, "receipts": list(by_receipt),
                                                  "policy": policy_pk}).first()
        if taken is not None:
            raise conflict(f"Receipt {taken.receipt} is already used for a contribution to product {product_row.code}",
                           f"{by_receipt[taken.receipt].expression}.extension[receipt]")

    @staticmethod
    def _insert_premiums(ctx: WriteContext, policy_pk: int, product_pk: int, premiums: list[PremiumIn]) -> None:
        insert_rows(ctx.conn, premium, [
            {**p.values(), "policy_pk": policy_pk, "product_pk": product_pk, "created": ctx.now} for p in premiums])

    @staticmethod
    def _member_rows(policy_pk: int, data: ContractIn, computed: Computed,
                     effective: date | None = None) -> list[dict[str, Any]]:
        return [{"policy_pk": policy_pk, "insuree_pk": r.pk, "enroll_date": data.enroll_date,
                 "start_date": computed.period.start, "effective_date": effective,
                 "expiry_date": computed.period.expiry} for r in data.covered]

    # --- create --------------------------------------------------------------------------------------------

    def _create(self, ctx: WriteContext, resource: dict[str, Any], data: ContractIn) -> int:
        computed = self._compute(ctx, data, None)
        self._check_receipts(ctx, data.product, data.premiums, -1)
        # Activation is known before anything is written (the premiums are all in the request).
        payments = [Payment(p.amount, p.pay_date, p.photo_fee) for p in data.premiums]
        effective = activation_date(IDLE, computed.value, payments, ProductTerms.from_row(data.product),
                                    computed.period.start)
        values = self._policy_values(data, computed)
        values.update(status=IDLE if effective is None else ACTIVE, effective_date=effective)
        values["id"], values["uuid"] = resolve_new_id(ctx, resource, policy)
        pk = ctx.insert(policy, values)
        insert_rows(ctx.conn, insuree_policy, self._member_rows(pk, data, computed, effective))
        self._insert_premiums(ctx, pk, data.product.pk, data.premiums)
        # The contribution due is invoiced (domain §3.6); the premiums sent with the Contract count as paid.
        self._invoice(ctx, data, computed, pk, values)
        cov_pk = ctx.insert(coverage, {"id": values["id"], "uuid": values["uuid"], "policy_pk": pk})
        ctx.mark("coverage", cov_pk)
        self._prerender(ctx, data, pk, cov_pk, values)
        day = today()
        if effective is not None and effective <= day <= computed.period.expiry:
            # The new policy covers its members today, whatever else they have: their flags are known.
            flipped = [(r.pk, r.family_pk) for r in data.covered if not r.has_active_policy]
            group_was_active = {data.family_pk: bool(data.owner.any_active)} if data.informal else None
            apply_active_policy_flags(ctx, flipped, True, group_was_active,
                                      {r.pk: (r.id, r.version_id) for r in data.covered})
        else:
            refresh_active_policy_flags(ctx, [r.pk for r in data.covered])
        return pk

    @staticmethod
    def _invoice(ctx: WriteContext, data: ContractIn, computed: Computed, pk: int, values: dict[str, Any]) -> None:
        """The new policy's contribution invoice, from what this write holds (no re-read of the policy, product,
        members or premiums), inserted at version 1 with its body prerendered."""
        from hifhir.fhir.profiles.claim import insurer_id
        from hifhir.fhir.profiles.invoice import party_label, render_invoice

        paid = [p for p in data.premiums if not p.photo_fee]
        members = sorted(data.covered, key=lambda r: (not r.is_head, r.pk))
        facts = PolicyFacts(
            pk=pk, family_pk=data.family_pk, policy_holder_pk=data.holder_pk, head_insuree_pk=data.head_pk,
            who=data.head_chf_id or (None if data.informal else data.owner.code) or str(pk),
            enroll_date=data.enroll_date, start_date=values["start_date"], effective_date=values["effective_date"],
            expiry_date=values["expiry_date"], stage=values["stage"], value=_stored_amount(values["value"]),
            previous_expiry=computed.previous_expiry, product=data.product,
            members=[Member(r.dob, r.relationship) for r in members],
            paid=sum((_stored_amount(p.amount) for p in paid), Decimal(0)),
            last_paid=max((p.pay_date for p in paid), default=None))
        new = policy_invoice(ctx.conn, facts, today=today())
        ids = new_ids()
        invoice_pk = ctx.insert(invoice, {**new.values, **ids})
        insert_rows(ctx.conn, invoice_line, new.line_rows(invoice_pk))
        ctx.mark("invoice", invoice_pk)
        party = data.head_id if data.informal else data.owner.id
        row = SimpleNamespace(**new.values, **ids, **{party_label(new.values["payer_type"]): party})
        ctx.prerendered[("invoice", invoice_pk)] = render_invoice(
            row, [SimpleNamespace(**ln) for ln in new.lines], "payer", "invoice-type",  # type: ignore[arg-type]
            insurer_id(ctx.conn))

    @staticmethod
    def _prerender(ctx: WriteContext, data: ContractIn, pk: int, cov_pk: int, values: dict[str, Any]) -> None:
        """The Contract and Coverage bodies of a new policy from what the write already holds, exactly as
        `render` / `CoverageKind.render` would read them back (no re-read of what was just inserted)."""
        p = data.product
        row = SimpleNamespace(
            pk=pk, uuid=values["uuid"], family_pk=data.family_pk, family_id=data.owner.id if data.informal else None,
            holder_id=None if data.informal else data.owner.id, officer_id=data.officer_id, product_id=p.id,
            product_code=p.code, product_name=p.name, head_id=data.head_id, enroll_date=data.enroll_date,
            start_date=values["start_date"], expiry_date=values["expiry_date"],
            effective_date=values["effective_date"], status=values["status"], stage=values["stage"],
            value=_stored_amount(values["value"]))
        premiums = [SimpleNamespace(payer=x.payer, is_photo_fee=x.photo_fee, amount=_stored_amount(x.amount),
                                    receipt=x.receipt, pay_date=x.pay_date, pay_type=x.pay_type)
                    for x in data.premiums]
        covered = [r.id for r in sorted(data.covered, key=lambda r: (not r.is_head, r.pk))]
        day = today()
        ctx.prerendered[("contract", pk)] = _contract(row, covered, premiums, day)  # type: ignore[arg-type]
        from hifhir.fhir.profiles.coverage import render_coverage

        ctx.prerendered[("coverage", cov_pk)] = render_coverage(
            SimpleNamespace(uuid=values["uuid"]), row, day)  # type: ignore[arg-type]

    # --- update --------------------------------------------------------------------------------------------

    def _update(self, ctx: WriteContext, resource: dict[str, Any], data: ContractIn, current: Row) -> int:
        conn, pk = ctx.conn, int(current.pk)
        day = today()
        if (data.family_pk, data.holder_pk) != (current.family_pk, current.policy_holder_pk):
            raise conflict("The enrolled family or policy holder (and the sector) of a Contract cannot change; "
                           "enrol them with a new Contract", "Contract.subject[0]")
        old_members = {r[0] for r in conn.execute(select(insuree_policy.c.insuree_pk).where(
            insuree_policy.c.policy_pk == pk, is_current(insuree_policy)))}
        new_members = {r.pk for r in data.covered}
        content_changed = (
            data.product.pk != current.product_pk or data.officer_pk != current.officer_pk
            or data.enroll_date != current.enroll_date or data.head_pk != current.head_insuree_pk
            or new_members != old_members)
        stored = {r.receipt: r for r in conn.execute(select(premium).where(
            premium.c.policy_pk == pk, is_current(premium)))}
        incoming = {p.receipt: p for p in data.premiums}
        removed = [r.pk for receipt, r in stored.items() if receipt not in incoming]
        changed = [(stored[p.receipt].pk, p) for p in data.premiums
                   if p.receipt in stored and not p.same_as(stored[p.receipt])]
        added = [p for p in data.premiums if p.receipt not in stored]
        shown = STATUS_NAMES[status_on(current.status, current.expiry_date, day)]
        if current.status != IDLE and content_changed:
            raise conflict(f"The policy is {shown}: only an idle policy can change its product, officer, enrolment "
                           "date or covered insurees", TERM)
        if current.status != IDLE and (removed or changed):
            raise conflict(f"The policy is {shown}: its recorded contributions cannot be changed or removed "
                           "(new ones can be added)", f"{ASSET}.extension")

        values: dict[str, Any] = {"uuid": uuid_for_update(ctx, resource, policy, current)}
        if content_changed:
            self._check(ctx, data)
            computed = self._compute(ctx, data, pk)
            values.update(self._policy_values(data, computed))
            ip = insuree_policy
            if old_members - new_members:
                conn.execute(update(ip).where(ip.c.policy_pk == pk, is_current(ip),
                                              ip.c.insuree_pk.in_(old_members - new_members)).values(deleted=True))
            joining = [r for r in self._member_rows(pk, data, computed) if r["insuree_pk"] not in old_members]
            if joining:
                conn.execute(insert(ip), joining)
            conn.execute(update(ip).where(ip.c.policy_pk == pk, is_current(ip)).values(
                enroll_date=data.enroll_date, start_date=computed.period.start,
                expiry_date=computed.period.expiry))
            conn.execute(update(premium).where(premium.c.policy_pk == pk, is_current(premium)).values(
                product_pk=data.product.pk))
        ctx.update(policy, pk, values)
        if removed:
            conn.execute(update(premium).where(premium.c.pk.in_(removed)).values(deleted=True))
        for premium_pk, p in changed:
            conn.execute(update(premium).where(premium.c.pk == premium_pk).values(**p.values()))
        self._check_receipts(ctx, data.product, data.premiums, pk)
        self._insert_premiums(ctx, pk, data.product.pk, added)

        cov = conn.execute(_COVERAGE_OF, {"pk": pk}).scalar()
        if cov is None:
            cov = ctx.insert(coverage, {"id": current.id, "uuid": values["uuid"], "policy_pk": pk})
        elif values["uuid"] != current.uuid:
            ctx.update(coverage, int(cov), {"uuid": values["uuid"]})
        # Its invoice follows what changed (value, contributions recorded with the Contract), before any
        # activation, which the invoice's payments do not decide; a status change alone leaves it as it is.
        if (content_changed or removed or changed or added) and (
                invoice_pk := follow_policy(conn, pk, today=day)) is not None:
            ctx.mark("invoice", invoice_pk)
        requested = data.requested_status
        if requested == status_on(current.status, current.expiry_date, day):
            requested = None  # the status the client read, sent back: it asks nothing
        activate_if_paid(ctx, pk, requested=requested, members=old_members | new_members, coverage_pk=int(cov))
        return pk
