"""A throw-away PostgreSQL cluster for the test suite.

Importable (``start()``, ``stop()``, ``url()``, ``create_database()``) and runnable::

    python -m tests.pg_cluster start   # prints the SQLAlchemy URL on stdout
    python -m tests.pg_cluster url     # prints the URL of the running cluster
    python -m tests.pg_cluster stop

Layout (everything is disposable; ``start()`` wipes it)::

    var/test-pg/url          the current URL (written last, so its presence means "started")
    var/test-pg/state.json   where the cluster lives and who runs it, read by stop()/url()
    var/test-pg/cluster/     owned by the server user: data/ (also the socket dir) and server.log

initdb/postgres refuse to run as root, and CI runs as root: in that case every server command is run
through ``runuser`` as the ``postgres`` system user (created as ``hifhirpg`` when absent).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

REPO_ROOT = Path(__file__).resolve().parents[1]
STATE_DIR = REPO_ROOT / "var" / "test-pg"
URL_FILE = STATE_DIR / "url"
STATE_FILE = STATE_DIR / "state.json"
LOCK_FILE = STATE_DIR / ".lock"

PREFERRED_MAJOR = 15
READY_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 5
SUPERUSER = "postgres"
SYSTEM_USER = "postgres"
FALLBACK_SYSTEM_USER = "hifhirpg"
# sun_path is 108 bytes including the NUL; the server appends "/.s.PGSQL.<port>" to the socket dir.
MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535")

# Durability is worthless for a cluster that is wiped on every start; turning it off makes the
# migration- and commit-heavy test suite several times faster.
SERVER_SETTINGS: dict[str, str | int] = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Two xdist workers, each with an app pool, plus ad-hoc connections from fixtures.
    "max_connections": 200,
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] %d ",
}


class ClusterError(RuntimeError):
    """The test cluster could not be started, stopped or found."""


@dataclass(slots=True)
class ClusterState:
    """What stop()/url() need to find a cluster that an earlier process started."""

    cluster_dir: str
    data_dir: str
    log_file: str
    bin_dir: str
    run_as: str | None
    port: int
    url: str

    @classmethod
    def load(cls) -> ClusterState | None:
        try:
            raw = json.loads(STATE_FILE.read_text())
            return cls(**raw)
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> None:
        _write_atomic(STATE_FILE, json.dumps(asdict(self), indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# Helpers


def _log(message: str) -> None:
    # stdout is reserved for the URL so that `url=$(python -m tests.pg_cluster start)` works.
    print(f"pg_cluster: {message}", file=sys.stderr)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    # Serialises start/stop so that two callers (e.g. a developer's shell and `make test`) cannot
    # wipe a data dir under a postmaster that is still starting.
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def find_bin_dir() -> Path:
    """The directory holding initdb/pg_ctl; PostgreSQL 15 preferred, else the newest installed."""
    override = os.environ.get("HIFHIR_PG_BINDIR")
    if override:
        return Path(override)
    candidates: list[tuple[int, Path]] = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        path = Path(initdb)
        major = path.parent.parent.name
        if major.isdigit():
            candidates.append((int(major), path.parent))
    for major, bin_dir in candidates:
        if major == PREFERRED_MAJOR:
            return bin_dir
    if candidates:
        return max(candidates)[1]
    which = shutil.which("initdb")
    if which:
        return Path(which).resolve().parent
    raise ClusterError("no PostgreSQL server binaries found; run scripts/install-test-deps.sh")


def _server_user() -> str | None:
    """The unprivileged user to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in (SYSTEM_USER, FALLBACK_SYSTEM_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    # A system account with no home and no login shell: it only ever owns the throw-away cluster.
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_SYSTEM_USER],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return FALLBACK_SYSTEM_USER


def _as_user(argv: Sequence[str], user: str | None) -> list[str]:
    if user is None:
        return list(argv)
    if shutil.which("runuser"):
        # runuser (util-linux) needs no PAM password and no login shell, unlike plain su.
        return ["runuser", "-u", user, "--", *argv]
    return ["su", "-s", "/bin/sh", user, "-c", shlex.join(argv)]


