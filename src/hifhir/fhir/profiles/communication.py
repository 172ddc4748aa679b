"""OpenIMISCommunicationRequest and OpenIMISCommunication: claim feedback (IG rows 20–21; domain §2.21, §3.5;
reference §3.7). The rules live in `domain/claims/feedback.py`.

CommunicationRequest ↔ `feedback_prompt` (a claim selected for feedback), id = the claim's id. Read-only: prompts
are created by the feedback selection of a submitted claim (POST Claim), never through this API (POST, PUT and
DELETE are 405).
* status from the claim's feedback status: 4 Selected → `active`, 8 Delivered → `completed`, 16 Bypassed →
  `revoked`; statusReason = that code in `feedback-status` with its display. A prompt whose claim was later set
  to another status (not selected) reads as revoked with reason 16: the request is withdrawn either way, and the
  profile's required binding has no other code.
* subject → the claim's Patient, about → the Claim, recipient → the **enrolment officer** Practitioner prompted
  (the IG's profile targets the EO; the reference module renders the claim administrator, which the profile
  forbids and which is not who visits the insuree).
* the five payloads in the IG's order, each with the `communication-payload-type` extension and the fixed
  question string the profile patterns.
* No identifier (the profile forbids it). Search: _id, _lastUpdated, subject / patient, about, recipient, status.

Communication ↔ `feedback` (the answers). `POST Communication` records the feedback of a claim:
* `about[0]` → a current Claim (422 otherwise); `subject` → a Patient that must be that claim's insuree (422);
  status `completed` (the profile's pattern).
* `payload`: exactly one per question (the profile's closed slices; a duplicate or missing one is refused), the
  answer in contentString: `yes`/`no` for the four questions (any case), `0`–`5` for the assessment; anything
  else is a 422 naming the payload (`Communication.payload[i].contentString`).
* the claim must be awaiting feedback (Selected): a claim never selected, not selected or bypassed is a 422 — the
  Communication is about a claim for which no feedback was asked (a business rule about the content sent); a
  claim that has its feedback already is a **409** (the feedback exists: a conflict with the stored state, as a
  resubmitted claim code).
* On success: 201 with the Communication; the claim's feedback status becomes 8 (Delivered) and its
  CommunicationRequest is re-versioned as `completed` in the same transaction. The officer recorded is the one
  prompted (the profile forbids `sender`).
* Immutable: PUT and DELETE are 405. Search: _id, _lastUpdated, about, subject / patient.

Rights (auth/matrix.py; domain §4.5, reference permissions): read and search 111010 (openIMIS "Claims.Feedback
search") or 111009 (deliver feedback: who answers reads what is asked) for both; create 111009. The IG's security
page ties the ClaimResponse.communicationRequest link to 111009 — the ClaimResponse kind's business. Updates and
deletes are 405.

For the Claim kind (the lead wires these): `select_claim_for_feedback(ctx, claim_pk, today=)` after the checks
passed the claim, and `feedback_status_changed(ctx, claim_pks)` after processing (Selected → Bypassed), so that
the CommunicationRequest's history shows each status it went through.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import date
from typing import Any

from sqlalchemy import Connection, Row, and_, select

from hifhir import config
from hifhir.auth import scope as location_scope
from hifhir.domain.claims import BYPASSED, DELIVERED, SELECTED
from hifhir.domain.claims.feedback import (
    Answers,
    FeedbackError,
    FeedbackExists,
    NotSelected,
    SelectionRule,
    deliver,
    parse_rule,
    select_for_feedback,
)
from hifhir.fhir.elements import coding, ext, reference
from hifhir.fhir.errors import FhirError, business_rule, conflict
from hifhir.fhir.kind import CS, EXT, ResourceKind, WriteContext, require
from hifhir.fhir.profiles.contract import choice_param
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import RefPath, SearchParam, column_ref, link_ref, reference_param
from hifhir.store.tables import CLAIM_CHECKED, claim, feedback, feedback_prompt, insuree, is_current, officer

REQUEST_TYPE, COMMUNICATION_TYPE = "CommunicationRequest", "Communication"
REQUEST_KIND, COMMUNICATION_KIND = "communication-request", "communication"
PAYLOAD_EXT = "communication-payload-type"
PAYLOAD_SYSTEM = CS + "feedback-payload"
FEEDBACK_STATUS_SYSTEM = CS + "feedback-status"
REQUEST_STATUS_SYSTEM = "http://hl7.org/fhir/request-status"

# (payload code, question the CommunicationRequest asks, feedback column), in the IG's order. "Asessment" (sic)
# is the IG's code.
QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("CareRendered", "Care Rendered? (yes|no)", "care_rendered"),
    ("PaymentAsked", "Payment Asked? (yes|no)", "payment_asked"),
    ("DrugPrescribed", "Drug Prescribed? (yes|no)", "drug_prescribed"),
    ("DrugReceived", "Drug Received? (yes|no)", "drug_received"),
    ("Asessment", "Asessment? (0|1|2|3|4|5)", "assessment"),
)
ASSESSMENT = "Asessment"
# feedback status → (CommunicationRequest.status, statusReason display)
REQUEST_STATUS = {SELECTED: ("active", "Selected"), DELIVERED: ("completed", "Delivered"),
                  BYPASSED: ("revoked", "Bypassed")}


def _payload(code: str, content: str) -> dict[str, Any]:
    return {"extension": [ext(PAYLOAD_EXT, "valueCodeableConcept", {"coding": [coding(PAYLOAD_SYSTEM, code)]})],
            "contentString": content}


def _via_claim(owner_table: Any, target_column: str, target_kind: str) -> RefPath:
    """A reference the row holds through its claim (the patient): the owner's pk paired with the claim's column.
    An alias of the owner table keeps the pairing's FROM apart from the searched table."""
    owner = owner_table.alias(f"{owner_table.name}_via_claim")
    return link_ref(owner_table.c.pk, owner.c.pk, claim.c[target_column], target_kind,
                    owner.c.claim_pk == claim.c.pk)


