"""A synthetic population at scale (10⁵–10⁶ insurees) on top of the demo scheme.

Structure (few thousand rows: locations, health facilities) is created through the kinds' `write()` like the
demo scheme. The population itself is bulk-inserted: going through `write()` costs ~15 queries per insuree,
far too slow for a million rows. The bulk path inserts entity rows with the denormalised columns exactly as
`PatientKind.write` / `GroupKind.write` set them (normalised names, is_head, family_pk, village_pk,
address_use…), at version 1 as `WriteContext.insert` does, then lets `WriteContext.flush()` render the batch with
the kinds' own `render()` and append the history rows. So the stored FHIR versions are those the API would have
produced, by construction.

Families are enrolled the same way (policies.py): policy, insuree-policy, contribution and coverage rows as
`ContractKind._create` writes them, with `insuree.has_active_policy` set before the flush renders the Patients
and Groups, and the Contracts and Coverages rendered by their kinds. Regions where no product is sold (the
new ones) first get the demo's two products.

One transaction per batch keeps memory flat and lets an interrupted run leave only whole families behind.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, func, insert, select, text, update

from hifhir.demo import catalogue
from hifhir.demo import resources as res
from hifhir.demo.catalogue import ensure_price_lists
from hifhir.demo.names import FEMALE_NAMES, LAST_NAMES, MALE_NAMES, REGION_NAMES, place_name
from hifhir.demo.policies import Planned, PolicyPlanner
from hifhir.demo.progress import Progress
from hifhir.demo.scheme import DEMO_PASSWORD, DEMO_USER_NAME, SchemeWriter, load_demo_scheme, product_period
from hifhir.demo.staff import ensure_staff
from hifhir.fhir.kind import CS, WriteContext
from hifhir.fhir.searchparams import normalise_text
from hifhir.store.db import transaction
from hifhir.store.tables import (
    code_list_entry,
    coverage,
    family,
    health_facility,
    insuree,
    insuree_policy,
    is_current,
    location,
    medical_item,
    medical_service,
    policy,
    premium,
    product,
)

INSUREES_PER_VILLAGE = 300  # domain §5 scale-up: a village of a few hundred enrolled people
WARDS_PER_DISTRICT = 25
DISTRICTS_PER_REGION = 6
BATCH_INSUREES = 5000  # one transaction; ~1,700 families
STRUCTURE_CHUNK = 400  # locations / facilities per transaction on the generic write path
DIGITS36 = "123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # child-code digits: 35 children per parent
# Household size 1..6, mean ≈ 3 (domain §5: "about 3 insurees per family").
SIZE_WEIGHTS = ((1, 0.18), (2, 0.22), (3, 0.25), (4, 0.18), (5, 0.10), (6, 0.07))
FIRST_BIRTH_YEAR, LAST_BIRTH_YEAR = 1940, 2024
CHF_SPACE = 99_999_999  # N in 1..99 999 999 (8 digits, not all zero)
CHF_FIRST_GENERATED = 20_000_000  # synthetic numbers live above the demo's (10 000 000..19 999 999)
CHF_MAX_GAP = 9
GROUP_TYPE_SYSTEM = CS + "group-type"  # what GroupKind.write stores for a coding from the IG CodeSystem


# --- keys -----------------------------------------------------------------------------------------------------


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7): 48-bit Unix milliseconds, then 74 random bits.

    The ids land in unique indexes (entity id, history res_id); time-ordered values append where random v4
    values would dirty a page per row, which at a million rows made the SQLite load I/O-bound. The random part
    comes from os.urandom, not the seeded generator, so runs with the same seed never repeat an id.
    """
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits, 74 used
    value = ((time.time_ns() // 1_000_000) << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64 \
        | (0b10 << 62) | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --- insurance numbers ------------------------------------------------------------------------------------


class ChfSequence:
    """Increasing valid CHFIDs with small random gaps, like numbers issued from pre-printed card stock.

    Increasing, because random keys are what makes a bulk load slow at scale: every batch would dirty pages all
    over the unique index (and SQLite writes each dirty page to the WAL at every commit); appended keys touch
    the right edge only. No memory of the numbers handed out is needed, and a rerun starts after the highest
    generated number. Numbers entered through the API can still collide; the per-batch check skips them.
    """

    def __init__(self, seed: int, after: int, count: int) -> None:
        self.rng = random.Random(f"chf-{seed}-{after}")
        self.n = max(after, CHF_FIRST_GENERATED - 1)
        room = CHF_SPACE - self.n
        if room < count:
            raise RuntimeError(f"only {room:,} insurance numbers left above {self.n:08d}; cannot add {count:,}")
        # Mean gap (1 + max_gap) / 2 keeps `count` numbers inside the room left; `left` caps each gap so the
        # numbers still to come always fit, whatever the draws.
        self.max_gap = max(1, min(CHF_MAX_GAP, 2 * room // max(count, 1) - 1))
        self.left = count

    def take(self, count: int) -> list[str]:
        out = []
        randint, max_gap, n = self.rng.randint, self.max_gap, self.n
        for _ in range(count):
            self.left -= 1
            slack = CHF_SPACE - n - max(self.left, 0)
            n += min(randint(1, max_gap), slack) if max_gap > 1 and slack > 1 else 1
            if n > CHF_SPACE:
                raise RuntimeError("insurance number space exhausted")
            out.append(f"{n:08d}{n % 7}")
        self.n = n
        return out


def highest_generated_chf(conn: Connection) -> int:
    """The N of the highest 9-digit number at or above CHF_FIRST_GENERATED (0 if none)."""
    floor = f"{CHF_FIRST_GENERATED:08d}0"
    for value in conn.execute(select(insuree.c.chf_id).where(
            func.length(insuree.c.chf_id) == 9, insuree.c.chf_id >= floor).order_by(
            insuree.c.chf_id.desc()).limit(100)).scalars():
        if value.isdigit():
            return int(value[:8])
    return 0


def _free_chf_ids(conn: Connection, seq: ChfSequence, count: int) -> list[str]:
    """`count` numbers used neither by a current insuree nor as a current family code.

    The candidates are increasing 9-digit strings, so one range scan per table finds any that are taken
    (an IN list of thousands of values would cost more to send and parse than to run)."""
    result: list[str] = []
    while len(result) < count:
        candidates = seq.take(count - len(result))
        low, high = candidates[0], candidates[-1]
        taken = set(conn.execute(select(insuree.c.chf_id).where(
            insuree.c.chf_id.between(low, high), is_current(insuree))).scalars())
        taken.update(conn.execute(select(family.c.code).where(
            family.c.code.between(low, high), is_current(family))).scalars())
        result.extend(c for c in candidates if c not in taken)
    return result


# --- structure: villages (and their wards, districts, regions, facilities) --------------------------------


@dataclass
class _District:
    pk: int
    id: str
    code: str
    name: str
    region: str
    room: int  # how many more wards it takes: up to WARDS_PER_DISTRICT, and only as many as free codes
    region_code: str = ""


@dataclass
class _Village:
    pk: int
    name: str
    district_pk: int


def _next_code(prefix: str, taken: set[str]) -> str | None:
    for digit in DIGITS36:
        code = prefix + digit
        if code not in taken:
            taken.add(code)
            return code
    return None


def _ensure_villages(engine: Engine, rng: random.Random, new_insurees: int, progress: bool) -> None:
    """Add wards of 2–3 villages until there is about one village per INSUREES_PER_VILLAGE insurees.

    Codes follow the demo's hierarchical pattern (R1D1M1V1) with one base-36 digit per level, so they stay
    within the 8 characters of a location code: wards go into the existing districts up to
    WARDS_PER_DISTRICT, then into new districts of new regions.
    """
    with engine.connect() as conn:
        population = conn.execute(select(func.count()).select_from(insuree).where(
            is_current(insuree))).scalar_one()
        villages = conn.execute(select(func.count()).select_from(location).where(
            location.c.type == "V", is_current(location))).scalar_one()
        missing = math.ceil((population + new_insurees) / INSUREES_PER_VILLAGE) - villages
        if missing <= 0:
            return
        codes = set(conn.execute(select(location.c.code).where(is_current(location))).scalars())
        regions = {r.pk: r for r in conn.execute(
            select(location.c.pk, location.c.code, location.c.name).where(
                location.c.type == "R", is_current(location)))}
        ward_counts = dict(conn.execute(select(location.c.parent_pk, func.count()).where(
            location.c.type == "W", is_current(location)).group_by(location.c.parent_pk)).all())
        districts = [
            _District(d.pk, d.id, d.code, d.name, regions[d.region_pk].name,
                      min(WARDS_PER_DISTRICT - ward_counts.get(d.pk, 0),
                          sum(f"{d.code}M{digit}" not in codes for digit in DIGITS36)))
            for d in conn.execute(select(location).where(
                location.c.type == "D", is_current(location)).order_by(location.c.pk))
            if len(d.code) <= 4 and d.region_pk in regions  # longer codes leave no room for W and V digits
        ]
        hf_codes = set(conn.execute(select(health_facility.c.code)).scalars())

    # The plan: one (district, village count) per new ward; the new regions and districts it needs are
    # collected on the way and created first.
    plan: list[tuple[_District, int]] = []
    remaining = missing
    pool = iter(districts)
    new_regions: list[tuple[str, str]] = []
    new_districts: list[_District] = []
    current: _District | None = next(pool, None)
    region_left = 0
    region: tuple[str, str] | None = None
    while remaining > 0:
        if current is None or current.room <= 0:
            current = next(pool, None)
            if current is None:
                if region is None or region_left == 0:
                    code = _next_code("R", codes)
                    if code is None:
                        raise RuntimeError("no free region code left (R1..RZ)")
                    name = REGION_NAMES[len(new_regions) % len(REGION_NAMES)]
                    region = (code, name)
                    new_regions.append(region)
                    region_left = DISTRICTS_PER_REGION
                dcode = _next_code(region[0] + "D", codes)
                if dcode is None:
                    region_left = 0
                    continue
                region_left -= 1
                current = _District(0, "", dcode, place_name(rng), region[1], WARDS_PER_DISTRICT, region[0])
                new_districts.append(current)
            continue
        villages_in_ward = min(remaining, rng.choice((2, 3)))
        plan.append((current, villages_in_ward))
        current.room -= 1
        remaining -= villages_in_ward

    if progress:
        print(f"structure: {len(new_regions)} regions, {len(new_districts)} districts, {len(plan)} wards, "
              f"{missing} villages, {3 * len(new_districts)} health facilities", file=sys.stderr, flush=True)
    _create_structure(engine, rng, new_regions, new_districts, plan, codes, hf_codes)


def _create_structure(engine: Engine, rng: random.Random, new_regions: list[tuple[str, str]],
                      new_districts: list[_District], plan: list[tuple[_District, int]], codes: set[str],
                      hf_codes: set[str]) -> None:
    region_ids: dict[str, str] = {}
    with transaction(engine, write=True) as conn:
        w = SchemeWriter.open(conn)
        for code, name in new_regions:
            region_ids[code] = w.create("location", res.location_resource(code, name, "R", None))[1]
        existing_regions = dict(conn.execute(select(location.c.code, location.c.id).where(
            location.c.type == "R", is_current(location))).all())
        for d in new_districts:
            d.pk, d.id = w.create("location", res.location_resource(
                d.code, d.name, "D", region_ids.get(d.region_code) or existing_regions[d.region_code]))
            for level, care, label in (("H", "B", "District Hospital"), ("C", "O", "Health Centre"),
                                       ("D", "O", "Dispensary")):
                hf_code = _hf_code(d.name, level, hf_codes)
                w.create("health-facility", res.health_facility_resource(
                    hf_code, f"{d.name} {label}", level, care, "G", d.id, res.Place(d.region, d.name),
                    phone=f"+2552{rng.randrange(10_000_000, 99_999_999)}"))
        w.flush()

    # Wards and villages: thousands of them, in chunks so one transaction stays small.
    todo = list(plan)
    while todo:
        chunk, todo = todo[: STRUCTURE_CHUNK // 4], todo[STRUCTURE_CHUNK // 4:]
        with transaction(engine, write=True) as conn:
            w = SchemeWriter.open(conn)
            for district, count in chunk:
                ward_code = _next_code(district.code + "M", codes)
                if ward_code is None:
                    continue  # codes taken meanwhile (planned from free codes): a few villages fewer
                ward_name = place_name(rng)
                _, ward_id = w.create("location", res.location_resource(
                    ward_code, ward_name, "W", district.id))
                for _ in range(count):
                    village_code = _next_code(ward_code + "V", codes)
                    if village_code is None:
                        break
                    w.create("location", res.location_resource(village_code, place_name(rng), "V", ward_id))
            w.flush()


def _hf_code(name: str, level: str, taken: set[str]) -> str:
    """openIMIS-style codes: two letters of the district, the level, a number (RAHOS001, JMHC001, UPDS001)."""
    stem = name[:2].upper() + {"H": "HOS", "C": "HC", "D": "DS"}[level]
    for n in range(1, 1000):
        code = f"{stem}{n:03d}"
        if code not in taken:
            taken.add(code)
            return code
    raise RuntimeError(f"no free health facility code for {stem}")


# --- products for the new regions ---------------------------------------------------------------------------


def _ensure_products(engine: Engine, today: date, progress: bool) -> None:
    """The demo's two products (Fixed Cycle and Basic Cover, covering the demo's items and services) for every
    region where no product is sold (none of its own, none national), so that its families can be enrolled.
    Written through the insurance-plan kind like the demo's."""
    with engine.connect() as conn:
        sold_in = set(conn.execute(select(product.c.location_pk).where(is_current(product))).scalars())
        if None in sold_in:
            return
        regions = conn.execute(select(location.c.id, location.c.name).where(
            location.c.type == "R", is_current(location), location.c.pk.not_in(sold_in)).order_by(
            location.c.pk)).all()
        if not regions:
            return
        codes = set(conn.execute(select(product.c.code)).scalars())
        item_codes = [i.code for i in catalogue.demo_items()]
        service_codes = [s.code for s in catalogue.DEMO_SERVICES if s.code not in catalogue.UNCOVERED_SERVICES]
        item_ids = list(conn.execute(select(medical_item.c.id).where(
            medical_item.c.code.in_(item_codes), is_current(medical_item)).order_by(medical_item.c.code)).scalars())
        service_ids = list(conn.execute(select(medical_service.c.id).where(
            medical_service.c.code.in_(service_codes), is_current(medical_service)).order_by(
            medical_service.c.code)).scalars())
    if progress:
        print(f"products: 2 for each of {len(regions)} regions", file=sys.stderr, flush=True)
    sold_from, sold_to = product_period(today)
    with transaction(engine, write=True) as conn:
        w = SchemeWriter.open(conn)
        for region in regions:
            suffix = ("".join(c for c in region.name.upper() if c.isalpha()) + "XX")[:2]
            number = 1
            while {f"FC{suffix}{number:04d}", f"BC{suffix}{number:04d}"} & codes:
                number += 1
            ids: dict[str, str] = {}
            for spec in catalogue.regional_products(region.name, suffix, number):
                codes.add(spec.code)
                ids[spec.code] = w.create("insurance-plan", res.insurance_plan_resource(
                    spec, region.id, sold_from, sold_to, conversion_id=ids[spec.conversion] if spec.conversion
                    else None, item_ids=item_ids, service_ids=service_ids))[1]
        w.flush()


# --- the population ---------------------------------------------------------------------------------------


@dataclass
class _Lists:
    """The configured code lists (an implementation may have edited them): codes are drawn from these."""

    education: list[str]
    profession: list[str]
    id_types: list[str]
    relationships: set[str]
    family_types: list[str]
    confirmation_types: list[str]

    @classmethod
    def load(cls, conn: Connection) -> _Lists:
        lists: dict[str, list[str]] = {}
        for row in conn.execute(select(code_list_entry.c.list_name, code_list_entry.c.code).where(
                code_list_entry.c.active.is_(True)).order_by(code_list_entry.c.sort_order)):
            lists.setdefault(row.list_name, []).append(row.code)
        return cls(lists.get("patient-education-level", []), lists.get("patient-profession", []),
                   lists.get("patient-identification-type", []),
                   set(lists.get("patient-contact-relationship", [])),
                   lists.get("group-type", []), lists.get("group-confirmation-type", []))

    def relationship(self, code: str) -> str | None:
        return code if code in self.relationships else None


@dataclass
class _Batch:
    families: list[dict[str, Any]] = field(default_factory=list)
    members: list[list[dict[str, Any]]] = field(default_factory=list)  # per family, head first
    size: int = 0


class _Generator:
    """Draws households. Everything random comes from one seeded Random, except the UUIDs (which must not
    repeat when the same seed is run twice)."""

    def __init__(self, rng: random.Random, lists: _Lists, villages: list[_Village],
                 hfs_by_district: dict[int, list[int]]) -> None:
        self.rng = rng
        self.lists = lists
        self.villages = villages
        # Villages differ in size: weights 0.5–1.5 around the mean of INSUREES_PER_VILLAGE.
        weights = [rng.uniform(0.5, 1.5) for _ in villages]
        self.cum_weights = [0.0] * len(weights)
        total = 0.0
        for i, wgt in enumerate(weights):
            total += wgt
            self.cum_weights[i] = total
        self.hfs_by_district = hfs_by_district
        self.sizes = [s for s, _ in SIZE_WEIGHTS]
        self.size_cum: list[float] = []
        acc = 0.0
        for _, p in SIZE_WEIGHTS:
            acc += p
            self.size_cum.append(acc)
        self.first_day = date(FIRST_BIRTH_YEAR, 1, 1).toordinal()
        self.last_day = min(date(LAST_BIRTH_YEAR, 12, 31), date.today()).toordinal()

    def batches(self, total: int, batch_size: int) -> Iterator[_Batch]:
        batch = _Batch()
        left = total
        while left > 0:
            size = min(left, self.rng.choices(self.sizes, cum_weights=self.size_cum)[0])
            fam, members = self.household(size)
            batch.families.append(fam)
            batch.members.append(members)
            batch.size += size
            left -= size
            if batch.size >= batch_size:
                yield batch
                batch = _Batch()
        if batch.families:
            yield batch

    def _dob(self, first_year: int, last_year: int) -> date:
        first = max(date(max(first_year, FIRST_BIRTH_YEAR), 1, 1).toordinal(), self.first_day)
        last = min(date(min(last_year, LAST_BIRTH_YEAR), 12, 31).toordinal(), self.last_day)
        return date.fromordinal(self.rng.randint(first, max(first, last)))

    def household(self, size: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        rng = self.rng
        village = self.villages[_bisect(self.cum_weights, rng.random() * self.cum_weights[-1])]
        surname = rng.choice(LAST_NAMES)
        has_spouse = size >= 2 and rng.random() < 0.85
        # Couples are mostly headed by the man (openIMIS practice); lone heads are half women, half men, so
        # the genders stay balanced overall.
        head_gender = "M" if rng.random() < (0.8 if has_spouse else 0.5) else "F"
        head_dob = self._dob(FIRST_BIRTH_YEAR, 2004)
        lists = self.lists
        # (gender, surname, dob, relationship, marital) per member, head first
        roles: list[tuple[str, str, date, str | None, str]] = []
        alone = rng.choice("SWD") if rng.random() < 0.4 else "S"
        roles.append((head_gender, surname, head_dob, None, "M" if has_spouse else alone))
        if has_spouse:
            spouse_year = min(head_dob.year + rng.randint(-8, 8), LAST_BIRTH_YEAR - 18)
            spouse_surname = surname if rng.random() < 0.7 else rng.choice(LAST_NAMES)
            roles.append(("F" if head_gender == "M" else "M", spouse_surname,
                          self._dob(spouse_year, spouse_year), lists.relationship("8"), "M"))
        while len(roles) < size:
            if size >= 5 and len(roles) == size - 1 and head_dob.year >= 1960 and rng.random() < 0.3:
                grand_year = head_dob.year - rng.randint(18, 35)  # a grandparent living with the family
                roles.append((rng.choice("MF"), surname, self._dob(grand_year, grand_year + 1),
                              lists.relationship("5"), "W"))
                continue
            child_dob = self._dob(head_dob.year + 18, LAST_BIRTH_YEAR)
            roles.append((rng.choice("MF"), surname, child_dob, lists.relationship("4"),
                          "M" if child_dob.year < 1996 and rng.random() < 0.5 else "S"))
        hfs = self.hfs_by_district.get(village.district_pk) or []
        members = [self._insuree(g, s, d, rel, mar, village, hfs, i == 0) for i, (g, s, d, rel, mar) in
                   enumerate(roles)]
        fam_id = uuid7()
        confirmation = rng.random() < 0.3 and bool(lists.confirmation_types)
        fam = {
            "id": fam_id, "uuid": fam_id, "version_id": 0, "last_updated": 0, "deleted": False,
            "code": "", "head_insuree_pk": None, "location_pk": village.pk,
            "poverty": rng.random() < 0.25,
            "family_type": None, "family_type_system": None,
            "address": f"House {rng.randint(1, 400)}, {village.name}",
            "confirmation_no": f"CNF{rng.randint(10**6, 10**7 - 1)}" if confirmation else None,
            "confirmation_type": rng.choice(lists.confirmation_types) if confirmation else None,
        }
        if lists.family_types:
            household = "H" in lists.family_types and rng.random() < 0.95
            ftype = "H" if household else rng.choice(lists.family_types)
            fam["family_type"], fam["family_type_system"] = ftype, GROUP_TYPE_SYSTEM
        return fam, members

    def _insuree(self, gender: str, surname: str, dob: date, relationship: str | None, marital: str,
                 village: _Village, hfs: list[int], is_head: bool) -> dict[str, Any]:
        rng = self.rng
        names = MALE_NAMES if gender == "M" else FEMALE_NAMES
        # One given name: the profile has name.given 1..1 and PatientKind splits other_names on spaces.
        given = rng.choice(names)
        age = LAST_BIRTH_YEAR - dob.year
        adult = age >= 18
        lists = self.lists
        with_id = adult and rng.random() < 0.5 and bool(lists.id_types)
        ins_id = uuid7()
        return {
            "id": ins_id, "uuid": ins_id, "version_id": 0, "last_updated": 0, "deleted": False,
            "chf_id": "", "last_name": surname, "other_names": given,
            "family_norm": normalise_text(surname), "given_norm": normalise_text(given),
            "dob": dob, "gender": gender, "marital": marital if age >= 16 else "S",
            "is_head": is_head, "family_pk": None,
            "id_number": f"{rng.randint(10**8, 10**9 - 1)}" if with_id else None,
            "id_type": rng.choice(lists.id_types) if with_id else None,
            # ~70 % of adults (≈ half of everyone) have a phone; a few have e-mail.
            "phone": f"+2557{rng.randint(10_000_000, 99_999_999)}" if adult and rng.random() < 0.7 else None,
            "email": (f"{normalise_text(given)}.{normalise_text(surname)}{rng.randint(1, 999)}"
                      "@mail.example") if adult and rng.random() < 0.05 else None,
            "card_issued": rng.random() < 0.7,
            "vulnerability": rng.random() < 0.08,
            "relationship": relationship,
            "profession": rng.choice(lists.profession) if adult and lists.profession else None,
            "education": self._education(age),
            "hf_pk": rng.choice(hfs) if hfs and rng.random() < 0.8 else None,
            "address_use": "home", "address_line": None, "village_pk": village.pk,
            "has_active_policy": False, "status": "AC",
        }

    def _education(self, age: int) -> str | None:
        options = self.lists.education
        if not options:
            return None
        # IG codes: 1 nursery, 2 primary, 3 secondary, 4 university, 5 postgraduate, 6 PhD, 7 other.
        wanted = ("1",) if age < 6 else ("2",) if age < 14 else ("2", "3") if age < 19 else \
            ("2", "2", "3", "3", "4", "5", "7")
        picked = self.rng.choice(wanted)
        return picked if picked in options else self.rng.choice(options)


def _bisect(cum: list[float], x: float) -> int:
    lo, hi = 0, len(cum) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cum[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


_SET_HEAD = update(family).where(family.c.pk == bindparam("f_pk")).values(head_insuree_pk=bindparam("h_pk"))


def _allocate_pks(conn: Connection, table: Table, count: int) -> list[int]:
    """Reserve `count` primary keys, so the rows can go in by plain executemany.

    INSERT … RETURNING over many rows becomes multi-row VALUES statements with tens of thousands of
    placeholders, which psycopg re-parses on every execution (half the PostgreSQL run time); a plain
    executemany is one short, cached statement, pipelined by psycopg 3. Knowing the pks up front also links
    members to their family without reading anything back.
    """
    if conn.dialect.name == "postgresql":
        # Drawn from the column's own sequence, so later API inserts never collide with them.
        sequence = conn.execute(text("SELECT pg_get_serial_sequence(:t, 'pk')"), {"t": table.name}).scalar_one()
        return sorted(conn.execute(text("SELECT nextval(:s) FROM generate_series(1, :n)"),
                                   {"s": sequence, "n": count}).scalars())
    # SQLite assigns max(rowid) + 1 itself; the batch transaction holds the write lock (BEGIN IMMEDIATE), so
    # no other writer can take these keys in between.
    top = conn.execute(select(func.max(table.c.pk))).scalar() or 0
    return list(range(top + 1, top + 1 + count))


def _write_batch(conn: Connection, batch: _Batch, seq: ChfSequence, planner: PolicyPlanner | None) -> None:
    ctx = WriteContext(conn, DEMO_USER_NAME)
    chfs = iter(_free_chf_ids(conn, seq, batch.size))
    fam_pks = _allocate_pks(conn, family, len(batch.families))
    ins_pks = _allocate_pks(conn, insuree, batch.size)
    rows: list[dict[str, Any]] = []
    heads: list[dict[str, int]] = []
    planned: list[Planned] = []
    next_pk = iter(ins_pks)
    now = ctx.now
    for fam, fam_pk, members in zip(batch.families, fam_pks, batch.members, strict=True):
        fam["pk"], fam["version_id"], fam["last_updated"] = fam_pk, 1, now
        for m in members:
            m["pk"], m["family_pk"], m["chf_id"] = next(next_pk), fam_pk, next(chfs)
            m["version_id"], m["last_updated"] = 1, now
            rows.append(m)
        fam["code"] = members[0]["chf_id"]  # openIMIS default: the family code is the head's number
        heads.append({"f_pk": fam_pk, "h_pk": members[0]["pk"]})
        if planner is not None and (p := planner.plan(fam_pk, fam["location_pk"], members)) is not None:
            planned.append(p)
            if p.covers_today(planner.today):  # Patient.active / Group.active, as the Contract kind sets them
                covered = set(p.covered)
                for m in members:
                    m["has_active_policy"] = m["pk"] in covered
    # Families first (head unknown yet), then the insurees pointing at them, then the heads: the foreign keys
    # run both ways and are not deferrable on PostgreSQL.
    conn.execute(insert(family), batch.families)
    conn.execute(insert(insuree), rows)
    conn.execute(_SET_HEAD, heads)
    # The rows went in at version 1, as `WriteContext.insert` puts an API create's: flush() renders them through
    # the kinds and appends their history rows.
    ctx.touched = {"patient": set(ins_pks), "group": set(fam_pks)}
    ctx.created.update({("insuree", m["pk"]): m["id"] for m in rows})
    ctx.created.update({("family", f["pk"]): f["id"] for f in batch.families})
    if planned:
        _write_policies(ctx, planned)
    ctx.flush()


def _write_policies(ctx: WriteContext, planned: list[Planned]) -> None:
    """The policies of a batch with their members, contributions and Coverage rows, to be rendered by the flush."""
    conn, now = ctx.conn, ctx.now
    policy_pks = _allocate_pks(conn, policy, len(planned))
    coverage_pks = _allocate_pks(conn, coverage, len(planned))
    policies: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []
    premiums: list[dict[str, Any]] = []
    coverages: list[dict[str, Any]] = []
    for p, policy_pk, coverage_pk in zip(planned, policy_pks, coverage_pks, strict=True):
        pol, covered, paid, cov = PolicyPlanner.rows(p, policy_pk, coverage_pk, uuid7(), now)
        policies.append(pol)
        members.extend(covered)
        if paid is not None:
            premiums.append(paid)
        coverages.append(cov)
    conn.execute(insert(policy), policies)
    conn.execute(insert(insuree_policy), members)
    if premiums:
        conn.execute(insert(premium), premiums)
    conn.execute(insert(coverage), coverages)
    ctx.touched.update({"contract": set(policy_pks), "coverage": set(coverage_pks)})
    ctx.created.update({(policy.name, r["pk"]): r["id"] for r in policies})
    ctx.created.update({(coverage.name, r["pk"]): r["id"] for r in coverages})


def generate_population(engine: Engine, insurees: int, *, seed: int = 42, progress: bool = True,
                        enrol: bool = True) -> None:
    """Add `insurees` synthetic insurees (in ≈ insurees/3 families) to the demo scheme, creating villages as
    needed. Deterministic for a seed apart from the resource ids. `enrol=False` leaves every new family without a
    policy (families for enrolment benchmarks)."""
    if insurees <= 0:
        return
    load_demo_scheme(engine)
    rng = random.Random(seed)
    _ensure_villages(engine, rng, insurees, progress)
    # Staff and price lists for the new villages and facilities, from their own generator: the population drawn
    # below stays the same for a seed.
    ensure_staff(engine, random.Random(f"staff-{seed}"), DEMO_PASSWORD, progress=progress)
    with transaction(engine, write=True) as conn:
        ensure_price_lists(conn, date.today() - timedelta(days=365))
    with engine.connect() as conn:
        lists = _Lists.load(conn)
        villages = [_Village(r.pk, r.name, r.district_pk) for r in conn.execute(
            select(location.c.pk, location.c.name, location.c.district_pk).where(
                location.c.type == "V", is_current(location)).order_by(location.c.pk))]
        hfs: dict[int, list[int]] = {}
        for hf in conn.execute(select(health_facility.c.pk, health_facility.c.location_pk).where(
                is_current(health_facility)).order_by(health_facility.c.pk)):
            hfs.setdefault(hf.location_pk, []).append(hf.pk)
        seq = ChfSequence(seed, highest_generated_chf(conn), insurees)
    _ensure_products(engine, date.today(), progress)
    with engine.connect() as conn:
        # Policies draw from their own generator: the insurees of a seed stay what they were without them.
        planner = PolicyPlanner(conn, random.Random(f"policies-{seed}"), date.today()) if enrol else None
    gen = _Generator(rng, lists, villages, hfs)
    bar = Progress(insurees, "insurees", enabled=progress)
    for batch in gen.batches(insurees, BATCH_INSUREES):
        with transaction(engine, write=True) as conn:
            _write_batch(conn, batch, seq, planner)
        bar.update(batch.size)
    bar.close()
    if engine.dialect.name == "postgresql":
        # What a bulk load leaves to autovacuum, done now: the planner's statistics (it would see the grown tables
        # nearly empty), and the hint bits and visibility map of the new rows — else the first requests to read
        # each row write its page again, and autovacuum's scans run beside them.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM (ANALYZE) insuree, family, resource_version, location, policy, "
                              "insuree_policy, premium, coverage"))
