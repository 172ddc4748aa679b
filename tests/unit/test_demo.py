"""The demo scheme (domain §5) and the bulk synthetic population: counts, versions, equality with render()."""

from __future__ import annotations

import io
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import ColumnElement, Connection, Engine, Row, Table, func, select, update

from hifhir import cli
from hifhir.config import Settings
from hifhir.demo import catalogue, generate_catalogue, generate_population, load_demo_scheme
from hifhir.demo import population as population_module
from hifhir.demo.policies import POLICY_MIX
from hifhir.demo.population import ChfSequence
from hifhir.demo.progress import Progress
from hifhir.demo.resources import chf_id, is_valid_chf_id
from hifhir.demo.scheme import VILLAGES
from hifhir.demo.staff import claim_admin_code
from hifhir.domain.policy import STATUS_NAMES, status_on
from hifhir.fhir.kind import WriteContext
from hifhir.fhir.registry import KINDS
from hifhir.fhir.validate import has_errors, validate_resource
from hifhir.jobs import covered_on
from hifhir.setup import prepare
from hifhir.store.db import make_engine
from hifhir.store.tables import (
    app_user,
    claim_admin,
    claim_admin_role,
    code_list_entry,
    coverage,
    family,
    health_facility,
    insuree,
    insuree_policy,
    location,
    medical_item,
    medical_service,
    officer,
    officer_role,
    officer_role_village,
    policy,
    policy_holder,
    premium,
    price_list,
    price_list_item,
    price_list_service,
    product,
    product_item,
    product_service,
    resource_version,
    role,
    user_district,
    user_role,
)

ENTITY_KINDS = ("location", "health-facility", "policy-holder", "group", "patient", "medication",
                "activity-definition", "insurance-plan", "claim-admin", "claim-admin-role", "enrolment-officer",
                "enrolment-officer-role", "contract", "coverage")
POLICY_STATUS_EXT = "https://hifhir.org/fhir/StructureDefinition/policy-status"


def _engine(path: Path) -> Engine:
    settings = Settings(database_url=f"sqlite:///{path}", jwt_secret="x")
    engine = make_engine(settings.database_url)
    prepare(settings, engine)
    return engine