def _patient_params(table: Any, what: str) -> dict[str, SearchParam]:
    path = _via_claim(table, "insuree_pk", "patient")
    return {name: reference_param(name, "Patient", path, doc=f"The insuree {what}") for name in ("subject", "patient")}


def _without_identifier(kind: ResourceKind) -> dict[str, SearchParam]:
    # The profiles forbid identifiers: there is nothing to search by.
    return {k: v for k, v in common_params(kind).items() if k != "identifier"}


# --- CommunicationRequest ------------------------------------------------------------------------------------


def _prompt_status_is(*statuses: int) -> Any:
    t = feedback_prompt
    return lambda: t.c.claim_pk.in_(select(claim.c.pk).where(claim.c.feedback_status.in_(statuses)))


_PROMPTS = (
    select(feedback_prompt.c.pk, claim.c.id.label("claim_id"), claim.c.feedback_status,
           insuree.c.id.label("patient_id"), officer.c.id.label("officer_id"))
    .select_from(feedback_prompt
                 .join(claim, claim.c.pk == feedback_prompt.c.claim_pk)
                 .join(insuree, insuree.c.pk == claim.c.insuree_pk)
                 .join(officer, officer.c.pk == feedback_prompt.c.officer_pk))
)


class CommunicationRequestKind(ResourceKind):
    resource_type = REQUEST_TYPE
    name = REQUEST_KIND
    profile_id = "openimis-communication-request"
    table = feedback_prompt
    scope = location_scope.FEEDBACK
    code_column = None
    writable = False  # created by the feedback selection of a claim, never through the API

    def __init__(self) -> None:
        t = feedback_prompt
        self.search_params = {
            **_without_identifier(self),
            **_patient_params(t, "asked about the claim"),
            "about": reference_param("about", "Claim", column_ref(t.c.claim_pk, "claim"),
                                     doc="The claim the feedback is about"),
            "recipient": reference_param("recipient", "Practitioner", column_ref(t.c.officer_pk, "enrolment-officer"),
                                         doc="The enrolment officer asked to collect the feedback"),
            "status": choice_param("status", {
                "active": _prompt_status_is(SELECTED),
                "completed": _prompt_status_is(DELIVERED),
                "revoked": lambda: t.c.claim_pk.in_(select(claim.c.pk).where(
                    claim.c.feedback_status.not_in([SELECTED, DELIVERED]))),
            }, frozenset({REQUEST_STATUS_SYSTEM}), "active (selected), completed (delivered), revoked (bypassed)"),
        }
        self.sort_params = common_sorts(self)

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for row in conn.execute(_PROMPTS.where(feedback_prompt.c.pk.in_(pks))):
            reason = row.feedback_status if row.feedback_status in REQUEST_STATUS else BYPASSED
            status, display = REQUEST_STATUS[reason]
            out[row.pk] = {
                "status": status,
                "statusReason": {"coding": [coding(FEEDBACK_STATUS_SYSTEM, str(reason), display)]},
                "subject": reference("Patient", row.patient_id),
                "about": [reference("Claim", row.claim_id)],
                "payload": [_payload(code, question) for code, question, _ in QUESTIONS],
                "recipient": [reference("Practitioner", row.officer_id)],
            }
        return out

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        raise FhirError.one(405, "not-supported", "A CommunicationRequest is created when a claim is selected for "
                                                  "feedback; POST a Communication to answer it")


