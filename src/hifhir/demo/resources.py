"""FHIR resource builders for the demo data: the same JSON an openIMIS client would POST.

The demo scheme goes through the kinds' `write()`, so these dicts follow the IG profiles (tests validate them
against the profiles) and the IG examples in tests/fixtures/ig_examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from hifhir.fhir.elements import coding, ext, ig_concept, reference
from hifhir.fhir.kind import CS, EXT, IDENTIFIER_SYSTEM, PROFILE_BASE
from hifhir.fhir.profiles.activity_definition import LEVELS as SERVICE_LEVELS
from hifhir.fhir.profiles.activity_definition import SERVICE_TYPES
from hifhir.fhir.profiles.medication import CURRENCY, ITEM_TYPES, render_contexts
from hifhir.fhir.profiles.practitioner import QUALIFICATIONS

LOCATION_LEVELS = {"R": "Region", "D": "District", "W": "Municipality/Ward", "V": "City/Village"}
ORG_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/organization-type"
MARITAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
MARITAL_CODES = {"M": "M", "S": "S", "D": "D", "W": "W", "N": "UNK"}  # openIMIS code -> v3 code
HF_LEVEL_NAMES = {"H": "Hospital", "C": "Health Centre", "D": "Dispensary"}


@dataclass(frozen=True, slots=True)
class Place:
    """Names of a location and its ancestors: the address parts the profiles require beside the reference."""

    region: str
    district: str
    ward: str | None = None
    village: str | None = None


def _address(location_id: str, place: Place, *, use: str | None = None, line: str | None = None,
             with_type: bool = True) -> dict[str, Any]:
    exts: list[dict[str, Any]] = []
    if place.ward is not None:
        exts.append(ext("address-municipality", "valueString", place.ward))
    exts.append(ext("address-location-reference", "valueReference", reference("Location", location_id)))
    address: dict[str, Any] = {"extension": exts}
    if use:
        address["use"] = use
    if with_type:
        address["type"] = "physical"
    if line:
        address["line"] = [line]
    if place.village is not None:
        address["city"] = place.village
    address["district"] = place.district
    address["state"] = place.region
    return address


def chf_id(n: int) -> str:
    """A 9-digit insurance number valid under the openIMIS CHF rule (domain §2.5): N on 8 digits, N mod 7."""
    if not 0 < n < 100_000_000:
        raise ValueError("N must have at most 8 digits and not be 0")
    return f"{n:08d}{n % 7}"


def is_valid_chf_id(value: str) -> bool:
    return len(value) == 9 and value.isdigit() and int(value[:8]) != 0 and int(value[:8]) % 7 == int(value[8])


def _identifier(type_code: str, value: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": IDENTIFIER_SYSTEM, "code": type_code}]}, "value": value}


def _meta(profile_id: str) -> dict[str, Any]:
    return {"profile": [PROFILE_BASE + profile_id]}


def location_resource(code: str, name: str, level: str, parent_id: str | None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Location",
        "meta": _meta("openimis-location"),
        "identifier": [_identifier("Code", code)],
        "status": "active",
        "name": name,
        "mode": "instance",
        "physicalType": {"coding": [coding(CS + "location-type", level, LOCATION_LEVELS[level])]},
    }
    if parent_id is not None:
        res["partOf"] = reference("Location", parent_id)
    return res


def health_facility_resource(code: str, name: str, level: str, care_type: str, legal_form: str,
                             district_id: str, place: Place, *, phone: str | None = None,
                             address_line: str | None = None) -> dict[str, Any]:
    address = _address(district_id, place, line=address_line)
    res: dict[str, Any] = {
        "resourceType": "Organization",
        "meta": _meta("openimis-health-facility-organization"),
        "extension": [
            ext("organization-hf-legal-form", "valueCodeableConcept", ig_concept("organization-hf-legal-form",
                                                                                 legal_form)),
            ext("organization-hf-level", "valueCodeableConcept", ig_concept("organization-hf-level", level)),
            ext("organization-hf-care-type", "valueCodeableConcept", ig_concept("organization-hf-care-type",
                                                                                care_type)),
        ],
        "identifier": [_identifier("Code", code)],
        "type": [{"coding": [coding(ORG_TYPE_SYSTEM, "prov")]}],
        "name": name,
        "address": [address],
    }
    if phone:
        res["telecom"] = [{"system": "phone", "value": phone}]
    return res


def policy_holder_resource(code: str, name: str, village_id: str, place: Place, *, legal_form: str,
                           activity: str, contact: str, email: str, phone: str,
                           address_line: str) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "meta": _meta("openimis-policy-holder-organization"),
        "extension": [
            ext("organization-ph-legal-form", "valueCodeableConcept",
                ig_concept("organization-ph-legal-form", legal_form)),
            ext("organization-ph-activity", "valueCodeableConcept",
                ig_concept("organization-ph-activity", activity)),
        ],
        "identifier": [_identifier("Code", code)],
        "type": [{"coding": [coding(ORG_TYPE_SYSTEM, "bus")]}],
        "name": name,
        "telecom": [{"system": "email", "value": email}, {"system": "phone", "value": phone}],
        "address": [_address(village_id, place, line=address_line, with_type=False)],
        "contact": [{"name": {"text": contact}}],
    }


def patient_resource(
    *,
    chf: str,
    last_name: str,
    other_names: str,
    gender: str,
    dob: date,
    village_id: str,
    place: Place,
    is_head: bool,
    family_id: str | None = None,
    relationship: str | None = None,
    head_name: tuple[str, str] | None = None,
    marital: str | None = None,
    phone: str | None = None,
    email: str | None = None,
    education: str | None = None,
    profession: str | None = None,
    id_number: str | None = None,
    id_type: str | None = None,
    card_issued: bool = False,
    vulnerable: bool | None = None,
    hf_id: str | None = None,
    address_line: str | None = None,
) -> dict[str, Any]:
    """An OpenIMISPatient as an enrolment client sends it.

    `gender` is M/F; the address is the family's ('home'); `head_name` (family, given) goes with
    `relationship` into contact[0], which the profile requires to carry the head's name."""
    exts: list[dict[str, Any]] = [ext("patient-is-head", "valueBoolean", is_head)]
    if education:
        exts.append(ext("patient-education-level", "valueCodeableConcept",
                        ig_concept("patient-education-level", education)))
    if profession:
        exts.append(ext("patient-profession", "valueCodeableConcept",
                        ig_concept("patient-profession", profession)))
    if id_number:
        parts: list[dict[str, Any]] = [{"url": "number", "valueString": id_number}]
        if id_type:
            parts.append({"url": "type",
                          "valueCodeableConcept": ig_concept("patient-identification-type", id_type)})
        exts.append({"extension": parts, "url": PROFILE_BASE + "patient-identification"})
    exts.append(ext("patient-card-issued", "valueBoolean", card_issued))
    if family_id:
        exts.append(ext("patient-group-reference", "valueReference", reference("Group", family_id)))
    if vulnerable is not None:
        exts.append(ext("patient-vulnerability-status", "valueBoolean", vulnerable))
    address = _address(village_id, place, use="home", line=address_line)
    res: dict[str, Any] = {
        "resourceType": "Patient",
        "meta": _meta("openimis-patient"),
        "extension": exts,
        "identifier": [_identifier("Code", chf)],
        "name": [{"use": "official", "family": last_name, "given": [other_names]}],
        "gender": {"M": "male", "F": "female"}[gender],
        "birthDate": dob.isoformat(),
        "address": [address],
    }
    telecom = [{"system": s, "value": v} for s, v in (("phone", phone), ("email", email)) if v]
    if telecom:
        res["telecom"] = telecom
    if marital:
        res["maritalStatus"] = {"coding": [coding(MARITAL_SYSTEM, MARITAL_CODES[marital])]}
    if relationship and head_name:
        res["contact"] = [{"relationship": [ig_concept("patient-contact-relationship", relationship)],
                           "name": {"family": head_name[0], "given": [head_name[1]]}}]
    if hf_id:
        res["generalPractitioner"] = [reference("Organization", hf_id)]
    return res


