"""The openIMIS demo scheme (domain §5), stored through the same path as API writes.

Every entity is a FHIR resource validated against its IG profile and written by its kind's `write()`; one
`WriteContext.flush()` at the end renders all of them and appends their version-1 history rows. So the demo is
exactly what a client POSTing the same resources would have produced, and stays so when a mapping changes.

Contents: 31 locations, 15 health facilities, 2 policy holders, 21 families with 60 insurees; 14 enrolment
officers and 15 claim administrators with their roles and logins (staff.py); 257 medical items, 81 services, the
4 products and 12 price lists (catalogue.py); 21 policies, one per family (Contracts, with their Coverages; 19
active, 2 expired: `_policies`); the 1,910 ICD-10 diagnoses. Price lists, diagnoses and users are
not FHIR resources here: they are written directly after the flush, in the same transaction.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Connection, Engine, select

from hifhir.demo import catalogue, staff
from hifhir.demo import resources as res
from hifhir.demo.names import FEMALE_NAMES, LAST_NAMES, MALE_NAMES
from hifhir.demo.policies import draw_dates
from hifhir.domain.policy import ACTIVE, EXPIRED, STATUS_NAMES, Member, ProductTerms
from hifhir.fhir.kind import WriteContext
from hifhir.fhir.registry import KINDS
from hifhir.fhir.validate import has_errors, validate_resource
from hifhir.setup import ensure_admin
from hifhir.store.codelists import seed_diagnoses
from hifhir.store.db import transaction
from hifhir.store.tables import insuree, is_current, location, officer, product

DEMO_PASSWORD = "admin123"
DEMO_USER_NAME = "demo"  # user_name on the history rows the demo writes
MARKER_CODE = "R1"  # the demo is loaded when this location exists

REGIONS: tuple[tuple[str, str], ...] = (("R1", "Ultha"), ("R2", "Tahida"))
# (code, name, HF code prefix) — the prefixes give the openIMIS-style HF codes RAHOS001, JMHC001, UPDS001…
DISTRICTS: tuple[tuple[str, str, str], ...] = (
    ("R1D1", "Rapta", "RA"), ("R1D2", "Jambero", "JM"), ("R1D3", "Uptol", "UP"),
    ("R2D1", "Rajo", "RJ"), ("R2D2", "Vida", "VI"),
)
WARDS: tuple[tuple[str, str], ...] = (
    ("R1D1M1", "Achi"), ("R1D1M2", "Jamu"), ("R1D2M1", "Holobo"), ("R1D2M2", "Lukozi"),
    ("R1D3M1", "Kitaba"), ("R1D3M2", "Mazeru"), ("R2D1M1", "Jaber"), ("R2D1M2", "Rubeho"),
    ("R2D2M1", "Mlali"), ("R2D2M2", "Vidunda"),
)
VILLAGES: tuple[tuple[str, str], ...] = (
    ("R1D1M1V1", "Rachla"), ("R1D1M1V2", "Darbu"), ("R1D1M2V1", "Jamula"),
    ("R1D2M1V1", "Kinoni"), ("R1D2M1V2", "Mbuyuni"), ("R1D2M2V1", "Lutindi"),
    ("R1D3M1V1", "Kibaoni"), ("R1D3M1V2", "Majengo"), ("R1D3M2V1", "Ntoma"),
    ("R2D1M1V1", "Kisanga"), ("R2D1M1V2", "Ngerengere"), ("R2D1M2V1", "Mkuyuni"),
    ("R2D2M1V1", "Mgeta"), ("R2D2M2V1", "Nyandira"),
)
# One hospital (both in- and out-patient), one health centre and one dispensary (out-patient) per district.
HF_LEVELS: tuple[tuple[str, str, str, str], ...] = (
    ("H", "B", "HOS001", "District Hospital"), ("C", "O", "HC001", "Health Centre"),
    ("D", "O", "DS001", "Dispensary"),
)
# 21 families, 60 insurees (domain §5): sizes sum to 60, three single-person households (heads 2 F + 1 M),
# 18 couples (14 with a male head), and 21 children alternating M/F: 30 M / 30 F overall.
FAMILY_SIZES: tuple[int, ...] = (4, 3, 3, 2, 5, 3, 1, 3, 2, 4, 3, 1, 3, 2, 3, 4, 2, 1, 3, 4, 4)
SINGLE_HEAD_GENDERS: tuple[str, ...] = ("F", "M", "F")
FEMALE_HEADED_COUPLES = frozenset({3, 9, 14, 19})  # indexes into FAMILY_SIZES
# Families per village (index into VILLAGES): every village has one, the larger R1 villages a second.
FAMILY_VILLAGES: tuple[int, ...] = (0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 7, 7, 8, 9, 10, 11, 12, 13, 0, 3, 6)
POLICY_HOLDERS: tuple[dict[str, Any], ...] = (
    {"code": "PH0001", "name": "Ultha Coffee Growers Cooperative", "village": 0, "legal_form": "3",
     "activity": "2", "contact": "Baraka Mwangi", "email": "info@ulthacoffee.example",
     "phone": "+255754100200",
     "address_line": "Plot 12, Rachla market road"},
    {"code": "PH0002", "name": "Tahida Builders Ltd", "village": 9, "legal_form": "2", "activity": "3",
     "contact": "Neema Massawe", "email": "office@tahidabuilders.example", "phone": "+255713400500",
     "address_line": "Kisanga industrial area"},
)
# Policies (domain §5): the Basic Cover of the family's region; two expired (one per region), one contribution
# paid by bank transfer, the others in cash.
REGION_PRODUCTS = {"R1": "BCUL0001", "R2": "BCTA0001"}
EXPIRED_FAMILIES = frozenset({4, 15})
BANK_TRANSFER_FAMILY = 9
# Enrolment dates (days before the load): the active policies run on for at least four more months, the expired
# ones ended one to seven months ago.
DEMO_ENROLMENT_DAYS_AGO = {ACTIVE: (7, 240), EXPIRED: (400, 580)}
FIRST_CHF_N = 7070707  # gives 070707070, the classic openIMIS demo insurance number


class DemoDataError(RuntimeError):
    """A demo resource failed validation or a write: a mapping and the demo drifted apart."""


@dataclass
class SchemeWriter:
    """Creates resources through the kinds in one transaction; `flush()` versions everything at once."""

    conn: Connection
    ctx: WriteContext

    @classmethod
    def open(cls, conn: Connection) -> SchemeWriter:
        return cls(conn, WriteContext(conn, DEMO_USER_NAME))

    def create(self, kind_name: str, resource: dict[str, Any]) -> tuple[int, str]:
        """Validate like the API does, then write; returns (pk, id)."""
        kind = KINDS[kind_name]
        resource, issues = validate_resource(resource, kind.profile)
        if has_errors(issues):
            raise DemoDataError(f"demo {kind_name} {resource.get('identifier')} is invalid: "
                                f"{[i.to_fhir() for i in issues]}")
        self.ctx.new_id = str(uuid.uuid4())
        self.ctx.id_from_client = False
        pk = kind.write(self.ctx, resource, None)
        self.ctx.mark(kind.name, pk)
        return pk, self.ctx.new_id

    def flush(self) -> None:
        self.ctx.flush()


def demo_loaded(conn: Connection) -> bool:
    return conn.execute(select(location.c.pk).where(
        location.c.code == MARKER_CODE, is_current(location))).first() is not None


def load_demo_scheme(engine: Engine) -> None:
    """Load the demo scheme once; a database that already has location R1 is left untouched."""
    # ensure_admin only acts on a database without any user: run it before the demo users exist, otherwise a
    # fresh demo database would have no `Admin` (cli `serve --demo-if-empty` loads the demo first).
    ensure_admin(engine)
    with transaction(engine, write=True) as conn:
        if demo_loaded(conn):
            return
        _load(conn)


def _load(conn: Connection) -> None:
    rng = random.Random(20240501)  # fixed: the demo is the same data set on every install
    w = SchemeWriter.open(conn)
    ids: dict[str, str] = {}
    pks: dict[str, int] = {}

    def add_location(code: str, name: str, level: str, parent: str | None) -> None:
        pk, rid = w.create("location", res.location_resource(code, name, level, ids.get(parent or "")))
        ids[code], pks[code] = rid, pk

    names = {code: name for code, name in REGIONS + WARDS + VILLAGES}
    names.update({code: name for code, name, _ in DISTRICTS})

    def place(code: str) -> res.Place:
        """Address names of a district (4-char code) or village (8-char code)."""
        return res.Place(names[code[:2]], names[code[:4]], names.get(code[:6]) if len(code) == 8 else None,
                         names[code] if len(code) == 8 else None)

    for code, name in REGIONS:
        add_location(code, name, "R", None)
    for code, name, _ in DISTRICTS:
        add_location(code, name, "D", code[:2])
    for code, name in WARDS:
        add_location(code, name, "W", code[:4])
    for code, name in VILLAGES:
        add_location(code, name, "V", code[:6])

    hfs: list[tuple[str, int, str, str]] = []  # (code, pk, id, district code)
    for dcode, dname, prefix in DISTRICTS:
        for level, care, suffix, label in HF_LEVELS:
            code = prefix + suffix
            phone = f"+2552{rng.randrange(10_000_000, 99_999_999)}"
            pk, rid = w.create("health-facility", res.health_facility_resource(
                code, f"{dname} {label}", level, care, "G", ids[dcode], place(dcode), phone=phone,
                address_line=f"{dname} town, P.O. Box {rng.randrange(10, 999)}"))
            hfs.append((code, pk, rid, dcode))
    hf_by_district = {d: [h for h in hfs if h[3] == d] for d, _, _ in DISTRICTS}

    for ph in POLICY_HOLDERS:
        w.create("policy-holder", res.policy_holder_resource(
            ph["code"], ph["name"], ids[VILLAGES[ph["village"]][0]], place(VILLAGES[ph["village"]][0]),
            legal_form=ph["legal_form"],
            activity=ph["activity"], contact=ph["contact"], email=ph["email"], phone=ph["phone"],
            address_line=ph["address_line"]))

    families = _families(w, rng, ids, place, hf_by_district)
    # The parts added later draw from their own generators, so that the families above stay what they were.
    today = date.today()
    logins = staff.demo_officers(w.create, random.Random("demo-officers"), list(VILLAGES), ids, pks, place, today)
    logins += staff.demo_claim_admins(w.create, random.Random("demo-claim-admins"),
                                      [(code, pk, rid, pks[dcode]) for code, pk, rid, dcode in hfs], set())
    product_ids = _catalogue(w, ids, today)
    _policies(w, random.Random("demo-policies"), families, product_ids, today)
    w.flush()
    catalogue.ensure_price_lists(conn, _years_from(today, -1))
    seed_diagnoses(conn)
    staff.create_logins(conn, [staff.Login("Admin_Fr", "IMIS Administrator", "Admin", "Fr", None, language="fr"),
                               *logins], DEMO_PASSWORD)


def _years_from(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def product_period(today: date) -> tuple[date, date]:
    """When the demo's products are sold: from two years ago (the expired policies were sold then) to three years
    ahead, so the demo stays current."""
    return _years_from(today, -2), _years_from(today, 3)


def _catalogue(w: SchemeWriter, ids: dict[str, str], today: date) -> dict[str, str]:
    """The 257 items, 81 services and the 4 products covering all items and 78 services (domain §5); returns the
    products' ids by code."""
    item_ids = [w.create("medication", res.medication_resource(item.code, item.name, item.price,
                                                               package=item.package))[1]
                for item in catalogue.demo_items()]
    service_ids = []
    for s in catalogue.DEMO_SERVICES:
        _, sid = w.create("activity-definition", res.activity_definition_resource(
            s.code, s.name, s.price, service_type=s.service_type, level=s.level, care_type=s.care_type,
            category=s.category, patient_category=s.patient_category))
        if s.code not in catalogue.UNCOVERED_SERVICES:
            service_ids.append(sid)
    product_ids: dict[str, str] = {}
    sold_from, sold_to = product_period(today)
    for region, spec in catalogue.DEMO_PRODUCTS:
        _, product_ids[spec.code] = w.create("insurance-plan", res.insurance_plan_resource(
            spec, ids[region], sold_from, sold_to,
            conversion_id=product_ids[spec.conversion] if spec.conversion else None,
            item_ids=item_ids, service_ids=service_ids))
    return product_ids


