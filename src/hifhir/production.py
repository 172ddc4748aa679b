"""Production mode (HIFHIR_ENV=production or `hifhir serve --production`): the settings and data a development set-up
tolerates and a live scheme must not run with. `hifhir serve` refuses to start while any of them holds."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from hifhir.auth.passwords import verify_password
from hifhir.config import DEV_SECRET_PREFIX, Settings
from hifhir.store.tables import app_user

MIN_SECRET_BYTES = 32
# The demo administrator (setup.DEMO_ADMIN), the demo's other administrator, and the password every demo login
# shares (demo/scheme.DEMO_PASSWORD).
DEMO_USER_NAMES = ("Admin", "Admin_Fr")
DEMO_PASSWORDS = ("admin123",)
# The demo staff logins are created with one shared hash (demo/staff.py hashes the demo password once): the most
# shared hashes are the ones to try, which keeps the check to a few argon2 verifications however many users exist.
_SHARED_HASHES_CHECKED = 5


def secret_problems(settings: Settings) -> list[str]:
    secret = settings.jwt_secret
    if not secret:
        return ["no JWT secret: set HIFHIR_JWT_SECRET or HIFHIR_JWT_SECRET_FILE (a readable file)"]
    problems = []
    if settings.jwt_secret_source == "dev-file" or secret.startswith(DEV_SECRET_PREFIX):
        problems.append("the JWT secret is the generated development secret (var/jwt-secret): set "
                        "HIFHIR_JWT_SECRET or HIFHIR_JWT_SECRET_FILE")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        problems.append(f"the JWT secret is shorter than {MIN_SECRET_BYTES} bytes")
    return problems


def demo_logins(engine: Engine) -> list[str]:
    """Active users that still log in with a demo password."""
    with engine.connect() as conn:
        named = conn.execute(select(app_user.c.username, app_user.c.password_hash).where(
            app_user.c.active.is_(True), app_user.c.username.in_(DEMO_USER_NAMES))).all()
        shared = conn.execute(
            select(app_user.c.password_hash, func.count().label("n"), func.min(app_user.c.username).label("name"))
            .where(app_user.c.active.is_(True), app_user.c.username.not_in(DEMO_USER_NAMES))
            .group_by(app_user.c.password_hash).having(func.count() > 1)
            .order_by(func.count().desc()).limit(_SHARED_HASHES_CHECKED)).all()
    found = [r.username for r in named if _is_demo_password(r.password_hash)]
    found += [f"{r.name} and {r.n - 1} others" for r in shared if _is_demo_password(r.password_hash)]
    return found


def _is_demo_password(password_hash: str) -> bool:
    return any(verify_password(password_hash, p) for p in DEMO_PASSWORDS)


def problems(settings: Settings, engine: Engine) -> list[str]:
    """Why this set-up must not serve in production (empty: it may)."""
    found = secret_problems(settings)
    if "*" in settings.cors_origins:
        found.append("HIFHIR_CORS_ORIGINS is '*': list the browser origins allowed to call the API")
    users = demo_logins(engine)
    if users:
        found.append(f"demo users still have the demo password: {', '.join(users)} (change their passwords or "
                     "deactivate them)")
    return found
