"""openIMIS policy rules (domain §2.14–2.17, §3.1): contribution due, policy period, payment deadline,
activation, status and renewal. Pure functions over small dataclasses: no HTTP, no FHIR JSON, no SQL.

Decisions taken where openIMIS's two implementations disagree (domain §3.1, §6):

* **Ages** are exact ages at the enrolment date (legacy: calendar-year difference with today). Adult = 18 or more.
* **Policy value** (`policy_value`, §3.1.3):
  - members beyond the product's `member_count` are not counted; the caller gives them in family order (the head
    first, then by registration order), so the first `member_count` count (legacy order);
  - `lump_sum > 0`: the lump sum covers up to `threshold` members; adults, then children, above the threshold pay
    `premium_adult` / `premium_child` each (no threshold = the lump sum covers every counted member);
  - `lump_sum = 0`: every counted member pays the adult/child premium, whatever the threshold (the user manual;
    legacy charged the extras twice, Python not at all);
  - relationship "7" (Others) always pays the per-person premium outside the lump sum (legacy; Python never detects
    it);
  - general assembly: its lump sum when > 0, else the fee per counted member, at enrolment and at renewal;
    registration: the same, for new policies (stage N) only;
  - discounts on the whole value: enrolment discount for cycle products at stage N when the enrolment date is at
    least `enrolment_discount_period` months before the start date; renewal discount at stage R when the renewal
    date is at least `renewal_discount_period` months before the previous expiry + 1 day (or the start date when
    the previous policy is unknown). Rounded half-up to the cent.
* **Policy period** (`policy_period`, §3.1.4): new policies start at the enrolment date plus the administration
  period; renewals without cycles at max(previous expiry + 1 day, renewal date + administration period). With
  cycles (`dd-mm`), the start is the first cycle date C with reference < C + grace months (strict, as legacy),
  where grace is `grace_period` for N and `grace_period_renewal` (falling back to `grace_period`) for R, and the
  renewal reference is the later of the renewal date and the previous expiry date. Cycle dates are taken in the
  reference's year and in the years around it, so that an enrolment in January still joins a November cycle whose
  grace period runs into the new year (legacy only looks at the reference's year and would skip to the next
  cycle). Expiry = start + insurance period months − 1 day.
* **Activation** (option 1, §3.1.5): an Idle policy becomes Active as soon as its contributions (photo fees never
  count) reach its value, provided the number of contributions does not exceed `max_installments` when the
  product sets one; EffectiveDate = max(last payment date, StartDate). Suspended, ready or expired policies are
  never (re)activated by a payment. The last date for payment (`last_payment_date`) is informative: openIMIS's
  GUI and Python service do not refuse late payments either.
  Activation option 3 (§6.7: Ready until the payment is matched) is not a setting here, by decision: hifhir has
  no unmatched payments to wait for. Its contributions are either recorded by the officer with the Contract (cash
  in hand, as option 1 trusts) or sent by the payments platform as a PaymentNotice once the money is received —
  already matched to its invoice. Ready remains a status a Contract update can set and clear (`policy-status`),
  for a scheme that holds a policy back by hand, as openIMIS's GUI does.
* **Status**: Expired (8) is never stored. An Active policy whose expiry date has passed *is* expired
  (`status_on`); an Idle, Ready or Suspended one keeps its status (idle and ready ones never covered anything, a
  suspended one covers nothing, and the IG maps expired to Coverage `active`, which would be false for them).
* **Renewal** (the IG's Contract cannot say "renewal", so the server recognises it): a policy renews the latest
  policy of the same family that took effect (EffectiveDate set), is of the same product or of a product
  converting into it (`renewal_sources`), and expires no later than the renewal window after the new enrolment
  date (`renewal_window`: the renewal discount period, at least one month; openIMIS reminds officers 14 days
  ahead). It then has stage R: no registration fee, renewal discount, start after the previous expiry. A family
  enrolling again while its policy runs on for longer gets a new policy, which overlaps it and is refused
  ("Contract exists") instead of silently becoming a renewal a year early.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal, NamedTuple

# Stored policy statuses (tblPolicy.PolicyStatus); EXPIRED is computed, never stored.
IDLE, ACTIVE, SUSPENDED, EXPIRED, READY = 1, 2, 4, 8, 16
STATUS_NAMES = {IDLE: "idle", ACTIVE: "active", SUSPENDED: "suspended", EXPIRED: "expired", READY: "ready"}

Stage = Literal["N", "R"]
NEW: Stage = "N"
RENEWAL: Stage = "R"

AGE_OF_MAJORITY = 18
RELATIONSHIP_OTHERS = "7"
CENT = Decimal("0.01")
ZERO = Decimal(0)


# --- dates -----------------------------------------------------------------------------------------------------


def add_months(day: date, months: int) -> date:
    """`day` plus whole months, clamped to the end of a shorter month (SQL Server DATEADD(MONTH, …))."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def age_on(birth_date: date, on: date) -> int:
    """Exact age in whole years at a date."""
    return on.year - birth_date.year - ((on.month, on.day) < (birth_date.month, birth_date.day))


