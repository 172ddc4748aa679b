"""The monthly batch run with relative pricing (reference/openimis-domain.md §2.22, §3.4.4).

`run()` valuates, for one location (a region or district, or national) and one month, the processed claims (status
8) of that location's products: it computes each product's relative index for the distribution period that ends
with the month, writes it to `rel_index`, sets every passed line's remunerated amount and moves the claims to
Valuated (16) with `run_pk` and `remunerated`. Once per (location, year, month): a second run raises
`BatchAlreadyRun` and writes nothing.

Per product (current products whose `location_pk` is the run's location; national runs take national products):
* distribution periods from `period_rel_prices` (general, care type B) or, when it is not set,
  `period_rel_prices_ip` (I, hospital care) and `period_rel_prices_op` (O, non-hospital care): `M` the month,
  `Q` the quarter (only at the end of a quarter, months 3/6/9/12: other months leave the product's claims for the
  quarter's run), `Y` January 1 to the end of the month. Hospital care as in §3.4.3 and `valuation.py`:
  ceiling interpretation `H` → a facility of level H, else (`I`, the default) → a multi-day claim (date_to set
  and after date_from).
* allocated contributions of a period [start, end]: Σ over the premiums of the product's policies (not idle,
  effective, premium paid no later than the expiry, no photo fee) of
  amount × days[max(start, pay date, effective date), min(expiry, end)] / days[max(pay date, effective), expiry],
  both counts inclusive of their last day.
* index = allocated × percent / 100 / Σ price_valuated of the passed `R` lines of the product on claims processed
  (process_stamp) in the period, excluding facilities whose (level, sub-level) matches one of the product's
  level_1..4 / sublevel_1..4 pairs (capitation pays those), and for I/O only the hospital/non-hospital claims.
  `percent` comes from `rel_distr` (type 12/4/1, care type, period number); no row = 100 %. A zero sum gives
  index 1. Stored as `index_e4` = index × 10,000 rounded half-even, and that rounded index is what is applied
  (legacy applies its decimal(18,4) index the same way).
* then, for the product's passed lines on processed claims of the period (excluded facilities untouched):
  remunerated_amount = (index for `R` lines, else 1) × (price_valuated, or unit price × quantity when it is
  NULL: price approved, else adjusted, else asked × quantity approved, else provided), rounded half-up to the
  cent like the legacy decimal(18,2) cast. Each claim so touched gets `run_pk`, status 16 and remunerated = Σ
  of its passed lines.

Choices where the legacy procedures (`uspBatchProcess`, `uspInsertIndexMonthly`,
`uspRelativeIndexCalculationMonthly`) and the Python port (`claim_batch/services.py`) differ or are wrong:
* Only processed (8) claims are revalued; the legacy line UPDATE does not filter the claim status and rewrites
  claims valuated (16) earlier. The index's denominator counts claims of status 8 and 16 (as the older
  `uspInsertIndexMonthly` did): for M and Q periods no claim with `R` lines can be 16 yet, and for Y periods
  (January to the current month, computed every month) the claims an earlier month's run valuated stay in the
  denominator, so the year's index is a running one instead of paying the whole year-to-date allocation out to
  the current month's claims alone.
* The distribution share is looked up by the period number (month 1..12, quarter 1..4, year 1) and the product's
  own type per care type; legacy passes the month as the period for quarters and years and the general type
  for I/O, so it never finds their rows.
* The process_stamp period runs to the end of its last day (legacy compares a datetime with the end date, losing
  the last day after midnight); stamps are UTC microseconds, so periods are UTC months.
* Allocation days are counted inclusively in both numerator and denominator, so a premium allocates exactly its
  amount over the policy's life (legacy divides inclusive days by exclusive ones: 365/364 of the premium).
  Photo fees are not contributions (§2.17) and are left out.
* When only one of IP/OP has a period, the other care type's claims are valuated with index 1 over the same
  period, and a product with no period at all has its claims valuated monthly with index 1 (legacy rules; no
  `rel_index` row is written for those indexes, as legacy). Product sales dates do not matter: a product no
  longer sold still has claims to valuate.
* A facility without a sub-level does not match an exclusion pair that names a sub-level (legacy's NULL
  comparison excludes it).
* A claim whose lines belong to several products (policies of a national and a regional product) becomes
  Valuated only once every passed line has its remunerated amount; until then it stays Processed without a
  run. Legacy moves it to 16 at the first product's run and overwrites `Remunerated` with that product's sum.
* A run for a month that is not over yet is refused (`BatchPeriodNotOver`): the claims processed later in that
  month would never be valuated, the run being once per month. (Legacy has this check commented out; the
  Python port inverted it.)

Cost: per product and care type, one aggregate and two set-based UPDATEs (items, services), which return the claims
they touched, then one UPDATE … FROM for all the run's claims; no statement per claim or line. Premiums are read
once. The FHIR versions of the valuated claims are recorded by `record_claim_versions`, which the caller runs in the
same transaction (the CLI does), 1,000 claims per flush. 100,000 claims of 3 lines (`python -m bench.batch`): ~14 s
on SQLite, ~25 s on PostgreSQL for the whole transaction, most of it writing rows (the claim updates, the history).
"""

