"""Policies of the demo data (domain §5, §3.1): who is enrolled, on which product, when, and what was paid.

The demo scheme (scheme.py) enrols its 21 families through the Contract kind, one Contract per family as a
client POSTs it. The synthetic population (population.py) cannot afford the generic write path for tens of
thousands of policies, so it inserts the policy, insuree-policy, premium and coverage rows itself — with the
dates, value, status and effective date computed by the same `hifhir.domain.policy` functions, in the same way
`ContractKind._create` computes them (`PolicyPlanner.rows` mirrors it column for column) — and lets
`WriteContext.flush()` render the Contracts and Coverages through their kinds. A population test re-enrols sampled
families through the Contract kind and compares the rows.

What the population gets, per family (drawn from a generator of its own, so the insurees of a seed stay what
they were): POLICY_MIX — a current policy paid in full (active), a policy enrolled lately and not yet paid
(idle), a policy paid a year or two ago whose insurance period has ended (expired), or none at all (left
unenrolled, for enrolment benchmarks and demos). The product is one sold where the family lives (a product of
an ancestor location of its village, or a national one), on the enrolment date; Basic Cover (lump sum) three
times as often as the per-person Fixed Cycle Cover. The officer is the one whose role serves the village.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select

from hifhir.domain.policy import (
    ACTIVE,
    EXPIRED,
    IDLE,
    NEW,
    Member,
    Payment,
    PolicyPeriod,
    ProductTerms,
    activation_date,
    covers_on,
    policy_period,
    policy_value,
)
from hifhir.store.tables import is_current, location, officer_role, officer_role_village, product

# Shares of the generated families by policy state; the rest (15 %) stays unenrolled. More than the 10 % one
# might expect: the enrolment benchmark POSTs a Contract for a different unenrolled family on every request
# (≈ 5,000 families at 100,000 insurees: 12 s at ≈ 400 req/s).
POLICY_MIX: tuple[tuple[int, float], ...] = ((ACTIVE, 0.75), (IDLE, 0.05), (EXPIRED, 0.05))
# How many days before today the enrolment date lies, by state (redrawn until the dates fit the state).
ENROL_DAYS_AGO: dict[int, tuple[int, int]] = {ACTIVE: (0, 364), IDLE: (0, 60), EXPIRED: (366, 730)}
DRAWS = 12
LUMP_SUM_WEIGHT = 3.0  # Basic Cover (lump sum) against per-person products
PAY_TYPES = (("C", 0.7), ("M", 0.2), ("B", 0.1))  # cash, mobile phone, bank transfer
PAYER = "beneficiary"


@dataclass(frozen=True, slots=True)
class Sale:
    """A policy's computed terms: what `ContractKind._compute` derives for a new (stage N) policy."""

    period: PolicyPeriod
    value: Decimal


def sale(terms: ProductTerms, members: Sequence[Member], enroll: date) -> Sale:
    """Period and value of a new policy covering `members` (family order, at most the product's member count)."""
    period = policy_period(terms, enroll, NEW)
    value = policy_value(terms, members, stage=NEW, enroll_date=enroll, start_date=period.start)
    return Sale(period, value)


@dataclass(frozen=True, slots=True)
class Dates:
    enroll: date
    sale: Sale
    pay_date: date | None  # none: not paid (idle)
    effective: date | None


def draw_dates(rng: random.Random, terms: ProductTerms, members: Sequence[Member], state: int, today: date, *,
               max_pay_delay: int = 30, days_ago: tuple[int, int] | None = None) -> Dates | None:
    """Enrolment and payment dates that give a policy the state asked for today: ACTIVE (paid, covering today),
    IDLE (enrolled lately, unpaid) or EXPIRED (paid, its period over); None when the product cannot give it
    (not sold then, or cycles that do not fit). `days_ago`: the enrolment date's range instead of
    ENROL_DAYS_AGO's."""
    low, high = days_ago or ENROL_DAYS_AGO[state]
    for _ in range(DRAWS):
        enroll = today - timedelta(days=rng.randint(low, high))
        if not terms.sold_on(enroll):
            continue
        try:
            s = sale(terms, members, enroll)
        except ValueError:  # a malformed start cycle on the product
            return None
        start, expiry = s.period
        if state == IDLE:
            return Dates(enroll, s, None, None)
        if s.value <= 0 or (state == ACTIVE and not start <= today <= expiry) or \
                (state == EXPIRED and expiry >= today):
            continue
        last_day = min(today, expiry)
        pay = enroll + timedelta(days=rng.randint(0, max(0, min(max_pay_delay, (last_day - enroll).days))))
        effective = activation_date(IDLE, s.value, [Payment(s.value, pay)], terms, start)
        return Dates(enroll, s, pay, effective)
    return None


# --- the population's policies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    """One family's policy, before its rows get keys."""

    terms: ProductTerms
    family_pk: int
    officer_pk: int | None
    covered: list[int]  # insuree pks, family order (head first)
    status: int  # stored status: ACTIVE or IDLE (an expired policy is an active one past its expiry)
    dates: Dates
    pay_type: str

    def covers_today(self, today: date) -> bool:
        return covers_on(self.status, self.dates.effective, self.dates.sale.period.expiry, today)


