"""OpenIMISClaim → OpenIMISClaimResponse (IG rows 14–15; domain §2.19–2.20, §3.3–3.4; reference §3.3–3.4).

`POST Claim` is the IG's RPC: the openIMIS checks decide the claim (status 2, entered, to 4 or 1;
`domain.claims.checks.check_submission`), the claim is stored as they decided it, a checked claim goes through the
selections for review and for feedback (`HIFHIR_REVIEW_SELECTION`, `HIFHIR_FEEDBACK_SELECTION`, both `off` by
default) and, unless one selected it, is processed and valuated (`domain.claims.valuation.process`), and the answer
is **200 with the ClaimResponse** — all in the one transaction of the POST. A selected claim stays checked (outcome
`partial`) until the last of its review (PUT ClaimResponse, below) and its feedback (POST Communication) processes
it. Both resources live on the claim's row, under the same id (FHIR ids are per type): Claim/<id> and
ClaimResponse/<id>. The id is the client's identifier[UUID] when it sends one, else a server UUID.

Claim (what a health facility sends; domain §3.3.1 entry validations, all before anything is written):
* identifier[Code] = the claim code (≤ 50), unique per health facility among current claims (the partial unique
  index; a resubmission is a **409** and changes nothing). openIMIS Python makes it unique globally, legacy per
  facility (`uspUpdateClaimFromPhone` error 2): per facility, as the schema's index says.
* `patient`: `Patient/<id>`, `Patient/<insurance number>`, a logical reference by identifier, or a contained
  Patient. A logically deleted insuree is accepted (the checks reject every line with reason 7 FAMILY, as legacy
  does for an insuree that is no longer valid); a patient that never existed is a 422.
* `provider`: the health facility Organization by id or code (current), 422 otherwise.
* `enterer`: a claim administrator Practitioner (by id or code) with a current PractitionerRole at that facility.
  An administrator of another facility is a **422** (business rule about the claim's content): the authenticated
  user is not the claim administrator — CAs have no login here — so it is not a 403 about the caller's rights.
* `insurance[0].coverage` (the profile makes it 1..1): a current Coverage of a policy the insuree is a member of
  (422 otherwise). Whether that policy covers the claim is the checks' business (reasons 7, 17, 3…).
* `type` = visit type E/R/O; `billablePeriod` start/end = date from/to (end before start: 422); `created` = date
  claimed; `total.value` = claimed (a total that is not Σ quantity × unit price is rejected by the checks with
  reason 20, not refused).
* `diagnosis` 1..5 in sequence order: the main diagnosis and ≤ 4 secondary ones (more: 400 by the profile), their
  codes stored as text. A code that is not in the configured diagnosis list is **not** refused here: the checks
  reject the claim with reason 8.
* `item` (1..*): category item → Medication, service → ActivityDefinition, given by the `claim-item-reference`
  extension (as the reference: `productOrService.text` is not used to find the provision; the IG example puts the
  name there). The reference is an id, a code, a logical reference or a contained resource; all the lines'
  references are resolved with one query per kind. An item or service that never existed is a 422; a logically
  deleted one is stored and rejected by the checks with reason 1 (no longer in the register). quantity > 0 and
  unitPrice ≥ 0 (at most 2 decimals, the scheme currency); `sequence` unique. Lines are stored items first, then
  services, each keeping Claim.item.sequence.
* `supportingInfo`: explanation → claim.explanation; guarantee → guarantee_id (≤ 50); attachment →
  `claim_attachment` with the decoded bytes. An attachment must carry its `data`; its `hash`, when given, must be
  the SHA-1 of the **decoded bytes** (FHIR: base64 of the digest; the 40-digit hex form is accepted too). The
  reference hashes the base64 *text*; that form is accepted on the openIMIS-compatible alias only (lenient), so
  that its existing clients keep working. `justification` (opened by validation/corrections.py, IG §9.8) has no
  claim-level column in openIMIS and is ignored.
* Claim-AI (reference §5.1): resources carried in `contained` are matched to the registers by their identifier
  (Code, else UUID), as `#<id>` references (and the reference's `#<Type>/<uuid>` form); a contained resource that
  matches no current register entry is a 422 naming it. Nothing contained is created: the stored Claim references
  the register entries and carries no `contained`.

The Claim is immutable after submission: PUT and DELETE are 405. Its body is built once, in `write`, from the
normalised values (references rewritten to register ids, contained resources dropped) and handed to the flush
(`WriteContext.prerendered`), as for eligibility, because (1) nothing about a submitted Claim ever changes, (2)
some of it has no column (the coverage sent, the supportingInfo sequence numbers), and (3) it costs the POST no
render query. A re-render (a later version of the row) repeats the stored body; a claim that never went through
POST (loaded in SQL) is rendered from its rows, with the coverage of the insuree's policy covering the claim.

ClaimResponse (domain §3.4.5, rendered from the rows at every version, so it follows the claim's state):
* identifier Code + UUID (profile 2..2); status `active`; use `claim`; type = visit type; patient; requestor →
  the claim administrator; request → Claim/<id>; insurer → the configured insurer Organization;
  created = the submission day (UTC day of submit_stamp; the date claimed while the claim is still entered);
  outcome from the claim status: 2 → queued, 4/8 → partial, 1/16 → complete; processNote = the adjustment.
* one `item` per line in Claim.item.sequence order: itemSequence, the claim-item-reference, and the adjudications:
  a passed line of a non-rejected claim has one per reached stage — 2 entered (price asked × quantity provided),
  4 checked (price approved or asked × quantity approved or provided), 8 processed (price adjusted or asked),
  16 valuated; a rejected line (or any line of a rejected claim) has one adjudication of category 1. Each carries
  `reason` = the line's rejection code with its display (0 ACCEPTED on passed lines), `amount` and `value` = the
  quantity. For categories 2, 4 and 8 `amount` is the unit price; for 16 it is PriceValuated, which openIMIS
  stores as the line's valuated **amount** (not a unit price — the reference renders it as one and multiplies it
  by the quantity again in the total, a bug not copied).
* `total`: entered (Σ asked × provided, all lines), then for a non-rejected claim checked, processed and valuated as
  reached (Σ over passed lines of the stage's unit price × quantity; valuated = Σ PriceValuated); a rejected claim
  has entered and rejected (the same sum). At most 4, as the profile allows.
* Search: request, patient, requestor, outcome, status, created, identifier, claim-status, item-reference,
  _lastUpdated; the insurer has no column (one insurer) and is not a parameter.

Review (domain §3.4.1, `domain.claims.review`): a medical officer (right 111008) delivers the review of a claim
selected for it with **`PUT ClaimResponse/<id>`**, the body being the ClaimResponse as read in which, per line that
passed the checks, the checked adjudication (category 4) is changed: `reason` −1 (REJECTED BY MEDICAL OFFICER)
rejects the line, `value` is the quantity approved, `amount.value` the unit price approved; `processNote[0].text`
is the adjustment (no processNote clears it). Everything else must be as read — compared element by element, items
matched by itemSequence, numbers by value; `meta` is ignored and `communicationRequest` may be left out (a reviewer
without 111009 never sees it) — else a **422** naming the first element that differs. A claim that is not
awaiting a review (not checked, never or not selected, reviewed already, bypassed) is a **409**: the body may be
flawless, it is the resource's state that refuses it, whatever the body says. Quantities and prices the domain
refuses (more than provided or asked, a quantity 0 on a line kept) are 422s on that `value` / `amount.value`.
`If-Match` is compared with the ClaimResponse's own version (412). The answer is 200 with the ClaimResponse,
re-versioned: lines rejected, `approved` recomputed, and — unless the claim still waits for its feedback, or no
line is left and it is rejected — processed and valuated in the same transaction. The reason's display may be left
out (else it is the CodeSystem's); a reason text is refused like any other change: openIMIS's line justification
has no element in the IG profile, and hifhir would not show it back.

Rights (auth/matrix.py; domain §4.3, §4.5): create 111002 (Claims.Add) or 111007 (submit), as the reference; read
and search 111001; a review (update of the ClaimResponse) 111008 (Claims.Review). A ClaimResponse is never created
nor deleted by a client (405: the kind is not `creatable`).

Versions: the POST versions Claim and ClaimResponse at 1. The Claim (the submission, immutable) keeps the row's
`version_id` / `last_updated`; the ClaimResponse, which moves on as the claim is processed, valuated by a batch
run or reviewed, has its own `response_version` / `response_updated` (ResourceKind.version_column).

Speed (a claim of 10 lines): `read_ahead` — on SQLite before the writer lock — resolves the references in two
statements through the driver (`store.fast.DriverQuery`: every header reference — insuree, facility, claim
administrator with its facilities, coverage with its members among the insuree candidates — in one UNION, and
every line's Medication/ActivityDefinition in one more), then reads what the checks and processing need that no
other claim changes (registers, price lists, policies, product terms and coverage lines: `checks.CheckFacts`,
`valuation.ClaimTerms`) in two more steps. The write transaction reads only the claim and the insuree's other
claims (and, for a product with deductibles or ceilings, what other claims consumed of them). The writes are one
INSERT … RETURNING for the claim and one multi-row INSERT per line table (and attachments); the Claim body costs
no query, the ClaimResponse two (claim, lines) plus the history row. A re-render of many ClaimResponses (a batch run
re-versions every claim it valuated: 100,000 a month, bench/batch.py) costs the same two statements per chunk, the
pks as one array parameter, the line amounts read and computed as integer hundredths (no Decimal per value) and the
repeated nested objects (Money, item references) shared between bodies: ~28 µs a claim of 3 lines on SQLite, queries
included (118 before).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType, SimpleNamespace
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Date,
    Integer,
    Row,
    String,
    bindparam,
    cast,
    false,
    func,
    insert,
    literal_column,
    null,
    select,
    true,
    type_coerce,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from hifhir import config
from hifhir.auth import scope as location_scope
from hifhir.domain.claims import (
    BYPASSED,
    DELIVERED,
    IDLE,
    NOT_SELECTED,
    REJECTED_BY_MEDICAL_OFFICER,
    REJECTION_DISPLAYS,
    SELECTED,
    NewLine,
    checks,
    valuation,
)
from hifhir.domain.claims.checks import CheckFacts
from hifhir.domain.claims.feedback import SelectionRule, parse_rule
from hifhir.domain.claims.valuation import ClaimHead, ClaimTerms, terms_plan
from hifhir.fhir import patching
from hifhir.fhir.elements import CS, EXT, first_code, identifier_value, identifiers, reference
from hifhir.fhir.errors import FhirError, business_rule, conflict
from hifhir.fhir.kind import KeyedInsert, ResourceKind, WriteContext, require
from hifhir.fhir.profiles.common import is_uuid, stored_bodies
from hifhir.fhir.profiles.contract import choice_param, typed_reference_param
from hifhir.fhir.profiles.medication import CURRENCY, MAX_AMOUNT, money, number, parse_amount, parse_money
from hifhir.fhir.profiles.practitioner import full_date
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import SortKey, column_ref, date_param, link_ref, reference_param
from hifhir.store.codelists import DIAGNOSIS_LIST
from hifhir.store.fast import DriverQuery, MultiRowInsert, Plan, any_pk, rows_together, run_plan, run_plans
from hifhir.store.tables import (
    CLAIM_CHECKED,
    CLAIM_ENTERED,
    CLAIM_PROCESSED,
    CLAIM_REJECTED,
    CLAIM_VALUATED,
    LINE_PASSED,
    LINE_REJECTED,
    Amount,
    claim,
    claim_admin,
    claim_admin_role,
    claim_attachment,
    claim_item,
    claim_service,
    coverage,
    health_facility,
    insuree,
    insuree_policy,
    insurer_org,
    is_current,
    medical_item,
    medical_service,
    policy,
)

CLAIM_TYPE, RESPONSE_TYPE = "Claim", "ClaimResponse"
CLAIM_KIND, RESPONSE_KIND = "claim", "claim-response"
FEEDBACK_RIGHT = 111009  # Claims.Feedback: sees ClaimResponse.communicationRequest (IG security page)
FEEDBACK_PROMPTED = (SELECTED, DELIVERED, BYPASSED)  # feedback statuses whose claim has a CommunicationRequest

STATUS_CS = CS + "claim-status"
REASON_CS = CS + "claim-rejection-reasons"
VISIT_CS = CS + "claim-visit-type"
ITEM_CATEGORY_CS = CS + "claim-item-category"
SUPPORTING_CS = CS + "claim-supporting-info-category"
DIAGNOSIS_CS = CS + DIAGNOSIS_LIST
ITEM_REFERENCE_EXT = EXT + "claim-item-reference"
PRIORITY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal",
                        "display": "Normal"}]}
OUTCOME_SYSTEM = "http://hl7.org/fhir/remittance-outcome"
CLAIM_STATUS_SYSTEM = "http://hl7.org/fhir/fm-status"
USE_SYSTEM = "http://hl7.org/fhir/claim-use"

VISIT_TYPES = {"E": "Emergency", "R": "Referrals", "O": "Other"}
STATUS_DISPLAYS = {CLAIM_REJECTED: "Rejected", CLAIM_ENTERED: "Entered", CLAIM_CHECKED: "Checked",
                   CLAIM_PROCESSED: "Processed", CLAIM_VALUATED: "Valuated"}
OUTCOMES = {CLAIM_REJECTED: "complete", CLAIM_ENTERED: "queued", CLAIM_CHECKED: "partial",
            CLAIM_PROCESSED: "partial", CLAIM_VALUATED: "complete"}
# The stages a claim in each status went through, in order (the adjudications of a passed line, the totals).
STAGES = {CLAIM_ENTERED: (2,), CLAIM_CHECKED: (2, 4), CLAIM_PROCESSED: (2, 4, 8), CLAIM_VALUATED: (2, 4, 8, 16),
          CLAIM_REJECTED: (2,)}
CATEGORY_DISPLAYS = {"item": "Item", "service": "Service"}
TARGETS = {"item": "Medication", "service": "ActivityDefinition"}

CODE_MAX, GUARANTEE_MAX, ICD_MAX = 50, 50, 16
TITLE_MAX, CONTENT_TYPE_MAX, CREATION_MAX = 250, 100, 40
MAX_SECONDARY = 4


def _immutable(what: str) -> FhirError:
    return FhirError.one(405, "not-supported", what)


# --- what a submission resolves to -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    sequence: int
    kind: str  # item | service
    target_pk: int
    target_id: str
    code: str
    qty: Decimal
    price: Decimal


@dataclass(frozen=True, slots=True)
class Attachment:
    sequence: int
    title: str | None
    content_type: str | None
    creation: str | None
    data: bytes

    @property
    def sha1(self) -> bytes:
        return hashlib.sha1(self.data).digest()


@dataclass(frozen=True, slots=True)
class ClaimView:
    """Everything a Claim body shows, from a submission or from the rows."""

    id: str
    uuid: str
    code: str
    visit_type: str | None
    patient_id: str
    provider_id: str
    enterer_id: str | None
    coverage_id: str | None
    date_from: date
    date_to: date | None
    date_claimed: date
    diagnoses: tuple[str, ...]
    explanation: str | None
    guarantee: str | None
    attachments: tuple[Attachment, ...]
    lines: tuple[Line, ...]
    claimed: Decimal


@dataclass(frozen=True, slots=True)
class Submission:
    """A mapped and checked claim, ready to be inserted (what read_ahead computes)."""

    uuid: str | None
    code: str
    insuree_pk: int
    patient_id: str
    hf_pk: int
    provider_id: str
    claim_admin_pk: int
    enterer_id: str
    coverage_id: str | None
    visit_type: str
    date_from: date
    date_to: date | None
    date_claimed: date
    diagnoses: tuple[str, ...]
    claimed: Decimal
    explanation: str | None
    guarantee: str | None
    lines: tuple[Line, ...]
    attachments: tuple[Attachment, ...]
    # What the checks and processing read of registers, policies and price lists (no other claim changes them):
    # read ahead with the rest, so that on SQLite the writer lock covers only the insuree's other claims and the
    # writes.
    facts: CheckFacts
    terms: ClaimTerms

    def view(self, claim_id: str) -> ClaimView:
        return ClaimView(claim_id, self.uuid or claim_id, self.code, self.visit_type, self.patient_id,
                         self.provider_id, self.enterer_id, self.coverage_id, self.date_from, self.date_to,
                         self.date_claimed, self.diagnoses, self.explanation, self.guarantee, self.attachments,
                         self.lines, self.claimed)


# --- references: literal, logical, contained ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keys:
    """How a reference names a register entry: its id, its identifier[UUID], its business code."""

    id: str | None = None
    uuid: str | None = None
    code: str | None = None

    def rank(self, row: Any) -> int | None:
        """How well a register row matches (lower is better: id, then UUID, then code), None if it does not."""
        if self.id is not None and row.id == self.id:
            return 0
        if self.uuid is not None and row.uuid == self.uuid:
            return 1
        if self.code is not None and row.code == self.code:
            return 2
        return None

    def describe(self) -> str:
        return self.code or self.id or self.uuid or "?"


class Contained:
    """The claim's contained resources, by local id."""

    def __init__(self, resource: dict[str, Any]) -> None:
        self.by_id: dict[str, tuple[int, dict[str, Any]]] = {}
        contained = resource.get("contained")
        for i, res in enumerate(contained if isinstance(contained, list) else ()):
            if isinstance(res, dict) and isinstance(res.get("id"), str):
                self.by_id.setdefault(res["id"], (i, res))

    def find(self, local: str, expression: str) -> tuple[int, dict[str, Any]]:
        found = self.by_id.get(local)
        if found is None and "/" in local:
            # The reference module writes `#<Type>/<uuid>` for its contained resources.
            rtype, _, rid = local.partition("/")
            found = self.by_id.get(rid)
            if found is not None and found[1].get("resourceType") != rtype:
                found = None
        if found is None:
            raise business_rule(f"'#{local[:70]}' names no contained resource", expression)
        return found


