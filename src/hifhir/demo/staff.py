"""Enrolment officers and claim administrators (domain §2.6, §2.7, §5), with their roles and logins.

The demo scheme has 14 officers (E00001–E00014, one per village, two of them serving a neighbouring village too:
16 officer-village links; two leave on a "works to" date, each with a substitute) and one claim administrator per
health facility. At scale (`demo-data --insurees N`) every village without an officer gets one, about one officer
per 1.5 villages, and every facility without a claim administrator gets one. Each gets a login (user name = code)
with the openIMIS role Enrolment Officer or Claim Administrator.
"""

from __future__ import annotations

import functools
import random
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, exists, insert, select, update

from hifhir.auth.passwords import hash_password
from hifhir.auth.users import create_user
from hifhir.demo import resources as res
from hifhir.demo.names import FEMALE_NAMES, LAST_NAMES, MALE_NAMES
from hifhir.store.db import transaction
from hifhir.store.tables import (
    app_user,
    claim_admin,
    claim_admin_role,
    health_facility,
    is_current,
    location,
    officer,
    officer_role,
    officer_role_village,
    user_district,
)

OFFICER_ROLE = "Enrolment Officer"
CLAIM_ADMIN_ROLE = "Claim Administrator"
OFFICER_PREFIX = "E"
STAFF_CHUNK = 200  # officers (or claim administrators) per transaction at scale
_OFFICER_CODE = re.compile(rf"^{OFFICER_PREFIX}(\d+)$")
# Demo: villages (index into scheme.VILLAGES) served by the officer of another village, and officers who leave
# (days from today) handing over to the officer of a neighbouring village.
EXTRA_VILLAGES: dict[int, int] = {0: 1, 9: 10}  # E00001 also serves Darbu, E00010 Ngerengere
LEAVERS: dict[int, tuple[int, int]] = {6: (180, 7), 12: (365, 13)}  # E00007 → E00008, E00013 → E00014


@dataclass(frozen=True, slots=True)
class Login:
    """A user account for a member of staff: user name = their code."""

    username: str
    role: str
    last_name: str
    other_names: str
    district_pk: int | None
    hf_pk: int | None = None
    language: str = "en"
    # The officer / claim administrator record this login is (domain §4.1): it narrows the location scope to the
    # officer's villages or the administrator's facility.
    officer_pk: int | None = None
    claim_admin_pk: int | None = None


@dataclass(frozen=True, slots=True)
class _Person:
    last_name: str
    other_names: str
    dob: date
    phone: str
    email: str | None


def _person(rng: random.Random) -> _Person:
    female = rng.random() < 0.5
    given = rng.choice(FEMALE_NAMES if female else MALE_NAMES)
    family = rng.choice(LAST_NAMES)
    dob = date(rng.randint(1965, 1998), rng.randint(1, 12), rng.randint(1, 28))
    email = f"{given.lower()}.{family.lower()}@scheme.example" if rng.random() < 0.6 else None
    return _Person(family, given, dob, f"+2557{rng.randrange(10_000_000, 99_999_999)}", email)


def claim_admin_code(hf_code: str, taken: set[str]) -> str:
    """openIMIS-style claim administrator codes of 8 characters from the facility's: RAHOS001 → RHOS0011,
    JMHC001 → JMHC0011; the last digit counts up when that code is taken."""
    stem = hf_code[0] + hf_code[2:] if len(hf_code) >= 8 else hf_code
    stem = stem[:7]
    for n in range(1, 10):
        if stem + str(n) not in taken:
            taken.add(stem + str(n))
            return stem + str(n)
    for n in range(10, 10_000):  # a crowded stem: longer codes (the column takes 50 characters)
        if f"{stem}{n}" not in taken:
            taken.add(f"{stem}{n}")
            return f"{stem}{n}"
    raise RuntimeError(f"no free claim administrator code for {hf_code}")


# --- the demo scheme ------------------------------------------------------------------------------------------


Create = Callable[[str, dict[str, Any]], tuple[int, str]]


