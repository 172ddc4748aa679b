"""Builders for valid IG resources, so tests state only what they are about."""

from __future__ import annotations

from typing import Any

IG = "https://openimis.github.io/openimis_fhir_r4_ig"
EXT = f"{IG}/StructureDefinition/"
CS = f"{IG}/CodeSystem/"
PROFILE = EXT
ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"


def ident(code: str, type_code: str = "Code") -> dict[str, Any]:
    return {"type": {"coding": [{"system": f"{CS}openimis-identifiers", "code": type_code}]}, "value": code}


def location(code: str, name: str, level: str, parent_id: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Location",
        "meta": {"profile": [f"{PROFILE}openimis-location"]},
        "identifier": [ident(code)],
        "status": "active",
        "name": name,
        "mode": "instance",
        "physicalType": {"coding": [{"system": f"{CS}location-type", "code": level}]},
    }
    if parent_id:
        res["partOf"] = {"reference": f"Location/{parent_id}"}
    return res


def patient(code: str, family: str, given: str, village_id: str, *, gender: str = "female",
            birth_date: str = "1990-01-01", head: bool = False, group_id: str | None = None,
            phone: str | None = None, email: str | None = None) -> dict[str, Any]:
    exts: list[dict[str, Any]] = [{"url": f"{EXT}patient-is-head", "valueBoolean": head}]
    if group_id:
        exts.append({"url": f"{EXT}patient-group-reference", "valueReference": {"reference": f"Group/{group_id}"}})
    res: dict[str, Any] = {
        "resourceType": "Patient",
        "meta": {"profile": [f"{PROFILE}openimis-patient"]},
        "extension": exts,
        "identifier": [ident(code)],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth_date,
        "address": [{
            "extension": [
                {"url": f"{EXT}address-municipality", "valueString": "Ward"},
                {"url": f"{EXT}address-location-reference", "valueReference": {"reference": f"Location/{village_id}"}},
            ],
            "use": "home", "type": "physical", "state": "Region", "district": "District", "city": "Village",
        }],
    }
    telecom = [t for t in ({"system": "phone", "value": phone} if phone else None,
                           {"system": "email", "value": email} if email else None) if t]
    if telecom:
        res["telecom"] = telecom
    return res


def group(code: str | None, member_ids: list[str], village_id: str) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Group",
        "meta": {"profile": [f"{PROFILE}openimis-group"]},
        "extension": [{"url": f"{EXT}group-address", "valueAddress": {"extension": [
            {"url": f"{EXT}address-location-reference", "valueReference": {"reference": f"Location/{village_id}"}}]}}],
        "identifier": [ident(code)] if code else [],
        "type": "person",
        "actual": True,
        "quantity": len(member_ids),
        "member": [{"entity": {"reference": f"Patient/{m}"}} for m in member_ids],
    }
    if not code:
        del res["identifier"]
    return res


def health_facility(code: str, district_id: str, *, state: str = "Ultha", district: str = "Rapta") -> dict[str, Any]:
    """A health facility (Organization type prov) in a district; address names are derived by the server."""
    return {
        "resourceType": "Organization",
        "meta": {"profile": [f"{PROFILE}openimis-health-facility-organization"]},
        "extension": [{"url": f"{EXT}organization-hf-care-type", "valueCodeableConcept": {
            "coding": [{"system": f"{CS}organization-hf-care-type", "code": "B"}]}}],
        "identifier": [ident(code)],
        "type": [{"coding": [{"system": ORG_TYPE, "code": "prov"}]}],
        "name": f"Facility {code}",
        "address": [{"extension": [{"url": f"{EXT}address-location-reference",
                                    "valueReference": {"reference": f"Location/{district_id}"}}],
                     "type": "physical", "state": state, "district": district}],
    }