from __future__ import annotations

import calendar
import gc
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    not_,
    select,
    text,
    true,
    type_coerce,
    union_all,
    update,
)

from hifhir.store.fast import any_pk
from hifhir.store.tables import (
    CLAIM_PROCESSED,
    CLAIM_VALUATED,
    LINE_PASSED,
    POLICY_IDLE,
    batch_run,
    claim,
    claim_item,
    claim_service,
    health_facility,
    is_current,
    location,
    policy,
    premium,
    product,
    rel_distr,
    rel_index,
)

PERIOD_TYPES: dict[str, int] = {"M": 12, "Q": 4, "Y": 1}  # period code → rel_distr.dist_type / rel_index.rel_type
CARE_TYPES = ("B", "I", "O")
PERIOD_COLUMNS = {"B": "period_rel_prices", "I": "period_rel_prices_ip", "O": "period_rel_prices_op"}
HOSPITAL_LEVEL = "H"
E4 = Decimal(10_000)
HUNDRED = Decimal(100)
BATCH_USER = "hifhir-batch"  # user_name on the history rows the batch and distribution changes write


class BatchAlreadyRun(ValueError):
    """The location's batch for that month has run already (legacy error 2 "Already run before")."""


class BatchPeriodNotOver(ValueError):
    """The month to valuate has not ended yet."""


class DistributionError(ValueError):
    """A relative distribution that cannot be stored (unknown product, type or care type, bad percentages)."""


@dataclass(frozen=True)
class BatchResult:
    run_pk: int
    products: int  # products of the location looked at
    indexes: int  # rel_index rows written
    claims: int  # claims valuated (status 16) by this run
    remunerated: Decimal  # Σ remunerated of those claims


@dataclass(frozen=True)
class _Segment:
    """One care type of one product in this run: which claims, over which period, at which index."""

    care_type: str  # B | I | O
    start: date
    rel_type: int  # 12 | 4 | 1
    period: int  # month, quarter or 1
    computed: bool  # False: index 1 by fallback, no rel_index row


def month_end(year: int, month: int) -> date:
    return date(year, month, calendar.monthrange(year, month)[1])


def distribution_period(code: str, year: int, month: int) -> tuple[date, int] | None:
    """(period start, period number) of an M/Q/Y distribution whose period ends with this month, or None when a
    quarterly distribution is not due (not the last month of a quarter)."""
    if code == "M":
        return date(year, month, 1), month
    if code == "Q":
        if month % 3:
            return None
        return date(year, month - 2, 1), month // 3
    if code == "Y":
        return date(year, 1, 1), 1
    raise ValueError(f"unknown distribution period '{code}'")