def _identifier_keys(res: dict[str, Any]) -> Keys:
    code = identifier_value(res, "Code")
    uuid = identifier_value(res, "UUID")
    return Keys(id=uuid, uuid=uuid, code=code if isinstance(code, str) else None)


def reference_keys(ref: Any, allowed: Iterable[str], contained: Contained,
                   expression: str) -> tuple[str, Keys, str]:
    """(resource type, keys, expression to blame) for a reference that must point at one of `allowed`."""
    from hifhir.fhir.registry import parse_reference  # the registry imports this module

    types = tuple(allowed)
    shown = " or ".join(types)
    if not isinstance(ref, dict):
        raise business_rule(f"A reference to {shown} is required", expression)
    literal_ref = ref.get("reference")
    if isinstance(literal_ref, str) and literal_ref.startswith("#"):
        index, res = contained.find(literal_ref[1:], expression)
        rtype = res.get("resourceType")
        where = f"{CLAIM_TYPE}.contained[{index}]"
        require(rtype in types, f"Contained resource #{literal_ref[1:][:64]} is a {str(rtype)[:40]}, not a {shown}",
                expression)
        keys = _identifier_keys(res)
        require(keys.code is not None or keys.id is not None,
                f"Contained {rtype} #{literal_ref[1:][:64]} has no identifier (Code or UUID) to match the register",
                where)
        return str(rtype), keys, where
    if isinstance(literal_ref, str):
        parsed = parse_reference(literal_ref)
        require(parsed is not None and parsed[0] in types,
                f"Reference '{literal_ref[:100]}' must point to {shown}", expression)
        assert parsed is not None
        # openIMIS clients put business codes where ids belong: the id is tried first, then the code.
        return parsed[0], Keys(id=parsed[1], code=parsed[1]), expression
    ident = ref.get("identifier")
    if isinstance(ident, dict):
        rtype = ref.get("type") or (types[0] if len(types) == 1 else None)
        require(rtype in types, f"A logical reference needs 'type' ({shown})", expression)
        value = ident.get("value")
        require(isinstance(value, str) and bool(value), "A logical reference needs identifier.value", expression)
        type_code = str(first_code(ident.get("type")) or "").lower()
        if type_code == "code":
            return str(rtype), Keys(code=value), expression
        # As the reference: a UUID identifier, falling back to the code when the value is not a UUID.
        return str(rtype), Keys(id=value, uuid=value, code=None if is_uuid(value) else value), expression
    raise business_rule(f"A literal reference 'Type/id' to {shown} is required", expression)


def _key_conditions(t: Any, code_column: str | None, prefix: str, current_only: bool) -> list[list[Any]]:
    """The WHERE of each probe: by id, by UUID, by code. A code is unique among current rows only, and its index
    covers only those: a deleted row is found by its id or UUID, never by a code (which a scan would need)."""
    current = [is_current(t)] if current_only else []
    conditions = [[t.c.id == bindparam(f"{prefix}_id"), *current], [t.c.uuid == bindparam(f"{prefix}_uuid"), *current]]
    if code_column:
        conditions.append([t.c[code_column] == bindparam(f"{prefix}_code"), is_current(t)])
    return conditions


def _ref_branches(what: str, table: Any, code_column: str | None, prefix: str, *, current_only: bool) -> list[Any]:
    """Rows of `table` matching an id, a UUID or a code: one index probe each (never an OR, which SQLite scans),
    labelled `what`; unused keys are bound to NULL and match nothing."""
    t = table
    code = t.c[code_column] if code_column else cast(null(), String)
    cols = (literal_column(f"'{what}'", String).label("what"), t.c.pk, t.c.id, t.c.uuid, code.label("code"),
            t.c.deleted, cast(null(), Integer).label("owner"))
    return [select(*cols).where(*c) for c in _key_conditions(t, code_column, prefix, current_only)]


