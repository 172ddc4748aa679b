"""The `hifhir` command: serve, migrate, demo-data, user create."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from sqlalchemy import select

from hifhir.config import Settings, load_settings


def _engine(settings: Settings):  # type: ignore[no-untyped-def]
    from hifhir.store.db import make_engine

    return make_engine(settings.database_url)


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from hifhir.setup import prepare

    prepare(settings, _engine(settings))
    print(f"database ready: {settings.database_url}")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from hifhir.demo import generate_population, load_demo_scheme
    from hifhir.setup import prepare

    engine = _engine(settings)
    prepare(settings, engine)
    if args.insurees:
        generate_population(engine, args.insurees, seed=args.seed, progress=not args.quiet)
    else:
        load_demo_scheme(engine)
    return 0


def _database_is_empty(engine) -> bool:  # type: ignore[no-untyped-def]
    from hifhir.store.tables import location

    with engine.connect() as conn:
        return conn.execute(select(location.c.pk).limit(1)).first() is None


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from hifhir.setup import DEMO_ADMIN, ensure_admin, prepare

    engine = _engine(settings)
    if args.migrate:
        prepare(settings, engine)
    ensure_admin(engine)
    if args.demo_if_empty and _database_is_empty(engine):
        from hifhir.demo import load_demo_scheme

        load_demo_scheme(engine)
    engine.dispose()
    base = f"http://{settings.host}:{settings.port}"
    print(f"hifhir serving FHIR R4 at {base}/fhir/ (openIMIS alias {base}/api/api_fhir_r4/)", flush=True)
    print(f"log in: POST {base}/api/api_fhir_r4/login/ with user '{DEMO_ADMIN[0]}', password "
          f"'{DEMO_ADMIN[1]}' (demo administrator)", flush=True)
    # Replace this process with a bare uvicorn supervisor: it then holds none of the modules the set-up above
    # loaded (tens of MB), and the workers import the app themselves.
    argv = [sys.executable, "-m", "uvicorn", "hifhir.asgi:app", "--host", settings.host, "--port", str(settings.port),
            "--workers", str(args.workers or settings.workers), "--log-level", "warning", "--no-access-log",
            "--loop", "uvloop", "--http", "httptools", "--lifespan", "on"]
    os.execv(sys.executable, argv)
    return 0  # not reached


def cmd_user_create(settings: Settings, args: argparse.Namespace) -> int:
    from hifhir.auth.users import create_user
    from hifhir.setup import prepare
    from hifhir.store.db import transaction

    engine = _engine(settings)
    prepare(settings, engine)
    password = args.password or getpass.getpass(f"password for {args.username}: ")
    with transaction(engine, write=True) as conn:
        try:
            create_user(conn, args.username, password, roles=args.role or ["IMIS Administrator"],
                        last_name=args.last_name or "", other_names=args.other_names or "")
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"user {args.username} created")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hifhir", description="hifhir health-insurance FHIR server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--migrate", action="store_true", help="migrate the database first")
    serve.add_argument("--demo-if-empty", action="store_true", help="load the demo scheme into an empty database")
    serve.add_argument("--workers", type=int, default=0, help="worker processes (default: HIFHIR_WORKERS or cores)")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="create or upgrade the schema").set_defaults(func=cmd_migrate)
    demo = sub.add_parser("demo-data", help="load the demo scheme, or a synthetic population with --insurees")
    demo.add_argument("--insurees", type=int, default=0, help="generate N synthetic insurees")
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)
    user = sub.add_parser("user", help="user administration")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    create = user_sub.add_parser("create", help="create a user")
    create.add_argument("username")
    create.add_argument("--password")
    create.add_argument("--role", action="append", help="role name (repeatable); default IMIS Administrator")
    create.add_argument("--last-name")
    create.add_argument("--other-names")
    create.set_defaults(func=cmd_user_create)
    args = parser.parse_args(argv)
    return int(args.func(load_settings(), args))


if __name__ == "__main__":
    sys.exit(main())
