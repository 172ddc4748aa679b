"""OpenIMISInsurancePlan ↔ product, with its covered items and services (IG §1b row 13, §2; domain §2.14).

IG elements:
* identifier[Code] ↔ `code` (at most 8 characters, unique among current products: 409), `name`, `status`
  (draft/active/retired, stored as sent), `period` ↔ `date_from`/`date_to` (full dates, end ≥ start).
* `coverageArea` (1..1) ↔ `location_pk`: a region or a district. openIMIS also has national products (no
  location); the IG requires a coverage area, so a national product is rendered, and accepted, as a reference
  with a display only (`{"display": "National"}`): valid R4 (a Reference needs no literal reference), and a
  client can tell it apart by the missing `reference`. `coverage-area:missing=true` finds them.
* `coverage.benefit.limit`: `period` ↔ `insurance_period` (months), `memberCount` ↔ `member_count` (0..1 in the
  IG but NOT NULL in openIMIS: required on create, kept on update when absent).
* `plan.generalCost` ↔ the contribution plan: `lumpsum` (+ `groupSize` ↔ `threshold`, ≤ member count),
  `premiumAdult`, `premiumChild`, `registrationLumpsum`, `registrationFee`, `generalAssemblyLumpSum`,
  `generalAssemblyFee`. **IG defect (ig/README.md §9.3):** the profile makes `plan.generalCost` 1..1 although
  it slices it into these 7 costs; a real product has several, so the validator takes it as 1..* (lumpsum 1..1,
  the others 0..1 each): `MAX_OVERRIDES` in `fhir/validation/corrections.py`.
* IG extensions: insurance-plan-conversion ↔ `conversion_product_pk` (an existing current product, not this
  one), insurance-plan-max-installments ↔ `max_installments`, insurance-plan-start-cycle (0..4, "DD-MM") ↔
  `start_cycle_1..4`, insurance-plan-period ↔ `administration_period`, `grace_period_payment`,
  `grace_period_renewal`, `grace_period` (enrolment), insurance-plan-discount ↔ renewal and enrolment
  `*_discount_perc`/`*_discount_period`. The IG's four period slices (and its two discount slices) share one
  extension URL, so only their position tells them apart: the server reads them in the IG's slice order
  (administrationPeriod, gracePeriodPayment, gracePeriodRenewal, gracePeriodEnrolment; renewalDiscount,
  enrolmentDiscount) and renders each with `Extension.id` = its slice name, which it also honours on input,
  so that a product without, say, an administration period stays unambiguous.

What the IG cannot express (domain §2.14) is carried by hifhir extensions (`https://hifhir.org/fhir/
StructureDefinition/<name>`), each a complex extension whose sub-extension URLs are listed in the tables below:
* `insurance-plan-coverage-line` (0..*): one per covered item or service. `provision` (valueReference to
  Medication/<id> or ActivityDefinition/<id>, without display: a rename must not re-version every product),
  `priceOrigin` (P scheme price, O provider's own, R relative), limitation type C (co-insurance, limit = % covered)
  or F (fixed amount per unit) and the adult/child limits for ordinary, referral and emergency visits,
  waiting periods (months), maximum quantities per insurance period, ceiling exclusions (H/N/B). Each current
  item/service once per product (422 otherwise).
* `insurance-plan-ceilings` (0..1): deductibles and ceilings per treatment/insuree/policy (general, OP, IP),
  the extra ceiling per member above the threshold and its caps, maximum counts and amounts per claim category,
  ceiling interpretation (I claim type / H facility level) and ceiling type (I/T/P). Sub-extension URLs are the
  openIMIS column names in camel case (`dedOpTreatment`, `maxNoConsultation`…).
* `insurance-plan-capitation` (0..1): relative-price distribution periods (M/Q/Y), the (level, sublevel) pairs,
  share of contributions and capitation weights (percentages).
* `insurance-plan-administration` (0..1): accounting codes and the registration-fee recurrence (months).
A client that sends none of them (an IG-only client) keeps what the product has; a client that sends any of
them states them all, so absent ones are cleared (or reset to the openIMIS defaults for NOT NULL columns). The
validator accepts them: the profile's extension slicing is open and unknown extension URLs are not checked
there; their content is checked here (unknown sub-extensions, types, codes and ranges are 422s).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, insert, not_, select

from hifhir.fhir.elements import coding, ext, identifier_value, identifiers, reference
from hifhir.fhir.errors import conflict, invalid
from hifhir.fhir.kind import CS, EXT, ResourceKind, WriteContext, require
from hifhir.fhir.profiles.common import resolve_new_id, uuid_for_update, uuid_of
from hifhir.fhir.profiles.location import LOCATION_USERS, LocationUser
from hifhir.fhir.profiles.medication import (
    checked_text,
    money,
    number,
    parse_amount,
    parse_money,
    whole_number,
)
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import (
    Clause,
    SearchParam,
    SortKey,
    column_ref,
    link_ref,
    normalise_text,
    parse_date_range,
    parse_prefixed,
    reference_param,
    string_param,
    token_param,
)
from hifhir.store.codelists import code_display, ig_concepts
from hifhir.store.tables import (
    is_current,
    location,
    medical_item,
    medical_service,
    product,
    product_item,
    product_service,
)

HIFHIR_EXT = "https://hifhir.org/fhir/StructureDefinition/"
COVERAGE_LINE = HIFHIR_EXT + "insurance-plan-coverage-line"
PLAN_TYPE = "http://terminology.hl7.org/CodeSystem/insurance-plan-type"
NATIONAL = "National"
RTYPE = "InsurancePlan"

COSTS = {  # generalCost type → column
    "lumpsum": "lump_sum", "premiumAdult": "premium_adult", "premiumChild": "premium_child",
    "registrationLumpsum": "registration_lump_sum", "registrationFee": "registration_fee",
    "generalAssemblyLumpSum": "general_assembly_lump_sum", "generalAssemblyFee": "general_assembly_fee",
}
PERIOD_SLICES = {"administrationPeriod": "administration_period", "gracePeriodPayment": "grace_period_payment",
                 "gracePeriodRenewal": "grace_period_renewal", "gracePeriodEnrolment": "grace_period"}
DISCOUNT_SLICES = {"renewalDiscount": "renewal", "enrolmentDiscount": "enrolment"}
MAX_MONTHS = 255  # openIMIS tinyint month counts
_CYCLE_RE = re.compile(r"^(\d{2})-(\d{2})$")


# --- the hifhir extensions: one table of sub-extensions each ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """One sub-extension ↔ one column. kind: money | percent | decimal | count | code | hf-level | string."""

    url: str
    column: str
    kind: str
    codes: tuple[str, ...] = ()
    default: Any = None  # for NOT NULL columns: the openIMIS default, used when the sub-extension is absent
    length: int = 0

    def value_key(self) -> str:
        return {"money": "valueMoney", "percent": "valueDecimal", "decimal": "valueDecimal",
                "count": "valueUnsignedInt", "string": "valueString"}.get(self.kind, "valueCode")

    def render(self, value: Any) -> dict[str, Any]:
        if self.kind == "money":
            return {"url": self.url, "valueMoney": money(value)}
        if self.kind in ("percent", "decimal"):
            return {"url": self.url, "valueDecimal": number(value)}
        return {"url": self.url, self.value_key(): value}

    def parse(self, conn: Connection, sub: dict[str, Any], expression: str) -> Any:
        key = self.value_key()
        require(key in sub, f"'{self.url}' takes {key}", expression)
        value = sub[key]
        what = f"'{self.url}'"
        if self.kind == "money":
            return parse_money(value, what, expression)
        if self.kind == "percent":
            return parse_amount(value, what, expression, maximum=Decimal(100))
        if self.kind == "decimal":
            return parse_amount(value, what, expression)
        if self.kind == "count":
            return whole_number(value, what, expression, maximum=32767)
        if self.kind == "string":
            return checked_text(value, self.length, what, expression)
        if self.kind == "hf-level":
            require(isinstance(value, str) and code_display(conn, "organization-hf-level", value) is not None,
                    f"{what} is a configured health facility level", expression)
            return value
        require(value in self.codes, f"{what} is one of {', '.join(self.codes)}", expression)
        return value


def _camel(column: str) -> str:
    head, *rest = column.split("_")
    return head + "".join(part.capitalize() for part in rest)


_CEILING_AMOUNTS = [
    *(f"{kind}{care}_{scope}" for kind in ("ded", "max") for scope in ("treatment", "insuree", "policy")
      for care in ("", "_op", "_ip")),
    "max_policy_extra_member", "max_policy_extra_member_ip", "max_policy_extra_member_op",
    "max_ceiling_policy", "max_ceiling_policy_ip", "max_ceiling_policy_op",
    *(f"max_amount_{c}" for c in ("consultation", "surgery", "delivery", "hospitalization", "antenatal")),
]
CEILINGS = (
    *(Field(_camel(c), c, "money") for c in _CEILING_AMOUNTS),
    *(Field(_camel(f"max_no_{c}"), f"max_no_{c}", "count")
      for c in ("consultation", "surgery", "delivery", "hospitalization", "visits", "antenatal")),
    Field("ceilingInterpretation", "ceiling_interpretation", "code", ("I", "H")),
    Field("ceilingType", "ceiling_type", "code", ("I", "T", "P")),
)
CAPITATION = (
    *(Field(_camel(c), c, "code", ("M", "Q", "Y"))
      for c in ("period_rel_prices", "period_rel_prices_op", "period_rel_prices_ip")),
    *(Field(f"level{i}", f"level_{i}", "hf-level") for i in range(1, 5)),
    *(Field(f"sublevel{i}", f"sublevel_{i}", "string", length=1) for i in range(1, 5)),
    Field("shareContribution", "share_contribution", "percent", default=Decimal(100)),
    *(Field(_camel(c), c, "percent", default=Decimal(100 if c == "weight_insured_population" else 0))
      for c in ("weight_population", "weight_number_families", "weight_insured_population",
                "weight_number_insured_families", "weight_number_visits", "weight_adjusted_amount")),
)
ADMINISTRATION = (
    Field("accCodePremiums", "acc_code_premiums", "string", length=25),
    Field("accCodeRemuneration", "acc_code_remuneration", "string", length=25),
    Field("recurrence", "recurrence", "count"),
)
PRODUCT_EXTENSIONS = {
    HIFHIR_EXT + "insurance-plan-ceilings": CEILINGS,
    HIFHIR_EXT + "insurance-plan-capitation": CAPITATION,
    HIFHIR_EXT + "insurance-plan-administration": ADMINISTRATION,
}
_LIMITS = (("", ""), ("Referral", "_r"), ("Emergency", "_e"))
LINE_FIELDS = (
    Field("priceOrigin", "price_origin", "code", ("P", "O", "R"), default="P"),
    *(Field(f"limitationType{name}", f"limitation_type{suffix}", "code", ("C", "F"), default="C")
      for name, suffix in _LIMITS),
    *(Field(f"limit{age}{name}", f"limit_{age.lower()}{suffix}", "decimal", default=Decimal(100))
      for name, suffix in _LIMITS for age in ("Adult", "Child")),
    Field("waitingPeriodAdult", "waiting_period_adult", "count"),
    Field("waitingPeriodChild", "waiting_period_child", "count"),
    Field("maxQuantityAdult", "limit_no_adult", "count"),
    Field("maxQuantityChild", "limit_no_child", "count"),
    Field("ceilingExclusionAdult", "ceiling_exclusion_adult", "code", ("H", "N", "B")),
    Field("ceilingExclusionChild", "ceiling_exclusion_child", "code", ("H", "N", "B")),
)


def _read_fields(conn: Connection, container: dict[str, Any], fields: tuple[Field, ...], expression: str,
                 skip: tuple[str, ...] = ()) -> dict[str, Any]:
    by_url = {f.url: f for f in fields}
    values = {f.column: f.default for f in fields}
    seen: set[str] = set()
    for i, sub in enumerate(container.get("extension") or ()):
        url = sub.get("url") if isinstance(sub, dict) else None
        if url in skip:
            continue
        sub_expr = f"{expression}.extension[{i}]"
        field = by_url.get(url) if isinstance(url, str) else None
        require(field is not None, f"Unknown sub-extension '{str(url)[:60]}'", sub_expr)
        assert field is not None
        require(field.url not in seen, f"'{field.url}' is given twice", sub_expr)
        seen.add(field.url)
        values[field.column] = field.parse(conn, sub, sub_expr)
    return values


def _render_fields(row: Any, fields: tuple[Field, ...]) -> list[dict[str, Any]]:
    return [f.render(row._mapping[f.column]) for f in fields if row._mapping[f.column] is not None]


# --- period search -------------------------------------------------------------------------------------------


def _day_floor(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def _day_ceil(moment: datetime) -> date:
    d = _day_floor(moment)
    return d if moment == datetime(d.year, d.month, d.day, tzinfo=UTC) else d + timedelta(days=1)


def period_param(name: str, start: Any, end: Any, doc: str) -> SearchParam:
    """Dates against a Period stored as two DATE columns: the target is the whole days [start, end]."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        prefix, text = parse_prefixed(value)
        rng = parse_date_range(text, expression)
        try:
            if prefix == "ap":
                widen = abs(datetime.now(UTC) - rng.lo) * 0.1
                rng.lo, rng.hi = rng.lo - widen, rng.hi + widen
            lo_floor, lo_ceil = _day_floor(rng.lo), _day_ceil(rng.lo)
            hi_floor, hi_ceil = _day_floor(rng.hi), _day_ceil(rng.hi)
        except OverflowError:
            raise invalid(f"Date '{text[:40]}' is out of the supported range for '{expression}'",
                          expression) from None
        within = and_(start >= lo_ceil, end < hi_floor)  # the search range contains the whole period
        return {
            "eq": lambda: within,
            "ne": lambda: not_(within),
            "ap": lambda: and_(start < hi_ceil, end >= lo_floor),  # overlaps the widened range
            "gt": lambda: end >= hi_floor,  # the period reaches past the search range
            "sa": lambda: start >= hi_ceil,
            "ge": lambda: end >= lo_floor,
            "lt": lambda: start < lo_ceil,
            "eb": lambda: end < lo_floor,
            "le": lambda: start < hi_ceil,
        }[prefix]()

    return SearchParam(name, "date", clause, frozenset(), doc)


