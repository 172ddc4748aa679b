"""Benchmark notification delivery: ≥ 500 notifications/s to a local receiver, p50 commit → delivery ≤ 100 ms.

    python -m bench.notify [--backend sqlite|postgresql|both] [--notifications 5000] [--clients 16]
                           [--mode live|separate|backlog] [--insurees 100000] [--keep-db] [--payload empty|full]
                           [--nice N] [--profile]

For each backend: the bench database and server of bench/run.py (`hifhir demo-data --insurees N`, then
`hifhir serve --migrate` as `make run` starts it: default workers, each running its outbox worker), with
`HIFHIR_NOTIFY_ALLOW_HTTP=127.0.0.1` so that a subscription may reach a local receiver over plain http. Then:

1. a receiver on 127.0.0.1, in a process of its own: an asyncio HTTP/1.1 server that answers 200 at once and
   records, per POST, its arrival (CLOCK_MONOTONIC, system-wide on Linux, so comparable with this process's) and
   the X-Hifhir-Delivery, -Resource, -Timestamp and -Signature headers and the body;
2. one Subscription `Patient?gender=female` to it (R4 rest-hook; `channel.header` carries X-Hifhir-Secret, so every
   notification is signed with a key the receiver knows; empty payload as the IG, or the resource with
   `--payload full`);
3. a warm-up of WARMUP_WRITES writes (their notifications awaited, then forgotten), then N `POST /fhir/Patient`
   (female: each create is one notification) from C concurrent clients (threads, one kept-alive connection each),
   each recording when its answer arrived — the commit is before it;
4. wait until every notification has arrived (at most --timeout seconds after the last write), then match each
   one to its write by `X-Hifhir-Resource` = `Patient/{id}/_history/{version}` (the write's Location).

Modes: `live` (the default, what the issue measures) as above, deliveries by the served processes' own workers
while the writes go on; `separate`: the same with the served processes' workers off (HIFHIR_OUTBOX_IN_APP=0) and one
`hifhir worker` process delivering instead (`--worker-poll`: its HIFHIR_OUTBOX_POLL_S, as nothing wakes it); and
`backlog`: every write first with no worker running, then one `hifhir worker` delivers the backlog — the delivery
capacity, apart from the writes (notifications/s from the first notification to the last; no latency).

Reported per backend: notifications/s delivered from the first write answered to the last notification received
(the issue's "first commit → last delivery"), the write rate alone, the commit → delivery latency (arrival −
answer of the write; the answer follows the commit, so this is a slight underestimate, and a notification may
even arrive before its write's answer: negative), duplicates (delivery is at least once; none expected), missing
notifications, signatures that do not verify, server / database / client+receiver / other CPU, server memory.
Results go to bench/results/<timestamp>-notify.md and stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import multiprocessing
import os
import platform
import queue
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.client import HTTPConnection, HTTPException
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.run import (
    PG_DATABASE,
    REPO_ROOT,
    RESULTS_DIR,
    VAR_DIR,
    BenchError,
    MemorySampler,
    Profile,
    Server,
    _cpu_delta,
    _terminate,
    bench_pg_cluster,
    cleanup_sqlite,
    code_version,
    describe_tree_rss,
    exclusive_run,
    finish_profiler,
    hifhir_bin,
    http,
    load_demo_data,
    log,
    login,
    patient_body,
    pg_server_version,
    pick_samples,
    postmaster_pid,
    prepare_sqlite,
    renice,
    server_env,
    set_autogroup_nice,
    start_profiler,
    system_busy_ticks,
    tree_cpu_ticks,
    wait_for_quiet,
    wait_server_idle,
)

RATE_TARGET = 500.0  # notifications/s
P50_TARGET_MS = 100.0
WARMUP_WRITES = 300
SECRET = "bench-notify-secret-0123456789abcdef"
SUBSCRIPTION_PROFILE = "https://openimis.github.io/openimis_fhir_r4_ig/StructureDefinition/openimis-subscription"
CRITERIA = "Patient?gender=female"
HOOK_PATH = "/hooks/fhir"
MEMORY_LIMIT_MB = 300.0


def clock() -> float:
    """CLOCK_MONOTONIC: one clock for every process of the machine (Linux), unaffected by wall-clock changes."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# --------------------------------------------------------------------------------------------------
# The receiver: its own process, so that its work does not contend for this process's GIL with the clients


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float  # clock()
    delivery: str
    resource: str
    timestamp: str
    signature: str
    body: bytes


