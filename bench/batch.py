"""Benchmark the monthly batch run: valuate 100,000 processed claims in under 60 s, on SQLite and PostgreSQL.

    python -m bench.batch [--claims 100000] [--backend sqlite|postgresql|both] [--nice N] [--profile]

For each backend: a fresh database (migrated as `hifhir migrate` does) holding the registers a batch needs and N
processed claims of last month, inserted in SQL as processing leaves them; then, timed, exactly what
`hifhir claims batch-run --period YYYY-MM` does — `batch.run` and `batch.record_claim_versions` in one write
transaction, committed — and a check of the result against amounts computed here independently. The table goes
to bench/results/<timestamp>-batch.md and stdout (see bench/README.md, "Batch run").
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import platform
import pstats
import random
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench.run import (
    REPO_ROOT,
    RESULTS_DIR,
    VAR_DIR,
    BenchError,
    _cpu_delta,
    bench_pg_cluster,
    code_version,
    exclusive_run,
    log,
    pg_server_version,
    postmaster_pid,
    remove_sqlite,
    renice,
    set_autogroup_nice,
    system_busy_ticks,
    tree_cpu_ticks,
    wait_for_quiet,
)

TARGET_S = 60.0
DEFAULT_CLAIMS = 100_000
PG_DATABASE = "hifhir_bench_batch"
CLAIMS_PER_INSUREE = 4
PREMIUM = Decimal(3650)
# Per product, the percentage of the month's allocated contributions paid out (rel_distr), per care type.
SHARES = {"B": Decimal(80), "I": Decimal(90), "O": Decimal(70)}
ITEMS = SERVICES = 20
FACILITY_LEVELS = "HCHCCC"  # no dispensary (D): the products pay those by capitation, every claim is valuated
REJECTED_EVERY = 10  # every 10th claim has its last line rejected at the checks
HISTORY_USER = "bench"


@dataclass
class Expected:
    """What the run must produce, computed from the generated data (not by the code measured)."""

    claims: int = 0
    lines: int = 0
    remunerated: Decimal = Decimal(0)
    index_e4: dict[tuple[int, str], int] = field(default_factory=dict)  # (product pk, care type) → index


@dataclass
class BatchMeasurement:
    backend: str
    claims: int
    lines: int
    setup_s: float
    run_s: float  # batch.run
    versions_s: float  # batch.record_claim_versions
    commit_s: float
    total_s: float  # the transaction, from BEGIN to the end of COMMIT
    remunerated: Decimal
    indexes: int
    own_cpu: float  # cores this process kept busy during the transaction
    db_cpu: float | None  # cores the PostgreSQL server kept busy (when this run started it)
    other_cpu: float  # cores everything else on the machine kept busy
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.total_s < TARGET_S


def previous_month(today: date) -> tuple[int, int]:
    first = today.replace(day=1) - timedelta(days=1)
    return first.year, first.month


def _us(day: date, second: int) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000 + second * 1_000_000


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _half_even(value: Fraction) -> int:
    """An exact value rounded half-even to an integer (the batch stores and applies index × 10,000 that way)."""
    floor = value.numerator // value.denominator
    rest = value - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2):
        return floor + 1
    return floor


def build(engine: Any, n: int, year: int, month: int) -> Expected:
    """Registers and N processed claims of (year, month), bulk-inserted; returns what the batch must produce.

    Shape (after the timing script of the claims work): facilities of levels H and C, 20 items and 20 services,
    two national products — P0 with a general monthly distribution (80 %), P1 with in-patient (90 %) and
    out-patient (70 %) monthly distributions and hospital care by facility level — one insuree per 4 claims, each
    with a year-long policy of one product and a 3,650 premium paid on its first day. A claim has one item line
    (price origin P, 2 × 5.00-20.00) and two service lines (origin R, 10.00-50.00 each); every 10th claim's last
    line was rejected at the checks; one claim in 5 spans two days. Process stamps spread over the month. Each
    claim carries the Claim and ClaimResponse version 1 a POST would have written (history rows in SQL, bodies of
    a real claim's size)."""
    from sqlalchemy import insert, literal, select

    from hifhir.domain.claims import batch
    from hifhir.store.db import transaction
    from hifhir.store.tables import (
        CLAIM_PROCESSED,
        LINE_PASSED,
        LINE_REJECTED,
        claim,
        claim_admin,
        claim_admin_role,
        claim_item,
        claim_service,
        health_facility,
        insuree,
        location,
        medical_item,
        medical_service,
        policy,
        premium,
        product,
        resource_version,
    )

    rng = random.Random(20261)
    first, last = date(year, month, 1), batch.month_end(year, month)
    days = (last - first).days + 1
    year_start, year_end = date(year, 1, 1), date(year, 12, 31)
    expected = Expected()
    with transaction(engine, write=True) as conn:
        def add(table: Any, **values: Any) -> int:
            return int(conn.execute(insert(table).values(**values)).inserted_primary_key[0])

        def entity(i: int) -> dict[str, Any]:
            ident = _uuid(rng)
            return {"id": ident, "uuid": ident, "version_id": 1, "last_updated": _us(year_start, i)}

        region = add(location, **entity(0), code="R1", name="Region", name_norm="region", type="R")
        district = add(location, **entity(1), code="D1", name="District", name_norm="district", type="D",
                       parent_pk=region)
        facilities: list[tuple[int, str, int]] = []  # (pk, level, claim administrator pk)
        for i, level in enumerate(FACILITY_LEVELS):
            hf = add(health_facility, **entity(i), code=f"HF{i:03d}", name=f"Facility {i}",
                     name_norm=f"facility {i}", legal_form="G", level=level, location_pk=district, care_type="B")
            admin = add(claim_admin, **entity(i), code=f"CA{i:03d}", last_name="Admin", other_names=f"A{i}",
                        family_norm="admin", given_norm=f"a{i}")
            add(claim_admin_role, **entity(i), code=f"CAR{i:03d}", claim_admin_pk=admin, hf_pk=hf)
            facilities.append((hf, level, admin))
        items = [add(medical_item, **entity(i), code=f"I{i:03d}", name=f"Item {i}", name_norm=f"item {i}",
                     price=Decimal(5 + i), care_type="B", item_type="D") for i in range(ITEMS)]
        services = [add(medical_service, **entity(i), code=f"S{i:03d}", name=f"Service {i}",
                        name_norm=f"service {i}", price=Decimal(20 + i), care_type="B", service_type="C",
                        level="S") for i in range(SERVICES)]
        products = []
        for i, (general, ip, op, interpretation) in enumerate((("M", None, None, "I"), (None, "M", "M", "H"))):
            products.append(add(product, **entity(i), code=f"P{i}", name=f"Product {i}", name_norm="p",
                                date_from=date(year - 5, 1, 1), date_to=date(year + 5, 1, 1), member_count=10,
                                period_rel_prices=general, period_rel_prices_ip=ip, period_rel_prices_op=op,
                                ceiling_interpretation=interpretation, level_1="D"))
        batch.set_distribution(conn, products[0], "M", "B", [SHARES["B"]] * 12, now=1)
        batch.set_distribution(conn, products[1], "M", "I", [SHARES["I"]] * 12, now=1)
        batch.set_distribution(conn, products[1], "M", "O", [SHARES["O"]] * 12, now=1)

        n_ins = max(n // CLAIMS_PER_INSUREE, 2)
        conn.execute(insert(insuree), [
            {**entity(i), "chf_id": f"{i:09d}", "last_name": "Insuree", "other_names": f"N{i}",
             "family_norm": "insuree", "given_norm": f"n{i}", "dob": date(1980 + i % 40, 1 + i % 12, 1),
             "gender": "MF"[i % 2]} for i in range(n_ins)])
        insurees = list(conn.execute(select(insuree.c.pk).order_by(insuree.c.pk)).scalars())
        conn.execute(insert(policy), [
            {**entity(i), "product_pk": products[i % 2], "enroll_date": year_start, "start_date": year_start,
             "effective_date": year_start, "expiry_date": year_end, "status": 2, "family_pk": None}
            for i in range(n_ins)])
        policies = list(conn.execute(select(policy.c.pk).order_by(policy.c.pk)).scalars())
        conn.execute(insert(premium), [
            {"policy_pk": policies[i], "product_pk": products[i % 2], "amount": PREMIUM, "receipt": f"R{i:09d}",
             "pay_date": year_start, "pay_type": "C", "created": 1} for i in range(n_ins)])
        policy_days = (year_end - year_start).days + 1
        allocated = {pk: Fraction(0) for pk in products}
        for i in range(n_ins):
            allocated[products[i % 2]] += Fraction(int(PREMIUM)) * days / policy_days

        claims, lines_i, lines_s = [], [], []
        # (product, care type) → [Σ R valuated (hundredths)], and per claim its lines (origin, valuated hundredths)
        relative: dict[tuple[int, str], int] = {}
        claim_lines: list[tuple[int, str, list[tuple[str, int]]]] = []
        for i in range(n):
            day = first + timedelta(days=i % days)
            multi = i % 5 == 0
            hf, level, admin = facilities[i % len(facilities)]
            ins = i % n_ins
            prod = products[ins % 2]
            pol = policies[ins]
            care = "B" if prod == products[0] else ("I" if level == "H" else "O")
            ident = _uuid(rng)
            submitted = _us(day, rng.randrange(86_000))
            processed = submitted + 1_000_000
            qty = Decimal(2)
            item_price = Decimal(rng.randint(500, 2000)).scaleb(-2)
            service_prices = [Decimal(rng.randint(1000, 5000)).scaleb(-2) for _ in range(2)]
            rejected_last = i % REJECTED_EVERY == 0
            pk = i + 1  # the claim table is empty: pks follow the insert order
            item_line = {"claim_pk": pk, "item_pk": items[i % ITEMS], "product_pk": prod, "policy_pk": pol,
                         "status": LINE_PASSED, "qty_provided": qty, "price_asked": item_price,
                         "price_adjusted": item_price, "price_valuated": item_price * qty, "price_origin": "P",
                         "remunerated_amount": item_price * qty, "limitation": "F", "sequence": 1}
            lines_i.append(item_line)
            passed: list[tuple[str, int]] = [("P", int(item_price * qty * 100))]
            claimed = item_price * qty
            for seq, price in enumerate(service_prices, start=2):
                claimed += price
                line: dict[str, Any] = {"claim_pk": pk, "service_pk": services[(i + seq) % SERVICES],
                                        "qty_provided": Decimal(1), "price_asked": price, "sequence": seq}
                if rejected_last and seq == 3:
                    # Every row of an executemany names the same columns.
                    line.update(status=LINE_REJECTED, rejection_reason=2, product_pk=None, policy_pk=None,
                                price_adjusted=None, price_valuated=None, price_origin=None, limitation=None)
                else:
                    line.update(status=LINE_PASSED, rejection_reason=0, product_pk=prod, policy_pk=pol,
                                price_adjusted=price, price_valuated=price, price_origin="R", limitation="F")
                    passed.append(("R", int(price * 100)))
                    relative[(prod, care)] = relative.get((prod, care), 0) + int(price * 100)
                lines_s.append(line)
            valuated = Decimal(sum(v for _, v in passed)).scaleb(-2)
            claims.append({
                "id": ident, "uuid": ident, "code": f"C{i:07d}", "hf_pk": hf, "insuree_pk": insurees[ins],
                "claim_admin_pk": admin, "date_from": day, "date_to": day + timedelta(days=1) if multi else None,
                "date_claimed": day, "date_processed": day, "status": CLAIM_PROCESSED, "visit_type": "O",
                "category": "H" if multi else "V", "icd_code": "A00", "claimed": claimed, "approved": valuated,
                "valuated": None, "submit_stamp": submitted, "process_stamp": processed, "version_id": 1,
                "last_updated": processed, "response_version": 1, "response_updated": processed})
            claim_lines.append((prod, care, passed))
            expected.lines += len(passed)
        conn.execute(insert(claim), claims)
        conn.execute(insert(claim_item), lines_i)
        conn.execute(insert(claim_service), lines_s)

        for prod in products:
            for care in (("B",) if prod == products[0] else ("I", "O")):
                value = Fraction(relative.get((prod, care), 0), 100)
                index = (allocated[prod] * Fraction(int(SHARES[care])) / 100 / value) if value else Fraction(1)
                expected.index_e4[(prod, care)] = _half_even(index * 10_000)
        total = 0
        for prod, care, passed in claim_lines:
            e4 = expected.index_e4[(prod, care)]
            total += sum((v * e4 + 5000) // 10_000 if origin == "R" else v for origin, v in passed)
        expected.claims = n
        expected.remunerated = Decimal(total).scaleb(-2)

        # The versions a POST writes (Claim and ClaimResponse 1): history of a populated database's size.
        for kind_name, res_type in (("claim", "Claim"), ("claim-response", "ClaimResponse")):
            body = _sample_body(conn, kind_name)
            conn.execute(insert(resource_version).from_select(
                ["res_type", "res_id", "kind", "version", "last_updated", "operation", "user_name", "body"],
                select(literal(res_type), claim.c.id, literal(kind_name), literal(1), claim.c.process_stamp,
                       literal("create"), literal(HISTORY_USER), literal(body)).order_by(claim.c.pk)))
    return expected


def _sample_body(conn: Any, kind_name: str) -> bytes:
    """A version body as the kind renders claim 1 (every history row of the setup gets one of this size)."""
    import orjson

    from hifhir.fhir.registry import KINDS

    kind = KINDS[kind_name]
    return orjson.dumps({"resourceType": kind.resource_type, "id": "x", **kind.render(conn, [1])[1]})


def check(engine: Any, expected: Expected, run_pk: int, result: Any) -> list[str]:
    """Problems with what the run left (empty: as expected)."""
    import orjson
    from sqlalchemy import BigInteger, func, select, type_coerce

    from hifhir.store.db import transaction
    from hifhir.store.tables import CLAIM_VALUATED, claim, rel_index, resource_version

    problems = []
    if result.claims != expected.claims:
        problems.append(f"batch.run valuated {result.claims} claims, expected {expected.claims}")
    if result.remunerated != expected.remunerated:
        problems.append(f"batch.run remunerated {result.remunerated}, expected {expected.remunerated}")
    with transaction(engine, write=False) as conn:
        statuses = dict(conn.execute(select(claim.c.status, func.count()).group_by(claim.c.status)).all())
        if statuses != {CLAIM_VALUATED: expected.claims}:
            problems.append(f"claim statuses {statuses}, expected all {expected.claims} valuated (16)")
        stored = conn.execute(select(func.coalesce(func.sum(type_coerce(claim.c.remunerated, BigInteger)), 0))
                              .where(claim.c.run_pk == run_pk)).scalar_one()
        if Decimal(int(stored)).scaleb(-2) != expected.remunerated:
            problems.append(f"Σ claim.remunerated {Decimal(int(stored)).scaleb(-2)}, "
                            f"expected {expected.remunerated}")
        indexes = {(r.product_pk, r.care_type): r.index_e4 for r in conn.execute(
            select(rel_index.c.product_pk, rel_index.c.care_type, rel_index.c.index_e4)
            .where(rel_index.c.run_pk == run_pk))}
        if indexes != expected.index_e4:
            problems.append(f"relative indexes {indexes}, expected {expected.index_e4}")
        versions = dict(conn.execute(select(claim.c.response_version, func.count())
                                     .group_by(claim.c.response_version)).all())
        if versions != {2: expected.claims}:
            problems.append(f"ClaimResponse versions {versions}, expected all {expected.claims} at 2")
        history = conn.execute(select(func.count()).where(resource_version.c.res_type == "ClaimResponse",
                                                          resource_version.c.version == 2)).scalar_one()
        if history != expected.claims:
            problems.append(f"{history} ClaimResponse version-2 history rows, expected {expected.claims}")
        sample = conn.execute(select(resource_version.c.body).where(
            resource_version.c.res_type == "ClaimResponse", resource_version.c.version == 2).limit(1)).scalar()
        if sample is not None:
            body = orjson.loads(sample)
            categories = [t["category"]["coding"][0]["code"] for t in body.get("total", [])]
            if body.get("outcome") != "complete" or categories[-1:] != ["16"]:
                problems.append(f"a ClaimResponse version 2 shows outcome {body.get('outcome')} and totals "
                                f"{categories}, expected complete with a valuated (16) total")
    return problems


def measure(engine: Any, year: int, month: int, today: date, profile_to: Path | None) -> tuple[Any, float, float,
                                                                                                  float, float]:
    """What `hifhir claims batch-run --period YYYY-MM` does after preparing the database (cli.cmd_claims): one
    write transaction with batch.run and batch.record_claim_versions. Returns (result, run s, versions s,
    commit s, total s)."""
    from hifhir.domain.claims import batch
    from hifhir.fhir.kind import now_us
    from hifhir.store.db import transaction

    profiler = cProfile.Profile() if profile_to else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    with transaction(engine, write=True) as conn:
        now = now_us()
        result = batch.run(conn, year=year, month=month, location_pk=None, today=today, now=now)
        ran = time.perf_counter()
        batch.record_claim_versions(conn, result.run_pk, now=now)
        recorded = time.perf_counter()
    done = time.perf_counter()
    if profiler and profile_to:
        profiler.disable()
        profile_to.parent.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(profile_to)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(35)
        log(f"profile written to {profile_to.relative_to(REPO_ROOT)}; top (cumulative):\n{out.getvalue()}")
    return result, ran - started, recorded - ran, done - recorded, done - started


@contextlib.contextmanager
def database(backend: str, args: argparse.Namespace, notes: list[str]) -> Iterator[tuple[str, int | None]]:
    """(URL of an empty database, PostgreSQL postmaster pid when this run started the server)."""
    if backend == "sqlite":
        path = VAR_DIR / "batch-run.db"
        remove_sqlite(path)
        notes.append(f"SQLite {sqlite3.sqlite_version} (WAL), {path.relative_to(REPO_ROOT)}")
        try:
            yield f"sqlite:///{path}", None
        finally:
            if not args.keep_db:
                remove_sqlite(path)
        return
    from tests import pg_cluster

    if args.pg_admin_url:
        url = pg_cluster.create_database(args.pg_admin_url, args.pg_database)
        notes.append(f"PostgreSQL {pg_server_version(args.pg_admin_url)} (--pg-admin-url: a server this run did not "
                     f"start), database {args.pg_database}")
        try:
            yield url, None
        finally:
            if not args.keep_db:
                _drop_database(args.pg_admin_url, args.pg_database)
        return
    with bench_pg_cluster() as (admin_url, data_dir):
        url = pg_cluster.create_database(admin_url, PG_DATABASE)
        notes.append(f"PostgreSQL {pg_server_version(admin_url)} (tests.pg_cluster settings: fsync, "
                     "synchronous_commit and full_page_writes off)")
        yield url, postmaster_pid(data_dir)


def _drop_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def run_backend(backend: str, args: argparse.Namespace) -> BatchMeasurement:
    from sqlalchemy import text

    from hifhir.config import Settings
    from hifhir.setup import prepare
    from hifhir.store.db import make_engine

    today = date.today()
    year, month = previous_month(today)
    notes: list[str] = []
    with database(backend, args, notes) as (url, db_root):
        engine = make_engine(url)
        try:
            if args.nice and db_root:
                renice(db_root, args.nice)  # backends forked later inherit the postmaster's priority
            t0 = time.perf_counter()
            prepare(Settings(database_url=url, jwt_secret="x" * 40, port=1), engine)
            expected = build(engine, args.claims, year, month)
            if backend == "postgresql":
                # As a populated production database would have them (autovacuum analyzes after a bulk load).
                with engine.connect() as conn:
                    conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
            setup_s = time.perf_counter() - t0
            log(f"{backend}: {expected.claims:,} processed claims ({expected.lines:,} passed lines) of "
                f"{year}-{month:02d} inserted in {setup_s:.1f} s; running the batch")
            if args.nice and db_root:
                # Again: the backend serving this run's connection called setsid() and has its own autogroup.
                renice(db_root, args.nice)
            if args.quiet_wait > 0:
                wait_for_quiet(args.quiet_wait)
            profile_to = VAR_DIR / "profiles" / f"batch-{backend}.prof" if args.profile else None
            hz = os.sysconf("SC_CLK_TCK")
            busy, own, db = system_busy_ticks(), os.times(), tree_cpu_ticks(db_root) if db_root else {}
            result, run_s, versions_s, commit_s, total_s = measure(engine, year, month, today, profile_to)
            busy_s = (system_busy_ticks() - busy) / hz
            own_s = sum(os.times()[:2]) - sum(own[:2])
            db_s = _cpu_delta(db, tree_cpu_ticks(db_root)) / hz if db_root else None
            problems = check(engine, expected, result.run_pk, result)
        finally:
            engine.dispose()
    if problems:
        raise BenchError(f"{backend}: the batch run did not produce what was expected: " + "; ".join(problems))
    others = busy_s - own_s - (db_s or 0)
    m = BatchMeasurement(backend, result.claims, expected.lines, setup_s, run_s, versions_s, commit_s, total_s,
                         result.remunerated, result.indexes, own_s / total_s, None if db_s is None else db_s / total_s,
                         max(others, 0.0) / total_s, notes)
    log(f"{backend}: batch run of {m.claims:,} claims in {m.total_s:.1f} s (batch.run {m.run_s:.1f} s, "
        f"ClaimResponse versions {m.versions_s:.1f} s, commit {m.commit_s:.1f} s); remunerated {m.remunerated}")
    if args.profile:
        m.notes.append("profiled with cProfile (slower than an unprofiled run)")
    return m


def _machine() -> str:
    from bench.run import machine_description

    try:
        return machine_description()
    except OSError:  # it asks wrk for its version, which this benchmark does not need
        return f"{os.cpu_count()} cores, Python {platform.python_version()}"


def render(runs: list[BatchMeasurement], args: argparse.Namespace, started: datetime, version: str) -> str:
    year, month = previous_month(started.date())
    lines = [
        f"# hifhir batch-run benchmark {started:%Y-%m-%d %H:%M}",
        "",
        f"- machine: {_machine()}",
        f"- code: {version}",
        f"- `hifhir claims batch-run --period {year}-{month:02d}` as the CLI runs it (batch.run and "
        "batch.record_claim_versions in one write transaction, committed), national products, "
        f"{args.claims:,} processed claims of 3 lines",
    ]
    if args.nice:
        lines.append(f"- this process{' and PostgreSQL' if any(r.backend == 'postgresql' for r in runs) else ''} "
                     f"at nice {args.nice}")
    for run in runs:
        lines += [f"- {run.backend}: {note}" for note in run.notes]
    lines += [
        "",
        "| backend | claims | passed lines | batch.run s | ClaimResponse versions s | commit s | total s | target "
        "| pass | own CPU | db CPU | other CPU | setup s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|",
    ]
    for r in runs:
        db_cpu = "—" if r.db_cpu is None else f"{r.db_cpu:.2f}"
        lines.append(f"| {r.backend} | {r.claims:,} | {r.lines:,} | {r.run_s:.1f} | {r.versions_s:.1f} "
                     f"| {r.commit_s:.1f} | **{r.total_s:.1f}** | < {TARGET_S:.0f} | "
                     f"{'pass' if r.passed else 'FAIL'} | {r.own_cpu:.2f} | {db_cpu} | {r.other_cpu:.2f} "
                     f"| {r.setup_s:.0f} |")
    lines += ["", "Every run's result was checked: all claims valuated (16), Σ remunerated and the relative indexes "
              "as computed independently, one ClaimResponse version 2 per claim. CPU columns: cores kept busy "
              "during the transaction by this process, by PostgreSQL (— when the server was not started by this run: "
              "then counted as other) and by everything else on the machine.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--claims", type=int, default=DEFAULT_CLAIMS, help="processed claims (default 100000)")
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="run this process (and the PostgreSQL this run starts) at this nice level (root)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the timed transaction: stats to var/bench/profiles/batch-<backend>.prof")
    parser.add_argument("--pg-admin-url", metavar="URL",
                        help="use this PostgreSQL server instead of starting one (e.g. $(cat var/test-pg/url))")
    parser.add_argument("--pg-database", default=PG_DATABASE, help="database name on --pg-admin-url")
    parser.add_argument("--keep-db", action="store_true", help="keep the database afterwards (to inspect it)")
    parser.add_argument("--quiet-wait", type=float, default=60.0, metavar="SECONDS",
                        help="before the timed transaction, wait up to this long for other processes to go idle "
                        "(default 60; 0 to skip)")
    parser.add_argument("--check", action="store_true", help="exit with status 2 when the 60 s target is missed")
    args = parser.parse_args(argv)
    if args.claims < 10:
        parser.error("--claims must be at least 10")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with exclusive_run():
        started = datetime.now()
        version = code_version()
        own_nice = None
        if args.nice:
            own_nice = set_autogroup_nice("self", args.nice)
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        runs: list[BatchMeasurement] = []
        try:
            for backend in (["sqlite", "postgresql"] if args.backend == "both" else [args.backend]):
                runs.append(run_backend(backend, args))
        except BenchError as exc:
            log(f"error: {exc}")
            return 1
        finally:
            if own_nice is not None:
                set_autogroup_nice("self", own_nice)
    report = render(runs, args, started, version)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{started:%Y%m%d-%H%M%S}-batch.md"
    out.write_text(report)
    print(report)
    log(f"written to {out.relative_to(REPO_ROOT)}")
    return 2 if args.check and not all(r.passed for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
