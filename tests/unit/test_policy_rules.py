"""openIMIS policy rules (domain §3.1.3–3.1.6): value, period, payment deadline, activation, status, renewal."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal

import pytest

from hifhir.domain.policy import (
    ACTIVE,
    EXPIRED,
    IDLE,
    READY,
    SUSPENDED,
    TERMS_COLUMNS,
    Member,
    Payment,
    PolicyDates,
    ProductTerms,
    activation_date,
    add_months,
    age_on,
    conversion_target,
    count_members,
    covers_on,
    last_payment_date,
    parse_cycle,
    policy_period,
    policy_value,
    previous_policy,
    renewal_sources,
    renewal_window,
    stage_after,
    status_on,
)

ENROL = date(2024, 3, 15)
ADULT = Member(date(1990, 5, 1))
CHILD = Member(date(2015, 5, 1))
OTHER_ADULT = Member(date(1960, 1, 1), "7")
OTHER_CHILD = Member(date(2020, 1, 1), "7")

# The demo products of domain §5 / §3.1.3.
FCUL0001 = ProductTerms(
    code="FCUL0001", date_from=date(2020, 1, 1), date_to=date(2030, 12, 31), member_count=9999,
    lump_sum=Decimal(0), threshold=6, premium_adult=Decimal(4000), premium_child=Decimal(4000),
    registration_lump_sum=Decimal(1000), general_assembly_lump_sum=Decimal(1000), max_installments=3,
    start_cycles=("01-06", "01-11"), grace_period_payment=3)
BCUL0001 = ProductTerms(
    code="BCUL0001", date_from=date(2020, 1, 1), date_to=date(2030, 12, 31), member_count=6,
    lump_sum=Decimal(10000), threshold=6, max_installments=1)
FREE = ProductTerms(code="FREE", date_from=date(2020, 1, 1), date_to=date(2030, 12, 31), member_count=10)


def value(terms: ProductTerms, members: list[Member], stage: str = "N", *, enroll: date = ENROL,
          start: date | None = None, previous_expiry: date | None = None) -> Decimal:
    return policy_value(terms, members, stage=stage, enroll_date=enroll,  # type: ignore[arg-type]
                        start_date=start or enroll, previous_expiry=previous_expiry)


# --- ages and dates --------------------------------------------------------------------------------------------


def test_exact_age_at_the_date():
    assert age_on(date(2006, 3, 16), date(2024, 3, 15)) == 17  # 18 tomorrow
    assert age_on(date(2006, 3, 15), date(2024, 3, 15)) == 18
    assert age_on(date(2006, 12, 31), date(2024, 1, 1)) == 17  # legacy's year difference would say 18
    assert age_on(date(2000, 2, 29), date(2018, 2, 28)) == 17


def test_add_months_clamps_to_month_end():
    assert add_months(date(2021, 1, 31), 1) == date(2021, 2, 28)
    assert add_months(date(2024, 1, 31), 1) == date(2024, 2, 29)
    assert add_months(date(2024, 3, 31), -1) == date(2024, 2, 29)
    assert add_months(date(2024, 11, 15), 3) == date(2025, 2, 15)
    assert add_months(date(2024, 1, 15), -13) == date(2022, 12, 15)


def test_cycle_format():
    assert parse_cycle("01-07") == (7, 1)
    assert parse_cycle("29-02") == (2, 29)
    for bad in ("1-7", "32-01", "31-04", "01-13", "0107", "aa-bb"):
        with pytest.raises(ValueError):
            parse_cycle(bad)


# --- §3.1.3 worked examples ------------------------------------------------------------------------------------


def test_fcul0001_new_family_of_two_adults_three_children_pays_22000():
    family = [ADULT, ADULT, CHILD, CHILD, CHILD]
    assert value(FCUL0001, family) == Decimal(22000)  # 5 × 4000 + registration 1000 + assembly 1000


def test_fcul0001_renewal_pays_21000_without_registration():
    family = [ADULT, ADULT, CHILD, CHILD, CHILD]
    assert value(FCUL0001, family, "R", previous_expiry=date(2024, 5, 31)) == Decimal(21000)


@pytest.mark.parametrize("size", [1, 2, 5, 6])
def test_bcul0001_lump_sum_whatever_the_family_size_up_to_six(size):
    assert value(BCUL0001, [ADULT] * size) == Decimal(10000)
    assert value(BCUL0001, [CHILD] * size) == Decimal(10000)


def test_bcul0001_counts_only_the_first_six_members():
    # Family order: the first member_count members count, the others are not covered by this value.
    assert value(BCUL0001, [ADULT] * 9) == Decimal(10000)
    capped = replace(BCUL0001, premium_adult=Decimal(100), premium_child=Decimal(50), threshold=2)
    # 6 counted (2 adults, 4 children, the 7th…9th adults ignored): extras = 0 adults, 4 − (2 − 2 + 0) = 4 children
    assert value(capped, [ADULT, ADULT, CHILD, CHILD, CHILD, CHILD, ADULT, ADULT, ADULT]) == Decimal(10200)
    assert count_members(capped, [ADULT] * 9, ENROL).total == 6


# --- lump sum, threshold and extras ----------------------------------------------------------------------------


LUMP = ProductTerms(code="LUMP", date_from=date(2020, 1, 1), date_to=date(2030, 12, 31), member_count=20,
                    lump_sum=Decimal(1000), threshold=3, premium_adult=Decimal(100), premium_child=Decimal(50))


def test_lump_sum_covers_up_to_threshold():
    assert value(LUMP, [ADULT]) == Decimal(1000)
    assert value(LUMP, [ADULT, ADULT, CHILD]) == Decimal(1000)


def test_extras_above_threshold_adults_first_then_children():
    # 4 adults: 1 extra adult; children fill no free place → every child is extra
    assert value(LUMP, [ADULT] * 4 + [CHILD] * 2) == Decimal(1000 + 100 + 2 * 50)
    # 2 adults + 3 children: 1 place left for children → 2 extra children
    assert value(LUMP, [ADULT, ADULT, CHILD, CHILD, CHILD]) == Decimal(1000 + 2 * 50)
    # children only: 3 covered, 2 extra
    assert value(LUMP, [CHILD] * 5) == Decimal(1000 + 2 * 50)


def test_lump_sum_without_threshold_covers_every_counted_member():
    no_threshold = replace(LUMP, threshold=0)
    assert value(no_threshold, [ADULT] * 10) == Decimal(1000)


def test_no_lump_sum_every_member_pays_whatever_the_threshold():
    per_person = replace(LUMP, lump_sum=Decimal(0), threshold=3)
    # neither legacy's double charge (extras twice) nor Python's dropped extras
    assert value(per_person, [ADULT] * 4 + [CHILD] * 2) == Decimal(4 * 100 + 2 * 50)


def test_relationship_others_always_pays_outside_the_lump_sum():
    assert value(LUMP, [ADULT, OTHER_ADULT]) == Decimal(1000 + 100)
    assert value(LUMP, [ADULT, OTHER_CHILD]) == Decimal(1000 + 50)
    # "others" do not take a place under the threshold: 3 ordinary members stay covered
    assert value(LUMP, [ADULT, ADULT, CHILD, OTHER_ADULT]) == Decimal(1100)
    per_person = replace(LUMP, lump_sum=Decimal(0))
    assert value(per_person, [ADULT, OTHER_ADULT, OTHER_CHILD]) == Decimal(100 + 100 + 50)


def test_age_is_taken_at_the_enrolment_date():
    turning_18 = Member(date(2006, 3, 16))
    per_person = replace(LUMP, lump_sum=Decimal(0))
    assert value(per_person, [turning_18], enroll=date(2024, 3, 15)) == Decimal(50)
    assert value(per_person, [turning_18], enroll=date(2024, 3, 16)) == Decimal(100)


# --- registration and general assembly -------------------------------------------------------------------------


def test_registration_and_assembly_fees_per_member_unless_lump_sum():
    fees = replace(LUMP, registration_fee=Decimal(10), general_assembly_fee=Decimal(5))
    family = [ADULT, ADULT, CHILD]
    assert value(fees, family) == Decimal(1000 + 3 * 10 + 3 * 5)
    assert value(fees, family, "R") == Decimal(1000 + 3 * 5)
    lumps = replace(fees, registration_lump_sum=Decimal(70), general_assembly_lump_sum=Decimal(20))
    assert value(lumps, family) == Decimal(1000 + 70 + 20)
    assert value(lumps, family, "R") == Decimal(1000 + 20)


# --- discounts -------------------------------------------------------------------------------------------------


CYCLES = replace(LUMP, start_cycles=("01-01", "01-07"), enrolment_discount_perc=10, enrolment_discount_period=2,
                 renewal_discount_perc=20, renewal_discount_period=1)


def test_enrolment_discount_for_cycle_products_enrolling_early_enough():
    start = date(2024, 7, 1)
    assert value(CYCLES, [ADULT], enroll=date(2024, 5, 1), start=start) == Decimal(900)  # exactly 2 months before
    assert value(CYCLES, [ADULT], enroll=date(2024, 5, 2), start=start) == Decimal(1000)
    free_cycle = replace(CYCLES, start_cycles=())
    assert value(free_cycle, [ADULT], enroll=date(2024, 1, 1), start=start) == Decimal(1000)


def test_renewal_discount_before_previous_expiry():
    previous_expiry = date(2024, 6, 30)  # reference = 1 July, discount up to 1 June
    assert value(CYCLES, [ADULT], "R", enroll=date(2024, 6, 1), start=date(2024, 7, 1),
                 previous_expiry=previous_expiry) == Decimal(800)
    assert value(CYCLES, [ADULT], "R", enroll=date(2024, 6, 2), start=date(2024, 7, 1),
                 previous_expiry=previous_expiry) == Decimal(1000)
    # unknown previous policy: the start date is the reference; no enrolment discount at renewal
    assert value(CYCLES, [ADULT], "R", enroll=date(2024, 5, 1), start=date(2024, 7, 1)) == Decimal(800)


def test_discount_rounds_to_the_cent():
    odd = replace(CYCLES, lump_sum=Decimal("333.33"), enrolment_discount_perc=15)
    assert value(odd, [ADULT], enroll=date(2024, 1, 1), start=date(2024, 7, 1)) == Decimal("283.33")


# --- §3.1.4 period ---------------------------------------------------------------------------------------------


def test_free_cycle_start_is_enrolment_plus_administration_period():
    assert policy_period(FREE, ENROL) == (date(2024, 3, 15), date(2025, 3, 14))
    admin = replace(FREE, administration_period=1, insurance_period=6)
    assert policy_period(admin, date(2024, 1, 31)) == (date(2024, 2, 29), date(2024, 8, 28))


def test_expiry_is_start_plus_insurance_period_minus_one_day():
    for start, months, expiry in ((date(2024, 1, 1), 12, date(2024, 12, 31)),
                                  (date(2024, 2, 29), 12, date(2025, 2, 27)),
                                  (date(2024, 7, 1), 6, date(2024, 12, 31))):
        assert policy_period(replace(FREE, insurance_period=months), start).expiry == expiry


def test_cycle_start_with_grace_is_strict():
    grace = replace(FREE, start_cycles=("01-01", "01-07"), grace_period=1)
    assert policy_period(grace, date(2024, 7, 31)).start == date(2024, 7, 1)
    # reference == cycle + grace: no longer in that cycle (legacy's strict comparison)
    assert policy_period(grace, date(2024, 8, 1)).start == date(2025, 1, 1)
    assert policy_period(grace, date(2024, 6, 30)).start == date(2024, 7, 1)
    no_grace = replace(grace, grace_period=0)
    assert policy_period(no_grace, date(2024, 7, 1)).start == date(2025, 1, 1)
    assert policy_period(no_grace, date(2024, 6, 30)).start == date(2024, 7, 1)


def test_cycle_after_the_last_of_the_year_is_next_years_first():
    one = replace(FREE, start_cycles=("01-06",))
    assert policy_period(one, date(2024, 6, 2)).start == date(2025, 6, 1)
    assert policy_period(FCUL0001, date(2024, 11, 2)).start == date(2025, 6, 1)


def test_cycle_grace_running_into_the_next_year():
    november = replace(FREE, start_cycles=("01-11",), grace_period=3)
    # enrolling 15 January 2025 still joins the 1 November 2024 cycle (legacy would start 1 November 2025)
    assert policy_period(november, date(2025, 1, 15)).start == date(2024, 11, 1)
    assert policy_period(november, date(2025, 2, 1)).start == date(2025, 11, 1)


def test_cycles_unordered_and_repeated_are_sorted():
    messy = replace(FREE, start_cycles=("01-10", "01-03", "01-03", "01-07"))
    assert policy_period(messy, date(2024, 4, 1)).start == date(2024, 7, 1)


def test_cycle_with_administration_period():
    rx01 = replace(FREE, start_cycles=("01-03", "01-07", "01-10"), administration_period=1, grace_period=1)
    # 28 July + 1 month = 28 August: past the July cycle's grace month → 1 October
    assert policy_period(rx01, date(2021, 7, 28)) == (date(2021, 10, 1), date(2022, 9, 30))


def test_renewal_periods():
    previous_expiry = date(2024, 6, 30)
    # free cycle: continues the day after the previous expiry…
    assert policy_period(FREE, date(2024, 6, 1), "R", previous_expiry).start == date(2024, 7, 1)
    # …or later when renewed after it lapsed (plus the administration period)
    admin = replace(FREE, administration_period=1)
    assert policy_period(admin, date(2024, 9, 10), "R", previous_expiry).start == date(2024, 10, 10)
    # cycles: the later of renewal date and previous expiry, with the renewal grace period
    cycles = replace(FREE, start_cycles=("01-01", "01-07"), grace_period=0, grace_period_renewal=2)
    assert policy_period(cycles, date(2024, 5, 1), "R", previous_expiry).start == date(2024, 7, 1)
    assert policy_period(cycles, date(2024, 8, 20), "R", previous_expiry).start == date(2024, 7, 1)
    assert policy_period(cycles, date(2024, 9, 1), "R", previous_expiry).start == date(2025, 1, 1)
    # renewal grace falls back to the enrolment grace
    fallback = replace(cycles, grace_period=1, grace_period_renewal=None)
    assert policy_period(fallback, date(2024, 7, 31), "R", previous_expiry).start == date(2024, 7, 1)
    assert policy_period(fallback, date(2024, 8, 1), "R", previous_expiry).start == date(2025, 1, 1)


# --- last date for payment -------------------------------------------------------------------------------------


def test_last_payment_date():
    cycles = replace(FREE, start_cycles=("01-07",), grace_period=2, grace_period_renewal=1)
    assert last_payment_date(cycles, "N", date(2024, 6, 1), date(2024, 7, 1)) == date(2024, 8, 31)
    assert last_payment_date(cycles, "R", date(2024, 6, 1), date(2024, 7, 1)) == date(2024, 7, 31)
    free = replace(FREE, grace_period_payment=3)
    assert last_payment_date(free, "N", date(2024, 3, 15), date(2024, 4, 15)) == date(2024, 6, 14)
    assert last_payment_date(free, "R", date(2024, 6, 1), date(2024, 7, 1), date(2024, 6, 30)) == date(2024, 9, 30)
    assert last_payment_date(FREE, "N", date(2024, 3, 15), date(2024, 3, 15)) is None


# --- §3.1.5 activation -----------------------------------------------------------------------------------------


def pay(amount: int, day: date, photo: bool = False) -> Payment:
    return Payment(Decimal(amount), day, photo)


def test_activation_when_contributions_cover_the_value():
    start = date(2024, 7, 1)
    assert activation_date(IDLE, Decimal(1000), [pay(600, date(2024, 5, 1))], FREE, start) is None
    payments = [pay(600, date(2024, 5, 1)), pay(400, date(2024, 5, 20))]
    assert activation_date(IDLE, Decimal(1000), payments, FREE, start) == start  # paid before the start
    late = [pay(600, date(2024, 5, 1)), pay(500, date(2024, 7, 10))]
    assert activation_date(IDLE, Decimal(1000), late, FREE, start) == date(2024, 7, 10)


def test_photo_fees_never_count():
    start = date(2024, 7, 1)
    payments = [pay(900, date(2024, 5, 1)), pay(100, date(2024, 5, 2), photo=True)]
    assert activation_date(IDLE, Decimal(1000), payments, FREE, start) is None
    assert activation_date(IDLE, Decimal(900), payments, FREE, start) == start


def test_installments_limit():
    start = date(2024, 7, 1)
    limited = replace(FREE, max_installments=2)
    three = [pay(400, date(2024, 5, 1)), pay(400, date(2024, 5, 2)), pay(200, date(2024, 5, 3))]
    assert activation_date(IDLE, Decimal(1000), three, limited, start) is None
    assert activation_date(IDLE, Decimal(1000), three, FREE, start) == start  # no limit set
    # a photo fee is not an installment
    two = [pay(500, date(2024, 5, 1)), pay(500, date(2024, 5, 2)), pay(10, date(2024, 5, 3), photo=True)]
    assert activation_date(IDLE, Decimal(1000), two, limited, start) == start


def test_only_idle_policies_are_activated():
    payments = [pay(1000, date(2024, 5, 1))]
    for status in (ACTIVE, SUSPENDED, READY):
        assert activation_date(status, Decimal(1000), payments, FREE, date(2024, 7, 1)) is None


def test_a_free_policy_activates_without_payment_at_its_start():
    assert activation_date(IDLE, Decimal(0), [], FREE, date(2024, 7, 1)) == date(2024, 7, 1)


# --- status ----------------------------------------------------------------------------------------------------


def test_expired_is_computed_for_active_policies_only():
    expiry = date(2024, 12, 31)
    assert status_on(ACTIVE, expiry, date(2024, 12, 31)) == ACTIVE
    assert status_on(ACTIVE, expiry, date(2025, 1, 1)) == EXPIRED
    for stored in (IDLE, SUSPENDED, READY):
        assert status_on(stored, expiry, date(2025, 1, 1)) == stored


def test_covers_on_the_days_of_its_window():
    eff, exp = date(2024, 7, 10), date(2025, 6, 30)
    assert covers_on(ACTIVE, eff, exp, date(2024, 7, 10))
    assert covers_on(ACTIVE, eff, exp, date(2025, 6, 30))  # also once expired, for a day inside the window
    assert not covers_on(ACTIVE, eff, exp, date(2024, 7, 9))
    assert not covers_on(ACTIVE, eff, exp, date(2025, 7, 1))
    assert not covers_on(SUSPENDED, eff, exp, date(2024, 8, 1))
    assert not covers_on(IDLE, None, exp, date(2024, 8, 1))


# --- §3.1.6 renewal --------------------------------------------------------------------------------------------


def test_renewal_sources_follow_conversion_chains():
    conversions = {1: 2, 2: 3, 3: None, 4: None, 5: 2}
    assert renewal_sources(3, conversions) == {1, 2, 3, 5}
    assert renewal_sources(2, conversions) == {1, 2, 5}
    assert renewal_sources(4, conversions) == {4}


def test_conversion_target_once_the_product_is_no_longer_sold():
    old = replace(FREE, pk=1, date_to=date(2023, 12, 31), conversion_product_pk=2)
    newer = replace(FREE, pk=2, date_to=date(2024, 6, 30), conversion_product_pk=3)
    newest = replace(FREE, pk=3)
    products = {1: old, 2: newer, 3: newest}
    assert conversion_target(1, products, date(2023, 6, 1)) == 1
    assert conversion_target(1, products, date(2024, 3, 1)) == 2
    assert conversion_target(1, products, date(2024, 9, 1)) == 3
    loop = {1: replace(old, conversion_product_pk=2), 2: replace(newer, conversion_product_pk=1)}
    assert conversion_target(1, loop, date(2025, 1, 1)) in (1, 2)


def test_previous_policy_is_the_latest_that_took_effect():
    paid = PolicyDates(1, 10, date(2023, 7, 1), date(2024, 6, 30), date(2023, 7, 1))
    older = PolicyDates(2, 10, date(2022, 7, 1), date(2023, 6, 30), date(2022, 7, 5))
    unpaid = PolicyDates(3, 10, date(2024, 7, 1), date(2025, 6, 30), None)
    other_product = PolicyDates(4, 99, date(2024, 1, 1), date(2024, 12, 31), date(2024, 1, 1))
    candidates = [older, paid, unpaid, other_product]
    assert previous_policy(candidates, {10}, date(2024, 6, 1), 1) == paid
    assert previous_policy([unpaid, other_product], {10}, date(2024, 6, 1), 1) is None
    # a policy running on for longer than the window is not being renewed
    assert previous_policy(candidates, {10}, date(2024, 5, 29), 1) is None
    assert previous_policy(candidates, {10}, date(2024, 3, 30), 3) == paid
    assert renewal_window(FREE) == 1 and renewal_window(replace(FREE, renewal_discount_period=2)) == 2
    assert stage_after(paid) == "R" and stage_after(None) == "N"


def test_product_terms_are_read_from_exactly_the_terms_columns() -> None:
    """Reads of a product for its terms select TERMS_COLUMNS only (the activation's): from_row must need no other."""
    read: list[str] = []

    class Row(dict):  # type: ignore[type-arg]
        def __getitem__(self, key: str) -> object:
            read.append(key)
            return super().__getitem__(key)

    values = {name: 0 for name in TERMS_COLUMNS} | {
        "code": "P1", "date_from": ENROL, "date_to": date(2030, 1, 1), "member_count": 6, "start_cycle_1": None,
        "start_cycle_2": None, "start_cycle_3": None, "start_cycle_4": None, "grace_period_renewal": None,
        "grace_period_payment": None, "max_installments": None, "location_pk": None, "conversion_product_pk": None}
    terms = ProductTerms.from_row(Row(values))

    assert sorted(set(read)) == sorted(TERMS_COLUMNS)
    assert terms.code == "P1" and terms.member_count == 6