# --- Communication -------------------------------------------------------------------------------------------

_FEEDBACKS = (
    select(feedback, claim.c.id.label("claim_id"), insuree.c.id.label("patient_id"))
    .select_from(feedback
                 .join(claim, claim.c.pk == feedback.c.claim_pk)
                 .join(insuree, insuree.c.pk == claim.c.insuree_pk))
)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


class CommunicationKind(ResourceKind):
    resource_type = COMMUNICATION_TYPE
    name = COMMUNICATION_KIND
    profile_id = "openimis-communication"
    table = feedback
    scope = location_scope.FEEDBACK
    code_column = None
    updatable = deletable = False  # the record of a visit: one feedback per claim, never changed

    def __init__(self) -> None:
        t = feedback
        self.search_params = {
            **_without_identifier(self),
            **_patient_params(t, "who gave the feedback"),
            "about": reference_param("about", "Claim", column_ref(t.c.claim_pk, "claim"),
                                     doc="The claim the feedback is about"),
        }
        self.sort_params = common_sorts(self)

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for row in conn.execute(_FEEDBACKS.where(feedback.c.pk.in_(pks))):
            answers = [str(row.assessment) if code == ASSESSMENT else _yes_no(row._mapping[column])
                       for code, _, column in QUESTIONS]
            out[row.pk] = {
                "status": "completed",
                "subject": reference("Patient", row.patient_id),
                "about": [reference("Claim", row.claim_id)],
                "payload": [_payload(code, answer) for (code, _, _), answer in zip(QUESTIONS, answers, strict=True)],
            }
        return out

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        if current is not None or ctx.id_from_client:
            raise FhirError.one(405, "not-supported", "A Communication records a claim's feedback once (POST); it "
                                                      "cannot be created or changed by PUT")
        require(resource.get("status") == "completed", "A feedback Communication has status completed",
                "Communication.status")
        answers = _answers(resource.get("payload"))
        abouts = resource.get("about")
        about = abouts[0] if isinstance(abouts, list) and abouts else None
        _, claim_pk = ctx.resolve(about, ["Claim"], "Communication.about[0]", kinds=["claim"])
        _, patient_pk = ctx.resolve(resource.get("subject"), ["Patient"], "Communication.subject",
                                    kinds=["patient"])
        head = ctx.conn.execute(
            select(claim.c.insuree_pk, feedback_prompt.c.pk.label("prompt_pk"))
            .select_from(claim.outerjoin(feedback_prompt, and_(feedback_prompt.c.claim_pk == claim.c.pk,
                                                               is_current(feedback_prompt))))
            .where(claim.c.pk == claim_pk)).one()
        require(head.insuree_pk == patient_pk, "The subject must be the patient of the claim the feedback is about",
                "Communication.subject")
        try:
            pk = deliver(ctx.conn, claim_pk, answers, officer_pk=None, today=date.today(), now=ctx.now,
                         feedback_id=ctx.new_id)
        except FeedbackExists as exc:
            raise conflict(f"{exc}: one feedback per claim", "Communication.about[0]") from None
        except NotSelected as exc:
            raise business_rule(f"{exc}; only a claim awaiting feedback (CommunicationRequest active) takes one",
                                "Communication.about[0]") from None
        except FeedbackError as exc:
            raise business_rule(str(exc), "Communication.payload") from None
        ctx.created[(feedback.name, pk)] = ctx.new_id
        if head.prompt_pk is not None:
            ctx.mark(REQUEST_KIND, int(head.prompt_pk))  # now completed
        _process_after_feedback(ctx, claim_pk)
        return pk


