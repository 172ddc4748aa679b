"""Eligibility rules (domain §3.2) on plain values: dates, ages, balances, the per-line verdict and the summary
over several policies. The HTTP tests (tests/http/test_eligibility.py) run the same rules against the database."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from hifhir.domain import eligibility as e
from hifhir.domain.eligibility import (
    Balance,
    Counter,
    LineCoverage,
    PolicyEligibility,
    Provision,
)
from hifhir.domain.policy import add_months, age_on

TODAY = date(2025, 3, 15)
SURGERY = Provision("service", "S1", 7, "S")
CONSULT = Provision("service", "A1", 8, "C")
ASPIRIN = Provision("item", "0001", 9)


class Row(SimpleNamespace):
    """A policies-query row: attributes, and the product columns (p_*) in `_mapping`."""

    def __init__(self, product: dict[str, Any] | None = None, **attrs: Any) -> None:
        columns = {f"p_{c}": None for c in e._PRODUCT_COLUMNS} | {"p_code": "BASIC", "p_name": "Basic"}
        columns.update({f"p_{k}": v for k, v in (product or {}).items()})
        defaults = {"policy_pk": 1, "policy_id": "pol", "coverage_id": "cov", "product_pk": 10, "members": 1,
                    "effective_date": date(2025, 1, 1), "expiry_date": date(2025, 12, 31)}
        super().__init__(**(defaults | attrs), _mapping=columns)


@pytest.mark.parametrize(("day", "months", "expected"), [
    (date(2024, 1, 31), 1, date(2024, 2, 29)),  # clamped to the month's last day, leap year
    (date(2023, 1, 31), 1, date(2023, 2, 28)),
    (date(2024, 11, 15), 3, date(2025, 2, 15)),
    (date(2024, 5, 31), 0, date(2024, 5, 31)),
    (date(2024, 3, 31), 12, date(2025, 3, 31)),
])
def test_add_months_is_calendar_wise(day, months, expected):
    assert add_months(day, months) == expected


def test_age_is_exact_on_the_day():
    assert age_on(date(2007, 3, 15), TODAY) == 18  # eighteenth birthday: adult
    assert age_on(date(2007, 3, 16), TODAY) == 17
    assert age_on(date(2008, 2, 29), date(2026, 2, 28)) == 17  # a leap-day birthday comes on 1 March


def test_counters_balances_and_quantities_never_go_below_zero():
    assert Counter("S", None, 4).left is None  # no maximum: unlimited
    assert Counter("S", 3, 5).left == 0
    assert Counter("S", 4, 1).left == 3
    assert Balance("insuree", Decimal(100), Decimal(130)).left == 0
    assert Balance("policy", Decimal("100.50"), Decimal("0.25")).left == Decimal("100.25")
    assert LineCoverage(SURGERY, True, TODAY, 3, Decimal("1.5")).left == 1  # whole units left
    assert LineCoverage(SURGERY, True, TODAY, 2, Decimal(5)).left == 0
    assert LineCoverage(SURGERY, True, TODAY, None, Decimal(5)).left is None


# --- one line under one policy -----------------------------------------------------------------------------------


def verdict(prov: Provision, line: e._Line | None, *, uses: list[e._Use] = (), adult: bool = True,
            counters: dict[str, int | None] | None = None, amounts: dict[str, Any] | None = None,
            effective: date = date(2025, 1, 1)) -> LineCoverage:
    maxima = {"S": None, "C": None, "D": None} | (counters or {})
    return e._line(prov, line, Row(effective_date=effective), list(uses),
                   {cat: Counter(cat, m, 0) for cat, m in maxima.items()},
                   {"S": None, "C": None, "D": None} | (amounts or {}), adult, TODAY)


def line_of(waiting_adult: int | None = None, waiting_child: int | None = None, limit_adult: int | None = None,
            limit_child: int | None = None) -> e._Line:
    return e._Line(waiting_adult, waiting_child, limit_adult, limit_child)


def use(prov: Provision, qty: Any) -> e._Use:
    return e._Use(prov.kind, 1, None, TODAY, prov.pk or 0, None, Decimal(str(qty)))


def test_unknown_and_uncovered_provisions():
    unknown = verdict(Provision("service", "ZZ"), None)
    assert (unknown.covered, unknown.ok, unknown.reason) == (False, False, "unknown service code 'ZZ'")
    uncovered = verdict(SURGERY, None)
    assert (uncovered.covered, uncovered.ok, uncovered.reason) == (False, False, "not covered by product BASIC")


def test_waiting_period_uses_the_age_group():
    adult = verdict(SURGERY, line_of(waiting_adult=3, waiting_child=1))
    assert adult.min_date == date(2025, 4, 1) and not adult.ok and adult.reason == "waiting period until 2025-04-01"
    child = verdict(SURGERY, line_of(waiting_adult=3, waiting_child=1), adult=False)
    assert child.min_date == date(2025, 2, 1) and child.ok
    assert verdict(SURGERY, line_of()).min_date == date(2025, 1, 1)  # no waiting period: the effective date


def test_quantity_limits_by_age_group_with_zero_meaning_unlimited():
    line = line_of(limit_adult=4, limit_child=0)
    adult = verdict(ASPIRIN, line, uses=[use(ASPIRIN, 1), use(ASPIRIN, "2.5"), use(CONSULT, 9)])
    assert (adult.limit, adult.used, adult.left, adult.ok) == (4, Decimal("3.5"), 0, False)
    assert adult.reason == "quantity limit reached"
    child = verdict(ASPIRIN, line, adult=False, uses=[use(ASPIRIN, 50)])
    assert (child.limit, child.left, child.ok) == (None, None, True)


def test_surgery_consultation_and_delivery_also_need_their_category_left():
    assert verdict(SURGERY, line_of(), counters={"S": 0}).reason == "no surgeries left"
    assert verdict(SURGERY, line_of(), amounts={"S": Decimal(0)}).reason == "no surgery amount"
    assert verdict(SURGERY, line_of(), counters={"S": 2}, amounts={"S": Decimal(5)}).ok
    assert verdict(CONSULT, line_of(), counters={"S": 0}).ok  # another category's maximum does not matter
    other = Provision("service", "H1", 3, "H")  # legacy checks only S, C and D
    assert verdict(other, line_of(), counters={"S": 0}).ok


# --- deductibles and ceilings --------------------------------------------------------------------------------------


def sums(**values: Any) -> dict[str, Decimal]:
    return dict.fromkeys(e._CONSUMED_COLUMNS, Decimal(0)) | {k: Decimal(str(v)) for k, v in values.items()}


def test_the_first_non_zero_scope_applies_per_family():
    row = Row({"ded_treatment": Decimal(0), "ded_insuree": Decimal(50), "ded_policy": Decimal(500),
               "max_ip_treatment": Decimal(300), "max_ip_policy": Decimal(9000), "max_op_policy": Decimal(1000)})
    consumed = {(1, True): sums(ded_g=20, rem_op=100), (1, False): sums(ded_g=70, rem_op=250)}
    deductibles = e._balances(row, "ded", consumed)
    assert deductibles == {"general": Balance("insuree", Decimal(50), Decimal(20))}  # 0 treatment = not set
    ceilings = e._balances(row, "max", consumed)
    assert ceilings == {"ip": Balance("treatment", Decimal(300), Decimal(0)),  # per claim: as is
                        "op": Balance("policy", Decimal(1000), Decimal(350))}  # every member's usage


@pytest.mark.parametrize(("members", "threshold", "cap", "expected"), [
    (5, 3, None, 1400),  # 1000 + 2 extra members × 200
    (5, 3, 1300, 1300),  # capped
    (3, 3, None, 1000),  # no extra member
    (5, None, None, 1000),  # no threshold: no extras
])
def test_policy_ceiling_grows_with_extra_members(members, threshold, cap, expected):
    row = Row({"max_policy": Decimal(1000), "max_policy_extra_member": Decimal(200), "threshold": threshold,
               "max_ceiling_policy": None if cap is None else Decimal(cap)}, members=members)
    assert e._balances(row, "max", {})["general"].amount == Decimal(expected)


# --- several policies ------------------------------------------------------------------------------------------------


def policy_with(*lines: LineCoverage) -> PolicyEligibility:
    return PolicyEligibility(1, "p", "c", 1, "P", "Product", date(2025, 1, 1), date(2025, 12, 31), {}, {}, {}, {},
                             tuple(lines))


def test_summary_prefers_reached_policies():
    reached = LineCoverage(SURGERY, True, date(2025, 2, 1), 5, Decimal(4), ok=True)
    waiting = LineCoverage(SURGERY, True, date(2025, 6, 1), 10, Decimal(0), ok=False, reason="waiting")
    summary = e._summary(SURGERY, (policy_with(waiting), policy_with(reached)), TODAY)
    assert (summary.covered, summary.min_date, summary.left, summary.ok) == (True, date(2025, 2, 1), 1, True)


def test_summary_unlimited_if_a_reached_policy_has_no_limit():
    limited = LineCoverage(SURGERY, True, date(2025, 2, 1), 5, Decimal(5), ok=False, reason="quantity")
    unlimited = LineCoverage(SURGERY, True, date(2025, 3, 1), None, Decimal(5), ok=True)
    summary = e._summary(SURGERY, (policy_with(limited), policy_with(unlimited)), TODAY)
    assert (summary.left, summary.ok) == (None, True)


def test_summary_when_nothing_is_reached_or_covered():
    waiting = LineCoverage(SURGERY, True, date(2025, 6, 1), 10, Decimal(0), ok=False, reason="waiting")
    later = LineCoverage(SURGERY, True, date(2025, 9, 1), 10, Decimal(0), ok=False, reason="waiting")
    summary = e._summary(SURGERY, (policy_with(later), policy_with(waiting)), TODAY)
    assert (summary.min_date, summary.left, summary.ok) == (date(2025, 6, 1), None, False)
    unknown = Provision("item", "ZZ")
    nothing = e._summary(unknown, (policy_with(LineCoverage(unknown, False)),), TODAY)
    assert (nothing.known, nothing.covered, nothing.min_date, nothing.ok) == (False, False, None, False)