@dataclass(frozen=True, slots=True)
class _Place:
    ancestors: tuple[int | None, ...]  # village, ward, district, region, None (national)


class PolicyPlanner:
    """Draws the population's policies from what the database holds: products sold where each village lies and
    the officer serving it."""

    def __init__(self, conn: Connection, rng: random.Random, today: date) -> None:
        self.rng = rng
        self.today = today
        self.products: dict[int | None, list[ProductTerms]] = {}
        for row in conn.execute(select(product).where(is_current(product), product.c.status == "active")
                                .order_by(product.c.pk)):
            terms = ProductTerms.from_row(row)
            self.products.setdefault(terms.location_pk, []).append(terms)
        self.places = {r.pk: _Place((r.pk, r.parent_pk, r.district_pk, r.region_pk, None)) for r in conn.execute(
            select(location.c.pk, location.c.parent_pk, location.c.district_pk, location.c.region_pk).where(
                location.c.type == "V", is_current(location)))}
        # The officer of a village: the first current role serving it, preferring one not leaving before today.
        self.officers: dict[int, int] = {}
        rows = conn.execute(
            select(officer_role_village.c.location_pk, officer_role.c.officer_pk, officer_role.c.works_to)
            .join(officer_role, officer_role.c.pk == officer_role_village.c.role_pk)
            .where(is_current(officer_role)).order_by(officer_role.c.pk)).all()
        for r in sorted(rows, key=lambda r: r.works_to is not None and r.works_to < today):
            self.officers.setdefault(r.location_pk, r.officer_pk)
        self._candidates: dict[int, tuple[list[ProductTerms], list[float]]] = {}
        self.shares = [share for _, share in POLICY_MIX]
        self.states = [state for state, _ in POLICY_MIX]

    def candidates(self, village_pk: int) -> tuple[list[ProductTerms], list[float]]:
        """The products sold where the village lies (its own or an ancestor's, or national), with weights."""
        found = self._candidates.get(village_pk)
        if found is None:
            place = self.places.get(village_pk)
            terms = [t for pk in (place.ancestors if place else (None,)) for t in self.products.get(pk, ())]
            found = (terms, [LUMP_SUM_WEIGHT if t.lump_sum > 0 else 1.0 for t in terms])
            self._candidates[village_pk] = found
        return found

    def plan(self, family_pk: int, village_pk: int, members: Sequence[dict[str, Any]]) -> Planned | None:
        """The policy of one family (`members`: insuree rows, head first, then by pk), or None: unenrolled."""
        rng = self.rng
        pick = rng.random()
        state = None
        for candidate, share in zip(self.states, self.shares, strict=True):
            if pick < share:
                state = candidate
                break
            pick -= share
        pay_type = rng.choices([t for t, _ in PAY_TYPES], [w for _, w in PAY_TYPES])[0]
        terms_list, weights = self.candidates(village_pk)
        if state is None or not terms_list:
            return None
        terms = rng.choices(terms_list, weights)[0] if len(terms_list) > 1 else terms_list[0]
        covered = list(members[: max(terms.member_count, 0)])
        dates = draw_dates(rng, terms, [Member(m["dob"], m["relationship"]) for m in covered], state, self.today)
        if dates is None:
            return None
        return Planned(terms, family_pk, self.officers.get(village_pk), [m["pk"] for m in covered],
                       IDLE if state == IDLE else ACTIVE, dates, pay_type)

    @staticmethod
    def rows(p: Planned, policy_pk: int, coverage_pk: int, res_id: str, now: int) -> tuple[
            dict[str, Any], list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]:
        """(policy, insuree_policy rows, premium or None, coverage): the columns `ContractKind._create` writes,
        at version 1 as `WriteContext.insert` puts them (`now`: the transaction's time)."""
        d = p.dates
        start, expiry = d.sale.period
        assert p.terms.pk is not None
        entity = {"id": res_id, "uuid": res_id, "version_id": 1, "last_updated": now, "deleted": False}
        pol = {
            **entity, "pk": policy_pk, "family_pk": p.family_pk, "policy_holder_pk": None,
            "product_pk": p.terms.pk, "officer_pk": p.officer_pk, "head_insuree_pk": p.covered[0],
            "enroll_date": d.enroll, "start_date": start, "expiry_date": expiry, "stage": NEW, "value": d.sale.value,
            "previous_policy_pk": None, "status": p.status, "effective_date": d.effective,
        }
        members = [{"policy_pk": policy_pk, "insuree_pk": pk, "enroll_date": d.enroll, "start_date": start,
                    "effective_date": d.effective, "expiry_date": expiry, "deleted": False} for pk in p.covered]
        paid = None
        if d.pay_date is not None:
            paid = {"policy_pk": policy_pk, "product_pk": p.terms.pk, "payer": PAYER, "amount": d.sale.value,
                    "receipt": f"PR{policy_pk:09d}", "pay_date": d.pay_date, "pay_type": p.pay_type,
                    "is_photo_fee": False, "created": now, "deleted": False}
        cov = {**entity, "pk": coverage_pk, "policy_pk": policy_pk}
        return pol, members, paid, cov