def demo_officers(create: Create, rng: random.Random, villages: list[tuple[str, str]], ids: dict[str, str],
                  pks: dict[str, int], place: Callable[[str], res.Place], today: date) -> list[Login]:
    """One officer per village (E00001…), a role per officer listing the villages served."""
    officer_ids: list[str] = []
    logins: list[Login] = []
    for i, (vcode, vname) in enumerate(villages, start=1):
        p = _person(rng)
        code = f"{OFFICER_PREFIX}{i:05d}"
        officer_pk, oid = create("enrolment-officer", res.practitioner_resource(
            "EO", code, p.last_name, p.other_names, p.dob, phone=p.phone, email=p.email,
            district_id=ids[vcode[:4]], place=place(vcode[:4]), address_line=f"Village office, {vname}"))
        officer_ids.append(oid)
        logins.append(Login(code, OFFICER_ROLE, p.last_name, p.other_names, pks[vcode[:4]], officer_pk=officer_pk))
    for i, (vcode, _) in enumerate(villages):
        served = [ids[vcode]] + ([ids[villages[EXTRA_VILLAGES[i]][0]]] if i in EXTRA_VILLAGES else [])
        works_to = substitute = None
        if i in LEAVERS:
            days, successor = LEAVERS[i]
            works_to, substitute = today + timedelta(days=days), officer_ids[successor]
        create("enrolment-officer-role", res.officer_role_resource(
            logins[i].username, officer_ids[i], served, works_to=works_to, substitute_id=substitute))
    return logins


def demo_claim_admins(create: Create, rng: random.Random, facilities: Iterable[tuple[str, int, str, int | None]],
                      taken: set[str]) -> list[Login]:
    """One claim administrator per facility `(code, pk, id, district pk)`, with a role at it; `taken`: the codes
    in use (updated)."""
    logins: list[Login] = []
    for hf_code, hf_pk, hf_id, district_pk in facilities:
        p = _person(rng)
        code = claim_admin_code(hf_code, taken)
        ca_pk, ca_id = create("claim-admin", res.practitioner_resource(
            "CA", code, p.last_name, p.other_names, p.dob, phone=p.phone, email=p.email))
        create("claim-admin-role", res.claim_admin_role_resource(code, ca_id, hf_id))
        logins.append(Login(code, CLAIM_ADMIN_ROLE, p.last_name, p.other_names, district_pk, hf_pk=hf_pk,
                            claim_admin_pk=ca_pk))
    return logins


@functools.cache
def _password_hash(password: str) -> str:
    """argon2 is slow on purpose: the shared demo password is hashed once per process."""
    return hash_password(password)


def create_logins(conn: Connection, logins: Iterable[Login], password: str) -> int:
    """Create the users that do not exist yet (users are not versioned: an existing one is kept); returns how
    many were created."""
    todo = list(logins)
    taken = set(conn.execute(select(app_user.c.username).where(
        app_user.c.username.in_([login.username for login in todo]))).scalars()) if todo else set()
    created = 0
    for login in todo:
        if login.username in taken:
            continue
        taken.add(login.username)
        user_pk = create_user(conn, login.username, password, roles=[login.role], last_name=login.last_name,
                              other_names=login.other_names, password_hash=_password_hash(password))
        user_type = ("officer" if login.officer_pk is not None
                     else "claim_admin" if login.claim_admin_pk is not None else "interactive")
        if login.hf_pk is not None or login.language != "en" or user_type != "interactive":
            conn.execute(update(app_user).where(app_user.c.pk == user_pk).values(
                hf_pk=login.hf_pk, language=login.language, user_type=user_type, officer_pk=login.officer_pk,
                claim_admin_pk=login.claim_admin_pk))
        if login.district_pk is not None and user_type == "interactive":
            conn.execute(insert(user_district).values(user_pk=user_pk, location_pk=login.district_pk))
        created += 1
    return created


# --- at scale -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Village:
    pk: int
    id: str
    name: str
    district_pk: int


def _officer_groups(villages: list[_Village], rng: random.Random) -> list[list[_Village]]:
    """Villages grouped per officer: 1 or 2 villages of one district each, 1.5 on average (domain §5)."""
    groups: list[list[_Village]] = []
    two = rng.random() < 0.5
    i = 0
    while i < len(villages):
        group = [villages[i]]
        if two and i + 1 < len(villages) and villages[i + 1].district_pk == villages[i].district_pk:
            group.append(villages[i + 1])
        groups.append(group)
        i += len(group)
        two = not two
    return groups