def _receiver_main(control: Connection) -> None:
    """Serve until told to stop; commands over `control`: "count" → number received, "reset" → forget them,
    "stop" → send the arrivals and end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops this process
    arrivals: list[Arrival] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                at = clock()
                headers: dict[bytes, bytes] = {}
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if value:
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get(b"content-length", b"0"))
                body = await reader.readexactly(length) if length else b""
                arrivals.append(Arrival(at, headers.get(b"x-hifhir-delivery", b"").decode(),
                                        headers.get(b"x-hifhir-resource", b"").decode(),
                                        headers.get(b"x-hifhir-timestamp", b"").decode(),
                                        headers.get(b"x-hifhir-signature", b"").decode(), body))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, asyncio.CancelledError):
            pass  # the sender closed its connection, or the receiver is stopping
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
        control.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def command() -> None:
            what = control.recv()
            if what == "count":
                control.send(len(arrivals))
            elif what == "reset":
                arrivals.clear()
                control.send(0)
            elif what == "stop" and not done.done():
                done.set_result(None)

        loop.add_reader(control.fileno(), command)
        await done
        server.close()
        control.send(arrivals)

    asyncio.run(main())


class Receiver:
    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")
        self._control, child = context.Pipe()
        self.process = context.Process(target=_receiver_main, args=(child,), name="bench-notify-receiver",
                                       daemon=True)
        self.process.start()
        child.close()
        if not self._control.poll(10):
            raise BenchError("the receiver did not start")
        self.port = int(self._control.recv())
        self.url = f"http://127.0.0.1:{self.port}{HOOK_PATH}"

    def ask(self, what: str) -> Any:
        self._control.send(what)
        return self._control.recv()

    def stop(self) -> list[Arrival]:
        self._control.send("stop")
        arrivals: list[Arrival] = self._control.recv()
        self.process.join(10)
        return arrivals

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def wait_for(receiver: Receiver, count: int, timeout_s: float) -> int:
    """Poll the receiver until it holds `count` notifications or `timeout_s` passed; returns what it holds."""
    deadline = clock() + timeout_s
    got = 0
    while clock() < deadline:
        got = int(receiver.ask("count"))
        if got >= count:
            return got
        time.sleep(0.02)
    return got


# --------------------------------------------------------------------------------------------------
# The writers


@dataclass(slots=True)
class Write:
    answered: float  # clock() when the answer was read
    resource: str  # Patient/{id}/_history/{version}, from the Location header ("" if it failed)
    status: int


@dataclass(slots=True)
class Writes:
    done: list[Write] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    errors: list[str] = field(default_factory=list)


def write_patients(port: int, token: str, bodies: list[bytes], clients: int) -> Writes:
    """POST every body once, from `clients` threads with a kept-alive connection each."""
    todo: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    for body in bodies:
        todo.put(body)
    out = Writes()
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json",
               "Accept": "application/fhir+json"}
    go = threading.Event()

    def client() -> None:
        conn = HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[Write] = []
        go.wait()
        try:
            while True:
                try:
                    body = todo.get_nowait()
                except queue.Empty:
                    break
                try:
                    conn.request("POST", "/fhir/Patient", body=body, headers=headers)
                    resp = conn.getresponse()
                    answer = resp.read()
                except (OSError, HTTPException) as exc:
                    conn.close()
                    with lock:
                        out.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                at = clock()
                location = resp.getheader("Location") or ""
                ref = location[location.rfind("/Patient/") + 1:] if "/Patient/" in location else ""
                mine.append(Write(at, ref if resp.status == 201 else "", resp.status))
                if resp.status != 201:
                    with lock:
                        out.errors.append(f"HTTP {resp.status}: {answer[:300]!r}")
        finally:
            conn.close()
            with lock:
                out.done.extend(mine)

    threads = [threading.Thread(target=client, name=f"bench-writer-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    out.started = clock()
    go.set()
    for t in threads:
        t.join()
    out.ended = clock()
    return out


def patient_bodies(database_url: str, count: int) -> list[bytes]:
    """`count` female Patients with fresh CHFIDs (bench/run.py's POST Patient body), ready to send."""
    samples = pick_samples(database_url, 200, 1)
    rng = random.Random()
    chfids = samples.fresh_chfids(count, rng)
    return [json.dumps(patient_body(c, rng.choice(samples.families), rng.choice(samples.givens),
                                    rng.choice(samples.villages)), separators=(",", ":")).encode() for c in chfids]


# --------------------------------------------------------------------------------------------------
# One measurement


@dataclass(slots=True)
class Result:
    backend: str
    mode: str  # live | backlog
    notifications: int  # writes measured (one notification expected each)
    clients: int
    payload: str
    writes_ok: int
    write_errors: list[str]
    write_s: float  # first write sent → last write answered
    received: int  # distinct notifications of the measured writes
    duplicates: int
    missing: int
    unexpected: int  # notifications for no measured write
    bad_signatures: int
    span_s: float  # first write answered (backlog: first notification) → last notification received
    latencies_ms: list[float]  # sorted
    server_cpu: float  # the served processes (backlog: the `hifhir worker` process)
    db_cpu: float | None
    own_cpu: float  # this process (clients) and the receiver
    other_cpu: float
    peak_rss_mb: float
    rss_breakdown: str
    notes: list[str] = field(default_factory=list)
    profile: Profile | None = None

    @property
    def rate(self) -> float:
        return self.received / self.span_s if self.span_s > 0 else 0.0

    @property
    def write_rate(self) -> float:
        return self.writes_ok / self.write_s if self.write_s > 0 else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return self.latencies_ms[min(len(self.latencies_ms) - 1, int(p / 100 * len(self.latencies_ms)))]

    @property
    def passed(self) -> bool:
        clean = not self.missing and not self.write_errors and not self.bad_signatures
        fast = self.mode == "backlog" or self.percentile(50) <= P50_TARGET_MS
        return clean and self.rate >= RATE_TARGET and fast


def verify_signature(a: Arrival) -> bool:
    """What a subscriber does (src/hifhir/notify/delivery.py): HMAC-SHA256 over timestamp, delivery id, resource,
    body."""
    message = f"{a.timestamp}.{a.delivery}.{a.resource}.".encode() + a.body
    expected = "sha256=" + hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, a.signature)


