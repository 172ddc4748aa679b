"""Feedback on claims (reference/openimis-domain.md §2.21, §3.4.1, §3.5): selecting a checked claim for feedback,
prompting an enrolment officer, and recording the insuree's answers. No HTTP, no FHIR.

Selection — `select_for_feedback(conn, claim_pk, rule=, today=, now=) -> bool`, on a checked claim (status 4)
whose feedback status is still Idle (1); anything else is a ValueError, like `checks.submit` on a claim that is
not entered. The rule (`parse_rule`, configured by `HIFHIR_FEEDBACK_SELECTION`) is one of openIMIS's selection
types (§3.4.1):
* `off` (default) — no selection runs: the claim stays Idle, nothing is read or written, the answer is False;
* `all:<min claimed>` — type 0: selected when Claimed ≥ the value;
* `random:<percent>` — type 1: selected with that probability (0 never, 100 always);
* `variance:<percent>[:<min claimed>]` — type 2: selected when Claimed ≥ the value (default 0) and Claimed ≥
  the average Claimed of the processed (8) and valuated (16) claims with the same main diagnosis processed in the
  last year (today − 12 months … today) × (1 + percent/100). Without such claims there is no average to exceed
  and the claim is not selected (legacy compares with a NULL average, which selects nothing either).
A selected claim needs an enrolment officer to visit the insuree: a current officer with a current role (no
"works to" date, or one not before today) attached (`officer_role_village`) to the insuree's own village, else to
the family's village, **who has a phone** (the officer's own, else the role's). Then the claim gets feedback
status 4 (Selected) and a prompt (`feedback_prompt`: id = the claim's id, the officer, the phone, prompt date =
today, SMS status 0), and the answer is True. **No such officer → the claim is not selected** (status 2, False):
openIMIS fails the whole selection with an error there, which would block the claim's submission for want of an
officer; nobody could deliver the feedback anyway. Not selected by the rule → status 2, False.
Unlike openIMIS's batch selection (first every candidate goes to 2, then TOP x PERCENT of them), hifhir selects
each claim as it is submitted, so "random x %" is a per-claim probability rather than an exact share of a batch.

Delivery — `deliver(conn, claim_pk, answers, officer_pk=, today=, now=) -> feedback pk` (§3.5 step 3): one
feedback per claim (a second one → `FeedbackExists`, legacy code 4 "feedback exists"); the claim must be Selected
(status 4: never selected, not selected or bypassed → `NotSelected`); assessment 0–5 (`FeedbackError`). It writes
the feedback row (the officer who collected the answers — by default the prompt's —, the four yes/no answers, the
assessment, feedback date = today) and sets the claim's feedback status to 8 (Delivered) and
`feedback_available`. The prompt is kept (openIMIS closes it with ValidityTo): it is the claim's
CommunicationRequest, now completed.

Processing (`valuation.process`) turns a still-Selected feedback status into 16 (Bypassed); the prompt then
reads as revoked.

How they are meant to be called (the FHIR layer, fhir/profiles/communication.py, wraps both):
* POST Claim, once the checks passed the claim (`checks.check_submission`, status 4) and it is stored:
  `select_claim_for_feedback(ctx, claim_pk, today=)`
  (the configured rule; on True the new prompt is registered in the WriteContext so the flush writes the
  CommunicationRequest's first version). A selected claim should not be processed in the same request — processing
  would bypass the feedback at once.
* Whenever a claim's feedback status changes outside POST Communication (processing 4 → 16):
  `feedback_status_changed(ctx, claim_pks)` re-versions the CommunicationRequests concerned.
* The rows written here carry version 1 and `last_updated = now`; the caller registers them with the WriteContext
  (`ctx.created`) — the wrappers above do.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

from sqlalchemy import Connection, and_, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from hifhir.domain.claims import BYPASSED, DELIVERED, IDLE, NOT_SELECTED, SELECTED
from hifhir.domain.policy import add_months
from hifhir.store.tables import (
    CLAIM_CHECKED,
    CLAIM_PROCESSED,
    CLAIM_VALUATED,
    claim,
    family,
    feedback,
    feedback_prompt,
    insuree,
    is_current,
    officer,
    officer_role,
    officer_role_village,
)

RULE_KINDS = ("off", "all", "random", "variance")
MAX_ASSESSMENT = 5


class FeedbackError(ValueError):
    """A feedback that cannot be recorded (the API answers 422 unless a subclass says otherwise)."""


class FeedbackExists(FeedbackError):
    """The claim already has its feedback (legacy error 4; the API answers 409)."""


class NotSelected(FeedbackError):
    """The claim is not awaiting feedback: never selected, not selected or bypassed."""


@dataclass(frozen=True, slots=True)
class SelectionRule:
    """How checked claims are selected for feedback (§3.4.1 selection types)."""

    kind: str = "off"  # off | all | random | variance
    min_claimed: Decimal = Decimal(0)  # all, variance: Claimed must reach it
    percent: Decimal = Decimal(0)  # random: probability; variance: excess over the average


OFF = SelectionRule()


def _number(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{what} must be a number, not {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{what} must be a number ≥ 0, not {text!r}")
    return value


def parse_rule(text: str) -> SelectionRule:
    """`off`, `all:<min claimed>`, `random:<percent>` or `variance:<percent>[:<min claimed>]`; ValueError else."""
    kind, _, rest = text.strip().partition(":")
    kind = kind.strip().lower()
    parts = rest.split(":") if rest else []
    if kind == "off" and not parts:
        return OFF
    if kind == "all" and len(parts) == 1:
        return SelectionRule("all", min_claimed=_number(parts[0], "all: the minimum claimed"))
    if kind == "random" and len(parts) == 1:
        percent = _number(parts[0], "random: the percentage")
        if percent > 100:
            raise ValueError(f"random: the percentage is at most 100, not {parts[0]!r}")
        return SelectionRule("random", percent=percent)
    if kind == "variance" and len(parts) in (1, 2):
        return SelectionRule("variance", percent=_number(parts[0], "variance: the percentage"),
                             min_claimed=_number(parts[1], "variance: the minimum claimed") if len(parts) == 2
                             else Decimal(0))
    raise ValueError(f"Feedback selection {text!r}: expected off, all:<min claimed>, random:<percent> or "
                     "variance:<percent>[:<min claimed>]")


@dataclass(frozen=True, slots=True)
class Answers:
    """What the enrolment officer collected from the insuree (§3.5 step 2)."""

    care_rendered: bool
    payment_asked: bool
    drug_prescribed: bool
    drug_received: bool
    assessment: int  # 0–5


# --- selection -----------------------------------------------------------------------------------------------

_HEAD = (
    select(claim.c.status, claim.c.feedback_status, claim.c.claimed, claim.c.icd_code, claim.c.id,
           insuree.c.village_pk, family.c.location_pk.label("family_village"))
    .select_from(claim.join(insuree, insuree.c.pk == claim.c.insuree_pk)
                 .outerjoin(family, family.c.pk == insuree.c.family_pk))
)


def select_for_feedback(conn: Connection, claim_pk: int, *, rule: SelectionRule, today: date, now: int) -> bool:
    """Apply the selection rule to a checked claim (status 4, feedback Idle): True when it is now Selected (4)
    with its prompt to an enrolment officer, False when not (status 2 — the rule left it out, or no current
    officer with a phone serves the insuree's village —, or the rule is `off`: then nothing changes).
    ValueError when the claim does not exist, is not checked, or its feedback status is no longer Idle."""
    if rule.kind == "off":
        return False
    c = conn.execute(_HEAD.where(claim.c.pk == claim_pk)).first()
    if c is None or c.status != CLAIM_CHECKED:
        raise ValueError(f"Claim {claim_pk} is not a checked claim (status {CLAIM_CHECKED})")
    if c.feedback_status != IDLE:
        raise ValueError(f"Claim {claim_pk} went through feedback selection already (status {c.feedback_status})")
    claimed = c.claimed or Decimal(0)
    chosen = _chosen(conn, claim_pk, rule, claimed, c.icd_code, today)
    prompt = _officer(conn, [v for v in (c.village_pk, c.family_village) if v is not None], today) if chosen \
        else None
    if prompt is None:
        conn.execute(update(claim).where(claim.c.pk == claim_pk).values(feedback_status=NOT_SELECTED))
        return False
    officer_pk, phone = prompt
    conn.execute(insert(feedback_prompt).values(
        id=c.id, uuid=c.id, claim_pk=claim_pk, officer_pk=officer_pk, prompt_date=today, phone=phone,
        sms_status=0, version_id=1, last_updated=now))
    conn.execute(update(claim).where(claim.c.pk == claim_pk).values(feedback_status=SELECTED))
    return True


def _chosen(conn: Connection, claim_pk: int, rule: SelectionRule, claimed: Decimal, icd: str, today: date) -> bool:
    if rule.kind == "all":
        return claimed >= rule.min_claimed
    if rule.kind == "random":
        # random() is in [0, 1): 0 % never selects, 100 % always does.
        return Decimal(random.random()) * 100 < rule.percent
    if rule.kind == "variance":
        if claimed < rule.min_claimed:
            return False
        average = _average_claimed(conn, claim_pk, icd, today)
        return average is not None and claimed >= average * (1 + rule.percent / 100)
    raise ValueError(f"Unknown feedback selection {rule.kind!r}")


def _average_claimed(conn: Connection, claim_pk: int, icd: str, today: date) -> Decimal | None:
    """Average Claimed of the processed and valuated claims with this main diagnosis, processed in the last year.
    Sum and count rather than AVG: the Amount type reads the exact sum back as a Decimal."""
    row = conn.execute(select(func.sum(claim.c.claimed), func.count(claim.c.claimed)).where(
        claim.c.icd_code == icd, claim.c.status.in_([CLAIM_PROCESSED, CLAIM_VALUATED]), is_current(claim),
        claim.c.date_processed.between(add_months(today, -12), today), claim.c.pk != claim_pk)).one()
    total, count = row
    return None if not count else Decimal(total) / count


def _officer(conn: Connection, villages: list[int], today: date) -> tuple[int, str] | None:
    """(officer pk, phone) of the enrolment officer to prompt: one serving the first village that has one (the
    insuree's own, then the family's), with a phone; the lowest officer code among several."""
    if not villages:
        return None
    phone = func.coalesce(func.nullif(officer.c.phone, ""), func.nullif(officer_role.c.phone, ""))
    rank = case({v: i for i, v in enumerate(villages)}, value=officer_role_village.c.location_pk)
    row = conn.execute(
        select(officer.c.pk, phone.label("phone"))
        .select_from(officer_role_village
                     .join(officer_role, officer_role.c.pk == officer_role_village.c.role_pk)
                     .join(officer, officer.c.pk == officer_role.c.officer_pk))
        .where(officer_role_village.c.location_pk.in_(villages), is_current(officer_role), is_current(officer),
               or_(officer_role.c.works_to.is_(None), officer_role.c.works_to >= today), phone.is_not(None))
        .order_by(rank, officer.c.code, officer.c.pk)
        .limit(1)
    ).first()
    return None if row is None else (int(row.pk), str(row.phone))


# --- delivery ------------------------------------------------------------------------------------------------

_STATE = (
    select(claim.c.pk, claim.c.feedback_status, feedback_prompt.c.officer_pk.label("prompt_officer"),
           feedback.c.pk.label("feedback_pk"))
    .select_from(claim
                 .outerjoin(feedback_prompt, and_(feedback_prompt.c.claim_pk == claim.c.pk,
                                                  is_current(feedback_prompt)))
                 .outerjoin(feedback, and_(feedback.c.claim_pk == claim.c.pk, is_current(feedback))))
)

_STATUS_NAMES = {IDLE: "was never selected for feedback", NOT_SELECTED: "was not selected for feedback",
                 BYPASSED: "had its feedback bypassed (the claim was processed)"}


def deliver(conn: Connection, claim_pk: int, answers: Answers, *, officer_pk: int | None, today: date, now: int,
            feedback_id: str | None = None) -> int:
    """Record the feedback of a claim selected for it; returns the new feedback row's pk (id = `feedback_id`, else
    a new UUID). `officer_pk` is the officer who collected the answers; None = the prompt's officer.
    FeedbackExists when the claim has its feedback already, NotSelected when it is not awaiting one,
    FeedbackError for an assessment outside 0–5, ValueError when the claim does not exist."""
    state = conn.execute(_STATE.where(claim.c.pk == claim_pk)).first()
    if state is None:
        raise ValueError(f"Claim {claim_pk} does not exist")
    if state.feedback_pk is not None or state.feedback_status == DELIVERED:
        raise FeedbackExists("The claim has its feedback already")
    if state.feedback_status != SELECTED:
        raise NotSelected(f"The claim {_STATUS_NAMES.get(state.feedback_status, 'is not awaiting feedback')}")
    if isinstance(answers.assessment, bool) or not 0 <= answers.assessment <= MAX_ASSESSMENT:
        raise FeedbackError(f"The assessment is a number from 0 to {MAX_ASSESSMENT}")
    new_id = feedback_id or str(uuid.uuid4())
    try:
        pk = int(conn.execute(insert(feedback).values(
            id=new_id, uuid=new_id, claim_pk=claim_pk,
            officer_pk=officer_pk if officer_pk is not None else state.prompt_officer,
            care_rendered=answers.care_rendered, payment_asked=answers.payment_asked,
            drug_prescribed=answers.drug_prescribed, drug_received=answers.drug_received,
            assessment=answers.assessment, feedback_date=today, version_id=1, last_updated=now,
        )).inserted_primary_key[0])
    except IntegrityError as exc:
        # Two deliveries racing for the same claim: the partial unique index on feedback.claim_pk decides.
        if "claim_pk" in str(exc.orig):
            raise FeedbackExists("The claim has its feedback already") from None
        raise
    conn.execute(update(claim).where(claim.c.pk == claim_pk)
                 .values(feedback_status=DELIVERED, feedback_available=True))
    return pk
