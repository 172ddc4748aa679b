"""CPU, wall and SQLite writer-lock time per request, through the ASGI app in-process: no HTTP server, no wrk.

    .venv/bin/python -m bench.inprocess --database var/bench/sqlite-100000.db --scenario claim --requests 1500
    .venv/bin/python -m bench.inprocess --database var/bench/sqlite-100000.db --scenario claim --workers 2

`--database`: a SQLite file (`bench.run --keep-db` leaves `var/bench/sqlite-100000.db`), copied to
`var/bench/inprocess.db` for the run so that nothing written leaks back, or a PostgreSQL URL, used as it is. Each
worker is a process of its own that builds the app (`create_app`), logs in, samples its request bodies from the
database (its own random seed: two workers never send the same claim), sends 100 requests to warm up, then — once
every worker is ready — its `--requests` requests one after the other, each a direct ASGI call. With two workers
on SQLite they take turns at the writer lock as `hifhir serve`'s two workers do, without HTTP or wrk sharing the
cores: how much of a write the lock serialises is then the gap between the throughput and twice one worker's.

Scenarios: `claim` (POST Claim, 10 lines, `bench.run.claim_bodies`), `create` (POST Patient, new insurees as
`bench.run.patient_body` makes them), `eligibility` (POST CoverageEligibilityRequest, `bench.run.eligibility_body`),
`identifier` (GET Patient?identifier=), `payment` (POST PaymentNotice paying a contribution invoice in full, which
activates its policy: `bench.run.prepare_payments`, run once by the parent for all workers before they start).
Printed per worker: wall and CPU time per request (the whole process's, and that of the thread that runs the
requests) and, on SQLite, how long the writer lock was held per request — by the
requests, and by the worker's audit trail thread, which writes their audit events in batches (a GET's share) —;
on PostgreSQL, when the cluster runs on this machine, its CPU per request from the start of the measured requests to
the end of the last (every process of the cluster: the workers' backends, the WAL writer, …); then the requests per
second of all workers together.

`--instructions` runs each worker under valgrind's callgrind, counting only its measured requests, and prints the
instructions per request instead: on a machine whose speed changes from one minute to the next (bench/README.md,
"Machine"), two versions of the code compare within ~2 % this way, where their timings do not. It does not count the
kernel's work (system calls, page copies), which timings do.

    python -m bench.inprocess --database var/bench/sqlite-100000.db --scenario eligibility --requests 200 --instructions
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COPY = REPO / "var" / "bench" / "inprocess.db"
WARMUP = 100
PAYMENTS = REPO / "var" / "bench" / "inprocess-payments.json"  # the notices the parent prepared, one list per worker
SCENARIOS = ("claim", "create", "eligibility", "identifier", "payment")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: bytes
    body: bytes


def requests_for(database_url: str, scenario: str, count: int, seed: int) -> list[Request]:
    """`count` requests of the scenario, bodies sampled from the database."""
    from sqlalchemy import create_engine, select

    from bench import run as bench
    from hifhir.store.tables import insuree, is_current

    rng = random.Random(seed)
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            today = date.today()
            if scenario == "claim":
                return [Request("POST", "/fhir/Claim", b"", _worker_code(body, seed))
                        for body in bench.claim_bodies(conn, count, today, rng)]
            if scenario == "payment":
                bodies = json.loads(PAYMENTS.read_text())[str(seed)]
                return [Request("POST", "/fhir/PaymentNotice", b"", body.encode()) for body in bodies[:count]]
            if scenario == "eligibility":
                insured = bench.eligibility_samples(conn, 1000, today, rng)
                return [Request("POST", "/fhir/CoverageEligibilityRequest", b"", json.dumps(
                    bench.eligibility_body(str(uuid.uuid4()), *rng.choice(insured), today)).encode())
                    for _ in range(count)]
            numbers = conn.execute(select(insuree.c.chf_id).where(is_current(insuree))
                                   .order_by(insuree.c.pk).limit(5000)).scalars().all()
            if scenario == "create":
                return [Request("POST", "/fhir/Patient", b"", json.dumps(body).encode())
                        for body in _patient_bodies(conn, count, seed, rng)]
            return [Request("GET", "/fhir/Patient", f"identifier={rng.choice(numbers)}".encode(), b"")
                    for _ in range(count)]
    finally:
        engine.dispose()


def _patient_bodies(conn: Any, count: int, seed: int, rng: random.Random) -> list[dict[str, Any]]:
    """`count` new insurees as bench/post.lua sends them (`bench.run.patient_body`), in villages of the database,
    with insurance numbers no one has: 11 characters (the demo's have 9) that start with the worker's seed."""
    from sqlalchemy import select

    from bench import run as bench
    from hifhir.store.tables import location

    villages = conn.execute(select(location.c.id).where(location.c.type == "V", location.c.deleted.is_(False))
                            .limit(200)).scalars().all()
    bodies = []
    for _ in range(count):
        chfid = f"{seed % 10}{uuid.uuid4().int % 10**10:010d}"
        bodies.append(bench.patient_body(chfid, rng.choice(("Mwale", "Banda", "Phiri")), "Chisomo",
                                         rng.choice(villages)))
    return bodies


def _worker_code(body: str, seed: int) -> bytes:
    """The claim with a code of its worker's: `claim_bodies` numbers its claims after the second it ran, which two
    workers may share (and a claim code is unique per facility)."""
    claim = json.loads(body)
    for identifier in claim.get("identifier", []):
        if str(identifier.get("value", "")).startswith("B"):
            identifier["value"] = f"W{seed}-{identifier['value'][1:]}"
    return json.dumps(claim).encode()


class Client:
    """Direct ASGI calls to the app, as uvicorn would make them for one HTTP/1.1 request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.token: str | None = None

    async def call(self, request: Request) -> tuple[int, bytes]:
        headers = [(b"host", b"localhost"), (b"content-type", b"application/fhir+json"),
                   (b"content-length", str(len(request.body)).encode())]
        if self.token:
            headers.append((b"authorization", f"Bearer {self.token}".encode()))
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
                 "scheme": "http", "path": request.path, "raw_path": request.path.encode(), "root_path": "",
                 "query_string": request.query, "headers": headers, "client": ("127.0.0.1", 50000),
                 "server": ("127.0.0.1", 8000)}
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


