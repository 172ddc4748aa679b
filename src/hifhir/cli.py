"""The `hifhir` command: serve, migrate, demo-data, user / role / client administration (cli_admin.py), codes
(code-list administration), claims (batch run with relative pricing, relative distributions), bills (commissions
and payment-platform fees), worker (outbox deliveries)."""

from __future__ import annotations

import argparse
import os
import sys
from decimal import Decimal, InvalidOperation

from sqlalchemy import select

from hifhir.cli_admin import add_parsers as add_admin_parsers
from hifhir.config import ConfigError, Settings, load_settings


def _engine(settings: Settings):  # type: ignore[no-untyped-def]
    from hifhir.store.db import make_engine

    return make_engine(settings.database_url)


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from hifhir.setup import prepare

    prepare(settings, _engine(settings))
    print(f"database ready: {settings.database_url}")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from hifhir.demo import generate_catalogue, generate_population, load_demo_scheme
    from hifhir.demo.statistics import analyze_loaded_tables
    from hifhir.setup import prepare

    engine = _engine(settings)
    prepare(settings, engine)
    load_demo_scheme(engine)
    if args.insurees:
        generate_population(engine, args.insurees, seed=args.seed, progress=not args.quiet)
    if args.items or args.services:
        generate_catalogue(engine, args.items, args.services, seed=args.seed, progress=not args.quiet)
    analyze_loaded_tables(engine)
    return 0


def _database_is_empty(engine) -> bool:  # type: ignore[no-untyped-def]
    from hifhir.store.tables import location

    with engine.connect() as conn:
        return conn.execute(select(location.c.pk).limit(1)).first() is None


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from hifhir.setup import DEMO_ADMIN, ensure_admin, prepare

    if not settings.jwt_secret:
        print("error: no JWT secret: set HIFHIR_JWT_SECRET or HIFHIR_JWT_SECRET_FILE (a readable file)",
              file=sys.stderr)
        return 3
    engine = _engine(settings)
    if args.migrate:
        prepare(settings, engine)
    production = settings.production or args.production
    if production:
        # No demo administrator nor demo data: the first administrator comes from `hifhir user create`.
        from hifhir.production import problems

        found = problems(settings, engine)
        if args.demo_if_empty:
            found.append("--demo-if-empty (demo data) is not for production")
        engine.dispose()
        if found:
            print("error: refusing to serve in production mode:", file=sys.stderr)
            for problem in found:
                print(f"  - {problem}", file=sys.stderr)
            return 3
    else:
        ensure_admin(engine)
        if args.demo_if_empty and _database_is_empty(engine):
            from hifhir.demo import load_demo_scheme
            from hifhir.demo.statistics import analyze_loaded_tables

            load_demo_scheme(engine)
            analyze_loaded_tables(engine)
        engine.dispose()
    base = f"http://{settings.host}:{settings.port}"
    print(f"hifhir serving FHIR R4 at {base}/fhir/ (openIMIS alias {base}/api/api_fhir_r4/)", flush=True)
    if not production:
        print(f"log in: POST {base}/api/api_fhir_r4/login/ with user '{DEMO_ADMIN[0]}', password "
              f"'{DEMO_ADMIN[1]}' (demo administrator)", flush=True)
    # Replace this process with a bare uvicorn supervisor: it then holds none of the modules the set-up above
    # loaded (tens of MB), and the workers import the app themselves.
    argv = [sys.executable, "-m", "uvicorn", "hifhir.asgi:app", "--host", settings.host, "--port", str(settings.port),
            "--workers", str(args.workers or settings.workers), "--log-level", "warning", "--no-access-log",
            "--loop", "uvloop", "--http", "httptools", "--lifespan", "on"]
    os.execv(sys.executable, argv)
    return 0  # not reached


def cmd_rights(_settings: Settings, _args: argparse.Namespace) -> int:
    """The rights matrix as Markdown (README.md \"Rights\" is this output)."""
    from hifhir.auth.matrix import markdown_table

    print(markdown_table(), end="")
    return 0


