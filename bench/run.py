"""Benchmark the hifhir server with wrk on SQLite and PostgreSQL (`make bench`; see bench/README.md).

    python -m bench.run [--backend sqlite|postgresql|both] [--insurees 100000] [--duration 10]
                        [--connections 32] [--keep-db]

For each backend: a fresh database populated by `hifhir demo-data --insurees N`, the server started exactly as
`make run` starts it (`hifhir serve --migrate`, default workers), then wrk (a separate process, 2 threads,
authenticated) against each scenario, while the server's memory (RSS of its process tree) is sampled. The
results table goes to bench/results/<timestamp>.md and stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "bench"
VAR_DIR = REPO_ROOT / "var" / "bench"
RESULTS_DIR = BENCH_DIR / "results"
BIN_DIR = REPO_ROOT / ".venv" / "bin"

ADMIN = {"username": "Admin", "password": "admin123"}
PG_DATABASE = "hifhir_bench"
SAMPLE_SIZE = 1000
VILLAGE_SAMPLE = 200
MEMORY_LIMIT_MB = 300.0
SAMPLE_INTERVAL_S = 0.5
QUIET_CORES = 0.3
POST_CAPACITY_RPS = 5000
# Contracts per second a phase can send before running out of families (each family is enrolled once per run);
# the population leaves ~15 % of its families unenrolled (≈ 5,000 at 100,000 insurees): add_unenrolled_families
# adds the missing ones.
CONTRACT_CAPACITY_RPS = 1000
# Claims per second a phase can send before the prepared ones run out (each is sent once: its code is unique).
CLAIM_CAPACITY_RPS = 1000
# PaymentNotices per second a phase can send before the prepared invoices or bills run out (each full payment
# settles a different one: a second payment of it would be an over-payment, 422). In a fast phase of this machine
# PostgreSQL paid 912 contributions in full and 1,808 installments a second (2026-11-27): 1,000 each ran out. Bills are
# cheap to prepare and cheap to pay (no policy behind them): their phase gets more.
PAYMENT_CAPACITY_RPS = {"payment": 1500, "installment": 2500, "bill-payment": 4000}
PAYMENT_SCENARIOS = ("payment", "installment", "bill-payment")
INSTALLMENTS_PER_INVOICE = 4  # installment scenario: payments per invoice, together less than its total
UNENROLLED_KEPT = 50  # families enrol_idle leaves unenrolled
SERVER_READY_TIMEOUT_S = 120.0
DEMO_RETRY_S = 60.0
IG = "https://openimis.github.io/openimis_fhir_r4_ig"


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """The benchmark could not be set up or run."""


# --------------------------------------------------------------------------------------------------
# Scenarios and results


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    label: str
    target: float | None  # req/s the issue asks for; None for the ceiling
    method: str = "GET"
    script: str = "get.lua"  # the wrk script in bench/


CEILING = Scenario("ceiling", "GET /healthz (ceiling)", None)
SCENARIOS: tuple[Scenario, ...] = (
    CEILING,
    Scenario("read", "GET Patient/{id}", 4000.0),
    Scenario("identifier", "GET Patient?identifier=", 3000.0),
    Scenario("family", "GET Patient?family=&_count=20", 1000.0),
    Scenario("create", "POST Patient", 1000.0, "POST", "post.lua"),
    Scenario("expand", "GET ValueSet/$expand diagnoses, filter", 2000.0),
    Scenario("eligibility", "POST CoverageEligibilityRequest", 1500.0, "POST", "eligibility.lua"),
    Scenario("contract", "POST Contract (enrol a family)", 300.0, "POST", "bodies.lua"),
    Scenario("claim", "POST Claim (10 lines)", 400.0, "POST", "bodies.lua"),
    Scenario("payment", "POST PaymentNotice (contribution paid in full: activates)", 500.0, "POST", "bodies.lua"),
    Scenario("installment", "POST PaymentNotice (contribution installment)", 500.0, "POST", "bodies.lua"),
    Scenario("bill-payment", "POST PaymentNotice (bill paid in full)", 500.0, "POST", "bodies.lua"),
)
DIAGNOSIS_VS = f"{IG}/ValueSet/diagnosis-ICD10-level1"
DIAGNOSIS_CS_FILE = REPO_ROOT / "src/hifhir/data/ig/terminology/CodeSystem-diagnosis-ICD10-level1.json"
CATALOGUE_TYPES = ("Medication", "ActivityDefinition")
SYNC_TARGET = 20_000.0  # resources/s for a full catalogue sync with _count=1000
SYNC_ROUNDS = 3


@dataclass(slots=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    raw: str


@dataclass(slots=True)
class Measurement:
    backend: str
    scenario: Scenario
    wrk: WrkResult
    peak_rss_mb: float
    rss_breakdown: str  # per process of the server tree at the peak, e.g. "supervisor 89, workers 60+58"
    # Cores kept busy during the measurement (user + system time over wall time): by the server process tree,
    # by the PostgreSQL processes, by wrk, and by everything else on the machine.
    server_cpu: float
    db_cpu: float | None
    wrk_cpu: float
    other_cpu: float
    profile: Profile | None = None
    statements: StatementCosts | None = None
    ratio: float | None = None

    @property
    def passed(self) -> bool:
        target = self.scenario.target
        ok = self.wrk.requests > 0 and self.wrk.non_2xx == 0 and self.wrk.socket_errors == 0
        return ok and (target is None or self.wrk.rps >= target)


@dataclass(slots=True)
class BackendRun:
    backend: str
    insurees: int
    measurements: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sync: SyncResult | None = None

    @property
    def peak_rss_mb(self) -> float:
        return max((m.peak_rss_mb for m in self.measurements), default=0.0)


# --------------------------------------------------------------------------------------------------
# Processes: memory and CPU of a process tree, read from /proc


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the ")" that closes the command name: state, ppid, ...
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    children = _children_map()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    # utime and stime are fields 14 and 15 of stat; fields[0] here is field 3 (state).
    return int(fields[11]) + int(fields[12])


def tree_cpu_ticks(root: int) -> dict[int, int]:
    return {pid: cpu_ticks(pid) for pid in process_tree(root)}


def process_role(pid: int, root: int) -> str:
    if pid == root:
        return "supervisor"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return "other"
    if b"resource_tracker" in cmdline:
        return "tracker"
    if b"spawn_main" in cmdline or b"hifhir" in cmdline:
        return "worker"
    return "other"


def describe_tree_rss(root: int, sizes: dict[int, int]) -> str:
    """"supervisor 89, workers 60+58, tracker 12" (MB) from pid -> VmRSS kB."""
    by_role: dict[str, list[float]] = {}
    for pid, kb in sizes.items():
        by_role.setdefault(process_role(pid, root), []).append(kb / 1024)
    parts = []
    for role in ("supervisor", "worker", "tracker", "other"):
        if role in by_role:
            values = sorted(by_role[role], reverse=True)
            name = role + "s" if len(values) > 1 else role
            parts.append(f"{name} {'+'.join(f'{v:.0f}' for v in values)}")
    return ", ".join(parts)


def renice(root: int, nice: int) -> None:
    """Set the nice level of a process tree and of its scheduler autogroup.

    With autogroups (kernel.sched_autogroup_enabled, the default) the CPU is shared fairly between sessions
    first and the per-process nice level only counts inside a session: the server (a session of its own),
    wrk (this process's session) and PostgreSQL (every backend calls setsid()) need their autogroups' nice
    set too. Backends started later get neither, so this runs again right before each measurement.
    """
    groups: set[str] = set()
    for pid in process_tree(root):
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        try:
            group = Path(f"/proc/{pid}/autogroup").read_text().split()[0]
        except (OSError, IndexError):
            continue
        if group not in groups:
            groups.add(group)
            set_autogroup_nice(pid, nice)


def set_autogroup_nice(pid: int | str, nice: int) -> int | None:
    """Set the autogroup nice of `pid` ("self" for this process); returns the previous level, if any."""
    path = Path(f"/proc/{pid}/autogroup")
    try:
        previous = int(path.read_text().split("nice", 1)[1])
        path.write_text(f"{nice}\n")
        return previous
    except (OSError, ValueError, IndexError) as exc:
        log(f"cannot set the autogroup nice of {pid}: {exc}")
        return None


def wait_server_idle(root: int, max_wait_s: float = 180.0) -> None:
    """Wait until the server tree is idle.

    Requests that wrk left in flight (a slow scenario can leave one per connection, still processed after
    wrk closed it) must not eat into the next measurement.
    """
    hz = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + max_wait_s
    announced = False
    while time.monotonic() < deadline:
        before = tree_cpu_ticks(root)
        time.sleep(0.5)
        if _cpu_delta(before, tree_cpu_ticks(root)) / hz / 0.5 < 0.05:
            return
        if not announced:
            log("waiting for the server to finish the requests left in flight")
            announced = True
    log(f"the server is still busy after {max_wait_s:.0f}s; measuring anyway")


def system_busy_ticks() -> int:
    """Ticks all CPUs spent on anything but idle and iowait since boot (first line of /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values) - values[3] - values[4]


def wait_for_quiet(max_wait_s: float, threshold: float = QUIET_CORES) -> float:
    """Wait until the machine is idle (others below `threshold` cores over one second), at most max_wait_s.

    The benchmark shares the 2 cores with whatever else runs (other test suites, builds): measuring while they
    run mostly measures them. Returns the busy cores seen last.
    """
    hz = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + max_wait_s
    announced = False
    while True:
        before = system_busy_ticks()
        time.sleep(1.0)
        busy = (system_busy_ticks() - before) / hz
        if busy < threshold or time.monotonic() >= deadline:
            if busy >= threshold:
                log(f"the machine is still busy ({busy:.2f} cores used by other processes); measuring anyway")
            return busy
        if not announced:
            log(f"waiting (up to {max_wait_s:.0f}s) for other processes to settle: {busy:.2f} cores busy")
            announced = True


class MemorySampler:
    """Peak of the summed VmRSS of a process tree, sampled every SAMPLE_INTERVAL_S in a thread."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak_kb = 0
        self.peak_breakdown: dict[int, int] = {}  # pid -> VmRSS kB at the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        sizes = {pid: rss_kb(pid) for pid in process_tree(self.root)}
        total = sum(sizes.values())
        if total > self.peak_kb:
            self.peak_kb, self.peak_breakdown = total, sizes

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_INTERVAL_S)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# --------------------------------------------------------------------------------------------------
# Databases


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hifhir_bin() -> Path:
    path = BIN_DIR / "hifhir"
    if not path.exists():
        path = Path(sys.executable).parent / "hifhir"
    if not path.exists():
        raise BenchError("no hifhir executable in .venv/bin; run `make bootstrap`")
    return path


def server_env(database_url: str, port: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["HIFHIR_DATABASE_URL"] = database_url
    # `make run` uses the default worker count (one per core); a stray HIFHIR_WORKERS would change that.
    env.pop("HIFHIR_WORKERS", None)
    if port is not None:
        env["HIFHIR_PORT"] = str(port)
        env["HIFHIR_HOST"] = "127.0.0.1"
    return env


def load_demo_data(database_url: str, insurees: int, retry_for_s: float, catalogue: int) -> None:
    """Populate the database with `hifhir demo-data --insurees N --items C --services C`.

    The generator may not be available yet in a tree under development: retry for up to retry_for_s.
    """
    argv = [str(hifhir_bin()), "demo-data", "--insurees", str(insurees),
            "--items", str(catalogue), "--services", str(catalogue)]
    deadline = time.monotonic() + retry_for_s
    while True:
        log(f"populating: {' '.join(argv[1:])}")
        started = time.monotonic()
        proc = subprocess.run(argv, cwd=REPO_ROOT, env=server_env(database_url), stdin=subprocess.DEVNULL,
                              check=False)
        if proc.returncode == 0:
            log(f"populated {insurees} insurees in {time.monotonic() - started:.0f}s")
            return
        if time.monotonic() >= deadline:
            raise BenchError(f"hifhir demo-data failed with exit code {proc.returncode}")
        log(f"hifhir demo-data failed ({proc.returncode}); retrying in {DEMO_RETRY_S:.0f}s")
        time.sleep(DEMO_RETRY_S)


def sqlite_insuree_count(path: Path) -> int | None:
    if not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return int(conn.execute("select count(*) from insuree").fetchone()[0])
    except sqlite3.Error:
        return None


def prepare_sqlite(insurees: int, keep_db: bool, retry_for_s: float, catalogue: int) -> str:
    """A fresh SQLite database with N insurees; returns its URL.

    The populated database is kept as a template (var/bench/sqlite-N.db) and copied for each run, so the
    rows that POST adds never leak into the next run. With --keep-db a template is reused when its marker file
    (sqlite-N.json, written once population succeeded) still matches the insurees in it and the code that
    shaped it (see population_fingerprint).
    """
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    template = VAR_DIR / f"sqlite-{insurees}.db"
    marker = template.with_suffix(".json")
    count = sqlite_insuree_count(template)
    fingerprint = population_fingerprint()
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        recorded = {}
    expected = {"insurees": insurees, "count": count, "code": fingerprint, "catalogue": catalogue}
    if keep_db and count is not None and recorded == expected:
        log(f"reusing {template.relative_to(REPO_ROOT)} ({count} insurees)")
    else:
        marker.unlink(missing_ok=True)
        remove_sqlite(template)
        load_demo_data(f"sqlite:///{template}", insurees, retry_for_s, catalogue)
        count = sqlite_insuree_count(template)
        if count is None or count < insurees:
            raise BenchError(f"demo-data left {count} insurees in {template}, expected {insurees}")
        marker.write_text(json.dumps(expected | {"count": count}) + "\n")
    run_db = VAR_DIR / "sqlite-run.db"
    remove_sqlite(run_db)
    # The backup API copies a consistent snapshot, including anything still in the WAL.
    with contextlib.closing(sqlite3.connect(template)) as src, \
            contextlib.closing(sqlite3.connect(run_db)) as dst:
        src.backup(dst)
    return f"sqlite:///{run_db}"


def cleanup_sqlite(insurees: int, keep_db: bool) -> None:
    remove_sqlite(VAR_DIR / "sqlite-run.db")
    if not keep_db:
        remove_sqlite(VAR_DIR / f"sqlite-{insurees}.db")
        (VAR_DIR / f"sqlite-{insurees}.json").unlink(missing_ok=True)


def population_fingerprint() -> str:
    """A hash of the code that decides what a populated database holds: schema and migrations, the demo
    generator and the profiles that render the stored FHIR versions. A kept database made by other code is
    rebuilt rather than reused (a changed migration history would even stop `serve --migrate`)."""
    src = REPO_ROOT / "src" / "hifhir"
    digest = hashlib.sha256()
    for root in (src / "store", src / "demo", src / "fhir" / "profiles"):
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def remove_sqlite(path: Path) -> None:
    # ".writer-lock": the file the server's SQLite writer lock (hifhir.store.db.WriterLock) keeps beside it.
    for suffix in ("", "-wal", "-shm", "-journal", ".writer-lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


BENCH_PG_SETTINGS = {"shared_buffers": "2GB"}
# --pg-statements: what each statement costs the server, planning included (PostgreSQL plans a prepared statement anew
# for each connection until it keeps a generic plan, and again after each ANALYZE of its tables).
STATEMENT_SETTINGS = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track_planning": "on"}
STATEMENTS_SHOWN = 8


@contextlib.contextmanager
def bench_pg_cluster(*, statements: bool = False) -> Iterator[tuple[str, Path]]:
    """A throw-away PostgreSQL cluster from tests.pg_cluster under var/bench/pg; yields (admin URL, data dir).
    `statements`: with pg_stat_statements loaded (--pg-statements).

    tests.pg_cluster keeps its one cluster in var/test-pg, and its start() wipes whatever runs there: a
    benchmark would kill the cluster of a `make test` running at the same time in this checkout (and vice
    versa). So its state paths are pointed at var/bench/pg for the duration (REPO_ROOT only names the /tmp
    fallback used when the server user cannot reach var/).
    """
    from tests import pg_cluster

    names = ("REPO_ROOT", "STATE_DIR", "URL_FILE", "STATE_FILE", "LOCK_FILE", "SERVER_SETTINGS")
    saved = {name: getattr(pg_cluster, name) for name in names}
    state_dir = VAR_DIR / "pg"
    overrides = {
        "REPO_ROOT": state_dir,
        "STATE_DIR": state_dir,
        "URL_FILE": state_dir / "url",
        "STATE_FILE": state_dir / "state.json",
        "LOCK_FILE": state_dir / ".lock",
        # Sized as a deployment sizes it to its data: the default 128 MB holds a tenth of the 100,000-insuree
        # database, and every request then copies pages in from the OS cache.
        "SERVER_SETTINGS": {**pg_cluster.SERVER_SETTINGS, **BENCH_PG_SETTINGS,
                            **(STATEMENT_SETTINGS if statements else {})},
    }
    for name, value in overrides.items():
        setattr(pg_cluster, name, value)
    try:
        log("starting a PostgreSQL cluster (tests.pg_cluster) under var/bench/pg")
        url = pg_cluster.start()
        state = pg_cluster.ClusterState.load()
        if state is None:
            raise BenchError("tests.pg_cluster started but left no state.json")
        try:
            yield url, Path(state.data_dir)
        finally:
            pg_cluster.stop()
            log("PostgreSQL cluster stopped")
    finally:
        for name, value in saved.items():
            setattr(pg_cluster, name, value)


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def pg_server_version(admin_url: str) -> str:
    import psycopg

    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("show server_version").fetchone()
    return str(row[0]) if row else "?"


def admin_sql(database_url: str, sql: str) -> list[Any]:
    """One statement outside any transaction, on a connection of its own (ANALYZE, extension and statistics
    queries); its rows, if it returns any."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            result = conn.execute(text(sql))
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def analyze(database_url: str) -> None:
    """Collect planner statistics (ANALYZE), for --analyze experiments."""
    started = time.monotonic()
    admin_sql(database_url, "ANALYZE")
    log(f"ANALYZE took {time.monotonic() - started:.1f}s")


# --------------------------------------------------------------------------------------------------
# Samples for the request scripts


@dataclass(slots=True)
class Samples:
    ids: list[str]
    chfids: list[str]
    families: list[str]
    givens: list[str]
    villages: list[str]
    taken_chfids: set[str]
    insurees: int
    insured: list[tuple[str, str, str]]  # (Patient id, item code, service code): covered today, by their product
    contracts: list[str]  # JSON Contract bodies, each enrolling a different unenrolled family
    claims: list[str]  # JSON Claim bodies, each with its own code
    unenrolled: int  # families without any policy in the database

    def fresh_chfids(self, count: int, rng: random.Random) -> list[str]:
        """`count` distinct CHFIDs that no insuree or family has (nor any handed out before by this object).

        Valid under the openIMIS rule the demo generator follows: N on 8 digits, then N mod 7.
        """
        fresh: list[str] = []
        while len(fresh) < count:
            n = rng.randrange(1, 10**8)
            chfid = f"{n:08d}{n % 7}"
            if chfid not in self.taken_chfids:
                self.taken_chfids.add(chfid)
                fresh.append(chfid)
        return fresh


def eligibility_samples(conn: Any, size: int, today: date, rng: random.Random) -> list[tuple[str, str, str]]:
    """Insurees an active policy covers today, each with an item and a service of their product (at random)."""
    from sqlalchemy import func, select

    from hifhir.store.tables import (
        POLICY_ACTIVE,
        insuree,
        insuree_policy,
        is_current,
        medical_item,
        medical_service,
        policy,
        product_item,
        product_service,
    )

    ip, p = insuree_policy, policy
    rows = conn.execute(
        select(insuree.c.id, p.c.product_pk)
        .select_from(insuree.join(ip, ip.c.insuree_pk == insuree.c.pk).join(p, p.c.pk == ip.c.policy_pk))
        .where(is_current(insuree), is_current(ip), is_current(p), p.c.status == POLICY_ACTIVE,
               p.c.expiry_date >= today, ip.c.effective_date <= today, ip.c.expiry_date >= today)
        .order_by(func.random()).limit(size)).all()
    products = sorted({r.product_pk for r in rows})
    codes: dict[str, dict[int, list[str]]] = {"item": {}, "service": {}}
    for kind, line, register, column in (("item", product_item, medical_item, product_item.c.item_pk),
                                         ("service", product_service, medical_service,
                                          product_service.c.service_pk)):
        for r in conn.execute(select(line.c.product_pk, register.c.code).join(register, register.c.pk == column)
                              .where(line.c.product_pk.in_(products), is_current(register))
                              .order_by(line.c.product_pk, register.c.code)):
            codes[kind].setdefault(r.product_pk, []).append(r.code)
    return [(r.id, rng.choice(codes["item"][r.product_pk]), rng.choice(codes["service"][r.product_pk]))
            for r in rows if codes["item"].get(r.product_pk) and codes["service"].get(r.product_pk)]


def unenrolled_families(conn: Any) -> int:
    """Current families without any current policy: the ones a POST Contract can enrol."""
    from sqlalchemy import exists, func, select

    from hifhir.store.tables import family, is_current, policy

    enrolled = exists(select(policy.c.pk).where(policy.c.family_pk == family.c.pk, is_current(policy)))
    return int(conn.execute(select(func.count()).select_from(family).where(is_current(family), ~enrolled))
               .scalar_one())


def add_unenrolled_families(database_url: str, wanted: int, scenario: str = "contract") -> str | None:
    """Make sure at least `wanted` families have no policy, for the contract scenario (or the payment scenario,
    which enrols them in idle policies to pay): the demo population leaves ~15 % of its families unenrolled
    (≈ 5,000 at 100,000 insurees), fewer than a fast server enrols (or pays) in a phase. The missing ones are new
    families of the demo generator (`generate_population(enrol=False)`: ≈ 3 insurees each). Returns a note when it
    added any."""
    from hifhir.demo.population import generate_population
    from hifhir.store.db import make_engine

    engine = make_engine(database_url)
    try:
        added = 0
        started = time.monotonic()
        while True:
            with engine.connect() as conn:
                missing = wanted - unenrolled_families(conn)
            if missing <= 0:
                break
            insurees = 3 * missing + 30
            generate_population(engine, insurees, seed=7_000 + added, progress=False, enrol=False)
            added += insurees
    finally:
        engine.dispose()
    if not added:
        return None
    return (f"{scenario}: {added:,} insurees added in new unenrolled families ({time.monotonic() - started:.0f}s), "
            f"so that {wanted:,} families can be enrolled")


def contract_bodies(conn: Any, count: int, today: date, rng: random.Random) -> tuple[list[str], int]:
    """Contracts enrolling `count` unenrolled families picked at random (fewer when there are not as many), as a
    point of service sends them (tests/builders_enrolment.py): the whole family (up to the product's member
    count), a product sold where it lives, the village's officer, issued today, and one cash contribution
    paying the value that hifhir.domain.policy computes (so the policy is activated). Returns the bodies and
    how many families have no policy."""
    from sqlalchemy import exists, func, select

    from hifhir.demo import resources as res
    from hifhir.demo.policies import sale
    from hifhir.domain.policy import Member, ProductTerms
    from hifhir.store.tables import (
        family,
        insuree,
        is_current,
        location,
        officer,
        officer_role,
        officer_role_village,
        policy,
        product,
    )

    enrolled = exists(select(policy.c.pk).where(policy.c.family_pk == family.c.pk, is_current(policy)))
    unenrolled = unenrolled_families(conn)
    families = conn.execute(
        select(family.c.pk, family.c.id, family.c.location_pk, family.c.head_insuree_pk)
        .where(is_current(family), ~enrolled).order_by(func.random()).limit(count)).all()
    members: dict[int, list[Any]] = {}
    pks = [f.pk for f in families]
    for start in range(0, len(pks), 500):
        for r in conn.execute(select(insuree.c.pk, insuree.c.id, insuree.c.family_pk, insuree.c.dob,
                                     insuree.c.relationship).where(
                insuree.c.family_pk.in_(pks[start:start + 500]), is_current(insuree)).order_by(insuree.c.pk)):
            members.setdefault(r.family_pk, []).append(r)
    places = {r.pk: (r.pk, r.parent_pk, r.district_pk, r.region_pk, None) for r in conn.execute(
        select(location.c.pk, location.c.parent_pk, location.c.district_pk, location.c.region_pk).where(
            location.c.type == "V", is_current(location)))}
    products: dict[int | None, list[tuple[ProductTerms, str]]] = {}
    for r in conn.execute(select(product).where(is_current(product), product.c.status == "active")):
        terms = ProductTerms.from_row(r)
        if terms.sold_on(today):
            products.setdefault(terms.location_pk, []).append((terms, r.id))
    officers: dict[int, str] = {}
    for r in conn.execute(select(officer_role_village.c.location_pk, officer.c.id)
                          .join(officer_role, officer_role.c.pk == officer_role_village.c.role_pk)
                          .join(officer, officer.c.pk == officer_role.c.officer_pk)
                          .where(is_current(officer_role), is_current(officer)).order_by(officer_role.c.pk)):
        officers.setdefault(r.location_pk, r.id)
    stamp = f"{int(time.time()) % 10**8:08d}"
    bodies: list[str] = []
    for f in families:
        candidates = [c for pk in places.get(f.location_pk, (None,)) for c in products.get(pk, ())]
        family_members = sorted(members.get(f.pk, []), key=lambda m: (m.pk != f.head_insuree_pk, m.pk))
        if not candidates or not family_members or family_members[0].pk != f.head_insuree_pk:
            continue
        terms, product_id = rng.choice(candidates)
        covered = family_members[:terms.member_count]
        due = sale(terms, [Member(m.dob, m.relationship) for m in covered], today)
        body = res.contract_resource(
            family_id=f.id, head_id=covered[0].id, member_ids=[m.id for m in covered], product_id=product_id,
            issued=today, officer_id=officers.get(f.location_pk),
            premiums=[res.PremiumSpec(due.value, f"BENCH{stamp}{len(bodies):07d}", today)])
        bodies.append(json.dumps(body, separators=(",", ":")))
    return bodies, unenrolled


CLAIM_LINES = 10  # lines per benchmarked claim (the issue's figure: POST Claim with 10 lines)


def claim_bodies(conn: Any, count: int, today: date, rng: random.Random) -> list[str]:
    """`count` Claims as facilities send them (hifhir.demo.resources.claim_resource): an insuree covered by an
    active policy, treated yesterday at a facility by its claim administrator, CLAIM_LINES lines (half items, half
    services when there are) that are both on the facility's price lists and covered by the insuree's product, at
    the facility's price, a current diagnosis, a code unique to this run."""
    from sqlalchemy import func, select

    from hifhir.demo import resources as res
    from hifhir.domain.pricelists import facility_price_lines
    from hifhir.store.codelists import DIAGNOSIS_LIST
    from hifhir.store.tables import (
        claim_admin,
        claim_admin_role,
        code_list_entry,
        health_facility,
        is_current,
        medical_item,
        medical_service,
        product_item,
        product_service,
    )

    treated = today - timedelta(days=1)
    insured = eligibility_samples(conn, count, treated, rng)
    if not insured:
        return []
    cover_of = _insuree_covers(conn, [patient_id for patient_id, _, _ in insured], treated)
    diagnoses = conn.execute(select(code_list_entry.c.code).where(
        code_list_entry.c.list_name == DIAGNOSIS_LIST, code_list_entry.c.active.is_(True))
        .order_by(code_list_entry.c.code).limit(200)).scalars().all()
    facilities = conn.execute(
        select(health_facility.c.pk, health_facility.c.id, claim_admin.c.id.label("admin_id"))
        .join(claim_admin_role, claim_admin_role.c.hf_pk == health_facility.c.pk)
        .join(claim_admin, claim_admin.c.pk == claim_admin_role.c.claim_admin_pk)
        .where(is_current(health_facility), is_current(claim_admin_role), is_current(claim_admin))
        .order_by(func.random()).limit(20)).all()
    covered: dict[str, dict[int, set[str]]] = {"item": {}, "service": {}}
    for kind, line, register, column in (("item", product_item, medical_item, product_item.c.item_pk),
                                         ("service", product_service, medical_service,
                                          product_service.c.service_pk)):
        for r in conn.execute(select(line.c.product_pk, register.c.code, register.c.id)
                              .join(register, register.c.pk == column).where(is_current(register))):
            covered[kind].setdefault(r.product_pk, set()).add(r.code)
    ids = {kind: dict(conn.execute(select(table.c.code, table.c.id).where(is_current(table))).all())
           for kind, table in (("item", medical_item), ("service", medical_service))}
    prices = {f.pk: {kind: {line.code: line.price for line in facility_price_lines(conn, f.pk, kind)}
                     for kind in ("item", "service")} for f in facilities}
    stamp = f"{int(time.time()) % 10**6:06d}"
    bodies: list[str] = []
    for n in range(count):
        patient_id = insured[n % len(insured)][0]
        if patient_id not in cover_of:
            continue
        product_pk, coverage_id = cover_of[patient_id]
        f = facilities[n % len(facilities)]
        lines: list[Any] = []
        for kind in ("item", "service"):
            usable = sorted(set(prices[f.pk][kind]) & covered[kind].get(product_pk, set()))
            for code in rng.sample(usable, min(len(usable), CLAIM_LINES // 2)):
                lines.append(res.ClaimLineSpec(kind, ids[kind][code], Decimal(1), prices[f.pk][kind][code]))
        if not lines or not diagnoses:
            continue
        body = res.claim_resource(code=f"B{stamp}{n:07d}"[:20], patient_id=patient_id, coverage_id=coverage_id,
                                  facility_id=f.id,
                                  claim_admin_id=f.admin_id, treated=treated, claimed=today,
                                  diagnoses=[rng.choice(diagnoses)], lines=lines[:CLAIM_LINES])
        bodies.append(json.dumps(body, separators=(",", ":")))
    return bodies


def _insuree_covers(conn: Any, patient_ids: list[str], day: date) -> dict[str, tuple[int, str]]:
    """Patient id → (product pk, Coverage id) of an active policy covering the insuree on `day`."""
    from sqlalchemy import select

    from hifhir.store.tables import POLICY_ACTIVE, coverage, insuree, insuree_policy, is_current, policy

    ip, p = insuree_policy, policy
    out: dict[str, tuple[int, str]] = {}
    for start in range(0, len(patient_ids), 500):
        for r in conn.execute(
                select(insuree.c.id, p.c.product_pk, coverage.c.id.label("coverage_id"))
                .select_from(insuree.join(ip, ip.c.insuree_pk == insuree.c.pk).join(p, p.c.pk == ip.c.policy_pk)
                             .join(coverage, coverage.c.policy_pk == p.c.pk))
                .where(insuree.c.id.in_(patient_ids[start:start + 500]), is_current(ip), is_current(p),
                       p.c.status == POLICY_ACTIVE, ip.c.effective_date <= day, ip.c.expiry_date >= day)):
            out.setdefault(r.id, (r.product_pk, r.coverage_id))
    return out


# --------------------------------------------------------------------------------------------------
# Payments: the invoices and bills the payment scenarios pay, made in SQL before the server starts


PAYMENT_NOTICE_PROFILE = f"{IG}/StructureDefinition/openimis-payment-notice"
PAYMENT_STATUS_CS = "http://terminology.hl7.org/CodeSystem/paymentstatus"
SETTLEMENT_REF = "https://payments.example.org/fhir/PaymentReconciliation/bench-settlement"


def payment_notice_body(request: dict[str, Any], amount: Decimal, reference: str, day: date, currency: str) -> str:
    """A PaymentNotice as the payments platform sends it (the shape of tests/http/test_payments.py notice()): its
    reference (also the contribution's receipt) unique, the amount written as an exact JSON number."""
    body = {
        "resourceType": "PaymentNotice", "meta": {"profile": [PAYMENT_NOTICE_PROFILE]},
        "identifier": [{"type": {"coding": [{"system": f"{IG}/CodeSystem/openimis-identifiers", "code": "UUID"}]},
                        "value": reference}],
        "status": "active", "request": request, "created": f"{day.isoformat()}T10:00:00Z",
        "payment": {"reference": SETTLEMENT_REF}, "paymentDate": day.isoformat(),
        "recipient": {"reference": INSURER_REF},
        "amount": {"value": "@@AMOUNT@@", "currency": currency},
        "paymentStatus": {"coding": [{"system": PAYMENT_STATUS_CS, "code": "paid"}]},
    }
    return json.dumps(body, separators=(",", ":")).replace('"@@AMOUNT@@"', str(amount))


@dataclass(slots=True)
class PaymentBodies:
    bodies: dict[str, list[str]]  # scenario → PaymentNotice bodies, in sending order
    notes: list[str]
    first_contract: str | None = None  # the Contract whose invoice the first `payment` body pays (verify)


def enrol_idle(conn: Any, count: int, today: date, rng: random.Random) -> list[int]:
    """Enrol up to `count` unenrolled families, picked at random, in idle policies (nothing paid) with their
    contribution invoices, as a Contract write without contributions leaves them: the demo loader's choice of
    product, members, officer and dates for an idle policy (`hifhir.demo.policies`: enrolled in the last 60 days)
    and the Contract kind's rows, written with WriteContext.insert and rendered by its flush. Returns the invoices'
    pks."""
    from sqlalchemy import exists, func, insert, select

    from hifhir.demo.policies import Planned, PolicyPlanner, draw_dates
    from hifhir.domain.invoicing import invoice_for_policy
    from hifhir.domain.policy import IDLE, Member
    from hifhir.fhir.kind import WriteContext
    from hifhir.store.tables import coverage, family, insuree, insuree_policy, is_current, policy

    enrolled = exists(select(policy.c.pk).where(policy.c.family_pk == family.c.pk, is_current(policy)))
    unenrolled = int(conn.execute(select(func.count()).select_from(family).where(
        is_current(family), ~enrolled)).scalar_one())
    # A few stay unenrolled: verify() enrols one whatever the scenarios.
    count = min(count, unenrolled - UNENROLLED_KEPT)
    if count <= 0:
        return []
    families = conn.execute(select(family.c.pk, family.c.location_pk, family.c.head_insuree_pk).where(
        is_current(family), ~enrolled).order_by(func.random()).limit(count)).all()
    members: dict[int, list[Any]] = {}
    pks = [f.pk for f in families]
    for start in range(0, len(pks), 500):
        for r in conn.execute(select(insuree.c.pk, insuree.c.family_pk, insuree.c.dob, insuree.c.relationship).where(
                insuree.c.family_pk.in_(pks[start:start + 500]), is_current(insuree)).order_by(insuree.c.pk)):
            members.setdefault(r.family_pk, []).append(r)
    planner = PolicyPlanner(conn, rng, today)
    ctx = WriteContext(conn, "bench")
    made: list[int] = []
    for f in families:
        terms_list, weights = planner.candidates(f.location_pk)
        family_members = sorted(members.get(f.pk, []), key=lambda m: (m.pk != f.head_insuree_pk, m.pk))
        if not terms_list or not family_members or family_members[0].pk != f.head_insuree_pk:
            continue
        terms = rng.choices(terms_list, weights)[0]
        covered = family_members[:max(terms.member_count, 0)]
        dates = draw_dates(rng, terms, [Member(m.dob, m.relationship) for m in covered], IDLE, today)
        if dates is None:
            continue
        planned = Planned(terms, f.pk, planner.officers.get(f.location_pk), [m.pk for m in covered], IDLE, dates,
                          "C")
        res_id = str(uuid.uuid4())
        pol, rows, _, cov = PolicyPlanner.rows(planned, 0, 0, res_id, ctx.now)
        drop = ("pk", "version_id", "last_updated")
        policy_pk = ctx.insert(policy, {k: v for k, v in pol.items() if k not in drop})
        conn.execute(insert(insuree_policy), [{**m, "policy_pk": policy_pk} for m in rows])
        ctx.mark("contract", policy_pk)
        ctx.mark("coverage", ctx.insert(coverage, {**{k: v for k, v in cov.items() if k not in drop},
                                                   "policy_pk": policy_pk}))
        invoice_pk = invoice_for_policy(conn, policy_pk, today=today, now=ctx.now)
        if invoice_pk is not None:
            ctx.mark("invoice", invoice_pk)
            made.append(invoice_pk)
    ctx.flush()
    return made


def prepare_payments(database_url: str, wanted: dict[str, int]) -> PaymentBodies:
    """The invoices and bills the payment scenarios pay, written in one transaction before the server starts, and
    the PaymentNotices paying them (at most `wanted[scenario]` per scenario).

    The demo loader inserts its policies in SQL, without the contribution invoices a Contract write creates: the
    invoices of its idle policies (enrolled, unpaid: ≈ 5 % of the families) are made here as that write makes them
    (`invoice_for_policy`, FHIR versions recorded by `record_versions`); when they are too few, unenrolled families
    (≈ 15 %) are enrolled in idle policies with their invoices (`enrol_idle`). Those are the families the contract
    scenario enrols: the payment scenarios are not in the default set, they run in an invocation of their own.
    * payment: one notice per invoice paying its total, which activates the policy (the GovStack contribution
      payment): one invoice per request;
    * installment: INSTALLMENTS_PER_INVOICE notices per invoice (more when invoices are short), each 1/(n+1) of its
      total (none completes it: no activation), sent round-robin over the invoices; at most a quarter of the
      invoices when `payment` runs too;
    * bill-payment: claim-batch bills to health facilities, inserted as a batch run leaves them, each paid in full
      by one notice (no policy, no contribution).
    """
    from sqlalchemy import exists, func, insert, select

    from hifhir.config import SCHEME_CURRENCY
    from hifhir.domain.invoicing import invoice_for_policy
    from hifhir.fhir import registry  # noqa: F401  (the kinds record_versions renders through)
    from hifhir.fhir.kind import now_us
    from hifhir.fhir.profiles.invoice import record_versions
    from hifhir.store.db import make_engine, transaction
    from hifhir.store.tables import (
        INVOICE_VALIDATED,
        POLICY_IDLE,
        bill,
        bill_line,
        health_facility,
        invoice,
        is_current,
        policy,
    )

    today = date.today()
    stamp = f"{int(time.time()) % 10**8:08d}"
    rng = random.Random()
    bodies: dict[str, list[str]] = {}
    notes: list[str] = []
    engine = make_engine(database_url)
    try:
        with transaction(engine, write=True) as conn:
            full_wanted = wanted.get("payment", 0)
            split_wanted = wanted.get("installment", 0)
            needed = full_wanted + -(-split_wanted // INSTALLMENTS_PER_INVOICE)
            invoiced = exists(select(invoice.c.pk).where(invoice.c.policy_pk == policy.c.pk))
            idle = list(conn.execute(select(policy.c.pk).where(
                is_current(policy), policy.c.status == POLICY_IDLE, ~invoiced).order_by(func.random())
                .limit(needed)).scalars()) if needed else []
            now = now_us()
            made = [pk for pk in (invoice_for_policy(conn, pk, today=today, now=now) for pk in idle) if pk is not None]
            record_versions(conn, "invoice", made, now=now, user_name="bench")
            if needed:
                notes.append(f"payments: contribution invoices made for {len(made):,} of the demo's idle policies")
            if len(made) < needed:
                started = time.monotonic()
                extra = enrol_idle(conn, needed - len(made), today, rng)
                notes.append(f"payments: {len(extra):,} unenrolled families enrolled in idle policies with their "
                             f"invoices ({time.monotonic() - started:.0f}s)")
                made += extra
            rows = conn.execute(
                select(invoice.c.pk, invoice.c.id, invoice.c.amount_total, policy.c.id.label("contract"))
                .join(policy, policy.c.pk == invoice.c.policy_pk).where(invoice.c.pk.in_(made))).all() if made else []
            rows = sorted(rows, key=lambda r: r.pk)
            rng.shuffle(rows)
            for_split = 0
            if split_wanted and rows:
                for_split = -(-split_wanted // INSTALLMENTS_PER_INVOICE)
                if full_wanted:
                    for_split = min(for_split, len(rows) // 4)
                for_split = max(1, min(for_split, len(rows)))
            split_rows, full_rows = rows[:for_split], rows[for_split:for_split + full_wanted]
            if "payment" in wanted:
                bodies["payment"] = [
                    payment_notice_body({"reference": f"Invoice/{r.id}"}, r.amount_total, f"BENCH-PF{stamp}{n:07d}",
                                        today, SCHEME_CURRENCY) for n, r in enumerate(full_rows)]
                notes.append(f"payment: {len(full_rows):,} contribution invoices of idle policies, each paid in full "
                             "once")
            if "installment" in wanted:
                per_invoice = -(-split_wanted // max(1, len(split_rows)))
                split: list[str] = []
                for n in range(per_invoice * len(split_rows)):
                    r = split_rows[n % len(split_rows)]
                    part = (r.amount_total / (per_invoice + 1)).quantize(Decimal("0.01"), rounding="ROUND_DOWN")
                    split.append(payment_notice_body({"reference": f"Invoice/{r.id}"}, part,
                                                     f"BENCH-PI{stamp}{n:07d}", today, SCHEME_CURRENCY))
                bodies["installment"] = split
                notes.append(f"installment: {len(split_rows):,} contribution invoices, {per_invoice} installments "
                             "each (1/(n+1) of the total: none completes it)")
            bill_wanted = wanted.get("bill-payment", 0)
            if bill_wanted:
                facilities = list(conn.execute(select(health_facility.c.pk).where(is_current(health_facility))
                                               .order_by(health_facility.c.pk)).scalars())
                if not facilities:
                    raise BenchError("the database holds no health facility to bill (bill-payment)")
                first_day = today.replace(day=1)
                bills = []
                for n in range(bill_wanted):
                    amount = Decimal(rng.randrange(50_000, 5_000_000)) / 100
                    bill_id = str(uuid.uuid4())
                    bills.append({
                        "id": bill_id, "uuid": bill_id, "version_id": 0, "last_updated": now,
                        "code": f"BENCH-BL{stamp}{n:07d}", "type_code": "claim-batch", "status": INVOICE_VALIDATED,
                        "payee_type": "health-facility", "payee_pk": facilities[n % len(facilities)],
                        "date_issued": first_day, "date_due": first_day + timedelta(days=30),
                        "currency": SCHEME_CURRENCY, "amount_net": amount, "amount_total": amount,
                        "note": "Claims valuated by the batch run (bench)"})
                conn.execute(insert(bill), bills)
                pks = dict(conn.execute(select(bill.c.id, bill.c.pk).where(
                    bill.c.code.like(f"BENCH-BL{stamp}%"))).all())
                conn.execute(insert(bill_line), [
                    {"bill_pk": pks[b["id"]], "sequence": 1, "line_type": "claim", "code": f"CL{n:07d}",
                     "quantity": 1, "unit_price": b["amount_total"], "amount_net": b["amount_total"],
                     "amount_total": b["amount_total"]} for n, b in enumerate(bills)])
                record_versions(conn, "bill", sorted(pks.values()), now=now, user_name="bench")
                bodies["bill-payment"] = [
                    payment_notice_body({"reference": f"Invoice/{b['id']}", "type": "bill"}, b["amount_total"],
                                        f"BENCH-PB{stamp}{n:07d}", today, SCHEME_CURRENCY)
                    for n, b in enumerate(bills)]
                notes.append(f"bill-payment: {len(bills):,} claim-batch bills inserted, each paid in full once")
    finally:
        engine.dispose()
    return PaymentBodies(bodies, notes, full_rows[0].contract if "payment" in wanted and full_rows else None)


def pick_samples(database_url: str, size: int, contracts: int, claims: int = 0) -> Samples:
    from sqlalchemy import create_engine, func, select

    from hifhir.store.tables import family, insuree, location

    engine = create_engine(database_url)
    today = date.today()
    rng = random.Random()
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(insuree.c.id, insuree.c.chf_id, insuree.c.last_name, insuree.c.other_names)
                .where(insuree.c.deleted.is_(False))
                .order_by(func.random())
                .limit(size)
            ).all()
            villages = conn.execute(
                select(location.c.id)
                .where(location.c.type == "V", location.c.deleted.is_(False))
                .order_by(func.random())
                .limit(VILLAGE_SAMPLE)
            ).scalars().all()
            # Every CHFID ever used (deleted rows too) and the family codes (openIMIS keeps both in one number
            # space), so the ones POST sends are surely new.
            taken = set(conn.execute(select(insuree.c.chf_id)).scalars())
            insurees = len(taken)
            taken.update(conn.execute(select(family.c.code)).scalars())
            insured = eligibility_samples(conn, size, today, rng)
            bodies, unenrolled = contract_bodies(conn, contracts, today, rng)
            claim_list = claim_bodies(conn, claims, today, rng) if claims else []
    finally:
        engine.dispose()
    if not rows:
        raise BenchError("the database holds no insurees")
    if not villages:
        raise BenchError("the database holds no villages")
    if not insured:
        raise BenchError("the database holds no insuree covered today (eligibility)")
    if not bodies:
        raise BenchError("the database holds no unenrolled family to enrol (contract)")
    if claims and not claim_list:
        raise BenchError("the database holds no insured insuree with a facility to claim for (claim)")
    return Samples(
        ids=[r.id for r in rows],
        chfids=[r.chf_id for r in rows],
        families=sorted({r.last_name for r in rows}),
        givens=sorted({r.other_names for r in rows}),
        villages=list(villages),
        taken_chfids=taken,
        insurees=insurees,
        insured=insured,
        contracts=bodies,
        claims=claim_list,
        unenrolled=unenrolled,
    )


# --------------------------------------------------------------------------------------------------
# The server


class Server:
    """`hifhir serve --migrate` as `make run` starts it, in a session of its own (stoppable as a group)."""

    def __init__(self, database_url: str, log_path: Path, workers: int = 0) -> None:
        self.workers = workers  # 0: the default of `make run` (HIFHIR_WORKERS unset: one per core)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(hifhir_bin()), "serve", "--migrate"]
        if self.workers:
            argv += ["--workers", str(self.workers)]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=server_env(self.database_url, self.port),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the server exited ({self.proc.returncode}); see {self.log_path}")
            with contextlib.suppress(OSError):
                status, _ = http(self.base + "/fhir/metadata", timeout=2.0)
                if status == 200:
                    self._wait_for_workers()
                    return
            time.sleep(0.2)
        raise BenchError(f"the server did not answer /fhir/metadata within {SERVER_READY_TIMEOUT_S:.0f}s")

    def _wait_for_workers(self) -> None:
        # One worker answering does not mean all have imported the app; give the rest a moment and hit the
        # endpoint a few times so each worker has served at least once before wrk starts.
        time.sleep(1.0)
        for _ in range(20):
            http(self.base + "/fhir/metadata", timeout=5.0)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("server not started")
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # uvicorn's supervisor shuts its workers down on SIGINT, like Ctrl-C after `make run`.
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            log("server did not stop within 20s; killing its process group")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def http(url: str, *, method: str = "GET", body: bytes | None = None, token: str | None = None,
         timeout: float = 30.0) -> tuple[int, bytes]:
    headers = {"Accept": "application/fhir+json"}
    if body is not None:
        headers["Content-Type"] = "application/fhir+json" if "/fhir/" in url else "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def login(base: str) -> str:
    status, body = http(base + "/api/api_fhir_r4/login/", method="POST", body=json.dumps(ADMIN).encode())
    if status != 200:
        raise BenchError(f"login failed: {status} {body[:300]!r}")
    return str(json.loads(body)["token"])


# --------------------------------------------------------------------------------------------------
# Request scripts


def patient_body(chfid: str, family: str, given: str, village_id: str) -> dict[str, Any]:
    """The resource bench/post.lua sends (the shape of tests/builders.py patient())."""
    ext = f"{IG}/StructureDefinition/"
    return {
        "resourceType": "Patient",
        "meta": {"profile": [f"{ext}openimis-patient"]},
        "extension": [{"url": f"{ext}patient-is-head", "valueBoolean": False}],
        "identifier": [{
            "type": {"coding": [{"system": f"{IG}/CodeSystem/openimis-identifiers", "code": "Code"}]},
            "value": chfid,
        }],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "female",
        "birthDate": "1990-01-01",
        "address": [{
            "extension": [
                {"url": f"{ext}address-municipality", "valueString": "Ward"},
                {"url": f"{ext}address-location-reference",
                 "valueReference": {"reference": f"Location/{village_id}"}},
            ],
            "use": "home", "type": "physical", "state": "Region", "district": "District", "city": "Village",
        }],
    }


INSURER_REF = "Organization/openIMIS-Implementation"  # the server's insurer Organization (config default)
# Placeholders of the eligibility template, in the order they appear in the body (bench/eligibility.lua).
ELIGIBILITY_SLOTS = ("@@UUID@@", "@@PATIENT@@", "@@ITEM@@", "@@SERVICE@@")


def eligibility_body(request_uuid: str, patient_id: str, item: str, service: str, created: date) -> dict[str, Any]:
    """The enquiry bench/eligibility.lua sends (the shape of tests/builders_eligibility.py enquiry())."""
    cs = f"{IG}/CodeSystem/"

    def line(kind: str, code: str) -> dict[str, Any]:
        return {"category": {"coding": [{"system": f"{cs}coverage-item-category", "code": kind,
                                         "display": kind.capitalize()}]},
                "productOrService": {"text": code}}

    return {
        "resourceType": "CoverageEligibilityRequest",
        "meta": {"profile": [f"{IG}/StructureDefinition/openimis-coverage-eligibility-request"]},
        "identifier": [{"type": {"coding": [{"system": f"{cs}openimis-identifiers", "code": "UUID"}]},
                        "value": request_uuid}],
        "status": "active",
        "purpose": ["benefits"],
        "patient": {"reference": f"Patient/{patient_id}"},
        "created": created.isoformat(),
        "insurer": {"reference": INSURER_REF},
        "item": [line("item", item), line("service", service)],
    }


def eligibility_template(created: date) -> str:
    """eligibility_body() as a string.format pattern: %s for each of ELIGIBILITY_SLOTS, in that order."""
    text = json.dumps(eligibility_body(*ELIGIBILITY_SLOTS, created), separators=(",", ":")).replace("%", "%%")
    positions = [text.index(slot) for slot in ELIGIBILITY_SLOTS]
    if positions != sorted(positions):
        raise BenchError("the eligibility template's placeholders are out of order")
    for slot in ELIGIBILITY_SLOTS:
        text = text.replace(slot, "%s")
    return text


def split_bodies(bodies: list[str], wanted: dict[int, int], threads: int) -> dict[int, list[str]]:
    """The prepared bodies (Contracts, Claims) per phase (0 warm-up, 1 measurement): as many as wanted, or shares
    of what there is in proportion; at least one per wrk thread (a repeated body fails with 409: non-2xx)."""
    total = wanted[0] + wanted[1]
    first = wanted[0] if len(bodies) >= total else round(len(bodies) * wanted[0] / max(total, 1))
    phases = {0: bodies[:first], 1: bodies[first:first + wanted[1]]}
    for phase, chunk in phases.items():
        while chunk and len(chunk) < threads:
            chunk.append(chunk[-1])
        if not chunk:
            phases[phase] = (bodies or [""])[-1:] * threads
    return phases


def request_paths(scenario: Scenario, samples: Samples) -> list[str]:
    if scenario.key == "ceiling":
        return ["/healthz"]
    if scenario.key == "read":
        return [f"/fhir/Patient/{quote(i, safe='')}" for i in samples.ids]
    if scenario.key == "identifier":
        return [f"/fhir/Patient?identifier={quote(c, safe='')}" for c in samples.chfids]
    if scenario.key == "family":
        return [f"/fhir/Patient?family={quote(f, safe='')}&_count=20" for f in samples.families]
    if scenario.key == "expand":
        url = quote(DIAGNOSIS_VS, safe="")
        return [f"/fhir/ValueSet/$expand?url={url}&filter={quote(w, safe='')}&count=20" for w in diagnosis_words()]
    raise ValueError(scenario.key)


def diagnosis_words(limit: int = 300) -> list[str]:
    """Words of the diagnosis names (what a clinician types into a picker), the most frequent first."""
    concepts = json.loads(DIAGNOSIS_CS_FILE.read_text())["concept"]
    counts: dict[str, int] = {}
    for concept in concepts:
        for word in re.findall(r"[A-Za-z]{4,}", concept.get("display", "")):
            counts[word.lower()] = counts.get(word.lower(), 0) + 1
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:limit]


@dataclass(slots=True)
class SyncResult:
    resources: int
    pages: int
    seconds: list[float]  # one full sync per round

    @property
    def best_rate(self) -> float:
        return self.resources / min(self.seconds) if self.seconds else 0.0

    @property
    def median_rate(self) -> float:
        ordered = sorted(self.seconds)
        return self.resources / ordered[len(ordered) // 2] if ordered else 0.0

    @property
    def passed(self) -> bool:
        return self.resources >= 20_000 and self.median_rate >= SYNC_TARGET


def measure_sync(base: str, token: str, rounds: int = SYNC_ROUNDS) -> SyncResult:
    """A point-of-service client's full catalogue load: every Medication and ActivityDefinition, _count=1000, one
    page after the other along the `next` links over one keep-alive connection, each page parsed (orjson) into
    objects as a client storing them would. The client pauses Python's cyclic GC while it loads — a 2.6 MB page
    makes millions of small objects, and collecting them mid-sync costs the client more than the server's work."""
    import http.client
    from urllib.parse import urlsplit

    import orjson

    origin = urlsplit(base)
    seconds: list[float] = []
    resources = pages = 0
    for _ in range(rounds):
        resources = pages = 0
        conn = http.client.HTTPConnection(origin.hostname, origin.port, timeout=60)
        gc.disable()
        try:
            started = time.perf_counter()
            for resource_type in CATALOGUE_TYPES:
                path: str | None = f"/fhir/{resource_type}?_count=1000"
                while path:
                    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
                    answer = conn.getresponse()
                    payload = answer.read()
                    if answer.status != 200:
                        raise BenchError(f"sync: GET {path} answered {answer.status}: {payload[:300]!r}")
                    bundle = orjson.loads(payload)
                    resources += len(bundle.get("entry") or [])
                    pages += 1
                    url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
                    path = None if url is None else url[len(base):]
            seconds.append(time.perf_counter() - started)
        finally:
            gc.enable()
            conn.close()
    return SyncResult(resources, pages, seconds)


@dataclass(slots=True)
class Scripts:
    token_file: Path
    get_files: dict[str, Path]
    post_file: Path
    chfid_files: dict[int, Path]  # phase (0 warm-up, 1 measurement) -> fresh CHFIDs, one a line
    eligibility_template: Path
    eligibility_samples: Path
    body_files: dict[str, dict[int, Path]]  # scenario (contract, claim) -> phase -> bodies, one a line


def write_scripts(work_dir: Path, token: str, samples: Samples, chfids_per_phase: dict[int, int],
                  bodies_per_phase: dict[str, dict[int, list[str]]]) -> Scripts:
    work_dir.mkdir(parents=True, exist_ok=True)
    token_file = work_dir / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    get_files: dict[str, Path] = {}
    for scenario in SCENARIOS:
        if scenario.method == "GET":
            path = work_dir / f"{scenario.key}.paths"
            path.write_text("\n".join(request_paths(scenario, samples)) + "\n")
            get_files[scenario.key] = path
    post_file = work_dir / "create.data"
    lines = [f"F\t{json.dumps(f)}" for f in samples.families]
    lines += [f"G\t{json.dumps(g)}" for g in samples.givens]
    lines += [f"V\t{v}" for v in samples.villages]
    post_file.write_text("\n".join(lines) + "\n")
    rng = random.Random()
    chfid_files: dict[int, Path] = {}
    for phase, count in chfids_per_phase.items():
        path = work_dir / f"create.chfids.{phase}"
        path.write_text("\n".join(samples.fresh_chfids(count, rng)) + "\n")
        chfid_files[phase] = path
    template = work_dir / "eligibility.template"
    template.write_text(eligibility_template(date.today()) + "\n")
    insured = work_dir / "eligibility.samples"
    # JSON-escaped, without the quotes: the template has them.
    insured.write_text("".join("\t".join(json.dumps(v)[1:-1] for v in sample) + "\n" for sample in samples.insured))
    body_files: dict[str, dict[int, Path]] = {}
    for key, phases in bodies_per_phase.items():
        for phase, bodies in phases.items():
            path = work_dir / f"{key}.bodies.{phase}"
            path.write_text("\n".join(bodies) + "\n")
            body_files.setdefault(key, {})[phase] = path
    return Scripts(token_file, get_files, post_file, chfid_files, template, insured, body_files)


def verify(base: str, token: str, samples: Samples) -> None:
    """One request per scenario with urllib: a broken endpoint fails loudly instead of benchmarking errors."""
    checks: list[tuple[str, str, bytes | None, int]] = [
        ("GET", "/healthz", None, 200),
        ("GET", f"/fhir/Patient/{quote(samples.ids[0], safe='')}", None, 200),
        ("GET", f"/fhir/Patient?identifier={quote(samples.chfids[0], safe='')}", None, 200),
        ("GET", f"/fhir/Patient?family={quote(samples.families[0], safe='')}&_count=20", None, 200),
        ("GET", request_paths(next(s for s in SCENARIOS if s.key == "expand"), samples)[0], None, 200),
    ]
    chfid = samples.fresh_chfids(1, random.Random())[0]
    body = patient_body(chfid, samples.families[0], samples.givens[0], samples.villages[0])
    checks.append(("POST", "/fhir/Patient", json.dumps(body).encode(), 201))
    enquiry = eligibility_body(str(uuid.uuid4()), *samples.insured[0], date.today())
    checks.append(("POST", "/fhir/CoverageEligibilityRequest", json.dumps(enquiry).encode(), 200))
    checks.append(("POST", "/fhir/Contract", samples.contracts[0].encode(), 201))
    if samples.claims:
        checks.append(("POST", "/fhir/Claim", samples.claims[0].encode(), 200))
    for method, path, payload, expected in checks:
        status, answer = http(base + path, method=method, body=payload, token=token)
        if status != expected:
            raise BenchError(f"{method} {path} answered {status}, expected {expected}: {answer[:500]!r}")
        if "identifier=" in path or "family=" in path:
            entries = json.loads(answer).get("entry") or []
            if not entries:
                raise BenchError(f"{method} {path} found nothing")
            if "identifier=" in path and len(entries) != 1:
                raise BenchError(f"{method} {path} found {len(entries)} patients, expected 1")
        if path.endswith("/CoverageEligibilityRequest"):
            # The sample is insured and asks for codes of its product: one insurance, both lines covered.
            insurance = json.loads(answer).get("insurance") or []
            lines = [i for ins in insurance for i in ins.get("item", [])
                     if i["category"]["coding"][0]["code"] in ("item", "service")]
            if not insurance or len(lines) != 2 or any(i.get("excluded") for i in lines):
                raise BenchError(f"an insured insuree's enquiry did not find both lines covered: {answer[:800]!r}")
        if path.endswith("/Contract"):
            status = [e.get("valueCode") for e in json.loads(answer).get("extension", [])
                      if e.get("url", "").endswith("/policy-status")]
            if status != ["active"]:
                raise BenchError(f"the Contract's contribution did not activate the policy: {answer[:800]!r}")
    log("verified: every scenario answers 200/201")


def verify_payments(base: str, token: str, payments: PaymentBodies) -> None:
    """The first PaymentNotice of each payment scenario answers 201, and the first full payment balances its invoice
    and activates its policy (the first installment leaves the invoice issued)."""
    for key, bodies in payments.bodies.items():
        if not bodies:
            raise BenchError(f"{key}: nothing to pay (no idle policy or facility in the database)")
        status, answer = http(base + "/fhir/PaymentNotice", method="POST", body=bodies[0].encode(), token=token)
        if status != 201:
            raise BenchError(f"{key}: POST /fhir/PaymentNotice answered {status}, expected 201: {answer[:500]!r}")
        request = json.loads(answer)["request"]["reference"]
        status, answer = http(f"{base}/fhir/{request}", token=token)
        expected = "issued" if key == "installment" else "balanced"
        if status != 200 or json.loads(answer).get("status") != expected:
            raise BenchError(f"{key}: {request} is not {expected} after the payment: {status} {answer[:500]!r}")
    if payments.first_contract is not None:
        status, answer = http(f"{base}/fhir/Contract/{payments.first_contract}", token=token)
        states = [e.get("valueCode") for e in json.loads(answer).get("extension", [])
                  if e.get("url", "").endswith("/policy-status")]
        if status != 200 or states != ["active"]:
            raise BenchError(f"payment: the contribution paid in full did not activate the policy: {answer[:800]!r}")
    log(f"verified: {', '.join(payments.bodies)} answer 201")


# --------------------------------------------------------------------------------------------------
# wrk


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unknown wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if not (rps and total and p50 and p99):
        raise BenchError(f"cannot parse wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        requests=int(total.group(1)),
        rps=float(rps.group(1)),
        p50_ms=_duration_ms(p50.group(1)),
        p99_ms=_duration_ms(p99.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        raw=output,
    )


def wrk_argv(scenario: Scenario, scripts: Scripts, base: str, *, duration: float, connections: int,
             threads: int, phase: int) -> list[str]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk is not installed; run `make bench-deps` (scripts/install-test-deps.sh --bench)")
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
            "--timeout", "10s", "-s", str(BENCH_DIR / scenario.script), base, "--", str(scripts.token_file)]
    if scenario.script == "get.lua":
        argv += [str(scripts.get_files[scenario.key])]
    elif scenario.script == "post.lua":
        argv += [str(scripts.post_file), str(scripts.chfid_files[phase]), str(threads)]
    elif scenario.script == "eligibility.lua":
        argv += [str(scripts.eligibility_template), str(scripts.eligibility_samples)]
    elif scenario.script == "bodies.lua":
        argv += [BODIES_PATHS[scenario.key], str(scripts.body_files[scenario.key][phase]), str(threads)]
    else:
        raise ValueError(scenario.script)
    return argv


BODIES_PATHS = {"contract": "/fhir/Contract", "claim": "/fhir/Claim", "payment": "/fhir/PaymentNotice",
                "installment": "/fhir/PaymentNotice", "bill-payment": "/fhir/PaymentNotice"}


def run_wrk(argv: list[str], nice: int = 0) -> str:
    if nice:
        # nice(1) adjusts relative to this process's level; preexec_fn is unsafe with the sampler thread.
        argv = ["nice", "-n", str(nice - os.getpriority(os.PRIO_PROCESS, 0)), *argv]
    proc = subprocess.run(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def measure(backend: str, scenario: Scenario, scripts: Scripts, server: Server, args: argparse.Namespace,
            db_root: int | None) -> Measurement:
    common = {"connections": args.connections, "threads": args.threads}
    wait_server_idle(server.pid)
    if args.quiet_wait > 0:
        wait_for_quiet(args.quiet_wait)
    if args.warmup > 0:
        run_wrk(wrk_argv(scenario, scripts, server.base, duration=args.warmup, phase=0, **common), args.nice)
    argv = wrk_argv(scenario, scripts, server.base, duration=args.duration, phase=1, **common)
    if args.nice:
        # After the warm-up: it opened the pooled connections, i.e. the PostgreSQL backends to renice.
        renice(server.pid, args.nice)
        if db_root:
            renice(db_root, args.nice)
    statements = args.pg_statements and db_root is not None
    if statements:
        reset_statement_costs(server.database_url)
    hz = os.sysconf("SC_CLK_TCK")
    before = tree_cpu_ticks(server.pid)
    db_before = tree_cpu_ticks(db_root) if db_root else {}
    busy_before = system_busy_ticks()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    prof_out = profile_path(backend, scenario)
    profiler = start_profiler(server.pid, args.duration, prof_out) if args.profile else None
    with MemorySampler(server.pid) as sampler:
        output = run_wrk(argv, args.nice)
    elapsed = time.monotonic() - started
    profile = finish_profiler(profiler, prof_out) if profiler else None
    busy = (system_busy_ticks() - busy_before) / hz / elapsed
    after = tree_cpu_ticks(server.pid)
    db_after = tree_cpu_ticks(db_root) if db_root else {}
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    server_cpu = _cpu_delta(before, after) / hz / elapsed
    db_cpu = _cpu_delta(db_before, db_after) / hz / elapsed if db_root else None
    # wrk is the only child that ended during the measurement, so RUSAGE_CHILDREN grew by its time alone.
    wrk_cpu = _rusage_s(children_before, children_after) / elapsed
    own_cpu = _rusage_s(self_before, self_after) / elapsed
    wrk = parse_wrk(output)
    return Measurement(
        backend=backend,
        scenario=scenario,
        wrk=wrk,
        peak_rss_mb=sampler.peak_kb / 1024,
        rss_breakdown=describe_tree_rss(server.pid, sampler.peak_breakdown),
        server_cpu=server_cpu,
        db_cpu=db_cpu,
        wrk_cpu=wrk_cpu,
        other_cpu=max(0.0, busy - server_cpu - (db_cpu or 0.0) - wrk_cpu - own_cpu),
        profile=profile,
        statements=statement_costs(server.database_url, wrk.requests) if statements else None,
    )


# --------------------------------------------------------------------------------------------------
# PostgreSQL statement costs (--pg-statements): pg_stat_statements over the measurement


@dataclass(slots=True)
class StatementCosts:
    """Per request of the measurement: statements run, and the server's time executing and planning them."""

    calls: float
    exec_ms: float
    plan_ms: float
    top: list[tuple[float, float, float, str]]  # (calls, exec µs, plan µs) per request, and the statement's text


def reset_statement_costs(database_url: str) -> None:
    admin_sql(database_url, "SELECT pg_stat_statements_reset()")


def statement_costs(database_url: str, requests: int) -> StatementCosts:
    """What the statements of this database cost since `reset_statement_costs`, per request (background work
    included: the audit writer, the outbox poll, autovacuum's statements are not counted)."""
    rows = admin_sql(database_url, """
        SELECT calls, total_exec_time, total_plan_time, regexp_replace(query, '\\s+', ' ', 'g')
        FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND query NOT LIKE '%pg_stat_statements%'
        ORDER BY total_exec_time + total_plan_time DESC""")
    n = max(requests, 1)
    return StatementCosts(
        calls=sum(r[0] for r in rows) / n,
        exec_ms=sum(r[1] for r in rows) / n,
        plan_ms=sum(r[2] for r in rows) / n,
        top=[(r[0] / n, 1000 * r[1] / n, 1000 * r[2] / n, r[3]) for r in rows[:STATEMENTS_SHOWN]],
    )


def _rusage_s(before: resource.struct_rusage, after: resource.struct_rusage) -> float:
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _cpu_delta(before: dict[int, int], after: dict[int, int]) -> int:
    # Processes that ended during the run (e.g. PostgreSQL backends of closed connections) are lost; new ones
    # count from zero.
    return sum(ticks - before.get(pid, 0) for pid, ticks in after.items())


# --------------------------------------------------------------------------------------------------
# Profiling (--profile): py-spy on the server's workers during the measurement


@dataclass(slots=True)
class Profile:
    samples: int
    self_top: list[tuple[str, float]]  # (frame, share of samples with it on top of the stack)
    total_top: list[tuple[str, float]]  # (hifhir frame, share of samples with it anywhere on the stack)


def profile_path(backend: str, scenario: Scenario) -> Path:
    return VAR_DIR / "profiles" / f"{backend}-{scenario.key}.txt"


def py_spy() -> str:
    found = shutil.which("py-spy") or (str(BIN_DIR / "py-spy") if (BIN_DIR / "py-spy").exists() else None)
    if found is None:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def start_profiler(server_pid: int, duration: float, out: Path) -> subprocess.Popen[bytes]:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    # --nonblocking samples without pausing the workers (a little less exact, much less overhead).
    argv = [py_spy(), "record", "--subprocesses", "--nonblocking", "--format", "raw", "--rate", "200",
            "-d", str(max(1, round(duration))), "-p", str(server_pid), "-o", str(out)]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish_profiler(proc: subprocess.Popen[bytes], out: Path) -> Profile | None:
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if not out.exists():
        log(f"py-spy wrote no profile: {err.decode(errors='replace').strip()[-500:]}")
        return None
    return summarize_profile(out.read_text())


_FRAME_LINE = re.compile(r":\d+\)$")
# With --subprocesses every stack starts with the processes (supervisor, worker), whose quoted command
# lines may contain ";".
_PROCESS_FRAME = re.compile(r'^(?:process \d+:"(?:[^"\\]|\\.)*";?)+')


def summarize_profile(collapsed: str, top: int = 12) -> Profile:
    """Self and inclusive shares per frame ("function (file)") from py-spy's collapsed-stack output."""
    self_counts: dict[str, int] = {}
    total_counts: dict[str, int] = {}
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_FRAME_LINE.sub(")", f) for f in _PROCESS_FRAME.sub("", stack).split(";") if f]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            total_counts[frame] = total_counts.get(frame, 0) + count
    if not samples:
        return Profile(0, [], [])

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        return sorted(((frame, n / samples) for frame, n in counts.items()), key=lambda item: -item[1])[:top]

    # Inclusive shares only for the project's own functions: the frames of the event loop, uvicorn and
    # multiprocessing are on nearly every stack and say nothing.
    own = {frame: n for frame, n in total_counts.items() if "(hifhir/" in frame}
    return Profile(samples, ranked(self_counts), ranked(own))


# --------------------------------------------------------------------------------------------------
# Orchestration


def statement_sections(runs: list[BackendRun]) -> list[str]:
    """--pg-statements: per scenario, what PostgreSQL spent on statements per request, and the costliest ones."""
    lines: list[str] = []
    for run in runs:
        for m in run.measurements:
            if m.statements is None or m.scenario is CEILING:
                continue
            st = m.statements
            lines += ["", f"Statements {run.backend} / {m.scenario.label} (pg_stat_statements, per request): "
                      f"{st.calls:.1f} statements, {st.exec_ms:.3f} ms executing, {st.plan_ms:.3f} ms planning",
                      "", "| calls | exec µs | plan µs | statement |", "|--:|--:|--:|---|"]
            for calls, exec_us, plan_us, query in st.top:
                shown = query if len(query) <= 120 else query[:117] + "…"
                lines.append(f"| {calls:.2f} | {exec_us:.0f} | {plan_us:.0f} | `{shown.replace('|', '¦')}` |")
    return lines


def run_backend(backend: str, args: argparse.Namespace) -> BackendRun:
    run = BackendRun(backend, args.insurees)
    with contextlib.ExitStack() as stack:
        db_root: int | None = None
        if backend == "sqlite":
            # Registered first, so it runs last: after the server has stopped.
            stack.callback(cleanup_sqlite, args.insurees, args.keep_db)
            database_url = prepare_sqlite(args.insurees, args.keep_db, args.demo_retry, args.catalogue)
            run.notes.append(f"SQLite {sqlite3.sqlite_version} (WAL), database copied from "
                             f"var/bench/sqlite-{args.insurees}.db")
        else:
            from tests import pg_cluster

            admin_url, data_dir = stack.enter_context(bench_pg_cluster(statements=args.pg_statements))
            database_url = pg_cluster.create_database(admin_url, PG_DATABASE)
            if args.pg_statements:
                admin_sql(database_url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            load_demo_data(database_url, args.insurees, args.demo_retry, args.catalogue)
            db_root = postmaster_pid(data_dir)
            run.notes.append(f"PostgreSQL {pg_server_version(admin_url)} (tests.pg_cluster settings: fsync, "
                             "synchronous_commit and full_page_writes off; "
                             + ", ".join(f"{k} {v}" for k, v in BENCH_PG_SETTINGS.items()) + ")")
        if args.analyze:
            analyze(database_url)
            run.notes.append("ANALYZE run on the database before the server started (--analyze: NOT what "
                             "`make run` does)")
        # The invoices and bills to pay, before the server starts (one body more per scenario for verify_payments).
        payment_phase = {key: {0: int(args.warmup * rps) + 1, 1: int(args.duration * rps)}
                         for key, rps in PAYMENT_CAPACITY_RPS.items()}
        payments = PaymentBodies({}, [])
        wanted_payments = {key: 1 + payment_phase[key][0] + payment_phase[key][1] for key in PAYMENT_SCENARIOS
                           if key in args.scenarios}
        if wanted_payments:
            # The policies a paid-in-full phase activates at PAYMENT_CAPACITY_RPS: more than the demo's idle ones
            # and its unenrolled families together (≈ 500 req/s over 2 + 8 s at 100,000 insurees).
            if "payment" in wanted_payments and (note := add_unenrolled_families(
                    database_url, wanted_payments["payment"] + UNENROLLED_KEPT, "payment")):
                run.notes.append(note)
            payments = prepare_payments(database_url, wanted_payments)
            run.notes.extend(payments.notes)
        # Enough families without a policy for POST Contract at CONTRACT_CAPACITY_RPS in each phase (and verify()).
        if "contract" in args.scenarios and (note := add_unenrolled_families(
                database_url, 2 + int(args.warmup * CONTRACT_CAPACITY_RPS) + int(args.duration * CONTRACT_CAPACITY_RPS)
                + UNENROLLED_KEPT)):
            run.notes.append(note)
        server = Server(database_url, VAR_DIR / f"server-{backend}.log", args.workers)
        stack.callback(server.stop)
        version = code_version()  # the tree may change under a long run: record what this server loaded
        server.start()
        run.notes.append(f"code: {version}")
        log(f"{backend}: server pid {server.pid} on {server.base}")
        if args.nice:
            renice(server.pid, args.nice)
            if db_root:
                renice(db_root, args.nice)  # backends forked later inherit the postmaster's priority
            run.notes.append(f"server{', PostgreSQL' if db_root else ''} and wrk run at nice {args.nice}")
        token = login(server.base)
        # Enough families for POST Contract at CONTRACT_CAPACITY_RPS in each phase (and one for verify()).
        wanted = {0: int(args.warmup * CONTRACT_CAPACITY_RPS) + 1, 1: int(args.duration * CONTRACT_CAPACITY_RPS)}
        if "contract" not in args.scenarios:
            wanted = {0: 0, 1: 0}
        wanted_claims = {0: int(args.warmup * CLAIM_CAPACITY_RPS) + 1, 1: int(args.duration * CLAIM_CAPACITY_RPS)}
        if "claim" not in args.scenarios:
            wanted_claims = {0: 0, 1: 0}
        samples = pick_samples(database_url, args.sample, 1 + wanted[0] + wanted[1],
                               wanted_claims[0] + wanted_claims[1] + 1 if "claim" in args.scenarios else 0)
        run.notes.append(
            f"{samples.insurees:,} insurees in the database; {len(samples.ids)} sampled ids/CHFIDs, "
            f"{len(samples.families)} family names, {len(samples.villages)} villages, "
            f"{len(samples.insured)} insured insurees (eligibility)"
        )
        contracts = split_bodies(samples.contracts[1:], wanted, args.threads)
        claims = split_bodies(samples.claims[1:], wanted_claims, args.threads)
        if "contract" in args.scenarios:
            measured = len(set(contracts[1]))
            run.notes.append(
                f"contract: {samples.unenrolled:,} families without a policy; {len(set(contracts[0])):,} enrolled "
                f"in the warm-up, {measured:,} available to the measurement (one Contract each: at most "
                f"{measured / args.duration:,.0f} req/s can be measured before they run out)")
        # Enough fresh CHFIDs for POST at POST_CAPACITY_RPS in each phase; past that wrk reuses them (409).
        capacity = {0: int(args.warmup * POST_CAPACITY_RPS) + 1, 1: int(args.duration * POST_CAPACITY_RPS)}
        paid = {key: split_bodies(bodies[1:], payment_phase[key], args.threads)
                for key, bodies in payments.bodies.items()}
        for key, phases in paid.items():
            measured = len(set(phases[1]))
            run.notes.append(f"{key}: {len(set(phases[0])):,} PaymentNotices for the warm-up, {measured:,} for the "
                             f"measurement (at most {measured / args.duration:,.0f} req/s can be measured before "
                             "they run out)")
        scripts = write_scripts(VAR_DIR / f"wrk-{backend}", token, samples, capacity,
                                {"contract": contracts, "claim": claims, **paid})
        verify(server.base, token, samples)
        if payments.bodies:
            verify_payments(server.base, token, payments)
        selected = [s for s in SCENARIOS if s.key in args.scenarios or s is CEILING]
        for scenario in selected:
            log(f"{backend}: {scenario.label} for {args.duration:g}s ({args.connections} connections)")
            m = measure(backend, scenario, scripts, server, args, db_root)
            run.measurements.append(m)
            log(f"{backend}: {scenario.label}: {m.wrk.rps:,.0f} req/s, p50 {m.wrk.p50_ms:.2f} ms, "
                f"p99 {m.wrk.p99_ms:.2f} ms, non-2xx {m.wrk.non_2xx}, peak RSS {m.peak_rss_mb:.0f} MB")
            if scenario.key == "contract" and m.wrk.requests > len(set(contracts[1])):
                note = (f"contract: the families ran out ({m.wrk.requests:,} requests for "
                        f"{len(set(contracts[1])):,} families): the requests beyond them re-sent a Contract and "
                        "were refused (409); load more insurees or shorten --duration")
                log(note)
                run.notes.append(note)
            if scenario.key in paid and m.wrk.requests > len(set(paid[scenario.key][1])):
                note = (f"{scenario.key}: the prepared payments ran out ({m.wrk.requests:,} requests for "
                        f"{len(set(paid[scenario.key][1])):,}): the requests beyond them re-sent a PaymentNotice and "
                        "were refused (non-2xx); load more insurees or shorten --duration")
                log(note)
                run.notes.append(note)
        if "sync" in args.scenarios:
            log(f"{backend}: catalogue sync ({SYNC_ROUNDS} rounds)")
            run.sync = measure_sync(server.base, token)
            log(f"{backend}: catalogue sync: {run.sync.resources:,} resources in {run.sync.pages} pages, "
                f"median {run.sync.median_rate:,.0f} resources/s, best {run.sync.best_rate:,.0f}")
        ceiling = next(m for m in run.measurements if m.scenario is CEILING)
        for m in run.measurements:
            m.ratio = m.wrk.rps / ceiling.wrk.rps if ceiling.wrk.rps else None
    return run


def machine_description() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout
    wrk = wrk_version.split(" Copyright")[0]
    return (f"{os.cpu_count()} cores ({model}), {mem_gb:.0f} GB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()} ({os.path.realpath(sys.executable)}), {wrk.strip()}; "
            f"interpreter loop {interpreter_loop_ms():.0f} ms")


def interpreter_loop_ms(rounds: int = 7) -> float:
    """A fixed pure-Python workload (object creation, method calls, an f-string and a dict per step), best of
    `rounds`, in this interpreter — the server's (both come from .venv). It tells machines and interpreter builds
    apart where the ceiling cannot: the ceiling is mostly C (uvloop, httptools, wrk), the scenarios mostly Python.
    Seen on the Intel Xeon VM of 2026-11-26: 67-94 ms with Debian's CPython 3.11.2, 93-137 ms with pyenv's 3.11.7
    (built without PGO/LTO)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        steps = [_calibration_step(i) for i in range(100_000)]
        sum(step["k"] for step in steps)
        best = min(best, time.perf_counter() - started)
    return best * 1000


class _Pair:
    __slots__ = ("a", "b")

    def __init__(self, a: int, b: int) -> None:
        self.a, self.b = a, b

    def total(self) -> int:
        return self.a + self.b


def _calibration_step(i: int) -> dict[str, Any]:
    pair = _Pair(i, i & 7)
    return {"k": pair.total(), "s": f"{i}-{pair.b}"}


def code_version() -> str:
    """The commit measured, and whether src/ had uncommitted changes (read-only git commands)."""
    def git(*argv: str) -> str:
        proc = subprocess.run(["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = git("status", "--porcelain", "--", "src")
    return commit + (f" + uncommitted changes in {len(dirty.splitlines())} files under src/" if dirty else "")


def _fmt_ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def render(runs: list[BackendRun], args: argparse.Namespace, started: datetime) -> str:
    lines = [
        f"# hifhir benchmark {started:%Y-%m-%d %H:%M}",
        "",
        f"- machine: {machine_description()}",
        f"- load: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency "
        f"(after a {args.warmup:g}s warm-up), authenticated; {args.insurees:,} insurees",
        f"- server: `hifhir serve --migrate` (as `make run`), {args.workers or os.cpu_count()} workers"
        f"{'' if not args.workers else ' (--workers: NOT the make run default)'}, on the same machine as wrk",
    ]
    for run in runs:
        for note in run.notes:
            lines.append(f"- {run.backend}: {note}")
    lines += [
        "",
        "| backend | scenario | req/s | p50 ms | p99 ms | non-2xx | ratio to ceiling | target | pass |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for run in runs:
        for m in run.measurements:
            w = m.wrk
            non_2xx = str(w.non_2xx) + (f" (+{w.socket_errors} socket errors)" if w.socket_errors else "")
            if not w.requests:
                non_2xx += " (no request completed)"
            target = f"≥ {m.scenario.target:,.0f}" if m.scenario.target else "(ceiling)"
            ratio = f"{m.ratio:.2f}" if m.ratio is not None else "—"
            lines.append(
                f"| {run.backend} | {m.scenario.label} | {w.rps:,.0f} | {_fmt_ms(w.p50_ms)} "
                f"| {_fmt_ms(w.p99_ms)} | {non_2xx} | {ratio} | {target} | {'pass' if m.passed else 'FAIL'} |"
            )
    syncs = [run for run in runs if run.sync is not None]
    if syncs:
        lines += [
            "",
            f"Catalogue sync (one client paging every Medication and ActivityDefinition with _count=1000 along the "
            f"`next` links over one connection, parsing each page with orjson, GC paused; {SYNC_ROUNDS} rounds):",
            "",
            "| backend | resources | pages | median resources/s | best resources/s | target | pass |",
            "|---|--:|--:|--:|--:|--:|---|",
        ]
        for run in syncs:
            sync = run.sync
            assert sync is not None
            lines.append(f"| {run.backend} | {sync.resources:,} | {sync.pages} | {sync.median_rate:,.0f} "
                         f"| {sync.best_rate:,.0f} | ≥ {SYNC_TARGET:,.0f} | {'pass' if sync.passed else 'FAIL'} |")
    lines += [
        "",
        "Server memory (sum of VmRSS over the `hifhir serve` process tree, sampled every "
        f"{SAMPLE_INTERVAL_S:g} s; limit {MEMORY_LIMIT_MB:.0f} MB) and CPU (cores kept busy during the "
        "measurement: user + system time over wall time):",
        "",
        "| backend | scenario | peak RSS MB | per process MB | memory | server CPU | db CPU | wrk CPU "
        "| other CPU |",
        "|---|---|--:|---|---|--:|--:|--:|--:|",
    ]
    for run in runs:
        for m in run.measurements:
            per_process = m.rss_breakdown
            verdict = "pass" if m.peak_rss_mb <= MEMORY_LIMIT_MB else "FAIL"
            db_cpu = f"{m.db_cpu:.2f}" if m.db_cpu is not None else "—"
            lines.append(
                f"| {run.backend} | {m.scenario.label} | {m.peak_rss_mb:.1f} | {per_process} | {verdict} "
                f"| {m.server_cpu:.2f} | {db_cpu} | {m.wrk_cpu:.2f} | {m.other_cpu:.2f} |"
            )
    for run in runs:
        for m in run.measurements:
            if m.profile is None or not m.profile.samples:
                continue
            title = f"Profile {run.backend} / {m.scenario.label} (py-spy, {m.profile.samples} samples):"
            lines += ["", title, "", "| self | function (any) | | inclusive | function (hifhir) |",
                      "|--:|---|---|--:|---|"]
            for i in range(max(len(m.profile.self_top), len(m.profile.total_top))):
                left = m.profile.self_top[i] if i < len(m.profile.self_top) else None
                right = m.profile.total_top[i] if i < len(m.profile.total_top) else None
                lines.append(
                    (f"| {left[1]:.0%} | `{left[0]}` |" if left else "| | |")
                    + (f" | {right[1]:.0%} | `{right[0]}` |" if right else " | | |")
                )
    lines += statement_sections(runs)
    lines += [
        "",
        "other CPU: everything else on the machine (e.g. another test suite); well above 0 means the figures "
        "of that row are depressed by outside load.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--insurees", type=int, default=100_000, help="insurees to load (default 100000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each scenario")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--sample", type=int, default=SAMPLE_SIZE, help="ids/identifiers/names to pick from")
    parser.add_argument("--keep-db", action="store_true",
                        help="reuse var/bench/sqlite-N.db when it holds N insurees, and keep it afterwards")
    parser.add_argument("--catalogue", type=int, default=10_000,
                        help="extra medical items and as many services to load (default 10000 each)")
    # The payment scenarios enrol the families the contract scenario needs (prepare_payments): not by default.
    parser.add_argument("--scenarios",
                        default=",".join([*(s.key for s in SCENARIOS if s.key not in PAYMENT_SCENARIOS), "sync"]),
                        help="comma-separated subset of " + ", ".join(s.key for s in SCENARIOS)
                        + ", sync (the ceiling always runs; default: all but " + ", ".join(PAYMENT_SCENARIOS)
                        + ", which need a population of their own: run them in a separate invocation)")
    parser.add_argument("--quiet-wait", type=float, default=60.0, metavar="SECONDS",
                        help="before each scenario, wait up to this long for other processes to go idle "
                        "(default 60; 0 to skip)")
    parser.add_argument("--workers", type=int, default=0,
                        help="server workers (default: as `make run`, one per core); for experiments only")
    parser.add_argument("--analyze", action="store_true",
                        help="run ANALYZE on the populated database before starting the server (experiment)")
    parser.add_argument("--pg-statements", action="store_true",
                        help="PostgreSQL: load pg_stat_statements and report each scenario's statement costs per "
                             "request, planning included (adds a little overhead to the server)")
    parser.add_argument("--profile", action="store_true",
                        help="run py-spy on the workers during each measurement (costs some throughput); "
                        "summaries go into the results, stacks to var/bench/profiles/")
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="run the server, PostgreSQL and wrk at this nice level (e.g. -10, needs root) "
                        "so that other work on a shared machine disturbs the measurement less")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 2 when a target or the memory limit is missed")
    parser.add_argument("--demo-retry", type=float, default=0.0, metavar="SECONDS",
                        help="keep retrying a failing `hifhir demo-data` for this long (default: no retry)")
    args = parser.parse_args(argv)
    args.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    unknown = args.scenarios - {s.key for s in SCENARIOS} - {"sync"}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


@contextlib.contextmanager
def exclusive_run() -> Iterator[None]:
    """One benchmark at a time per checkout; a second run waits for the first.

    Runs share var/bench (databases, cluster, scripts) and would compete for the CPU anyway.
    """
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    with (VAR_DIR / ".lock").open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            log(f"another benchmark (pid {holder}) is running in this checkout; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.truncate(0)
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _terminate(signum: int, _frame: object) -> None:
    # SystemExit unwinds the ExitStacks, so the server and the PostgreSQL cluster are stopped.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    # A background job of a non-interactive shell inherits SIGINT ignored; take Ctrl-C / kill -INT anyway.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with exclusive_run():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    started = datetime.now()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    runs: list[BackendRun] = []
    # wrk runs in this process's session: its autogroup needs the priority too (restored afterwards).
    own_autogroup_nice = set_autogroup_nice("self", args.nice) if args.nice else None
    try:
        for backend in backends:
            runs.append(run_backend(backend, args))
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        if own_autogroup_nice is not None:
            set_autogroup_nice("self", own_autogroup_nice)
    report = render(runs, args, started)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{started:%Y%m%d-%H%M%S}.md"
    out.write_text(report)
    print(report)
    log(f"written to {out.relative_to(REPO_ROOT)}")
    if any(m.wrk.non_2xx or m.wrk.socket_errors for run in runs for m in run.measurements):
        log("error: some requests failed (non-2xx or socket errors); the figures are not meaningful")
        return 1
    missed: list[Any] = [m for run in runs for m in run.measurements if not m.passed]
    missed += [run.sync for run in runs if run.sync is not None and not run.sync.passed]
    over = [run for run in runs if run.peak_rss_mb > MEMORY_LIMIT_MB]
    return 2 if args.check and (missed or over) else 0


if __name__ == "__main__":
    sys.exit(main())
