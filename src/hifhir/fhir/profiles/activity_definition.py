"""OpenIMISActivityDefinition ↔ medical service (IG §1b row 12; domain §2.12).

The profile id keeps the IG's typo, `openimis-activitiy-definition`: that is the canonical clients send.

Mapping:
* identifier[Code] and `name` ↔ `code`: both carry the service code (the IG requires both), so they must be
  equal (422 otherwise); unique among current services (409). `title` ↔ `name`.
* `status` is always `active`, `kind` always `ServiceRequest`.
* `date` ("date last changed") is the day of the version, i.e. of meta.lastUpdated: openIMIS's ValidityFrom is
  likewise reset by every change, and the schema keeps no other date. A date sent by a client is not stored.
* `useContext`: Gender/Age ↔ the `patient_category` bitmask, Category (workflow S/C/D/A/O) ↔ `category`,
  CareType (venue AMB/IMP, both = B) ↔ `care_type` (see medication.py for the shared rules).
* `topic` (C curative / P preventive) ↔ `service_type` (required), `timingTiming.repeat.period` (days) ↔
  `frequency`, extension unit-price ↔ `price`, activity-definition-level (S/V/D/H) ↔ `level`: 0..1 in the IG
  but NOT NULL in openIMIS, so an absent level is `S` (simple service) on create and kept on update.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, func, select

from hifhir.fhir.elements import coding, ext, extension, first_coding, identifier_value, identifiers
from hifhir.fhir.kind import CS, ResourceKind, WriteContext, instant, require
from hifhir.fhir.profiles.common import resolve_new_id, uuid_for_update, uuid_of
from hifhir.fhir.profiles.medication import (
    active_status_param,
    checked_text,
    context_param,
    frequency_of,
    money,
    parse_money,
    read_contexts,
    refuse_if_covered,
    render_contexts,
    timing,
)
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import SortKey, normalise_text, string_param, token_param
from hifhir.store.tables import medical_service, product_service

SERVICE_TYPES = {"C": "Curative", "P": "Preventive"}
SERVICE_TYPE_SYSTEM = CS + "activity-definition-service-type"
LEVELS = {"S": "Simple Service", "V": "Visit", "D": "Day of stay", "H": "Hospital case"}
LEVEL_SYSTEM = CS + "activity-definition-level"
DEFAULT_LEVEL = "S"


class ActivityDefinitionKind(ResourceKind):
    resource_type = "ActivityDefinition"
    name = "activity-definition"
    profile_id = "openimis-activitiy-definition"
    table = medical_service

    def __init__(self) -> None:
        t = medical_service
        self.search_params = {
            **common_params(self),
            "code": token_param("code", t.c.code, doc="Service code"),
            # ActivityDefinition.name holds the service code (a computer-friendly name), title the service name.
            "name": string_param("name", func.lower(t.c.code), raw_columns=(t.c.code,),
                                 doc="Service code (ActivityDefinition.name)"),
            "title": string_param("title", t.c.name_norm, raw_columns=(t.c.name,), doc="Service name"),
            "status": active_status_param("http://hl7.org/fhir/publication-status"),
            "topic": token_param("topic", t.c.service_type, codes={c: c for c in SERVICE_TYPES},
                                 systems=frozenset({SERVICE_TYPE_SYSTEM}),
                                 doc="Service type: C curative, P preventive"),
            "context": context_param(t, workflow=True),
        }
        self.sort_params = {**common_sorts(self), "code": SortKey(t.c.code), "name": SortKey(t.c.code),
                            "title": SortKey(t.c.name_norm)}

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for row in conn.execute(select(medical_service).where(medical_service.c.pk.in_(pks))):
            exts = [ext("unit-price", "valueMoney", money(row.price))]
            if row.level:
                exts.append(ext("activity-definition-level", "valueCodeableConcept", {"coding": [
                    coding(LEVEL_SYSTEM, row.level, LEVELS.get(row.level))]}))
            res: dict[str, Any] = {
                "extension": exts,
                "identifier": identifiers(row.code, uuid_of(row)),
                "name": row.code,
                "title": row.name,
                "status": "active",
                "date": instant(row.last_updated)[:10],
                "useContext": [usage for _slice, usage in render_contexts(
                    row.patient_category, row.care_type, row.category)],
                "topic": [{"coding": [coding(SERVICE_TYPE_SYSTEM, row.service_type,
                                             SERVICE_TYPES.get(row.service_type))]}],
                "kind": "ServiceRequest",
            }
            if row.frequency is not None:
                res["timingTiming"] = timing(row.frequency)
            out[row.pk] = res
        return out

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        rtype = "ActivityDefinition"
        code = str(checked_text(identifier_value(resource, "Code"), 16, "The service code (identifier Code)",
                                f"{rtype}.identifier"))
        require(resource.get("name") in (None, code), "name is the service code: it must equal identifier[Code]",
                f"{rtype}.name")
        ctx.expect_unique(medical_service, "code", code, "Medical service code", f"{rtype}.identifier")
        name = str(checked_text(resource.get("title"), 100, "The service name (title)", f"{rtype}.title"))
        price_ext = extension(resource, "unit-price")
        price = parse_money((price_ext or {}).get("valueMoney"), "The unit price",
                            f"{rtype}.extension[unitPrice].valueMoney")
        topics = resource.get("topic") or []
        topic = first_coding(topics[0]) if topics else None
        service_type = (topic or {}).get("code")
        require(len(topics) <= 1 and service_type in SERVICE_TYPES,
                "One topic is required: the service type C (curative) or P (preventive)", f"{rtype}.topic")
        level_ext = extension(resource, "activity-definition-level")
        level = (first_coding((level_ext or {}).get("valueCodeableConcept")) or {}).get("code")
        require(level is None or level in LEVELS, "The level (activity-definition-level) is S, V, D or H",
                f"{rtype}.extension[level]")
        if level is None:
            level = current.level if current is not None else DEFAULT_LEVEL
        contexts = [(u.get("code"), u.get("valueCodeableConcept"), f"{rtype}.useContext[{i}]")
                    for i, u in enumerate(resource.get("useContext") or ())]
        patient_category, care_type, category = read_contexts(contexts, workflow=True)
        require(care_type is not None, "The care type (useContext venue AMB/IMP) is required",
                f"{rtype}.useContext")
        values: dict[str, Any] = {
            "code": code, "name": name, "name_norm": normalise_text(name)[:100], "price": price,
            "care_type": care_type, "patient_category": patient_category, "category": category,
            "frequency": frequency_of(resource.get("timingTiming"), f"{rtype}.timingTiming"),
            "service_type": service_type, "level": level,
        }
        if current is None:
            values["id"], values["uuid"] = resolve_new_id(ctx, resource, medical_service)
            return ctx.insert(medical_service, values)
        values["uuid"] = uuid_for_update(ctx, resource, medical_service, current)
        ctx.update(medical_service, current.pk, values)
        return int(current.pk)

    def delete(self, ctx: WriteContext, current: Row) -> None:
        refuse_if_covered(ctx.conn, product_service, "service_pk", current.pk, f"Medical service {current.code}")