def group_resource(*, code: str, village_id: str, place: Place, member_ids: list[str], poverty: bool,
                   family_type: str, address_line: str | None = None,
                   confirmation: tuple[str, str] | None = None) -> dict[str, Any]:
    """An OpenIMISGroup (family); `code` is the head's insurance number, as openIMIS defaults it."""
    address = _address(village_id, place, use="home", line=address_line)
    exts: list[dict[str, Any]] = [
        ext("group-address", "valueAddress", address),
        ext("group-poverty-status", "valueBoolean", poverty),
        ext("group-type", "valueCodeableConcept", ig_concept("group-type", family_type)),
    ]
    if confirmation is not None:
        number, ctype = confirmation
        concept = ig_concept("group-confirmation-type", ctype)
        exts.append({"extension": [{"url": "number", "valueString": number},
                                   {"url": "type", "valueCodeableConcept": concept}],
                     "url": PROFILE_BASE + "group-confirmation"})
    return {
        "resourceType": "Group",
        "meta": _meta("openimis-group"),
        "extension": exts,
        "identifier": [_identifier("Code", code)],
        "type": "person",
        "actual": True,
        "quantity": len(member_ids),
        "member": [{"entity": reference("Patient", mid)} for mid in member_ids],
    }


# --- claim administrators and enrolment officers (Practitioner, PractitionerRole) ----------------------------


