"""Organization kinds (health facility, policy holder, insurer) driven directly against a fresh SQLite DB."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select

from hifhir.config import InsurerConfig
from hifhir.fhir.errors import FhirError
from hifhir.fhir.kind import ResourceKind, WriteContext
from hifhir.fhir.profiles.location import LocationKind, mark_location_dependents
from hifhir.fhir.profiles.organization import (
    ORG_TYPE_SYSTEM,
    HealthFacilityKind,
    InsurerKind,
    PolicyHolderKind,
    sync_insurer,
)
from hifhir.store.codelists import seed_code_lists
from hifhir.store.db import make_engine, transaction
from hifhir.store.tables import health_facility, insurer_org, location, metadata, resource_version

EXAMPLES = Path(__file__).resolve().parent.parent / "fixtures" / "ig_examples"
HF_EXAMPLE = "Organization-RaptaDistrictHospital.json"
PH_EXAMPLE = "Organization-MyTradePolicyHolder.json"

# The org examples name the demo locations (Ultha / Rapta), the Location examples other names: rename them.
LOCATIONS = [
    ("Location-Upper-River-Region.json", "Ultha"),
    ("Location-Jimara-district.json", "Rapta"),
    ("Location-Jamu-municipality.json", "Jamu"),
    ("Location-Jamula-village.json", "Jamula"),
]


def example(name: str) -> dict[str, Any]:
    return orjson.loads((EXAMPLES / name).read_bytes())


def canonical(value: Any) -> Any:
    """Order-insensitive form of a resource: lists become sorted lists of canonical JSON strings."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted(orjson.dumps(canonical(v), option=orjson.OPT_SORT_KEYS).decode() for v in value)
    return value


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def put(engine: Engine, kind: ResourceKind, resource: dict[str, Any]) -> dict[str, Any]:
    """A PUT to the resource's id, as the REST layer does it (update when it exists, else create)."""
    with transaction(engine, write=True) as conn:
        ctx = WriteContext(conn, "tester")
        current = kind.current_row(conn, resource["id"])
        if current is None:
            ctx.new_id, ctx.id_from_client = resource["id"], True
        pk = kind.write(ctx, resource, current)
        ctx.mark(kind.name, pk)
        written = ctx.flush()[(kind.name, pk)]
    assert written.body is not None
    return orjson.loads(written.body)


def latest(engine: Engine, res_id: str) -> tuple[int, dict[str, Any] | None]:
    with engine.connect() as conn:
        row = conn.execute(
            select(resource_version.c.version, resource_version.c.body)
            .where(resource_version.c.res_type == "Organization", resource_version.c.res_id == res_id)
            .order_by(resource_version.c.version.desc()).limit(1)
        ).one()
    return row.version, (orjson.loads(row.body) if row.body is not None else None)


def location_resource(file_name: str, name: str) -> dict[str, Any]:
    res = example(file_name)
    res["name"] = name
    return res


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path}/t.db")
    metadata.create_all(eng)
    with transaction(eng, write=True) as conn:
        seed_code_lists(conn)
    for file_name, name in LOCATIONS:
        put_location(eng, location_resource(file_name, name))
    yield eng
    eng.dispose()


def put_location(engine: Engine, resource: dict[str, Any]) -> None:
    kind = LocationKind()
    with transaction(engine, write=True) as conn:
        ctx = WriteContext(conn, "tester")
        current = kind.current_row(conn, resource["id"])
        if current is None:
            ctx.new_id, ctx.id_from_client = resource["id"], True
        pk = kind.write(ctx, resource, current)
        ctx.mark(kind.name, pk)
        ctx.flush()


def hf_resource(res_id: str, code: str, district: str = "Jimara-district") -> dict[str, Any]:
    res = example(HF_EXAMPLE)
    res["id"] = res_id
    res["identifier"] = [i for i in res["identifier"] if i["type"]["coding"][0]["code"] == "Code"]
    res["identifier"][0]["value"] = code
    res["address"][0]["extension"][0]["valueReference"]["reference"] = f"Location/{district}"
    return res