def _policies(w: SchemeWriter, rng: random.Random, families: list[DemoFamily], product_ids: dict[str, str],
              today: date) -> None:
    """One policy per family (domain §5: 21 policies, all new, 19 active and 2 expired, one contribution each
    paying the value: 20 in cash, 1 by bank transfer), enrolled through the Contract kind as a point of service
    POSTs it. The product is the Basic Cover of the family's region and the officer the one of its village.

    openIMIS's demo has 18 policies on BCUL0001 and 3 on BCTA0001; here 5 of the 21 families live in Tahida's
    villages (every village has a family), so the split is 16/5. As openIMIS's date-shift script leaves them,
    the contribution is paid on the enrolment date."""
    conn = w.conn
    officer_ids = dict(conn.execute(select(officer.c.code, officer.c.id).where(is_current(officer))).all())
    receipts: Counter[str] = Counter()
    for fam in families:
        vcode = VILLAGES[fam.village][0]
        code = REGION_PRODUCTS[vcode[:2]]
        terms = ProductTerms.from_row(conn.execute(select(product).where(product.c.id == product_ids[code])).one())
        by_id = {r.id: Member(r.dob, r.relationship) for r in conn.execute(
            select(insuree.c.id, insuree.c.dob, insuree.c.relationship).where(insuree.c.id.in_(fam.member_ids)))}
        state = EXPIRED if fam.index in EXPIRED_FAMILIES else ACTIVE
        dates = draw_dates(rng, terms, [by_id[i] for i in fam.member_ids], state, today, max_pay_delay=0,
                           days_ago=DEMO_ENROLMENT_DAYS_AGO[state])
        if dates is None or dates.pay_date is None:
            raise DemoDataError(f"product {code} cannot give family {fam.index} a {STATUS_NAMES[state]} policy")
        receipts[code] += 1
        paid = res.PremiumSpec(dates.sale.value, f"RC{code[2:4]}{receipts[code]:04d}", dates.pay_date,
                               pay_type="B" if fam.index == BANK_TRANSFER_FAMILY else "C")
        w.create("contract", res.contract_resource(
            family_id=fam.group_id, head_id=fam.member_ids[0], member_ids=fam.member_ids,
            product_id=product_ids[code], issued=dates.enroll, officer_id=officer_ids[f"E{fam.village + 1:05d}"],
            premiums=[paid]))


