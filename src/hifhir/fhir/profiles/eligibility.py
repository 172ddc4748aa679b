"""OpenIMISCoverageEligibilityRequest → OpenIMISCoverageEligibilityResponse (IG rows 17–18, domain §3.2).

`POST CoverageEligibilityRequest` is the IG's RPC: it answers **200 with the CoverageEligibilityResponse**. Both
resources are stored in the same transaction (each with its history) and stay readable and searchable afterwards,
under the same id (FHIR ids are per type): the request at CoverageEligibilityRequest/<its identifier[UUID]>, the
response at CoverageEligibilityResponse/<the same UUID>, its identifier[UUID] echoing the request's. Both are
immutable records of what was asked and answered on that day: the request cannot be updated or deleted, the
response is read-only.

Request:
* `patient`: `Patient/<id>` or — as the reference's clients send it — `Patient/<insurance number>` (the id is tried
  first, then the CHFID), or a logical reference by identifier; no current insuree → 422. The stored request
  names the insuree by its id.
* `insurer`: the insurer Organization (server configuration); anything else → 422.
* `item`: at most one `item` and one `service` (closed slices on category.coding.code), the code in
  productOrService.text.

Response (profile row 18), computed by `domain.eligibility.evaluate` as of the server's date:
* status `active`, purpose `benefits`, outcome `complete` (fixed by the profile: the enquiry itself completed),
  created = the evaluation date, request → the stored request, insurer → the insurer Organization.
* One `insurance` per active policy of the insuree (Active, not expired, member effective): coverage →
  Coverage/<the policy's Coverage id>, benefitPeriod = the member's effective..expiry dates. **No active policy →
  no `insurance` at all**: the profile forbids `disposition` and `error`, so the absence of insurance is the
  answer "not covered"; the requested items/services then have no line to be reported on.
* `item:benefit` (always): name = product code, description = product name, benefits:
  `*_left` (allowedUnsignedInt) for each claim category whose product maximum is set — **zero included**, absent
  = unlimited; `*_amount` (allowedMoney) for each category maximum amount set (zero included); then the
  deductibles and ceilings left: `total_deduction` / `hospital_deduction` / `non_hospital_deduction` and
  `total_ceiling` / `hospital_ceiling` / `non_hospital_ceiling` for each family the product defines (general,
  in-patient, out-patient; zero included). The IG caps that benefit list at 11 with 5 amounts and leaves
  total_deduction/total_ceiling out of its amount ValueSet although its CodeSystem defines them;
  `validation/corrections.py` lifts both (ig/README.md §3b).
* `item:item` / `item:service` for each requested item and service: productOrService.text = the code,
  `excluded` = not covered today, benefits `min_date_item` (allowedString, the earliest date of coverage) and
  `item_left` (allowedUnsignedInt, quantity left; absent = unlimited). The IG names both benefit codes "item"
  for either line; the values are the item's on the item line and the service's on the service line (the
  reference converter swaps them, domain §3.2.2). An excluded line says why in `description`: unknown code,
  not covered by the product, waiting period, quantity limit, category maximum.
* ces-1 (ig/README.md §9.4): the item/service lines carry both `category` and `productOrService`, as the IG
  profile requires; base invariant ces-1 (one or the other) is not enforced on those two slices
  (`validation/corrections.py` SKIPPED_CONSTRAINTS). Dropping the category would lose the slice discriminator
  that tells an item from a service with the same code; R5's `billcode` slice is the eventual fix.

Rights (auth/matrix.py): 101201 (Policy search, which openIMIS also uses for eligibility, domain §4.5) or the
Insuree "enquire" right 101105 (the Manager's, domain §4.4) for create and read.

Speed: an enquiry costs a handful of indexed queries (see `domain/eligibility.py`), run by `read_ahead` — on
SQLite before the writer lock is taken; the lock then covers one insert into the shared `eligibility_enquiry` row
and the two history rows. The response is rendered once, in `write`, and handed to the flush.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Row, bindparam, select

from hifhir.auth import scope as location_scope
from hifhir.domain.eligibility import (
    Balance,
    Eligibility,
    LineCoverage,
    PolicyEligibility,
    evaluate,
    evaluate_reference,
)
from hifhir.fhir.elements import CS, first_code, identifier_value, identifiers, reference
from hifhir.fhir.errors import FhirError
from hifhir.fhir.kind import KeyedInsert, ResourceKind, WriteContext, require
from hifhir.fhir.profiles.common import is_uuid, resolve_new_id, stored_bodies
from hifhir.fhir.profiles.medication import money
from hifhir.fhir.profiles.organization import is_current_insurer
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import SortKey, column_ref, date_param, reference_param
from hifhir.store.tables import (
    eligibility_enquiry,
    insuree,
    insurer_org,
)

REQUEST = "CoverageEligibilityRequest"
RESPONSE = "CoverageEligibilityResponse"
ITEM_CATEGORY = CS + "coverage-item-category"
BENEFIT_TYPE = CS + "coverage-item-benefit-type"
CATEGORY_DISPLAYS = {"item": "Item", "service": "Service", "benefit": "Benefit Package"}

# Claim category → benefit type code (the CodeSystem's order); the displays are the CodeSystem's.
TOTAL_CODES = {"H": "admissions_left", "V": "visits_left", "C": "consultations_left", "S": "surgeries_left",
               "D": "deliveries_left", "A": "antenatal_left"}
AMOUNT_CODES = {"C": "consultation_amount", "S": "surgery_amount", "D": "delivery_amount",
                "H": "hospitalization_amount", "A": "antenatal_amount"}
DEDUCTION_CODES = {"general": "total_deduction", "ip": "hospital_deduction", "op": "non_hospital_deduction"}
CEILING_CODES = {"general": "total_ceiling", "ip": "hospital_ceiling", "op": "non_hospital_ceiling"}
MIN_DATE, ITEM_LEFT = ("min_date_item", "Mininum date"), ("item_left", "Items left")  # sic, the IG's displays


def _render(conn: Connection, kind: ResourceKind, pks: list[int]) -> dict[int, dict[str, Any]]:
    # The creating write hands its bodies to the flush (WriteContext.prerendered); a render outside it (e.g. a
    # re-render of every kind) can only repeat the stored version of these immutable resources.
    out: dict[int, dict[str, Any]] = {}
    missing = list(pks)
    if missing:
        found = stored_bodies(conn, kind, missing)
        if len(found) < len(missing):
            raise RuntimeError(f"{kind.resource_type}: {len(missing) - len(found)} enquiries have no stored version")
        out.update(found)
    return out


def _immutable(what: str) -> FhirError:
    return FhirError.one(405, "not-supported", f"{what}; POST a new CoverageEligibilityRequest instead")


# --- the request ---------------------------------------------------------------------------------------------

# The enquiry's statements run at the driver level (store.fast.DriverQuery): on SQLite the whole write runs
# inside the cross-process writer lock, where SQLAlchemy's per-statement overhead limits the enquiries per second.
_INSUREE_ID = select(insuree.c.id).where(insuree.c.pk == bindparam("pk"))
_INSURER_ID = select(insurer_org.c.id).where(insurer_org.c.pk == bindparam("pk"))


_ENQUIRY_COLUMNS = ("id", "uuid", "insuree_pk", "created", "answered", "version_id", "last_updated")
# PostgreSQL: with its key drawn beforehand, the insert waits for the COMMIT's round trip.
_INSERT_ENQUIRY = KeyedInsert(eligibility_enquiry, _ENQUIRY_COLUMNS)


def _insert(ctx: WriteContext, values: dict[str, Any]) -> int:
    """`ctx.insert` (a new entity at version 1, registered for the flush) at the driver level. The one unique key a
    client can collide with is the request's id (its UUID): that violation is a 409 naming the identifier —
    raised here on SQLite, by the COMMIT on PostgreSQL (`WriteContext.expect_unique`)."""
    row = {**values, "version_id": 1, "last_updated": ctx.now}
    ctx.expect_unique(eligibility_enquiry, "id", values["id"], "identifier[UUID]", f"{REQUEST}.identifier")
    return _INSERT_ENQUIRY.insert(ctx, row)


@dataclass(frozen=True, slots=True)
class Enquiry:
    """An evaluated enquiry, ready to be stored."""

    insuree_pk: int
    patient_id: str
    insurer_id: str
    result: Eligibility


class EligibilityRequestKind(ResourceKind):
    resource_type = REQUEST
    name = "eligibility-request"
    profile_id = "openimis-coverage-eligibility-request"
    table = eligibility_enquiry
    scope = location_scope.ENQUIRY
    code_column = None
    updatable = deletable = False  # the record of an enquiry, answered once

    def __init__(self) -> None:
        t = eligibility_enquiry
        self.search_params = {
            **common_params(self),
            "patient": reference_param("patient", "Patient", column_ref(t.c.insuree_pk, "patient"),
                                       doc="The insuree the enquiry is about"),
            "created": date_param("created", t.c.created, "The date the enquiry was created"),
        }
        self.sort_params = {**common_sorts(self), "created": SortKey(t.c.created, "date")}

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        return _render(conn, self, pks)

    reads_ahead = True

    def read_ahead(self, ctx: WriteContext, resource: dict[str, Any]) -> Enquiry:
        """The insuree, the insurer and the evaluation: everything but the two inserts (an enquiry is answered
        as of the moment it is evaluated; on SQLite that runs outside the writer lock)."""
        items, services = _requested(resource)
        insurer_id = _insurer(ctx, resource.get("insurer"))
        today = date.today()
        patient = resource.get("patient")
        literal = _patient_literal(patient)
        if literal is None:  # a logical reference, by identifier
            insuree_pk, patient_id = _patient_by_identifier(ctx, patient)
            result = evaluate(ctx.conn, insuree_pk, today, items=items, services=services)
        else:
            found = evaluate_reference(ctx.conn, literal, today, items=items, services=services)
            require(found is not None, f"No current insuree has the id or insurance number {literal}",
                    f"{REQUEST}.patient")
            assert found is not None
            insuree_pk, patient_id, result = found
        return Enquiry(insuree_pk, patient_id, insurer_id, result)

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        if current is not None or ctx.id_from_client:
            raise _immutable("An eligibility request is answered once, at its creation (POST); it cannot be "
                             "created or changed by PUT")
        request_id, request_uuid = self._new_id(ctx, resource)
        enquiry = ctx.read_ahead if isinstance(ctx.read_ahead, Enquiry) else self.read_ahead(ctx, resource)
        today = enquiry.result.today
        pk = _insert(ctx, {"id": request_id, "uuid": request_id, "insuree_pk": enquiry.insuree_pk,
                           "created": _created_date(resource.get("created"), today), "answered": today})
        stored = {k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")}
        stored["patient"] = reference("Patient", enquiry.patient_id)  # an insurance number becomes the id
        stored["insurer"] = reference("Organization", enquiry.insurer_id)
        # The requested codes and the evaluation are not columns: the bodies built here are what flush stores.
        ctx.prerendered[(self.name, pk)] = stored
        ctx.prerendered[(RESPONSE_KIND, pk)] = response_body(
            enquiry.result, request_uuid=request_uuid or request_id, patient_id=enquiry.patient_id,
            request_id=request_id, insurer_id=enquiry.insurer_id)
        ctx.mark(RESPONSE_KIND, pk)
        ctx.answers[(self.name, pk)] = (RESPONSE_KIND, pk)
        return pk

    @staticmethod
    def _new_id(ctx: WriteContext, resource: dict[str, Any]) -> tuple[str, str | None]:
        """The request's UUID (IG: generated by the external system) is its id; a reused one is left to the unique
        index on the id (one statement less than a lookup first; `_insert` turns the violation into the 409)."""
        client_uuid = identifier_value(resource, "UUID")
        if client_uuid is None:
            return resolve_new_id(ctx, resource, eligibility_enquiry)
        require(is_uuid(client_uuid), "identifier[UUID] must be a UUID", "CoverageEligibilityRequest.identifier")
        return client_uuid, client_uuid

    def delete(self, ctx: WriteContext, current: Row) -> None:
        raise _immutable("An eligibility request is a record of an enquiry; it cannot be deleted")


def _patient_literal(ref: Any) -> str | None:
    """The <id or insurance number> of a `Patient/<…>` reference; None for a logical reference (by identifier)."""
    from hifhir.fhir.registry import parse_reference  # the registry imports this module

    literal = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(literal, str):
        return None
    parsed = parse_reference(literal)
    require(parsed is not None and parsed[0] == "Patient",
            "patient must be Patient/<id> or Patient/<insurance number>", f"{REQUEST}.patient")
    assert parsed is not None
    return parsed[1]


def _patient_by_identifier(ctx: WriteContext, ref: Any) -> tuple[int, str]:
    _, pk = ctx.resolve(ref, ["Patient"], f"{REQUEST}.patient")
    return pk, str(ctx.conn.execute(_INSUREE_ID, {"pk": pk}).scalar_one())


def _insurer(ctx: WriteContext, ref: Any) -> str:
    from hifhir.fhir.registry import parse_reference

    expression = f"{REQUEST}.insurer"
    literal = ref.get("reference") if isinstance(ref, dict) else None
    parsed = parse_reference(literal) if isinstance(literal, str) else None
    if parsed is not None and parsed[0] == "Organization" and is_current_insurer(ctx.conn, parsed[1]):
        return parsed[1]
    _, pk = ctx.resolve(ref, ["Organization"], expression, kinds=["insurer"])
    return str(ctx.conn.execute(_INSURER_ID, {"pk": pk}).scalar_one())


def _requested(resource: dict[str, Any]) -> tuple[list[str], list[str]]:
    items: list[str] = []
    services: list[str] = []
    for i, line in enumerate(resource.get("item") or ()):
        expression = f"{REQUEST}.item[{i}]"
        category = first_code(line.get("category"))
        require(category in ("item", "service"), "item.category is `item` or `service`", f"{expression}.category")
        code = ((line.get("productOrService") or {}).get("text") or "").strip()
        require(bool(code), "productOrService.text carries the item or service code",
                f"{expression}.productOrService.text")
        (items if category == "item" else services).append(code)
    return items, services


def _created_date(value: Any, today: date) -> date:
    """The request's own date (dateTime: its date part as written); a partial date counts as today."""
    if isinstance(value, str) and len(value) >= 10:
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            pass
    return today