def _segments(row: Any, year: int, month: int) -> list[_Segment]:
    """The care types a product valuates this month (legacy `uspBatchProcess` fallbacks, see the docstring)."""

    def segment(care: str, code: str, computed: bool) -> list[_Segment]:
        due = distribution_period(code, year, month)
        return [] if due is None else [_Segment(care, due[0], PERIOD_TYPES[code], due[1], computed)]

    general, ip, op = row.period_rel_prices, row.period_rel_prices_ip, row.period_rel_prices_op
    if general:
        return segment("B", general, True)
    if ip or op:
        return [*segment("I", ip or op, bool(ip)), *segment("O", op or ip, bool(op))]
    return segment("B", "M", False)


def _stamp(day: date) -> int:
    """Midnight UTC of a day, in µs since the epoch (the unit of claim.process_stamp)."""
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000


def _raw(column: Any) -> ColumnElement[int]:
    """An Amount column as its stored integer hundredths, for arithmetic in SQL."""
    return type_coerce(column, BigInteger)


def _hospital(ceiling_interpretation: str | None) -> ColumnElement[bool]:
    """SQL over `claim` joined with `health_facility`: is the claim hospital care for this product (§3.4.3; no
    interpretation means `I`, as processing reads it)."""
    if ceiling_interpretation == "H":
        return health_facility.c.level == HOSPITAL_LEVEL
    return and_(claim.c.date_to.is_not(None), claim.c.date_to > claim.c.date_from)


def _not_excluded(row: Any) -> ColumnElement[bool]:
    """SQL: the claim's facility is not one of the product's excluded (level, sub-level) pairs."""
    conds: list[ColumnElement[bool]] = []
    for i in range(1, 5):
        level, sub_level = getattr(row, f"level_{i}"), getattr(row, f"sublevel_{i}")
        if not level:
            continue
        match = health_facility.c.level == level
        if sub_level:
            match = and_(match, func.coalesce(health_facility.c.sub_level, "") == sub_level)
        conds.append(not_(match))
    return and_(true(), *conds)


def _claims(row: Any, seg: _Segment, end: date, statuses: Sequence[int]) -> Any:
    """SELECT pk of the claims in a segment: status, process_stamp in the period, care type, facility level."""
    care: ColumnElement[bool] = true()
    if seg.care_type == "I":
        care = _hospital(row.ceiling_interpretation)
    elif seg.care_type == "O":
        care = not_(_hospital(row.ceiling_interpretation))
    return (
        select(claim.c.pk)
        .select_from(claim.join(health_facility, health_facility.c.pk == claim.c.hf_pk))
        .where(is_current(claim), claim.c.status.in_(statuses),
               claim.c.process_stamp >= _stamp(seg.start), claim.c.process_stamp < _stamp(end + timedelta(days=1)),
               care, _not_excluded(row))
    )


def _relative_value(conn: Connection, product_pk: int, claims: Any) -> Decimal:
    """Σ price_valuated (hundredths) of the passed R lines of the product on the given claims, in currency."""
    parts = [
        select(func.coalesce(func.sum(_raw(t.c.price_valuated)), 0).label("v")).where(
            t.c.product_pk == product_pk, t.c.status == LINE_PASSED, t.c.price_origin == "R",
            t.c.claim_pk.in_(claims))
        for t in (claim_item, claim_service)
    ]
    total = sum(int(v or 0) for v in conn.execute(union_all(*parts)).scalars())
    return Decimal(total).scaleb(-2)