def parse_cycle(text: str) -> tuple[int, int]:
    """A cycle start `dd-mm` as (month, day); ValueError when it is not a day of the year."""
    day_s, sep, month_s = text.partition("-")
    if sep != "-" or not (day_s.isdigit() and month_s.isdigit()) or len(day_s) != 2 or len(month_s) != 2:
        raise ValueError(f"cycle start '{text}' is not dd-mm")
    day, month = int(day_s), int(month_s)
    if not 1 <= month <= 12 or not 1 <= day <= (29 if month == 2 else calendar.monthrange(2001, month)[1]):
        raise ValueError(f"cycle start '{text}' is not a day of the year")
    return month, day


def _cycle_date(year: int, month: int, day: int) -> date:
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))  # 29-02 in a common year: 28-02


# --- product terms and members ---------------------------------------------------------------------------------


def _amount(value: Any) -> Decimal:
    return ZERO if value is None else Decimal(value)


def _count(value: Any) -> int:
    return 0 if value is None else int(value)


# The product columns `ProductTerms.from_row` reads: a read for the terms alone selects these, not the whole row (a
# hundred columns, most of them amounts the driver converts one by one).
TERMS_COLUMNS = (
    "pk", "code", "date_from", "date_to", "member_count", "insurance_period", "administration_period", "lump_sum",
    "threshold", "premium_adult", "premium_child", "registration_lump_sum", "registration_fee",
    "general_assembly_lump_sum", "general_assembly_fee", "enrolment_discount_perc", "enrolment_discount_period",
    "renewal_discount_perc", "renewal_discount_period", "grace_period", "grace_period_renewal",
    "grace_period_payment", "max_installments", "start_cycle_1", "start_cycle_2", "start_cycle_3", "start_cycle_4",
    "location_pk", "conversion_product_pk",
)