@pytest.fixture(scope="module")
def demo_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = _engine(tmp_path_factory.mktemp("demo") / "demo.db")
    load_demo_scheme(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def fresh_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = _engine(tmp_path / "pop.db")
    yield engine
    engine.dispose()


def _count(engine: Engine, table: Table, *where: ColumnElement[bool]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def _check_families(engine: Engine) -> int:
    """Every current family has exactly one head, who is a member and whose number is the family code."""
    with engine.connect() as conn:
        members: dict[int | None, list[Row]] = {}
        for m in conn.execute(select(insuree.c.pk, insuree.c.family_pk, insuree.c.is_head, insuree.c.chf_id)
                              .where(insuree.c.deleted.is_(False))):
            members.setdefault(m.family_pk, []).append(m)
        fams = conn.execute(select(family).where(family.c.deleted.is_(False))).all()
    for fam in fams:
        heads = [m for m in members.get(fam.pk, []) if m.is_head]
        assert len(heads) == 1, fam.code
        assert heads[0].pk == fam.head_insuree_pk
        assert heads[0].chf_id == fam.code
    assert None not in members  # nobody left outside a family
    return len(fams)


def _check_history(engine: Engine, *, first_versions: bool = True) -> None:
    """Each current entity has its latest version in resource_version, with a matching meta.versionId (version 1
    everywhere unless `first_versions` is false: staff added later re-versions the facilities they work at)."""
    with engine.connect() as conn:
        for name in ENTITY_KINDS:
            kind = KINDS[name]
            t = kind.table
            rows = conn.execute(
                select(t.c.id, t.c.version_id, resource_version.c.body, resource_version.c.kind)
                .select_from(t.outerjoin(resource_version, (resource_version.c.res_id == t.c.id)
                                         & (resource_version.c.version == t.c.version_id)
                                         & (resource_version.c.res_type == kind.resource_type)))
                .where(t.c.deleted.is_(False))).all()
            assert rows, name
            for row in rows:
                assert row.body is not None, (name, row.id)
                assert row.kind == name
                body = orjson.loads(row.body)
                assert body["id"] == row.id
                assert body["meta"]["versionId"] == str(row.version_id)
                assert row.version_id == 1 or not first_versions, (name, row.id)
                assert body["meta"]["profile"] == [kind.profile]


# --- demo scheme --------------------------------------------------------------------------------------------


def test_demo_scheme_counts(demo_engine: Engine) -> None:
    with demo_engine.connect() as conn:
        levels = Counter(conn.execute(select(location.c.type)).scalars())
        codes = set(conn.execute(select(location.c.code)).scalars())
        hfs = conn.execute(select(health_facility)).all()
        genders = Counter(conn.execute(select(insuree.c.gender)).scalars())
        chfs = list(conn.execute(select(insuree.c.chf_id)).scalars())
        family_villages = {v for v in conn.execute(select(family.c.location_pk)).scalars()}
    assert levels == {"R": 2, "D": 5, "W": 10, "V": 14}
    assert {"R1", "R2", "R1D1", "R1D2", "R1D3", "R2D1", "R2D2", "R1D1M1", "R1D1M1V1"} <= codes
    assert len(hfs) == 15
    assert Counter((h.level, h.care_type) for h in hfs) == {("H", "B"): 5, ("C", "O"): 5, ("D", "O"): 5}
    assert {h.legal_form for h in hfs} == {"G"}
    assert {"RAHOS001", "JMHC001", "UPDS001"} <= {h.code for h in hfs}
    assert _count(demo_engine, insuree) == 60
    assert genders == {"M": 30, "F": 30}
    assert len(set(chfs)) == 60 and all(is_valid_chf_id(c) for c in chfs)
    assert _check_families(demo_engine) == 21
    assert len(family_villages) == 14
    assert _count(demo_engine, insuree, insuree.c.is_head.is_(True)) == 21
    assert _count(demo_engine, policy_holder) == 2


def test_demo_users(demo_engine: Engine) -> None:
    with demo_engine.connect() as conn:
        roles = {r.username: r.name for r in conn.execute(
            select(app_user.c.username, role.c.name)
            .select_from(app_user.join(user_role, user_role.c.user_pk == app_user.c.pk)
                         .join(role, role.c.pk == user_role.c.role_pk)))}
        hashes = set(conn.execute(
            select(app_user.c.password_hash).where(app_user.c.username != "Admin")).scalars())
    assert roles["Admin_Fr"] == "IMIS Administrator"
    assert roles["Admin"] == "IMIS Administrator"  # setup.ensure_admin, run before the demo users exist
    officers = sorted(u for u, r in roles.items() if r == "Enrolment Officer")
    assert officers == [f"E{i:05d}" for i in range(1, 15)]
    assert sum(r == "Claim Administrator" for r in roles.values()) == 15
    assert len(hashes) == 1  # hashed once


def test_demo_staff_logins_are_scoped_to_their_villages_and_facility(demo_engine: Engine) -> None:
    from hifhir.auth.users import load_principal

    with demo_engine.connect() as conn:
        officer_user = load_principal(conn, "E00001")
        admin_user = load_principal(conn, "RHOS0011")
        served = set(conn.execute(
            select(officer_role_village.c.location_pk)
            .join(officer_role, officer_role.c.pk == officer_role_village.c.role_pk)
            .join(officer, officer.c.pk == officer_role.c.officer_pk)
            .where(officer.c.code == "E00001")).scalars())
        facility = conn.execute(select(health_facility.c.pk).join(
            claim_admin_role, claim_admin_role.c.hf_pk == health_facility.c.pk).where(
            claim_admin_role.c.code == "RHOS0011")).scalar_one()
    assert officer_user is not None and officer_user.user_type == "officer"
    assert officer_user.locations == frozenset(served)  # the villages it serves, nothing else
    assert admin_user is not None and admin_user.user_type == "claim_admin"
    assert admin_user.hf_pk == facility
    assert admin_user.locations  # its facility's district and below


def test_demo_history_and_profiles(demo_engine: Engine) -> None:
    _check_history(demo_engine)
    # What the demo stored is valid against the IG profiles, like any API response.
    with demo_engine.connect() as conn:
        for row in conn.execute(select(resource_version.c.kind, resource_version.c.body)):
            body = orjson.loads(row.body)
            _, issues = validate_resource(body, body["meta"]["profile"][0])
            assert not has_errors(issues), (row.kind, [i.to_fhir() for i in issues])


def test_demo_scheme_is_idempotent(demo_engine: Engine) -> None:
    tables = (location, health_facility, family, insuree, app_user, resource_version, medical_item, medical_service,
              product, product_item, product_service, price_list, price_list_item, price_list_service, officer,
              officer_role, officer_role_village, claim_admin, claim_admin_role, code_list_entry, user_district,
              policy, insuree_policy, premium, coverage)
    before = {t.name: _count(demo_engine, t) for t in tables}
    load_demo_scheme(demo_engine)
    after = {t.name: _count(demo_engine, t) for t in tables}
    assert after == before


def test_demo_items_and_services(demo_engine: Engine) -> None:
    with demo_engine.connect() as conn:
        items = conn.execute(select(medical_item)).all()
        services = conn.execute(select(medical_service)).all()
        diagnoses = _count(demo_engine, code_list_entry, code_list_entry.c.list_name == "diagnosis-ICD10-level1")
    assert len(items) == 257 and len({i.name for i in items}) == 257
    assert sorted(i.code for i in items) == [f"{n:04d}" for n in range(1, 258)]
    assert {(i.item_type, i.care_type, i.patient_category) for i in items} == {("D", "O", 15)}
    prices = sorted(i.price for i in items)
    assert (prices[0], prices[128], prices[-1]) == (0, 480, 78_490)
    assert len(services) == 81 and {"M1", "I1", "G1", "A1"} <= {s.code for s in services}
    assert Counter(s.service_type for s in services) == {"C": 73, "P": 8}
    assert Counter(s.level for s in services) == {"D": 58, "S": 17, "H": 4, "V": 2}
    assert Counter(s.category for s in services) == {None: 74, "S": 7}
    assert Counter(s.care_type for s in services).most_common(1)[0][0] == "B"
    prices = sorted(s.price for s in services)
    assert (prices[0], prices[40], prices[-1]) == (330, 21_000, 42_000)
    assert diagnoses == 1910


def test_demo_price_lists(demo_engine: Engine) -> None:
    with demo_engine.connect() as conn:
        lists = {r.pk: r for r in conn.execute(select(price_list))}
        item_lines = Counter(conn.execute(select(price_list_item.c.price_list_pk)).scalars())
        service_lines = Counter(conn.execute(select(price_list_service.c.price_list_pk)).scalars())
        hfs = conn.execute(select(health_facility.c.level, health_facility.c.item_price_list_pk,
                                  health_facility.c.service_price_list_pk, location.c.region_pk)
                           .join(location, location.c.pk == health_facility.c.location_pk)).all()
        regions = dict(conn.execute(select(location.c.code, location.c.pk).where(location.c.type == "R")).all())
        overrides = conn.execute(select(func.count()).select_from(price_list_item).where(
            price_list_item.c.price_override.is_not(None))).scalar_one()
    assert Counter(r.kind for r in lists.values()) == {"item": 6, "service": 6}
    assert {r.location_pk for r in lists.values()} == set(regions.values())  # 3 + 3 per region
    assert overrides == 0  # the scheme prices apply
    sizes = {"D": (14, 4), "C": (51, 9), "H": (257, 81)}
    for hf in hfs:  # every facility uses its region's lists for its level
        items_list, services_list = lists[hf.item_price_list_pk], lists[hf.service_price_list_pk]
        assert (items_list.kind, services_list.kind) == ("item", "service")
        assert items_list.location_pk == services_list.location_pk == hf.region_pk
        assert (item_lines[items_list.pk], service_lines[services_list.pk]) == sizes[hf.level]
    assert len({(hf.item_price_list_pk, hf.service_price_list_pk) for hf in hfs}) == 6


def test_demo_products(demo_engine: Engine) -> None:
    with demo_engine.connect() as conn:
        products = {r.code: r for r in conn.execute(select(product))}
        regions = dict(conn.execute(select(location.c.pk, location.c.code).where(location.c.type == "R")).all())
        lines = Counter(conn.execute(select(product_item.c.product_pk)).scalars())
        service_lines = Counter(conn.execute(select(product_service.c.product_pk)).scalars())
        line_terms = set(conn.execute(select(product_item.c.price_origin, product_item.c.limitation_type,
                                             product_item.c.limit_adult, product_item.c.limit_child,
                                             product_item.c.waiting_period_adult,
                                             product_item.c.limit_no_adult)).all())
        service_terms = set(conn.execute(select(product_service.c.price_origin, product_service.c.limitation_type,
                                                product_service.c.limit_adult)).all())
    assert set(products) == {"BCUL0001", "BCTA0001", "FCUL0001", "FCTA0001"}
    assert products["BCUL0001"].name == "Basic Cover Ultha" and products["FCUL0001"].name == "Fixed Cycle Cover Ultha"
    today = date.today()
    for code, p in products.items():
        assert regions[p.location_pk] == ("R1" if "UL" in code else "R2")
        assert p.date_from <= today - timedelta(days=364) and p.date_to >= today + timedelta(days=3 * 365)
        assert (p.insurance_period, p.ceiling_interpretation, p.level_1, p.level_2) == (12, "I", "D", "C")
        assert lines[p.pk] == 257 and service_lines[p.pk] == 78
        if code.startswith("BC"):
            assert (p.lump_sum, p.member_count, p.max_installments) == (10_000, 6, 1)
            assert p.conversion_product_pk == products["FC" + code[2:]].pk
        else:
            assert (p.premium_adult, p.premium_child, p.threshold, p.member_count) == (4_000, 4_000, 6, 9_999)
            assert (p.registration_lump_sum, p.general_assembly_lump_sum, p.max_policy) == (1_000, 1_000, 300_000)
            assert (p.start_cycle_1, p.start_cycle_2, p.max_installments, p.grace_period_payment) == \
                ("01-06", "01-11", 3, 3)
            assert p.conversion_product_pk is None
    assert line_terms == {("P", "C", 100, 100, None, None)}
    assert service_terms == {("P", "C", 100)}


def test_demo_staff(demo_engine: Engine) -> None:
    with demo_engine.connect() as conn:
        officers = {r.pk: r for r in conn.execute(select(officer))}
        roles = conn.execute(select(officer_role)).all()
        links = conn.execute(select(officer_role_village)).all()
        villages = set(conn.execute(select(location.c.pk).where(location.c.type == "V")).scalars())
        admins = {r.pk: r for r in conn.execute(select(claim_admin))}
        admin_roles = conn.execute(select(claim_admin_role)).all()
        hfs = {r.pk: r for r in conn.execute(select(health_facility))}
        users = {r.username: r for r in conn.execute(select(app_user))}
        user_districts = dict(conn.execute(select(user_district.c.user_pk, user_district.c.location_pk)).all())
    assert sorted(o.code for o in officers.values()) == [f"E{i:05d}" for i in range(1, 15)]
    assert all(o.location_pk is not None and o.dob is not None for o in officers.values())
    assert len(roles) == 14 and {officers[r.officer_pk].code for r in roles} == {r.code for r in roles}
    assert len(links) == 16 and {link.location_pk for link in links} == villages
    leavers = [r for r in roles if r.works_to is not None]
    assert len(leavers) == 2 and all(r.substitute_officer_pk not in (None, r.officer_pk) for r in leavers)
    assert all(r.works_to > date.today() for r in leavers)
    assert len(admins) == 15 and "RHOS0011" in {a.code for a in admins.values()}
    assert sorted(r.hf_pk for r in admin_roles) == sorted(hfs)  # one per facility
    # Staff logins are the officer / claim administrator records themselves (the user name is the code): their
    # scope follows the villages served and the facility, not districts attached to the user.
    for r in admin_roles:
        user = users[admins[r.claim_admin_pk].code]
        assert (user.user_type, user.claim_admin_pk, user.hf_pk) == ("claim_admin", r.claim_admin_pk, r.hf_pk)
        assert user.pk not in user_districts
    for pk, o in officers.items():
        user = users[o.code]
        assert (user.user_type, user.officer_pk) == ("officer", pk)
        assert user.pk not in user_districts
    assert len(users) == 31  # Admin, Admin_Fr, 15 claim administrators, 14 officers (domain §5)


def _latest_bodies(conn: Connection, kind_name: str) -> dict[str, dict[str, Any]]:
    """The latest stored version of every resource of a kind, by id."""
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    for r in conn.execute(select(resource_version.c.res_id, resource_version.c.version, resource_version.c.body)
                          .where(resource_version.c.kind == kind_name)):
        if r.res_id not in latest or r.version > latest[r.res_id][0]:
            latest[r.res_id] = (r.version, orjson.loads(r.body))
    return {res_id: body for res_id, (_, body) in latest.items()}


def _policy_state(row: Row, today: date) -> str:
    """active | expired | idle, as the Contract's policy-status extension shows it."""
    return STATUS_NAMES[status_on(row.status, row.expiry_date, today)]


def _check_policies(engine: Engine) -> dict[str, int]:
    """What every policy must be, demo or bulk: one Coverage; its members in the family, carrying its dates; one
    contribution paying the value once it took effect, none while idle; a product sold where the family lives;
    the officer of its village; Patient.active / Group.active (stored versions too) = covered today; stored
    Contract and Coverage versions saying the status. Returns the count of policies per state."""
    today = date.today()
    with engine.connect() as conn:
        policies = {r.pk: r for r in conn.execute(
            select(policy, family.c.location_pk.label("village_pk"), product.c.code.label("product_code"),
                   product.c.location_pk.label("product_location"))
            .join(family, family.c.pk == policy.c.family_pk).join(product, product.c.pk == policy.c.product_pk))}
        places = {r.pk: {r.pk, r.parent_pk, r.district_pk, r.region_pk, None} for r in conn.execute(
            select(location.c.pk, location.c.parent_pk, location.c.district_pk, location.c.region_pk).where(
                location.c.type == "V"))}
        officers = set(conn.execute(
            select(officer_role_village.c.location_pk, officer_role.c.officer_pk)
            .join(officer_role, officer_role.c.pk == officer_role_village.c.role_pk)).all())
        members = conn.execute(select(insuree_policy)).all()
        paid = conn.execute(select(premium)).all()
        coverages = {r.policy_pk: r for r in conn.execute(select(coverage))}
        insurees = {r.pk: r for r in conn.execute(select(insuree.c.pk, insuree.c.id, insuree.c.family_pk,
                                                         insuree.c.has_active_policy))}
        covered_now = set(conn.execute(select(insuree.c.pk).where(covered_on(today))).scalars())
        groups: dict[int, str] = dict(conn.execute(select(family.c.pk, family.c.id)).all())
        stored = {name: _latest_bodies(conn, name) for name in ("contract", "coverage", "patient", "group")}
    states: Counter[str] = Counter(_policy_state(p, today) for p in policies.values())
    assert set(states) <= {"active", "idle", "expired"}
    assert len(coverages) == len(policies)
    by_policy: dict[int, list[Row]] = {}
    for m in members:
        by_policy.setdefault(m.policy_pk, []).append(m)
        p = policies[m.policy_pk]
        assert insurees[m.insuree_pk].family_pk == p.family_pk
        assert (m.enroll_date, m.start_date, m.effective_date, m.expiry_date) == \
            (p.enroll_date, p.start_date, p.effective_date, p.expiry_date)
    premiums = Counter(r.policy_pk for r in paid)
    assert len({(r.product_pk, r.receipt) for r in paid}) == len(paid)
    for r in paid:
        assert (r.amount, r.product_pk, r.pay_date <= today) == (policies[r.policy_pk].value,
                                                                 policies[r.policy_pk].product_pk, True)
    for p in policies.values():
        state = _policy_state(p, today)
        assert p.stage == "N" and p.value > 0 and p.head_insuree_pk in {m.insuree_pk for m in by_policy[p.pk]}
        assert p.product_location in places[p.village_pk]  # sold where the family lives
        assert (p.village_pk, p.officer_pk) in officers
        assert premiums[p.pk] == (0 if state == "idle" else 1)
        assert (p.effective_date is None) == (state == "idle")
        contract_body, coverage_body = stored["contract"][p.id], stored["coverage"][coverages[p.pk].id]
        assert contract_body["status"] == ("offered" if state == "idle" else "executed")
        assert {"url": POLICY_STATUS_EXT, "valueCode": state} in contract_body["extension"]
        assert contract_body["subject"] == [{"reference": f"Group/{groups[p.family_pk]}"}]
        assert coverage_body["status"] == ("draft" if state == "idle" else "active")
        assert coverage_body["class"][0]["value"] == p.product_code
    # Patient.active / Group.active: the flag, the calendar job's test and the stored versions agree.
    assert {pk for pk, r in insurees.items() if r.has_active_policy} == covered_now
    family_active: dict[int, bool] = {}
    for r in insurees.values():
        assert stored["patient"][r.id].get("active") is bool(r.has_active_policy), r.id
        family_active[r.family_pk] = family_active.get(r.family_pk, False) or bool(r.has_active_policy)
    for family_pk, active in family_active.items():
        assert stored["group"][groups[family_pk]].get("active") is active
    return dict(states)


def test_demo_policies(demo_engine: Engine) -> None:
    """Domain §5: 21 policies, all new, 19 active and 2 expired, each paid by one contribution (20 cash, 1 bank
    transfer), on the Basic Cover of the family's region (16 Ultha, 5 Tahida here: the demo's families live
    there), sold by the officer of the family's village."""
    assert _check_policies(demo_engine) == {"active": 19, "expired": 2}
    with demo_engine.connect() as conn:
        rows = conn.execute(
            select(policy.c.pk, product.c.code, location.c.code.label("village"), officer.c.code.label("officer"))
            .join(product, product.c.pk == policy.c.product_pk).join(family, family.c.pk == policy.c.family_pk)
            .join(location, location.c.pk == family.c.location_pk)
            .join(officer, officer.c.pk == policy.c.officer_pk)).all()
        pay_types = Counter(conn.execute(select(premium.c.pay_type)).scalars())
        covered = Counter(conn.execute(select(insuree_policy.c.insuree_pk)).scalars())
    assert len(rows) == 21 and len(covered) == 60 and set(covered.values()) == {1}  # every insuree, once
    assert Counter(r.code for r in rows) == {"BCUL0001": 16, "BCTA0001": 5}
    village_index = {code: i for i, (code, _) in enumerate(VILLAGES)}
    for r in rows:
        assert r.code == ("BCUL0001" if r.village.startswith("R1") else "BCTA0001")
        assert r.officer == f"E{village_index[r.village] + 1:05d}"  # the officer of the family's village
    assert pay_types == {"C": 20, "B": 1}


def test_claim_admin_codes() -> None:
    taken: set[str] = set()
    assert claim_admin_code("RAHOS001", taken) == "RHOS0011"
    assert claim_admin_code("RJHOS001", taken) == "RHOS0012"  # same stem: the last digit counts up
    assert claim_admin_code("JMHC001", taken) == "JMHC0011"
    assert all(len(c) == 8 for c in taken)


# --- population ---------------------------------------------------------------------------------------------


def test_generate_population(fresh_engine: Engine) -> None:
    generate_population(fresh_engine, 3000, seed=7, progress=False)
    assert _count(fresh_engine, insuree) == 3060
    with fresh_engine.connect() as conn:
        chfs = list(conn.execute(select(insuree.c.chf_id)).scalars())
        genders = Counter(conn.execute(select(insuree.c.gender)).scalars())
        new_pks = list(conn.execute(select(insuree.c.pk).order_by(insuree.c.pk).offset(60)).scalars())
        fam_pks = list(conn.execute(select(family.c.pk).order_by(family.c.pk).offset(21)).scalars())
    assert len(set(chfs)) == len(chfs) and all(is_valid_chf_id(c) for c in chfs)
    assert 0.45 < genders["M"] / 3060 < 0.55
    n_families = _check_families(fresh_engine) - 21
    assert 800 < n_families < 1250  # ≈ 3 per family
    _check_history(fresh_engine, first_versions=False)

    # Policies in the proportions asked (the demo's 19 active and 2 expired aside), each as the Contract kind
    # would have made it.
    states = _check_policies(fresh_engine)
    shares = {"active": (states["active"] - 19) / n_families, "idle": states.get("idle", 0) / n_families,
              "expired": (states["expired"] - 2) / n_families}
    expected = {STATUS_NAMES[state]: share for state, share in POLICY_MIX}
    for state, share in expected.items():
        assert abs(shares[state] - share) < 0.035, (state, shares)
    unenrolled = 1 - sum(shares.values())
    assert abs(unenrolled - (1 - sum(expected.values()))) < 0.035 and unenrolled >= 0.1
    with fresh_engine.connect() as conn:
        policy_pks = list(conn.execute(select(policy.c.pk).order_by(policy.c.pk).offset(21)).scalars())
        coverage_pks = list(conn.execute(select(coverage.c.pk).order_by(coverage.c.pk).offset(21)).scalars())
    _check_reenrolment(fresh_engine, random.Random(9).sample(policy_pks, 40))

    # The stored versions are what the kinds render, so the API serves identical bodies.
    with fresh_engine.connect() as conn:
        for name, pks in (("patient", new_pks), ("group", fam_pks), ("contract", policy_pks),
                          ("coverage", coverage_pks)):
            kind = KINDS[name]
            sample = random.Random(3).sample(pks, 60)
            rendered = kind.render(conn, sample)
            ids = dict(conn.execute(
                select(kind.table.c.pk, kind.table.c.id).where(kind.table.c.pk.in_(sample))).all())
            for pk in sample:
                body = orjson.loads(conn.execute(select(resource_version.c.body).where(
                    resource_version.c.res_id == ids[pk], resource_version.c.kind == name)).scalar_one())
                for key in ("resourceType", "id", "meta"):
                    body.pop(key)
                assert body == rendered[pk]
                _, issues = validate_resource({"resourceType": kind.resource_type, **body}, kind.profile)
                assert not has_errors(issues), [i.to_fhir() for i in issues]

    # Writing a rendered body back through the kind changes nothing: the bulk rows carry exactly the columns
    # (normalised names, head flag, family and village links…) that write() derives from the resource.
    with fresh_engine.connect() as conn, conn.begin() as tx:
        ctx = WriteContext(conn, "test")
        for name, pks in (("patient", new_pks), ("group", fam_pks)):
            kind = KINDS[name]
            t = kind.table
            for pk in random.Random(5).sample(pks, 25):
                before = conn.execute(select(t).where(t.c.pk == pk)).one()
                resource = {"resourceType": kind.resource_type, "id": before.id, **kind.render(conn, [pk])[pk]}
                kind.write(ctx, resource, before)
                after = conn.execute(select(t).where(t.c.pk == pk)).one()
                assert after._asdict() == before._asdict(), name
        tx.rollback()

    # A second run continues: no number is handed out twice.
    generate_population(fresh_engine, 500, seed=7, progress=False)
    with fresh_engine.connect() as conn:
        chfs = list(conn.execute(select(insuree.c.chf_id)).scalars())
    assert len(chfs) == 3560 == len(set(chfs))


def _check_reenrolment(engine: Engine, policy_pks: list[int]) -> None:
    """The bulk rows are what the Contract kind makes of the same enrolment: each sampled policy is deleted and
    its Contract, as rendered, written again through the kind (as a client's POST) — dates, value, status,
    members and contribution come out the same, and no Patient.active flag changes. Rolled back."""
    kind = KINDS["contract"]
    compared = ("family_pk", "policy_holder_pk", "product_pk", "officer_pk", "head_insuree_pk", "enroll_date",
                "start_date", "effective_date", "expiry_date", "status", "stage", "value", "previous_policy_pk")
    ip, pr = insuree_policy, premium

    def members(pk: int) -> list[tuple[Any, ...]]:
        return sorted(conn.execute(select(ip.c.insuree_pk, ip.c.enroll_date, ip.c.start_date, ip.c.effective_date,
                                          ip.c.expiry_date).where(ip.c.policy_pk == pk, ip.c.deleted.is_(False))))

    def paid(pk: int) -> list[tuple[Any, ...]]:
        return sorted(conn.execute(select(pr.c.product_pk, pr.c.payer, pr.c.amount, pr.c.receipt, pr.c.pay_date,
                                          pr.c.pay_type, pr.c.is_photo_fee).where(pr.c.policy_pk == pk,
                                                                                  pr.c.deleted.is_(False))))

    with engine.connect() as conn, conn.begin() as tx:
        for pk in policy_pks:
            before = conn.execute(select(policy).where(policy.c.pk == pk)).one()
            before_members, before_paid = members(pk), paid(pk)
            resource = {"resourceType": "Contract", **kind.render(conn, [pk])[pk]}
            del resource["identifier"]  # the deleted policy keeps its UUID
            del resource["extension"]  # the computed status and stage: a client does not send them
            for t, column in ((policy, policy.c.pk), (ip, ip.c.policy_pk), (pr, pr.c.policy_pk)):
                conn.execute(update(t).where(column == pk).values(deleted=True))
            ctx = WriteContext(conn, "test")
            ctx.new_id = str(uuid.uuid4())
            new_pk = kind.write(ctx, resource, None)
            after = conn.execute(select(policy).where(policy.c.pk == new_pk)).one()
            assert [getattr(after, c) for c in compared] == [getattr(before, c) for c in compared], pk
            assert [m[1:] for m in members(new_pk)] == [m[1:] for m in before_members]
            assert [m[0] for m in members(new_pk)] == [m[0] for m in before_members]
            assert paid(new_pk) == before_paid
            assert "patient" not in ctx.touched and "group" not in ctx.touched  # the flags were right
        tx.rollback()


def test_population_creates_villages(fresh_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small villages and districts force new wards, districts and a region through the generic write path.
    monkeypatch.setattr(population_module, "INSUREES_PER_VILLAGE", 30)
    monkeypatch.setattr(population_module, "WARDS_PER_DISTRICT", 4)
    monkeypatch.setattr(population_module, "DISTRICTS_PER_REGION", 2)
    generate_population(fresh_engine, 1200, progress=False)
    with fresh_engine.connect() as conn:
        locs = {r.pk: r for r in conn.execute(select(location))}
        village_load = Counter(conn.execute(select(insuree.c.village_pk)).scalars())
        hf_districts = Counter(conn.execute(select(health_facility.c.location_pk)).scalars())
    villages = [v for v in locs.values() if v.type == "V"]
    assert len(villages) >= 1260 // 30
    assert len({v.code for v in locs.values()}) == len(locs)
    assert all(len(v.code) <= 8 for v in locs.values())
    for v in villages:  # hierarchical codes, the ward's code as prefix, ancestors denormalised
        ward = locs[v.parent_pk]
        assert v.code.startswith(ward.code) and ward.type == "W"
        assert v.district_pk == ward.parent_pk and v.region_pk == locs[ward.parent_pk].parent_pk
    assert sum(1 for r in locs.values() if r.type == "R") > 2
    districts = [d.pk for d in locs.values() if d.type == "D"]
    assert all(hf_districts[d] == 3 for d in districts)  # one H, C and D per district
    assert len(village_load) > 14  # the new villages are populated
    _check_history(fresh_engine, first_versions=False)
    _check_families(fresh_engine)
    _check_staff_and_price_lists(fresh_engine, len(villages), len(districts) * 3)
    # The new regions get the demo's two products (their own codes), so their families are enrolled too.
    with fresh_engine.connect() as conn:
        sold = Counter(conn.execute(select(product.c.location_pk)).scalars())
        codes = list(conn.execute(select(product.c.code)).scalars())
        enrolled = set(conn.execute(select(location.c.region_pk).join(family, family.c.location_pk == location.c.pk)
                                    .join(policy, policy.c.family_pk == family.c.pk)).scalars())
    regions = {pk for pk, r in locs.items() if r.type == "R"}
    assert set(sold) == regions and set(sold.values()) == {2} and len(set(codes)) == len(codes)
    assert enrolled == regions
    _check_policies(fresh_engine)


def _check_staff_and_price_lists(engine: Engine, villages: int, facilities: int) -> None:
    """At scale: every village served, ~1 officer per 1.5 new villages, one claim administrator per facility, a
    login for each, and every facility on its region's price lists for its level."""
    with engine.connect() as conn:
        officers = list(conn.execute(select(officer.c.code)).scalars())
        served = set(conn.execute(select(officer_role_village.c.location_pk)).scalars())
        admin_hfs = Counter(conn.execute(select(claim_admin_role.c.hf_pk)).scalars())
        usernames = set(conn.execute(select(app_user.c.username)).scalars())
        admins = set(conn.execute(select(claim_admin.c.code)).scalars())
        hfs = conn.execute(select(health_facility.c.item_price_list_pk, health_facility.c.service_price_list_pk,
                                  health_facility.c.level, location.c.region_pk)
                           .join(location, location.c.pk == health_facility.c.location_pk)).all()
        lists = dict(conn.execute(select(price_list.c.pk, price_list.c.location_pk)).all())
        list_regions = Counter(lists.values())
    assert len(served) == villages
    new_villages, new_officers = villages - 14, len(officers) - 14
    assert new_villages / 2 <= new_officers <= new_villages / 1.2
    assert len(set(officers)) == len(officers) and sorted(officers)[-1] == f"E{len(officers):05d}"
    assert len(admin_hfs) == facilities and set(admin_hfs.values()) == {1}
    assert set(officers) | admins <= usernames
    assert all(lists[hf.item_price_list_pk] == lists[hf.service_price_list_pk] == hf.region_pk for hf in hfs)
    assert set(list_regions.values()) == {6}  # 3 item and 3 service lists per region with facilities


# --- synthetic catalogue ------------------------------------------------------------------------------------


def test_generate_catalogue(fresh_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalogue, "CATALOGUE_BATCH", 40)  # several transactions
    generate_catalogue(fresh_engine, 90, 25, seed=3, progress=False)
    with fresh_engine.connect() as conn:
        item_codes = set(conn.execute(select(medical_item.c.code)).scalars())
        service_codes = set(conn.execute(select(medical_service.c.code)).scalars())
        covered = _count(fresh_engine, product_item)
        listed = _count(fresh_engine, price_list_item)
    assert len(item_codes) == 257 + 90 and len(service_codes) == 81 + 25
    assert {f"X{n:05d}" for n in range(1, 91)} <= item_codes and {f"X{n:05d}" for n in range(1, 26)} <= service_codes
    assert (covered, listed) == (4 * 257, 2 * (14 + 51 + 257))  # the extras are in no product and no price list
    _check_history(fresh_engine)
    _check_rendered(fresh_engine, "medication", medical_item.c.code.like("X%"))
    _check_rendered(fresh_engine, "activity-definition", medical_service.c.code.like("X%"))

    # A second run continues the codes.
    generate_catalogue(fresh_engine, 5, 0, seed=3, progress=False)
    with fresh_engine.connect() as conn:
        codes = set(conn.execute(select(medical_item.c.code).where(medical_item.c.code.like("X%"))).scalars())
    assert codes == {f"X{n:05d}" for n in range(1, 96)}


def _check_rendered(engine: Engine, kind_name: str, condition: ColumnElement[bool]) -> None:
    """The stored versions are what the kind renders (as the API serves them), valid against the profile, with
    history rows shaped like an API create."""
    kind = KINDS[kind_name]
    with engine.connect() as conn:
        rows = conn.execute(select(kind.table.c.pk, kind.table.c.id).where(condition)).all()
        rendered = kind.render(conn, [r.pk for r in rows])
        history = {h.res_id: h for h in conn.execute(select(resource_version).where(
            resource_version.c.res_id.in_([r.id for r in rows])))}
    assert rows
    for row in rows:
        h = history[row.id]
        assert (h.res_type, h.kind, h.version, h.operation, h.user_name) == \
            (kind.resource_type, kind_name, 1, "create", "demo")
        body = orjson.loads(h.body)
        _, issues = validate_resource(body, kind.profile)
        assert not has_errors(issues), [i.to_fhir() for i in issues]
        assert body["meta"]["profile"] == [kind.profile]
        for key in ("resourceType", "id", "meta"):
            body.pop(key)
        assert body == rendered[row.pk]


def test_cli_demo_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIFHIR_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("HIFHIR_JWT_SECRET", "x")
    assert cli.main(["demo-data", "--items", "3", "--services", "2", "--quiet"]) == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    try:
        assert (_count(engine, medical_item), _count(engine, medical_service), _count(engine, insuree)) == \
            (260, 83, 60)
    finally:
        engine.dispose()


# --- pieces -------------------------------------------------------------------------------------------------


def test_chf_sequence_is_valid_and_distinct() -> None:
    assert chf_id(7070707) == "070707070" and is_valid_chf_id("070707070")
    assert not is_valid_chf_id("111111119") and not is_valid_chf_id("000000000")
    numbers = ChfSequence(42, 0, 20000).take(20000)
    assert numbers == sorted(numbers) and len(set(numbers)) == 20000  # increasing: appends to the index
    assert all(is_valid_chf_id(n) for n in numbers) and numbers[0] >= "200000000"
    # A rerun continues above the highest generated number; a nearly full space packs the numbers tighter.
    last = int(numbers[-1][:8])
    assert ChfSequence(42, last, 10).take(10)[0] > numbers[-1]
    tight = ChfSequence(1, 99_999_000, 999).take(999)
    assert len(set(tight)) == 999 and tight[-1] == chf_id(99_999_999)
    with pytest.raises(RuntimeError):
        ChfSequence(1, 99_999_000, 1000)
    roomy = ChfSequence(5, 99_990_000, 5000).take(5000)  # gaps shrink near the end instead of overflowing
    assert len(set(roomy)) == 5000 and roomy == sorted(roomy) and roomy[-1] <= chf_id(99_999_999)


def test_progress_bar_reports_rate_and_eta() -> None:
    out = io.StringIO()
    bar = Progress(100, "insurees", stream=out)
    bar.update(50)
    bar.update(50)
    bar.close()
    text = out.getvalue()
    assert "100/100" in text and "/s" in text and "ETA" in text
    assert text.count("100/100") == 1  # closing does not repeat the last line


def test_population_without_enrolment_leaves_every_new_family_unenrolled(fresh_engine: Engine) -> None:
    generate_population(fresh_engine, 300, seed=3, progress=False)
    families, policies = _count(fresh_engine, family), _count(fresh_engine, policy)
    assert policies > 0  # the default enrols most families

    generate_population(fresh_engine, 300, seed=4, progress=False, enrol=False)

    assert _count(fresh_engine, family) > families + 50
    assert _count(fresh_engine, policy) == policies
    assert _count(fresh_engine, insuree, insuree.c.has_active_policy.is_(True)) == _count(
        fresh_engine, insuree, insuree.c.pk.in_(select(insuree_policy.c.insuree_pk)),
        insuree.c.has_active_policy.is_(True))
    _check_families(fresh_engine)
    _check_history(fresh_engine)