def _candidates(table: Any, code_column: str | None, prefix: str, *, current_only: bool) -> Any:
    """The pks the branches of `_ref_branches` would find (for the role and membership rows)."""
    t = table
    return union_all(*[select(t.c.pk).where(*c) for c in _key_conditions(t, code_column, prefix, current_only)])


def _links(what: str, pk: Any, owner: Any) -> Any:
    return select(literal_column(f"'{what}'", String).label("what"), pk.label("pk"), cast(null(), String),
                  cast(null(), String), cast(null(), String), false(), owner.label("owner"))


def _references_statement() -> Any:
    """Everything the claim's header references, in one statement (one round trip): the insuree (current or
    not), the facility, the claim administrator and the coverage by id, UUID or code; the facilities the claim
    administrator is a current CA of (`role`: pk = facility, owner = CA); the members of the coverage's policy
    among the insuree candidates (`member`: pk = coverage, owner = insuree)."""
    role, ip = claim_admin_role, insuree_policy
    return union_all(
        *_ref_branches("patient", insuree, "chf_id", "p", current_only=False),
        *_ref_branches("provider", health_facility, "code", "h", current_only=True),
        *_ref_branches("enterer", claim_admin, "code", "e", current_only=True),
        *_ref_branches("coverage", coverage, None, "v", current_only=True),
        _links("role", role.c.hf_pk, role.c.claim_admin_pk).where(
            role.c.claim_admin_pk.in_(_candidates(claim_admin, "code", "e", current_only=True)), is_current(role)),
        _links("member", coverage.c.pk, ip.c.insuree_pk)
        .select_from(coverage.join(ip, ip.c.policy_pk == coverage.c.policy_pk))
        .where(coverage.c.pk.in_(_candidates(coverage, None, "v", current_only=True)),
               ip.c.insuree_pk.in_(_candidates(insuree, "chf_id", "p", current_only=False)), is_current(ip)),
    )


_REFERENCES = DriverQuery(_references_statement())


def _best(rows: Iterable[Any], keys: Keys) -> Any | None:
    """The matching row: current before deleted, then id before UUID before code."""
    ranked = [(bool(r.deleted), rank, r) for r in rows if (rank := keys.rank(r)) is not None]
    return min(ranked, key=lambda x: (x[0], x[1]))[2] if ranked else None


def _not_found(what: str, keys: Keys, where: str) -> FhirError:
    return business_rule(f"No current {what} has the id or code {keys.describe()[:64]}", where)


# --- mapping the submission ------------------------------------------------------------------------------------


def _claim_code(resource: dict[str, Any]) -> str:
    code = identifier_value(resource, "Code")
    require(isinstance(code, str) and 0 < len(code.strip()) <= CODE_MAX and code == code.strip(),
            f"The claim code (identifier Code) is required, at most {CODE_MAX} characters without outer spaces",
            f"{CLAIM_TYPE}.identifier")
    return str(code)


def _claim_uuid(resource: dict[str, Any]) -> str | None:
    value = identifier_value(resource, "UUID")
    if value is None:
        return None
    require(is_uuid(value), "identifier[UUID] must be a UUID", f"{CLAIM_TYPE}.identifier")
    return str(value).lower()


def _visit_type(resource: dict[str, Any]) -> str:
    code = first_code(resource.get("type")) or ""
    require(code in VISIT_TYPES, "type must be a claim-visit-type code: E (emergency), R (referral) or O (other)",
            f"{CLAIM_TYPE}.type")
    return str(code)


def _period(resource: dict[str, Any]) -> tuple[date, date | None]:
    period = resource.get("billablePeriod") or {}
    start = full_date(period.get("start"), "billablePeriod.start", f"{CLAIM_TYPE}.billablePeriod.start")
    end = None
    if period.get("end") is not None:
        end = full_date(period["end"], "billablePeriod.end", f"{CLAIM_TYPE}.billablePeriod.end")
        require(end >= start, f"billablePeriod.end {end} is before its start {start}",
                f"{CLAIM_TYPE}.billablePeriod.end")
    return start, end


def _diagnoses(resource: dict[str, Any]) -> tuple[str, ...]:
    entries = resource.get("diagnosis") or []
    require(0 < len(entries) <= 1 + MAX_SECONDARY,
            f"A claim has a main diagnosis and at most {MAX_SECONDARY} secondary ones", f"{CLAIM_TYPE}.diagnosis")
    ordered = sorted(enumerate(entries), key=lambda e: (e[1].get("sequence") or 0, e[0]))
    codes: list[str] = []
    for i, entry in ordered:
        expression = f"{CLAIM_TYPE}.diagnosis[{i}]"
        concept = entry.get("diagnosisCodeableConcept")
        code = first_code(concept) if isinstance(concept, dict) else None
        require(isinstance(code, str) and 0 < len(code) <= ICD_MAX,
                f"diagnosisCodeableConcept needs a diagnosis code (at most {ICD_MAX} characters)",
                f"{expression}.diagnosisCodeableConcept")
        codes.append(str(code))
    sequences = [e.get("sequence") for e in entries]
    require(len(set(sequences)) == len(sequences), "diagnosis.sequence values must be unique",
            f"{CLAIM_TYPE}.diagnosis")
    return tuple(codes)


def _category(line: dict[str, Any], expression: str) -> str | None:
    concept = line.get("category")
    if not isinstance(concept, dict):
        return None
    code = first_code(concept) or concept.get("text")  # reference clients send category.text
    require(code in TARGETS, "item.category is `item` or `service`", f"{expression}.category")
    return str(code)


@dataclass(slots=True)
class _PendingLine:
    index: int
    sequence: int
    kind: str
    keys: Keys
    where: str
    qty: Decimal
    price: Decimal


def _pending_lines(resource: dict[str, Any], contained: Contained) -> list[_PendingLine]:
    out: list[_PendingLine] = []
    seen: set[int] = set()
    for i, line in enumerate(resource.get("item") or []):
        expression = f"{CLAIM_TYPE}.item[{i}]"
        sequence = line.get("sequence")
        require(isinstance(sequence, int) and not isinstance(sequence, bool) and sequence > 0,
                "item.sequence is a positive integer", f"{expression}.sequence")
        require(sequence not in seen, f"item.sequence {sequence} is used twice", f"{expression}.sequence")
        seen.add(sequence)
        category = _category(line, expression)
        refs = [e for e in line.get("extension") or [] if e.get("url") == ITEM_REFERENCE_EXT]
        require(len(refs) == 1, "Each line references its Medication or ActivityDefinition once "
                "(extension claim-item-reference)", f"{expression}.extension")
        allowed = [TARGETS[category]] if category else list(TARGETS.values())
        rtype, keys, where = reference_keys(refs[0].get("valueReference"), allowed, contained,
                                            f"{expression}.extension[claim-item-reference]")
        kind = "item" if rtype == "Medication" else "service"
        qty = parse_amount((line.get("quantity") or {}).get("value"), "item.quantity.value",
                           f"{expression}.quantity.value")
        require(qty > 0, "item.quantity.value must be greater than 0", f"{expression}.quantity.value")
        price = parse_money(line.get("unitPrice"), "item.unitPrice", f"{expression}.unitPrice")
        out.append(_PendingLine(i, sequence, kind, keys, where, qty, price))
    require(bool(out), "A claim has at least one item", f"{CLAIM_TYPE}.item")
    return out


_LINE_TARGETS = {"item": medical_item, "service": medical_service}
_KEY_COLUMNS = ("id", "uuid", "code")


@functools.lru_cache(maxsize=256)
def _lines_lookup(shape: tuple[tuple[str, str, int], ...]) -> DriverQuery:
    """The register rows the lines may name, for every line at once: one index probe per key, one statement per
    shape (kind, key column, count). By id or UUID a deleted item or service is found too (the checks reject it
    with reason 1); codes are unique among current rows only, and only their index answers without a scan."""
    parts = []
    for kind, column, n in shape:
        t = _LINE_TARGETS[kind]
        current = [is_current(t)] if column == "code" else []
        parts.append(select(literal_column(f"'{kind}'", String).label("kind"), t.c.pk, t.c.id, t.c.uuid, t.c.code,
                            t.c.deleted)
                     .where(t.c[column].in_([bindparam(f"{kind}_{column}_{i}") for i in range(n)]), *current))
    return DriverQuery(union_all(*parts))


def _targets_read(pending: list[_PendingLine]) -> tuple[DriverQuery, dict[str, Any]]:
    """The statement finding the registers' rows the lines name, with its parameters."""
    shape: list[tuple[str, str, int]] = []
    params: dict[str, Any] = {}
    for kind in ("item", "service"):
        for column in _KEY_COLUMNS:
            values = sorted({v for p in pending if p.kind == kind and (v := getattr(p.keys, column))})
            if values:
                shape.append((kind, column, len(values)))
                params.update((f"{kind}_{column}_{i}", v) for i, v in enumerate(values))
    return _lines_lookup(tuple(shape)), params


def _resolve_lines(pending: list[_PendingLine], rows: list[Any]) -> tuple[Line, ...]:
    """The lines with their item or service, from the rows `_targets_read`'s statement found."""
    by_kind: dict[str, list[Any]] = {"item": [], "service": []}
    for row in rows:
        by_kind[row.kind].append(row)
    lines: list[Line] = []
    for kind in ("item", "service"):  # stored items first, then services
        for p in pending:
            if p.kind != kind:
                continue
            row = _best(by_kind[kind], p.keys)
            if row is None:
                raise business_rule(f"No {TARGETS[kind]} has the id or code {p.keys.describe()[:64]}", p.where)
            lines.append(Line(p.sequence, kind, int(row.pk), str(row.id), str(row.code), p.qty, p.price))
    return tuple(lines)


def _supporting(resource: dict[str, Any], lenient: bool) -> tuple[str | None, str | None, tuple[Attachment, ...]]:
    explanation: str | None = None
    guarantee: str | None = None
    attachments: list[Attachment] = []
    for i, info in enumerate(resource.get("supportingInfo") or []):
        expression = f"{CLAIM_TYPE}.supportingInfo[{i}]"
        concept = info.get("category") or {}
        category = first_code(concept) or concept.get("text")
        if category == "explanation":
            explanation = _string_value(info, expression, None)
        elif category == "guarantee":
            guarantee = _string_value(info, expression, GUARANTEE_MAX)
        elif category == "attachment":
            attachments.append(_attachment(info, expression, lenient))
        elif category != "justification":  # no claim-level column in openIMIS: accepted (IG §9.8), not kept
            raise business_rule(f"Unknown supporting info category '{str(category)[:40]}'",
                                f"{expression}.category")
    sequences = [a.sequence for a in attachments]
    require(len(set(sequences)) == len(sequences), "supportingInfo.sequence values must be unique",
            f"{CLAIM_TYPE}.supportingInfo")
    return explanation, guarantee, tuple(attachments)