def subscribe(base: str, token: str, endpoint: str, payload: str) -> str:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint, "header": [f"X-Hifhir-Secret: {SECRET}"]}
    if payload == "full":
        channel["payload"] = "application/fhir+json"
    body = {"resourceType": "Subscription", "meta": {"profile": [SUBSCRIPTION_PROFILE]}, "status": "requested",
            "reason": "bench/notify.py: notification delivery", "criteria": CRITERIA, "channel": channel}
    status, answer = http(base + "/fhir/Subscription", method="POST", body=json.dumps(body).encode(), token=token)
    if status != 201:
        raise BenchError(f"POST /fhir/Subscription answered {status}: {answer[:500]!r}")
    created = json.loads(answer)
    if created.get("status") != "active":
        raise BenchError(f"the subscription is {created.get('status')}, not active: {answer[:500]!r}")
    return str(created["id"])


@contextlib.contextmanager
def delivery_worker(database_url: str, backend: str, args: argparse.Namespace) -> Iterator[subprocess.Popen[bytes]]:
    """`hifhir worker` in a session of its own (modes separate and backlog), stopped with SIGINT afterwards."""
    env = server_env(database_url) | {"HIFHIR_NOTIFY_ALLOW_HTTP": "127.0.0.1",
                                      "HIFHIR_OUTBOX_POLL_S": str(args.worker_poll)}
    log_path = VAR_DIR / f"worker-{backend}-notify.log"
    with log_path.open("wb") as out:
        worker = subprocess.Popen([str(hifhir_bin()), "worker"], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if args.nice:
            renice(worker.pid, args.nice)
        yield worker
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)


def measure(backend: str, server: Server, db_root: int | None, receiver: Receiver, token: str,
            bodies: list[bytes], args: argparse.Namespace, database_url: str) -> Result:
    """Modes live and separate: the notifications are delivered while the writes go on."""
    with contextlib.ExitStack() as stack:
        worker = stack.enter_context(delivery_worker(database_url, backend, args)) if args.mode == "separate" \
            else None
        return _measure(backend, server, db_root, receiver, token, bodies, args, worker)


