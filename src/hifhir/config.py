"""Runtime settings, read once from the environment (12-factor style)."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

DEFAULT_SQLITE_PATH = Path("var") / "hifhir.db"


DEV_SECRET_PREFIX = "dev-only-"  # marks the generated development secret: production mode refuses it


class ConfigError(ValueError):
    """A setting in the environment that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The peers whose X-Forwarded-For is believed (HIFHIR_TRUSTED_PROXIES): IP addresses and networks in CIDR
    notation (a load balancer pool is a subnet, not a list)."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        """Addresses and networks only: a host name here would never match the peer address it stands for."""
        networks = []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ConfigError(f"HIFHIR_TRUSTED_PROXIES: {entry[:80]!r} is not an IP address or network "
                                  "(e.g. 10.0.0.5, 10.0.0.0/24, fd00::/64)") from None
        return cls(tuple(networks))

    def __contains__(self, peer: object) -> bool:
        if not isinstance(peer, str):
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def _secret_from_file(path: Path) -> str:
    # A generated secret that survives restarts, so tokens stay valid across `make run` invocations.
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = DEV_SECRET_PREFIX + secrets.token_urlsafe(48)
    path.write_text(value)
    path.chmod(0o600)
    return value


def _jwt_secret(env: Mapping[str, str]) -> tuple[str, str]:
    """The token signing secret and where it came from: HIFHIR_JWT_SECRET, the file HIFHIR_JWT_SECRET_FILE names
    (e.g. a mounted container secret), or else the development secret generated into var/jwt-secret."""
    if env.get("HIFHIR_JWT_SECRET"):
        return env["HIFHIR_JWT_SECRET"], "env"
    if env.get("HIFHIR_JWT_SECRET_FILE"):
        try:
            return Path(env["HIFHIR_JWT_SECRET_FILE"]).read_text().strip(), "file"
        except OSError:
            return "", "file"  # unreadable: an empty secret, which `hifhir serve` refuses in production
    return _secret_from_file(Path("var") / "jwt-secret"), "dev-file"


# Settings the FHIR mappings need outside any request (rendering happens inside write transactions and the demo
# loader): read once per process from the environment.
SCHEME_CURRENCY = os.environ.get("HIFHIR_CURRENCY", "EUR")  # every amount of the scheme (prices, premiums)
PUBLIC_BASE_URL = os.environ.get("HIFHIR_PUBLIC_BASE_URL", "http://127.0.0.1:8080/fhir").rstrip("/")
# Which checked claims are selected for feedback (domain §3.4.1, domain/claims/feedback.py parse_rule): off,
# all:<min claimed>, random:<percent> or variance:<percent>[:<min claimed>].
FEEDBACK_SELECTION = os.environ.get("HIFHIR_FEEDBACK_SELECTION", "off")
# Which checked claims wait for a medical officer's review (domain §3.4.1, domain/claims/review.py): the same
# rules as the feedback selection.
REVIEW_SELECTION = os.environ.get("HIFHIR_REVIEW_SELECTION", "off")
# The external claim adjudicator (domain/claims/ai.py): checked claims are POSTed to it through the outbox and wait
# for its ClaimResponse. Unset: no AI, claims are processed at once.
CLAIM_AI_URL = os.environ.get("HIFHIR_CLAIM_AI_URL", "").strip() or None


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """Subscription notifications (notify/): which endpoints may be reached, when a subscription is in error."""

    # Hosts (names, IP addresses or CIDR networks) a subscription may reach over plain http and at internal
    # (loopback, private, link-local) addresses; every other endpoint must be https to a public address.
    allow_http: frozenset[str] = frozenset()
    max_failures: int = 3  # consecutive failed deliveries after which the Subscription is `error`
    timeout_s: float = 10.0  # per delivery (connect and answer)


def notify_config_from_env(env: Mapping[str, str]) -> NotifyConfig:
    d = NotifyConfig()
    hosts = frozenset(h.strip().lower().strip("[]") for h in env.get("HIFHIR_NOTIFY_ALLOW_HTTP", "").split(",")
                      if h.strip())
    return NotifyConfig(allow_http=hosts,
                        max_failures=max(1, int(env.get("HIFHIR_NOTIFY_MAX_FAILURES", str(d.max_failures)))),
                        timeout_s=float(env.get("HIFHIR_NOTIFY_TIMEOUT_S", str(d.timeout_s))))


# Read at subscription writes (inside write transactions) and by the outbox worker: module-level, like CLAIM_AI_URL.
NOTIFY = notify_config_from_env(os.environ)


@dataclass(frozen=True, slots=True)
class PaymentsConfig:
    """The payments platform: its tariff, recorded on each accepted PaymentNotice (`payment_notice.fees`) and billed
    monthly (`hifhir bills fees`), and the name its fees bills show (it has no register of its own)."""

    fee_percent: Decimal = Decimal(0)  # of each accepted payment's amount
    fee_fixed: Decimal = Decimal(0)  # per accepted payment, in the scheme currency
    platform_name: str = "Payments platform"


def _amount_setting(env: Mapping[str, str], name: str) -> Decimal:
    text = env.get(name, "").strip() or "0"
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ConfigError(f"{name}: {text[:40]!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise ConfigError(f"{name}: {text[:40]!r} must be a number ≥ 0")
    return value


def payments_config_from_env(env: Mapping[str, str]) -> PaymentsConfig:
    return PaymentsConfig(fee_percent=_amount_setting(env, "HIFHIR_PAYMENT_FEE_PERCENT"),
                          fee_fixed=_amount_setting(env, "HIFHIR_PAYMENT_FEE_FIXED"),
                          platform_name=env.get("HIFHIR_PAYMENT_PLATFORM_NAME", "").strip() or "Payments platform")


# Read inside PaymentNotice writes (no Settings there) and when bills are rendered: module-level, like NOTIFY; read
# as `config.PAYMENTS` at each use, so that tests may replace it.
PAYMENTS = payments_config_from_env(os.environ)


@dataclass(slots=True)
class InsurerConfig:
    """The insurer Organization (`ins`) has no table in openIMIS: it is module configuration."""

    id: str = "openIMIS-Implementation"
    code: str = "openIMIS"
    name: str = "openIMIS Implementation"
    email: str | None = "implementation@openimis.org"
    phone: str | None = None
    fax: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """The outbox worker (outbox/): polling, concurrency, retries."""

    poll_s: float = 0.5  # an idle worker looks for due rows this often (one indexed read; writes in-process wake it)
    batch: int = 32  # rows claimed at once
    # A worker's turns at the database for its rows (record the last batch's outcomes, claim the next) are at least
    # this far apart: a stream of notifications is then claimed a few rows per turn instead of one — on SQLite each
    # turn takes the writer lock the requests wait for. An idle worker claims a new row at once.
    batch_interval_s: float = 0.01
    concurrency: int = 4  # handlers run at once by one worker (threads: they mostly wait on the network)
    lease_s: float = 120.0  # a claimed row is another worker's again when its worker has not finished it by then
    backoff_base_s: float = 5.0  # retry n waits base × 2^(n−1), at most cap
    backoff_cap_s: float = 3600.0
    jitter: float = 0.1  # ± this fraction of each wait, so that rows failing together do not retry together
    max_attempts: int = 12  # then the row stays failed (with its last error) until requeued
    keep_done_s: float = 7 * 24 * 3600.0  # delivered rows are purged after this
    in_app: bool = False  # each served process runs a worker (load_settings turns it on; tests drive it by hand)


@dataclass(slots=True)
class Settings:
    database_url: str = f"sqlite:///{DEFAULT_SQLITE_PATH}"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    jwt_secret: str = ""
    token_lifetime_s: int = 24 * 3600
    # OAuth2 client tokens (auth/oauth.py) are short-lived: SMART Backend Services clients fetch a new one as needed.
    client_token_lifetime_s: int = 300
    password_min_length: int = 12  # the password policy (auth/password_policy.py)
    page_size_default: int = 10
    page_size_max: int = 1000
    max_body_bytes: int = 5 * 1024 * 1024
    include_max: int = 1000  # resources _include/_revinclude may add to one page
    # Login throttling (auth/throttle.py): failures per user name / per address within the window, then a lock.
    login_max_failures: int = 5
    login_max_failures_per_address: int = 20
    login_window_s: int = 15 * 60
    login_lock_s: int = 15 * 60
    # Peers whose X-Forwarded-For is believed (reverse proxies); anyone else's is ignored.
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API (api/cors.py); empty = CORS off
    production: bool = False  # HIFHIR_ENV=production: `hifhir serve` refuses unsafe settings (production.py)
    jwt_secret_source: str = "settings"  # env | file | dev-file: where jwt_secret came from
    # How far the sync point handed to clients (Bundle.meta.lastUpdated) lags behind the clock: a write transaction
    # stamps its changes when it starts, so one still running when a client reads commits changes older than the
    # read. The lag must exceed the longest write transaction.
    sync_settle_ms: int = 5000
    insurer: InsurerConfig = field(default_factory=InsurerConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings() -> Settings:
    env = os.environ
    url = env.get("HIFHIR_DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE_PATH}"
    # Accept the usual postgres:// spellings and pick the psycopg 3 driver.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    secret, secret_source = _jwt_secret(env)
    return Settings(
        database_url=url,
        host=env.get("HIFHIR_HOST", "127.0.0.1"),
        port=int(env.get("HIFHIR_PORT", "8080")),
        workers=int(env.get("HIFHIR_WORKERS", str(os.cpu_count() or 1))),
        jwt_secret=secret,
        jwt_secret_source=secret_source,
        page_size_default=int(env.get("HIFHIR_PAGE_SIZE", "10")),
        page_size_max=int(env.get("HIFHIR_PAGE_SIZE_MAX", "1000")),
        max_body_bytes=int(env.get("HIFHIR_MAX_BODY_BYTES", str(5 * 1024 * 1024))),
        include_max=int(env.get("HIFHIR_INCLUDE_MAX", "1000")),
        client_token_lifetime_s=max(60, int(env.get("HIFHIR_CLIENT_TOKEN_LIFETIME_S", "300"))),
        password_min_length=max(8, int(env.get("HIFHIR_PASSWORD_MIN_LENGTH", "12"))),
        sync_settle_ms=int(env.get("HIFHIR_SYNC_SETTLE_MS", "5000")),
        login_max_failures=max(1, int(env.get("HIFHIR_LOGIN_MAX_FAILURES", "5"))),
        login_max_failures_per_address=max(1, int(env.get("HIFHIR_LOGIN_MAX_FAILURES_PER_ADDRESS", "20"))),
        login_window_s=max(1, int(env.get("HIFHIR_LOGIN_WINDOW_S", str(15 * 60)))),
        login_lock_s=max(1, int(env.get("HIFHIR_LOGIN_LOCK_S", str(15 * 60)))),
        trusted_proxies=TrustedProxies.parse(env.get("HIFHIR_TRUSTED_PROXIES", "").split(",")),
        cors_origins=tuple(o.strip().rstrip("/") for o in env.get("HIFHIR_CORS_ORIGINS", "").split(",") if o.strip()),
        production=env.get("HIFHIR_ENV", "").strip().lower() == "production",
        outbox=outbox_config_from_env(env),
    )


def outbox_config_from_env(env: Mapping[str, str]) -> OutboxConfig:
    d = OutboxConfig()
    return OutboxConfig(
        poll_s=float(env.get("HIFHIR_OUTBOX_POLL_S", str(d.poll_s))),
        batch=int(env.get("HIFHIR_OUTBOX_BATCH", str(d.batch))),
        batch_interval_s=float(env.get("HIFHIR_OUTBOX_BATCH_INTERVAL_S", str(d.batch_interval_s))),
        concurrency=int(env.get("HIFHIR_OUTBOX_CONCURRENCY", str(d.concurrency))),
        lease_s=float(env.get("HIFHIR_OUTBOX_LEASE_S", str(d.lease_s))),
        backoff_base_s=float(env.get("HIFHIR_OUTBOX_BACKOFF_BASE_S", str(d.backoff_base_s))),
        backoff_cap_s=float(env.get("HIFHIR_OUTBOX_BACKOFF_CAP_S", str(d.backoff_cap_s))),
        jitter=float(env.get("HIFHIR_OUTBOX_JITTER", str(d.jitter))),
        max_attempts=int(env.get("HIFHIR_OUTBOX_MAX_ATTEMPTS", str(d.max_attempts))),
        keep_done_s=float(env.get("HIFHIR_OUTBOX_KEEP_DONE_S", str(d.keep_done_s))),
        in_app=env.get("HIFHIR_OUTBOX_IN_APP", "1") not in ("0", "false", "no", "off"),
    )