def _string_value(info: dict[str, Any], expression: str, limit: int | None) -> str:
    value = info.get("valueString")
    require(isinstance(value, str) and bool(value.strip()), "This supporting info carries a valueString",
            f"{expression}.valueString")
    require(limit is None or len(value) <= limit, f"The value is at most {limit} characters",
            f"{expression}.valueString")
    return str(value)


def _attachment(info: dict[str, Any], expression: str, lenient: bool) -> Attachment:
    att = info.get("valueAttachment")
    where = f"{expression}.valueAttachment"
    require(isinstance(att, dict), "An attachment carries a valueAttachment", where)
    text = att.get("data")
    require(isinstance(text, str) and bool(text), "An attachment must carry its data (base64)", f"{where}.data")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FhirError.one(400, "value", "Attachment.data is not valid base64", expression=f"{where}.data") from None
    if att.get("hash") is not None:
        require(_hash_matches(str(att["hash"]), data, text, lenient),
                "Attachment.hash is not the SHA-1 of the data (FHIR: base64 of the SHA-1 digest of the bytes)",
                f"{where}.hash")
    if att.get("size") is not None:
        require(att["size"] == len(data), f"Attachment.size {att['size']} differs from the data's {len(data)} bytes",
                f"{where}.size")
    limits = (("title", TITLE_MAX), ("contentType", CONTENT_TYPE_MAX), ("creation", CREATION_MAX))
    for key, limit in limits:
        value = att.get(key)
        require(value is None or (isinstance(value, str) and len(value) <= limit),
                f"Attachment.{key} is at most {limit} characters", f"{where}.{key}")
    sequence = info.get("sequence")
    require(isinstance(sequence, int) and sequence > 0, "supportingInfo.sequence is a positive integer",
            f"{expression}.sequence")
    return Attachment(int(sequence), att.get("title"), att.get("contentType"), att.get("creation"), data)


def _hash_matches(given: str, data: bytes, text: str, lenient: bool) -> bool:
    digest = hashlib.sha1(data).digest()
    if given == base64.b64encode(digest).decode() or given.lower() == digest.hex():
        return True
    # The reference module hashes the base64 text instead of the bytes; its clients send that (alias only).
    return lenient and given.lower() == hashlib.sha1(text.encode()).hexdigest()


def _claimed(resource: dict[str, Any], lines: Iterable[_PendingLine]) -> Decimal:
    """total.value, stored as claimed. A total that is not Σ quantity × unit price is not refused here: the checks
    reject such a claim with reason 20 (invalid claim), so that the facility sees it on the ClaimResponse."""
    require(sum((line.qty * line.price for line in lines), Decimal(0)) <= MAX_AMOUNT,
            "The claimed amount is too large", f"{CLAIM_TYPE}.item")
    return parse_money(resource.get("total"), "total", f"{CLAIM_TYPE}.total")


# --- the Claim kind -----------------------------------------------------------------------------------------------


_CLAIM_COLUMNS = (
    "id", "uuid", "code", "hf_pk", "insuree_pk", "claim_admin_pk", "date_from", "date_to", "date_claimed",
    "status", "rejection_reason", "category", "approved", "submit_stamp", "visit_type", "icd_code", "icd_code_1",
    "icd_code_2", "icd_code_3", "icd_code_4", "claimed", "date_processed", "process_stamp", "valuated", "remunerated",
    "explanation", "guarantee_id", "version_id", "last_updated", "response_version", "response_updated")
# Inserted once the checks have decided it. PostgreSQL: with its key drawn beforehand, the insert travels with the
# transaction's next round trip (processing's, the render's or the COMMIT).
_INSERT_CLAIM = KeyedInsert(claim, _CLAIM_COLUMNS)
_UNPROCESSED = {"date_processed": None, "process_stamp": None, "valuated": None, "remunerated": None}
_LINE_TABLES = {"item": (claim_item, "item_pk"), "service": (claim_service, "service_pk")}


# What the checks and processing decide of a line (valuation._Line.result), amounts among them.
_DECIDED = ("qty_approved", "product_pk", "policy_pk", "price_origin", "limitation", "limitation_value",
            "price_adjusted", "price_valuated", "deductable_amount", "exceed_ceiling_amount",
            "exceed_ceiling_amount_category", "remunerated_amount")
_DECIDED_AMOUNTS = ("qty_approved", "limitation_value", "price_adjusted", "price_valuated", "deductable_amount",
                    "exceed_ceiling_amount", "exceed_ceiling_amount_category", "remunerated_amount")
# The lines of one kind in one statement, as decided (amounts given in hundredths, as `Amount` stores them).
_LINE_INSERTS = {kind: (column, MultiRowInsert(table, ("claim_pk", column, "status", "rejection_reason",
                                                       "qty_provided", "price_asked", "sequence", *_DECIDED)))
                 for kind, (table, column) in _LINE_TABLES.items()}
_AMOUNT = Amount()


def _hundredths(value: Decimal) -> int:
    return int(_AMOUNT.process_bind_param(value, None))


def _decimal(hundredths: int) -> Decimal:
    """An amount read in hundredths (`_line_rows`) as the Decimal `Amount` reads it."""
    return _AMOUNT.process_result_value(hundredths, None)  # type: ignore[return-value]


class ClaimKind(ResourceKind):
    resource_type = CLAIM_TYPE
    name = CLAIM_KIND
    profile_id = "openimis-claim"
    table = claim
    scope = location_scope.CLAIM
    code_column = "code"
    updatable = deletable = False  # a submitted claim is a record; corrections are new claims
    reads_ahead = True

    def __init__(self) -> None:
        t = claim
        self.search_params = {
            **common_params(self),
            "patient": reference_param("patient", "Patient", column_ref(t.c.insuree_pk, "patient"),
                                       doc="The insuree the claim is for"),
            "provider": reference_param("provider", "Organization", column_ref(t.c.hf_pk, "health-facility"),
                                        doc="The health facility claiming"),
            "enterer": reference_param("enterer", "Practitioner", column_ref(t.c.claim_admin_pk, "claim-admin"),
                                       doc="The claim administrator who entered the claim"),
            "item-reference": _item_reference_param(),
            "created": date_param("created", t.c.date_claimed, "The date claimed"),
            "status": choice_param("status", _fixed_code("active", ("cancelled", "draft", "entered-in-error")),
                                   frozenset({CLAIM_STATUS_SYSTEM}), "Always active (the IG fixes it)"),
            "use": choice_param("use", _fixed_code("claim", ("preauthorization", "predetermination")),
                                frozenset({USE_SYSTEM}), "Always claim (the IG fixes it)"),
            "claim-status": claim_status_param(),
        }
        self.sort_params = {**common_sorts(self), "created": SortKey(t.c.date_claimed, "date")}

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        out = stored_bodies(conn, self, pks)
        missing = [pk for pk in pks if pk not in out]
        if missing:
            out.update({pk: claim_body(view) for pk, view in _claim_views(conn, missing).items()})
        return out

    def read_ahead(self, ctx: WriteContext, resource: dict[str, Any]) -> Submission:
        """Mapping, validation and every register lookup: all but the inserts (on SQLite outside the writer
        lock). Cheap checks of the body come first, so that a malformed claim costs no query."""
        code = _claim_code(resource)
        claim_uuid = _claim_uuid(resource)
        visit_type = _visit_type(resource)
        date_from, date_to = _period(resource)
        date_claimed = full_date(resource.get("created"), "created", f"{CLAIM_TYPE}.created")
        diagnoses = _diagnoses(resource)
        contained = Contained(resource)
        pending = _pending_lines(resource, contained)
        claimed = _claimed(resource, pending)
        explanation, guarantee, attachments = _supporting(resource, ctx.lenient)

        refs = {what: reference_keys(resource.get(what), [rtype], contained, f"{CLAIM_TYPE}.{what}")[1:]
                for what, rtype in (("patient", "Patient"), ("provider", "Organization"),
                                    ("enterer", "Practitioner"))}
        coverage_ref = _coverage_reference(resource, contained)
        params: dict[str, Any] = {}
        for prefix, keys in (("p", refs["patient"][0]), ("h", refs["provider"][0]), ("e", refs["enterer"][0]),
                             ("v", coverage_ref[0] if coverage_ref else Keys())):
            params.update({f"{prefix}_id": keys.id, f"{prefix}_uuid": keys.uuid, f"{prefix}_code": keys.code})
        found: dict[str, list[Any]] = {}
        references, line_rows = rows_together(ctx.conn, [(_REFERENCES, params), _targets_read(pending)])
        for row in references:
            found.setdefault(row.what, []).append(row)
        keys, where = refs["patient"]
        patient = _best(found.get("patient", ()), keys)
        if patient is None:
            raise business_rule(f"No insuree has the id or insurance number {keys.describe()[:64]}", where)
        keys, where = refs["provider"]
        provider = _best(found.get("provider", ()), keys)
        if provider is None:
            raise _not_found("health facility", keys, where)
        keys, where = refs["enterer"]
        enterer = _best(found.get("enterer", ()), keys)
        if enterer is None:
            raise _not_found("claim administrator", keys, where)
        require(any(r.pk == provider.pk and r.owner == enterer.pk for r in found.get("role", ())),
                f"Claim administrator {enterer.code} is not a claim administrator of health facility "
                f"{provider.code} (no current PractitionerRole there)", f"{CLAIM_TYPE}.enterer")
        coverage_id = None
        if coverage_ref is not None:
            keys, where = coverage_ref
            cov = _best(found.get("coverage", ()), keys)
            if cov is None:
                raise _not_found("Coverage", keys, where)
            require(any(r.pk == cov.pk and r.owner == patient.pk for r in found.get("member", ())),
                    f"Coverage/{cov.id} is not a policy of this patient", f"{CLAIM_TYPE}.insurance[0].coverage")
            coverage_id = str(cov.id)
        lines = _resolve_lines(pending, line_rows)
        insuree_pk, hf_pk = int(patient.pk), int(provider.pk)
        head = ClaimHead(CLAIM_ENTERED, hf_pk, insuree_pk, date_from, date_to, visit_type, None)
        known = run_plans(ctx.conn, {
            "facts": checks.facts_plan(ctx.conn, hf_pk, insuree_pk, date_from, date_to, lines),
            "terms": terms_plan(head, lines)})
        return Submission(claim_uuid, code, insuree_pk, str(patient.id), hf_pk, str(provider.id),
                          int(enterer.pk), str(enterer.id), coverage_id, visit_type, date_from, date_to,
                          date_claimed, diagnoses, claimed, explanation, guarantee, lines, attachments,
                          known["facts"], known["terms"])

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        if current is not None or ctx.id_from_client:
            raise _immutable("A claim is submitted once (POST Claim); it cannot be created or changed by PUT")
        sub = ctx.read_ahead if isinstance(ctx.read_ahead, Submission) else self.read_ahead(ctx, resource)
        claim_id = sub.uuid or ctx.new_id
        today = date.today()
        lines = _new_lines(sub.lines)
        checked = checks.check_submission(ctx.conn, sub.facts, date_claimed=sub.date_claimed, claimed=sub.claimed,
                                          diagnoses=sub.diagnoses, new_lines=lines, today=today)
        processed = None
        if checked.status == CLAIM_CHECKED and not _can_be_held():  # processed before it is stored
            processed = valuation.process_submission(ctx.conn, today=today, now=ctx.now, new_lines=lines,
                                                     terms=_checked_terms(sub, checked))
        pk, columns = _insert_claim(ctx, claim_id, sub, checked, processed)
        if sub.attachments:
            ctx.conn.execute(insert(claim_attachment), [
                {"claim_pk": pk, "sequence": a.sequence, "title": a.title, "content_type": a.content_type,
                 "filename": None, "creation": a.creation, "hash": a.sha1.hex(), "data": a.data}
                for a in sub.attachments])
        ctx.prerendered[(self.name, pk)] = claim_body(sub.view(claim_id))
        if processed is not None:
            valuation.record_consumption(ctx.conn, pk, processed)
        elif checked.status == CLAIM_CHECKED:
            _adjudicate(ctx, pk, lines, sub, checked, today)
        line_rows = _insert_lines(ctx, pk, lines)
        if processed is not None or checked.status != CLAIM_CHECKED:
            # Decided in full before it was stored (not held for review, feedback or an adjudicator): the answer is
            # rendered from what was written, not read back.
            _prerender_response(ctx, pk, sub, columns, line_rows)
        ctx.mark(RESPONSE_KIND, pk)
        ctx.answers[(self.name, pk)] = (RESPONSE_KIND, pk)
        return pk

    def delete(self, ctx: WriteContext, current: Row) -> None:
        raise _immutable("A submitted claim is a record; it cannot be deleted")