def _measure(backend: str, server: Server, db_root: int | None, receiver: Receiver, token: str,
             bodies: list[bytes], args: argparse.Namespace, worker: subprocess.Popen[bytes] | None) -> Result:
    warmup, measured = bodies[:WARMUP_WRITES], bodies[WARMUP_WRITES:]
    log(f"{backend}: warm-up, {len(warmup)} writes")
    warm = write_patients(server.port, token, warmup, args.clients)
    if warm.errors:
        raise BenchError(f"{len(warm.errors)} warm-up writes failed, e.g. {warm.errors[0][:500]}")
    got = wait_for(receiver, len(warmup), args.timeout)
    if got < len(warmup):
        raise BenchError(f"only {got} of the {len(warmup)} warm-up notifications arrived within {args.timeout:g}s; "
                         f"see {server.log_path}")
    receiver.ask("reset")
    wait_server_idle(server.pid)
    if args.quiet_wait > 0:
        wait_for_quiet(args.quiet_wait)
    if args.nice:
        renice(server.pid, args.nice)
        if db_root:
            renice(db_root, args.nice)
    log(f"{backend}: {len(measured)} writes from {args.clients} clients")
    hz = os.sysconf("SC_CLK_TCK")
    before = tree_cpu_ticks(server.pid)
    worker_before = tree_cpu_ticks(worker.pid) if worker else {}
    db_before = tree_cpu_ticks(db_root) if db_root else {}
    receiver_before = tree_cpu_ticks(receiver.process.pid or 0)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    busy_before = system_busy_ticks()
    started = clock()
    prof_out = VAR_DIR / "profiles" / f"{backend}-notify.txt"
    profiler = start_profiler(server.pid, len(measured) / RATE_TARGET + 2, prof_out) if args.profile else None
    with MemorySampler(server.pid) as sampler:
        writes = write_patients(server.port, token, measured, args.clients)
        log(f"{backend}: writes done in {writes.ended - writes.started:.1f}s; waiting for the notifications")
        wait_for(receiver, len(measured), args.timeout)
    elapsed = clock() - started
    profile = finish_profiler(profiler, prof_out) if profiler else None
    server_ticks = _cpu_delta(before, tree_cpu_ticks(server.pid))
    if worker:
        server_ticks += _cpu_delta(worker_before, tree_cpu_ticks(worker.pid))
    server_cpu = server_ticks / hz / elapsed
    db_cpu = _cpu_delta(db_before, tree_cpu_ticks(db_root)) / hz / elapsed if db_root else None
    receiver_cpu = _cpu_delta(receiver_before, tree_cpu_ticks(receiver.process.pid or 0)) / hz / elapsed
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    own_cpu = receiver_cpu + ((self_after.ru_utime - self_before.ru_utime)
                              + (self_after.ru_stime - self_before.ru_stime)) / elapsed
    busy = (system_busy_ticks() - busy_before) / hz / elapsed
    arrivals = receiver.stop()
    return evaluate(backend, writes, arrivals, len(measured), args, server_cpu=server_cpu, db_cpu=db_cpu,
                    own_cpu=own_cpu, other_cpu=max(0.0, busy - server_cpu - (db_cpu or 0.0) - own_cpu),
                    peak_rss_mb=sampler.peak_kb / 1024, rss_breakdown=describe_tree_rss(server.pid,
                                                                                        sampler.peak_breakdown),
                    profile=profile)


