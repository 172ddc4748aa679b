"""Claim review by a medical officer (domain §3.4.1, right 111008): the review selection at submission
(HIFHIR_REVIEW_SELECTION), a selected claim waiting, and the review delivered as `PUT ClaimResponse/<id>` — the
ClaimResponse as read with the checked adjudications changed — on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from hifhir import config
from hifhir.auth.users import create_user
from hifhir.domain.claims import DELIVERED, IDLE, NOT_SELECTED, SELECTED
from hifhir.store.db import transaction
from hifhir.store.tables import claim, claim_item, claim_service, resource_version
from tests.builders_claim_fhir import item
from tests.builders_medical import assert_valid
from tests.builders_practitioner import enrolment_officer, officer_role
from tests.conftest import Api
from tests.http.test_claims import World, adjudications, answered, claim_of, claim_row, items_by_sequence, totals
from tests.http.test_claims import world as world  # the fixture, shared
from tests.http.test_feedback import communication
from tests.responses import created, refused

CS = "https://openimis.github.io/openimis_fhir_r4_ig/CodeSystem/"
REASON_CS = f"{CS}claim-rejection-reasons"


# --- helpers ----------------------------------------------------------------------------------------------------


def as_user(api: Api, app: Any, engine: Engine, username: str, role: str) -> Api:
    with transaction(engine, write=True) as conn:
        create_user(conn, username, "", roles=[role], password_hash="not-a-login")
    return Api(api.client, app.tokens.issue(username)[0])


@pytest.fixture
def medical_officer(api: Api, app: Any, engine: Engine) -> Api:
    """A user with the openIMIS Medical Officer role: 111001, 111008 (review), 111009, 111010, 111011."""
    return as_user(api, app, engine, "MEDOFF", "Medical Officer")


@pytest.fixture
def selecting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every checked claim is selected for review."""
    monkeypatch.setattr(config, "REVIEW_SELECTION", "all:0")


def pending(api: Api, world: World, code: str = "R0001", **kw: Any) -> dict[str, Any]:
    """A claim (a consultation at 40 and two aspirins at 10) selected for review: its ClaimResponse as answered."""
    body = answered(api.post("Claim", claim_of(world, code, **kw)))
    assert body["outcome"] == "partial", body
    return body


def line_index(body: dict[str, Any], sequence: int) -> int:
    return next(i for i, it in enumerate(body["item"]) if it["itemSequence"] == sequence)


def checked(body: dict[str, Any], sequence: int) -> dict[str, Any]:
    """The checked adjudication (category 4) of the line with that itemSequence."""
    line = body["item"][line_index(body, sequence)]
    return next(a for a in line["adjudication"] if a["category"]["coding"][0]["code"] == "4")


def reject(body: dict[str, Any], sequence: int) -> None:
    checked(body, sequence)["reason"] = {"coding": [{"system": REASON_CS, "code": "-1",
                                                     "display": "REJECTED BY MEDICAL OFFICER"}]}