def _new_lines(lines: tuple[Line, ...]) -> list[NewLine]:
    """The submitted lines to decide, each with its rank among the lines of its kind (the order of their pks once
    inserted)."""
    ranks: dict[str, int] = {}
    out = []
    for line in lines:
        rank = ranks.get(line.kind, 0)
        ranks[line.kind] = rank + 1
        out.append(NewLine(line.kind, rank, line.sequence, line.target_pk, line.qty, line.price))
    return out


def _insert_lines(ctx: WriteContext, pk: int, lines: list[NewLine]) -> list[dict[str, Any]]:
    """The claim's lines, once, as the checks and processing decided them (no round trip of their own on
    PostgreSQL: the next statement or the COMMIT carries them); returns the rows written, items then services, each
    with its `kind`."""
    written: list[dict[str, Any]] = []
    for kind, (column, statement) in _LINE_INSERTS.items():
        rows = []
        for line in lines:
            if line.kind != kind:
                continue
            decided = dict.fromkeys(_DECIDED) | line.decided  # processing's columns, with status and reason
            if not line.decided:  # not processed (held for review or feedback, or rejected by the checks)
                decided.update(status=LINE_REJECTED if line.reason else LINE_PASSED, rejection_reason=line.reason,
                               qty_approved=Decimal(0) if line.reason else None)
            for name in _DECIDED_AMOUNTS:
                if decided[name] is not None:
                    decided[name] = _hundredths(decided[name])
            rows.append({**decided, "claim_pk": pk, column: line.target_pk, "qty_provided": _hundredths(line.qty),
                         "price_asked": _hundredths(line.price), "sequence": line.sequence})
        if rows:
            statement.execute(ctx.conn, rows, defer=True)
            written += [{**row, "kind": kind} for row in rows]
    return written


def _prerender_response(ctx: WriteContext, pk: int, sub: Submission, columns: dict[str, Any],
                        line_rows: list[dict[str, Any]]) -> None:
    """The ClaimResponse of a claim just inserted, from the columns and line rows written (the render's
    `_response_claims` and `_line_rows` rows, as they would be read back)."""
    targets = {(line.kind, line.target_pk): line.target_id for line in sub.lines}
    head = SimpleNamespace(pk=pk, patient_id=sub.patient_id, enterer_id=sub.enterer_id, adjustment=None,
                           feedback_status=IDLE, **columns)  # the column's default
    # pk: the insert order (a kind's pks follow it); the amounts not written (price_approved) are NULL
    unwritten = dict.fromkeys(_LINE_AMOUNTS)
    lines = [SimpleNamespace(**(unwritten | row), pk=n,
                             target_id=targets[(row["kind"], row[_LINE_TABLES[row["kind"]][1]])])
             for n, row in enumerate(line_rows)]
    lines.sort(key=_line_order)
    body = response_body(head, lines, insurer_id(ctx.conn))
    from hifhir.fhir.registry import KINDS

    patching.check_built(KINDS[RESPONSE_KIND], ctx.conn, pk, body)
    ctx.prerendered[(RESPONSE_KIND, pk)] = body


def _adjudicate(ctx: WriteContext, pk: int, lines: list[NewLine], sub: Submission, checked: checks.CheckOutcome,
                today: date) -> None:
    """After the openIMIS checks passed the claim (`checked`, stored with it): the selections for review and for
    feedback (both always run: a claim may be selected for both), then — unless it was selected for either, when
    it waits for the medical officer's review (PUT ClaimResponse) and/or the insuree's answers (POST Communication),
    the last of which processes it — processing and valuation, in the POST's transaction. With an external
    adjudicator configured (HIFHIR_CLAIM_AI_URL), a claim not held is sent to it through the outbox and waits for
    its answer."""
    from hifhir.domain.claims import review
    from hifhir.domain.claims.ai import enqueue_for_ai
    from hifhir.fhir.profiles.communication import select_claim_for_feedback

    held = review.select_for_review(ctx.conn, pk, rule=configured_review_rule(), today=today)
    held = select_claim_for_feedback(ctx, pk, today=today) or held
    if not held and not enqueue_for_ai(ctx, pk):
        valuation.process(ctx.conn, pk, today=today, now=ctx.now, new_lines=lines, terms=_checked_terms(sub, checked))


def _checked_terms(sub: Submission, checked: checks.CheckOutcome) -> ClaimTerms:
    """The terms read ahead, with the status and category the checks gave the claim."""
    return replace(sub.terms, head=sub.terms.head._replace(status=checked.status, category=checked.category))


def _can_be_held() -> bool:
    """Whether a checked claim may wait before processing: a selection for review or feedback is configured, or an
    external adjudicator (else the POST processes it before storing it)."""
    from hifhir.fhir.profiles.communication import configured_rule

    return (configured_review_rule().kind != "off" or configured_rule().kind != "off"
            or bool(config.CLAIM_AI_URL))


@functools.cache
def _review_rule(text: str) -> SelectionRule:
    return parse_rule(text)


def configured_review_rule() -> SelectionRule:
    """The review selection rule of HIFHIR_REVIEW_SELECTION (read at each call: tests and the demo may change
    it); the syntax is the feedback selection's."""
    return _review_rule(config.REVIEW_SELECTION)


def _insert_claim(ctx: WriteContext, claim_id: str, sub: Submission, checked: checks.CheckOutcome,
                  processed: valuation.Processed | None) -> tuple[int, dict[str, Any]]:
    """The claim as the checks decided it, and processing when it ran first (`processed`): (pk, the columns
    written)."""
    secondary = list(sub.diagnoses[1:]) + [None] * (MAX_SECONDARY + 1 - len(sub.diagnoses))
    values: dict[str, Any] = {
        "id": claim_id, "uuid": sub.uuid or claim_id, "code": sub.code, "hf_pk": sub.hf_pk,
        "insuree_pk": sub.insuree_pk, "claim_admin_pk": sub.claim_admin_pk, "date_from": sub.date_from,
        "date_to": sub.date_to, "date_claimed": sub.date_claimed, **checked.columns(ctx.now), **_UNPROCESSED,
        **(processed.columns if processed is not None else {}), "visit_type": sub.visit_type,
        "icd_code": sub.diagnoses[0],
        **{f"icd_code_{i}": secondary[i - 1] for i in range(1, MAX_SECONDARY + 1)},
        "claimed": sub.claimed, "explanation": sub.explanation, "guarantee_id": sub.guarantee,
        "version_id": 1, "last_updated": ctx.now, "response_version": 1, "response_updated": ctx.now,
    }
    # A violation is raised here on SQLite, by the statement that carries the deferred insert on PostgreSQL: both
    # become these 409s (WriteContext.conflict_for).
    ctx.expect_unique(claim, "code", sub.code, "Claim code", f"{CLAIM_TYPE}.identifier", columns=("hf_pk", "code"),
                      message=f"Claim code {sub.code} is already used by a current claim of this health facility")
    ctx.expect_unique(claim, "id", claim_id, "identifier[UUID]", f"{CLAIM_TYPE}.identifier")
    return _INSERT_CLAIM.insert(ctx, values), values


def _coverage_reference(resource: dict[str, Any], contained: Contained) -> tuple[Keys, str] | None:
    """insurance[0].coverage (1..1 in the profile), by id or UUID."""
    insurance = resource.get("insurance") or []
    ref = insurance[0].get("coverage") if insurance and isinstance(insurance[0], dict) else None
    if ref is None:
        return None
    _, keys, where = reference_keys(ref, ["Coverage"], contained, f"{CLAIM_TYPE}.insurance[0].coverage")
    return Keys(id=keys.id, uuid=keys.uuid or keys.id), where


# --- the Claim body ------------------------------------------------------------------------------------------------