def _telecom(phone: str | None, email: str | None) -> list[dict[str, Any]]:
    return [{"system": s, "value": v} for s, v in (("phone", phone), ("email", email)) if v]


def _qualification(code: str) -> dict[str, Any]:
    return {"coding": [coding(CS + "practitioner-qualification-type", code, QUALIFICATIONS[code])]}


def practitioner_resource(qualification: str, code: str, last_name: str, other_names: str, dob: date, *,
                          phone: str | None = None, email: str | None = None, district_id: str | None = None,
                          place: Place | None = None, address_line: str | None = None) -> dict[str, Any]:
    """A claim administrator (`CA`) or an enrolment officer (`EO`, whose address is a district)."""
    profile = {"CA": "openimis-claim-administrator-practitioner",
               "EO": "openimis-enrolment-officer-practitioner"}[qualification]
    res: dict[str, Any] = {
        "resourceType": "Practitioner",
        "meta": _meta(profile),
        "identifier": [_identifier("Code", code)],
        "name": [{"use": "official", "family": last_name, "given": [other_names]}],
    }
    if telecom := _telecom(phone, email):
        res["telecom"] = telecom
    if district_id is not None and place is not None:
        res["address"] = [_address(district_id, place, line=address_line)]
    res["birthDate"] = dob.isoformat()
    res["qualification"] = [{"code": _qualification(qualification)}]
    return res


def claim_admin_role_resource(code: str, practitioner_id: str, hf_id: str, *,
                              phone: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "meta": _meta("openimis-claim-administrator-practitioner-role"),
        "identifier": [_identifier("Code", code)],
        "practitioner": reference("Practitioner", practitioner_id),
        "organization": reference("Organization", hf_id),
        "code": [_qualification("CA")],
    }
    if telecom := _telecom(phone, None):
        res["telecom"] = telecom
    return res


def officer_role_resource(code: str, practitioner_id: str, village_ids: list[str], *, works_to: date | None = None,
                          substitute_id: str | None = None, phone: str | None = None) -> dict[str, Any]:
    """An enrolment officer's villages; `works_to` (end of contract) with the officer who takes over."""
    res: dict[str, Any] = {"resourceType": "PractitionerRole",
                           "meta": _meta("openimis-enrolment-officer-practitioner-role")}
    if substitute_id is not None:
        res["extension"] = [ext("practitioner-role-substitution-reference", "valueReference",
                                reference("Practitioner", substitute_id))]
    res["identifier"] = [_identifier("Code", code)]
    if works_to is not None:
        res["period"] = {"end": works_to.isoformat()}
    res["practitioner"] = reference("Practitioner", practitioner_id)
    res["code"] = [_qualification("EO")]
    if village_ids:
        res["location"] = [reference("Location", vid) for vid in village_ids]
    if telecom := _telecom(phone, None):
        res["telecom"] = telecom
    return res


# --- medical items and services (Medication, ActivityDefinition) ---------------------------------------------


def _money(value: int | Decimal) -> dict[str, Any]:
    return {"value": int(value) if value == int(value) else float(value), "currency": CURRENCY}


def _usage_contexts(patient_category: int, care_type: str, category: str | None = None) -> list[tuple[str, Any]]:
    """(slice, UsageContext) pairs, built by the kinds' own renderer so that demo and API agree."""
    return render_contexts(patient_category, care_type, category)