def cmd_jobs(settings: Settings, _args: argparse.Namespace) -> int:
    from hifhir.jobs import refresh_coverage_flags
    from hifhir.setup import prepare

    engine = _engine(settings)
    prepare(settings, engine)
    try:
        changed = refresh_coverage_flags(engine)
    finally:
        engine.dispose()
    print(f"coverage flags: {changed} insurees changed")
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """The outbox worker (claim-AI deliveries, subscription notifications) in the foreground; `serve` runs one in
    each process as well."""
    import logging
    import signal

    from hifhir.outbox import store
    from hifhir.outbox.worker import Worker
    from hifhir.setup import prepare
    from hifhir.store.db import transaction

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = _engine(settings)
    prepare(settings, engine)
    try:
        if args.requeue_failed:
            with transaction(engine, write=True) as conn:
                print(f"{store.requeue_failed(conn, args.topic)} failed deliveries requeued")
        if args.status:
            with transaction(engine, write=False) as conn:
                found = store.counts(conn)
            print(", ".join(f"{n} {status}" for status, n in sorted(found.items())) or "the outbox is empty")
            return 0
        worker = Worker(engine, settings.outbox, topics=[args.topic] if args.topic else None)
        try:
            if args.once:
                done = worker.drain()
                print(f"outbox: {done.done} done, {done.retrying} to retry later, {done.failed} failed")
                return 0
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: worker.stop_from_signal())
            worker.run_forever()
        finally:
            worker.close()
    finally:
        engine.dispose()
    return 0


def cmd_codes(settings: Settings, args: argparse.Namespace) -> int:
    """Administer the openIMIS code lists without the API (the same rules as PUT CodeSystem)."""
    from hifhir.setup import prepare
    from hifhir.store import codelists
    from hifhir.store.db import transaction

    engine = _engine(settings)
    prepare(settings, engine)
    try:
        with transaction(engine, write=args.codes_command != "list") as conn:
            if args.codes_command == "list":
                return _codes_list(conn, args.list_name, args.all)
            if args.codes_command == "set":
                outcome = codelists.set_code(conn, args.list_name, args.code, args.display, args.position)
                print(f"{args.list_name} {args.code}: {outcome}")
            elif args.codes_command == "deactivate":
                done = codelists.deactivate_code(conn, args.list_name, args.code)
                print(f"{args.list_name} {args.code}: {'deactivated' if done else 'already inactive'}")
            else:
                added = codelists.seed_diagnoses(conn)
                print(f"{added} diagnoses loaded" if added else "the diagnosis list is already configured")
    except codelists.CodeListError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


def _codes_list(conn, list_name: str | None, show_all: bool) -> int:  # type: ignore[no-untyped-def]
    from hifhir.store import codelists

    if list_name is None:
        for name in codelists.EDITABLE_LISTS:
            entries = codelists.list_entries(conn, name)
            active = sum(e.active for e in entries)
            print(f"{name:32} {active:5} active {len(entries) - active:5} inactive")
        return 0
    try:
        codelists.check_editable(list_name)
    except codelists.CodeListError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for entry in codelists.list_entries(conn, list_name):
        if entry.active or show_all:
            flag = "" if entry.active else "  (inactive)"
            print(f"{entry.code}\t{entry.display}{flag}")
    return 0


def _period(text: str) -> tuple[int, int]:
    """`YYYY-MM` → (year, month); ValueError with the reason otherwise."""
    year_s, sep, month_s = text.partition("-")
    if sep != "-" or len(year_s) != 4 or len(month_s) != 2 or not (year_s.isdigit() and month_s.isdigit()) \
            or not 1 <= int(month_s) <= 12:
        raise ValueError(f"--period must be a month as YYYY-MM (e.g. 2026-10), not '{text}'")
    return int(year_s), int(month_s)


