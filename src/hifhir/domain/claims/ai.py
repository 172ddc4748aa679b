"""Claim-AI: an external adjudicator reviews checked claims before they are processed (issue 5; reference §5.1,
openimis-be-claim_ai_quality_py; IG "Claim-AI diagrams").

On when `HIFHIR_CLAIM_AI_URL` is set (config.CLAIM_AI_URL; unset, claims are processed at once as before).

Submission — `enqueue_for_ai(ctx_or_conn, claim_pk)`, called by POST Claim for a claim the checks passed (status 4,
not held for feedback), writes an outbox row (topic `claim-ai`, subject = the claim id) in the POST's transaction
and returns True; the claim then waits, checked (4) and not processed — its ClaimResponse reads `partial` — until
the adjudicator answers. With the AI off it returns False and the caller processes the claim as before.

Delivery — the outbox worker runs `deliver` outside any transaction:
1. A claim no longer waiting (processed, rejected, or held for review or feedback meanwhile) is not sent; the row
   is done. Waiting = status 4, review status Idle (1) or Not selected (2), feedback status not Selected (4).
2. The Claim is POSTed as FHIR JSON to the URL: the stored Claim (its latest version in the history, exactly as
   submitted) with its Patient, Organization (the health facility), Practitioner (the claim administrator) and each
   line's Medication / ActivityDefinition as **contained** resources — what the reference's claim-AI quality
   module sends (`ClaimSerializer` with `contained=True`). The references to them become `#<id>` (FHIR's rule
   that contained resources are referenced from their container); the contained resources keep their
   identifiers, so a receiver matches them to its registers as hifhir's own POST Claim does. Headers:
   `X-Request-Id` and `Idempotency-Key` = the outbox row id (the same at every retry). Timeout TIMEOUT_S.
3. The answer must be 2xx with a ClaimResponse (or a Bundle holding the one whose `request` is this claim); a
   non-2xx, unreadable or malformed answer, an answer about another claim, or `outcome` queued (not evaluated
   yet) or error is a failure for now: the outbox retries with backoff, nothing is lost.
4. A line is rejected by the AI when one of its item's adjudications has `reason` −2 (hifhir's claim-rejection-
   reasons code "rejected by AI evaluation"), category 1 (rejected), or — the reference AI's own form —
   category −2 ("AI") with reason 1 (rejected; 0 accepted, −1 not adjudicated). Items are matched to the claim's
   lines by `itemSequence` = Claim.item.sequence; items naming no line are ignored (logged).
5. In one transaction (the claim row locked on PostgreSQL), if the claim is still waiting: the rejected passed lines
   get status 2 (rejected), reason −2 and approved quantity 0, the claim's approved amount is recomputed over the
   lines still passed, and the claim is flagged for review (review status 4 Selected: a medical officer must look,
   as the reference's `update_claim` does); with no line rejected, the claim is processed and valuated
   (`valuation.process`: outcome partial → complete). The ClaimResponse is re-versioned through a WriteContext.
   An answer for a claim no longer waiting is ignored (logged): at-least-once delivery may bring it twice.

Choices:
* The URL a row is sent to is the worker's HIFHIR_CLAIM_AI_URL, else the one configured when the claim was
  submitted (kept in the row): a worker started without the variable still delivers what was queued.
* A claim held for feedback is not sent: feedback selection comes first and POST Communication processes it
  (openIMIS runs the AI on submitted claims and the feedback on selected ones; both would otherwise hold it).
* "Not adjudicated" (−1) is not a rejection (the reference flags for review only on rejected items).
* After the outbox's last attempt the row is `failed` and the claim keeps waiting, checked: an operator requeues
  the row (`hifhir worker --requeue-failed`) once the adjudicator is back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, String, literal_column, select, union_all, update

from hifhir import config
from hifhir.domain.claims import IDLE, NOT_SELECTED, REJECTED_BY_AI, SELECTED
from hifhir.outbox import Delivery, PermanentFailure, RetryLater, enqueue, register
from hifhir.outbox.http import HttpFailure, post
from hifhir.store.db import transaction
from hifhir.store.tables import (
    CLAIM_CHECKED,
    LINE_PASSED,
    LINE_REJECTED,
    claim,
    claim_item,
    claim_service,
)
from hifhir.store.tables import resource_version as rv

log = logging.getLogger("hifhir.claim_ai")

TOPIC = "claim-ai"
AI_USER = "hifhir-claim-ai"  # user_name on the history rows an answer writes
TIMEOUT_S = 10.0
WAITING_REVIEW = (IDLE, NOT_SELECTED)
AI_CATEGORY, AI_REJECTED = "-2", "1"  # the reference AI's adjudication category and its "rejected" reason
_LINE_TABLES = {"item": (claim_item, "item_pk", "medication", "Medication"),
                "service": (claim_service, "service_pk", "activity-definition", "ActivityDefinition")}


# --- submission ------------------------------------------------------------------------------------------------


def enqueue_for_ai(target: Any, claim_pk: int, *, claim_id: str | None = None) -> bool:
    """Queue a checked claim for the adjudicator in the caller's transaction; False (nothing written) when no
    adjudicator is configured. `target` is a WriteContext or a Connection."""
    url = config.CLAIM_AI_URL
    if not url:
        return False
    conn: Connection = getattr(target, "conn", target)
    now: int | None = getattr(target, "now", None)
    if claim_id is None:
        created = getattr(target, "created", {})
        claim_id = created.get((claim.name, claim_pk)) or conn.execute(
            select(claim.c.id).where(claim.c.pk == claim_pk)).scalar_one()
    enqueue(conn, TOPIC, claim_id, {"claim_pk": claim_pk, "url": url}, now=now)
    return True


# --- delivery --------------------------------------------------------------------------------------------------


def _waiting(row: Any) -> bool:
    return row.status == CLAIM_CHECKED and row.review_status in WAITING_REVIEW and row.feedback_status != SELECTED


_CLAIM_STATE = select(claim.c.pk, claim.c.id, claim.c.status, claim.c.review_status, claim.c.feedback_status,
                      claim.c.insuree_pk, claim.c.hf_pk, claim.c.claim_admin_pk)


def _claim_state(conn: Connection, claim_pk: int, *, lock: bool = False) -> Any:
    statement = _CLAIM_STATE.where(claim.c.pk == claim_pk)
    return conn.execute(statement.with_for_update() if lock else statement).first()


def deliver(delivery: Delivery) -> None:
    """The outbox handler of topic `claim-ai` (see the module docstring)."""
    payload = delivery.payload if isinstance(delivery.payload, dict) else {}
    claim_pk = payload.get("claim_pk")
    url = config.CLAIM_AI_URL or payload.get("url")
    if not isinstance(claim_pk, int) or not url:
        raise PermanentFailure("claim-ai row without claim_pk or adjudicator URL")
    with transaction(delivery.engine, write=False) as conn:
        state = _claim_state(conn, claim_pk)
        if state is None or state.id != delivery.subject:
            raise PermanentFailure(f"claim {delivery.subject} no longer exists")
        if not _waiting(state):
            log.info("claim %s is no longer waiting for the AI (status %s, review %s): not sent", state.id,
                     state.status, state.review_status)
            return
        resource = claim_for_ai(conn, state)
        sequences = _line_sequences(conn, claim_pk)
    try:
        answer = post(str(url), orjson.dumps(resource), {
            "Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
            "X-Request-Id": delivery.id, "Idempotency-Key": delivery.id, "User-Agent": "hifhir"},
            timeout=TIMEOUT_S)
    except HttpFailure as exc:
        raise RetryLater(f"adjudicator unreachable: {exc}") from None
    if not answer.ok:
        raise RetryLater(f"adjudicator answered HTTP {answer.status}: {answer.body[:200].decode('utf-8', 'replace')}")
    try:
        body = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        raise RetryLater("adjudicator answered something that is not JSON") from None
    rejected = rejected_sequences(body, state.id, set(sequences))
    apply_verdict(delivery.engine, claim_pk, {sequences[s] for s in rejected})


register(TOPIC, deliver)


# --- the Claim sent ---------------------------------------------------------------------------------------------


def _stored_claim(conn: Connection, claim_id: str, claim_pk: int) -> dict[str, Any]:
    """The latest stored version of the Claim (the submission as written); rendered from the rows for a claim that
    never went through POST."""
    body = conn.execute(select(rv.c.body).where(rv.c.res_type == "Claim", rv.c.res_id == claim_id,
                                                rv.c.body.is_not(None)).order_by(rv.c.version.desc()).limit(1)
                        ).scalar()
    if body is not None:
        return dict(orjson.loads(body))
    from hifhir.fhir.registry import KINDS

    kind = KINDS["claim"]
    return {"resourceType": "Claim", "id": claim_id, "meta": {"profile": [kind.profile]},
            **kind.render(conn, [claim_pk])[claim_pk]}


def _line_targets(conn: Connection, claim_pk: int) -> dict[str, list[int]]:
    parts = [select(literal_column(f"'{kind}'", String).label("kind"), t.c[fk].label("target_pk"))
             .where(t.c.claim_pk == claim_pk) for kind, (t, fk, _, _) in _LINE_TABLES.items()]
    out: dict[str, list[int]] = {kind: [] for kind in _LINE_TABLES}
    for r in conn.execute(union_all(*parts)):
        if r.target_pk not in out[r.kind]:
            out[r.kind].append(int(r.target_pk))
    return out


def claim_for_ai(conn: Connection, state: Any) -> dict[str, Any]:
    """The Claim with its Patient, Organization, Practitioner, Medications and ActivityDefinitions contained."""
    from hifhir.fhir.registry import KINDS

    resource = _stored_claim(conn, state.id, state.pk)
    wanted: list[tuple[str, str, list[int]]] = [("patient", "Patient", [state.insuree_pk]),
                                                ("health-facility", "Organization", [state.hf_pk])]
    if state.claim_admin_pk is not None:
        wanted.append(("claim-admin", "Practitioner", [state.claim_admin_pk]))
    targets = _line_targets(conn, state.pk)
    wanted += [(kind_name, rtype, targets[kind]) for kind, (_, _, kind_name, rtype) in _LINE_TABLES.items()
               if targets[kind]]
    contained: list[dict[str, Any]] = []
    local: dict[str, str] = {}  # "Type/id" → local id
    for kind_name, rtype, pks in wanted:
        kind = KINDS[kind_name]
        ids = dict(conn.execute(select(kind.table.c.pk, kind.table.c.id).where(kind.table.c.pk.in_(pks))).all())
        bodies = kind.render(conn, pks)
        for pk in pks:
            if pk not in bodies:
                continue
            local_id = ids[pk] if ids[pk] not in local.values() else f"{rtype}-{ids[pk]}"[:64]
            local[f"{rtype}/{ids[pk]}"] = local_id
            contained.append({"resourceType": rtype, "id": local_id, **bodies[pk]})
    sent = {k: v for k, v in resource.items() if k != "contained"}
    sent = _to_contained(sent, local)
    # contained goes after meta and before the elements, as FHIR JSON orders it
    head = {k: sent.pop(k) for k in ("resourceType", "id", "meta") if k in sent}
    return {**head, "contained": contained, **sent}


def _to_contained(value: Any, local: dict[str, str]) -> Any:
    """References to the contained resources rewritten to `#<local id>`."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref in local:
            return {**value, "reference": f"#{local[ref]}"}
        return {k: _to_contained(v, local) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_contained(v, local) for v in value]
    return value