# --- location users: a coverage area cannot be deleted; its renaming changes nothing rendered ---------------


@dataclass(frozen=True, slots=True)
class _CoverageAreaUser(LocationUser):
    def mark_in(self, ctx: WriteContext, subtree: Any) -> None:
        """The plan renders only the location's id, so renaming or moving it leaves the plan as it is."""


# --- reading helpers -----------------------------------------------------------------------------------------


def _full_date(value: Any, expression: str) -> date:
    require(isinstance(value, str) and len(value) >= 10, "A full date (YYYY-MM-DD) is required", expression)
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise invalid(f"'{value[:30]}' is not a calendar date", expression) from None


def _code_of(concept: Any) -> str | None:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    for c in codings if isinstance(codings, list) else ():
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            return str(c["code"])
    return None


def _months(quantity: Any, expression: str, *, minimum: int = 0) -> int:
    value = quantity.get("value") if isinstance(quantity, dict) else None
    return whole_number(value, "The number of months", expression, minimum=minimum, maximum=MAX_MONTHS)


def _slotted(exts: list[tuple[int, dict[str, Any]]], slots: list[str], what: str) -> dict[str, tuple[int, Any]]:
    """Assign the extensions sharing one URL to the IG's slices: by Extension.id when it names a slice, the
    others in order (the IG's slice order) to the slices left."""
    assigned: dict[str, tuple[int, Any]] = {}
    free = []
    for i, e in exts:
        slot = e.get("id")
        if slot in slots:
            require(slot not in assigned, f"{what} '{slot}' is given twice", f"{RTYPE}.extension[{i}]")
            assigned[slot] = (i, e)
        else:
            free.append((i, e))
    left = [s for s in slots if s not in assigned]
    require(len(free) <= len(left), f"At most {len(slots)} {what} extensions", f"{RTYPE}.extension")
    assigned.update(zip(left, free, strict=False))
    return assigned