def medication_resource(code: str, name: str, price: int | Decimal, *, item_type: str = "D", care_type: str = "O",
                        patient_category: int = 15, package: str | None = None,
                        frequency: int | None = None) -> dict[str, Any]:
    exts: list[dict[str, Any]] = [
        ext("unit-price", "valueMoney", _money(price)),
        ext("medication-type", "valueCodeableConcept", ig_concept("medication-item-type", item_type,
                                                                  ITEM_TYPES[item_type])),
    ]
    if frequency is not None:
        exts.append(ext("medication-frequency", "valueTiming",
                        {"repeat": {"frequency": 1, "period": frequency, "periodUnit": "d"}}))
    exts.append({"url": PROFILE_BASE + "medication-usage-context", "extension": [
        {"url": slice_name, "valueUsageContext": usage}
        for slice_name, usage in _usage_contexts(patient_category, care_type)]})
    res: dict[str, Any] = {
        "resourceType": "Medication",
        "meta": _meta("openimis-medication"),
        "extension": exts,
        "identifier": [_identifier("Code", code)],
        "code": {"text": name},
        "status": "active",
    }
    if package:
        res["form"] = {"text": package}
    return res


def activity_definition_resource(code: str, title: str, price: int | Decimal, *, service_type: str, level: str,
                                 care_type: str, category: str | None = None, patient_category: int = 15,
                                 frequency: int | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "ActivityDefinition",
        "meta": _meta("openimis-activitiy-definition"),  # sic: the IG's profile id
        "extension": [
            ext("unit-price", "valueMoney", _money(price)),
            ext("activity-definition-level", "valueCodeableConcept",
                ig_concept("activity-definition-level", level, SERVICE_LEVELS[level])),
        ],
        "identifier": [_identifier("Code", code)],
        "name": code,
        "title": title,
        "status": "active",
        "date": date.today().isoformat(),  # required by the profile; the server sets it to the version's day
        "useContext": [usage for _slice, usage in _usage_contexts(patient_category, care_type, category)],
        "topic": [ig_concept("activity-definition-service-type", service_type, SERVICE_TYPES[service_type])],
        "kind": "ServiceRequest",
    }
    if frequency is not None:
        res["timingTiming"] = {"repeat": {"frequency": 1, "period": frequency, "periodUnit": "d"}}
    return res


# --- products (InsurancePlan) --------------------------------------------------------------------------------

PLAN_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/insurance-plan-type"
HIFHIR_EXT = "https://hifhir.org/fhir/StructureDefinition/"
COST_TYPES = {"lumpsum": "Lumpsum", "premiumAdult": "Premium Adult", "premiumChild": "Premium Child",
              "registrationLumpsum": "Registration Lumpsum", "registrationFee": "Registration Fee",
              "generalAssemblyLumpSum": "General Assembly Lump Sum", "generalAssemblyFee": "General Assembly Fee"}
LIMIT_TYPES = {"period": "Period", "memberCount": "Member Count"}


@dataclass(frozen=True, slots=True)
class ProductSpec:
    """What a demo product states (domain §2.14); amounts in the scheme currency, periods in months."""

    code: str
    name: str
    lump_sum: int
    threshold: int
    member_count: int
    max_installments: int
    insurance_period: int = 12
    premium_adult: int | None = None
    premium_child: int | None = None
    registration_lump_sum: int | None = None
    general_assembly_lump_sum: int | None = None
    max_policy: int | None = None
    start_cycles: tuple[str, ...] = ()
    grace_period_payment: int | None = None
    ceiling_interpretation: str = "I"
    capitation_levels: tuple[str, ...] = ("D", "C")
    conversion: str | None = None  # code of the product replacing this one at renewal


def _cost(cost_type: str, value: int, group_size: int | None = None) -> dict[str, Any]:
    cost: dict[str, Any] = {"type": ig_concept("insurance-plan-general-cost-type", cost_type, COST_TYPES[cost_type])}
    if group_size is not None:
        cost["groupSize"] = group_size
    cost["cost"] = _money(value)
    return cost


def _limit(code: str, value: int, unit: str) -> dict[str, Any]:
    return {"code": ig_concept("insurance-plan-coverage-benefit-limit", code, LIMIT_TYPES[code]),
            "value": {"value": value, "unit": unit}}