@dataclass(frozen=True, slots=True)
class ProductTerms:
    """What a product says about selling policies (domain §2.14, contribution plan and periods)."""

    code: str
    date_from: date
    date_to: date
    member_count: int
    insurance_period: int = 12  # months
    administration_period: int = 0  # months
    lump_sum: Decimal = ZERO
    threshold: int = 0
    premium_adult: Decimal = ZERO
    premium_child: Decimal = ZERO
    registration_lump_sum: Decimal = ZERO
    registration_fee: Decimal = ZERO
    general_assembly_lump_sum: Decimal = ZERO
    general_assembly_fee: Decimal = ZERO
    enrolment_discount_perc: int = 0
    enrolment_discount_period: int = 0
    renewal_discount_perc: int = 0
    renewal_discount_period: int = 0
    grace_period: int = 0  # months, enrolment
    grace_period_renewal: int | None = None  # months; none = grace_period
    grace_period_payment: int | None = None  # months (tblProduct.WaitingPeriod)
    max_installments: int | None = None
    start_cycles: tuple[str, ...] = ()  # dd-mm
    pk: int | None = None
    location_pk: int | None = None
    conversion_product_pk: int | None = None

    @classmethod
    def from_row(cls, row: Any) -> ProductTerms:
        """From a `product` row (any mapping-like row with the table's column names)."""
        m = row._mapping if hasattr(row, "_mapping") else row
        return cls(
            code=m["code"], date_from=m["date_from"], date_to=m["date_to"], member_count=int(m["member_count"]),
            insurance_period=_count(m["insurance_period"]) or 12,
            administration_period=_count(m["administration_period"]),
            lump_sum=_amount(m["lump_sum"]), threshold=_count(m["threshold"]),
            premium_adult=_amount(m["premium_adult"]), premium_child=_amount(m["premium_child"]),
            registration_lump_sum=_amount(m["registration_lump_sum"]),
            registration_fee=_amount(m["registration_fee"]),
            general_assembly_lump_sum=_amount(m["general_assembly_lump_sum"]),
            general_assembly_fee=_amount(m["general_assembly_fee"]),
            enrolment_discount_perc=_count(m["enrolment_discount_perc"]),
            enrolment_discount_period=_count(m["enrolment_discount_period"]),
            renewal_discount_perc=_count(m["renewal_discount_perc"]),
            renewal_discount_period=_count(m["renewal_discount_period"]),
            grace_period=_count(m["grace_period"]), grace_period_renewal=m["grace_period_renewal"],
            grace_period_payment=m["grace_period_payment"], max_installments=m["max_installments"],
            start_cycles=tuple(c for c in (m[f"start_cycle_{i}"] for i in range(1, 5)) if c),
            pk=m["pk"], location_pk=m["location_pk"], conversion_product_pk=m["conversion_product_pk"],
        )

    @property
    def has_cycles(self) -> bool:
        return bool(self.start_cycles)

    def sold_on(self, day: date) -> bool:
        return self.date_from <= day <= self.date_to

    def grace_months(self, stage: Stage) -> int:
        if stage == RENEWAL and self.grace_period_renewal is not None:
            return self.grace_period_renewal
        return self.grace_period


@dataclass(frozen=True, slots=True)
class Member:
    """A family member as the policy value sees them."""

    birth_date: date
    relationship: str | None = None

    def is_adult(self, on: date) -> bool:
        return age_on(self.birth_date, on) >= AGE_OF_MAJORITY

    @property
    def is_other(self) -> bool:
        return self.relationship == RELATIONSHIP_OTHERS


@dataclass(frozen=True, slots=True)
class Counts:
    adults: int = 0  # relationship other than 7
    children: int = 0
    other_adults: int = 0  # relationship 7 (Others)
    other_children: int = 0

    @property
    def total(self) -> int:
        return self.adults + self.children + self.other_adults + self.other_children


def count_members(terms: ProductTerms, members: Sequence[Member], on: date) -> Counts:
    """The first `member_count` members (in the order given) by age group and relationship 7."""
    adults = children = other_adults = other_children = 0
    for member in members[: max(terms.member_count, 0)]:
        adult = member.is_adult(on)
        if member.is_other:
            other_adults += adult
            other_children += not adult
        else:
            adults += adult
            children += not adult
    return Counts(adults, children, other_adults, other_children)


# --- §3.1.3 policy value ---------------------------------------------------------------------------------------


def contribution(terms: ProductTerms, counts: Counts) -> Decimal:
    """The premium part of the value: lump sum and extras, or per-person premiums, plus the "others"."""
    pa, pc = terms.premium_adult, terms.premium_child
    if terms.lump_sum > 0:
        extra_adults = extra_children = 0
        if terms.threshold > 0:
            extra_adults = max(counts.adults - terms.threshold, 0)
            extra_children = max(counts.children - (terms.threshold - counts.adults + extra_adults), 0)
        base = terms.lump_sum + extra_adults * pa + extra_children * pc
    else:
        base = counts.adults * pa + counts.children * pc
    return base + counts.other_adults * pa + counts.other_children * pc