def _chf_numbers(rng: random.Random, count: int) -> list[str]:
    numbers = [FIRST_CHF_N]
    while len(numbers) < count:
        n = rng.randrange(10_000_000, 20_000_000)  # below the synthetic population's numbers
        if n not in numbers:
            numbers.append(n)
    return [res.chf_id(n) for n in numbers]


@dataclass
class _Household:
    """What every member of one demo family shares."""

    village_id: str
    place: res.Place
    hf_ids: list[str]
    line: str
    family_id: str | None = None
    head_name: tuple[str, str] | None = None


def _person(rng: random.Random, hh: _Household, chf: str, gender: str, year: int, surname: str, *,
            relationship: str | None, marital: str) -> dict[str, Any]:
    adult = year <= 2006
    given = rng.choice(MALE_NAMES if gender == "M" else FEMALE_NAMES)
    phone = f"+2557{rng.randrange(10_000_000, 99_999_999)}" if adult and rng.random() < 0.6 else None
    education = str(rng.choice((2, 2, 3, 3, 4, 7))) if adult else "1" if year >= 2019 else "2"
    return res.patient_resource(
        chf=chf, last_name=surname, other_names=given, gender=gender,
        dob=date(year, rng.randrange(1, 13), rng.randrange(1, 29)), village_id=hh.village_id, place=hh.place,
        is_head=hh.family_id is None, family_id=hh.family_id, relationship=relationship,
        head_name=hh.head_name, marital=marital, phone=phone, education=education,
        profession=str(rng.choice((1, 2, 3, 3, 4))) if adult else None,
        id_number=f"N{rng.randrange(10**8, 10**9)}" if adult and rng.random() < 0.5 else None, id_type="N",
        card_issued=rng.random() < 0.7, vulnerable=rng.random() < 0.1, hf_id=rng.choice(hh.hf_ids),
        address_line=hh.line if hh.family_id is None else None,
    )


