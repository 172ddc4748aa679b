"""Claim feedback (domain §3.4.1 selection, §3.5; IG rows 20–21): selection of checked claims for feedback, the
prompt read as a CommunicationRequest, and the answers posted as a Communication — on SQLite and PostgreSQL.

Claims are entered in SQL (tests/builders_claims.entered_claim) and checked by `checks.submit`; the selection runs
through `select_claim_for_feedback` in a write context, as POST Claim will run it.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from hifhir import config
from hifhir.auth.users import create_user
from hifhir.domain.claims import BYPASSED, DELIVERED, IDLE, NOT_SELECTED, SELECTED
from hifhir.domain.claims.checks import submit
from hifhir.domain.claims.feedback import OFF, SelectionRule, parse_rule
from hifhir.fhir.kind import WriteContext
from hifhir.fhir.profiles.communication import feedback_status_changed, select_claim_for_feedback
from hifhir.store.db import transaction
from hifhir.store.tables import (
    CLAIM_CHECKED,
    CLAIM_VALUATED,
    claim,
    feedback,
    feedback_prompt,
    officer,
    officer_role,
    resource_version,
)
from tests.builders import group
from tests.builders import patient as patient_resource
from tests.builders_claims import Line, entered_claim, price_lists
from tests.builders_eligibility import Places, insert_policy, new_insuree, new_product, new_service, places
from tests.builders_medical import assert_valid
from tests.builders_practitioner import enrolment_officer
from tests.builders_practitioner import officer_role as officer_role_resource
from tests.conftest import Api, load_example
from tests.responses import created, refused

TODAY = date.today()
NOW = 1_760_000_000_000_000  # µs
PHONE = "+220 123 4567"
IG_REQUEST = load_example("CommunicationRequest-Claim001CommunicationRequest")
IG_COMMUNICATION = load_example("Communication-Claim001Communication")


# --- the world ------------------------------------------------------------------------------------------------


@dataclass
class World:
    api: Api
    engine: Engine
    places: Places
    patient: str  # Patient 100000001, head of a family living in the village, with an active policy
    officer: str  # enrolment officer E00001 (Practitioner id), serving the village, with a phone
    days: Iterator[date]  # a fresh treatment day per claim, so that no claim duplicates another (reason 6)


@pytest.fixture
def world(api: Api, engine: Engine) -> World:
    p = places(api)
    officer_id = created(api.post("Practitioner", enrolment_officer("E00001", phone=PHONE)))["id"]
    created(api.post("PractitionerRole", officer_role_resource("EOR001", officer_id, [p.village])))
    consult = new_service(api, "A1", "C")
    product = new_product(api, "BASIC", p.region, services={consult: {}})
    patient = created(api.post("Patient", patient_resource("100000001", "Doe", "John", p.village, head=True)))
    created(api.post("Group", group("100000001", [patient["id"]], p.village)))
    insert_policy(engine, product["id"], [patient["id"]])
    price_lists(engine, p.facility, services={"A1": None})
    return World(api, engine, p, patient["id"], officer_id, (TODAY - timedelta(days=n) for n in itertools.count(1)))


def insured_family_head(w: World, chf_id: str) -> str:
    """Another insuree of the village, head of their own family, covered by the product; returns the Patient id."""
    api = w.api
    patient = created(api.post("Patient", patient_resource(chf_id, "Roe", "Jane", w.places.village, head=True)))
    created(api.post("Group", group(chf_id, [patient["id"]], w.places.village)))
    product = api.get("InsurancePlan?identifier=BASIC").json()["entry"][0]["resource"]["id"]
    insert_policy(w.engine, product, [patient["id"]])
    return str(patient["id"])


def checked_claim(w: World, price: Any = 40, *, icd: str = "A00", patient: str | None = None) -> int:
    """A claim of one consultation at `price` (= its Claimed), checked (status 4); returns its pk."""
    pk = entered_claim(w.engine, w.places.facility, patient or w.patient, date_from=next(w.days), icd=icd,
                       services=[Line("A1", 1, price)])
    with transaction(w.engine, write=True) as conn:
        assert submit(conn, pk, today=TODAY, now=NOW) == CLAIM_CHECKED
    return pk


def processed_claim(w: World, claimed: Any, *, icd: str = "A00", processed: date = TODAY) -> None:
    """An earlier claim of the scheme, valuated on `processed`: the history the variance rule averages."""
    pk = entered_claim(w.engine, w.places.facility, w.patient, date_from=next(w.days), icd=icd,
                       services=[Line("A1", 1, claimed)])
    with transaction(w.engine, write=True) as conn:
        conn.execute(update(claim).where(claim.c.pk == pk).values(status=CLAIM_VALUATED, date_processed=processed))


def run_selection(w: World, pk: int, rule: str | SelectionRule | None) -> bool:
    """The selection as POST Claim runs it: in a write, the new CommunicationRequest versioned by the flush.
    None = the configured rule (HIFHIR_FEEDBACK_SELECTION)."""
    with transaction(w.engine, write=True) as conn:
        ctx = WriteContext(conn, "test")
        chosen = select_claim_for_feedback(ctx, pk, today=TODAY,
                                           rule=parse_rule(rule) if isinstance(rule, str) else rule)
        ctx.flush()
    return chosen


def selected_claim(w: World, **kw: Any) -> str:
    """A checked claim selected for feedback; returns its id (= its CommunicationRequest's id)."""
    pk = checked_claim(w, **kw)
    assert run_selection(w, pk, "all:0")
    return claim_row(w, pk).id


def claim_row(w: World, pk: int) -> Any:
    with transaction(w.engine, write=False) as conn:
        return conn.execute(select(claim).where(claim.c.pk == pk)).one()


def claim_by_id(w: World, claim_id: str) -> Any:
    with transaction(w.engine, write=False) as conn:
        return conn.execute(select(claim).where(claim.c.id == claim_id)).one()


def prompts(w: World) -> list[Any]:
    with transaction(w.engine, write=False) as conn:
        return list(conn.execute(select(feedback_prompt).order_by(feedback_prompt.c.pk)))


def feedback_rows(w: World) -> list[Any]:
    with transaction(w.engine, write=False) as conn:
        return list(conn.execute(select(feedback).order_by(feedback.c.pk)))


def communication(claim_id: str, patient_id: str, answers: tuple[str, ...] = ("yes", "no", "yes", "yes", "4"),
                  ) -> dict[str, Any]:
    """The IG's example Communication (answers yes/no/yes/yes/4) about a claim of ours."""
    res = copy.deepcopy(IG_COMMUNICATION)
    del res["id"]
    res["subject"] = {"reference": f"Patient/{patient_id}"}
    res["about"] = [{"reference": f"Claim/{claim_id}"}]
    for payload, answer in zip(res["payload"], answers, strict=True):
        payload["contentString"] = answer
    return res


def payload_answers(body: dict[str, Any]) -> dict[str, str]:
    return {p["extension"][0]["valueCodeableConcept"]["coding"][0]["code"]: p["contentString"]
            for p in body["payload"]}


def as_user(w: World, app: Any, username: str, role: str) -> Api:
    with transaction(w.engine, write=True) as conn:
        create_user(conn, username, "", roles=[role], password_hash="not-a-login")
    return Api(w.api.client, app.tokens.issue(username)[0])


def search_ids(api: Api, query: str) -> set[str]:
    resp = api.get(query)
    assert resp.status_code == 200, resp.text
    return {e["resource"]["id"] for e in resp.json().get("entry", [])}


# --- the selection rule setting ------------------------------------------------------------------------------------


def test_selection_rules_parse_and_bad_ones_are_refused():
    assert parse_rule("off") == OFF
    assert parse_rule("all:100.50") == SelectionRule("all", min_claimed=Decimal("100.50"))
    assert parse_rule("random:25") == SelectionRule("random", percent=Decimal(25))
    assert parse_rule("variance:20") == SelectionRule("variance", percent=Decimal(20))
    assert parse_rule(" Variance:20:500 ") == SelectionRule("variance", percent=Decimal(20),
                                                            min_claimed=Decimal(500))
    for bad in ("", "on", "all", "all:x", "all:-1", "random:101", "random:5:5", "variance:", "off:1", "all:nan"):
        with pytest.raises(ValueError):
            parse_rule(bad)


# --- selection ---------------------------------------------------------------------------------------------------


def test_off_leaves_the_claim_idle_and_writes_nothing(world):
    pk = checked_claim(world)
    assert run_selection(world, pk, "off") is False
    assert claim_row(world, pk).feedback_status == IDLE
    assert prompts(world) == []


def test_the_configured_rule_is_off_by_default_and_drives_the_selection(world, monkeypatch):
    assert config.FEEDBACK_SELECTION == "off"
    pk = checked_claim(world)
    assert run_selection(world, pk, None) is False
    assert claim_row(world, pk).feedback_status == IDLE
    monkeypatch.setattr(config, "FEEDBACK_SELECTION", "all:0")
    pk = checked_claim(world)
    assert run_selection(world, pk, None) is True
    assert claim_row(world, pk).feedback_status == SELECTED


def test_all_selects_claims_claiming_at_least_the_value(world):
    at, below = checked_claim(world, 40), checked_claim(world, "39.99")
    assert run_selection(world, at, "all:40") is True
    assert run_selection(world, below, "all:40") is False
    assert claim_row(world, at).feedback_status == SELECTED
    assert claim_row(world, below).feedback_status == NOT_SELECTED
    prompt, = prompts(world)
    row = claim_row(world, at)
    assert (prompt.id, prompt.claim_pk, prompt.prompt_date, prompt.phone, prompt.sms_status, prompt.version_id) == \
        (row.id, at, TODAY, PHONE, 0, 1)


def test_random_0_percent_never_selects_and_100_percent_always_does(world):
    never = [checked_claim(world) for _ in range(3)]
    always = [checked_claim(world) for _ in range(3)]
    assert [run_selection(world, pk, "random:0") for pk in never] == [False] * 3
    assert [run_selection(world, pk, "random:100") for pk in always] == [True] * 3
    assert {claim_row(world, pk).feedback_status for pk in never} == {NOT_SELECTED}
    assert {claim_row(world, pk).feedback_status for pk in always} == {SELECTED}


def test_variance_compares_with_the_average_claimed_of_the_same_diagnosis(world):
    # A00 history: 20 and 40 processed this year (average 30); older claims and other diagnoses do not count.
    processed_claim(world, 20)
    processed_claim(world, 40, processed=TODAY - timedelta(days=300))
    processed_claim(world, 1000, processed=TODAY - timedelta(days=400))
    processed_claim(world, 1000, icd="B00")
    above, below = checked_claim(world, 36), checked_claim(world, "35.99")  # 30 × (1 + 20 %) = 36
    unknown = checked_claim(world, 1000, icd="A01")  # no A01 history: no average to exceed
    assert run_selection(world, above, "variance:20") is True
    assert run_selection(world, below, "variance:20") is False
    assert run_selection(world, unknown, "variance:20") is False
    assert [claim_row(world, pk).feedback_status for pk in (above, below, unknown)] == \
        [SELECTED, NOT_SELECTED, NOT_SELECTED]


def test_variance_also_needs_the_minimum_claimed(world):
    processed_claim(world, 10)
    small = checked_claim(world, 30)
    assert run_selection(world, small, "variance:0:50") is False
    assert claim_row(world, small).feedback_status == NOT_SELECTED


def test_no_enrolment_officer_with_a_phone_means_not_selected(world):
    with transaction(world.engine, write=True) as conn:
        conn.execute(update(officer).values(phone=None))
    pk = checked_claim(world)
    assert run_selection(world, pk, "all:0") is False
    assert claim_row(world, pk).feedback_status == NOT_SELECTED
    assert prompts(world) == []


def test_the_role_phone_serves_when_the_officer_has_none(world):
    with transaction(world.engine, write=True) as conn:
        conn.execute(update(officer).values(phone=None))
        conn.execute(update(officer_role).values(phone="+220 765 4321"))
    pk = checked_claim(world)
    assert run_selection(world, pk, "all:0") is True
    assert prompts(world)[0].phone == "+220 765 4321"


def test_an_officer_of_another_village_or_whose_role_ended_is_not_prompted(world):
    api = world.api
    with transaction(world.engine, write=True) as conn:
        conn.execute(update(officer_role).values(works_to=TODAY - timedelta(days=1)))
    other = created(api.post("Practitioner", enrolment_officer("E00002", phone=PHONE)))["id"]
    created(api.post("PractitionerRole", officer_role_resource("EOR002", other, [world.places.village])))
    pk = checked_claim(world)
    assert run_selection(world, pk, "all:0") is True
    with transaction(world.engine, write=False) as conn:
        prompted = conn.execute(select(officer.c.code).where(officer.c.pk == prompts(world)[0].officer_pk)).scalar()
    assert prompted == "E00002"


def test_selection_refuses_a_claim_not_checked_or_already_selected(world):
    entered = entered_claim(world.engine, world.places.facility, world.patient, date_from=next(world.days),
                            services=[Line("A1", 1, 40)])
    with pytest.raises(ValueError, match="not a checked claim"):
        run_selection(world, entered, "all:0")
    pk = checked_claim(world)
    assert run_selection(world, pk, "all:0")
    with pytest.raises(ValueError, match="already"):
        run_selection(world, pk, "all:0")


# --- CommunicationRequest ------------------------------------------------------------------------------------------


def test_the_prompt_reads_as_the_igs_communication_request(world):
    claim_id = selected_claim(world)
    resp = world.api.get(f"CommunicationRequest/{claim_id}")
    assert resp.status_code == 200, resp.text
    body = assert_valid(resp.json())
    assert body["meta"]["versionId"] == "1"
    assert (body["status"], body["statusReason"]) == ("active", IG_REQUEST["statusReason"])
    assert body["subject"] == {"reference": f"Patient/{world.patient}"}
    assert body["about"] == [{"reference": f"Claim/{claim_id}"}]
    assert body["recipient"] == [{"reference": f"Practitioner/{world.officer}"}]  # the EO, as the IG says
    assert body["payload"] == IG_REQUEST["payload"]
    assert "identifier" not in body


def test_communication_requests_are_searchable(world):
    api = world.api
    claim_id = selected_claim(world)
    other = insured_family_head(world, "100000002")
    other_claim = selected_claim(world, patient=other)
    both = {claim_id, other_claim}
    assert search_ids(api, "CommunicationRequest") == both
    assert search_ids(api, f"CommunicationRequest?about=Claim/{claim_id}") == {claim_id}
    assert search_ids(api, f"CommunicationRequest?patient={world.patient}") == {claim_id}
    assert search_ids(api, f"CommunicationRequest?subject=Patient/{other}") == {other_claim}
    assert search_ids(api, f"CommunicationRequest?recipient=Practitioner/{world.officer}") == both
    assert search_ids(api, "CommunicationRequest?status=active") == both
    assert search_ids(api, "CommunicationRequest?status=completed") == set()
    assert search_ids(api, f"CommunicationRequest?_id={other_claim}") == {other_claim}
    assert search_ids(api, "CommunicationRequest?_lastUpdated=gt2000-01-01") == both
    included = api.get(f"CommunicationRequest?_id={claim_id}&_include=CommunicationRequest:patient").json()
    assert {e["resource"]["id"] for e in included["entry"] if e["search"]["mode"] == "include"} == {world.patient}




def test_communication_requests_cannot_be_created_changed_or_deleted(world):
    api = world.api
    claim_id = selected_claim(world)
    body = copy.deepcopy(IG_REQUEST)
    body["id"] = claim_id
    refused(api.post("CommunicationRequest", body), 405)
    refused(api.put(f"CommunicationRequest/{claim_id}", body), 405)
    refused(api.delete(f"CommunicationRequest/{claim_id}"), 405)
    assert api.get(f"CommunicationRequest/{claim_id}").json()["meta"]["versionId"] == "1"


def test_processing_bypasses_the_feedback_and_revokes_the_request(world):
    from hifhir.domain.claims.valuation import process

    claim_id = selected_claim(world)
    pk = claim_by_id(world, claim_id).pk
    with transaction(world.engine, write=True) as conn:
        process(conn, pk, today=TODAY, now=NOW)
        ctx = WriteContext(conn, "test")
        feedback_status_changed(ctx, [pk])
        ctx.flush()
    assert claim_by_id(world, claim_id).feedback_status == BYPASSED
    body = assert_valid(world.api.get(f"CommunicationRequest/{claim_id}").json())
    assert (body["status"], body["statusReason"]["coding"][0]["code"], body["meta"]["versionId"]) == \
        ("revoked", "16", "2")
    resp = world.api.post("Communication", communication(claim_id, world.patient))
    refused(resp, 422, expression="Communication.about[0]", text="bypassed")
    assert feedback_rows(world) == []


# --- Communication -------------------------------------------------------------------------------------------------


def test_posting_the_feedback_records_it_and_completes_the_request(world):
    api = world.api
    claim_id = selected_claim(world)
    resp = api.post("Communication", communication(claim_id, world.patient))
    body = assert_valid(created(resp))
    assert resp.headers["Location"].startswith(f"http://testserver/fhir/Communication/{body['id']}/_history/1")
    assert body["status"] == "completed"
    assert (body["subject"], body["about"]) == ({"reference": f"Patient/{world.patient}"},
                                                [{"reference": f"Claim/{claim_id}"}])
    assert payload_answers(body) == {"CareRendered": "yes", "PaymentAsked": "no", "DrugPrescribed": "yes",
                                     "DrugReceived": "yes", "Asessment": "4"}
    row = claim_by_id(world, claim_id)
    assert (row.feedback_status, row.feedback_available) == (DELIVERED, True)
    fb, = feedback_rows(world)
    assert (fb.id, fb.claim_pk, fb.care_rendered, fb.payment_asked, fb.drug_prescribed, fb.drug_received,
            fb.assessment, fb.feedback_date) == (body["id"], row.pk, True, False, True, True, 4, TODAY)
    assert fb.officer_pk == prompts(world)[0].officer_pk  # the officer prompted collected it
    assert api.get(f"Communication/{body['id']}").json() == body
    request = assert_valid(api.get(f"CommunicationRequest/{claim_id}").json())
    assert (request["status"], request["statusReason"]["coding"][0], request["meta"]["versionId"]) == \
        ("completed", {"system": IG_REQUEST["statusReason"]["coding"][0]["system"], "code": "8",
                       "display": "Delivered"}, "2")
    history = api.get(f"CommunicationRequest/{claim_id}/_history").json()
    assert sorted(e["resource"]["status"] for e in history["entry"]) == ["active", "completed"]


def test_answers_are_read_in_any_case_and_order(world):
    claim_id = selected_claim(world)
    body = communication(claim_id, world.patient, ("No", "YES", "no", "no", "0"))
    body["payload"].reverse()
    answers = payload_answers(assert_valid(created(world.api.post("Communication", body))))
    assert answers == {"CareRendered": "no", "PaymentAsked": "yes", "DrugPrescribed": "no", "DrugReceived": "no",
                       "Asessment": "0"}


def test_communications_are_searchable(world):
    api = world.api
    first, second = selected_claim(world), selected_claim(world)
    one = created(api.post("Communication", communication(first, world.patient)))["id"]
    two = created(api.post("Communication", communication(second, world.patient)))["id"]
    assert search_ids(api, "Communication") == {one, two}
    assert search_ids(api, f"Communication?about=Claim/{second}") == {two}
    assert search_ids(api, f"Communication?patient=Patient/{world.patient}") == {one, two}
    assert search_ids(api, f"Communication?subject={world.patient}&_id={one}") == {one}
    assert search_ids(api, "Communication?_lastUpdated=gt2000-01-01") == {one, two}
    assert search_ids(api, "CommunicationRequest?status=completed") == {first, second}


def test_a_second_feedback_is_a_409_that_changes_nothing(world):
    api = world.api
    claim_id = selected_claim(world)
    created(api.post("Communication", communication(claim_id, world.patient)))
    refused(api.post("Communication", communication(claim_id, world.patient, ("no", "no", "no", "no", "1"))), 409,
            expression="Communication.about[0]", text="feedback already")
    fb, = feedback_rows(world)
    assert fb.assessment == 4
    assert api.get(f"CommunicationRequest/{claim_id}").json()["meta"]["versionId"] == "2"


@pytest.mark.parametrize(("answers", "index", "text"), [
    (("maybe", "no", "yes", "yes", "4"), 0, "yes or no"),
    (("yes", "no", "yes", "1", "4"), 3, "yes or no"),
    (("yes", "no", "yes", "yes", "6"), 4, "0, 1, 2, 3, 4, 5"),
    (("yes", "no", "yes", "yes", "good"), 4, "0, 1, 2, 3, 4, 5"),
])
def test_bad_answers_are_a_422_naming_the_payload(world, answers, index, text):
    claim_id = selected_claim(world)
    resp = world.api.post("Communication", communication(claim_id, world.patient, answers))
    refused(resp, 422, expression=f"Communication.payload[{index}].contentString", text=text)
    assert feedback_rows(world) == []
    assert claim_by_id(world, claim_id).feedback_status == SELECTED


def test_a_missing_answer_is_refused(world):
    claim_id = selected_claim(world)
    body = communication(claim_id, world.patient)
    del body["payload"][2]
    refused(world.api.post("Communication", body), 400, expression="Communication.payload")
    assert feedback_rows(world) == []


def test_the_openimis_alias_takes_the_claim_code_and_the_insurance_number(world):
    claim_id = selected_claim(world)
    body = communication(claim_by_id(world, claim_id).code, "100000001")
    answer = created(world.api.as_alias().post("Communication", body))
    assert (answer["subject"], answer["about"]) == ({"reference": f"Patient/{world.patient}"},
                                                    [{"reference": f"Claim/{claim_id}"}])
    assert claim_by_id(world, claim_id).feedback_status == DELIVERED


def test_the_subject_must_be_the_claims_patient(world):
    claim_id = selected_claim(world)
    stranger = new_insuree(world.api, world.places, "100000003")
    refused(world.api.post("Communication", communication(claim_id, stranger["id"])), 422,
            expression="Communication.subject", text="patient of the claim")
    assert feedback_rows(world) == []


def test_feedback_about_an_unknown_claim_is_a_422(world):
    refused(world.api.post("Communication", communication("no-such-claim", world.patient)), 422,
            expression="Communication.about[0]")


def test_feedback_on_a_claim_not_selected_is_a_422(world):
    api = world.api
    idle = checked_claim(world)
    not_selected = checked_claim(world, 10)
    assert run_selection(world, not_selected, "all:20") is False
    for pk, text in ((idle, "never selected"), (not_selected, "not selected")):
        claim_id = claim_row(world, pk).id
        refused(api.post("Communication", communication(claim_id, world.patient)), 422,
                expression="Communication.about[0]", text=text)
        assert claim_row(world, pk).feedback_status in (IDLE, NOT_SELECTED)
    assert feedback_rows(world) == []


def test_communications_cannot_be_changed_or_deleted(world):
    api = world.api
    claim_id = selected_claim(world)
    body = created(api.post("Communication", communication(claim_id, world.patient)))
    refused(api.put(f"Communication/{body['id']}", body), 405)
    refused(api.delete(f"Communication/{body['id']}"), 405)
    with transaction(world.engine, write=False) as conn:
        versions = conn.execute(select(func.count()).select_from(resource_version).where(
            resource_version.c.res_type == "Communication")).scalar_one()
    assert versions == 1


# --- rights --------------------------------------------------------------------------------------------------------


def test_rights_feedback_delivery_to_post_and_feedback_search_to_read(world, app):
    claim_id = selected_claim(world)
    admin = as_user(world, app, "claimadmin", "Claim Administrator")  # claims, but neither 111009 nor 111010
    refused(admin.post("Communication", communication(claim_id, world.patient)), 403)
    refused(admin.get(f"CommunicationRequest/{claim_id}"), 403)
    refused(admin.get("CommunicationRequest?status=active"), 403)
    assert feedback_rows(world) == []
    medical = as_user(world, app, "medical", "Medical Officer")  # 111009 and 111010
    assert medical.get(f"CommunicationRequest/{claim_id}").status_code == 200
    body = created(medical.post("Communication", communication(claim_id, world.patient)))
    assert medical.get(f"Communication/{body['id']}").status_code == 200
    refused(admin.get(f"Communication/{body['id']}"), 403)
