"""Instructions PostgreSQL executes for one statement of the server, counted by valgrind: a figure the machine's
changes of speed do not move (bench/README.md, "Machine"), for the database side of a request.

    .venv/bin/python -m bench.pg_instructions --statement eligibility [--executions 200]

It starts the cluster the last `bench.run` left under var/bench/pg (its database `hifhir_bench` loaded, as that run
stopped it) to sample parameters — for `eligibility`, ~400 insurees an active policy covers today with an item and a
service of their product (`bench.run.eligibility_samples`) —, stops it, and then runs `postgres --single` on its data
directory under callgrind twice: with 20 executions, then with 20 + N. Both runs PREPARE the statement as the server
compiles it (`store.fast.DriverQuery`, constants bound as parameters as the server binds them) and run with
`plan_cache_mode = force_generic_plan`, as the server's writes do (`store/pg_direct`, "Plans"); the difference of
their totals divided by N is what one execution costs: binding, the executor's set-up and run, the result's output.
Single-user mode has no client protocol, so a round trip's share is not in it (nor the server's own statements).
The executions change the database only as the statement does (a SELECT: not at all).

Needs `valgrind` (`apt-get install valgrind`) and a bench cluster (`python -m bench.run --backend postgresql` once;
the next `bench.run` makes a new one). Statements: `eligibility` (the enquiry of an item and a service,
`domain.eligibility`).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WARMUP = 20
STATEMENTS = ("eligibility",)


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, date):
        return f"'{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


def executions_of(query: Any, dialect: Any, params: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """`PREPARE q AS …` of a DriverQuery and an EXECUTE for each parameter set: the statement and the arguments the
    server sends (`DriverQuery.bound`: constants bound as parameters, the columns' bind conversions)."""
    server = SimpleNamespace(dialect=dialect)  # all `bound` asks of a connection
    bound = [query.bound(server, p) for p in params]
    prepare = "PREPARE q AS " + re.sub(r"\s+", " ", bound[0].sql) + ";"
    return prepare, ["EXECUTE q(" + ", ".join(_literal(v) for v in b.args) + ");" for b in bound]


def eligibility_executions(url: str, count: int) -> tuple[str, list[str]]:
    """The PREPARE of an enquiry (one item, one service) and `count` EXECUTEs of it for sampled insurees."""
    from sqlalchemy import create_engine

    from bench.run import eligibility_samples
    from hifhir.domain.eligibility import _enquiry_query

    today = date.today()
    engine = create_engine(url.rsplit("/", 1)[0] + "/hifhir_bench")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT setseed(0.7)")  # the same insurees at every run (ORDER BY random())
            samples = eligibility_samples(conn, 400, today, random.Random(7))
    finally:
        engine.dispose()
    if not samples:
        raise SystemExit("no insuree with an active policy in hifhir_bench: run bench.run --keep-db first")
    params = [{"ref": patient, "today": today, "i0": item, "s0": service}
              for patient, item, service in (samples[n % len(samples)] for n in range(count))]
    return executions_of(_enquiry_query(True, True), engine.dialect, params)


def _callgrind_total(data_dir: Path, bin_dir: Path, run_as: str | None, script: str, work: Path) -> int:
    out = work / "callgrind.out"
    out.unlink(missing_ok=True)
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(bin_dir / "postgres"), "--single",
            "-D", str(data_dir), "-c", "plan_cache_mode=force_generic_plan",
            # Without the extension a `bench.run --pg-statements` configured, and a small cache (valgrind's start).
            "-c", "shared_preload_libraries=", "-c", "shared_buffers=256MB", "hifhir_bench"]
    if run_as:
        argv = ["runuser", "-u", run_as, "--", *argv]
    done = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
    errors = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if "ERROR:" in line]
    if done.returncode or errors or not out.exists():
        raise SystemExit(f"postgres --single failed ({done.returncode}): {errors[:3] or done.stderr[-2000:]}")
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no total in {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--statement", choices=STATEMENTS, default="eligibility")
    parser.add_argument("--executions", type=int, default=200, help="measured executions (after 20 unmeasured)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")

    from tests import pg_cluster

    state_file = REPO / "var" / "bench" / "pg" / "state.json"
    try:
        state = pg_cluster.ClusterState(**json.loads(state_file.read_text()))
    except (OSError, ValueError, TypeError):
        raise SystemExit(f"no bench cluster ({state_file}): run python -m bench.run --backend postgresql") from None
    data_dir, bin_dir, run_as = Path(state.data_dir), Path(state.bin_dir), state.run_as
    ctl = [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-w", "-l", state.log_file]
    if run_as:
        ctl = ["runuser", "-u", run_as, "--", *ctl]
    subprocess.run([*ctl, "start", "-o", f"-p {state.port}"], check=True, capture_output=True)
    try:
        prepare, executions = eligibility_executions(state.url, WARMUP + args.executions)
    finally:
        subprocess.run([*ctl, "stop", "-m", "fast"], check=True, capture_output=True)
    # The cluster is stopped: single-user mode needs its data directory to itself.
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if run_as:
            shutil.chown(work, run_as)
        base = _callgrind_total(data_dir, bin_dir, run_as, "\n".join([prepare, *executions[:WARMUP]]) + "\n", work)
        total = _callgrind_total(data_dir, bin_dir, run_as, "\n".join([prepare, *executions]) + "\n", work)
    print(f"{args.statement}: {(total - base) / args.executions:,.0f} instructions per execution "
          f"({args.executions} executions, PostgreSQL single-user mode under callgrind)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