def ensure_staff(engine: Engine, rng: random.Random, password: str, *, progress: bool = True) -> None:
    """Officers for the villages no current officer role serves, a claim administrator for each facility without
    one, and their logins; written through the kinds like the demo scheme."""
    from hifhir.demo.scheme import SchemeWriter

    with engine.connect() as conn:
        served = select(officer_role_village.c.location_pk).select_from(
            officer_role_village.join(officer_role, officer_role.c.pk == officer_role_village.c.role_pk)).where(
            is_current(officer_role), officer_role_village.c.location_pk == location.c.pk)
        villages = [_Village(r.pk, r.id, r.name, r.district_pk) for r in conn.execute(
            select(location.c.pk, location.c.id, location.c.name, location.c.district_pk)
            .where(location.c.type == "V", is_current(location), ~exists(served))
            .order_by(location.c.district_pk, location.c.parent_pk, location.c.pk))]
        staffed = select(claim_admin_role.c.pk).where(is_current(claim_admin_role),
                                                      claim_admin_role.c.hf_pk == health_facility.c.pk)
        facilities = conn.execute(
            select(health_facility.c.code, health_facility.c.pk, health_facility.c.id,
                   health_facility.c.location_pk)
            .where(is_current(health_facility), ~exists(staffed)).order_by(health_facility.c.pk)).all()
        if not villages and not facilities:
            return
        district_pks = {v.district_pk for v in villages}
        region = location.alias("region")
        districts = {r.pk: (r.id, res.Place(r.region, r.name)) for r in conn.execute(
            select(location.c.pk, location.c.id, location.c.name, region.c.name.label("region"))
            .select_from(location.join(region, region.c.pk == location.c.region_pk))
            .where(location.c.pk.in_(district_pks)))} if district_pks else {}
        numbers = [int(m.group(1)) for code in conn.execute(select(officer.c.code)).scalars()
                   if (m := _OFFICER_CODE.match(code))]
        role_codes = set(conn.execute(select(officer_role.c.code).where(is_current(officer_role))).scalars())
        ca_codes = set(conn.execute(select(claim_admin.c.code)).scalars())
        ca_codes |= set(conn.execute(select(claim_admin_role.c.code)).scalars())
    groups = _officer_groups(villages, rng)
    if progress:
        print(f"staff: {len(groups)} enrolment officers for {len(villages)} villages, "
              f"{len(facilities)} claim administrators", file=sys.stderr, flush=True)
    next_number = max(numbers, default=0) + 1
    for start in range(0, len(groups), STAFF_CHUNK):
        with transaction(engine, write=True) as conn:
            w = SchemeWriter.open(conn)
            logins: list[Login] = []
            for group in groups[start:start + STAFF_CHUNK]:
                code = f"{OFFICER_PREFIX}{next_number:05d}"
                while code in role_codes:  # a role created through the API may hold the code already
                    next_number += 1
                    code = f"{OFFICER_PREFIX}{next_number:05d}"
                next_number += 1
                p = _person(rng)
                district_id, place = districts[group[0].district_pk]
                officer_pk, oid = w.create("enrolment-officer", res.practitioner_resource(
                    "EO", code, p.last_name, p.other_names, p.dob, phone=p.phone, email=p.email,
                    district_id=district_id, place=place, address_line=f"Village office, {group[0].name}"))
                w.create("enrolment-officer-role", res.officer_role_resource(code, oid, [v.id for v in group]))
                logins.append(Login(code, OFFICER_ROLE, p.last_name, p.other_names, group[0].district_pk,
                                    officer_pk=officer_pk))
            w.flush()
            create_logins(conn, logins, password)
    for start in range(0, len(facilities), STAFF_CHUNK):
        with transaction(engine, write=True) as conn:
            w = SchemeWriter.open(conn)
            chunk = [(f.code, f.pk, f.id, f.location_pk) for f in facilities[start:start + STAFF_CHUNK]]
            logins = demo_claim_admins(w.create, rng, chunk, ca_codes)
            w.flush()
            create_logins(conn, logins, password)