def worker(database_url: str, scenario: str, count: int, seed: int) -> None:
    """One worker: prepares, says `ready` on stdout, waits for a line on stdin, measures, prints its figures."""
    import os

    os.environ["HIFHIR_DATABASE_URL"] = database_url
    from bench import run as bench
    from hifhir.api.app import create_app
    from hifhir.store import db

    held: list[float] = []
    enter, leave = db.WriterLock.__enter__, db.WriterLock.__exit__
    taken_at = [0.0]

    def entered(lock: db.WriterLock) -> db.WriterLock:
        taken = enter(lock)
        taken_at[0] = time.perf_counter()
        return taken

    def left(lock: db.WriterLock, *exc: Any) -> None:
        held.append(time.perf_counter() - taken_at[0])
        leave(lock, *exc)

    db.WriterLock.__enter__, db.WriterLock.__exit__ = entered, left  # type: ignore[method-assign]

    requests = requests_for(database_url, scenario, count + WARMUP, seed)
    if len(requests) < count + WARMUP:
        raise SystemExit(f"only {len(requests)} {scenario} requests could be made")
    app = create_app()
    db.hold(app.engine, app.reader)  # as the app's lifespan startup does under uvicorn (its jobs are not wanted here)
    client = Client(app)

    async def measure() -> dict[str, float]:
        status, body = await client.call(Request("POST", "/api/api_fhir_r4/login/", b"",
                                                 json.dumps(bench.ADMIN).encode()))
        client.token = json.loads(body)["token"]
        for request in requests[:WARMUP]:
            status, body = await client.call(request)
            if status >= 300:
                raise SystemExit(f"{request.method} {request.path}: {status} {body[:300]!r}")
        print("ready", flush=True)
        sys.stdin.readline()
        del held[:]
        wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
        for request in requests[WARMUP:]:
            status, body = await client.call(request)
            if status >= 300:
                raise SystemExit(f"{request.method} {request.path}: {status} {body[:300]!r}")
        wall, cpu, own = time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - own
        return {"requests": count, "wall_s": wall, "cpu_s": cpu, "thread_cpu_s": own, "lock_s": sum(held)}

    print(json.dumps(asyncio.run(measure())), flush=True)


CALLGRIND_OUT = REPO / "var" / "bench" / "callgrind"