def _concept(system: str, code: str, display: str | None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _visit_concept(visit_type: str | None) -> dict[str, Any]:
    code = visit_type if visit_type in VISIT_TYPES else "O"
    return _concept(VISIT_CS, str(code), VISIT_TYPES[str(code)])


def _item_reference(line: Line) -> dict[str, Any]:
    return {"url": ITEM_REFERENCE_EXT, "valueReference": reference(TARGETS[line.kind], line.target_id)}


def claim_body(v: ClaimView) -> dict[str, Any]:
    """The Claim (without resourceType, id and meta)."""
    body: dict[str, Any] = {
        "identifier": identifiers(v.code, v.uuid),
        "status": "active",
        "type": _visit_concept(v.visit_type),
        "use": "claim",
        "patient": reference("Patient", v.patient_id),
        "billablePeriod": {"start": v.date_from.isoformat(),
                           **({"end": v.date_to.isoformat()} if v.date_to else {})},
        "created": v.date_claimed.isoformat(),
    }
    if v.enterer_id:
        body["enterer"] = reference("Practitioner", v.enterer_id)
    body["provider"] = reference("Organization", v.provider_id)
    body["priority"] = PRIORITY
    if info := _supporting_body(v):
        body["supportingInfo"] = info
    body["diagnosis"] = [{"sequence": i, "diagnosisCodeableConcept": {"coding": [
        {"system": DIAGNOSIS_CS, "code": code}]}} for i, code in enumerate(v.diagnoses, start=1)]
    if v.coverage_id:
        body["insurance"] = [{"sequence": 1, "focal": True, "coverage": reference("Coverage", v.coverage_id)}]
    body["item"] = [{
        "extension": [_item_reference(line)],
        "sequence": line.sequence,
        "category": _concept(ITEM_CATEGORY_CS, line.kind, CATEGORY_DISPLAYS[line.kind]),
        "productOrService": {"text": line.code},
        "quantity": {"value": number(line.qty)},
        "unitPrice": money(line.price),
    } for line in sorted(v.lines, key=lambda x: x.sequence)]
    body["total"] = money(v.claimed)
    return body


def _supporting_body(v: ClaimView) -> list[dict[str, Any]]:
    """supportingInfo: attachments keep the sequence they were sent with; explanation and guarantee take the
    smallest numbers left (their own sequence has no column)."""
    taken = {a.sequence for a in v.attachments}
    free = (n for n in range(1, len(taken) + 3) if n not in taken)
    out: list[dict[str, Any]] = []
    for category, value in (("explanation", v.explanation), ("guarantee", v.guarantee)):
        if value is not None:
            out.append({"sequence": next(free), "category": _concept(SUPPORTING_CS, category, None),
                        "valueString": value})
    for a in v.attachments:
        att: dict[str, Any] = {}
        if a.content_type:
            att["contentType"] = a.content_type
        att["data"] = base64.b64encode(a.data).decode()
        att["hash"] = base64.b64encode(a.sha1).decode()
        if a.title:
            att["title"] = a.title
        if a.creation:
            att["creation"] = a.creation
        out.append({"sequence": a.sequence, "category": _concept(SUPPORTING_CS, "attachment", None),
                    "valueAttachment": att})
    return sorted(out, key=lambda x: x["sequence"])


# --- rows → views (Claims loaded in SQL, and every ClaimResponse) ----------------------------------------------------


_LINE_COLUMNS = ("pk", "sequence", "status", "rejection_reason")
# Line amounts come as stored, in integer hundredths (`Amount` without its Decimal conversion): the ClaimResponse
# computes and renders them as integers, which costs a batch run of 100,000 claims seconds less than Decimals.
_LINE_AMOUNTS = ("qty_provided", "qty_approved", "price_asked", "price_approved", "price_adjusted", "price_valuated")


def _which(column: Any, one: bool) -> Any:
    return column == bindparam("pk") if one else any_pk(column)


def _lines_statement(one: bool) -> Any:
    parts = []
    for kind, (table, column) in _LINE_TABLES.items():
        target = _LINE_TARGETS[kind]
        parts.append(
            select(table.c.claim_pk, literal_column(f"'{kind}'", String).label("kind"),
                   target.c.id.label("target_id"), target.c.code.label("code"), target.c.pk.label("target_pk"),
                   *[table.c[c] for c in _LINE_COLUMNS],
                   *[type_coerce(table.c[c], BigInteger).label(c) for c in _LINE_AMOUNTS])
            .select_from(table.join(target, target.c.pk == table.c[column]))
            .where(_which(table.c.claim_pk, one)))
    return union_all(*parts)


def _claims_statement(one: bool) -> Any:
    i, h, a = insuree.alias("i"), health_facility.alias("h"), claim_admin.alias("a")
    return (
        select(claim, i.c.id.label("patient_id"), h.c.id.label("provider_id"), a.c.id.label("enterer_id"))
        .select_from(claim.join(i, i.c.pk == claim.c.insuree_pk).join(h, h.c.pk == claim.c.hf_pk)
                     .outerjoin(a, a.c.pk == claim.c.claim_admin_pk))
        .where(claim.c.pk == bindparam("pk") if one else claim.c.pk.in_(bindparam("pks", expanding=True)))
    )


def _response_claims_statement(one: bool) -> Any:
    """The claim columns a ClaimResponse shows."""
    i, a = insuree.alias("i"), claim_admin.alias("a")
    t = claim
    return (
        select(t.c.pk, t.c.id, t.c.uuid, t.c.code, t.c.visit_type, t.c.status, t.c.submit_stamp, t.c.date_claimed,
               t.c.adjustment, t.c.feedback_status, i.c.id.label("patient_id"), a.c.id.label("enterer_id"))
        .select_from(t.join(i, i.c.pk == t.c.insuree_pk).outerjoin(a, a.c.pk == t.c.claim_admin_pk))
        .where(_which(t.c.pk, one))
    )


# Lines and ClaimResponse claims through the driver, one claim (a POST) or a batch (a re-render of many claims);
# the full claim rows (a Claim rendered from its rows: claims loaded in SQL) through SQLAlchemy.
_LINES, _LINES_ONE = DriverQuery(_lines_statement(False)), DriverQuery(_lines_statement(True))
_RESPONSE_CLAIMS = DriverQuery(_response_claims_statement(False))
_RESPONSE_CLAIM_ONE = DriverQuery(_response_claims_statement(True))
_CLAIMS, _CLAIM_ONE = _claims_statement(False), DriverQuery(_claims_statement(True))
_ATTACHMENTS = select(claim_attachment).where(claim_attachment.c.claim_pk.in_(bindparam("pks", expanding=True)))
# The policy covering a claim's insuree on its first day (the latest such membership), else the latest membership.
_COVERAGES = (
    select(insuree_policy.c.insuree_pk, insuree_policy.c.effective_date, insuree_policy.c.expiry_date,
           coverage.c.id)
    .select_from(insuree_policy.join(policy, policy.c.pk == insuree_policy.c.policy_pk)
                 .join(coverage, coverage.c.policy_pk == policy.c.pk))
    .where(insuree_policy.c.insuree_pk.in_(bindparam("insurees", expanding=True)), is_current(insuree_policy),
           is_current(policy))
)


def _line_order(row: Any) -> tuple[bool, int, bool, int]:
    # Claim.item.sequence order; lines loaded without one follow, items before services.
    return row.sequence is None, row.sequence or 0, row.kind != "item", row.pk


def _claim_lines_read(pks: list[int]) -> tuple[DriverQuery, dict[str, Any]]:
    return (_LINES_ONE, {"pk": pks[0]}) if len(pks) == 1 else (_LINES, {"pks": pks})


def _line_rows(conn: Connection, pks: list[int], rows: list[Any] | None = None) -> dict[int, list[Any]]:
    """Each claim's lines in Claim.item.sequence order, amounts in hundredths (see _LINE_AMOUNTS); `rows`: what
    `_claim_lines_read`'s statement gave, when it was already run."""
    out: dict[int, list[Any]] = {pk: [] for pk in pks}
    if rows is None:
        query, params = _claim_lines_read(pks)
        rows = query.rows(conn, params)
    for row in rows:
        out[row.claim_pk].append(row)
    for lines in out.values():
        if len(lines) > 1:
            lines.sort(key=_line_order)
    return out


def _claim_rows(conn: Connection, pks: list[int]) -> list[Any]:
    if len(pks) == 1:
        return list(_CLAIM_ONE.rows(conn, {"pk": pks[0]}))
    return list(conn.execute(_CLAIMS, {"pks": pks}))


def _response_claims_read(pks: list[int]) -> tuple[DriverQuery, dict[str, Any]]:
    return (_RESPONSE_CLAIM_ONE, {"pk": pks[0]}) if len(pks) == 1 else (_RESPONSE_CLAIMS, {"pks": pks})


def _claim_views(conn: Connection, pks: list[int]) -> dict[int, ClaimView]:
    claims = _claim_rows(conn, pks)
    lines = _line_rows(conn, pks)
    attachments: dict[int, list[Attachment]] = {pk: [] for pk in pks}
    for a in conn.execute(_ATTACHMENTS, {"pks": pks}):
        attachments[a.claim_pk].append(Attachment(a.sequence, a.title, a.content_type, a.creation, a.data or b""))
    memberships: dict[int, list[Any]] = {}
    for m in conn.execute(_COVERAGES, {"insurees": sorted({c.insuree_pk for c in claims})}):
        memberships.setdefault(m.insuree_pk, []).append(m)
    out: dict[int, ClaimView] = {}
    for c in claims:
        out[c.pk] = ClaimView(
            c.id, c.uuid or c.id, c.code, c.visit_type, c.patient_id, c.provider_id, c.enterer_id,
            _covering(memberships.get(c.insuree_pk, []), c.date_from), c.date_from, c.date_to, c.date_claimed,
            tuple(d for d in (c.icd_code, c.icd_code_1, c.icd_code_2, c.icd_code_3, c.icd_code_4) if d),
            c.explanation, c.guarantee_id, tuple(sorted(attachments[c.pk], key=lambda a: a.sequence)),
            tuple(Line(r.sequence or n, r.kind, r.target_pk, r.target_id, r.code, _decimal(r.qty_provided),
                       _decimal(r.price_asked)) for n, r in enumerate(lines[c.pk], start=1)),
            c.claimed if c.claimed is not None else Decimal(sum(
                r.qty_provided * r.price_asked for r in lines[c.pk])).scaleb(-4))
    return out


def _covering(memberships: list[Any], day: date) -> str | None:
    covering = [m for m in memberships if m.effective_date is not None and m.effective_date <= day <= m.expiry_date]
    pool = covering or [m for m in memberships if m.effective_date is not None] or memberships
    if not pool:
        return None
    return str(max(pool, key=lambda m: (m.effective_date or date.min, m.id)).id)


# --- the ClaimResponse ---------------------------------------------------------------------------------------------


class _StampDay(FunctionElement[date]):
    """The UTC day of a µs-since-epoch stamp column (the submission day)."""

    type = Date()
    inherit_cache = True
    name = "stamp_day"


@compiles(_StampDay)
def _stamp_day_pg(element: _StampDay, compiler: Any, **kw: Any) -> str:
    column = compiler.process(next(iter(element.clauses)), **kw)
    return f"CAST(to_timestamp({column} / 1000000.0) AT TIME ZONE 'UTC' AS DATE)"


@compiles(_StampDay, "sqlite")
def _stamp_day_sqlite(element: _StampDay, compiler: Any, **kw: Any) -> str:
    column = compiler.process(next(iter(element.clauses)), **kw)
    return f"date({column} / 1000000, 'unixepoch')"


def _created_expression() -> Any:
    return func.coalesce(_StampDay(claim.c.submit_stamp), claim.c.date_claimed, type_=Date())


def _stamp_day(stamp: int | None, fallback: date) -> date:
    if stamp is None:
        return fallback
    return datetime.fromtimestamp(stamp / 1_000_000, UTC).date()


_INSURER_TTL_S = 30.0
_insurer_ids: dict[str, tuple[float, str]] = {}
_INSURER_ID = select(insurer_org.c.id).where(is_current(insurer_org)).order_by(insurer_org.c.pk).limit(1)


def insurer_id(conn: Connection) -> str:
    """The configured insurer Organization's id (server configuration: remembered for 30 s per database)."""
    key = str(conn.engine.url)
    now = time.monotonic()
    hit = _insurer_ids.get(key)
    if hit is not None and now - hit[0] < _INSURER_TTL_S:
        return hit[1]
    found = conn.execute(_INSURER_ID).scalar()
    value = str(found) if found is not None else "openIMIS-Implementation"
    _insurer_ids[key] = (now, value)
    return value


# Built once and shared by every body (serialised, never mutated): a ClaimResponse has up to 4 per line.
_STATUS_CONCEPTS = {status: _concept(STATUS_CS, str(status), display) for status, display in STATUS_DISPLAYS.items()}
_REASON_CONCEPTS = {reason: _concept(REASON_CS, str(reason), display) for reason, display in REJECTION_DISPLAYS.items()}
_VISIT_CONCEPTS = {code: _visit_concept(code) for code in VISIT_TYPES}
_ENTERED, _CHECKED, _PROCESSED, _VALUATED, _REJECTED = (
    _STATUS_CONCEPTS[s] for s in (CLAIM_ENTERED, CLAIM_CHECKED, CLAIM_PROCESSED, CLAIM_VALUATED, CLAIM_REJECTED))
_DAY_US = 86_400_000_000


def _number2(hundredths: int) -> int | float:
    """`medication.number` of an amount given in hundredths: the same JSON number (int division is exact, and
    int / int rounds correctly, as float(Decimal) does)."""
    return hundredths // 100 if hundredths % 100 == 0 else hundredths / 100


def _number4(value: int) -> int | float:
    """The same for ten-thousandths (a quantity × a unit price)."""
    return value // 10_000 if value % 10_000 == 0 else value / 10_000


class _ResponseRenderer:
    """ClaimResponse bodies from `_response_claims` and `_line_rows` rows (amounts in integer hundredths). The
    objects that repeat from body to body — Money, item references, days — are built once per render and shared:
    the bodies are only serialised. A batch run re-renders 100,000 claims at a time."""

    __slots__ = ("days", "extensions", "insurer", "moneys")

    def __init__(self, insurer: str) -> None:
        self.insurer = reference("Organization", insurer)
        self.moneys: dict[int, dict[str, Any]] = {}  # ten-thousandths → Money
        self.extensions: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (kind, target id) → item extension
        self.days: dict[int, str] = {}  # days since the epoch → the submission day

    def money(self, value: int) -> dict[str, Any]:
        found = self.moneys.get(value)
        if found is None:
            found = self.moneys[value] = {"value": _number4(value), "currency": CURRENCY}
        return found

    def extension(self, kind: str, target_id: str) -> list[dict[str, Any]]:
        found = self.extensions.get((kind, target_id))
        if found is None:
            found = self.extensions[(kind, target_id)] = [
                {"url": ITEM_REFERENCE_EXT, "valueReference": reference(TARGETS[kind], target_id)}]
        return found

    def created(self, stamp: int | None, claimed: date) -> str:
        if stamp is None:
            return claimed.isoformat()
        day = stamp // _DAY_US
        found = self.days.get(day)
        if found is None:
            found = self.days[day] = _stamp_day(stamp, claimed).isoformat()
        return found

    def body(self, c: Any, lines: list[Any]) -> dict[str, Any]:
        """The ClaimResponse (without resourceType, id and meta) for a claim row and its line rows."""
        status = int(c.status)
        rejected_claim = status == CLAIM_REJECTED
        depth = len(STAGES.get(status, (2,)))  # the stages reached: 2, 4, 8, 16
        money = self.money
        items: list[dict[str, Any]] = []
        # Σ in ten-thousandths: every line (entered) and the passed lines of a claim not rejected (the others).
        entered = checked = processed = valuated = 0
        for n, line in enumerate(lines, start=1):
            reason = int(line.rejection_reason or 0)
            because = _REASON_CONCEPTS.get(reason) or _concept(REASON_CS, str(reason), None)
            asked, provided = line.price_asked, line.qty_provided
            entered += asked * provided
            if rejected_claim or line.status == LINE_REJECTED:
                adjudications = [{"category": _REJECTED, "reason": because, "amount": money(asked * 100),
                                  "value": _number2(provided)}]
            else:
                adjudications = [{"category": _ENTERED, "reason": because, "amount": money(asked * 100),
                                  "value": _number2(provided)}]
                if depth > 1:
                    qty = line.qty_approved or provided
                    value = _number2(qty)
                    price = asked if line.price_approved is None else line.price_approved
                    checked += price * qty
                    adjudications.append({"category": _CHECKED, "reason": because, "amount": money(price * 100),
                                          "value": value})
                    if depth > 2:
                        adjusted = asked if line.price_adjusted is None else line.price_adjusted
                        processed += adjusted * qty
                        adjudications.append({"category": _PROCESSED, "reason": because,
                                              "amount": money(adjusted * 100), "value": value})
                        if depth > 3:
                            # PriceValuated is the line's amount, not a unit price (see the module docstring).
                            amount = adjusted * qty if line.price_valuated is None else line.price_valuated * 100
                            valuated += amount
                            adjudications.append({"category": _VALUATED, "reason": because, "amount": money(amount),
                                                  "value": value})
            items.append({"extension": self.extension(line.kind, line.target_id), "itemSequence": line.sequence or n,
                          "adjudication": adjudications})
        totals = [(_ENTERED, entered)]
        if rejected_claim:
            totals.append((_REJECTED, entered))
        else:
            totals += [(_CHECKED, checked), (_PROCESSED, processed), (_VALUATED, valuated)][:depth - 1]
        body: dict[str, Any] = {
            "identifier": identifiers(c.code, c.uuid or c.id),
            "status": "active",
            "type": _VISIT_CONCEPTS.get(c.visit_type) or _VISIT_CONCEPTS["O"],
            "use": "claim",
            "patient": reference("Patient", c.patient_id),
            "created": self.created(c.submit_stamp, c.date_claimed),
            "insurer": self.insurer,
        }
        if c.enterer_id:
            body["requestor"] = reference("Practitioner", c.enterer_id)
        body["request"] = reference(CLAIM_TYPE, c.id)
        body["outcome"] = OUTCOMES.get(status, "queued")
        body["item"] = items
        body["total"] = [{"category": category, "amount": money(amount)} for category, amount in totals]
        if c.adjustment:
            body["processNote"] = [{"text": c.adjustment}]
        if c.feedback_status in FEEDBACK_PROMPTED:  # the prompt is the claim's CommunicationRequest (same id)
            body["communicationRequest"] = [reference("CommunicationRequest", c.id)]
        return body


def response_body(c: Any, lines: list[Any], insurer: str) -> dict[str, Any]:
    """The ClaimResponse (without resourceType, id and meta) for a `_response_claims` row and its `_line_rows`."""
    return _ResponseRenderer(insurer).body(c, lines)


class ClaimResponseKind(ResourceKind):
    resource_type = RESPONSE_TYPE
    name = RESPONSE_KIND
    profile_id = "openimis-claim-response"
    table = claim  # the claim's row: same pk, same id
    scope = location_scope.CLAIM
    version_column, updated_column = "response_version", "response_updated"
    restricted_elements = MappingProxyType({"communicationRequest": FEEDBACK_RIGHT})  # the IG: Claims.Feedback
    code_column = "code"
    # The server's adjudication, created as the answer to a Claim; a client only updates it, to deliver a review.
    creatable = deletable = False

    def __init__(self) -> None:
        t = claim
        created = _created_expression()
        self.search_params = {
            **common_params(self),
            "request": reference_param("request", CLAIM_TYPE, column_ref(t.c.pk, CLAIM_KIND),
                                       doc="The Claim adjudicated"),
            "patient": reference_param("patient", "Patient", column_ref(t.c.insuree_pk, "patient"),
                                       doc="The insuree the claim is for"),
            "requestor": reference_param("requestor", "Practitioner",
                                         column_ref(t.c.claim_admin_pk, "claim-admin"),
                                         doc="The claim administrator who entered the claim"),
            "item-reference": _item_reference_param(),
            "created": date_param("created", created, "The submission day (the date claimed while entered)"),
            "outcome": choice_param("outcome", {
                "queued": lambda: t.c.status == CLAIM_ENTERED,
                "partial": lambda: t.c.status.in_([CLAIM_CHECKED, CLAIM_PROCESSED]),
                "complete": lambda: t.c.status.in_([CLAIM_REJECTED, CLAIM_VALUATED]),
                "error": false,
            }, frozenset({OUTCOME_SYSTEM}), "queued (entered), partial (checked, processed), complete "
                                            "(valuated, rejected)"),
            "status": choice_param("status", _fixed_code("active", ("cancelled", "draft", "entered-in-error")),
                                   frozenset({CLAIM_STATUS_SYSTEM}), "Always active (the IG fixes it)"),
            "claim-status": claim_status_param(),
        }
        self.sort_params = {**common_sorts(self), "created": SortKey(created, "date")}

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        return run_plan(conn, self.render_plan(conn, pks))

    def render_plan(self, conn: Connection, pks: list[int]) -> Plan[dict[int, dict[str, Any]]]:
        claims, line_rows = yield [_response_claims_read(pks), _claim_lines_read(pks)]
        lines = _line_rows(conn, pks, line_rows)
        renderer = _ResponseRenderer(insurer_id(conn))
        return {c.pk: renderer.body(c, lines[c.pk]) for c in claims}

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        if current is None:  # the REST layer refuses creates of a kind that is not creatable; kept as a guard
            raise _immutable("A ClaimResponse is the server's adjudication of a Claim; POST the Claim instead")
        return _deliver_review(ctx, resource, current)


# --- review: PUT ClaimResponse ----------------------------------------------------------------------------------

_REVIEW_HINT = ("a review changes only the checked adjudication (category 4) of a line that passed the checks — "
                "reason -1 to reject it, value = the quantity approved, amount = the unit price approved — and "
                "processNote[0].text (the adjustment)")
_NOT_REVIEWABLE_STATUS = {IDLE: "it was not selected for review", NOT_SELECTED: "it was not selected for review",
                          DELIVERED: "it was reviewed already",
                          BYPASSED: "its review was bypassed (the claim was processed without it)"}


def _not_pending(current: Row) -> FhirError:
    state = f"the claim is {STATUS_DISPLAYS.get(current.status, str(current.status)).lower()}"
    if current.deleted:
        why = "the claim is deleted"
    elif current.review_status == SELECTED:  # selected, yet no longer checked
        why = state
    else:
        why = f"{_NOT_REVIEWABLE_STATUS.get(current.review_status, 'review status ' + str(current.review_status))}" \
              f" ({state})"
    return conflict(f"{RESPONSE_TYPE}/{current.id} is not awaiting a review: {why}. Only a checked claim selected "
                    "for review takes one")


def _deliver_review(ctx: WriteContext, resource: dict[str, Any], current: Row) -> int:
    """A medical officer's review (domain §3.4.1), sent as the ClaimResponse as read with the checked
    adjudications changed; see the module docstring."""
    from hifhir.domain.claims import review

    if not review.is_pending(current.status, current.review_status, current.deleted):
        raise _not_pending(current)
    pk = int(current.pk)
    claims, line_rows = rows_together(ctx.conn, [_response_claims_read([pk]), _claim_lines_read([pk])])
    lines = _line_rows(ctx.conn, [pk], line_rows)[pk]
    shown = response_body(claims[0], lines, insurer_id(ctx.conn))
    _unchanged_elements(resource, shown)
    decisions, where = _line_decisions(resource, shown, lines)
    adjustment = _adjustment(resource, shown)
    try:
        review.deliver(ctx.conn, pk, decisions, adjustment=adjustment, today=date.today(), now=ctx.now)
    except review.LineReviewError as exc:
        at = where[(exc.line.kind, exc.line.line_pk)]
        raise business_rule(str(exc), at + {"quantity": ".value", "price": ".amount.value"}.get(exc.field or "",
                                                                                            "")) from None
    except review.NotPending as exc:
        raise conflict(str(exc)) from None
    return pk


def _difference(sent: Any, shown: Any, path: str) -> str | None:
    """The first element (as a FHIRPath-like expression) where what was sent differs from what was read: numbers
    compare by value (10 = 10.0), objects by their keys in any order, lists element by element."""
    if isinstance(sent, dict) and isinstance(shown, dict):
        for key in sorted(set(sent) | set(shown)):
            found = _difference(sent.get(key), shown.get(key), f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(sent, list) and isinstance(shown, list):
        if len(sent) != len(shown):
            return path
        for i, (a, b) in enumerate(zip(sent, shown, strict=True)):
            found = _difference(a, b, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if _is_number(sent) and _is_number(shown):
        return None if Decimal(str(sent)) == Decimal(str(shown)) else path
    return None if type(sent) is type(shown) and sent == shown else path


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _unchanged(sent: Any, shown: Any, path: str) -> None:
    found = _difference(sent, shown, path)
    if found is not None:
        raise business_rule(f"{found.partition('.')[2]} differs from the ClaimResponse as read: {_REVIEW_HINT}",
                            found)


def _unchanged_elements(resource: dict[str, Any], shown: dict[str, Any]) -> None:
    """Every top-level element but the reviewable ones is as read. `meta` is the server's; an element the user may
    not see (communicationRequest without 111009) may be left out."""
    for key in sorted((set(resource) | set(shown)) - {"resourceType", "id", "meta", "item", "processNote"}):
        if key in ClaimResponseKind.restricted_elements and key not in resource:
            continue
        _unchanged(resource.get(key), shown.get(key), f"{RESPONSE_TYPE}.{key}")


def _adjustment(resource: dict[str, Any], shown: dict[str, Any]) -> str | None:
    """processNote[0].text: the reviewer's comment (claim.adjustment); no processNote clears it."""
    notes = resource.get("processNote")
    if not notes:
        return None
    where = f"{RESPONSE_TYPE}.processNote"
    require(isinstance(notes, list) and len(notes) == 1 and isinstance(notes[0], dict),
            "processNote holds one note, the adjustment", where)
    note = notes[0]
    shown_note = (shown.get("processNote") or [{}])[0]
    for key in sorted((set(note) | set(shown_note)) - {"text"}):
        _unchanged(note.get(key), shown_note.get(key), f"{where}[0].{key}")
    text = note.get("text")
    require(isinstance(text, str) and bool(text.strip()), "processNote[0].text is the adjustment (a text)",
            f"{where}[0].text")
    return str(text)


def _line_decisions(resource: dict[str, Any], shown: dict[str, Any],
                    lines: list[Any]) -> tuple[list[Any], dict[tuple[str, int], str]]:
    """The reviewer's decision on each line whose checked adjudication changed (domain LineReview), and where each
    decision was read (the expression of its adjudication). Items are matched by itemSequence, in any order."""
    from hifhir.domain.claims.review import LineReview

    where = f"{RESPONSE_TYPE}.item"
    by_sequence = {item["itemSequence"]: (item, line) for item, line in zip(shown["item"], lines, strict=True)}
    items = resource.get("item")
    require(isinstance(items, list) and len(items) == len(by_sequence),
            f"A review keeps the claim's {len(by_sequence)} lines (item), each once: {_REVIEW_HINT}", where)
    decisions: list[Any] = []
    expressions: dict[tuple[str, int], str] = {}
    seen: set[int] = set()
    for i, item in enumerate(items):
        expression = f"{where}[{i}]"
        require(isinstance(item, dict), "An item is an object", expression)
        sequence = item.get("itemSequence")
        require(isinstance(sequence, int) and sequence in by_sequence and sequence not in seen,
                f"itemSequence {str(sequence)[:20]} names no line of the claim, or one named twice",
                f"{expression}.itemSequence")
        seen.add(sequence)
        shown_item, line = by_sequence[sequence]
        for key in sorted((set(item) | set(shown_item)) - {"adjudication"}):
            _unchanged(item.get(key), shown_item.get(key), f"{expression}.{key}")
        sent_adjudications = item.get("adjudication")
        shown_adjudications = shown_item["adjudication"]
        require(isinstance(sent_adjudications, list) and len(sent_adjudications) == len(shown_adjudications),
                f"A review keeps the line's {len(shown_adjudications)} adjudications: {_REVIEW_HINT}",
                f"{expression}.adjudication")
        for j, (sent, seen_adjudication) in enumerate(zip(sent_adjudications, shown_adjudications, strict=True)):
            at = f"{expression}.adjudication[{j}]"
            if line.status == LINE_REJECTED or first_code(seen_adjudication["category"]) != str(CLAIM_CHECKED):
                _unchanged(sent, seen_adjudication, at)
                continue
            require(isinstance(sent, dict), "An adjudication is an object", at)
            rejected, qty, price = _checked_adjudication(sent, seen_adjudication, at)
            if rejected or qty is not None or price is not None:
                decisions.append(LineReview(line.kind, int(line.pk), rejected, qty, price))
                expressions[(line.kind, int(line.pk))] = at
    return decisions, expressions


def _checked_adjudication(sent: dict[str, Any], shown: dict[str, Any],
                          at: str) -> tuple[bool, Decimal | None, Decimal | None]:
    """(rejected, quantity approved, unit price approved) from a line's checked adjudication; a quantity or a
    price that did not change is None (the line keeps what it had)."""
    for key in sorted((set(sent) | set(shown)) - {"reason", "amount", "value"}):
        _unchanged(sent.get(key), shown.get(key), f"{at}.{key}")
    rejected = _review_reason(sent.get("reason"), shown["reason"], f"{at}.reason")
    amount = sent.get("amount")
    require(isinstance(amount, dict), "adjudication.amount is the unit price approved (Money)", f"{at}.amount")
    for key in sorted((set(amount) | set(shown["amount"])) - {"value"}):
        _unchanged(amount.get(key), shown["amount"].get(key), f"{at}.amount.{key}")
    price = parse_amount(amount.get("value"), "adjudication.amount.value", f"{at}.amount.value")
    qty = parse_amount(sent.get("value"), "adjudication.value", f"{at}.value")
    if rejected:
        return True, None, None
    return (False, None if qty == Decimal(str(shown["value"])) else qty,
            None if price == Decimal(str(shown["amount"]["value"])) else price)


def _review_reason(sent: Any, shown: dict[str, Any], at: str) -> bool:
    """True when the reviewer rejects the line: reason -1 in claim-rejection-reasons (display optional, but the
    CodeSystem's when given); the reason as read keeps it."""
    if _difference(sent, shown, at) is None:
        return False
    require(isinstance(sent, dict), "adjudication.reason is a CodeableConcept", at)
    for key in sorted(set(sent) - {"coding"}):
        _unchanged(sent.get(key), shown.get(key), f"{at}.{key}")
    codings = sent.get("coding")
    require(isinstance(codings, list) and len(codings) == 1 and isinstance(codings[0], dict),
            "adjudication.reason has one coding", f"{at}.coding")
    coding = codings[0]
    for key in sorted(set(coding) - {"system", "code", "display"}):
        _unchanged(coding.get(key), shown["coding"][0].get(key), f"{at}.coding[0].{key}")
    require(coding.get("system") == REASON_CS, f"adjudication.reason is coded in {REASON_CS}",
            f"{at}.coding[0].system")
    kept = first_code(shown)
    code = coding.get("code")
    require(code in (kept, str(REJECTED_BY_MEDICAL_OFFICER)),
            f"A reviewer rejects a line with reason {REJECTED_BY_MEDICAL_OFFICER} (rejected by a medical officer) "
            f"or keeps reason {kept}, not {str(code)[:20]}", f"{at}.coding[0].code")
    display = coding.get("display")
    require(display is None or display == REJECTION_DISPLAYS.get(int(str(code))),
            f"The display of reason {code} is {REJECTION_DISPLAYS.get(int(str(code)))!r}",
            f"{at}.coding[0].display")
    return code == str(REJECTED_BY_MEDICAL_OFFICER)


# --- search parameters shared by both kinds --------------------------------------------------------------------------


def _fixed_code(own: str, others: tuple[str, ...]) -> dict[str, Any]:
    return {own: true, **{code: false for code in others}}


def claim_status_param() -> Any:
    """`claim-status` (hifhir): the openIMIS claim status, by the IG claim-status code (1, 2, 4, 8, 16) or its
    name (rejected, entered, checked, processed, valuated)."""
    options: dict[str, Any] = {}
    for status, display in STATUS_DISPLAYS.items():
        options[str(status)] = options[display.lower()] = (lambda s=status: claim.c.status == s)
    return choice_param("claim-status", options, frozenset({STATUS_CS}),
                        "The openIMIS claim status: 1 rejected, 2 entered, 4 checked, 8 processed, 16 valuated")


def _item_reference_param() -> Any:
    t = claim
    return typed_reference_param("item-reference", [
        ("Medication", link_ref(t.c.pk, claim_item.c.claim_pk, claim_item.c.item_pk, "medication")),
        ("ActivityDefinition", link_ref(t.c.pk, claim_service.c.claim_pk, claim_service.c.service_pk,
                                        "activity-definition")),
    ], "A Medication or ActivityDefinition claimed (extension claim-item-reference)")


