"""The demo scheme (domain §5) and the bulk synthetic population: counts, versions, equality with render()."""

from __future__ import annotations

import io
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import ColumnElement, Engine, Row, Table, func, select

from hifhir.config import Settings
from hifhir.demo import generate_population, load_demo_scheme
from hifhir.demo import population as population_module
from hifhir.demo.population import ChfSequence
from hifhir.demo.progress import Progress
from hifhir.demo.resources import chf_id, is_valid_chf_id
from hifhir.fhir.kind import WriteContext
from hifhir.fhir.registry import KINDS
from hifhir.fhir.validate import has_errors, validate_resource
from hifhir.setup import prepare
from hifhir.store.db import make_engine
from hifhir.store.tables import (
    app_user,
    family,
    health_facility,
    insuree,
    location,
    policy_holder,
    resource_version,
    role,
    user_role,
)

ENTITY_KINDS = ("location", "health-facility", "policy-holder", "group", "patient")


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


def _check_history(engine: Engine) -> None:
    """Each current entity has its latest version in resource_version, with a matching meta.versionId."""
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
                assert body["meta"]["versionId"] == str(row.version_id) == "1"
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


def test_demo_history_and_profiles(demo_engine: Engine) -> None:
    _check_history(demo_engine)
    # What the demo stored is valid against the IG profiles, like any API response.
    with demo_engine.connect() as conn:
        for row in conn.execute(select(resource_version.c.kind, resource_version.c.body)):
            body = orjson.loads(row.body)
            _, issues = validate_resource(body, body["meta"]["profile"][0])
            assert not has_errors(issues), (row.kind, [i.to_fhir() for i in issues])


def test_demo_scheme_is_idempotent(demo_engine: Engine) -> None:
    before = {t.name: _count(demo_engine, t) for t in (location, health_facility, family, insuree, app_user,
                                                       resource_version)}
    load_demo_scheme(demo_engine)
    after = {t.name: _count(demo_engine, t) for t in (location, health_facility, family, insuree, app_user,
                                                      resource_version)}
    assert after == before


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
    _check_history(fresh_engine)

    # The stored versions are what the kinds render, so the API serves identical bodies.
    with fresh_engine.connect() as conn:
        for name, pks in (("patient", new_pks), ("group", fam_pks)):
            kind = KINDS[name]
            sample = random.Random(3).sample(pks, 60)
            rendered = kind.render(conn, sample)
            ids = dict(conn.execute(
                select(kind.table.c.pk, kind.table.c.id).where(kind.table.c.pk.in_(sample))).all())
            for pk in sample:
                body = orjson.loads(conn.execute(select(resource_version.c.body).where(
                    resource_version.c.res_id == ids[pk])).scalar_one())
                for key in ("resourceType", "id", "meta"):
                    body.pop(key)
                assert body == rendered[pk]
                if name == "patient":
                    _, issues = validate_resource({"resourceType": "Patient", **body}, kind.profile)
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
    _check_history(fresh_engine)
    _check_families(fresh_engine)


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