def _callgrind_prefix() -> list[str]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--instructions needs valgrind: apt-get install valgrind")
    CALLGRIND_OUT.mkdir(parents=True, exist_ok=True)
    for stale in CALLGRIND_OUT.glob("out.*"):
        stale.unlink()
    return ["valgrind", "-q", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={CALLGRIND_OUT}/out.%p"]


def _callgrind_total(pid: int) -> int:
    """The instructions callgrind counted in the worker `pid` (its dump's `totals:` line; valgrind runs the
    worker in the process it was started as, so the pid is the worker's)."""
    total = 0
    for dump in CALLGRIND_OUT.glob(f"out.{pid}*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("totals:", "summary:")):
                total = max(total, int(line.split()[1]))
    if not total:
        raise SystemExit(f"callgrind wrote no totals for worker {pid} under {CALLGRIND_OUT}")
    return total


class ClusterCpu:
    """The CPU time of a local PostgreSQL cluster: its postmaster and every process it started, live or ended (the
    postmaster's children's times). Found from a backend's parent; None where the server is not on this machine."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster
        self.ticks = os.sysconf("SC_CLK_TCK")

    @classmethod
    def of(cls, url: str) -> ClusterCpu | None:
        from hifhir.store.db import make_engine

        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        except Exception:  # the figure is optional: the run goes on without it
            return None
        finally:
            engine.dispose()
        stat = Path(f"/proc/{backend}/stat")
        if not stat.exists():
            return None
        return cls(int(stat.read_text().rsplit(")", 1)[1].split()[1]))

    def seconds(self) -> float:
        fields = Path(f"/proc/{self.postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(f) for f in fields[11:15])  # its own user and system time, and its ended children's
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                child = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(child[1]) == self.postmaster:
                ticks += int(child[11]) + int(child[12])
        return ticks / self.ticks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", required=True, help="a SQLite file (copied first) or a PostgreSQL URL")
    parser.add_argument("--scenario", choices=SCENARIOS, default="claim")
    parser.add_argument("--requests", type=int, default=1500, help="measured requests per worker")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--instructions", action="store_true",
                        help="count the instructions of each worker's measured requests (valgrind's callgrind, "
                             "~50 times slower): a figure the machine's changes of speed do not move")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # the seed of one worker process
    args = parser.parse_args(argv)

    if args.database.startswith("postgresql"):
        url = args.database
    else:
        url = f"sqlite:///{COPY}"
        if args.worker is None:
            for stale in COPY.parent.glob(COPY.name + "*"):  # the copy's WAL, shared memory and lock file
                stale.unlink()
            shutil.copyfile(args.database, COPY)
    if args.worker is not None:
        worker(url, args.scenario, args.requests, args.worker)
        return 0

    seeds = [7 + n for n in range(args.workers)]
    if args.scenario == "payment":
        from bench import run as bench

        per_worker = args.requests + WARMUP
        prepared = bench.prepare_payments(url, {"payment": per_worker * args.workers}).bodies.get("payment", [])
        PAYMENTS.write_text(json.dumps({str(seed): prepared[n * per_worker:(n + 1) * per_worker]
                                        for n, seed in enumerate(seeds)}))
    callgrind = _callgrind_prefix() if args.instructions else []
    started = [subprocess.Popen(
        [*callgrind, sys.executable, "-m", "bench.inprocess", "--database", args.database, "--scenario",
         args.scenario, "--requests", str(args.requests), "--worker", str(seed)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for seed in seeds]
    for process in started:
        assert process.stdout is not None
        for line in process.stdout:  # whatever a worker prints before it is ready is not ours to read
            if line.strip() == "ready":
                break
        else:
            raise SystemExit(f"a worker failed to start (exit {process.wait()})")
    if callgrind:  # count from here: the measured requests only, not the start-up and the warm-up
        for process in started:
            switched = subprocess.run(["callgrind_control", "--instr=on", str(process.pid)], capture_output=True,
                                      text=True)
            if switched.returncode:
                raise SystemExit(f"callgrind_control failed: {switched.stdout}{switched.stderr}")
    cluster = ClusterCpu.of(url) if url.startswith("postgresql") and not callgrind else None
    cluster_before = cluster.seconds() if cluster else 0.0
    for process in started:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    results = []
    for process in started:
        out, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"a worker failed (exit {process.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    cluster_cpu = cluster.seconds() - cluster_before if cluster else None
    if callgrind:
        for n, (process, r) in enumerate(zip(started, results, strict=True), 1):
            millions = _callgrind_total(process.pid) / r["requests"] / 1e6
            print(f"worker {n}: {r['requests']} {args.scenario} requests, {millions:.3f} M instructions per request")
        return 0
    for n, r in enumerate(results, 1):
        per = 1000 / r["requests"]
        lock = f", writer lock held {r['lock_s'] * per:.3f} ms" if r["lock_s"] else ""
        print(f"worker {n}: {r['requests']} {args.scenario} requests, wall {r['wall_s'] * per:.3f} ms, "
              f"CPU {r['cpu_s'] * per:.3f} ms (the requests' thread {r['thread_cpu_s'] * per:.3f}){lock} per request")
    requests = sum(r["requests"] for r in results)
    if cluster_cpu is not None:  # every process of the cluster, from the go to the last worker's end
        print(f"PostgreSQL: {cluster_cpu * 1000 / requests:.3f} ms of the cluster's CPU per request")
    total = requests / max(r["wall_s"] for r in results)
    print(f"{args.workers} worker(s): {total:,.0f} requests/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
