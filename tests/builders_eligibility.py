"""Builders for eligibility tests: registers (places, a facility, insurees, items, services, products) go through
the API; policies, their members and claims are inserted straight into the tables, the way the enrolment and
claim processes will leave them (eligibility only reads those rows)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, insert, select

from hifhir.store.db import transaction
from hifhir.store.tables import (
    POLICY_ACTIVE,
    claim,
    claim_ded_rem,
    claim_item,
    claim_service,
    coverage,
    health_facility,
    insuree,
    insuree_policy,
    medical_item,
    medical_service,
    policy,
    product,
)
from tests.builders import CS, PROFILE, ident, location, patient
from tests.builders import health_facility as hf_resource
from tests.builders_medical import HIFHIR_EXT, activity_definition, coverage_line, insurance_plan, medication

REQUEST_PROFILE = f"{PROFILE}openimis-coverage-eligibility-request"
INSURER_REF = "Organization/openIMIS-Implementation"
CATEGORY_DISPLAYS = {"item": "Item", "service": "Service"}


def _created(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 201, resp.text
    return resp.json()


@dataclass
class Places:
    region: str
    district: str
    village: str
    facility: str  # a health facility's id (claims need one)


def places(api: Any) -> Places:
    region = _created(api.post("Location", location("R1", "Ultha", "R")))["id"]
    district = _created(api.post("Location", location("R1D1", "Rapta", "D", region)))["id"]
    ward = _created(api.post("Location", location("R1D1W1", "Jamu", "W", district)))["id"]
    village = _created(api.post("Location", location("R1D1W1V1", "Jamula", "V", ward)))["id"]
    facility = _created(api.post("Organization", hf_resource("RAHOS001", district)))["id"]
    return Places(region, district, village, facility)


def new_insuree(api: Any, places_: Places, chf_id: str, birth_date: str = "1990-01-01") -> dict[str, Any]:
    return _created(api.post("Patient", patient(chf_id, "Doe", chf_id, places_.village, birth_date=birth_date)))


def new_service(api: Any, code: str, category: str | None = None) -> str:
    return str(_created(api.post("ActivityDefinition", activity_definition(code, f"Service {code}",
                                                                            category=category)))["id"])


def new_item(api: Any, code: str) -> str:
    return str(_created(api.post("Medication", medication(code, f"Item {code}")))["id"])


def new_product(api: Any, code: str, area: str | None, *, services: dict[str, dict[str, Any]] | None = None,
                items: dict[str, dict[str, Any]] | None = None, ceilings: dict[str, Any] | None = None,
                threshold: int = 3) -> dict[str, Any]:
    """A product covering the given ActivityDefinition / Medication ids, each with its coverage-line settings
    (waitingPeriodAdult, maxQuantityChild, …); `ceilings` are insurance-plan-ceilings sub-extensions by url
    (an int → valueUnsignedInt for the maxNo* counts, else valueMoney)."""
    exts = [coverage_line(f"ActivityDefinition/{sid}", **subs) for sid, subs in (services or {}).items()]
    exts += [coverage_line(f"Medication/{iid}", **subs) for iid, subs in (items or {}).items()]
    if ceilings:
        parts = [{"url": url, "valueUnsignedInt": value} if url.startswith("maxNo")
                 else {"url": url, "valueMoney": {"value": value}} for url, value in ceilings.items()]
        exts.append({"url": f"{HIFHIR_EXT}insurance-plan-ceilings", "extension": parts})
    return _created(api.post("InsurancePlan", insurance_plan(code, f"Product {code}", area, threshold=threshold,
                                                             extensions=exts)))


# --- policies and claims, in SQL --------------------------------------------------------------------------------


def _pk(conn: Any, table: Any, res_id: str) -> int:
    return int(conn.execute(select(table.c.pk).where(table.c.id == res_id)).scalar_one())


@dataclass
class PolicyRows:
    pk: int
    id: str
    coverage_id: str


def insert_policy(engine: Engine, product_id: str, member_ids: list[str], *, status: int = POLICY_ACTIVE,
                  effective: date | None = None, expiry: date | None = None,
                  member_effective: dict[str, date | None] | None = None) -> PolicyRows:
    """A policy of a product covering the given Patients, with its Coverage row and one insuree_policy row per
    member. Defaults: effective a month ago, expiring in eleven months; `member_effective` overrides a member's
    own effective date (None = listed but not yet covered)."""
    today = date.today()
    effective = effective or today - timedelta(days=30)
    expiry = expiry or effective + timedelta(days=364)
    policy_id, coverage_id = str(uuid.uuid4()), str(uuid.uuid4())
    with transaction(engine, write=True) as conn:
        values = {"id": policy_id, "uuid": policy_id, "product_pk": _pk(conn, product, product_id),
                  "enroll_date": effective, "start_date": effective, "effective_date": effective,
                  "expiry_date": expiry, "status": status, "version_id": 1}
        pk = int(conn.execute(insert(policy).values(**values)).inserted_primary_key[0])
        conn.execute(insert(coverage).values(id=coverage_id, uuid=coverage_id, policy_pk=pk, version_id=1))
        for member_id in member_ids:
            own = (member_effective or {}).get(member_id, effective)
            conn.execute(insert(insuree_policy).values(
                policy_pk=pk, insuree_pk=_pk(conn, insuree, member_id), enroll_date=effective,
                start_date=effective, effective_date=own, expiry_date=expiry))
    return PolicyRows(pk, policy_id, coverage_id)


def insert_claim(engine: Engine, facility_id: str, patient_id: str, *, day: date | None = None,
                 status: int = 16, category: str | None = None,
                 services: list[tuple[str, Any]] | None = None, items: list[tuple[str, Any]] | None = None,
                 line_status: int = 1, approved: Any = None, product_id: str | None = None) -> int:
    """A claim with lines (code, quantity provided) of the given status; returns its pk."""
    day = day or date.today() - timedelta(days=1)
    with transaction(engine, write=True) as conn:
        claim_id = str(uuid.uuid4())
        pk = int(conn.execute(insert(claim).values(
            id=claim_id, uuid=claim_id, code=claim_id[:8], hf_pk=_pk(conn, health_facility, facility_id),
            insuree_pk=_pk(conn, insuree, patient_id), date_from=day, date_claimed=day, status=status,
            category=category, icd_code="A00", version_id=1)).inserted_primary_key[0])
        product_pk = _pk(conn, product, product_id) if product_id else None
        for table, target, column, lines in ((claim_service, medical_service, "service_pk", services),
                                             (claim_item, medical_item, "item_pk", items)):
            for code, qty in lines or ():
                target_pk = conn.execute(select(target.c.pk).where(target.c.code == code)).scalar_one()
                conn.execute(insert(table).values(
                    claim_pk=pk, status=line_status, qty_provided=Decimal(str(qty)),
                    qty_approved=None if approved is None else Decimal(str(approved)), price_asked=Decimal(10),
                    product_pk=product_pk, **{column: target_pk}))
    return pk


def insert_ded_rem(engine: Engine, claim_pk: int, policy_pk: int, patient_id: str, **amounts: Any) -> None:
    """What a processed claim consumed of the policy's deductibles and ceilings (ded_g, rem_g, rem_ip…)."""
    with transaction(engine, write=True) as conn:
        conn.execute(insert(claim_ded_rem).values(
            claim_pk=claim_pk, policy_pk=policy_pk, insuree_pk=_pk(conn, insuree, patient_id),
            **{k: Decimal(str(v)) for k, v in amounts.items()}))


# --- the request --------------------------------------------------------------------------------------------------


def category(code: str) -> dict[str, Any]:
    """The coverage-item-category coding the IG's item/service slices fix (patternCodeableConcept, display too)."""
    return {"coding": [{"system": f"{CS}coverage-item-category", "code": code, "display": CATEGORY_DISPLAYS[code]}]}


def enquiry(patient_ref: str, *, service: str | None = None, item: str | None = None,
            request_uuid: str | None = None, created: str | None = None) -> dict[str, Any]:
    lines = [{"category": category(kind), "productOrService": {"text": code}}
             for kind, code in (("item", item), ("service", service)) if code is not None]
    res: dict[str, Any] = {
        "resourceType": "CoverageEligibilityRequest",
        "meta": {"profile": [REQUEST_PROFILE]},
        "identifier": [ident(request_uuid or str(uuid.uuid4()), "UUID")],
        "status": "active",
        "purpose": ["benefits"],
        "patient": {"reference": patient_ref},
        "created": created or date.today().isoformat(),
        "insurer": {"reference": INSURER_REF},
    }
    if lines:
        res["item"] = lines
    return res