@dataclass(frozen=True, slots=True)
class DemoFamily:
    index: int  # into FAMILY_SIZES
    village: int  # index into VILLAGES
    group_id: str
    member_ids: list[str]  # head first, then in registration order


def _families(w: SchemeWriter, rng: random.Random, ids: dict[str, str], place_of: Callable[[str], res.Place],
              hf_by_district: dict[str, list[tuple[str, int, str, str]]]) -> list[DemoFamily]:
    """Head first, then the family (Group) with the head as only member, then the members referencing it:
    the order an enrolment client uses."""
    families: list[DemoFamily] = []
    chfs = iter(_chf_numbers(rng, sum(FAMILY_SIZES)))
    singles = iter(SINGLE_HEAD_GENDERS)
    child_gender = iter(["M", "F"] * 11)
    for index, size in enumerate(FAMILY_SIZES):
        vcode, vname = VILLAGES[FAMILY_VILLAGES[index]]
        hh = _Household(ids[vcode], place_of(vcode), [h[2] for h in hf_by_district[vcode[:4]]],
                        f"House {rng.randrange(1, 200)}, {vname}")
        last_name = rng.choice(LAST_NAMES)
        head_gender = next(singles) if size == 1 else "F" if index in FEMALE_HEADED_COUPLES else "M"
        head_year = rng.randrange(1950, 1996)
        head_chf = next(chfs)
        head = _person(rng, hh, head_chf, head_gender, head_year, last_name, relationship=None,
                       marital="S" if size == 1 else "M")
        _, head_id = w.create("patient", head)
        confirmation = (f"CNF{rng.randrange(10**6, 10**7)}", rng.choice("AB")) if rng.random() < 0.5 else None
        _, group_id = w.create("group", res.group_resource(
            code=head_chf, village_id=hh.village_id, place=hh.place, member_ids=[head_id],
            poverty=rng.random() < 0.3, family_type="H", address_line=hh.line, confirmation=confirmation))
        hh.family_id = group_id
        hh.head_name = (head["name"][0]["family"], " ".join(head["name"][0]["given"]))
        member_ids = [head_id]
        if size >= 2:
            spouse_name = last_name if rng.random() < 0.7 else rng.choice(LAST_NAMES)
            member_ids.append(w.create("patient", _person(
                rng, hh, next(chfs), "F" if head_gender == "M" else "M", head_year + rng.randrange(-6, 7),
                spouse_name, relationship="8", marital="M"))[1])
        for _ in range(size - 2):
            year = rng.randrange(max(head_year + 18, 1975), 2024)
            member_ids.append(w.create("patient", _person(rng, hh, next(chfs), next(child_gender), year, last_name,
                                                          relationship="4", marital="S" if year > 2000 else "M"))[1])
        families.append(DemoFamily(index, FAMILY_VILLAGES[index], group_id, member_ids))
    return families
