"""OpenIMISCoverage: the read-only view of a policy (IG §1b row 16, §2 coverage-date; domain §2.15).

One `coverage` row per policy, written by the Contract kind in the same transaction as the policy (so both
versions move together); its id and identifier[UUID] are the policy's (`Coverage/<policy uuid>`, as openIMIS).
Creating, updating or deleting a Coverage directly is refused (405): enrol, change or delete the Contract.

Mapping:
* `status` (IG VS coverage-status): idle and ready → `draft`, active and expired → `active` (an expired policy
  still covers the days of its window), suspended → `cancelled`. The exact openIMIS status (expired computed
  from the expiry date) is in the IG's otherwise unused extension `coverage-policy-status` (a coding of the
  hifhir CodeSystem `https://hifhir.org/fhir/CodeSystem/policy-status`: idle, active, suspended, expired, ready).
* extensions `coverage-date`: the IG slices it twice on the same URL (enrollDate, effectiveDate, 1..1 each), so
  they are rendered in that order with `Extension.id` = the slice name. `effectiveDate` while the policy is not
  yet effective (idle): the value carries only a data-absent-reason extension (`temp-unknown`, "known later"),
  rather than a made-up date.
* `beneficiary` = the head of the family (Contract.term.offer.party); `policyHolder` = the same Patient for the
  informal sector (the profile allows only a Patient there, so it is absent for the formal sector); `payor` =
  that Patient (informal) or the policy holder Organization (formal).
* `period` = start .. expiry; `class` = plan: value = product code, name = product name.

Search: identifier / _id (the policy UUID), `beneficiary`, `patient` (the beneficiary or any covered insuree: the
question a point of service asks for a member who is not the head), `policy-holder`, `payor` (Patient or
Organization), `status` (draft | active | cancelled), `policy-status` (idle | active | suspended | expired | ready),
`period` (date overlap), `class-value` (product code), `_lastUpdated`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from sqlalchemy import Connection, Row, select

from hifhir.auth import scope as location_scope
from hifhir.domain.policy import ACTIVE, IDLE, READY, STATUS_NAMES, SUSPENDED, status_on
from hifhir.fhir.elements import coding, identifiers, reference
from hifhir.fhir.kind import EXT, ResourceKind
from hifhir.fhir.profiles.contract import (
    HIFHIR_CS,
    choice_param,
    not_yet_known,
    policy_status_options,
    policy_views_plan,
    today,
    typed_reference_param,
)
from hifhir.fhir.profiles.insurance_plan import period_param
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import Clause, SearchParam, link_ref, token_param
from hifhir.store.fast import DriverQuery, Plan, any_pk, run_plan
from hifhir.store.tables import coverage, insuree_policy, is_current, policy, product

COVERAGE_DATE = EXT + "coverage-date"
COVERAGE_POLICY_STATUS = EXT + "coverage-policy-status"
FM_STATUS = "http://hl7.org/fhir/fm-status"
CLASS_TYPE = {"coding": [coding("http://terminology.hl7.org/CodeSystem/coverage-class", "plan", "Plan")]}
COVERAGE_STATUS = {IDLE: "draft", READY: "draft", ACTIVE: "active", SUSPENDED: "cancelled"}
STORED_BY_COVERAGE_STATUS = {"draft": (IDLE, READY), "active": (ACTIVE,), "cancelled": (SUSPENDED,)}

_COVERAGE_IDS = DriverQuery(select(coverage.c.pk, coverage.c.uuid, coverage.c.policy_pk).where(
    any_pk(coverage.c.pk)))


def _via_policy(param: SearchParam) -> SearchParam:
    """A parameter written against `policy` columns, applied to coverage rows through their policy."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        return coverage.c.policy_pk.in_(select(policy.c.pk).where(param.clause(value, modifier, expression)))

    return SearchParam(param.name, param.type, clause, param.modifiers, param.documentation)


def _effective_extension(effective_date: date | None) -> dict[str, Any]:
    effective: dict[str, Any] = {"id": "effectiveDate", "url": COVERAGE_DATE}
    if effective_date is not None:
        effective["valueDate"] = effective_date.isoformat()
    else:
        effective["_valueDate"] = not_yet_known()
    return effective


def _policy_status_extension(status: int, expiry_date: date, day: date) -> dict[str, Any]:
    current = status_on(status, expiry_date, day)
    return {"url": COVERAGE_POLICY_STATUS, "valueCodeableConcept": {"coding": [
        coding(HIFHIR_CS + "policy-status", STATUS_NAMES[current], STATUS_NAMES[current].capitalize())]}}