# --- the response ----------------------------------------------------------------------------------------------

RESPONSE_KIND = "eligibility-response"


class EligibilityResponseKind(ResourceKind):
    resource_type = RESPONSE
    name = RESPONSE_KIND
    profile_id = "openimis-coverage-eligibility-response"
    table = eligibility_enquiry  # the request's row: same pk, same id
    scope = location_scope.ENQUIRY
    code_column = None
    writable = False  # written only as the answer to a CoverageEligibilityRequest

    def __init__(self) -> None:
        t = eligibility_enquiry
        self.search_params = {
            **common_params(self),
            "patient": reference_param("patient", "Patient", column_ref(t.c.insuree_pk, "patient"),
                                       doc="The insuree the enquiry was about"),
            "request": reference_param("request", REQUEST, column_ref(t.c.pk, "eligibility-request"),
                                       doc="The CoverageEligibilityRequest answered"),
            "created": date_param("created", t.c.answered, "The date of the evaluation"),
        }
        self.sort_params = {**common_sorts(self), "created": SortKey(t.c.answered, "date")}

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        return _render(conn, self, pks)

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        raise _immutable("A CoverageEligibilityResponse is the server's answer to a request")


def response_body(result: Eligibility, *, request_uuid: str, patient_id: str, request_id: str,
                  insurer_id: str) -> dict[str, Any]:
    """The CoverageEligibilityResponse (without resourceType, id and meta) for an evaluated enquiry."""
    body: dict[str, Any] = {
        "identifier": identifiers(None, request_uuid),
        "status": "active",
        "purpose": ["benefits"],
        "patient": reference("Patient", patient_id),
        "created": result.today.isoformat(),
        "request": reference(REQUEST, request_id),
        "outcome": "complete",
        "insurer": reference("Organization", insurer_id),
    }
    if result.policies:
        body["insurance"] = [_insurance(p) for p in result.policies]
    return body


