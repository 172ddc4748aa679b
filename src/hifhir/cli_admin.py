"""The `hifhir user|role|client` commands: user, role and OAuth2 client administration (the rules live in
auth/admin.py and auth/clients.py, shared with the admin API). Running servers see every change within about a
second (auth epoch)."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from hifhir.auth.admin import USER_TYPES
from hifhir.config import Settings


def add_parsers(sub: Any) -> None:
    user = sub.add_parser("user", help="user administration: create, list, disable/enable, passwords, roles, tokens")
    users = user.add_subparsers(dest="user_command", required=True)
    create = users.add_parser("create", help="create a user (the password policy applies)")
    create.add_argument("username")
    create.add_argument("--password", help="(else read from the terminal, or one line from stdin; technical users, "
                        "which only act through their OAuth2 clients, need none)")
    create.add_argument("--type", choices=USER_TYPES,
                        help="default: officer with --officer, claim_admin with --claim-admin, else interactive")
    create.add_argument("--role", action="append", help="role name (repeatable); an interactive user without "
                        "--role gets IMIS Administrator")
    create.add_argument("--district", action="append", help="district code limiting an interactive user "
                        "(repeatable; none: every location)")
    create.add_argument("--officer", metavar="CODE", help="the enrolment officer this login is (its villages)")
    create.add_argument("--claim-admin", metavar="CODE", help="the claim administrator this login is")
    create.add_argument("--hf", metavar="CODE", help="health facility the user is bound to")
    create.add_argument("--last-name", default="")
    create.add_argument("--other-names", default="")
    create.add_argument("--email")
    create.set_defaults(func=cmd_user)
    for name, text in (("disable", "disable a user: its tokens stop working at once"),
                       ("enable", "enable a disabled user"),
                       ("revoke-tokens", "refuse every token issued to the user so far"),
                       ("set-password", "set a user's password, read from the terminal or one line of stdin")):
        command = users.add_parser(name, help=text)
        command.add_argument("username")
        command.set_defaults(func=cmd_user)
    users.add_parser("list", help="the users, their type, state and roles").set_defaults(func=cmd_user)
    roles = users.add_parser("roles", help="add or remove roles of a user")
    roles.add_argument("username")
    roles.add_argument("--add", action="append", default=[], metavar="ROLE")
    roles.add_argument("--remove", action="append", default=[], metavar="ROLE")
    roles.set_defaults(func=cmd_user)

    role = sub.add_parser("role", help="role administration: list, create, change rights")
    role_sub = role.add_subparsers(dest="role_command", required=True)
    role_sub.add_parser("list", help="the roles with their rights").set_defaults(func=cmd_role)
    role_create = role_sub.add_parser("create", help="create a role")
    role_create.add_argument("name")
    role_create.add_argument("--rights", default="", help="right codes, e.g. 101001,101002")
    role_create.set_defaults(func=cmd_role)
    rights = role_sub.add_parser("rights", help="add or remove rights of a role")
    rights.add_argument("name")
    rights.add_argument("--add", default="", help="right codes to add, e.g. 101001,101002")
    rights.add_argument("--remove", default="", help="right codes to remove")
    rights.set_defaults(func=cmd_role)

    client = sub.add_parser("client", help="OAuth2 system clients: create, disable, enable, list")
    client_sub = client.add_subparsers(dest="client_command", required=True)
    client_create = client_sub.add_parser("create", help="register a client acting as a technical user")
    client_create.add_argument("client_id")
    client_create.add_argument("--user", required=True, help="the technical user whose rights the client has")
    client_create.add_argument("--scopes", required=True, help='SMART system scopes it may be granted, e.g. '
                               '"system/*.read" or "system/Patient.rs system/Claim.cr"')
    client_create.add_argument("--jwks", type=Path, help="JWK set file of its public keys (private_key_jwt); "
                               "without it a secret is generated and printed once")
    client_create.add_argument("--name", default="")
    client_create.set_defaults(func=cmd_client)
    for name in ("disable", "enable"):
        command = client_sub.add_parser(name, help=f"{name} a client (disable: its tokens stop working at once)")
        command.add_argument("client_id")
        command.set_defaults(func=cmd_client)
    client_sub.add_parser("list", help="the clients").set_defaults(func=cmd_client)


def cmd_user(settings: Settings, args: argparse.Namespace) -> int:
    from hifhir.auth import admin

    command = args.user_command
    name = getattr(args, "username", "")
    if command == "list":
        return _run(settings, False, lambda conn: _print_users(admin.list_users(conn)))
    if command == "create":
        password = "" if args.type == "technical" and not args.password else \
            _password(args.password, f"password for {name}: ")
        new = admin.NewUser(username=name, password=password, user_type=args.type, roles=args.role or [],
                            districts=args.district or [], officer=args.officer, claim_admin=args.claim_admin,
                            hf=args.hf, last_name=args.last_name, other_names=args.other_names, email=args.email)
        return _run(settings, True, lambda conn: admin.create_account(
            conn, new, min_length=settings.password_min_length, default_role=admin.DEFAULT_ROLE),
            f"user {name} created")
    if command in ("disable", "enable"):
        return _run(settings, True, lambda conn: admin.set_active(conn, name, command == "enable"),
                    f"user {name} {command}d")
    if command == "revoke-tokens":
        return _run(settings, True, lambda conn: admin.revoke_tokens(conn, name),
                    f"tokens of {name} issued so far are refused")
    if command == "set-password":
        password = _password(None, f"new password for {name}: ")
        return _run(settings, True, lambda conn: admin.set_password(
            conn, name, password, min_length=settings.password_min_length), f"password of {name} changed")
    return _run(settings, True, lambda conn: admin.change_roles(conn, name, add=args.add, remove=args.remove),
                f"roles of {name} changed")


def cmd_role(settings: Settings, args: argparse.Namespace) -> int:
    from hifhir.auth import admin

    command = args.role_command
    if command == "list":
        return _run(settings, False, lambda conn: _print_roles(admin.list_roles(conn)))
    try:
        if command == "create":
            codes = admin.parse_rights(args.rights)
            return _run(settings, True, lambda conn: admin.create_role(conn, args.name, codes),
                        f"role {args.name} created")
        add, remove = admin.parse_rights(args.add), admin.parse_rights(args.remove)
    except admin.AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return _run(settings, True, lambda conn: admin.change_role(conn, args.name, add=add, remove=remove),
                f"rights of {args.name} changed")


def cmd_client(settings: Settings, args: argparse.Namespace) -> int:
    from hifhir.auth import clients

    command = args.client_command
    if command == "list":
        return _run(settings, False, lambda conn: _print_clients(clients.list_clients(conn)))
    if command in ("disable", "enable"):
        return _run(settings, True, lambda conn: clients.set_client_active(conn, args.client_id, command == "enable"),
                    f"client {args.client_id} {command}d")
    try:
        jwks = args.jwks.read_text() if args.jwks else None
    except OSError as exc:
        print(f"error: cannot read {args.jwks}: {exc.strerror}", file=sys.stderr)
        return 1
    secrets: list[str | None] = []
    code = _run(settings, True, lambda conn: secrets.append(clients.create_client(
        conn, args.client_id, args.user, args.scopes, jwks=jwks, name=args.name)), f"client {args.client_id} created")
    if code == 0 and secrets and secrets[0]:
        print(f"client secret (shown once, store it now): {secrets[0]}")
    return code


# --- plumbing -------------------------------------------------------------------------------------------------------


def _run(settings: Settings, write: bool, action: Callable[[Connection], Any], done: str | None = None) -> int:
    from hifhir.auth.admin import AdminError
    from hifhir.auth.clients import ClientError
    from hifhir.setup import prepare
    from hifhir.store.db import make_engine, transaction

    engine = make_engine(settings.database_url)
    try:
        prepare(settings, engine)
        with transaction(engine, write=write) as conn:
            action(conn)
    except (AdminError, ClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if done:
        print(done)
    return 0


def _password(given: str | None, prompt: str) -> str:
    if given:
        return given
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\r\n")


def _print_users(users: list[dict[str, Any]]) -> None:
    for u in users:
        state = "active" if u["active"] else "disabled"
        where = ",".join(u["districts"]) or u["officer"] or u["claimAdmin"] or "-"
        print(f"{u['username']}\t{u['type']}\t{state}\t{where}\t{', '.join(u['roles']) or '-'}")


def _print_roles(roles: list[dict[str, Any]]) -> None:
    for r in roles:
        flags = "system" if r["system"] else "custom"
        if r["blocked"]:
            flags += ",blocked"
        print(f"{r['name']}\t{flags}\t{r['users']} users\t{','.join(str(c) for c in r['rights'])}")


def _print_clients(found: list[dict[str, Any]]) -> None:
    for c in found:
        state = "active" if c["active"] else "disabled"
        print(f"{c['clientId']}\t{c['user']}\t{state}\t{c['authentication']}\t{c['scopes']}")