def measure_backlog(backend: str, server: Server, db_root: int | None, receiver: Receiver, token: str,
                    bodies: list[bytes], args: argparse.Namespace, database_url: str) -> Result:
    """The writes first, with no worker running (the server's in-app workers are off), then one `hifhir worker`
    process delivers the backlog: what a worker can deliver, apart from the writes competing for the database."""
    warmup, measured = bodies[:WARMUP_WRITES], bodies[WARMUP_WRITES:]
    log(f"{backend}: backlog: {len(bodies)} writes from {args.clients} clients, no worker running")
    writes = write_patients(server.port, token, warmup, args.clients)
    if writes.errors:
        raise BenchError(f"{len(writes.errors)} warm-up writes failed, e.g. {writes.errors[0][:500]}")
    writes = write_patients(server.port, token, measured, args.clients)
    log(f"{backend}: {len(measured)} writes in {writes.ended - writes.started:.1f}s; starting `hifhir worker`")
    wait_server_idle(server.pid)
    if args.quiet_wait > 0:
        wait_for_quiet(args.quiet_wait)
    hz = os.sysconf("SC_CLK_TCK")
    db_before = tree_cpu_ticks(db_root) if db_root else {}
    receiver_before = tree_cpu_ticks(receiver.process.pid or 0)
    busy_before = system_busy_ticks()
    started = clock()
    with delivery_worker(database_url, backend, args) as worker:
        prof_out = VAR_DIR / "profiles" / f"{backend}-notify-backlog.txt"
        profiler = start_profiler(worker.pid, len(bodies) / RATE_TARGET + 2, prof_out) if args.profile else None
        with MemorySampler(worker.pid) as sampler:
            wait_for(receiver, len(bodies), args.timeout)
        # Before the worker stops: its PostgreSQL backend ends with it, and its time with the process.
        worker_ticks = sum(tree_cpu_ticks(worker.pid).values())
        db_ticks = _cpu_delta(db_before, tree_cpu_ticks(db_root)) if db_root else 0
        receiver_ticks = _cpu_delta(receiver_before, tree_cpu_ticks(receiver.process.pid or 0))
        busy_ticks = system_busy_ticks() - busy_before
        elapsed = clock() - started
    profile = finish_profiler(profiler, prof_out) if profiler else None
    worker_cpu = worker_ticks / hz / elapsed
    db_cpu = db_ticks / hz / elapsed if db_root else None
    receiver_cpu = receiver_ticks / hz / elapsed
    busy = busy_ticks / hz / elapsed
    arrivals = receiver.stop()
    result = evaluate(backend, writes, arrivals, len(measured), args, server_cpu=worker_cpu, db_cpu=db_cpu,
                      own_cpu=receiver_cpu, other_cpu=max(0.0, busy - worker_cpu - (db_cpu or 0.0) - receiver_cpu),
                      peak_rss_mb=sampler.peak_kb / 1024,
                      rss_breakdown=f"worker {sampler.peak_kb / 1024:.0f}", profile=profile)
    result.notes.append(f"backlog: {len(bodies)} notifications pending when the worker started "
                        f"({WARMUP_WRITES} of the warm-up writes, delivered first)")
    return result


def evaluate(backend: str, writes: Writes, arrivals: list[Arrival], n: int, args: argparse.Namespace,
             **figures: Any) -> Result:
    """Match the notifications to the writes (by Patient/id/_history/version) and compute the figures."""
    answered = {w.resource: w.answered for w in writes.done if w.resource}
    first_arrival: dict[str, Arrival] = {}
    deliveries: dict[str, set[str]] = {}
    duplicates = unexpected = bad = 0
    for a in sorted(arrivals, key=lambda a: a.at):
        if not verify_signature(a):
            bad += 1
        if a.resource not in answered:
            unexpected += 1
            continue
        seen = deliveries.setdefault(a.resource, set())
        if a.delivery in seen or a.resource in first_arrival:
            duplicates += 1  # the same delivery again (at least once), or a second row for one change
        seen.add(a.delivery)
        first_arrival.setdefault(a.resource, a)
    last_arrival = max((a.at for a in first_arrival.values()), default=0.0)
    if args.mode == "backlog":
        # Delivered after the writes: the latency says nothing, the span is the worker's work.
        latencies: list[float] = []
        start = min((a.at for a in first_arrival.values()), default=last_arrival)
    else:
        latencies = sorted((a.at - answered[ref]) * 1000 for ref, a in first_arrival.items())
        start = min(answered.values(), default=writes.started)
    return Result(
        backend=backend, mode=args.mode, notifications=n, clients=args.clients, payload=args.payload,
        writes_ok=len(answered), write_errors=writes.errors, write_s=writes.ended - writes.started,
        received=len(first_arrival), duplicates=duplicates, missing=len(answered) - len(first_arrival),
        unexpected=unexpected, bad_signatures=bad, span_s=max(0.0, last_arrival - start), latencies_ms=latencies,
        **figures)


# --------------------------------------------------------------------------------------------------
# Orchestration


@contextlib.contextmanager
def database(backend: str, args: argparse.Namespace, notes: list[str]) -> Iterator[tuple[str, int | None]]:
    """(database URL, PostgreSQL postmaster pid or None): bench/run.py's bench database for the backend."""
    if backend == "sqlite":
        try:
            url = prepare_sqlite(args.insurees, args.keep_db, args.demo_retry, args.catalogue)
            notes.append(f"SQLite {sqlite3.sqlite_version} (WAL), database copied from "
                         f"var/bench/sqlite-{args.insurees}.db")
            yield url, None
        finally:
            cleanup_sqlite(args.insurees, args.keep_db)
        return
    from tests import pg_cluster

    with bench_pg_cluster() as (admin_url, data_dir):
        url = pg_cluster.create_database(admin_url, PG_DATABASE)
        load_demo_data(url, args.insurees, args.demo_retry, args.catalogue)
        notes.append(f"PostgreSQL {pg_server_version(admin_url)} (tests.pg_cluster settings: fsync, "
                     "synchronous_commit and full_page_writes off)")
        yield url, postmaster_pid(data_dir)


