"""Builders for valid medical items (Medication), services (ActivityDefinition) and products (InsurancePlan)."""

from __future__ import annotations

from typing import Any

from hifhir.fhir.validate import validate_resource
from tests.builders import CS, EXT, PROFILE, ident

HIFHIR_EXT = "https://hifhir.org/fhir/StructureDefinition/"
USAGE = "http://terminology.hl7.org/CodeSystem/usage-context-type"
GENDER = "http://hl7.org/fhir/administrative-gender"
VENUE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PLAN_TYPE = "http://terminology.hl7.org/CodeSystem/insurance-plan-type"
VENUES = {"O": ["AMB"], "I": ["IMP"], "B": ["AMB", "IMP"]}


USAGE_DISPLAYS = {"gender": "Gender", "age": "Age", "workflow": "Workflow Setting", "venue": "Clinical Venue"}


def usage(code: str, system: str, codes: list[str]) -> dict[str, Any]:
    """A UsageContext; the IG's slices fix the code with its display (patternCoding)."""
    return {"code": {"system": USAGE, "code": code, "display": USAGE_DISPLAYS[code]},
            "valueCodeableConcept": {"coding": [{"system": system, "code": c} for c in codes]}}


def contexts(genders: list[str] | None, ages: list[str] | None, care_type: str | None,
             category: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    out = []
    if genders is not None:
        out.append(("Gender", usage("gender", GENDER, genders)))
    if ages is not None:
        out.append(("Age", usage("age", f"{CS}usage-context-age-type", ages)))
    if category is not None:
        out.append(("Category", usage("workflow", f"{CS}activity-definition-usage-context-workflow-type",
                                      [category])))
    if care_type is not None:
        out.append(("CareType", usage("venue", VENUE, VENUES[care_type])))
    return out


def price(value: Any, currency: str | None = "EUR") -> dict[str, Any]:
    money: dict[str, Any] = {"value": value}
    if currency:
        money["currency"] = currency
    return {"url": f"{EXT}unit-price", "valueMoney": money}


def medication(code: str, name: str, *, unit_price: Any = 10, item_type: str = "D", care_type: str | None = "B",
               genders: list[str] | None = None, ages: list[str] | None = None, frequency: int | None = None,
               package: str | None = None, quantity: Any = None) -> dict[str, Any]:
    exts: list[dict[str, Any]] = [
        price(unit_price),
        {"url": f"{EXT}medication-type",
         "valueCodeableConcept": {"coding": [{"system": f"{CS}medication-item-type", "code": item_type}]}},
    ]
    if frequency is not None:
        exts.append({"url": f"{EXT}medication-frequency",
                     "valueTiming": {"repeat": {"frequency": 1, "period": frequency, "periodUnit": "d"}}})
    ctx = contexts(genders, ages, care_type)
    if ctx:
        exts.append({"url": f"{EXT}medication-usage-context",
                     "extension": [{"url": name_, "valueUsageContext": u} for name_, u in ctx]})
    res: dict[str, Any] = {
        "resourceType": "Medication",
        "meta": {"profile": [f"{PROFILE}openimis-medication"]},
        "extension": exts,
        "identifier": [ident(code)],
        "code": {"text": name},
        "status": "active",
    }
    if package is not None:
        res["form"] = {"text": package}
    if quantity is not None:
        res["amount"] = {"numerator": {"value": quantity}}
    return res


def activity_definition(code: str, title: str, *, unit_price: Any = 40, service_type: str = "C",
                        care_type: str = "O", genders: list[str] | None = None, ages: list[str] | None = None,
                        category: str | None = None, level: str | None = None,
                        frequency: int | None = None) -> dict[str, Any]:
    exts = [price(unit_price)]
    if level is not None:
        exts.append({"url": f"{EXT}activity-definition-level",
                     "valueCodeableConcept": {"coding": [{"system": f"{CS}activity-definition-level",
                                                          "code": level}]}})
    res: dict[str, Any] = {
        "resourceType": "ActivityDefinition",
        "meta": {"profile": [f"{PROFILE}openimis-activitiy-definition"]},
        "extension": exts,
        "identifier": [ident(code)],
        "name": code,
        "title": title,
        "status": "active",
        "date": "2024-01-01",
        "useContext": [u for _n, u in contexts(genders, ages, care_type, category)],
        "topic": [{"coding": [{"system": f"{CS}activity-definition-service-type", "code": service_type}]}],
        "kind": "ServiceRequest",
    }
    if frequency is not None:
        res["timingTiming"] = {"repeat": {"frequency": 1, "period": frequency, "periodUnit": "d"}}
    return res


# --- products -------------------------------------------------------------------------------------------


# The IG's slices fix these codings with their displays (patternCodeableConcept).
COST_DISPLAYS = {"lumpsum": "Lumpsum", "premiumAdult": "Premium Adult", "premiumChild": "Premium Child",
                 "registrationLumpsum": "Registration Lumpsum", "registrationFee": "Registration Fee",
                 "generalAssemblyLumpSum": "General Assembly Lump Sum", "generalAssemblyFee": "General Assembly Fee"}
LIMIT_DISPLAYS = {"period": "Period", "memberCount": "Member Count"}


def cost_type(code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"{CS}insurance-plan-general-cost-type", "code": code,
                        "display": COST_DISPLAYS[code]}]}