def coverage_line(rtype: str, target_id: str) -> dict[str, Any]:
    """A coverage line as the demo products have them: scheme price, 100 % co-insurance, no waiting period."""
    return {"url": HIFHIR_EXT + "insurance-plan-coverage-line", "extension": [
        {"url": "provision", "valueReference": reference(rtype, target_id)},
        {"url": "priceOrigin", "valueCode": "P"},
        {"url": "limitationType", "valueCode": "C"},
        {"url": "limitAdult", "valueDecimal": 100},
        {"url": "limitChild", "valueDecimal": 100},
    ]}


def insurance_plan_resource(spec: ProductSpec, area_id: str | None, start: date, end: date, *,
                            conversion_id: str | None, item_ids: list[str],
                            service_ids: list[str]) -> dict[str, Any]:
    exts: list[dict[str, Any]] = [ext("insurance-plan-max-installments", "valueUnsignedInt", spec.max_installments)]
    if conversion_id is not None:
        exts.append(ext("insurance-plan-conversion", "valueReference", reference("InsurancePlan", conversion_id)))
    exts += [ext("insurance-plan-start-cycle", "valueString", cycle) for cycle in spec.start_cycles]
    if spec.grace_period_payment is not None:
        exts.append({"id": "gracePeriodPayment", **ext("insurance-plan-period", "valueQuantity",
                                                       {"value": spec.grace_period_payment, "unit": "months"})})
    ceilings: list[dict[str, Any]] = []
    if spec.max_policy is not None:
        ceilings.append({"url": "maxPolicy", "valueMoney": _money(spec.max_policy)})
    ceilings.append({"url": "ceilingInterpretation", "valueCode": spec.ceiling_interpretation})
    exts.append({"url": HIFHIR_EXT + "insurance-plan-ceilings", "extension": ceilings})
    exts.append({"url": HIFHIR_EXT + "insurance-plan-capitation", "extension": [
        {"url": f"level{i}", "valueCode": level} for i, level in enumerate(spec.capitation_levels, start=1)]})
    exts += [coverage_line("Medication", i) for i in item_ids]
    exts += [coverage_line("ActivityDefinition", s) for s in service_ids]
    costs = [_cost("lumpsum", spec.lump_sum, spec.threshold)]
    for cost_type, value in (("premiumAdult", spec.premium_adult), ("premiumChild", spec.premium_child),
                             ("registrationLumpsum", spec.registration_lump_sum),
                             ("generalAssemblyLumpSum", spec.general_assembly_lump_sum)):
        if value is not None:
            costs.append(_cost(cost_type, value))
    medical = {"coding": [coding(PLAN_TYPE_SYSTEM, "medical", "Medical")]}
    return {
        "resourceType": "InsurancePlan",
        "meta": _meta("openimis-insurance-plan"),
        "extension": exts,
        "identifier": [_identifier("Code", spec.code)],
        "status": "active",
        "type": [medical],
        "name": spec.name,
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "coverageArea": [reference("Location", area_id) if area_id is not None else {"display": "National"}],
        "coverage": [{"type": medical, "benefit": [{"type": medical, "limit": [
            _limit("period", spec.insurance_period, "month"), _limit("memberCount", spec.member_count, "member")]}]}],
        "plan": [{"generalCost": costs}],
    }


# --- enrolment (Contract) -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PremiumSpec:
    """One contribution as a point of service records it (the contract-premium extension)."""

    amount: Decimal
    receipt: str
    pay_date: date
    pay_type: str = "C"  # C cash | B bank transfer | M mobile phone
    payer: str | None = "beneficiary"


def premium_extension(p: PremiumSpec) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if p.payer:
        parts.append({"url": "payer", "valueCodeableConcept": ig_concept("contract-premium-payer", p.payer)})
    parts += [
        {"url": "category", "valueCodeableConcept": ig_concept("contract-premium-category", "C")},
        {"url": "amount", "valueMoney": _money(p.amount)},
        {"url": "receipt", "valueString": p.receipt},
        {"url": "date", "valueDate": p.pay_date.isoformat()},
        {"url": "type", "valueCodeableConcept": ig_concept("contract-premium-type", p.pay_type)},
    ]
    return {"url": EXT + "contract-premium", "extension": parts}


