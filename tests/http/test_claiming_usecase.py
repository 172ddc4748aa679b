"""The claiming use case end to end, as the IG describes it (ig/README.md §6): a facility system syncs the registers
it claims against, submits a Claim and reads the adjudication; a claim selected for feedback waits for the
enrolment officer's answers (CommunicationRequest → Communication) and is then processed; a relative-price claim
stays processed until the month's batch run valuates it. Every step over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, update

from hifhir import cli, config
from hifhir.auth.users import create_user
from hifhir.store.db import transaction
from hifhir.store.tables import claim, product_service
from tests.builders_claim_fhir import item, service
from tests.builders_practitioner import enrolment_officer, officer_role
from tests.conftest import Api, login
from tests.http.test_claims import World, answered, claim_of, totals
from tests.http.test_claims import world as world  # the fixture, shared
from tests.http.test_feedback import communication
from tests.responses import created


def statuses(body: dict[str, Any]) -> list[str]:
    return [t["category"]["coding"][0]["code"] for t in body["total"]]


def test_a_facility_syncs_its_registers_then_claims_and_reads_the_adjudication(api: Api, world: World) -> None:
    # What the facility system loads before it claims: its price lists and the items/services they name.
    services_list = api.get(f"ValueSet/services-pricelist-{world.places.facility}").json()
    items_list = api.get(f"ValueSet/items-pricelist-{world.places.facility}").json()
    listed = {c["code"] for part in (services_list, items_list) for c in part["expansion"]["contains"]}
    assert {"A1", "0001", "0002"} <= listed
    assert api.get("ActivityDefinition?identifier=A1").json()["entry"][0]["resource"]["id"] == world.consult

    response = answered(api.post("Claim", claim_of(world, "UC0001")))

    assert response["outcome"] == "complete"  # checked, processed and valuated in the POST
    assert statuses(response) == ["2", "4", "8", "16"]  # entered, checked, processed, valuated
    assert totals(response)["16"] == 60  # a consultation at 40 and two aspirins at 10, all covered
    claim_read = api.get(f"Claim/{response['id']}").json()
    assert claim_read["identifier"][0]["value"] == "UC0001"
    assert api.get(f"ClaimResponse/{response['id']}").json()["outcome"] == "complete"
    found = api.get(f"ClaimResponse?patient=Patient/{world.patient['id']}&outcome=complete").json()
    assert [e["resource"]["id"] for e in found["entry"]] == [response["id"]]


@pytest.fixture
def officer(api: Api, world: World) -> str:
    """The enrolment officer of the insuree's village, with a phone: whom feedback prompts go to."""
    eo = created(api.post("Practitioner", enrolment_officer("EO001", phone="+255700000001")))["id"]
    created(api.post("PractitionerRole", officer_role("EOR001", eo, [world.places.village])))
    return eo


def test_a_claim_selected_for_feedback_waits_for_the_answers_then_is_valuated(
        api: Api, world: World, officer: str, client: Any, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "FEEDBACK_SELECTION", "all:0")  # every claim is selected
    with transaction(engine, write=True) as conn:
        create_user(conn, "MEDOFF", "medical-officer-1", roles=["Medical Officer"])
    medical_officer = Api(client, login(client, ("MEDOFF", "medical-officer-1")))

    response = answered(api.post("Claim", claim_of(world, "UC0002")))

    assert response["outcome"] == "partial"  # checked, held for the feedback
    # The request is shown to users with Claims.Feedback (111009) only (the IG's security page).
    assert response["communicationRequest"] == [{"reference": f"CommunicationRequest/{response['id']}"}]
    as_officer = medical_officer.get(f"ClaimResponse/{response['id']}").json()
    assert as_officer["communicationRequest"] == response["communicationRequest"]
    api_user_rights = api.get(f"ClaimResponse?_id={response['id']}").json()["entry"][0]["resource"]
    assert "communicationRequest" in api_user_rights  # the admin holds every right
    request = medical_officer.get(f"CommunicationRequest/{response['id']}").json()
    assert (request["status"], request["recipient"][0]["reference"]) == ("active", f"Practitioner/{officer}")

    answers = medical_officer.post("Communication", communication(response["id"], world.patient["id"]))
    assert answers.status_code == 201, answers.text

    after = api.get(f"ClaimResponse/{response['id']}").json()
    assert (after["outcome"], after["meta"]["versionId"]) == ("complete", "2")
    assert totals(after)["16"] == 60
    assert medical_officer.get(f"CommunicationRequest/{response['id']}").json()["status"] == "completed"


def test_a_claim_without_the_feedback_right_never_shows_the_request(
        api: Api, world: World, officer: str, client: Any, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "FEEDBACK_SELECTION", "all:0")
    with transaction(engine, write=True) as conn:
        create_user(conn, "CLAIMADM", "claim-admin-1", roles=["Claim Administrator"])
    facility_user = Api(client, login(client, ("CLAIMADM", "claim-admin-1")))

    response = facility_user.post("Claim", claim_of(world, "UC0003"))

    assert response.status_code == 200, response.text
    body = response.json()
    assert "communicationRequest" not in body  # the Claim Administrator role has no 111009
    read = facility_user.get(f"ClaimResponse/{body['id']}").json()
    assert "communicationRequest" not in read and read["outcome"] == "partial"
    found = facility_user.get(f"ClaimResponse?_id={body['id']}").json()["entry"][0]["resource"]
    assert "communicationRequest" not in found
    history = facility_user.get(f"ClaimResponse/{body['id']}/_history").json()["entry"][0]["resource"]
    assert "communicationRequest" not in history
    assert "communicationRequest" in api.get(f"ClaimResponse/{body['id']}").json()


def test_a_relative_price_claim_is_valuated_by_the_month_batch_run(
        api: Api, world: World, engine: Engine, command_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with transaction(engine, write=True) as conn:  # the consultation is paid at relative prices by this product
        conn.execute(update(product_service).values(price_origin="R"))
    last_month_end = date.today().replace(day=1) - timedelta(days=1)
    treated = last_month_end - timedelta(days=2)
    body = claim_of(world, "UC0004", start=treated, created=last_month_end,
                    lines=[service(f"ActivityDefinition/{world.consult}"), item(f"Medication/{world.aspirin}")])
    response = answered(api.post("Claim", body))
    assert response["outcome"] == "partial" and statuses(response)[-1] == "8"  # processed
    with transaction(engine, write=True) as conn:  # processed within the month the batch runs for
        stamp = int((last_month_end - date(1970, 1, 1)).total_seconds()) * 1_000_000
        conn.execute(update(claim).where(claim.c.id == response["id"]).values(process_stamp=stamp))
    period = f"{last_month_end.year}-{last_month_end.month:02d}"
    assert cli.main(["claims", "distribution", "--product", "BASIC", "--type", "M", "--care", "B",
                     "--percent", *["100"] * 12]) == 0

    assert cli.main(["claims", "batch-run", "--period", period, "--location", "R1"]) == 0  # BASIC is sold in R1

    assert "1 claims valuated" in capsys.readouterr().out
    after = api.get(f"ClaimResponse/{response['id']}").json()
    assert (after["outcome"], after["meta"]["versionId"]) == ("complete", "2")
    claim_read = api.get(f"Claim?_id={response['id']}").json()["entry"][0]["resource"]
    assert claim_read["meta"]["versionId"] == "1"  # the submission itself never changes