def run_backend(backend: str, args: argparse.Namespace) -> Result:
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        url, db_root = stack.enter_context(database(backend, args, notes))
        receiver = Receiver()
        stack.callback(receiver.close)
        # The server inherits this process's environment (bench.run.server_env): the receiver is allowed there.
        os.environ["HIFHIR_NOTIFY_ALLOW_HTTP"] = "127.0.0.1"
        if args.mode != "live":
            os.environ["HIFHIR_OUTBOX_IN_APP"] = "0"  # no worker in the served processes (`hifhir worker` instead)
        server = Server(url, VAR_DIR / f"server-{backend}-notify.log", args.workers)
        stack.callback(server.stop)
        version = code_version()
        try:
            server.start()
        finally:
            os.environ.pop("HIFHIR_OUTBOX_IN_APP", None)
        notes.append(f"code: {version}")
        log(f"{backend}: server pid {server.pid} on {server.base}; receiver on {receiver.url}")
        if args.nice:
            renice(server.pid, args.nice)
            if db_root:
                renice(db_root, args.nice)
            notes.append(f"server{', PostgreSQL' if db_root else ''}, clients and receiver at nice {args.nice}")
        token = login(server.base)
        bodies = patient_bodies(url, WARMUP_WRITES + args.notifications)
        sub_id = subscribe(server.base, token, receiver.url, args.payload)
        notes.append(f"Subscription/{sub_id}: {CRITERIA}, rest-hook to {receiver.url}, payload "
                     f"{'the resource' if args.payload == 'full' else 'empty'}, signed")
        if args.mode == "backlog":
            result = measure_backlog(backend, server, db_root, receiver, token, bodies, args, url)
        else:
            result = measure(backend, server, db_root, receiver, token, bodies, args, url)
        result.notes[:0] = notes
        return result


def _machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, Python {platform.python_version()}"


def _ms(value: float) -> str:
    return f"{value:.1f}" if value == value else "—"