def contract_resource(*, family_id: str, head_id: str, member_ids: list[str], product_id: str, issued: date,
                      officer_id: str | None, premiums: list[PremiumSpec]) -> dict[str, Any]:
    """A family's enrolment as a point of service POSTs it (informal sector). The periods, net value and status
    the profile requires are placeholders: the server computes them (hifhir.fhir.profiles.contract)."""
    day = issued.isoformat()
    asset: dict[str, Any] = {}
    if premiums:
        asset["extension"] = [premium_extension(p) for p in premiums]
    asset.update({
        "typeReference": [reference("Patient", i) for i in member_ids],
        "period": [{"start": day, "end": day}],
        "usePeriod": [{"start": day, "end": day}],
        "valuedItem": [{"entityReference": reference("InsurancePlan", product_id),
                        "net": _money(sum((p.amount for p in premiums), Decimal(0)))}],
    })
    res: dict[str, Any] = {
        "resourceType": "Contract",
        "meta": _meta("openimis-contract"),
        "status": "offered",
        "issued": day,
        "subject": [reference("Group", family_id)],
    }
    if officer_id is not None:
        res["author"] = reference("Practitioner", officer_id)
    res["scope"] = ig_concept("contract-scope", "informal")
    res["term"] = [{
        "offer": {"party": [{"reference": [reference("Patient", head_id)],
                             "role": ig_concept("contract-resource-party-role", "beneficiary", "Beneficiary")}]},
        "asset": [asset],
    }]
    return res


@dataclass(frozen=True)
class ClaimLineSpec:
    """A claim line as a facility sends it: an item (Medication) or a service (ActivityDefinition), by id."""

    kind: str  # item | service
    target_id: str
    quantity: Decimal
    unit_price: Decimal


CLAIM_ITEM_CATEGORIES = {"item": "Item", "service": "Service"}
VISIT_TYPES = {"E": "Emergency", "R": "Referrals", "O": "Other"}


def claim_resource(*, code: str, patient_id: str, coverage_id: str, facility_id: str, claim_admin_id: str,
                   treated: date, claimed: date, diagnoses: list[str], lines: list[ClaimLineSpec],
                   visit_type: str = "O", discharged: date | None = None) -> dict[str, Any]:
    """A claim as a health facility's system POSTs it (OpenIMISClaim): the lines point at the priced item or
    service through the claim-item-reference extension; total = Σ quantity × unit price."""
    total = sum((line.quantity * line.unit_price for line in lines), Decimal(0))
    period = {"start": treated.isoformat()}
    if discharged is not None:
        period["end"] = discharged.isoformat()
    return {
        "resourceType": "Claim",
        "meta": _meta("openimis-claim"),
        "identifier": [_identifier("Code", code)],
        "status": "active",
        "type": {"coding": [coding(f"{CS}claim-visit-type", visit_type, VISIT_TYPES[visit_type])]},
        "use": "claim",
        "patient": reference("Patient", patient_id),
        "billablePeriod": period,
        "created": claimed.isoformat(),
        "enterer": reference("Practitioner", claim_admin_id),
        "provider": reference("Organization", facility_id),
        "priority": {"coding": [coding("http://terminology.hl7.org/CodeSystem/processpriority", "normal",
                                       "Normal")]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": reference("Coverage", coverage_id)}],
        "diagnosis": [{"sequence": i, "diagnosisCodeableConcept": {
            "coding": [{"system": f"{CS}diagnosis-ICD10-level1", "code": c}]}} for i, c in enumerate(diagnoses, 1)],
        "item": [{
            "extension": [ext("claim-item-reference", "valueReference",
                              reference("Medication" if line.kind == "item" else "ActivityDefinition",
                                        line.target_id))],
            "sequence": i,
            "category": {"coding": [coding(f"{CS}claim-item-category", line.kind,
                                           CLAIM_ITEM_CATEGORIES[line.kind])]},
            "productOrService": {"text": line.kind},
            "quantity": {"value": int(line.quantity) if line.quantity == int(line.quantity)
                         else float(line.quantity)},
            "unitPrice": _money(line.unit_price),
        } for i, line in enumerate(lines, 1)],
        "total": _money(total),
    }