def _benefit_type(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": BENEFIT_TYPE, "code": code, "display": display}]}


# Built once and shared by every response body (serialised, never mutated).
_CATEGORIES = {code: {"coding": [{"system": ITEM_CATEGORY, "code": code, "display": display}]}
               for code, display in CATEGORY_DISPLAYS.items()}
_TOTAL_TYPES = {category: _benefit_type(code, "total_" + code.removesuffix("_left"))
                for category, code in TOTAL_CODES.items()}
_AMOUNT_TYPES = {category: _benefit_type(code, code) for category, code in AMOUNT_CODES.items()}
_BALANCE_TYPES = tuple(tuple((family, _benefit_type(code, code)) for family, code in codes.items())
                       for codes in (DEDUCTION_CODES, CEILING_CODES))
_MIN_DATE_TYPE, _ITEM_LEFT_TYPE = _benefit_type(*MIN_DATE), _benefit_type(*ITEM_LEFT)


def _insurance(p: PolicyEligibility) -> dict[str, Any]:
    benefits: list[dict[str, Any]] = []
    for category, total_type in _TOTAL_TYPES.items():
        left = p.counters[category].left
        if left is not None:
            benefits.append({"type": total_type, "allowedUnsignedInt": left})
    for category, amount_type in _AMOUNT_TYPES.items():
        amount = p.amounts[category]
        if amount is not None:
            benefits.append({"type": amount_type, "allowedMoney": money(max(amount, Decimal(0)))})
    for balances, types in zip((p.deductibles, p.ceilings), _BALANCE_TYPES, strict=True):
        for family, balance_type in types:
            balance: Balance | None = balances.get(family)
            if balance is not None:
                benefits.append({"type": balance_type, "allowedMoney": money(balance.left)})
    package: dict[str, Any] = {"category": _CATEGORIES["benefit"], "name": p.product_code,
                               "description": p.product_name}
    if benefits:
        package["benefit"] = benefits
    return {
        "coverage": reference("Coverage", p.coverage_id),
        "benefitPeriod": {"start": p.effective_date.isoformat(), "end": p.expiry_date.isoformat()},
        "item": [package, *(_line(line) for line in p.lines)],
    }


def _line(line: LineCoverage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "category": _CATEGORIES[line.provision.kind],
        "productOrService": {"text": line.provision.code},
        "excluded": not line.ok,
    }
    if line.reason:
        out["description"] = line.reason[0].upper() + line.reason[1:]
    benefits = []
    if line.min_date is not None:
        benefits.append({"type": _MIN_DATE_TYPE, "allowedString": line.min_date.isoformat()})
    if line.covered and line.left is not None:
        benefits.append({"type": _ITEM_LEFT_TYPE, "allowedUnsignedInt": line.left})
    if benefits:
        out["benefit"] = benefits
    return out