def _fee(lump_sum: Decimal, fee: Decimal, members: int) -> Decimal:
    return lump_sum if lump_sum > 0 else fee * members


def _discounted(value: Decimal, percent: int) -> Decimal:
    return value - (value * percent / 100).quantize(CENT, rounding=ROUND_HALF_UP)


def policy_value(terms: ProductTerms, members: Sequence[Member], *, stage: Stage, enroll_date: date,
                 start_date: date, previous_expiry: date | None = None) -> Decimal:
    """The contribution due for a policy (domain §3.1.3, with the decided semantics of the module docstring).

    `members` in family order; `start_date` is the policy's computed start; `previous_expiry` the expiry date of
    the policy a renewal continues (none for new policies, or when unknown).
    """
    counts = count_members(terms, members, enroll_date)
    value = contribution(terms, counts)
    value += _fee(terms.general_assembly_lump_sum, terms.general_assembly_fee, counts.total)
    if stage == NEW:
        value += _fee(terms.registration_lump_sum, terms.registration_fee, counts.total)
        if (terms.has_cycles and terms.enrolment_discount_perc > 0
                and enroll_date <= add_months(start_date, -terms.enrolment_discount_period)):
            value = _discounted(value, terms.enrolment_discount_perc)
    elif terms.renewal_discount_perc > 0:
        reference = previous_expiry + timedelta(days=1) if previous_expiry is not None else start_date
        if enroll_date <= add_months(reference, -terms.renewal_discount_period):
            value = _discounted(value, terms.renewal_discount_perc)
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


# --- §3.1.4 policy period --------------------------------------------------------------------------------------


class PolicyPeriod(NamedTuple):
    start: date
    expiry: date


def cycle_start(terms: ProductTerms, reference: date, grace_months: int) -> date:
    """The first cycle date C (in the reference's year or around it) with reference < C + grace months."""
    cycles = sorted({parse_cycle(c) for c in terms.start_cycles})
    candidates = sorted(_cycle_date(year, month, day)
                        for year in (reference.year - 1, reference.year, reference.year + 1)
                        for month, day in cycles)
    for cycle in candidates:
        if reference < add_months(cycle, grace_months):
            return cycle
    # Unreachable with a cycle: next year's first cycle lies after any day of the reference's year.
    return _cycle_date(reference.year + 1, *cycles[0])


def expiry_for(terms: ProductTerms, start: date) -> date:
    return add_months(start, terms.insurance_period) - timedelta(days=1)


def policy_period(terms: ProductTerms, enroll_date: date, stage: Stage = NEW,
                  previous_expiry: date | None = None) -> PolicyPeriod:
    """Start and expiry dates of a new policy or a renewal (domain §3.1.4, decided semantics above)."""
    admin = terms.administration_period
    if stage == NEW or previous_expiry is None:
        reference = add_months(enroll_date, admin)
        start = cycle_start(terms, reference, terms.grace_months(stage)) if terms.has_cycles else reference
    elif terms.has_cycles:
        start = cycle_start(terms, max(enroll_date, previous_expiry), terms.grace_months(RENEWAL))
    else:
        start = max(previous_expiry + timedelta(days=1), add_months(enroll_date, admin))
    return PolicyPeriod(start, expiry_for(terms, start))


def last_payment_date(terms: ProductTerms, stage: Stage, enroll_date: date, start_date: date,
                      previous_expiry: date | None = None) -> date | None:
    """The last day to pay the contribution (`uspLastDateForPayment`); none when the product sets no deadline.

    Cycle products: start + grace (N: grace period, R: renewal grace) months − 1 day. Other products: enrolment
    date (N) or previous expiry + 1 day (R; the start date when unknown) + grace period for payment − 1 day.
    """
    if terms.has_cycles:
        return add_months(start_date, terms.grace_months(stage)) - timedelta(days=1)
    if terms.grace_period_payment is None:
        return None
    if stage == NEW:
        base = enroll_date
    else:
        base = previous_expiry + timedelta(days=1) if previous_expiry is not None else start_date
    return add_months(base, terms.grace_period_payment) - timedelta(days=1)