def _process_after_feedback(ctx: WriteContext, claim_pk: int) -> None:
    """A claim held for feedback goes on once the answers are in: processed and valuated in the same transaction
    (unless it still waits for a medical officer's review: the review then processes it), its ClaimResponse
    re-versioned (it also shows the request completed)."""
    from hifhir.domain.claims import review, valuation
    from hifhir.fhir.profiles.claim import RESPONSE_KIND

    row = ctx.conn.execute(select(claim.c.status, claim.c.review_status, claim.c.feedback_status)
                           .where(claim.c.pk == claim_pk)).one()
    if row.status == CLAIM_CHECKED and review.may_process(row.review_status, row.feedback_status):
        valuation.process(ctx.conn, claim_pk, today=date.today(), now=ctx.now)
    ctx.mark(RESPONSE_KIND, claim_pk)


def _answers(payloads: Any) -> Answers:
    """The five answers by payload code; the profile's slicing already asked for one payload per question."""
    require(isinstance(payloads, list), "payload is required: one answer per feedback question",
            "Communication.payload")
    found: dict[str, Any] = {}
    for i, payload in enumerate(payloads):
        expression = f"Communication.payload[{i}]"
        code = _payload_code(payload)
        require(code in {c for c, _, _ in QUESTIONS}, "Each payload needs the communication-payload-type extension "
                "with a feedback-payload code", f"{expression}.extension")
        require(code not in found, f"The question {code} is answered twice", expression)
        content = payload.get("contentString")
        expression += ".contentString"
        if code == ASSESSMENT:
            require(isinstance(content, str) and content.strip() in {str(n) for n in range(6)},
                    f"The assessment is one of 0, 1, 2, 3, 4, 5, not {str(content)[:20]!r}", expression)
            found[code] = int(str(content).strip())
        else:
            answer = content.strip().lower() if isinstance(content, str) else None
            require(answer in ("yes", "no"), f"The answer to {code} is yes or no, not {str(content)[:20]!r}",
                    expression)
            found[code] = answer == "yes"
    missing = [c for c, _, _ in QUESTIONS if c not in found]
    require(not missing, f"Unanswered feedback question(s): {', '.join(missing)}", "Communication.payload")
    return Answers(*(found[code] for code, _, _ in QUESTIONS))


def _payload_code(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return None
    for extension in payload.get("extension") or ():
        if isinstance(extension, dict) and extension.get("url") == EXT + PAYLOAD_EXT:
            concept = extension.get("valueCodeableConcept") or {}
            for c in concept.get("coding") or ():
                if isinstance(c, dict) and c.get("system") in (None, PAYLOAD_SYSTEM) and isinstance(c.get("code"),
                                                                                                   str):
                    return str(c["code"])
    return None


# --- for the Claim kind ----------------------------------------------------------------------------------------


@functools.cache
def _rule(text: str) -> SelectionRule:
    return parse_rule(text)


def configured_rule() -> SelectionRule:
    """The selection rule of HIFHIR_FEEDBACK_SELECTION (read at each call: tests and the demo may change it)."""
    return _rule(config.FEEDBACK_SELECTION)


def select_claim_for_feedback(ctx: WriteContext, claim_pk: int, *, today: date,
                              rule: SelectionRule | None = None) -> bool:
    """The feedback selection of a claim the checks just passed (status 4), in the write that submitted it: True
    when it is Selected, its new CommunicationRequest registered for the flush (version 1). `rule` defaults to
    the configured one. The caller then leaves the claim checked (processing would bypass the feedback at once)."""
    if not select_for_feedback(ctx.conn, claim_pk, rule=rule or configured_rule(), today=today, now=ctx.now):
        return False
    row = ctx.conn.execute(select(feedback_prompt.c.pk, feedback_prompt.c.id).where(
        feedback_prompt.c.claim_pk == claim_pk, is_current(feedback_prompt))).one()
    ctx.created[(feedback_prompt.name, int(row.pk))] = row.id
    ctx.mark(REQUEST_KIND, int(row.pk))
    return True


def feedback_status_changed(ctx: WriteContext, claim_pks: Iterable[int]) -> None:
    """Re-version the CommunicationRequests of claims whose feedback status changed (processing turns Selected
    into Bypassed: the request becomes revoked). Claims without a prompt are skipped."""
    pks = list(claim_pks)
    if not pks:
        return
    for prompt_pk in ctx.conn.execute(select(feedback_prompt.c.pk).where(
            feedback_prompt.c.claim_pk.in_(pks), is_current(feedback_prompt))).scalars():
        ctx.mark(REQUEST_KIND, int(prompt_pk))
