"""OpenIMISMedication ↔ medical item (IG §1b row 11; domain §2.11), plus what items and services share.

Mapping:
* identifier[Code] ↔ `code` (unique among current items: 409), `code.text` ↔ `name`.
* `form.text` ↔ `package`; `amount.numerator.value` ↔ `quantity` (as the reference module does).
* extension unit-price ↔ `price` (≥ 0, in the scheme currency), medication-type ↔ `item_type` (D/M),
  medication-frequency (`repeat.period` in days) ↔ `frequency`, medication-level: always `M` (rendered only).
* extension medication-usage-context ↔ `patient_category` (the domain §2.11 bitmask: 1 male, 2 female, 4 adult,
  8 child) and `care_type` (venue AMB = O out-patient, IMP = I in-patient, both codes = B). An absent Gender or Age
  context means no restriction on it (both bits), an absent CareType means both venues; a stored mask of 0
  (openIMIS "no restriction") renders as everybody.

`code.coding` (e.g. a SNOMED CT or ATC code) and the whole `form` are kept as sent (JSON, at most
CODING_JSON_MAX bytes each) so that a client reads back what it wrote; the package text openIMIS needs is `form.text`,
else the form coding's display (else its code).

The helpers below (amounts and currency, usage contexts, frequency, the `context` and `status` search parameters,
the "still covered by a product" delete rule) serve the ActivityDefinition kind too.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from sqlalchemy import Connection, Row, Table, false, or_, select, true

from hifhir.config import SCHEME_CURRENCY
from hifhir.fhir.elements import coding, ext, extension, first_code, identifier_value, identifiers
from hifhir.fhir.errors import conflict, invalid
from hifhir.fhir.kind import CS, EXT, ResourceKind, WriteContext, require
from hifhir.fhir.profiles.common import resolve_new_id, uuid_for_update, uuid_of
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import (
    Clause,
    SearchParam,
    SortKey,
    check_token,
    normalise_text,
    split_token,
    string_param,
    token_param,
)
from hifhir.store.tables import is_current, medical_item, product, product_item

# The scheme's currency (openIMIS keeps it in module configuration, `core.currency`). Amounts are stored without
# one; every Money the server renders carries this code and a Money sent in another currency is refused.
CURRENCY = SCHEME_CURRENCY
# decimal(18,2), the openIMIS amount columns
MAX_AMOUNT = Decimal("9999999999999999.99")
MAX_DAYS = 32767  # smallint, openIMIS ItemFrequency / ServFrequency

USAGE_CONTEXT_TYPE = "http://terminology.hl7.org/CodeSystem/usage-context-type"
GENDER_SYSTEM = "http://hl7.org/fhir/administrative-gender"
AGE_SYSTEM = CS + "usage-context-age-type"
VENUE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
WORKFLOW_SYSTEM = CS + "activity-definition-usage-context-workflow-type"

MALE, FEMALE, ADULT, CHILD = 1, 2, 4, 8
EVERYBODY = MALE | FEMALE | ADULT | CHILD
_GENDER_BITS = {"male": (MALE, "Male"), "female": (FEMALE, "Female")}
_AGE_BITS = {"adult": (ADULT, "Adult"), "child": (CHILD, "Child")}
_VENUES = {"AMB": ("O", "ambulatory"), "IMP": ("I", "inpatient encounter")}
CARE_TYPE_VENUES = {"O": ("AMB",), "I": ("IMP",), "B": ("AMB", "IMP")}
WORKFLOW_CATEGORIES = {"S": "Surgery", "C": "Consultations", "D": "Delivery", "A": "Antenatal", "O": "Other"}
_CONTEXT_DISPLAYS = {"gender": "Gender", "age": "Age", "workflow": "Workflow Setting", "venue": "Clinical Venue"}

ITEM_TYPES = {"D": "Drug", "M": "Medical consumable"}


# --- amounts ---------------------------------------------------------------------------------------------


def parse_amount(value: Any, what: str, expression: str, *, maximum: Decimal = MAX_AMOUNT) -> Decimal:
    """A JSON number as an exact amount of at most 2 decimals, 0 ≤ value ≤ maximum (422 otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise invalid(f"{what} must be a number", expression)
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise invalid(f"{what} must be a number", expression) from None
    require(amount.is_finite() and 0 <= amount <= maximum, f"{what} must be between 0 and {maximum}", expression)
    require(amount == amount.quantize(Decimal("0.01")), f"{what} has at most 2 decimals", expression)
    return amount


def parse_money(money: Any, what: str, expression: str) -> Decimal:
    require(isinstance(money, dict) and "value" in money, f"{what} needs a value", expression)
    currency = money.get("currency")
    require(currency in (None, CURRENCY), f"{what} must be in the scheme currency {CURRENCY}, not {currency}",
            expression)
    return parse_amount(money["value"], what, expression)


def number(value: Decimal) -> int | float:
    """JSON form of an amount: 10 rather than 10.00 (clients compare with what they sent)."""
    return int(value) if value == value.to_integral_value() else float(value)


def money(value: Decimal) -> dict[str, Any]:
    return {"value": number(value), "currency": CURRENCY}


def whole_number(value: Any, what: str, expression: str, *, maximum: int = MAX_DAYS, minimum: int = 0) -> int:
    """A non-negative integer given as a FHIR decimal or integer (`period: 7` or `7.0`)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
    require(ok and minimum <= int(value) <= maximum, f"{what} must be a whole number from {minimum} to {maximum}",
            expression)
    return int(value)


# --- frequency (Timing) ----------------------------------------------------------------------------------


def frequency_of(timing: Any, expression: str) -> int | None:
    """Minimum days between two provisions: `repeat.period` with `periodUnit` d (`frequency` is fixed to 1)."""
    if timing is None:
        return None
    repeat = timing.get("repeat") if isinstance(timing, dict) else None
    require(isinstance(repeat, dict) and "period" in repeat, "The frequency needs repeat.period (days)",
            expression)
    require(repeat.get("periodUnit", "d") == "d", "The frequency period is in days (periodUnit d)", expression)
    return whole_number(repeat["period"], "The frequency period (days)", f"{expression}.repeat.period")


def timing(frequency: int) -> dict[str, Any]:
    return {"repeat": {"frequency": 1, "period": frequency, "periodUnit": "d"}}


# --- usage contexts (gender, age, care type, category) ---------------------------------------------------


def _codes(concept: Any, allowed: dict[str, Any], system: str, what: str, expression: str) -> list[str]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    require(isinstance(codings, list) and bool(codings), f"The {what} context needs codings", expression)
    out: list[str] = []
    for c in codings:
        code = c.get("code") if isinstance(c, dict) else None
        require(isinstance(code, str) and code in allowed,
                f"Unknown {what} code '{str(code)[:20]}' (expected {', '.join(allowed)})", expression)
        require(c.get("system") in (None, system), f"The {what} codes are from {system}", expression)
        require(code not in out, f"The {what} code {code} is given twice", expression)
        out.append(code)
    return out


def read_contexts(contexts: list[tuple[Any, Any, str]], *, workflow: bool) -> tuple[int, str | None, str | None]:
    """(patient category mask, care type, category) from `(usage code, value concept, expression)` triples."""
    seen: set[str] = set()
    genders, ages = MALE | FEMALE, ADULT | CHILD
    care_type = category = None
    for usage, concept, expression in contexts:
        code = usage.get("code") if isinstance(usage, dict) else None
        allowed = ("gender", "age", "venue", "workflow") if workflow else ("gender", "age", "venue")
        require(isinstance(code, str) and code in allowed,
                f"Unknown usage context '{str(code)[:20]}' (expected {', '.join(allowed)})", expression)
        require(code not in seen, f"The {code} usage context is given twice", expression)
        seen.add(code)
        if code == "gender":
            genders = sum(_GENDER_BITS[c][0] for c in _codes(concept, _GENDER_BITS, GENDER_SYSTEM, "gender",
                                                             expression))
        elif code == "age":
            ages = sum(_AGE_BITS[c][0] for c in _codes(concept, _AGE_BITS, AGE_SYSTEM, "age", expression))
        elif code == "venue":
            venues = {_VENUES[c][0] for c in _codes(concept, _VENUES, VENUE_SYSTEM, "venue", expression)}
            care_type = venues.pop() if len(venues) == 1 else "B"
        else:
            found = _codes(concept, WORKFLOW_CATEGORIES, WORKFLOW_SYSTEM, "category", expression)
            require(len(found) == 1, "A service has one category", expression)
            category = found[0]
    return genders | ages, care_type, category


def _usage(code: str, codings: list[dict[str, Any]]) -> dict[str, Any]:
    return {"code": coding(USAGE_CONTEXT_TYPE, code, _CONTEXT_DISPLAYS[code]),
            "valueCodeableConcept": {"coding": codings}}


def render_contexts(patient_category: int, care_type: str, category: str | None = None) -> list[tuple[str, Any]]:
    """(slice name, UsageContext) in the IG's slice order: Gender, Age, Category, CareType."""
    mask = patient_category or EVERYBODY
    out: list[tuple[str, Any]] = []
    genders = [coding(GENDER_SYSTEM, c, d) for c, (bit, d) in _GENDER_BITS.items() if mask & bit]
    if genders:
        out.append(("Gender", _usage("gender", genders)))
    ages = [coding(AGE_SYSTEM, c, d) for c, (bit, d) in _AGE_BITS.items() if mask & bit]
    if ages:
        out.append(("Age", _usage("age", ages)))
    if category:
        out.append(("Category", _usage("workflow", [coding(WORKFLOW_SYSTEM, category,
                                                           WORKFLOW_CATEGORIES.get(category))])))
    venues = [coding(VENUE_SYSTEM, v, _VENUES[v][1]) for v in CARE_TYPE_VENUES.get(care_type, ())]
    out.append(("CareType", _usage("venue", venues)))
    return out


def context_param(table: Table, *, workflow: bool) -> SearchParam:
    """`context`: the item/service applies to a gender (male/female), an age group (adult/child), a venue
    (AMB/IMP) or, for services, a category (S/C/D/A/O). A stored mask of 0 applies to everybody."""
    pc, care = table.c.patient_category, table.c.care_type
    bits = {code: bit for code, (bit, _d) in (_GENDER_BITS | _AGE_BITS).items()}

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        _system, code = split_token(value, expression)
        check_token(code, expression)
        if code in bits:
            match: Clause = or_(pc.op("&")(bits[code]) != 0, pc == 0)
        elif code in _VENUES:
            match = care.in_((_VENUES[code][0], "B"))
        elif workflow and code in WORKFLOW_CATEGORIES:
            match = table.c.category == code
        else:
            raise invalid(f"Unknown code '{code}' for '{expression}'", expression)
        return ~match if modifier == "not" else match

    doc = "Applies to: male, female, adult, child, AMB (out-patient), IMP (in-patient)"
    return SearchParam("context", "token", clause, frozenset({"not"}),
                       doc + (", or the category S/C/D/A/O" if workflow else ""))


def active_status_param(system: str) -> SearchParam:
    """`status`: items and services are always `active` (the profiles fix it); a constant clause."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        found_system, code = split_token(value, expression)
        check_token(code, expression)
        match = found_system in (None, "", system) and code == "active"
        if modifier == "not":
            match = not match
        return true() if match else false()

    return SearchParam("status", "token", clause, frozenset({"not"}), "Always active")


def refuse_if_covered(conn: Connection, link: Table, column: str, pk: int, what: str) -> None:
    """An item/service still covered by a current product cannot be deleted (409 naming the product)."""
    row = conn.execute(
        select(product.c.code).select_from(link.join(product, product.c.pk == link.c.product_pk))
        .where(link.c[column] == pk, is_current(product)).order_by(product.c.code).limit(1)
    ).first()
    if row is not None:
        raise conflict(f"{what} is still covered by product {row.code}: remove it from the product first")


def checked_text(value: Any, limit: int, what: str, expression: str, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    require(isinstance(value, str) and value.strip() != "" and len(value) <= limit,
            f"{what} is {'required, ' if required else ''}at most {limit} characters", expression)
    return str(value)


# --- the kind --------------------------------------------------------------------------------------------


CODING_JSON_MAX = 2000


def _kept_json(value: Any, expression: str) -> str | None:
    """JSON of an element kept as sent (already checked against the R4 schema), bounded in size."""
    if not value:
        return None
    text = orjson.dumps(value).decode()
    require(len(text) <= CODING_JSON_MAX, f"At most {CODING_JSON_MAX} characters of JSON are kept", expression)
    return text


def _package(form: Any) -> str | None:
    if not isinstance(form, dict):
        return None
    if form.get("text"):
        return str(form["text"])
    for c in form.get("coding") or ():
        if isinstance(c, dict) and (c.get("display") or c.get("code")):
            return str(c.get("display") or c.get("code"))
    return None


class MedicationKind(ResourceKind):
    resource_type = "Medication"
    name = "medication"
    profile_id = "openimis-medication"
    table = medical_item

    def __init__(self) -> None:
        t = medical_item
        self.search_params = {
            **common_params(self),
            "code": token_param("code", t.c.code, doc="Item code"),
            "name": string_param("name", t.c.name_norm, raw_columns=(t.c.name,), doc="Item name (code.text)"),
            "status": active_status_param("http://hl7.org/fhir/CodeSystem/medication-status"),
            "type": token_param("type", t.c.item_type, codes={c: c for c in ITEM_TYPES},
                                systems=frozenset({CS + "medication-item-type"}),
                                doc="Item type: D drug, M medical consumable"),
            "context": context_param(t, workflow=False),
        }
        self.sort_params = {**common_sorts(self), "code": SortKey(t.c.code), "name": SortKey(t.c.name_norm)}

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for row in conn.execute(select(medical_item).where(medical_item.c.pk.in_(pks))):
            exts = [
                ext("unit-price", "valueMoney", money(row.price)),
                ext("medication-type", "valueCodeableConcept", {"coding": [
                    coding(CS + "medication-item-type", row.item_type, ITEM_TYPES.get(row.item_type))]}),
            ]
            if row.frequency is not None:
                exts.append(ext("medication-frequency", "valueTiming", timing(row.frequency)))
            exts.append({"url": EXT + "medication-usage-context", "extension": [
                {"url": name, "valueUsageContext": usage}
                for name, usage in render_contexts(row.patient_category, row.care_type)]})
            exts.append(ext("medication-level", "valueCodeableConcept", {"coding": [
                coding(CS + "medication-level", "M", "Medication")]}))
            code: dict[str, Any] = {"text": row.name}
            if row.code_coding:
                code = {"coding": orjson.loads(row.code_coding), "text": row.name}
            res: dict[str, Any] = {
                "extension": exts,
                "identifier": identifiers(row.code, uuid_of(row)),
                "code": code,
                "status": "active",
            }
            if row.form_json:
                res["form"] = orjson.loads(row.form_json)
            elif row.package:
                res["form"] = {"text": row.package}
            if row.quantity is not None:
                res["amount"] = {"numerator": {"value": number(row.quantity)}}
            out[row.pk] = res
        return out

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        code = checked_text(identifier_value(resource, "Code"), 16, "The item code (identifier Code)",
                            "Medication.identifier")
        ctx.expect_unique(medical_item, "code", str(code), "Medical item code", "Medication.identifier")
        name = str(checked_text((resource.get("code") or {}).get("text"), 100, "The item name (code.text)",
                                "Medication.code.text"))
        price_ext = extension(resource, "unit-price")
        price = parse_money((price_ext or {}).get("valueMoney"), "The unit price",
                            "Medication.extension[unitPrice].valueMoney")
        item_type = first_code((extension(resource, "medication-type") or {}).get("valueCodeableConcept"))
        require(item_type in ITEM_TYPES, "The item type (medication-type) is required: D or M",
                "Medication.extension[type]")
        frequency = frequency_of((extension(resource, "medication-frequency") or {}).get("valueTiming"),
                                 "Medication.extension[timing].valueTiming")
        contexts = []
        for i, usage_ext in enumerate(e for e in resource.get("extension") or ()
                                      if e.get("url") == EXT + "medication-usage-context"):
            for sub in usage_ext.get("extension") or ():
                value = sub.get("valueUsageContext") or {}
                contexts.append((value.get("code"), value.get("valueCodeableConcept"),
                                 f"Medication.extension[useContext][{i}].extension[{sub.get('url')}]"))
        patient_category, care_type, _ = read_contexts(contexts, workflow=False)
        package = _package(resource.get("form"))
        require(package is None or len(package) <= 255, "form.text (package) is at most 255 characters",
                "Medication.form")
        code_coding = _kept_json((resource.get("code") or {}).get("coding"), "Medication.code.coding")
        form = resource.get("form")
        form_json = _kept_json(form, "Medication.form") if isinstance(form, dict) and form.get("coding") else None
        numerator = (resource.get("amount") or {}).get("numerator") or {}
        quantity = None if "value" not in numerator else parse_amount(
            numerator["value"], "amount.numerator.value", "Medication.amount.numerator.value")
        values: dict[str, Any] = {
            "code": code, "name": name, "name_norm": normalise_text(name)[:100], "price": price,
            "care_type": care_type or "B", "frequency": frequency, "patient_category": patient_category,
            "item_type": item_type, "package": package, "quantity": quantity,
            "code_coding": code_coding, "form_json": form_json,
        }
        if current is None:
            values["id"], values["uuid"] = resolve_new_id(ctx, resource, medical_item)
            return ctx.insert(medical_item, values)
        values["uuid"] = uuid_for_update(ctx, resource, medical_item, current)
        ctx.update(medical_item, current.pk, values)
        return int(current.pk)

    def delete(self, ctx: WriteContext, current: Row) -> None:
        refuse_if_covered(ctx.conn, product_item, "item_pk", current.pk, f"Medical item {current.code}")