# --- §3.1.5 contributions and activation -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Payment:
    amount: Decimal
    pay_date: date
    photo_fee: bool = False


def paid_amount(payments: Iterable[Payment]) -> Decimal:
    """What counts toward the policy value: photo fees never do."""
    return sum((p.amount for p in payments if not p.photo_fee), ZERO)


def activation_date(status: int, value: Decimal, payments: Sequence[Payment], terms: ProductTerms,
                    start_date: date) -> date | None:
    """The EffectiveDate an Idle policy takes now that its contributions cover its value (activation option 1),
    or None when it stays as it is (not idle, not covered yet, or more installments than the product allows)."""
    if status != IDLE:
        return None
    counted = [p for p in payments if not p.photo_fee]
    if paid_amount(counted) < value:
        return None
    if terms.max_installments and len(counted) > terms.max_installments:
        return None
    last_paid = max((p.pay_date for p in counted), default=None)
    return start_date if last_paid is None else max(last_paid, start_date)


# --- status ----------------------------------------------------------------------------------------------------


def status_on(stored_status: int, expiry_date: date, today: date) -> int:
    """The status a policy has on `today`: an Active policy past its expiry date is Expired (never stored)."""
    if stored_status == ACTIVE and expiry_date < today:
        return EXPIRED
    return stored_status


def covers_on(stored_status: int, effective_date: date | None, expiry_date: date, day: date) -> bool:
    """Whether a policy covers care on `day`: it took effect on or before that day and had not expired (an expired
    policy still covers the days of its window; a suspended one covers nothing)."""
    return (stored_status == ACTIVE and effective_date is not None
            and effective_date <= day <= expiry_date)


# --- §3.1.6 renewal --------------------------------------------------------------------------------------------


def renewal_sources(product_pk: int, conversions: Mapping[int, int | None]) -> set[int]:
    """The products whose policies renew into `product_pk`: itself and every product whose conversion chain
    (`conversions`: product pk → conversion product pk) leads to it."""
    sources = {product_pk}
    changed = True
    while changed:
        changed = False
        for pk, target in conversions.items():
            if target in sources and pk not in sources:
                sources.add(pk)
                changed = True
    return sources


def conversion_target(product_pk: int, products: Mapping[int, ProductTerms], on: date) -> int:
    """The product a renewal on `on` is sold under: the conversion chain is followed while the product is no
    longer sold (`date_to` passed) and names a conversion product (cycles in the chain stop it)."""
    seen = {product_pk}
    current = product_pk
    while True:
        terms = products.get(current)
        if terms is None or terms.date_to >= on or terms.conversion_product_pk is None:
            return current
        nxt = terms.conversion_product_pk
        if nxt in seen:
            return current
        seen.add(nxt)
        current = nxt


@dataclass(frozen=True, slots=True)
class PolicyDates:
    """What renewal needs of an earlier policy."""

    pk: int
    product_pk: int
    start_date: date
    expiry_date: date
    effective_date: date | None


def renewal_window(terms: ProductTerms) -> int:
    """How many months before a policy's expiry a new enrolment in the product renews it: the renewal discount
    period (a renewal early enough to earn the discount is certainly one), at least one month."""
    return max(terms.renewal_discount_period, 1)


def previous_policy(candidates: Iterable[PolicyDates], sources: set[int], enroll_date: date,
                    window_months: int) -> PolicyDates | None:
    """The policy a new one renews: the latest-expiring policy of a source product that took effect and expires
    no later than `window_months` after the enrolment date (one running on for longer is not being renewed: a
    second enrolment then overlaps it)."""
    eligible = [p for p in candidates if p.product_pk in sources and p.effective_date is not None]
    latest = max(eligible, key=lambda p: (p.expiry_date, p.pk), default=None)
    if latest is None or latest.expiry_date > add_months(enroll_date, window_months):
        return None
    return latest


def stage_after(previous: PolicyDates | None) -> Stage:
    return NEW if previous is None else RENEWAL