def _server_env() -> dict[str, str]:
    # Inherited PG* variables (PGPORT, PGDATA, PGHOST...) would silently redirect pg_ctl; a fixed C
    # locale keeps initdb from warning about (or failing on) locales missing from a minimal image.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


def _run(argv: Sequence[str], user: str | None, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        _as_user(argv, user),
        # The server user may not be able to read the caller's cwd (e.g. a clone under /root).
        cwd="/",
        env=_server_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise ClusterError(f"{shlex.join(argv)} failed ({proc.returncode}):\n{proc.stdout.strip()}")
    return proc


def _chown(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _user_can_reach(path: Path, user: str | None) -> bool:
    # Every ancestor needs +x for the server user; a repo cloned under /root (mode 0700) fails this.
    if user is None:
        return True
    return _run(["test", "-x", str(path)], user, check=False).returncode == 0


def _pick_cluster_dir(user: str | None) -> Path:
    preferred = STATE_DIR / "cluster"
    if _user_can_reach(STATE_DIR, user) and len(str(preferred / "data")) <= MAX_SOCKET_DIR_LEN:
        return preferred
    # Fall back to a short, per-checkout path in /tmp; deterministic so the next start wipes it.
    digest = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12]
    fallback = Path(tempfile.gettempdir()) / f"hifhir-test-pg-{digest}"
    _log(f"{preferred} is unusable by the server user or too long for a socket path; using {fallback}")
    return fallback


def _free_port() -> int:
    # Port 0 makes the kernel pick an unused port; there is a small race until postgres binds it,
    # which start() covers by retrying on "address already in use".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _conf_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _libpq_url(url: str) -> str:
    """SQLAlchemy's 'postgresql+psycopg://' -> the plain 'postgresql://' that libpq understands."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=parts.scheme.split("+", 1)[0]))


def _wait_ready(url: str, deadline: float) -> None:
    # pg_ctl -w already waited for the postmaster; a real login also proves trust auth and TCP work.
    conninfo = _libpq_url(url)
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(conninfo, connect_timeout=2) as conn:
                conn.execute("select 1")
                return
        except psycopg.OperationalError as exc:
            last_error = exc
            time.sleep(0.1)
    raise ClusterError(f"server did not accept connections within {READY_TIMEOUT_S:.0f}s: {last_error}")


def _postmaster_alive(data_dir: Path) -> bool:
    """Whether the postmaster recorded in data_dir/postmaster.pid is a live process.

    pg_ctl's own check is kill(pid, 0), which also succeeds for a zombie; on this sandbox the init
    process reaps orphans lazily, so a killed postmaster would look alive and `pg_ctl stop -w` would
    then wait out its whole timeout for a pid file that nobody removes.
    """
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the ")" that closes the command name (which may contain spaces).
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _is_running(state: ClusterState) -> bool:
    return _postmaster_alive(Path(state.data_dir))


def _stop_server(bin_dir: Path, data_dir: Path, user: str | None) -> bool:
    if not _postmaster_alive(data_dir):
        # Nothing to stop; a stale postmaster.pid is harmless because start() wipes the data dir.
        return False
    # Immediate mode skips the shutdown checkpoint: the data is thrown away anyway.
    proc = _run(
        [str(bin_dir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "immediate", "-w", "-t", "30", "-s"],
        user,
        check=False,
    )
    if proc.returncode != 0:
        # Lost a race with the server exiting on its own: it is stopped either way.
        _log(f"pg_ctl stop: {proc.stdout.strip() or 'exit ' + str(proc.returncode)}")
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Public API


def start() -> str:
    """(Re)create and start the cluster; returns its SQLAlchemy URL (also written to var/test-pg/url)."""
    with _locked():
        _stop_previous()
        URL_FILE.unlink(missing_ok=True)

        bin_dir = find_bin_dir()
        user = _server_user()
        cluster_dir = _pick_cluster_dir(user)
        data_dir = cluster_dir / "data"
        log_file = cluster_dir / "server.log"
        # A postmaster may still hold this dir if state.json was lost (e.g. `rm -rf var` mid-run).
        _stop_server(bin_dir, data_dir, user)

        shutil.rmtree(cluster_dir, ignore_errors=True)
        cluster_dir.mkdir(parents=True)
        # initdb insists on 0700 (or 0750) for the data dir.
        data_dir.mkdir(mode=0o700)
        _chown(cluster_dir, user)
        _chown(data_dir, user)

        _run(
            [
                str(bin_dir / "initdb"),
                f"--pgdata={data_dir}",
                f"--username={SUPERUSER}",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                # Skipping the final fsync saves seconds per start; durability is irrelevant here.
                "--no-sync",
            ],
            user,
        )
        settings = dict(SERVER_SETTINGS, unix_socket_directories=str(data_dir))
        # Appended last so these override initdb's defaults (later settings win in postgresql.conf).
        with (data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# hifhir test cluster (tests/pg_cluster.py)\n")
            for key, value in settings.items():
                conf.write(f"{key} = {_conf_value(value)}\n")

        deadline = time.monotonic() + READY_TIMEOUT_S
        port = _start_server(bin_dir, data_dir, log_file, user)
        url = f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/postgres"
        state = ClusterState(
            cluster_dir=str(cluster_dir),
            data_dir=str(data_dir),
            log_file=str(log_file),
            bin_dir=str(bin_dir),
            run_as=user,
            port=port,
            url=url,
        )
        # Saved before the readiness check so that a failed start can still be stopped.
        state.save()
        _wait_ready(url, deadline)
        _write_atomic(URL_FILE, url + "\n")
        return url


def _stop_previous() -> None:
    state = ClusterState.load()
    if state is not None:
        _stop_server(Path(state.bin_dir), Path(state.data_dir), state.run_as)


def _start_server(bin_dir: Path, data_dir: Path, log_file: Path, user: str | None) -> int:
    last_output = ""
    for _attempt in range(PORT_ATTEMPTS):
        port = _free_port()
        # The port goes on the command line (pg_ctl stores it in postmaster.opts for restarts), so a
        # retry with another port needs no config rewrite.
        proc = _run(
            [
                str(bin_dir / "pg_ctl"),
                "start",
                f"--pgdata={data_dir}",
                f"--log={log_file}",
                "--wait",
                f"--timeout={int(READY_TIMEOUT_S)}",
                "--silent",
                f"--options=-p {port}",
            ],
            user,
            check=False,
        )
        if proc.returncode == 0:
            return port
        last_output = proc.stdout.strip()
        log = _tail(log_file)
        if "could not bind" in log or "already in use" in log:
            _log(f"port {port} was taken before the server bound it; retrying")
            continue
        raise ClusterError(f"pg_ctl start failed:\n{last_output}\n--- {log_file} ---\n{log}")
    raise ClusterError(f"pg_ctl start failed {PORT_ATTEMPTS} times on busy ports:\n{last_output}")


def stop() -> bool:
    """Stop the cluster (immediate mode). Returns whether a server was running; never fails if not."""
    with _locked():
        URL_FILE.unlink(missing_ok=True)
        state = ClusterState.load()
        if state is None:
            return False
        return _stop_server(Path(state.bin_dir), Path(state.data_dir), state.run_as)


def url() -> str:
    """The URL of the running cluster; raises ClusterError when none is running."""
    state = ClusterState.load()
    if state is None or not URL_FILE.exists() or not _is_running(state):
        raise ClusterError("no test cluster is running; start one with `python -m tests.pg_cluster start`")
    return URL_FILE.read_text().strip()


_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def create_database(admin_url: str, name: str) -> str:
    """Create (or recreate, empty) database `name` on the server of `admin_url`; returns its URL.

    The returned URL keeps admin_url's scheme, user, host and port; only the database changes.
    """
    if not _DB_NAME.fullmatch(name):
        raise ValueError(f"invalid database name {name!r}")
    ident = sql.Identifier(name)
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    with psycopg.connect(_libpq_url(admin_url), autocommit=True) as conn:
        # FORCE ends sessions left over from an earlier run against the same cluster.
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        # template0 rather than template1: copying template1 fails ("source database is being
        # accessed by other users") when two xdist workers create their databases at the same moment.
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(ident))
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


# --------------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pg_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "url"])
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(start())
        elif args.command == "stop":
            _log("stopped" if stop() else "no cluster was running")
        else:
            print(url())
    except ClusterError as exc:
        _log(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