# --- the kind ------------------------------------------------------------------------------------------------


def _reversion_coverages(ctx: WriteContext, product_pk: int) -> None:
    """Coverage shows the product's code and name (class.value, class.name): a renamed product re-versions the
    Coverages of its policies (a rare, heavy write, like renaming a village)."""
    from hifhir.store.tables import coverage, policy

    for cov_pk in ctx.conn.execute(select(coverage.c.pk).join(policy, policy.c.pk == coverage.c.policy_pk).where(
            policy.c.product_pk == product_pk, is_current(policy), is_current(coverage))).scalars():
        ctx.mark("coverage", int(cov_pk))


class InsurancePlanKind(ResourceKind):
    resource_type = "InsurancePlan"
    name = "insurance-plan"
    profile_id = "openimis-insurance-plan"
    table = product

    def __init__(self) -> None:
        t = product
        self.search_params = {
            **common_params(self),
            "name": string_param("name", t.c.name_norm, raw_columns=(t.c.name,), doc="Product name"),
            "status": token_param("status", t.c.status, codes={c: c for c in ("draft", "active", "retired")},
                                  systems=frozenset({"http://hl7.org/fhir/publication-status"}),
                                  doc="draft, active or retired"),
            "period": period_param("period", t.c.date_from, t.c.date_to,
                                   "The period in which policies of the product can be sold"),
            "coverage-area": reference_param("coverage-area", "Location", column_ref(t.c.location_pk, "location"),
                                             doc="Region or district covered (:missing=true: national)"),
            "conversion": reference_param("conversion", "InsurancePlan",
                                          column_ref(t.c.conversion_product_pk, "insurance-plan"),
                                          doc="The product replacing this one at renewal"),
            "covered-item": reference_param(
                "covered-item", "Medication",
                link_ref(t.c.pk, product_item.c.product_pk, product_item.c.item_pk, "medication"),
                doc="A covered medical item (insurance-plan-coverage-line)"),
            "covered-service": reference_param(
                "covered-service", "ActivityDefinition",
                link_ref(t.c.pk, product_service.c.product_pk, product_service.c.service_pk, "activity-definition"),
                doc="A covered medical service (insurance-plan-coverage-line)"),
        }
        self.sort_params = {**common_sorts(self), "code": SortKey(t.c.code), "name": SortKey(t.c.name_norm),
                            "period": SortKey(t.c.date_from, "date")}

    # --- to FHIR ---------------------------------------------------------------------------------------------

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        rows = conn.execute(select(product).where(product.c.pk.in_(pks))).all()
        location_ids = dict(conn.execute(select(location.c.pk, location.c.id).where(
            location.c.pk.in_({r.location_pk for r in rows if r.location_pk is not None}))).all())
        conversion_ids = dict(conn.execute(select(product.c.pk, product.c.id).where(
            product.c.pk.in_({r.conversion_product_pk for r in rows if r.conversion_product_pk is not None}))).all())
        lines: dict[int, list[dict[str, Any]]] = {pk: [] for pk in pks}
        for link, target, column, rtype in ((product_item, medical_item, "item_pk", "Medication"),
                                            (product_service, medical_service, "service_pk", "ActivityDefinition")):
            for line in conn.execute(
                select(link, target.c.id.label("target_id"))
                .select_from(link.join(target, target.c.pk == link.c[column]))
                .where(link.c.product_pk.in_(pks)).order_by(link.c.product_pk, link.c[column])
            ):
                lines[line.product_pk].append({"url": COVERAGE_LINE, "extension": [
                    {"url": "provision", "valueReference": reference(rtype, line.target_id)},
                    *_render_fields(line, LINE_FIELDS)]})
        cost_labels = dict(ig_concepts("insurance-plan-general-cost-type"))
        limit_labels = dict(ig_concepts("insurance-plan-coverage-benefit-limit"))
        medical = {"coding": [coding(PLAN_TYPE, "medical", "Medical")]}
        out: dict[int, dict[str, Any]] = {}
        for row in rows:
            costs = []
            for cost_type, column in COSTS.items():
                value = row._mapping[column]
                if value is None:
                    continue
                cost: dict[str, Any] = {"type": {"coding": [coding(CS + "insurance-plan-general-cost-type",
                                                                   cost_type, cost_labels.get(cost_type))]}}
                if cost_type == "lumpsum":
                    # groupSize is 1..1; a lump sum without threshold covers the whole family
                    cost["groupSize"] = row.threshold if row.threshold is not None else row.member_count
                cost["cost"] = money(value)
                costs.append(cost)
            limits = [{"code": {"coding": [coding(CS + "insurance-plan-coverage-benefit-limit", code,
                                                  limit_labels.get(code))]},
                       "value": {"value": value, "unit": unit}}
                      for code, value, unit in (("period", row.insurance_period, "month"),
                                                ("memberCount", row.member_count, "member"))]
            res: dict[str, Any] = {
                "extension": self._extensions(row, conversion_ids) + lines[row.pk],
                "identifier": identifiers(row.code, uuid_of(row)),
                "status": row.status,
                "type": [medical],
                "name": row.name,
                "period": {"start": row.date_from.isoformat(), "end": row.date_to.isoformat()},
                "coverageArea": [reference("Location", location_ids[row.location_pk])
                                 if row.location_pk is not None else {"display": NATIONAL}],
                "coverage": [{"type": medical, "benefit": [{"type": medical, "limit": limits}]}],
                "plan": [{"generalCost": costs}],
            }
            out[row.pk] = res
        return out

    @staticmethod
    def _extensions(row: Row, conversion_ids: dict[int, str]) -> list[dict[str, Any]]:
        exts: list[dict[str, Any]] = []
        if row.max_installments is not None:
            exts.append(ext("insurance-plan-max-installments", "valueUnsignedInt", row.max_installments))
        if row.conversion_product_pk is not None:
            exts.append(ext("insurance-plan-conversion", "valueReference",
                            reference(RTYPE, conversion_ids[row.conversion_product_pk])))
        for i in range(1, 5):
            if row._mapping[f"start_cycle_{i}"]:
                exts.append(ext("insurance-plan-start-cycle", "valueString", row._mapping[f"start_cycle_{i}"]))
        for slot, column in PERIOD_SLICES.items():
            if row._mapping[column] is not None:
                exts.append({"id": slot, **ext("insurance-plan-period", "valueQuantity",
                                               {"value": row._mapping[column], "unit": "months"})})
        for slot, prefix in DISCOUNT_SLICES.items():
            perc, period = row._mapping[f"{prefix}_discount_perc"], row._mapping[f"{prefix}_discount_period"]
            parts = []
            if perc is not None:
                parts.append({"url": "Percentage", "valueDecimal": perc})
            if period is not None:
                parts.append({"url": "Period", "valueQuantity": {"value": period, "unit": "months"}})
            if parts:
                exts.append({"id": slot, "url": EXT + "insurance-plan-discount", "extension": parts})
        for url, fields in PRODUCT_EXTENSIONS.items():
            parts = _render_fields(row, fields)
            if parts:
                exts.append({"url": url, "extension": parts})
        return exts

    # --- from FHIR -------------------------------------------------------------------------------------------

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        conn = ctx.conn
        code = str(checked_text(identifier_value(resource, "Code"), 8, "The product code (identifier Code)",
                                f"{RTYPE}.identifier"))
        ctx.expect_unique(product, "code", code, "Product code", f"{RTYPE}.identifier")
        name = str(checked_text(resource.get("name"), 100, "The product name", f"{RTYPE}.name"))
        period = resource.get("period") or {}
        date_from = _full_date(period.get("start"), f"{RTYPE}.period.start")
        date_to = _full_date(period.get("end"), f"{RTYPE}.period.end")
        require(date_to >= date_from, "The period cannot end before it starts", f"{RTYPE}.period")
        values: dict[str, Any] = {
            "code": code, "name": name, "name_norm": normalise_text(name)[:100], "status": resource.get("status"),
            "date_from": date_from, "date_to": date_to,
            "location_pk": self._coverage_area(ctx, resource.get("coverageArea") or []),
        }
        values.update(self._limits(resource, current))
        values.update(self._costs(resource, values["member_count"]))
        values.update(self._ig_extensions(ctx, resource, current))
        sends_hifhir = any(isinstance(e, dict) and str(e.get("url", "")).startswith(HIFHIR_EXT)
                           for e in resource.get("extension") or ())
        lines: list[tuple[str, int, dict[str, Any]]] | None = None
        if sends_hifhir or current is None:
            hifhir_values, lines = self._hifhir_extensions(ctx, resource)
            if sends_hifhir:
                values.update(hifhir_values)
        if current is None:
            values["id"], values["uuid"] = resolve_new_id(ctx, resource, product)
            pk = ctx.insert(product, values)
        else:
            pk = int(current.pk)
            values["uuid"] = uuid_for_update(ctx, resource, product, current)
            ctx.update(product, pk, values)
            if (code, name) != (current.code, current.name):
                _reversion_coverages(ctx, pk)
        if lines is not None:
            self._replace_lines(conn, pk, lines, replace=current is not None)
        elif current is not None and current.deleted:
            self._check_kept_lines(conn, pk)
        return pk

    @staticmethod
    def _check_kept_lines(conn: Connection, pk: int) -> None:
        """A deleted product being restored keeps its lines only if they still cover current items/services:
        while it was deleted, nothing stopped their deletion."""
        for link, target, column, what in ((product_item, medical_item, "item_pk", "item"),
                                           (product_service, medical_service, "service_pk", "service")):
            gone = conn.execute(
                select(target.c.code).select_from(link.join(target, target.c.pk == link.c[column]))
                .where(link.c.product_pk == pk, target.c.deleted.is_(True)).limit(1)).first()
            require(gone is None, f"The product covers the deleted {what} {gone.code if gone else ''}: send its "
                    "coverage lines (insurance-plan-coverage-line)", f"{RTYPE}.extension")

    @staticmethod
    def _coverage_area(ctx: WriteContext, areas: list[Any]) -> int | None:
        expression = f"{RTYPE}.coverageArea"
        require(len(areas) == 1, "One coverage area is required: a region, a district or national", expression)
        area = areas[0]
        if not isinstance(area, dict) or ("reference" not in area and "identifier" not in area):
            return None  # a display-only reference: a national product (see the module docstring)
        _, pk = ctx.resolve(area, ["Location"], expression)
        level = ctx.conn.execute(select(location.c.type).where(location.c.pk == pk)).scalar_one()
        require(level in ("R", "D"), "The coverage area is a region or a district", expression)
        return pk

    @staticmethod
    def _limits(resource: dict[str, Any], current: Row | None) -> dict[str, Any]:
        expression = f"{RTYPE}.coverage[0].benefit[0].limit"
        benefits = ((resource.get("coverage") or [{}])[0] or {}).get("benefit") or [{}]
        found: dict[str, Any] = {}
        for i, limit in enumerate((benefits[0] or {}).get("limit") or ()):
            found[str(_code_of(limit.get("code")))] = (limit.get("value"), f"{expression}[{i}].value")
        require("period" in found, "The insurance period (limit period, months) is required", expression)
        values = {"insurance_period": _months(*found["period"], minimum=1)}
        if "memberCount" in found:
            count, count_expr = found["memberCount"]
            values["member_count"] = whole_number((count or {}).get("value"), "The member count", count_expr,
                                                  minimum=1, maximum=32767)
        else:
            require(current is not None, "The maximum number of members (limit memberCount) is required",
                    expression)
            assert current is not None
            values["member_count"] = current.member_count
        return values

    @staticmethod
    def _costs(resource: dict[str, Any], member_count: int) -> dict[str, Any]:
        values: dict[str, Any] = {column: None for column in COSTS.values()}
        values["threshold"] = None
        for i, cost in enumerate(((resource.get("plan") or [{}])[0] or {}).get("generalCost") or ()):
            expression = f"{RTYPE}.plan[0].generalCost[{i}]"
            cost_type = _code_of(cost.get("type"))
            require(cost_type in COSTS, "Unknown general cost type", f"{expression}.type")
            assert cost_type is not None
            values[COSTS[cost_type]] = parse_money(cost.get("cost"), f"The {cost_type} cost", f"{expression}.cost")
            if cost_type == "lumpsum":
                threshold = whole_number(cost.get("groupSize"), "The lump sum's group size (threshold)",
                                         f"{expression}.groupSize", minimum=1, maximum=32767)
                require(threshold <= member_count,
                        f"The lump sum's group size ({threshold}) exceeds the member count ({member_count})",
                        f"{expression}.groupSize")
                values["threshold"] = threshold
        require(values["lump_sum"] is not None, "The lumpsum general cost is required (0 for none)",
                f"{RTYPE}.plan[0].generalCost")
        return values

    def _ig_extensions(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> dict[str, Any]:
        values: dict[str, Any] = {"conversion_product_pk": None, "max_installments": None}
        values.update({f"start_cycle_{i}": None for i in range(1, 5)})
        values.update({column: None for column in PERIOD_SLICES.values()})
        values["grace_period"] = 0
        for prefix in DISCOUNT_SLICES.values():
            values[f"{prefix}_discount_perc"] = values[f"{prefix}_discount_period"] = None
        by_name: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for i, e in enumerate(resource.get("extension") or ()):
            url = e.get("url") if isinstance(e, dict) else None
            if isinstance(url, str) and url.startswith(EXT):
                by_name.setdefault(url[len(EXT):], []).append((i, e))
        for i, e in by_name.get("insurance-plan-conversion", []):
            expression = f"{RTYPE}.extension[{i}]"
            _, pk = ctx.resolve(e.get("valueReference"), [RTYPE], expression, kinds=[self.name])
            require(current is None or pk != current.pk, "A product cannot convert into itself", expression)
            values["conversion_product_pk"] = pk
        for i, e in by_name.get("insurance-plan-max-installments", []):
            values["max_installments"] = whole_number(e.get("valueUnsignedInt"), "The maximum installments",
                                                      f"{RTYPE}.extension[{i}]", minimum=1, maximum=255)
        cycles = by_name.get("insurance-plan-start-cycle", [])
        require(len(cycles) <= 4, "At most 4 cycle start dates", f"{RTYPE}.extension")
        for n, (i, e) in enumerate(cycles, start=1):
            values[f"start_cycle_{n}"] = self._cycle(e.get("valueString"), f"{RTYPE}.extension[{i}]",
                                                     [values[f"start_cycle_{k}"] for k in range(1, n)])
        for slot, (i, e) in _slotted(by_name.get("insurance-plan-period", []), list(PERIOD_SLICES),
                                     "period").items():
            values[PERIOD_SLICES[slot]] = _months(e.get("valueQuantity"), f"{RTYPE}.extension[{i}].valueQuantity")
        for slot, (i, e) in _slotted(by_name.get("insurance-plan-discount", []), list(DISCOUNT_SLICES),
                                     "discount").items():
            prefix, expression = DISCOUNT_SLICES[slot], f"{RTYPE}.extension[{i}]"
            for sub in e.get("extension") or ():
                if sub.get("url") == "Percentage":
                    values[f"{prefix}_discount_perc"] = whole_number(
                        sub.get("valueDecimal"), "The discount percentage", f"{expression}.extension[Percentage]",
                        maximum=100)
                elif sub.get("url") == "Period":
                    values[f"{prefix}_discount_period"] = _months(sub.get("valueQuantity"),
                                                                  f"{expression}.extension[Period]")
        return values

    @staticmethod
    def _cycle(value: Any, expression: str, previous: list[str | None]) -> str:
        m = _CYCLE_RE.match(value) if isinstance(value, str) else None
        ok = m is not None
        if m is not None:
            try:
                date(2000, int(m.group(2)), int(m.group(1)))  # a leap year: 29-02 is a valid cycle start
            except ValueError:
                ok = False
        require(ok, "A cycle start is a day and month DD-MM", expression)
        require(value not in previous, f"The cycle start {value} is given twice", expression)
        return str(value)

    @staticmethod
    def _hifhir_extensions(ctx: WriteContext, resource: dict[str, Any]
                           ) -> tuple[dict[str, Any], list[tuple[str, int, dict[str, Any]]]]:
        values: dict[str, Any] = {}
        for fields in PRODUCT_EXTENSIONS.values():
            values.update({f.column: f.default for f in fields})
        seen: set[str] = set()
        lines: list[tuple[str, int, dict[str, Any]]] = []
        covered: set[tuple[str, int]] = set()
        for i, e in enumerate(resource.get("extension") or ()):
            url = e.get("url") if isinstance(e, dict) else None
            if not isinstance(url, str) or not url.startswith(HIFHIR_EXT):
                continue
            expression = f"{RTYPE}.extension[{i}]"
            if url == COVERAGE_LINE:
                kind_name, pk, line = InsurancePlanKind._line(ctx, e, expression)
                require((kind_name, pk) not in covered, "The item or service is covered twice", expression)
                covered.add((kind_name, pk))
                lines.append((kind_name, pk, line))
                continue
            require(url in PRODUCT_EXTENSIONS, f"Unknown extension {url[:100]}", expression)
            require(url not in seen, f"{url} is given twice", expression)
            seen.add(url)
            values.update(_read_fields(ctx.conn, e, PRODUCT_EXTENSIONS[url], expression))
        return values, lines

    @staticmethod
    def _line(ctx: WriteContext, e: dict[str, Any], expression: str) -> tuple[str, int, dict[str, Any]]:
        provision = next((s for s in e.get("extension") or () if isinstance(s, dict) and s.get("url") == "provision"),
                         None)
        require(provision is not None, "A coverage line needs its provision (Medication or ActivityDefinition)",
                expression)
        assert provision is not None
        kind, pk = ctx.resolve(provision.get("valueReference"), ["Medication", "ActivityDefinition"],
                               f"{expression}.extension[provision]")
        line = _read_fields(ctx.conn, e, LINE_FIELDS, expression, skip=("provision",))
        for name, suffix in _LIMITS:
            if line[f"limitation_type{suffix}"] == "C":
                for age in ("adult", "child"):
                    require(line[f"limit_{age}{suffix}"] <= 100,
                            f"A co-insurance limit (limitationType{name} C) is a percentage, at most 100",
                            expression)
        return kind.name, pk, line

    @staticmethod
    def _replace_lines(conn: Connection, pk: int, lines: list[tuple[str, int, dict[str, Any]]],
                       *, replace: bool) -> None:
        if replace:
            conn.execute(delete(product_item).where(product_item.c.product_pk == pk))
            conn.execute(delete(product_service).where(product_service.c.product_pk == pk))
        items = [{"product_pk": pk, "item_pk": target, **line} for kind, target, line in lines
                 if kind == "medication"]
        services = [{"product_pk": pk, "service_pk": target, **line} for kind, target, line in lines
                    if kind != "medication"]
        if items:
            conn.execute(insert(product_item), items)
        if services:
            conn.execute(insert(product_service), services)

    def delete(self, ctx: WriteContext, current: Row) -> None:
        row = ctx.conn.execute(select(product.c.code).where(
            product.c.conversion_product_pk == current.pk, is_current(product), product.c.pk != current.pk)
            .order_by(product.c.code).limit(1)).first()
        if row is not None:
            raise conflict(f"Product {current.code} is the conversion product of {row.code}: change that first")


LOCATION_USERS.append(_CoverageAreaUser(InsurancePlanKind.name, product, "location_pk", "code", "product"))