# --- round trips of the IG examples ------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "file_name"), [
    (HealthFacilityKind(), HF_EXAMPLE),
    (PolicyHolderKind(), PH_EXAMPLE),
])
def test_ig_example_reads_back_equivalent(engine: Engine, kind: ResourceKind, file_name: str) -> None:
    resource = example(file_name)
    assert kind.accepts(resource)
    returned = put(engine, kind, copy.deepcopy(resource))
    version, stored = latest(engine, resource["id"])
    assert version == 1
    assert stored == returned
    assert stored["meta"]["profile"] == [kind.profile]
    assert canonical(without_meta(stored)) == canonical(without_meta(resource))


def test_accepts_only_its_own_type() -> None:
    hf, ph, ins = HealthFacilityKind(), PolicyHolderKind(), InsurerKind()
    hf_res, ph_res = example(HF_EXAMPLE), example(PH_EXAMPLE)
    ins_res = example("Organization-openIMIS-Implementation.json")
    assert [hf.accepts(hf_res), ph.accepts(hf_res), ins.accepts(hf_res)] == [True, False, False]
    assert [hf.accepts(ph_res), ph.accepts(ph_res), ins.accepts(ph_res)] == [False, True, False]
    assert [hf.accepts(ins_res), ph.accepts(ins_res), ins.accepts(ins_res)] == [False, False, True]
    assert not hf.accepts({"resourceType": "Organization", "type": "prov"})  # malformed: not a crash


def test_hf_defaults_and_update_keeps_level(engine: Engine) -> None:
    res = hf_resource("hf-1", "HF000001")
    res["extension"] = [e for e in res["extension"] if not e["url"].endswith("organization-hf-legal-form")]
    put(engine, HealthFacilityKind(), res)
    with engine.connect() as conn:
        row = conn.execute(select(health_facility).where(health_facility.c.id == "hf-1")).one()
    assert (row.legal_form, row.level, row.status) == ("G", "", "AC")

    level = {"url": "https://openimis.github.io/openimis_fhir_r4_ig/StructureDefinition/organization-hf-level",
             "valueCodeableConcept": {"coding": [{"code": "H"}]}}
    res["extension"].append(level)
    res["telecom"] = [{"system": "phone", "value": "0123"}]
    res["address"][0]["line"] = ["1 Main street"]
    body = put(engine, HealthFacilityKind(), copy.deepcopy(res))
    assert {"code": "H", "display": "Hospital",
            "system": "https://openimis.github.io/openimis_fhir_r4_ig/CodeSystem/organization-hf-level"} in [
        e["valueCodeableConcept"]["coding"][0] for e in body["extension"]]
    assert body["address"][0]["line"] == ["1 Main street"]
    assert body["telecom"] == [{"system": "phone", "value": "0123"}]

    res["extension"].remove(level)  # an update without the level keeps the stored one
    put(engine, HealthFacilityKind(), res)
    version, stored = latest(engine, "hf-1")
    assert version == 3
    assert stored is not None
    assert any(e["url"].endswith("organization-hf-level") for e in stored["extension"])


# --- business rules ----------------------------------------------------------------------------------------


def test_hf_pointing_at_a_village_is_422(engine: Engine) -> None:
    with pytest.raises(FhirError) as err:
        put(engine, HealthFacilityKind(), hf_resource("hf-v", "HFVILL01", district="Jamula-village"))
    assert err.value.status == 422
    assert err.value.issues[0]["expression"] == ["Organization.address[0].extension[locationDistrict]"]


def test_ph_pointing_at_a_district_is_422(engine: Engine) -> None:
    res = example(PH_EXAMPLE)
    res["address"][0]["extension"][1]["valueReference"]["reference"] = "Location/Jimara-district"
    with pytest.raises(FhirError) as err:
        put(engine, PolicyHolderKind(), res)
    assert err.value.status == 422


def test_missing_location_is_422(engine: Engine) -> None:
    with pytest.raises(FhirError) as err:
        put(engine, HealthFacilityKind(), hf_resource("hf-x", "HFMISS01", district="no-such-place"))
    assert err.value.status == 422


