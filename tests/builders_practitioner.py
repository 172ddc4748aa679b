"""Builders for the claim administrator / enrolment officer Practitioner and PractitionerRole profiles."""

from __future__ import annotations

from typing import Any

from tests.builders import CS, EXT, PROFILE, ident

QUALIFICATION = {"CA": "Claim Administrator", "EO": "Enrolment Officer"}


def qualification(code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"{CS}practitioner-qualification-type", "code": code,
                        "display": QUALIFICATION[code]}]}


def _telecom(phone: str | None, email: str | None) -> list[dict[str, Any]]:
    return [t for t in ({"system": "phone", "value": phone} if phone else None,
                        {"system": "email", "value": email} if email else None) if t]


def _practitioner(profile: str, qual: str, code: str, family: str, given: str, birth_date: str,
                  phone: str | None, email: str | None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Practitioner",
        "meta": {"profile": [f"{PROFILE}{profile}"]},
        "identifier": [ident(code)],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "birthDate": birth_date,
        "qualification": [{"code": qualification(qual)}],
    }
    if telecom := _telecom(phone, email):
        res["telecom"] = telecom
    return res


def claim_admin(code: str, family: str = "Dani", given: str = "Rushila", *, birth_date: str = "1979-10-09",
                phone: str | None = None, email: str | None = None) -> dict[str, Any]:
    return _practitioner("openimis-claim-administrator-practitioner", "CA", code, family, given, birth_date,
                         phone, email)


def enrolment_officer(code: str, family: str = "Roberts", given: str = "Jeb", *, birth_date: str = "1980-01-15",
                      district_id: str | None = None, line: str | None = None, phone: str | None = None,
                      email: str | None = None) -> dict[str, Any]:
    res = _practitioner("openimis-enrolment-officer-practitioner", "EO", code, family, given, birth_date,
                        phone, email)
    if district_id is not None:
        address: dict[str, Any] = {
            "extension": [{"url": f"{EXT}address-location-reference",
                           "valueReference": {"reference": f"Location/{district_id}"}}],
            "type": "physical", "state": "x", "district": "x",  # names are derived from the location
        }
        if line:
            address["line"] = [line]
        res["address"] = [address]
    return res


def claim_admin_role(code: str, practitioner_id: str, hf_id: str, *, phone: str | None = None,
                     email: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "meta": {"profile": [f"{PROFILE}openimis-claim-administrator-practitioner-role"]},
        "identifier": [ident(code)],
        "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
        "organization": {"reference": f"Organization/{hf_id}"},
        "code": [qualification("CA")],
    }
    if telecom := _telecom(phone, email):
        res["telecom"] = telecom
    return res


def officer_role(code: str, practitioner_id: str, village_ids: list[str] | None = None, *,
                 works_to: str | None = None, substitute_id: str | None = None, phone: str | None = None,
                 email: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "meta": {"profile": [f"{PROFILE}openimis-enrolment-officer-practitioner-role"]},
        "identifier": [ident(code)],
        "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
        "code": [qualification("EO")],
    }
    if substitute_id is not None:
        res["extension"] = [{"url": f"{EXT}practitioner-role-substitution-reference",
                             "valueReference": {"reference": f"Practitioner/{substitute_id}"}}]
    if works_to is not None:
        res["period"] = {"end": works_to}
    if village_ids:
        res["location"] = [{"reference": f"Location/{v}"} for v in village_ids]
    if telecom := _telecom(phone, email):
        res["telecom"] = telecom
    return res
