"""The editable openIMIS code lists (store/codelists.py), the terminology cache over them, the validator's live
source and the `hifhir codes` command, on both engines."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, select

from hifhir import cli
from hifhir.fhir import terminology
from hifhir.fhir.validate import validate_resource
from hifhir.store import codelists
from hifhir.store.codelists import (
    DIAGNOSIS_LIST,
    CodeListError,
    add_code,
    code_display,
    deactivate_code,
    displays_of,
    list_changed_at,
    list_entries,
    replace_codes,
    seed_diagnoses,
    set_code,
    update_code,
)
from hifhir.store.db import transaction
from hifhir.store.tables import code_list_entry
from tests.builders import CS, EXT
from tests.builders import health_facility as hf_resource

PROFESSION = "patient-profession"


@pytest.fixture
def db(app: Any, engine: Engine) -> Engine:
    """A freshly reset and seeded database (the `app` fixture resets it)."""
    return engine


@pytest.fixture
def conn(db: Engine) -> Iterator[Connection]:
    with transaction(db, write=True) as c:
        yield c


def active_codes(conn: Connection, list_name: str = PROFESSION) -> list[str]:
    return [e.code for e in list_entries(conn, list_name) if e.active]


def test_seeded_lists_follow_the_ig(conn):
    assert [(e.code, e.display, e.active) for e in list_entries(conn, PROFESSION)] == [
        ("1", "Housewife", True), ("2", "Employee", True), ("3", "Self Employee", True), ("4", "Other", True)]
    assert list_changed_at(conn, PROFESSION) > 0
    assert list_changed_at(conn, DIAGNOSIS_LIST) == 0  # loaded with the demo data, not by set-up


def test_seed_diagnoses_loads_the_ig_list_once(conn):
    assert seed_diagnoses(conn) == 1910
    entries = list_entries(conn, DIAGNOSIS_LIST)
    assert (entries[0].code, entries[0].display) == ("A00", "Cholera") and entries[-1].code == "Z99"
    assert seed_diagnoses(conn) == 0


def test_set_code_adds_updates_reactivates(conn):
    assert set_code(conn, PROFESSION, "5", "Farmer") == "added"
    assert active_codes(conn)[-1] == "5"
    assert set_code(conn, PROFESSION, "5", "Farmer") == "unchanged"
    assert set_code(conn, PROFESSION, "5", "Fisher") == "updated"
    assert code_display(conn, PROFESSION, "5") == "Fisher"
    assert deactivate_code(conn, PROFESSION, "5") is True
    assert deactivate_code(conn, PROFESSION, "5") is False
    assert code_display(conn, PROFESSION, "5") is None  # not for new use...
    assert displays_of(conn, (PROFESSION,))[PROFESSION]["5"] == "Fisher"  # ...but existing data keeps its meaning
    assert set_code(conn, PROFESSION, "5", "Farmer", sort_order=-1) == "reactivated"
    assert active_codes(conn)[0] == "5"


def test_add_update_deactivate_refuse_what_does_not_fit(conn):
    with pytest.raises(CodeListError, match="already"):
        add_code(conn, PROFESSION, "1", "Again")
    with pytest.raises(CodeListError, match="not in"):
        update_code(conn, PROFESSION, "9", "Nine")
    with pytest.raises(CodeListError, match="not in"):
        deactivate_code(conn, PROFESSION, "9")
    with pytest.raises(CodeListError, match="not an editable"):
        set_code(conn, "claim-status", "32", "Paid")
    for code in ("", " 1", "a  b", "X" * 17, None):
        with pytest.raises(CodeListError):
            set_code(conn, PROFESSION, code, "Display")  # type: ignore[arg-type]
    for display in ("", "   ", "D" * 256):
        with pytest.raises(CodeListError):
            set_code(conn, PROFESSION, "9", display)
    add_code(conn, PROFESSION, "9", "Nine")
    update_code(conn, PROFESSION, "9", "Nueve")
    assert code_display(conn, PROFESSION, "9") == "Nueve"


def test_replace_codes_deactivates_reactivates_and_reorders(conn):
    result = replace_codes(conn, PROFESSION, [("4", "Other"), ("1", "Housewife"), ("5", "Farmer")])
    assert (result.added, result.updated, result.reactivated, result.deactivated) == (1, 2, 0, 2)
    assert active_codes(conn) == ["4", "1", "5"]
    assert {e.code: e.active for e in list_entries(conn, PROFESSION)}["2"] is False
    again = replace_codes(conn, PROFESSION, [("4", "Other"), ("1", "Housewife"), ("5", "Farmer"), ("2", "Employee")])
    assert (again.reactivated, again.added, again.deactivated) == (1, 0, 0)
    assert not replace_codes(conn, PROFESSION, [("4", "Other"), ("1", "Housewife"), ("5", "Farmer"),
                                                ("2", "Employee")]).changed


def test_replace_codes_checks_everything_first(conn):
    before = list_entries(conn, PROFESSION)
    with pytest.raises(CodeListError) as dup:
        replace_codes(conn, PROFESSION, [("7", "Seven"), ("1", "One"), ("7", "Seven again")])
    assert (dup.value.index, dup.value.field) == (2, "code")
    with pytest.raises(CodeListError) as long_display:
        replace_codes(conn, PROFESSION, [("7", "Seven"), ("8", "E" * 256)])
    assert (long_display.value.index, long_display.value.field) == (1, "display")
    assert list_entries(conn, PROFESSION) == before


def test_every_change_moves_the_change_marker(conn, monkeypatch):
    # even when the clock does not move (or steps back) between two edits
    monkeypatch.setattr(codelists, "_now_us", lambda: 1_000)
    markers = [list_changed_at(conn, PROFESSION)]
    set_code(conn, PROFESSION, "5", "Farmer")
    markers.append(list_changed_at(conn, PROFESSION))
    set_code(conn, PROFESSION, "5", "Fisher")
    markers.append(list_changed_at(conn, PROFESSION))
    deactivate_code(conn, PROFESSION, "5")
    markers.append(list_changed_at(conn, PROFESSION))
    replace_codes(conn, PROFESSION, [("1", "Housewife")])
    markers.append(list_changed_at(conn, PROFESSION))
    assert markers == sorted(set(markers)) and len(markers) == 5
    rows = conn.execute(select(code_list_entry.c.code, code_list_entry.c.last_updated)
                        .where(code_list_entry.c.list_name == PROFESSION)).all()
    assert max(r.last_updated for r in rows) == markers[-1]


def test_terminology_cache_is_revalidated_per_use(db):
    with db.connect() as c:
        first = terminology.list_view(c, PROFESSION)
        assert terminology.list_view(c, PROFESSION) is first  # unchanged: the cached snapshot
    with transaction(db, write=True) as c:
        set_code(c, PROFESSION, "5", "Farmer")
    with db.connect() as c:
        second = terminology.list_view(c, PROFESSION)
    assert second is not first and second.version_id != first.version_id
    assert [x["code"] for x in second.resource["concept"]] == ["1", "2", "3", "4", "5"]
    assert second.resource["meta"]["versionId"] == second.version_id == second.resource["version"]


def _hf_with_level(level: str) -> dict[str, Any]:
    res = hf_resource("HF0001", "some-district")
    res["extension"].append({"url": EXT + "organization-hf-level", "valueCodeableConcept": {
        "coding": [{"system": f"{CS}organization-hf-level", "code": level}]}})
    return res


def _level_errors(db: Engine | None, level: str) -> list[str]:
    def run() -> list[str]:
        if db is not None:
            terminology.bind_engine(db)
        _res, issues = validate_resource(_hf_with_level(level),
                                         "https://openimis.github.io/openimis_fhir_r4_ig/StructureDefinition/"
                                         "openimis-health-facility-organization")
        return [i.code for i in issues if i.severity == "error"]

    return contextvars.copy_context().run(run)  # the binding must not leak into other tests


def test_validator_reads_live_codes_within_a_request(db):
    assert _level_errors(db, "H") == []
    assert _level_errors(db, "R") == ["code-invalid"]
    with transaction(db, write=True) as c:
        set_code(c, "organization-hf-level", "R", "Regional hospital")
    assert _level_errors(db, "R") == []
    assert _level_errors(None, "R") == ["code-invalid"]  # no request: the IG's codes
    with transaction(db, write=True) as c:
        deactivate_code(c, "organization-hf-level", "H")
    assert _level_errors(db, "H") == ["code-invalid"]


def test_expansion_filter_matches_word_prefixes():
    exp = terminology._expansion((f"{CS}x", code, display, None) for code, display in [
        ("A00", "Cholera"), ("A01", "Typhoid and paratyphoid fevers"), ("B50", "Plasmodium falciparum malaria"),
        ("H71", "Cholesteatoma of middle ear"), ("X1.2", "Café-au-lait spots")])

    def match(text: str) -> list[str]:
        return [exp.keys[i][1] for i in exp.matching(terminology.filter_tokens(text))]

    assert match("") == ["A00", "A01", "B50", "H71", "X1.2"]
    assert match("chol") == ["A00", "H71"]
    assert match("CHOLÉRA") == ["A00"]
    assert match("fev typh") == ["A01"]
    assert match("yphoid") == []
    assert match("a0") == ["A00", "A01"]
    assert match("x1.2") == ["X1.2"] and match("cafe lait") == ["X1.2"]
    assert match("malaria zzz") == []


def test_codes_command(db, monkeypatch, capsys, backend):
    settings, _engine = backend
    monkeypatch.setenv("HIFHIR_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("HIFHIR_JWT_SECRET", "x" * 40)
    assert cli.main(["codes", "set", PROFESSION, "5", "Farmer"]) == 0
    assert cli.main(["codes", "deactivate", PROFESSION, "1"]) == 0
    assert cli.main(["codes", "list", PROFESSION]) == 0
    out = capsys.readouterr().out
    assert "5: added" in out and "1: deactivated" in out
    assert "5\tFarmer" in out and "1\tHousewife" not in out.split("deactivated")[-1]
    assert cli.main(["codes", "list", PROFESSION, "--all"]) == 0
    assert "1\tHousewife  (inactive)" in capsys.readouterr().out
    assert cli.main(["codes", "set", "claim-status", "1", "x"]) == 1
    assert "not an editable" in capsys.readouterr().err
    assert cli.main(["codes", "seed-diagnoses"]) == 0
    assert "1910 diagnoses loaded" in capsys.readouterr().out
    assert cli.main(["codes", "list"]) == 0
    assert f"{DIAGNOSIS_LIST:32}  1910 active" in capsys.readouterr().out