def test_duplicate_hf_code_is_409(engine: Engine) -> None:
    put(engine, HealthFacilityKind(), example(HF_EXAMPLE))
    with pytest.raises(FhirError) as err:
        put(engine, HealthFacilityKind(), hf_resource("another-hf", "RAHOS001"))
    assert err.value.status == 409


def test_code_too_long_and_unknown_code_list_value_are_422(engine: Engine) -> None:
    with pytest.raises(FhirError) as err:
        put(engine, HealthFacilityKind(), hf_resource("hf-long", "TOOLONG01"))
    assert err.value.status == 422
    res = hf_resource("hf-lf", "HFLF0001")
    res["extension"][1]["valueCodeableConcept"]["coding"][0]["code"] = "Z"
    with pytest.raises(FhirError) as err:
        put(engine, HealthFacilityKind(), res)
    assert err.value.status == 422
    assert err.value.issues[0]["expression"] == ["Organization.extension[legalForm]"]


# --- location hooks ----------------------------------------------------------------------------------------


def test_deleting_a_district_used_by_an_hf_is_refused(engine: Engine) -> None:
    district = location_resource("Location-Jimara-district.json", "Jambero")
    district["id"] = "Jambero-district"
    district["identifier"][0]["value"] = "R1D2"
    put_location(engine, district)  # a district without sub-locations: only the HF holds it
    put(engine, HealthFacilityKind(), hf_resource("hf-j", "JMHOS001", district="Jambero-district"))
    kind = LocationKind()
    with transaction(engine, write=True) as conn, pytest.raises(FhirError) as err:
        current = kind.current_row(conn, "Jambero-district")
        assert current is not None
        kind.delete(WriteContext(conn, "tester"), current)
    assert err.value.status == 422
    assert "health facility JMHOS001" in err.value.issues[0]["diagnostics"]


def test_renaming_a_location_rerenders_addresses(engine: Engine) -> None:
    put(engine, HealthFacilityKind(), example(HF_EXAMPLE))
    put(engine, PolicyHolderKind(), example(PH_EXAMPLE))
    # What LocationKind.write does on a rename, minus the Location's own version: rename, then let the
    # registered location users mark whoever shows the name in an address.
    with transaction(engine, write=True) as conn:
        ctx = WriteContext(conn, "tester")
        pk = conn.execute(select(location.c.pk).where(location.c.id == "Jimara-district")).scalar_one()
        conn.execute(location.update().where(location.c.pk == pk).values(name="Rapta Town",
                                                                         name_norm="rapta town"))
        mark_location_dependents(ctx, pk)
        assert set(ctx.touched) == {"health-facility", "policy-holder"}
        ctx.flush()
    hf_version, hf = latest(engine, "RaptaDistrictHospital")
    ph_version, ph = latest(engine, "MyTradePolicyHolder")
    assert (hf_version, ph_version) == (2, 2)
    assert hf is not None and ph is not None
    assert hf["address"][0]["district"] == "Rapta Town"
    assert ph["address"][0]["district"] == "Rapta Town"
    assert ph["address"][0]["city"] == "Jamula"


# --- insurer -----------------------------------------------------------------------------------------------


def test_sync_insurer_is_idempotent_and_versions_changes(engine: Engine) -> None:
    cfg = InsurerConfig()
    for _ in range(2):
        with transaction(engine, write=True) as conn:
            sync_insurer(conn, cfg, "system")
    version, body = latest(engine, cfg.id)
    assert version == 1
    expected = example("Organization-openIMIS-Implementation.json")
    assert body is not None
    assert body["identifier"] == expected["identifier"]
    assert body["type"] == expected["type"]
    assert body["name"] == expected["name"]
    assert body["telecom"] == [{"system": "email", "value": "implementation@openimis.org"}]
    assert InsurerKind().accepts(body)

    cfg.phone = "0908060703"
    with transaction(engine, write=True) as conn:
        sync_insurer(conn, cfg, "system")
    version, body = latest(engine, cfg.id)
    assert version == 2
    assert body is not None
    assert {"system": "phone", "value": "0908060703"} in body["telecom"]

    moved = InsurerConfig(id="new-insurer")
    with transaction(engine, write=True) as conn:
        sync_insurer(conn, moved, "system")
    assert latest(engine, cfg.id) == (3, None)  # the old id is logically deleted
    assert latest(engine, "new-insurer")[0] == 1
    with engine.connect() as conn:
        current = conn.execute(
            select(insurer_org.c.id).where(insurer_org.c.deleted.is_(False))).scalars().all()
    assert current == ["new-insurer"]