def _remunerate(conn: Connection, product_pk: int, claims: Any, index_e4: int) -> set[int]:
    """Set remunerated_amount of the product's passed lines on the claims, set-based (one UPDATE per table);
    returns the claims whose lines it set."""
    touched: set[int] = set()
    for t in (claim_item, claim_service):
        unit = func.coalesce(_raw(t.c.price_approved), _raw(t.c.price_adjusted), _raw(t.c.price_asked))
        qty = func.coalesce(_raw(t.c.qty_approved), _raw(t.c.qty_provided))
        value = func.coalesce(_raw(t.c.price_valuated), (unit * qty + 50) // 100)
        amount = case((t.c.price_origin == "R", (value * literal(index_e4, BigInteger) + 5000) // 10_000),
                      else_=value)
        touched.update(conn.execute(update(t).where(t.c.product_pk == product_pk, t.c.status == LINE_PASSED,
                                                    t.c.claim_pk.in_(claims))
                                    .values(remunerated_amount=amount).returning(t.c.claim_pk)).scalars())
    return touched


def _allocated(premiums: list[Any], start: date, end: date) -> Decimal:
    """A product's contributions allocated to [start, end], pro rata of each premium's covered days."""
    total = Decimal(0)
    for p in premiums:
        if p.expiry_date < start:
            continue
        paid_from = max(p.pay_date, p.effective_date)
        first, last = max(start, paid_from), min(p.expiry_date, end)
        if first > last:
            continue
        total += p.amount * Decimal((last - first).days + 1) / Decimal((p.expiry_date - paid_from).days + 1)
    return total


def _premiums(conn: Connection, product_pks: list[int], start: date, end: date) -> dict[int, list[Any]]:
    """Per product, the premiums that may allocate something to a period within [start, end] (see `_allocated`)."""
    by_product: dict[int, list[Any]] = {pk: [] for pk in product_pks}
    if not product_pks:
        return by_product
    rows = conn.execute(
        select(policy.c.product_pk, premium.c.amount, premium.c.pay_date, policy.c.effective_date,
               policy.c.expiry_date)
        .select_from(premium.join(policy, policy.c.pk == premium.c.policy_pk))
        .where(policy.c.product_pk.in_(product_pks), is_current(policy), is_current(premium),
               premium.c.is_photo_fee.is_(False), policy.c.status != POLICY_IDLE,
               policy.c.effective_date.is_not(None), policy.c.effective_date <= policy.c.expiry_date,
               premium.c.pay_date <= policy.c.expiry_date, policy.c.expiry_date >= start,
               premium.c.pay_date <= end, policy.c.effective_date <= end)
    )
    for row in rows:
        by_product[row.product_pk].append(row)
    return by_product


def _percent(conn: Connection, product_pk: int, seg: _Segment) -> Decimal:
    found = conn.execute(select(rel_distr.c.percent).where(
        rel_distr.c.product_pk == product_pk, rel_distr.c.dist_type == seg.rel_type,
        rel_distr.c.care_type == seg.care_type, rel_distr.c.period == seg.period)).scalar()
    return HUNDRED if found is None else Decimal(found)


def index_e4(allocated: Decimal, percent: Decimal, valuated: Decimal) -> int:
    """The relative index in ten-thousandths, rounded half-even; 1 when nothing relative was valuated."""
    if valuated == 0:
        return int(E4)
    index = allocated * percent / HUNDRED / valuated
    return int((index * E4).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def run(conn: Connection, *, year: int, month: int, location_pk: int | None, today: date, now: int) -> BatchResult:
    """The batch run of one month for a region/district (`location_pk`) or nationally (None); see the module."""
    if not 1 <= month <= 12:
        raise ValueError(f"month {month} is not 1..12")
    end = month_end(year, month)
    if end >= today:
        raise BatchPeriodNotOver(f"{year}-{month:02d} is not over yet (today is {today.isoformat()})")
    if conn.dialect.name == "postgresql":
        # Serialises runs of the same month, so that a concurrent second run sees the first one's row (SQLite's
        # writer lock already does); there is no unique index to rely on (location_pk may be NULL).
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('hifhir batch run'), :period)"),
                     {"period": year * 100 + month})
    same_location = (batch_run.c.location_pk.is_(None) if location_pk is None
                     else batch_run.c.location_pk == location_pk)
    done = conn.execute(select(batch_run.c.pk).where(batch_run.c.run_year == year, batch_run.c.run_month == month,
                                                     same_location).limit(1)).first()
    if done is not None:
        where = "nationally" if location_pk is None else "for this location"
        raise BatchAlreadyRun(f"the batch for {year}-{month:02d} has already run {where} (run {done.pk})")
    run_pk = int(conn.execute(insert(batch_run).values(
        location_pk=location_pk, run_date=today, run_year=year, run_month=month, created=now,
    )).inserted_primary_key[0])

    in_location = product.c.location_pk.is_(None) if location_pk is None else product.c.location_pk == location_pk
    products = conn.execute(select(
        product.c.pk, product.c.ceiling_interpretation, *(product.c[c] for c in PERIOD_COLUMNS.values()),
        *(product.c[f"level_{i}"] for i in range(1, 5)), *(product.c[f"sublevel_{i}"] for i in range(1, 5)),
    ).where(is_current(product), in_location).order_by(product.c.pk)).all()
    plans = [(row, _segments(row, year, month)) for row in products]
    starts = [seg.start for _, segs in plans for seg in segs if seg.computed]
    premiums = _premiums(conn, [row.pk for row, segs in plans if any(s.computed for s in segs)],
                         min(starts, default=end), end)

    indexes = 0
    touched: set[int] = set()
    for row, segs in plans:
        for seg in segs:
            to_valuate = _claims(row, seg, end, (CLAIM_PROCESSED,))
            e4 = int(E4)
            if seg.computed:
                valuated = _relative_value(conn, row.pk, _claims(row, seg, end, (CLAIM_PROCESSED, CLAIM_VALUATED)))
                e4 = index_e4(_allocated(premiums[row.pk], seg.start, end), _percent(conn, row.pk, seg), valuated)
                conn.execute(insert(rel_index).values(
                    product_pk=row.pk, rel_type=seg.rel_type, care_type=seg.care_type, rel_year=year,
                    rel_period=seg.period, calc_date=today, index_e4=e4, location_pk=location_pk, run_pk=run_pk))
                indexes += 1
            touched |= _remunerate(conn, row.pk, to_valuate, e4)
    claims, remunerated = _close(conn, run_pk, sorted(touched))
    return BatchResult(run_pk, len(products), indexes, claims, remunerated)


def _close(conn: Connection, run_pk: int, touched: list[int]) -> tuple[int, Decimal]:
    """Of the claims whose lines the run remunerated (`touched`), those whose every passed line now has its
    remunerated amount become Valuated with the run and their total, in one UPDATE … FROM a grouped sum (correlated
    sums per claim cost ~10x on PostgreSQL). The others (lines of another location's or a not yet due product)
    wait, still Processed. The claims are passed as pks (what the line UPDATEs returned): re-evaluating each
    segment's claim query here cost PostgreSQL more than the UPDATE itself."""
    if touched:
        lines = union_all(*(
            select(t.c.claim_pk.label("claim_pk"), _raw(t.c.remunerated_amount).label("amount"))
            .where(t.c.status == LINE_PASSED, any_pk(t.c.claim_pk))
            for t in (claim_item, claim_service)
        )).subquery()
        sums = (select(lines.c.claim_pk, func.sum(func.coalesce(lines.c.amount, 0)).label("total"),
                       func.count().label("lines"), func.count(lines.c.amount).label("done"))
                .group_by(lines.c.claim_pk).subquery())
        conn.execute(update(claim)
                     .where(claim.c.pk == sums.c.claim_pk, sums.c.lines == sums.c.done,
                            claim.c.status == CLAIM_PROCESSED)
                     .values(status=CLAIM_VALUATED, run_pk=run_pk, remunerated=type_coerce(sums.c.total, BigInteger)),
                     {"pks": list(touched)})
    count, total = conn.execute(select(func.count(), func.coalesce(func.sum(_raw(claim.c.remunerated)), 0))
                                .where(claim.c.run_pk == run_pk)).one()
    return int(count), Decimal(int(total)).scaleb(-2)


def record_claim_versions(conn: Connection, run_pk: int, *, now: int, user_name: str = BATCH_USER,
                          chunk: int = 1000) -> int:
    """Append a ClaimResponse version for each claim the run valuated: reads serve stored versions, which would
    otherwise still show the claims processed. The Claim itself (the submission, immutable) is not re-versioned.
    Returns the number of claims; does nothing while no ClaimResponse kind is registered."""
    from hifhir.fhir.kind import WriteContext
    from hifhir.fhir.registry import ALL_KINDS

    kinds = [k for k in ALL_KINDS if k.table is claim and k.resource_type == "ClaimResponse"]
    if not kinds:
        return 0
    pks = list(conn.execute(select(claim.c.pk).where(claim.c.run_pk == run_pk).order_by(claim.c.pk)).scalars())
    # A chunk's bodies are tens of thousands of small dicts and lists (1,000 claims), freed by reference counting:
    # the cyclic collector, triggered by their allocation, would walk them (and every live object) again and again
    # for no garbage — a third of this loop's time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for start in range(0, len(pks), chunk):
            ctx = WriteContext(conn, user_name, now=now)
            for pk in pks[start:start + chunk]:
                for kind in kinds:
                    ctx.mark(kind.name, pk)
            ctx.flush()
    finally:
        if collecting:
            gc.enable()
    return len(pks)


# --- relative distribution (tblRelDistr), which no FHIR resource carries -----------------------------------------


def set_distribution(conn: Connection, product_pk: int, dist_type: str, care_type: str,
                     percents: Sequence[Decimal], *, now: int | None = None, user_name: str = BATCH_USER) -> None:
    """Replace a product's relative distribution for one care type: `dist_type` M (12 monthly shares), Q (4
    quarterly) or Y (1 yearly), each the percentage (0..100, at most two decimals) of the period's allocated
    contributions paid out. The product's period column for that care type (`period_rel_prices`, `_ip`, `_op`)
    is set to the type, and the InsurancePlan re-versioned when it changes (as openIMIS `set_product_relative_
    distribution` derives it from the number of periods)."""
    if dist_type not in PERIOD_TYPES:
        raise DistributionError(f"distribution type must be M, Q or Y, not '{dist_type}'")
    if care_type not in CARE_TYPES:
        raise DistributionError(f"care type must be B, I or O, not '{care_type}'")
    periods = PERIOD_TYPES[dist_type]
    if len(percents) != periods:
        raise DistributionError(f"a {dist_type} distribution has {periods} percentages, not {len(percents)}")
    values: list[Decimal] = []
    for i, raw in enumerate(percents, start=1):
        try:
            value = Decimal(str(raw))
        except ArithmeticError:
            raise DistributionError(f"percentage {i} '{raw}' is not a number") from None
        if not value.is_finite() or not 0 <= value <= 100 or value != value.quantize(Decimal("0.01")):
            raise DistributionError(f"percentage {i} must be 0 to 100 with at most two decimals, not {raw}")
        values.append(value)
    column = PERIOD_COLUMNS[care_type]
    current = conn.execute(select(product.c[column]).where(product.c.pk == product_pk, is_current(product))).first()
    if current is None:
        raise DistributionError(f"no current product {product_pk}")
    conn.execute(delete(rel_distr).where(rel_distr.c.product_pk == product_pk, rel_distr.c.care_type == care_type))
    conn.execute(insert(rel_distr), [
        {"product_pk": product_pk, "dist_type": periods, "care_type": care_type, "period": i, "percent": v}
        for i, v in enumerate(values, start=1)
    ])
    if current[0] != dist_type:
        from hifhir.fhir.kind import WriteContext, now_us
        from hifhir.fhir.registry import ALL_KINDS

        conn.execute(update(product).where(product.c.pk == product_pk).values({column: dist_type}))
        ctx = WriteContext(conn, user_name, now=now if now is not None else now_us())
        for kind in ALL_KINDS:
            if kind.table is product:
                ctx.mark(kind.name, product_pk)
        ctx.flush()


def location_for_run(conn: Connection, code: str) -> int:
    """The pk of the current region or district with this code (a batch runs per region/district or nationally)."""
    row = conn.execute(select(location.c.pk, location.c.type).where(location.c.code == code,
                                                                    is_current(location))).first()
    if row is None:
        raise ValueError(f"no location with code '{code}'")
    if row.type not in ("R", "D"):
        raise ValueError(f"location '{code}' is not a region or a district")
    return int(row.pk)