def render_coverage(cov: Row, row: Row, day: date) -> dict[str, Any]:
    head = reference("Patient", row.head_id) if row.head_id else None
    res: dict[str, Any] = {
        "extension": [
            {"id": "enrollDate", "url": COVERAGE_DATE, "valueDate": row.enroll_date.isoformat()},
            _effective_extension(row.effective_date),
            _policy_status_extension(row.status, row.expiry_date, day),
        ],
        "identifier": identifiers(None, cov.uuid),
        "status": COVERAGE_STATUS.get(row.status, "draft"),
    }
    informal = row.family_pk is not None
    if informal and head is not None:
        res["policyHolder"] = head
    if head is not None:
        res["beneficiary"] = head
    res["period"] = {"start": row.start_date.isoformat(), "end": row.expiry_date.isoformat()}
    if informal:
        res["payor"] = [head] if head is not None else []
    else:
        res["payor"] = [reference("Organization", row.holder_id)]
    res["class"] = [{"type": CLASS_TYPE, "value": row.product_code, "name": row.product_name}]
    return res


class CoverageKind(ResourceKind):
    resource_type = "Coverage"
    name = "coverage"
    profile_id = "openimis-coverage"
    table = coverage
    scope = location_scope.COVERAGE
    # A payment that activates the policy changes its status and effective date alone (contract.activate_if_paid).
    patchable = frozenset({"status", "effective_date", "expiry_date"})  # the policy's
    code_column = None
    writable = False

    def __init__(self) -> None:
        t, p, ip = coverage, policy, insuree_policy
        # Coverage rows hold no reference themselves: each path pairs a coverage pk (source) with a target
        # through the policy (condition), so that _include, chains and _has follow it like a column.
        link = coverage.alias("coverage_link")

        def via(target: Any, kind: str, *conditions: Any) -> Any:
            condition = link.c.policy_pk == p.c.pk
            for extra in conditions:
                condition = condition & extra
            return link_ref(t.c.pk, link.c.pk, target, kind, condition)

        beneficiary = via(p.c.head_insuree_pk, "patient")
        covered = link_ref(t.c.pk, link.c.pk, ip.c.insuree_pk, "patient",
                           (link.c.policy_pk == ip.c.policy_pk) & is_current(ip))
        holder_patient = via(p.c.head_insuree_pk, "patient", p.c.family_pk.is_not(None))
        product_code = token_param("class-value", product.c.code)
        self.search_params = {
            **common_params(self),
            "beneficiary": typed_reference_param("beneficiary", [("Patient", beneficiary)],
                                                 "The head of the family (Contract.term.offer.party)"),
            "patient": typed_reference_param("patient", [("Patient", beneficiary), ("Patient", covered)],
                                             "The beneficiary or any insuree the policy covers"),
            "policy-holder": typed_reference_param("policy-holder", [("Patient", holder_patient)],
                                                   "The head of the family (informal sector)"),
            "payor": typed_reference_param(
                "payor", [("Patient", holder_patient),
                          ("Organization", via(p.c.policy_holder_pk, "policy-holder"))],
                "The head of the family (informal sector) or the policy holder (formal sector)"),
            "status": _via_policy(choice_param(
                "status", {code: (lambda stored=stored: p.c.status.in_(stored))
                           for code, stored in STORED_BY_COVERAGE_STATUS.items()},
                frozenset({FM_STATUS}), "draft (idle), active (active or expired) or cancelled (suspended)")),
            "policy-status": _via_policy(choice_param(
                "policy-status", policy_status_options(p), frozenset({HIFHIR_CS + "policy-status"}),
                "The openIMIS policy status: idle, active, suspended, expired or ready")),
            "period": _via_policy(period_param("period", p.c.start_date, p.c.expiry_date,
                                               "The policy period (start .. expiry)")),
            "class-value": SearchParam(
                "class-value", "token",
                lambda value, modifier, expression: t.c.policy_pk.in_(
                    select(p.c.pk).join(product, product.c.pk == p.c.product_pk).where(
                        product_code.clause(value, modifier, expression))),
                frozenset({"not"}), "The product code (class plan value)"),
        }
        self.sort_params = common_sorts(self)

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        return run_plan(conn, self.render_plan(conn, pks))

    def patch_body(self, body: dict[str, Any], change: Mapping[str, Any]) -> bool:
        extensions = body.get("extension")
        if not (isinstance(extensions, list) and len(extensions) == 3
                and extensions[1].get("id") == "effectiveDate" and extensions[2].get("url") == COVERAGE_POLICY_STATUS):
            return False
        extensions[1] = _effective_extension(change["effective_date"])
        extensions[2] = _policy_status_extension(change["status"], change["expiry_date"], today())
        body["status"] = COVERAGE_STATUS.get(change["status"], "draft")
        return True

    def render_plan(self, conn: Connection, pks: list[int]) -> Plan[dict[int, dict[str, Any]]]:
        covs, = yield [(_COVERAGE_IDS, {"pks": pks})]
        policies = yield from policy_views_plan(conn, [c.policy_pk for c in covs])
        day = today()
        return {c.pk: render_coverage(c, policies[c.policy_pk], day) for c in covs}