def reviewed(body: dict[str, Any], change: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The ClaimResponse as read (without meta, as a client would send it back), changed by `change`."""
    out = {k: copy.deepcopy(v) for k, v in body.items() if k != "meta"}
    if change is not None:
        change(out)
    return out


def put(user: Api, body: dict[str, Any], **headers: str) -> Any:
    return user.put(f"ClaimResponse/{body['id']}", body, headers=headers or None)


def snapshot(engine: Engine, claim_id: str) -> tuple[Any, ...]:
    """What a refused review must leave as it was: the claim row, its lines, the ClaimResponse's versions."""
    with transaction(engine, write=False) as conn:
        row = conn.execute(select(claim).where(claim.c.id == claim_id)).one()
        lines = [tuple(r) for t in (claim_item, claim_service)
                 for r in conn.execute(select(t).where(t.c.claim_pk == row.pk).order_by(t.c.pk))]
        versions = conn.execute(select(func.count()).select_from(resource_version).where(
            resource_version.c.res_type == "ClaimResponse", resource_version.c.res_id == claim_id)).scalar_one()
    return tuple(row), lines, versions


def lines_of(engine: Engine, claim_id: str) -> dict[str, Any]:
    """The claim's line rows by kind: {"item": aspirin row, "service": consultation row}."""
    with transaction(engine, write=False) as conn:
        pk = conn.execute(select(claim.c.pk).where(claim.c.id == claim_id)).scalar_one()
        return {"item": conn.execute(select(claim_item).where(claim_item.c.claim_pk == pk)).one(),
                "service": conn.execute(select(claim_service).where(claim_service.c.claim_pk == pk)).one()}


# --- selection ----------------------------------------------------------------------------------------------------


def test_review_selection_is_off_by_default_and_the_claim_is_valuated_at_once(api, engine, world):
    assert config.REVIEW_SELECTION == "off"
    body = answered(api.post("Claim", claim_of(world)))
    assert body["outcome"] == "complete"
    row = claim_row(engine, body["id"])
    assert (row.status, row.review_status) == (16, IDLE)


def test_all_selects_every_checked_claim_which_then_waits_for_its_review(api, engine, world, selecting):
    body = pending(api, world)
    assert totals(body) == {"2": 60, "4": 60}  # entered and checked: neither processed nor valuated
    assert adjudications(items_by_sequence(body)[2]) == [("2", "0", 10, 2), ("4", "0", 10, 2)]
    row = claim_row(engine, body["id"])
    assert (row.status, row.review_status, row.feedback_status, row.process_stamp) == (4, SELECTED, IDLE, None)


def test_a_claim_below_the_minimum_claimed_is_not_selected(api, engine, world, monkeypatch):
    monkeypatch.setattr(config, "REVIEW_SELECTION", "all:60.01")
    body = answered(api.post("Claim", claim_of(world)))  # claims 60
    assert body["outcome"] == "complete"
    row = claim_row(engine, body["id"])
    assert (row.status, row.review_status) == (16, NOT_SELECTED)


def test_a_rejected_claim_goes_through_no_selection(api, engine, world, selecting):
    body = answered(api.post("Claim", claim_of(world, lines=[item(f"Medication/{world.bandage}")])))  # no product
    row = claim_row(engine, body["id"])
    assert (row.status, row.review_status) == (1, IDLE)


# --- delivering a review --------------------------------------------------------------------------------------------


def test_a_review_rejects_one_line_reduces_another_and_the_claim_is_valuated(
        api, engine, world, selecting, medical_officer):
    body = pending(api, world)

    def change(review: dict[str, Any]) -> None:
        reject(review, 1)  # the consultation
        checked(review, 2)["value"] = 1  # one aspirin of the two
        review["processNote"] = [{"text": "One aspirin was enough; no consultation took place"}]

    resp = put(medical_officer, reviewed(body, change))

    out = answered(resp)
    assert (out["meta"]["versionId"], resp.headers["ETag"]) == ("2", 'W/"2"')
    assert out["outcome"] == "complete"
    lines = items_by_sequence(out)
    assert adjudications(lines[1]) == [("1", "-1", 40, 1)]
    assert lines[1]["adjudication"][0]["reason"]["coding"][0]["display"] == "REJECTED BY MEDICAL OFFICER"
    assert adjudications(lines[2]) == [("2", "0", 10, 2), ("4", "0", 10, 1), ("8", "0", 10, 1), ("16", "0", 10, 1)]
    assert totals(out) == {"2": 60, "4": 10, "8": 10, "16": 10}
    assert out["processNote"] == [{"text": "One aspirin was enough; no consultation took place"}]
    row = claim_row(engine, body["id"])
    assert (row.status, row.review_status, row.approved, row.valuated, row.remunerated) == (
        16, DELIVERED, Decimal(10), Decimal(10), Decimal(10))
    assert row.adjustment == "One aspirin was enough; no consultation took place"
    rows = lines_of(engine, body["id"])
    assert (rows["service"].status, rows["service"].rejection_reason, rows["service"].qty_approved) == (
        2, -1, Decimal(0))
    assert (rows["item"].status, rows["item"].qty_approved, rows["item"].price_valuated) == (
        1, Decimal(1), Decimal(10))
    assert api.get(f"ClaimResponse/{body['id']}").json() == out
    assert api.get(f"Claim/{body['id']}").json()["meta"]["versionId"] == "1"  # the submission never changes


def test_a_review_approves_a_lower_unit_price(api, engine, world, selecting, medical_officer):
    body = pending(api, world)

    def change(review: dict[str, Any]) -> None:
        checked(review, 2)["amount"]["value"] = 7.5

    out = answered(put(medical_officer, reviewed(body, change)))

    assert adjudications(items_by_sequence(out)[2]) == [
        ("2", "0", 10, 2), ("4", "0", 7.5, 2), ("8", "0", 7.5, 2), ("16", "0", 15, 2)]
    assert totals(out) == {"2": 60, "4": 55, "8": 55, "16": 55}
    row = lines_of(engine, body["id"])["item"]
    assert (row.price_approved, row.price_adjusted, row.qty_approved) == (Decimal("7.5"), Decimal("7.5"), None)
    assert claim_row(engine, body["id"]).approved == Decimal(55)


def test_a_review_changing_nothing_approves_the_claim_as_claimed(api, engine, world, selecting, medical_officer):
    body = pending(api, world)
    out = answered(put(medical_officer, reviewed(body)))
    assert out["outcome"] == "complete" and totals(out)["16"] == 60 and "processNote" not in out
    row = claim_row(engine, body["id"])
    assert (row.status, row.review_status, row.adjustment) == (16, DELIVERED, None)


def test_a_review_rejecting_every_line_rejects_the_claim(api, engine, world, selecting, medical_officer):
    body = pending(api, world)

    def change(review: dict[str, Any]) -> None:
        reject(review, 1)
        reject(review, 2)

    out = answered(put(medical_officer, reviewed(body, change)))

    assert out["outcome"] == "complete"
    assert [adjudications(line) for line in out["item"]] == [[("1", "-1", 40, 1)], [("1", "-1", 10, 2)]]
    assert totals(out) == {"2": 60, "1": 60}
    row = claim_row(engine, body["id"])
    assert (row.status, row.rejection_reason, row.review_status, row.approved, row.process_stamp) == (
        1, -1, DELIVERED, Decimal(0), None)


def test_a_line_the_checks_rejected_is_not_reviewable(api, engine, world, selecting, medical_officer):
    body = pending(api, world, lines=[item(f"Medication/{world.aspirin}", 2), item(f"Medication/{world.bandage}")])
    assert adjudications(items_by_sequence(body)[2]) == [("1", "3", 10, 1)]  # no product covers the bandage
    before = snapshot(engine, body["id"])

    def change(review: dict[str, Any]) -> None:
        review["item"][line_index(review, 2)]["adjudication"][0]["reason"]["coding"][0]["code"] = "-1"

    refused(put(medical_officer, reviewed(body, change)), 422,
            expression="ClaimResponse.item[1].adjudication[0].reason.coding[0].code")
    assert snapshot(engine, body["id"]) == before

    out = answered(put(medical_officer, reviewed(body, lambda r: reject(r, 1))))  # the last line that passed

    assert [adjudications(line) for line in out["item"]] == [[("1", "-1", 10, 2)], [("1", "3", 10, 1)]]
    row = claim_row(engine, body["id"])
    assert (row.status, row.rejection_reason) == (1, 1)  # the lines' reasons differ: "every line rejected"


def test_a_review_keeps_the_if_match_version(api, engine, world, selecting, medical_officer):
    body = pending(api, world)
    before = snapshot(engine, body["id"])
    refused(put(medical_officer, reviewed(body), **{"If-Match": 'W/"2"'}), 412)
    assert snapshot(engine, body["id"]) == before
    assert answered(put(medical_officer, reviewed(body), **{"If-Match": 'W/"1"'}))["meta"]["versionId"] == "2"


def test_a_review_needs_the_review_right(api, app, engine, world, selecting):
    body = pending(api, world)
    before = snapshot(engine, body["id"])
    claim_admin = as_user(api, app, engine, "CLAIMADM", "Claim Administrator")  # 111001, 111002… no 111008
    refused(put(claim_admin, reviewed(body, lambda r: reject(r, 1))), 403)
    clerk = as_user(api, app, engine, "CLERK2", "Clerk")
    refused(put(clerk, reviewed(body, lambda r: reject(r, 1))), 403)
    assert snapshot(engine, body["id"]) == before


def _set_patient(r: dict[str, Any]) -> None:
    r["patient"] = {"reference": "Patient/someone-else"}


def _drop_line(r: dict[str, Any]) -> None:
    r["item"].pop()


def _add_line(r: dict[str, Any]) -> None:
    r["item"].append(copy.deepcopy(r["item"][0]) | {"itemSequence": 3})


def _change_total(r: dict[str, Any]) -> None:
    r["total"][1]["amount"]["value"] = 1


def _change_entered(r: dict[str, Any]) -> None:
    r["item"][line_index(r, 2)]["adjudication"][0]["value"] = 1


def _other_reason(r: dict[str, Any]) -> None:
    checked(r, 2)["reason"]["coding"][0]["code"] = "5"


def _reason_text(r: dict[str, Any]) -> None:
    reject(r, 2)
    checked(r, 2)["reason"]["text"] = "not needed"


def _wrong_display(r: dict[str, Any]) -> None:
    checked(r, 2)["reason"]["coding"][0]["code"] = "-1"  # the display still says ACCEPTED


def _more_than_provided(r: dict[str, Any]) -> None:
    checked(r, 2)["value"] = 3


def _nothing_approved(r: dict[str, Any]) -> None:
    checked(r, 2)["value"] = 0


def _more_than_asked(r: dict[str, Any]) -> None:
    checked(r, 2)["amount"]["value"] = 11


def _other_currency(r: dict[str, Any]) -> None:
    checked(r, 2)["amount"]["currency"] = "USD"


def _other_claim(r: dict[str, Any]) -> None:
    r["request"] = {"reference": "Claim/another-claim"}


def _other_reference(r: dict[str, Any]) -> None:
    r["item"][line_index(r, 2)]["extension"][0]["valueReference"]["reference"] = "Medication/other"


def _unknown_sequence(r: dict[str, Any]) -> None:
    r["item"][line_index(r, 2)]["itemSequence"] = 9


@pytest.mark.parametrize("change, expression", [
    (_set_patient, "ClaimResponse.patient.reference"),
    (_drop_line, "ClaimResponse.item"),
    (_add_line, "ClaimResponse.item"),
    (_change_total, "ClaimResponse.total[1].amount.value"),
    (_change_entered, "ClaimResponse.item[1].adjudication[0].value"),
    (_other_reason, "ClaimResponse.item[1].adjudication[1].reason.coding[0].code"),
    (_reason_text, "ClaimResponse.item[1].adjudication[1].reason.text"),
    (_wrong_display, "ClaimResponse.item[1].adjudication[1].reason.coding[0].display"),
    (_more_than_provided, "ClaimResponse.item[1].adjudication[1].value"),
    (_nothing_approved, "ClaimResponse.item[1].adjudication[1].value"),
    (_more_than_asked, "ClaimResponse.item[1].adjudication[1].amount.value"),
    (_other_currency, "ClaimResponse.item[1].adjudication[1].amount.currency"),
    (_other_claim, "ClaimResponse.request.reference"),
    (_other_reference, "ClaimResponse.item[1].extension[0].valueReference.reference"),
    (_unknown_sequence, "ClaimResponse.item[1].itemSequence"),
], ids=lambda v: getattr(v, "__name__", "")[1:] if callable(v) else "")
def test_a_review_changing_what_is_not_reviewable_is_a_422_that_writes_nothing(
        api, engine, world, selecting, medical_officer, change, expression):
    body = pending(api, world)
    assert line_index(body, 2) == 1  # the aspirins are item[1]
    before = snapshot(engine, body["id"])
    refused(put(medical_officer, reviewed(body, change)), 422, expression=expression)
    assert snapshot(engine, body["id"]) == before


def test_a_claim_not_awaiting_a_review_refuses_one_with_409(api, engine, world, selecting, medical_officer,
                                                             monkeypatch):
    body = pending(api, world)
    answered(put(medical_officer, reviewed(body)))
    again = api.get(f"ClaimResponse/{body['id']}").json()
    before = snapshot(engine, body["id"])
    refused(put(medical_officer, reviewed(again)), 409, text="reviewed already")
    monkeypatch.setattr(config, "REVIEW_SELECTION", "off")
    valuated = answered(api.post("Claim", claim_of(world, "R0002")))
    refused(put(medical_officer, reviewed(valuated)), 409, text="not selected for review")
    assert snapshot(engine, body["id"]) == before
    assert claim_row(engine, valuated["id"]).review_status == IDLE


def test_a_claim_response_is_still_never_created_or_deleted(api, world, selecting, medical_officer):
    body = pending(api, world)
    refused(api.post("ClaimResponse", reviewed(body)), 405)
    refused(medical_officer.post("ClaimResponse", reviewed(body)), 405)
    refused(api.put("ClaimResponse/no-such-claim", reviewed(body) | {"id": "no-such-claim"}), 405)
    refused(api.delete(f"ClaimResponse/{body['id']}"), 405)
    cs = api.get("metadata").json()
    interactions = {i["code"] for r in cs["rest"][0]["resource"] if r["type"] == "ClaimResponse"
                    for i in r["interaction"]}
    assert "update" in interactions and not {"create", "delete"} & interactions


# --- review and feedback ------------------------------------------------------------------------------------------


@pytest.fixture
def officer(api: Api, world: World) -> str:
    """The enrolment officer of the insuree's village, with a phone: whom feedback prompts go to."""
    eo = created(api.post("Practitioner", enrolment_officer("EO001", phone="+255700000001")))["id"]
    created(api.post("PractitionerRole", officer_role("EOR001", eo, [world.places.village])))
    return eo


def test_a_claim_selected_for_review_and_feedback_is_processed_by_the_feedback_after_the_review(
        api, engine, world, selecting, medical_officer, officer, monkeypatch):
    monkeypatch.setattr(config, "FEEDBACK_SELECTION", "all:0")
    body = pending(api, world)
    row = claim_row(engine, body["id"])
    assert (row.review_status, row.feedback_status) == (SELECTED, SELECTED)

    out = answered(put(medical_officer, reviewed(body, lambda r: reject(r, 1))))

    assert out["outcome"] == "partial" and totals(out) == {"2": 60, "4": 20}  # reviewed, still waiting
    assert out["communicationRequest"] == [{"reference": f"CommunicationRequest/{body['id']}"}]
    row = claim_row(engine, body["id"])
    assert (row.status, row.review_status, row.feedback_status) == (4, DELIVERED, SELECTED)

    answers = medical_officer.post("Communication", communication(body["id"], world.patient["id"]))
    assert answers.status_code == 201, answers.text

    after = assert_valid(api.get(f"ClaimResponse/{body['id']}").json())
    assert (after["outcome"], after["meta"]["versionId"]) == ("complete", "3")
    assert totals(after) == {"2": 60, "4": 20, "8": 20, "16": 20}
    row = claim_row(engine, body["id"])
    assert (row.status, row.review_status, row.feedback_status) == (16, DELIVERED, DELIVERED)


def test_a_feedback_before_the_review_leaves_the_claim_to_the_review(
        api, engine, world, selecting, medical_officer, officer, monkeypatch):
    monkeypatch.setattr(config, "FEEDBACK_SELECTION", "all:0")
    body = pending(api, world)

    answers = medical_officer.post("Communication", communication(body["id"], world.patient["id"]))
    assert answers.status_code == 201, answers.text
    waiting = api.get(f"ClaimResponse/{body['id']}").json()
    assert waiting["outcome"] == "partial"  # the feedback alone does not process it
    row = claim_row(engine, body["id"])
    assert (row.status, row.review_status, row.feedback_status) == (4, SELECTED, DELIVERED)

    out = answered(put(medical_officer, reviewed(waiting)))

    assert out["outcome"] == "complete" and totals(out)["16"] == 60
    row = claim_row(engine, body["id"])
    assert (row.status, row.review_status, row.feedback_status) == (16, DELIVERED, DELIVERED)