def cmd_claims(settings: Settings, args: argparse.Namespace) -> int:
    """The monthly batch run (relative pricing) and the relative distributions it uses (no FHIR resource has them)."""
    from datetime import date

    from hifhir.domain.claims import batch
    from hifhir.domain.invoicing import bills_for_run
    from hifhir.fhir.kind import now_us
    from hifhir.fhir.profiles.invoice import record_versions
    from hifhir.setup import prepare
    from hifhir.store.db import transaction
    from hifhir.store.tables import is_current, product

    try:
        if args.claims_command == "batch-run":
            year, month = _period(args.period)
        else:
            percents = [Decimal(p) for p in args.percent]
    except (ValueError, InvalidOperation) as exc:
        message = str(exc) if isinstance(exc, ValueError) and str(exc) else "--percent takes numbers (0 to 100)"
        print(f"error: {message}", file=sys.stderr)
        return 1
    engine = _engine(settings)
    prepare(settings, engine)
    try:
        with transaction(engine, write=True) as conn:
            if args.claims_command == "distribution":
                product_pk = conn.execute(select(product.c.pk).where(
                    product.c.code == args.product, is_current(product))).scalar()
                if product_pk is None:
                    raise ValueError(f"no product with code '{args.product}'")
                batch.set_distribution(conn, int(product_pk), args.type, args.care, percents)
                print(f"product {args.product}: {args.type} distribution for care type {args.care} set "
                      f"({', '.join(str(p) for p in percents)} %)")
                return 0
            location_pk = None if args.location is None else batch.location_for_run(conn, args.location)
            now = now_us()
            result = batch.run(conn, year=year, month=month, location_pk=location_pk, today=date.today(), now=now)
            batch.record_claim_versions(conn, result.run_pk, now=now)
            # The facilities' claim-batch bills (domain §3.6), in the run's transaction.
            bills = bills_for_run(conn, result.run_pk, today=date.today(), now=now)
            record_versions(conn, "bill", bills, now=now, user_name=batch.BATCH_USER)
        where = "national" if args.location is None else args.location
        print(f"batch run {year}-{month:02d} ({where}): run {result.run_pk}, {result.products} products, "
              f"{result.indexes} relative indexes, {result.claims} claims valuated, remunerated {result.remunerated}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


BILLS_USER = "hifhir-bills"  # the author of the bills' versions (history), as the batch run's BATCH_USER


def _rate(text: str) -> Decimal:
    """`--rate` → a percentage above 0 and at most 100; ValueError with the reason otherwise."""
    try:
        rate = Decimal(text)
    except InvalidOperation:
        rate = Decimal("NaN")
    if not rate.is_finite() or not 0 < rate <= 100:
        raise ValueError(f"--rate must be a percentage above 0 and at most 100 (e.g. 5 or 2.5), not '{text}'")
    return rate


def cmd_bills(settings: Settings, args: argparse.Namespace) -> int:
    """The monthly bills of enrolment officers' commissions and payment-platform fees (domain/commissions.py)."""
    from datetime import date

    from hifhir.domain import commissions
    from hifhir.fhir.kind import now_us
    from hifhir.fhir.profiles.invoice import record_versions
    from hifhir.setup import prepare
    from hifhir.store.db import transaction

    try:  # bad input writes nothing: checked before the database is touched
        year, month = _period(args.period)
        rate = _rate(args.rate) if args.bills_command == "commissions" else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    engine = _engine(settings)
    prepare(settings, engine)
    try:
        with transaction(engine, write=True) as conn:
            now = now_us()
            if rate is not None:
                made = commissions.commission_bills(conn, year, month, rate, today=date.today(), now=now)
            else:
                fees = commissions.fees_bill(conn, year, month, today=date.today(), now=now)
                made = [] if fees is None else [fees]
            record_versions(conn, "bill", made, now=now, user_name=BILLS_USER)
        what = "commission bills" if rate is not None else "fees bills"
        print(f"{what} {year}-{month:02d}: {len(made)} created")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hifhir", description="hifhir health-insurance FHIR server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--migrate", action="store_true", help="migrate the database first")
    serve.add_argument("--demo-if-empty", action="store_true", help="load the demo scheme into an empty database")
    serve.add_argument("--workers", type=int, default=0, help="worker processes (default: HIFHIR_WORKERS or cores)")
    serve.add_argument("--production", action="store_true",
                       help="production mode (as HIFHIR_ENV=production): refuse demo secrets, users and CORS '*'")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="create or upgrade the schema").set_defaults(func=cmd_migrate)
    demo = sub.add_parser("demo-data", help="load the demo scheme, plus synthetic insurees, items and services")
    demo.add_argument("--insurees", type=int, default=0,
                      help="add N synthetic insurees (with villages, facilities and staff in proportion)")
    demo.add_argument("--items", type=int, default=0, help="add N synthetic medical items (Medication)")
    demo.add_argument("--services", type=int, default=0, help="add N synthetic medical services (ActivityDefinition)")
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)
    add_admin_parsers(sub)  # user, role, client
    codes = sub.add_parser("codes", help="code lists: list, set a code's display, deactivate a code")
    codes_sub = codes.add_subparsers(dest="codes_command", required=True)
    listing = codes_sub.add_parser("list", help="the editable lists, or the codes of one list")
    listing.add_argument("list_name", nargs="?", help="e.g. patient-profession, diagnosis-ICD10-level1")
    listing.add_argument("--all", action="store_true", help="include deactivated codes")
    setting = codes_sub.add_parser("set", help="add a code, or change its display (reactivates it)")
    setting.add_argument("list_name")
    setting.add_argument("code")
    setting.add_argument("display")
    setting.add_argument("--position", type=int, help="sort position (default: unchanged, or last when new)")
    deactivating = codes_sub.add_parser("deactivate", help="withdraw a code from new use (existing data keeps it)")
    deactivating.add_argument("list_name")
    deactivating.add_argument("code")
    codes_sub.add_parser("seed-diagnoses", help="load the IG's 1,910 ICD-10 diagnoses into an empty diagnosis list")
    codes.set_defaults(func=cmd_codes)
    jobs = sub.add_parser("jobs", help="run the calendar-driven jobs once (expiries; `serve` runs them hourly)")
    jobs.set_defaults(func=cmd_jobs)
    worker = sub.add_parser("worker", help="deliver the outbox (claim-AI, notifications) until SIGTERM/SIGINT "
                            "(`serve` runs one too)")
    worker.add_argument("--once", action="store_true", help="deliver what is due now, then exit")
    worker.add_argument("--topic", help="only this topic (e.g. claim-ai)")
    worker.add_argument("--requeue-failed", action="store_true",
                        help="give the failed deliveries (of --topic) a fresh set of attempts first")
    worker.add_argument("--status", action="store_true", help="print the deliveries by status and exit")
    worker.set_defaults(func=cmd_worker)
    claims = sub.add_parser("claims", help="claims: monthly batch run with relative pricing, relative distributions")
    claims_sub = claims.add_subparsers(dest="claims_command", required=True)
    batch_run = claims_sub.add_parser("batch-run", help="valuate a month's processed claims (once per location)")
    batch_run.add_argument("--period", required=True, help="the month, YYYY-MM (e.g. 2026-10)")
    batch_run.add_argument("--location", help="region or district code (default: national products)")
    distribution = claims_sub.add_parser("distribution", help="set a product's relative distribution")
    distribution.add_argument("--product", required=True, help="product code")
    distribution.add_argument("--type", required=True, choices=("M", "Q", "Y"),
                              help="M monthly (12 shares), Q quarterly (4), Y yearly (1)")
    distribution.add_argument("--care", required=True, choices=("B", "I", "O"),
                              help="B both, I in-patient (hospital), O out-patient")
    distribution.add_argument("--percent", required=True, nargs="+",
                              help="percentage of each period's allocated contributions paid out (0 to 100)")
    claims.set_defaults(func=cmd_claims)
    bills = sub.add_parser("bills", help="monthly bills: enrolment officers' commissions, payment-platform fees")
    bills_sub = bills.add_subparsers(dest="bills_command", required=True)
    commission = bills_sub.add_parser("commissions", help="bill each enrolment officer a commission on the "
                                      "contributions collected in a month (once per officer and month)")
    commission.add_argument("--period", required=True, help="the month, YYYY-MM (e.g. 2026-10), once it is over")
    commission.add_argument("--rate", required=True, help="the commission, a percentage of each contribution")
    fees = bills_sub.add_parser("fees", help="bill the payments platform's fees (HIFHIR_PAYMENT_FEE_*) on the "
                                "payments accepted in a month (once per month)")
    fees.add_argument("--period", required=True, help="the month, YYYY-MM (e.g. 2026-10), once it is over")
    bills.set_defaults(func=cmd_bills)
    sub.add_parser("rights", help="print the rights matrix (who may do what) as Markdown").set_defaults(
        func=cmd_rights)
    args = parser.parse_args(argv)
    from hifhir.store.migrate import UnknownSchemaVersion

    try:
        return int(args.func(load_settings(), args))
    except (ConfigError, UnknownSchemaVersion) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