def test_insurer_is_read_only(engine: Engine) -> None:
    kind = InsurerKind()
    assert kind.writable is False
    with transaction(engine, write=True) as conn, pytest.raises(FhirError) as err:
        kind.write(WriteContext(conn, "tester"), example("Organization-openIMIS-Implementation.json"), None)
    assert err.value.status == 405


# --- search parameters -------------------------------------------------------------------------------------


def matches(
    engine: Engine, kind: ResourceKind, name: str, value: str, modifier: str | None = None
) -> list[str]:
    clause = kind.search_params[name].build(modifier, [value])
    t = kind.table
    with engine.connect() as conn:
        return list(conn.execute(
            select(t.c.id).where(t.c.deleted.is_(False), clause).order_by(t.c.id)).scalars())


def test_search_parameters(engine: Engine) -> None:
    hf, ph = HealthFacilityKind(), PolicyHolderKind()
    put(engine, hf, example(HF_EXAMPLE))
    put(engine, ph, example(PH_EXAMPLE))
    with transaction(engine, write=True) as conn:
        sync_insurer(conn, InsurerConfig())
    ins = InsurerKind()
    hf_id, ph_id = ["RaptaDistrictHospital"], ["MyTradePolicyHolder"]

    assert matches(engine, hf, "name", "rapta dist") == hf_id
    assert matches(engine, hf, "name", "Rapta District Hospital", "exact") == hf_id
    assert matches(engine, hf, "name", "rapta district hospital", "exact") == []
    assert matches(engine, ph, "name", "trade", "contains") == ph_id

    assert matches(engine, hf, "type", "prov") == hf_id
    assert matches(engine, hf, "type", f"{ORG_TYPE_SYSTEM}|prov") == hf_id
    assert matches(engine, hf, "type", "http://example.org|prov") == []
    assert matches(engine, hf, "type", "bus") == []
    assert matches(engine, ph, "type", "bus") == ph_id
    assert matches(engine, ins, "type", "ins") == ["openIMIS-Implementation"]
    assert matches(engine, ins, "type", "prov", "not") == ["openIMIS-Implementation"]

    assert matches(engine, hf, "address-state", "ultha") == hf_id
    assert matches(engine, hf, "address-district", "Rapta") == hf_id
    assert matches(engine, hf, "address-district", "Ultha") == []
    assert matches(engine, hf, "address", "ult") == hf_id
    assert matches(engine, ph, "address-city", "jamula") == ph_id
    assert matches(engine, ph, "address-district", "rapta") == ph_id
    assert matches(engine, ph, "address-state", "Ultha") == ph_id
    assert matches(engine, ph, "address", "jamu") == ph_id  # ward or village
    assert matches(engine, ph, "address", "54 pas") == ph_id  # the address line
    assert matches(engine, ph, "address", "pasay", "contains") == ph_id

    assert matches(engine, ph, "phone", "0102030405") == ph_id
    assert matches(engine, ph, "email", "contact@mytrade.org") == ph_id
    assert matches(engine, hf, "active", "true") == hf_id
    assert matches(engine, hf, "active", "false") == []
    assert matches(engine, ph, "active", "true") == ph_id
    assert matches(engine, hf, "identifier", "RAHOS001") == hf_id
    assert "name" in hf.sort_params and "name" in ph.sort_params and "name" in ins.sort_params