def _cost(code: str, value: Any, group_size: int | None = None) -> dict[str, Any]:
    cost: dict[str, Any] = {"type": cost_type(code), "cost": {"value": value, "currency": "EUR"}}
    if group_size is not None:
        cost["groupSize"] = group_size
    return cost


def _limit(code: str, value: int, unit: str) -> dict[str, Any]:
    return {"code": {"coding": [{"system": f"{CS}insurance-plan-coverage-benefit-limit", "code": code,
                                 "display": LIMIT_DISPLAYS[code]}]},
            "value": {"value": value, "unit": unit}}


def months(name: str, value: int, slice_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"url": f"{EXT}{name}", "valueQuantity": {"value": value, "unit": "months"}}
    if slice_id:
        out["id"] = slice_id
    return out


def coverage_line(reference: str, **subs: Any) -> dict[str, Any]:
    """`insurance-plan-coverage-line` for `Medication/x` or `ActivityDefinition/x`; keyword arguments are
    sub-extensions by url, their value type chosen from the value (str → code, int/float → decimal unless named
    in the count fields)."""
    counts = {"waitingPeriodAdult", "waitingPeriodChild", "maxQuantityAdult", "maxQuantityChild"}
    parts: list[dict[str, Any]] = [{"url": "provision", "valueReference": {"reference": reference}}]
    for url, value in subs.items():
        if isinstance(value, str):
            parts.append({"url": url, "valueCode": value})
        elif url in counts:
            parts.append({"url": url, "valueUnsignedInt": value})
        else:
            parts.append({"url": url, "valueDecimal": value})
    return {"url": f"{HIFHIR_EXT}insurance-plan-coverage-line", "extension": parts}


def insurance_plan(code: str, name: str, area: str | None, *, start: str = "2020-01-01", end: str = "2030-12-31",
                   status: str = "active", lump_sum: Any = 1000, threshold: int = 3, member_count: int = 10,
                   period: int = 12, max_installments: int = 3, premium_adult: Any = None,
                   premium_child: Any = None, extra_costs: dict[str, Any] | None = None,
                   extensions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A product; `area` is a Location id (region or district) or None for a national product."""
    costs = [_cost("lumpsum", lump_sum, threshold)]
    for code_, value in (("premiumAdult", premium_adult), ("premiumChild", premium_child),
                         *(extra_costs or {}).items()):
        if value is not None:
            costs.append(_cost(code_, value))
    medical = {"coding": [{"system": PLAN_TYPE, "code": "medical", "display": "Medical"}]}
    return {
        "resourceType": "InsurancePlan",
        "meta": {"profile": [f"{PROFILE}openimis-insurance-plan"]},
        "extension": [{"url": f"{EXT}insurance-plan-max-installments", "valueUnsignedInt": max_installments},
                      *(extensions or [])],
        "identifier": [ident(code)],
        "status": status,
        "type": [medical],
        "name": name,
        "period": {"start": start, "end": end},
        "coverageArea": [{"reference": f"Location/{area}"} if area else {"display": "National"}],
        "coverage": [{"type": medical, "benefit": [{"type": medical, "limit": [
            _limit("period", period, "month"), _limit("memberCount", member_count, "member")]}]}],
        "plan": [{"generalCost": costs}],
    }


def assert_valid(resource: dict[str, Any]) -> dict[str, Any]:
    """What the server renders must itself pass the IG profile it claims (meta.profile)."""
    _, issues = validate_resource(resource, resource["meta"]["profile"][0])
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    assert not errors, [i.to_fhir() for i in errors]
    return resource
