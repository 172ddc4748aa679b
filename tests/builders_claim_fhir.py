"""Builders for FHIR Claims as health facilities send them (IG row 14, reference §3.3): a Claim with its lines,
diagnoses, supporting info and attachments, optionally carrying its Patient, Organization, Practitioner, Medication
and ActivityDefinition as contained resources (claim-AI).

`claim(...)` gives a valid OpenIMISClaim; tests then state only what they change. References are passed as
`Type/id` strings (or whole Reference objects for logical and contained ones).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from tests.builders import CS, EXT, PROFILE, ident

CLAIM_PROFILE = f"{PROFILE}openimis-claim"
ITEM_REFERENCE = f"{EXT}claim-item-reference"
CATEGORY_DISPLAYS = {"item": "Item", "service": "Service"}
VISIT_DISPLAYS = {"E": "Emergency", "R": "Referrals", "O": "Other"}


@dataclass(frozen=True)
class FhirLine:
    """One Claim.item: `kind` item (→ Medication) or service (→ ActivityDefinition), the reference to it."""

    kind: str
    ref: str | dict[str, Any]
    qty: Any = 1
    price: Any = 10
    sequence: int | None = None


def item(ref: str | dict[str, Any], qty: Any = 1, price: Any = 10, sequence: int | None = None) -> FhirLine:
    return FhirLine("item", ref, qty, price, sequence)


def service(ref: str | dict[str, Any], qty: Any = 1, price: Any = 40, sequence: int | None = None) -> FhirLine:
    return FhirLine("service", ref, qty, price, sequence)


def as_reference(ref: str | dict[str, Any]) -> dict[str, Any]:
    return {"reference": ref} if isinstance(ref, str) else ref


def logical(rtype: str, value: str, type_code: str = "Code") -> dict[str, Any]:
    """A logical reference by identifier, as the openIMIS clients send them."""
    return {"type": rtype, "identifier": ident(value, type_code)}


def _number(value: Any) -> Any:
    """A JSON number for an amount given as int, Decimal or numeric string (other strings pass unchanged, to
    test non-numeric input)."""
    if isinstance(value, str):
        try:
            value = Decimal(value)
        except ArithmeticError:
            return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _line(line: FhirLine, sequence: int) -> dict[str, Any]:
    return {
        "extension": [{"url": ITEM_REFERENCE, "valueReference": as_reference(line.ref)}],
        "sequence": line.sequence or sequence,
        "category": {"coding": [{"system": f"{CS}claim-item-category", "code": line.kind,
                                 "display": CATEGORY_DISPLAYS[line.kind]}]},
        "productOrService": {"text": "whatever the client calls it"},
        "quantity": {"value": _number(line.qty)},
        "unitPrice": {"value": _number(line.price), "currency": "EUR"},
    }


def supporting(category: str, sequence: int, **value: Any) -> dict[str, Any]:
    return {"sequence": sequence,
            "category": {"coding": [{"system": f"{CS}claim-supporting-info-category", "code": category}]},
            **value}


def attachment(data: bytes, sequence: int, *, title: str | None = "scan.pdf",
               content_type: str | None = "application/pdf", hash_form: str | None = "fhir",
               creation: str | None = None) -> dict[str, Any]:
    """supportingInfo:attachment. `hash_form`: fhir (base64 of the SHA-1 of the bytes), hex (its hex digits),
    reference (the openIMIS module's SHA-1 of the base64 text), wrong, or None (no hash)."""
    text = base64.b64encode(data).decode()
    att: dict[str, Any] = {"data": text}
    if content_type:
        att["contentType"] = content_type
    if title:
        att["title"] = title
    if creation:
        att["creation"] = creation
    if hash_form == "fhir":
        att["hash"] = base64.b64encode(hashlib.sha1(data).digest()).decode()
    elif hash_form == "hex":
        att["hash"] = hashlib.sha1(data).hexdigest()
    elif hash_form == "reference":
        att["hash"] = hashlib.sha1(text.encode()).hexdigest()
    elif hash_form == "wrong":
        att["hash"] = base64.b64encode(hashlib.sha1(data + b"x").digest()).decode()
    return supporting("attachment", sequence, valueAttachment=att)


def diagnosis(code: str, sequence: int) -> dict[str, Any]:
    return {"sequence": sequence, "diagnosisCodeableConcept": {"coding": [
        {"system": f"{CS}diagnosis-ICD10-level1", "code": code}]}}


def claim(code: str, patient: str | dict[str, Any], provider: str | dict[str, Any],
          enterer: str | dict[str, Any], *, coverage: str | dict[str, Any] | None, lines: Sequence[FhirLine],
          diagnoses: Sequence[str] = ("A00",), visit_type: str = "O", start: date | None = None,
          end: date | None = None, created: date | None = None, total: Any = None,
          explanation: str | None = None, guarantee: str | None = None,
          attachments: Sequence[dict[str, Any]] = (), claim_uuid: str | None = None,
          contained: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """A valid OpenIMISClaim. Defaults: treated yesterday (single day), claimed today, total = Σ qty × price."""
    start = start or date.today() - timedelta(days=1)
    total = total if total is not None else sum(
        (Decimal(str(line.qty)) * Decimal(str(line.price)) for line in lines), Decimal(0))
    identifiers = [ident(code)] + ([ident(claim_uuid, "UUID")] if claim_uuid else [])
    res: dict[str, Any] = {
        "resourceType": "Claim",
        "meta": {"profile": [CLAIM_PROFILE]},
        "identifier": identifiers,
        "status": "active",
        "type": {"coding": [{"system": f"{CS}claim-visit-type", "code": visit_type,
                             "display": VISIT_DISPLAYS.get(visit_type, "?")}]},
        "use": "claim",
        "patient": as_reference(patient),
        "billablePeriod": {"start": start.isoformat(), **({"end": end.isoformat()} if end else {})},
        "created": (created or date.today()).isoformat(),
        "enterer": as_reference(enterer),
        "provider": as_reference(provider),
        "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority",
                                 "code": "normal", "display": "Normal"}]},
        "diagnosis": [diagnosis(c, i) for i, c in enumerate(diagnoses, start=1)],
        "item": [_line(line, i) for i, line in enumerate(lines, start=1)],
        "total": {"value": _number(total), "currency": "EUR"},
    }
    if coverage is not None:
        res["insurance"] = [{"sequence": 1, "focal": True, "coverage": as_reference(coverage)}]
    info = []
    if explanation is not None:
        info.append(supporting("explanation", 1, valueString=explanation))
    if guarantee is not None:
        info.append(supporting("guarantee", 2, valueString=guarantee))
    info.extend(attachments)
    if info:
        res["supportingInfo"] = info
    if contained:
        res["contained"] = list(contained)
    return res


def contained(rtype: str, local_id: str, *, code: str | None = None, uuid: str | None = None,
              **extra: Any) -> dict[str, Any]:
    """A contained resource carrying only what matching needs (its identifiers), plus `extra` elements."""
    idents = ([ident(code)] if code else []) + ([ident(uuid, "UUID")] if uuid else [])
    res: dict[str, Any] = {"resourceType": rtype, "id": local_id, **extra}
    if idents:
        res["identifier"] = idents
    return res