def render(results: list[Result], args: argparse.Namespace, started: datetime) -> str:
    lines = [
        f"# hifhir notification benchmark {started:%Y-%m-%d %H:%M}",
        "",
        f"- machine: {_machine()}; load average before the run: {args.loadavg}",
        f"- `python -m bench.notify {' '.join(args.argv)}`".rstrip() + f": {args.insurees:,} insurees, "
        f"{args.notifications:,} POST Patient (female) from {args.clients} client threads after {WARMUP_WRITES} "
        "warm-up writes; server `hifhir serve --migrate` (as `make run`), "
        f"{args.workers or os.cpu_count()} workers, "
        + ("each with its outbox worker" if args.mode == "live" else
           f"their outbox workers off, one `hifhir worker` delivering (HIFHIR_OUTBOX_POLL_S={args.worker_poll:g})"),
    ]
    for r in results:
        lines += [f"- {r.backend}: {note}" for note in r.notes]
        if r.write_errors:
            lines.append(f"- {r.backend}: {len(r.write_errors)} writes failed, e.g. {r.write_errors[0][:300]}")
    lines += [
        "",
        "| backend | mode | notifications | delivered/s | target | writes/s | p50 ms | p90 ms | p99 ms | max ms "
        "| duplicates | missing | bad signatures | pass |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.backend} | {r.mode} | {r.received:,} | {r.rate:,.0f} "
            f"| ≥ {RATE_TARGET:,.0f}{'' if r.mode == 'backlog' else f', p50 ≤ {P50_TARGET_MS:.0f} ms'} "
            f"| {r.write_rate:,.0f} | {_ms(r.percentile(50))} | {_ms(r.percentile(90))} | {_ms(r.percentile(99))} "
            f"| {_ms(r.latencies_ms[-1] if r.latencies_ms else float('nan'))} | {r.duplicates} | {r.missing} "
            f"| {r.bad_signatures} | {'pass' if r.passed else 'FAIL'} |")
    lines += [
        "",
        "| backend | mode | peak RSS MB | per process MB | server (backlog: worker) CPU | db CPU "
        "| clients + receiver CPU | other CPU |",
        "|---|---|--:|---|--:|--:|--:|--:|",
    ]
    for r in results:
        db = f"{r.db_cpu:.2f}" if r.db_cpu is not None else "—"
        lines.append(f"| {r.backend} | {r.mode} | {r.peak_rss_mb:.1f} | {r.rss_breakdown} | {r.server_cpu:.2f} | {db} "
                     f"| {r.own_cpu:.2f} | {r.other_cpu:.2f} |")
    for r in results:
        if r.profile is None or not r.profile.samples:
            continue
        lines += ["", f"Profile {r.backend} (py-spy, {r.profile.samples} samples):", "",
                  "| self | function (any) | | inclusive | function (hifhir) |", "|--:|---|---|--:|---|"]
        for i in range(max(len(r.profile.self_top), len(r.profile.total_top))):
            left = r.profile.self_top[i] if i < len(r.profile.self_top) else None
            right = r.profile.total_top[i] if i < len(r.profile.total_top) else None
            lines.append((f"| {left[1]:.0%} | `{left[0]}` |" if left else "| | |")
                         + (f" | {right[1]:.0%} | `{right[0]}` |" if right else " | | |"))
    lines += [
        "",
        "delivered/s: distinct notifications of the measured writes over the time from the first write answered "
        "(backlog: from the first of them received) to the last notification received. Latency: arrival at the "
        "receiver − answer of the write (which follows the commit). CPU: cores kept busy over the measurement "
        "(writes and the wait for the last notification; backlog: the delivery).",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.notify", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--notifications", type=int, default=5000, help="measured writes (default 5000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent writing clients (default 16)")
    parser.add_argument("--mode", choices=["live", "separate", "backlog"], default="live",
                        help="live: deliveries while the writes go on, by the served processes' workers (as `make "
                        "run`; default); separate: the same by one `hifhir worker` process instead; backlog: the "
                        "writes first, then one `hifhir worker` delivers them (delivery capacity)")
    parser.add_argument("--worker-poll", type=float, default=0.5, metavar="SECONDS",
                        help="HIFHIR_OUTBOX_POLL_S of the `hifhir worker` of modes separate and backlog (default 0.5: "
                        "the default; a separate worker is not woken by the served processes' commits)")
    parser.add_argument("--payload", choices=["empty", "full"], default="empty",
                        help="empty notifications (the IG) or the resource (channel.payload application/fhir+json)")
    parser.add_argument("--insurees", type=int, default=100_000, help="bench database population (default 100000)")
    parser.add_argument("--catalogue", type=int, default=10_000, help="as bench/run.py --catalogue")
    parser.add_argument("--keep-db", action="store_true", help="as bench/run.py --keep-db (SQLite)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the notifications after the last write (default 120)")
    parser.add_argument("--quiet-wait", type=float, default=60.0, metavar="SECONDS",
                        help="wait up to this long for other processes to go idle before measuring")
    parser.add_argument("--workers", type=int, default=0, help="server workers (default: as `make run`)")
    parser.add_argument("--nice", type=int, default=0, metavar="N", help="as bench/run.py --nice (root)")
    parser.add_argument("--profile", action="store_true", help="py-spy on the server during the measurement")
    parser.add_argument("--demo-retry", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--check", action="store_true", help="exit 2 when a target is missed")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with exclusive_run():
        args.loadavg = " ".join(f"{v:.2f}" for v in os.getloadavg())
        started = datetime.now()
        backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
        own_nice = set_autogroup_nice("self", args.nice) if args.nice else None
        if args.nice:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        results: list[Result] = []
        try:
            for backend in backends:
                results.append(run_backend(backend, args))
        except BenchError as exc:
            log(f"error: {exc}")
            return 1
        finally:
            if own_nice is not None:
                set_autogroup_nice("self", own_nice)
    report = render(results, args, started)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{started:%Y%m%d-%H%M%S}-notify.md"
    out.write_text(report)
    print(report)
    log(f"written to {out.relative_to(REPO_ROOT)}")
    if any(r.missing or r.write_errors or r.bad_signatures for r in results):
        log("error: notifications missing, writes failed or signatures wrong; the figures are not meaningful")
        return 1
    return 2 if args.check and not all(r.passed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
