"""The calendar-driven job: Patient.active / Group.active follow expiries and effective dates that no write
announces, and the stored versions move with them."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from hifhir.jobs import JOB_USER, refresh_coverage_flags
from hifhir.store.db import transaction
from hifhir.store.tables import POLICY_ACTIVE, family, insuree, insuree_policy, policy, product
from tests.builders import group, location, patient
from tests.builders_medical import insurance_plan

TODAY = date.today()


def created(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture
def household(api: Any) -> dict[str, str]:
    region = created(api.post("Location", location("R1", "Ultha", "R")))["id"]
    district = created(api.post("Location", location("R1D1", "Rapta", "D", region)))["id"]
    ward = created(api.post("Location", location("R1D1W1", "Jamu", "W", district)))["id"]
    village = created(api.post("Location", location("R1D1W1V1", "Jamula", "V", ward)))["id"]
    head = created(api.post("Patient", patient("100000001", "Doe", "Jo", village, head=True)))["id"]
    fam = created(api.post("Group", group("100000001", [head], village)))["id"]
    plan = created(api.post("InsurancePlan", insurance_plan("PLAN1", "Plan", region)))["id"]
    return {"patient": head, "group": fam, "product": plan}


def enrol(engine: Any, ids: dict[str, str], *, effective: date, expiry: date, flag: bool) -> None:
    """A policy row as the enrolment code writes it, with the insuree's flag as it was before the calendar moved."""
    with transaction(engine, write=True) as conn:
        product_pk = conn.execute(select(product.c.pk).where(product.c.id == ids["product"])).scalar_one()
        person = conn.execute(select(insuree.c.pk, insuree.c.family_pk).where(insuree.c.id == ids["patient"])).one()
        head_family = conn.execute(select(family.c.pk).where(family.c.id == ids["group"])).scalar_one()
        policy_pk = conn.execute(insert(policy).values(
            id=str(uuid.uuid4()), family_pk=head_family, product_pk=product_pk, enroll_date=effective,
            start_date=effective, effective_date=effective, expiry_date=expiry, status=POLICY_ACTIVE,
            stage="N", value=1000)).inserted_primary_key[0]
        conn.execute(insert(insuree_policy).values(
            policy_pk=policy_pk, insuree_pk=person.pk, enroll_date=effective, start_date=effective,
            effective_date=effective, expiry_date=expiry))
        conn.execute(update(insuree).where(insuree.c.pk == person.pk).values(has_active_policy=flag))


TOMORROW = TODAY + timedelta(days=1)


def test_an_expired_policy_turns_the_patient_and_the_family_inactive(api, engine, household):
    # the server ran the job at start (today); the policy expires tonight
    enrol(engine, household, effective=TODAY - timedelta(days=400), expiry=TODAY, flag=True)
    assert refresh_coverage_flags(engine, TODAY) == 0  # still covered today (and today's run is done)
    before = int(api.get(f"Patient/{household['patient']}").json()["meta"]["versionId"])
    group_before = int(api.get(f"Group/{household['group']}").json()["meta"]["versionId"])
    assert refresh_coverage_flags(engine, TOMORROW) == 1
    patient_now = api.get(f"Patient/{household['patient']}").json()
    assert patient_now["active"] is False
    assert patient_now["meta"]["versionId"] == str(before + 1)
    history = api.get(f"Patient/{household['patient']}/_history").json()
    assert history["entry"][0]["resource"]["active"] is False
    assert api.get(f"Group/{household['group']}").json()["meta"]["versionId"] == str(group_before + 1)
    assert refresh_coverage_flags(engine, TOMORROW) == 0  # idempotent: nothing left to do


def test_a_coverage_that_starts_tomorrow_turns_the_patient_active_then(api, engine, household):
    enrol(engine, household, effective=TOMORROW, expiry=TODAY + timedelta(days=365), flag=False)
    assert refresh_coverage_flags(engine, TODAY) == 0  # not yet
    assert refresh_coverage_flags(engine, TOMORROW) == 1
    assert api.get(f"Patient/{household['patient']}").json()["active"] is True
    assert api.get(f"Group/{household['group']}").json()["active"] is True
    assert api.get("Patient?active=true").json()["entry"][0]["resource"]["id"] == household["patient"]


def test_a_first_run_checks_everybody(api, engine, household):
    from hifhir.store.tables import job_run

    enrol(engine, household, effective=TODAY - timedelta(days=30), expiry=TODAY - timedelta(days=3), flag=True)
    with transaction(engine, write=True) as conn:
        conn.execute(job_run.delete())  # as on a database the job never ran on
    assert refresh_coverage_flags(engine, TODAY) == 1
    assert api.get("Patient?active=true").json().get("entry") is None


def test_the_job_writes_history_under_its_own_name(api, engine, household):
    from hifhir.store.tables import resource_version

    enrol(engine, household, effective=TODAY - timedelta(days=10), expiry=TODAY, flag=True)
    refresh_coverage_flags(engine, TOMORROW)
    with engine.connect() as conn:
        users = conn.execute(select(resource_version.c.user_name).where(
            resource_version.c.res_id == household["patient"]).order_by(resource_version.c.version)).scalars().all()
    assert users[-1] == JOB_USER
