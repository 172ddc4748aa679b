"""FHIR resource builders for the demo data: the same JSON an openIMIS client would POST.

The demo scheme goes through the kinds' `write()`, so these dicts follow the IG profiles (tests validate them
against the profiles) and the IG examples in tests/fixtures/ig_examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from hifhir.fhir.elements import coding, ext, ig_concept, reference
from hifhir.fhir.kind import CS, IDENTIFIER_SYSTEM, PROFILE_BASE

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