# --- the answer -------------------------------------------------------------------------------------------------


def _code(concept: Any) -> str | None:
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict) and coding.get("code") is not None:
            return str(coding["code"])
    return None


def _is_rejection(adjudication: Any) -> bool:
    if not isinstance(adjudication, dict):
        return False
    category, reason = _code(adjudication.get("category")), _code(adjudication.get("reason"))
    return reason == str(REJECTED_BY_AI) or category == "1" or (category == AI_CATEGORY and reason == AI_REJECTED)


def _names_claim(request: Any, claim_id: str) -> bool:
    if not isinstance(request, dict):
        return True  # `request` is optional in R4; an answer without one is taken as the answer to what was sent
    ref = request.get("reference")
    if isinstance(ref, str):
        return ref == f"Claim/{claim_id}" or ref.endswith(f"/Claim/{claim_id}")
    ident = request.get("identifier")
    return not isinstance(ident, dict) or ident.get("value") == claim_id


def _the_response(body: Any, claim_id: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RetryLater("adjudicator answered something that is not a FHIR resource")
    if body.get("resourceType") == "Bundle":
        found = [e["resource"] for e in body.get("entry") or () if isinstance(e, dict)
                 and isinstance(e.get("resource"), dict) and e["resource"].get("resourceType") == "ClaimResponse"
                 and _names_claim(e["resource"].get("request"), claim_id)]
        if len(found) != 1:
            raise RetryLater(f"adjudicator's Bundle holds {len(found)} ClaimResponses for Claim/{claim_id}")
        return found[0]
    if body.get("resourceType") != "ClaimResponse":
        raise RetryLater(f"adjudicator answered a {str(body.get('resourceType'))[:40]}, not a ClaimResponse")
    if not _names_claim(body.get("request"), claim_id):
        raise RetryLater(f"adjudicator's ClaimResponse is about another claim, not Claim/{claim_id}")
    return body


def rejected_sequences(body: Any, claim_id: str, sequences: set[int]) -> set[int]:
    """The Claim.item.sequence numbers the adjudicator's answer rejects (RetryLater when it is no verdict)."""
    response = _the_response(body, claim_id)
    outcome = response.get("outcome")
    if outcome == "queued":
        raise RetryLater("adjudicator has not evaluated the claim yet (outcome queued)")
    if outcome == "error":
        raise RetryLater(f"adjudicator reports an error: {str(response.get('disposition') or '')[:200]}")
    items = response.get("item") or []
    if not isinstance(items, list):
        raise RetryLater("adjudicator's ClaimResponse.item is not a list")
    rejected: set[int] = set()
    for item in items:
        sequence = item.get("itemSequence") if isinstance(item, dict) else None
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            raise RetryLater("adjudicator's ClaimResponse has an item without an itemSequence")
        if sequence not in sequences:
            log.warning("claim %s: the adjudicator answers about item %d, which the claim does not have", claim_id,
                        sequence)
            continue
        adjudications = item.get("adjudication") or []
        if isinstance(adjudications, list) and any(_is_rejection(a) for a in adjudications):
            rejected.add(sequence)
    return rejected


# --- applying it ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _LineRef:
    kind: str
    pk: int


def _line_rows(conn: Connection, claim_pk: int) -> list[Any]:
    parts = [select(literal_column(f"'{kind}'", String).label("kind"), t.c.pk, t.c.sequence, t.c.status,
                    t.c.qty_provided, t.c.price_asked).where(t.c.claim_pk == claim_pk)
             for kind, (t, _, _, _) in _LINE_TABLES.items()]
    rows = conn.execute(union_all(*parts)).all()
    # Claim.item.sequence; lines loaded without one are numbered as the Claim shows them (claim.py _line_order)
    return sorted(rows, key=lambda r: (r.sequence is None, r.sequence or 0, r.kind != "item", r.pk))


def _line_sequences(conn: Connection, claim_pk: int) -> dict[int, _LineRef]:
    return {r.sequence or n: _LineRef(r.kind, int(r.pk))
            for n, r in enumerate(_line_rows(conn, claim_pk), start=1)}


def apply_verdict(engine: Engine, claim_pk: int, rejected: set[_LineRef], *, today: date | None = None) -> str:
    """Record the adjudicator's verdict on a waiting claim: 'review' (lines rejected, flagged for review),
    'processed', or 'ignored' (the claim was no longer waiting)."""
    from hifhir.domain.claims import valuation
    from hifhir.fhir.kind import WriteContext
    from hifhir.fhir.profiles.claim import RESPONSE_KIND

    with transaction(engine, write=True) as conn:
        state = _claim_state(conn, claim_pk, lock=True)
        if state is None or not _waiting(state):
            log.info("claim %s: the adjudicator's answer arrived when the claim no longer waited for it; ignored",
                     getattr(state, "id", claim_pk))
            return "ignored"
        ctx = WriteContext(conn, AI_USER)
        lines = _line_rows(conn, claim_pk)
        passed = [r for r in lines if r.status == LINE_PASSED]
        refused = [r for r in passed if _LineRef(r.kind, int(r.pk)) in rejected]
        if refused:
            for kind, (t, _, _, _) in _LINE_TABLES.items():
                pks = [int(r.pk) for r in refused if r.kind == kind]
                if pks:
                    conn.execute(update(t).where(t.c.pk.in_(pks)).values(
                        status=LINE_REJECTED, rejection_reason=REJECTED_BY_AI, qty_approved=0))
            gone = {(r.kind, r.pk) for r in refused}
            approved = sum((r.qty_provided * r.price_asked for r in passed if (r.kind, r.pk) not in gone), Decimal(0))
            conn.execute(update(claim).where(claim.c.pk == claim_pk).values(review_status=SELECTED,
                                                                            approved=approved))
            outcome = "review"
        else:
            valuation.process(conn, claim_pk, today=today or date.today(), now=ctx.now)
            outcome = "processed"
        ctx.mark(RESPONSE_KIND, claim_pk)
        ctx.flush()
    log.info("claim %s: adjudicated by the AI, %s (%d of %d lines rejected)", state.id, outcome, len(refused),
             len(passed))
    return outcome
