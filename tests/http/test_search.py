"""Search through the real ASGI app: every parameter of Patient, Group, Location and Organization, the result
parameters (_sort, _total, _summary, _elements, _count), error handling and injection attempts.

Each test states one scenario; expected results are written out as sets of the resources' local names.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from hifhir.api.app import HifhirApp
from hifhir.fhir.registry import TYPES
from hifhir.store.tables import insuree, resource_version
from tests.builders import CS, ORG_TYPE, group, ident, location, patient
from tests.conftest import ADMIN, Api, _reset, load_example

IDENTIFIERS = f"{CS}openimis-identifiers"
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
INSURER_ID = "openIMIS-Implementation"  # from the server configuration: always present


# --- helpers -------------------------------------------------------------------------------------------


def created(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 201, resp.text
    return resp.json()


def bundle(api: Any, rtype: str, params: Any = None, **kw: Any) -> dict[str, Any]:
    resp = api.get(rtype, params=params, **kw)
    assert resp.status_code == 200, f"{rtype} {params}: {resp.text}"
    body = resp.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def matches(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in body.get("entry", []) if e["search"]["mode"] == "match"]


def found(api: Any, rtype: str, params: Any, names: dict[str, str]) -> set[str]:
    """The local names (keys of `names`, which maps name → id) of the matches; unknown ids fail the test."""
    by_id = {v: k for k, v in names.items()}
    ids = [r["id"] for r in matches(bundle(api, rtype, params))]
    assert len(ids) == len(set(ids)), f"duplicates in {ids}"
    unknown = [i for i in ids if i not in by_id]
    assert not unknown, f"{rtype}?{params} returned unexpected resources {unknown}"
    return {by_id[i] for i in ids}


def rejected(api: Any, rtype: str, params: Any, status: int = 400, **kw: Any) -> dict[str, Any]:
    resp = api.get(rtype, params=params, **kw)
    assert resp.status_code == status, f"{rtype} {params}: {resp.status_code} {resp.text}"
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "error"
    return body


def places(api: Any) -> dict[str, str]:
    """Two branches of the R → D → W → V hierarchy; name → id."""
    out: dict[str, str] = {}
    for code, name, level, parent in [
        ("R1", "Ultha", "R", None), ("R1D1", "Rapta", "D", "Ultha"), ("R1D1W1", "Jamu", "W", "Rapta"),
        ("R1D1W1V1", "Jamula", "V", "Jamu"),
        ("R2", "Tahida", "R", None), ("R2D1", "Mbeya", "D", "Tahida"), ("R2D1W1", "Ilula", "W", "Mbeya"),
        ("R2D1W1V1", "Kipawa", "V", "Ilula"),
    ]:
        body = location(code, name, level, out.get(parent or ""))
        out[name] = created(api.post("Location", body))["id"]
    return out


def health_facility(code: str, name: str, district_id: str) -> dict[str, Any]:
    res = load_example("Organization-RaptaDistrictHospital")
    del res["id"]
    res["identifier"] = [ident(code)]
    res["name"] = name
    res["address"][0]["extension"][0]["valueReference"]["reference"] = f"Location/{district_id}"
    return res


def policy_holder(code: str, name: str, village_id: str) -> dict[str, Any]:
    res = load_example("Organization-MyTradePolicyHolder")
    del res["id"]
    res["identifier"] = [ident(code)]
    res["name"] = name
    res["address"][0]["extension"][1]["valueReference"]["reference"] = f"Location/{village_id}"
    return res


# --- shared read-only datasets --------------------------------------------------------------------------
#
# Most tests only read. Resetting the database and loading data for each of them would cost most of the run
# time, so consecutive read-only tests share a small named dataset, loaded through the API by a client of
# their own (`reader`). A dataset is reloaded when another one is wanted or when the database changed since it
# was loaded (a test using the per-test `api` fixture resets the database). Read-only tests must not write.


class World:
    def __init__(self, settings: Any, engine: Any, api: Api) -> None:
        self.settings, self.engine, self.api = settings, engine, api
        self.name: str | None = None
        self.fingerprint: tuple[Any, ...] = ()
        self.data: dict[str, dict[str, str]] = {}

    def _fingerprint(self) -> tuple[Any, ...]:
        marker = self.data.get("loc", {}).get("Ultha", "")
        with self.engine.connect() as conn:
            count, last = conn.execute(select(func.count(), func.max(resource_version.c.seq))).one()
            mine = conn.execute(select(func.count()).select_from(resource_version)
                                .where(resource_version.c.res_id == marker)).scalar_one()
        return count, last, mine

    def ensure(self, name: str) -> dict[str, dict[str, str]]:
        if self.name != name or self._fingerprint() != self.fingerprint:
            _reset(self.settings, self.engine)
            self.data = {"loc": places(self.api)}
            LOADERS[name](self, self.data)
            self.name, self.fingerprint = name, self._fingerprint()
        return self.data


@pytest.fixture(scope="module")
def world(backend: tuple[Any, Any]) -> Any:
    settings, engine = backend
    app = HifhirApp(settings, engine)
    with TestClient(app, base_url="http://testserver") as client:
        yield World(settings, engine, Api(client, app.tokens.issue(ADMIN[0])[0]))


@pytest.fixture
def reader(world: World) -> Api:
    """A client for the read-only tests (it must not write: see World)."""
    return world.api


def _load_people(world: World, data: dict[str, dict[str, str]]) -> None:
    """Four patients. doe has an active policy (set in the table: policies cannot be written yet).

    doe    Doe / John            male    1990-05-17  Jamula  phone +255700000001, john.doe@example.org
    perez  Pérez / Ana María     female  1985-12-31  Kipawa
    oneil  O'Neil-Smith / Zoë    other   2001-02-03  Jamula  zoe@example.org
    dorsey Dorsey / Dorothy      female  1990-01-15  Kipawa  phone +255700000004
    """
    loc = data["loc"]
    specs = {
        "doe": patient("123456789", "Doe", "John", loc["Jamula"], gender="male", birth_date="1990-05-17",
                       phone="+255700000001", email="john.doe@example.org"),
        "perez": patient("223456789", "Pérez", "Ana María", loc["Kipawa"], gender="female",
                         birth_date="1985-12-31"),
        "oneil": patient("323456789", "O'Neil-Smith", "Zoë", loc["Jamula"], gender="other",
                         birth_date="2001-02-03", email="zoe@example.org"),
        "dorsey": patient("423456789", "Dorsey", "Dorothy", loc["Kipawa"], gender="female",
                          birth_date="1990-01-15", phone="+255700000004"),
    }
    data["people"] = {name: created(world.api.post("Patient", body))["id"] for name, body in specs.items()}
    with world.engine.begin() as conn:
        conn.execute(update(insuree).where(insuree.c.id == data["people"]["doe"]).values(has_active_policy=True))


BIRTH_DAYS = ["1980-06-30", "1989-12-31", "1990-01-01", "1990-01-31", "1990-02-01", "1990-12-31", "1991-01-01",
              "2000-06-15"]


def _load_births(world: World, data: dict[str, dict[str, str]]) -> None:
    """Patients named by their date of birth."""
    data["births"] = {
        day: created(world.api.post("Patient", patient(f"B{i:08d}", "Born", "Baby", data["loc"]["Jamula"],
                                                       birth_date=day)))["id"]
        for i, day in enumerate(BIRTH_DAYS)
    }


def _load_households(world: World, data: dict[str, dict[str, str]]) -> None:
    """The family Kimaro (head Joseph, code FAM0001; member Neema), Ann Smith (no family), a health facility
    in the district Rapta, a policy holder in the village Kipawa, and the configured insurer."""
    api, loc = world.api, data["loc"]
    head = created(api.post("Patient", patient("FAM0001", "Kimaro", "Joseph", loc["Jamula"], head=True)))
    fam = created(api.post("Group", group("FAM0001", [head["id"]], loc["Jamula"])))
    neema = patient("FAM0002", "Kimaro", "Neema", loc["Jamula"], group_id=fam["id"])
    member = created(api.post("Patient", neema))
    alone = created(api.post("Patient", patient("ALONE001", "Smith", "Ann", loc["Kipawa"])))
    data["family"] = {"family": fam["id"], "head": head["id"], "member": member["id"], "alone": alone["id"]}
    hf = created(api.post("Organization", health_facility("HF001", "Rapta District Hospital", loc["Rapta"])))
    ph = created(api.post("Organization", policy_holder("PH001", "My Trade", loc["Kipawa"])))
    data["orgs"] = {"hf": hf["id"], "ph": ph["id"], "insurer": INSURER_ID}


LOADERS = {"people": _load_people, "births": _load_births, "households": _load_households}


@pytest.fixture
def people(world: World) -> dict[str, str]:
    return world.ensure("people")["people"]


@pytest.fixture
def towns(world: World) -> dict[str, str]:
    """The locations, which every shared dataset has (the people dataset is loaded when none is)."""
    return world.ensure(world.name or "people")["loc"]


@pytest.fixture
def births(world: World) -> dict[str, str]:
    return world.ensure("births")["births"]


@pytest.fixture
def family(world: World) -> dict[str, str]:
    return world.ensure("households")["family"]


@pytest.fixture
def orgs(world: World) -> dict[str, str]:
    return world.ensure("households")["orgs"]


# --- per-test fixtures for the tests that write --------------------------------------------------------


@pytest.fixture
def api(app: Any, client: Any) -> Api:
    """The conftest `api` (a fresh database), with a token issued directly: the password login (argon2,
    ~0.4 s) is tested elsewhere and would dominate the run time."""
    token, _exp = app.tokens.issue(ADMIN[0])
    return Api(client, token)


@pytest.fixture
def loc(api: Any) -> dict[str, str]:
    return places(api)


# --- Patient: _id and identifier -----------------------------------------------------------------------


def test_id_finds_the_resource_and_a_comma_separated_list_finds_each(reader, people):
    assert found(reader, "Patient", {"_id": people["doe"]}, people) == {"doe"}
    assert found(reader, "Patient", {"_id": f"{people['doe']},{people['perez']}"}, people) == {"doe", "perez"}
    assert found(reader, "Patient", {"_id": "no-such-id"}, people) == set()


# The identifier forms the server documents (CapabilityStatement documentation of `identifier`):
# the IG's identifiers carry no Identifier.system; their type (Code or UUID, in the openimis-identifiers
# CodeSystem) tells them apart.
IDENTIFIER_FORMS = [
    # (query parameter, value template, found?) — {id} is the patient's id
    ("identifier", "123456789", True),  # any type
    ("identifier", "|123456789", True),  # "no system": the IG never sets one
    ("identifier", "Code|123456789", True),  # type-qualified shorthand
    ("identifier", "UUID|{id}", True),
    ("identifier", "{id}", True),  # the UUID identifier, unqualified
    ("identifier", f"{IDENTIFIERS}|Code|123456789", True),  # <type system>|<type code>|<value>
    ("identifier", f"{IDENTIFIERS}|123456789", True),  # the type system alone: any type
    ("identifier:of-type", f"{IDENTIFIERS}|Code|123456789", True),  # standard FHIR R4 :of-type
    ("identifier:of-type", f"{IDENTIFIERS}|UUID|{{id}}", True),
    ("identifier", "UUID|123456789", False),  # the Code value is not a UUID identifier
    ("identifier", "Code|{id}", False),  # and the UUID is not the Code
    ("identifier", "http://example.org/other|123456789", False),  # a foreign system
    ("identifier", "12345678", False),  # tokens match whole values, not prefixes
    ("identifier:of-type", f"{IDENTIFIERS}|MR|123456789", False),  # a type the IG does not use
]


@pytest.mark.parametrize(("key", "template", "hit"), IDENTIFIER_FORMS)
def test_identifier_form(reader, people, key, template, hit):
    value = template.replace("{id}", people["doe"])
    assert found(reader, "Patient", {key: value}, people) == ({"doe"} if hit else set())


@pytest.mark.parametrize(("key", "value"), [
    ("identifier:of-type", "Code|123456789"),  # :of-type needs all three parts
    ("identifier", "http://example.org/other|Code|123456789"),  # three parts, but not the IG's type system
    ("identifier", "123 456"),  # not a token
])
def test_malformed_identifier_is_rejected(reader, people, key, value):
    body = rejected(reader, "Patient", {key: value})
    assert body["issue"][0]["expression"] == [key]


# --- Patient: strings ----------------------------------------------------------------------------------


def test_string_search_is_a_case_insensitive_starts_with_by_default(reader, people):
    assert found(reader, "Patient", {"family": "do"}, people) == {"doe", "dorsey"}
    assert found(reader, "Patient", {"family": "DOR"}, people) == {"dorsey"}
    assert found(reader, "Patient", {"family": "oe"}, people) == set()  # not a starts-with
    assert found(reader, "Patient", {"given": "jo"}, people) == {"doe"}
    assert found(reader, "Patient", {"name": "do"}, people) == {"doe", "dorsey"}  # family Doe, Dorsey/Dorothy
    assert found(reader, "Patient", {"name": "zo"}, people) == {"oneil"}  # given Zoë
    assert found(reader, "Patient", {"name": "o'neil"}, people) == {"oneil"}


def test_string_search_ignores_case_and_accents_as_fhir_requires(reader, people):
    # FHIR R4 string search: "equals or starts with … after both have been normalized by case and accent".
    assert found(reader, "Patient", {"family": "perez"}, people) == {"perez"}
    assert found(reader, "Patient", {"family": "PEREZ"}, people) == {"perez"}
    assert found(reader, "Patient", {"family": "PÉR"}, people) == {"perez"}
    assert found(reader, "Patient", {"given": "zoe"}, people) == {"oneil"}
    assert found(reader, "Patient", {"given": "ZOË"}, people) == {"oneil"}
    assert found(reader, "Patient", {"family:contains": "EREZ"}, people) == {"perez"}
    # :exact compares the stored value as is: accents and case count.
    assert found(reader, "Patient", {"family:exact": "Pérez"}, people) == {"perez"}
    assert found(reader, "Patient", {"family:exact": "Perez"}, people) == set()


def test_exact_matches_the_whole_value_case_sensitively(reader, people):
    assert found(reader, "Patient", {"family:exact": "Doe"}, people) == {"doe"}
    assert found(reader, "Patient", {"family:exact": "doe"}, people) == set()
    assert found(reader, "Patient", {"family:exact": "Do"}, people) == set()
    assert found(reader, "Patient", {"given:exact": "Zoë"}, people) == {"oneil"}
    assert found(reader, "Patient", {"name:exact": "John"}, people) == {"doe"}
    assert found(reader, "Patient", {"name:exact": "O'Neil-Smith"}, people) == {"oneil"}


def test_contains_matches_anywhere_in_the_value(reader, people):
    assert found(reader, "Patient", {"family:contains": "neil"}, people) == {"oneil"}
    assert found(reader, "Patient", {"family:contains": "SMITH"}, people) == {"oneil"}
    assert found(reader, "Patient", {"given:contains": "rot"}, people) == {"dorsey"}
    assert found(reader, "Patient", {"name:contains": "or"}, people) == {"dorsey"}


def test_given_matches_any_of_the_given_names(reader, people):
    # openIMIS keeps all other names in one string ("Ana María", rendered as the IG's single given): each word
    # is a given name of its own, so the default search matches the start of any of them.
    assert found(reader, "Patient", {"given": "maria"}, people) == {"perez"}
    assert found(reader, "Patient", {"name": "maria"}, people) == {"perez"}
    assert found(reader, "Patient", {"given:exact": "María"}, people) == {"perez"}


def test_missing_modifier(reader, people):
    assert found(reader, "Patient", {"email:missing": "true"}, people) == {"perez", "dorsey"}
    assert found(reader, "Patient", {"email:missing": "false"}, people) == {"doe", "oneil"}
    assert found(reader, "Patient", {"phone:missing": "true"}, people) == {"perez", "oneil"}
    assert found(reader, "Patient", {"name:missing": "true"}, people) == set()  # a name is mandatory
    assert found(reader, "Patient", {"family:missing": "false"}, people) == set(people)
    assert found(reader, "Patient", {"general-practitioner:missing": "true"}, people) == set(people)
    rejected(reader, "Patient", {"email:missing": "yes"})


def test_unsupported_modifier_is_rejected(reader, people):
    body = rejected(reader, "Patient", {"family:fuzzy": "doe"})
    assert body["issue"][0]["expression"] == ["family:fuzzy"]
    rejected(reader, "Patient", {"gender:exact": "male"})


# --- Patient: tokens and references --------------------------------------------------------------------


def test_gender_and_its_not_modifier(reader, people):
    assert found(reader, "Patient", {"gender": "male"}, people) == {"doe"}
    assert found(reader, "Patient", {"gender": "female"}, people) == {"perez", "dorsey"}
    assert found(reader, "Patient", {"gender:not": "female"}, people) == {"doe", "oneil"}
    fhir_other = "http://hl7.org/fhir/administrative-gender|other"
    assert found(reader, "Patient", {"gender": fhir_other}, people) == {"oneil"}
    assert found(reader, "Patient", {"gender": "http://example.org/sex|male"}, people) == set()
    rejected(reader, "Patient", {"gender": "M"})  # openIMIS stores M/F/O; the FHIR codes are male, female…


def test_phone_email_and_telecom(reader, people):
    assert found(reader, "Patient", {"phone": "+255700000001"}, people) == {"doe"}
    assert found(reader, "Patient", {"phone": "phone|+255700000001"}, people) == {"doe"}
    assert found(reader, "Patient", {"phone": "+2557"}, people) == set()  # whole values only
    assert found(reader, "Patient", {"email": "zoe@example.org"}, people) == {"oneil"}
    assert found(reader, "Patient", {"telecom": "+255700000004"}, people) == {"dorsey"}
    assert found(reader, "Patient", {"telecom": "john.doe@example.org"}, people) == {"doe"}


def test_unencoded_plus_in_a_phone_number_is_a_space_and_rejected(reader, people):
    # In a query string '+' means a space: clients must send %2B. The server says so rather than find nothing.
    resp = reader.get("Patient?phone=+255700000001")
    assert resp.status_code == 400
    assert found(reader, "Patient?phone=%2B255700000001", None, people) == {"doe"}


def test_telecom_system_selects_phone_or_email(reader, people):
    assert found(reader, "Patient", {"telecom": "phone|+255700000001"}, people) == {"doe"}
    assert found(reader, "Patient", {"telecom": "email|+255700000001"}, people) == set()


def test_address_parts_search_the_location_names(reader, people):
    assert found(reader, "Patient", {"address-city": "jamula"}, people) == {"doe", "oneil"}
    assert found(reader, "Patient", {"address-city": "KIP"}, people) == {"perez", "dorsey"}
    assert found(reader, "Patient", {"address-municipality": "ilula"}, people) == {"perez", "dorsey"}
    assert found(reader, "Patient", {"address-district": "rapta"}, people) == {"doe", "oneil"}
    assert found(reader, "Patient", {"address-state": "tahida"}, people) == {"perez", "dorsey"}
    assert found(reader, "Patient", {"address-state": "rapta"}, people) == set()  # a district is not a state
    assert found(reader, "Patient", {"address": "jamu"}, people) == {"doe", "oneil"}  # ward Jamu, village Jamula
    assert found(reader, "Patient", {"address": "mbeya"}, people) == {"perez", "dorsey"}
    assert found(reader, "Patient", {"address:exact": "Ultha"}, people) == {"doe", "oneil"}
    assert found(reader, "Patient", {"address:exact": "ultha"}, people) == set()


def test_comma_is_or_and_a_repeated_parameter_is_and(reader, people):
    assert found(reader, "Patient", {"family": "doe,dorsey"}, people) == {"doe", "dorsey"}
    assert found(reader, "Patient", [("family", "do"), ("given", "jo")], people) == {"doe"}
    assert found(reader, "Patient", [("family", "do"), ("family", "dor")], people) == {"dorsey"}
    assert found(reader, "Patient", [("name", "do"), ("name", "john")], people) == {"doe"}
    both = [("gender", "male,other"), ("address-city", "jamula")]
    assert found(reader, "Patient", both, people) == {"doe", "oneil"}
    assert found(reader, "Patient", [("gender", "male,other"), ("gender", "female")], people) == set()
    # An escaped comma is part of the value, not a separator.
    assert found(reader, "Patient", {"family": "doe\\,dorsey"}, people) == set()


def test_active_means_has_an_active_policy(reader, people):
    # In the dataset, doe's insuree row has an active policy (policies cannot be written through the API yet).
    assert found(reader, "Patient", {"active": "true"}, people) == {"doe"}
    assert found(reader, "Patient", {"active": "false"}, people) == {"perez", "oneil", "dorsey"}
    assert found(reader, "Patient", {"active:not": "true"}, people) == {"perez", "oneil", "dorsey"}
    rejected(reader, "Patient", {"active": "yes"})


# --- result parameters ---------------------------------------------------------------------------------


def _families(body: dict[str, Any]) -> list[str]:
    return [r["name"][0]["family"] for r in matches(body)]


def test_sort_ascending_descending_and_by_several_keys(reader, people):
    alphabetical = ["Doe", "Dorsey", "O'Neil-Smith", "Pérez"]
    assert _families(bundle(reader, "Patient", {"_sort": "family"})) == alphabetical
    assert _families(bundle(reader, "Patient", {"_sort": "-family"})) == alphabetical[::-1]
    # gender ascending (stored F < M < O), then the youngest first
    assert _families(bundle(reader, "Patient", {"_sort": "gender,-birthdate"})) == [
        "Dorsey", "Pérez", "Doe", "O'Neil-Smith"]
    oldest_first = ["Pérez", "Dorsey", "Doe", "O'Neil-Smith"]
    assert _families(bundle(reader, "Patient", {"_sort": "birthdate"})) == oldest_first
    by_update = [r["id"] for r in matches(bundle(reader, "Patient", {"_sort": "-_lastUpdated"}))]
    assert by_update == [people[n] for n in ("dorsey", "oneil", "perez", "doe")]


@pytest.mark.parametrize("sort", ["bogus", "family,bogus", "-phone", "family;DROP"])
def test_sort_by_an_unknown_key_is_rejected(reader, people, sort):
    body = rejected(reader, "Patient", {"_sort": sort})
    assert body["issue"][0]["expression"] == ["_sort"]


def test_total_only_when_asked(reader, people):
    assert "total" not in bundle(reader, "Patient", {"_count": "1"})
    assert "total" not in bundle(reader, "Patient", {"_total": "none"})
    page = bundle(reader, "Patient", {"_total": "accurate", "_count": "1"})
    assert page["total"] == 4 and len(matches(page)) == 1
    assert bundle(reader, "Patient", {"_total": "accurate", "family": "do"})["total"] == 2
    rejected(reader, "Patient", {"_total": "exact"})


def test_summary_count_gives_the_total_and_no_entries(reader, people):
    body = bundle(reader, "Patient", {"_summary": "count", "family": "do"})
    assert body["total"] == 2
    assert "entry" not in body
    assert bundle(reader, "Patient", {"_summary": "count"})["total"] == 4


def test_summary_true_keeps_the_summary_elements(reader, people):
    resources = matches(bundle(reader, "Patient", {"_summary": "true", "_id": people["doe"]}))
    assert len(resources) == 1
    res = resources[0]
    assert set(res) == {"resourceType", "id", "meta", "identifier", "active", "name", "telecom", "gender",
                        "birthDate", "address"}
    assert SUBSETTED in res["meta"]["tag"]
    assert res["meta"]["versionId"] == "1"


def test_elements_keeps_only_the_named_elements(reader, people):
    resources = matches(bundle(reader, "Patient", {"_elements": "identifier,name"}))
    assert len(resources) == 4
    for res in resources:
        assert set(res) == {"resourceType", "id", "meta", "identifier", "name"}
        assert SUBSETTED in res["meta"]["tag"]
    full = reader.get(f"Patient/{people['doe']}").json()
    doe = next(r for r in resources if r["id"] == people["doe"])
    assert doe["identifier"] == full["identifier"] and doe["name"] == full["name"]
    rejected(reader, "Patient", {"_elements": "name,<b>"})


def test_summary_false_returns_whole_resources(reader, people):
    res = matches(bundle(reader, "Patient", {"_summary": "false", "_id": people["doe"]}))[0]
    assert res == reader.get(f"Patient/{people['doe']}").json()
    rejected(reader, "Patient", {"_summary": "maybe"})


@pytest.mark.parametrize("count", ["-1", "abc", "1.5", "1e3", "9999999999"])
def test_invalid_count_is_rejected(reader, people, count):
    body = rejected(reader, "Patient", {"_count": count})
    assert body["issue"][0]["expression"] == ["_count"]


def test_count_limits_the_page_and_zero_gives_no_entries(reader, people):
    page = bundle(reader, "Patient", {"_count": "3"})
    assert len(matches(page)) == 3
    assert [link["relation"] for link in page["link"]] == ["self", "next"]
    empty = bundle(reader, "Patient", {"_count": "0", "_total": "accurate"})
    assert "entry" not in empty and empty["total"] == 4


@pytest.mark.parametrize("prefer", [None, "handling=lenient"])
def test_unknown_parameter_is_ignored_with_a_warning(reader, people, prefer):
    headers = {"Prefer": prefer} if prefer else None
    body = bundle(reader, "Patient", {"frobnicate": "1", "family": "doe"}, headers=headers)
    assert [r["id"] for r in matches(body)] == [people["doe"]]
    outcomes = [e for e in body["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1
    issue = outcomes[0]["resource"]["issue"][0]
    assert outcomes[0]["resource"]["resourceType"] == "OperationOutcome"
    assert issue["severity"] == "warning" and issue["expression"] == ["frobnicate"]
    assert "frobnicate" not in next(lnk["url"] for lnk in body["link"] if lnk["relation"] == "self")


def test_unknown_parameter_is_an_error_under_strict_handling(reader, people):
    strict = {"Prefer": "handling=strict"}
    body = rejected(reader, "Patient", {"frobnicate": "1"}, headers=strict)
    assert body["issue"][0]["code"] == "not-supported"
    assert body["issue"][0]["expression"] == ["frobnicate"]
    rejected(reader, "Patient", {"_contained": "true"}, headers=strict)  # not supported
    assert [r["id"] for r in matches(bundle(reader, "Patient", {"family": "doe"}, headers=strict))] == [
        people["doe"]]


@pytest.mark.parametrize(("rtype", "params"), [
    ("Patient", {"birthdate": "1990-02-31"}),
    ("Patient", {"gender": "bogus"}),
    ("Patient", {"identifier": "a b"}),
    ("Patient", {"phone": "(+255)"}),
    ("Patient", {"_id": "a/b"}),
    ("Patient", {"family": "x" * 101}),
    ("Patient", {"family": "do%"}),
    ("Patient", {"active": "1"}),
    ("Group", {"member": "Patient/a b"}),
    ("Location", {"partof": "Organization/x"}),
    ("Organization", {"type": "prov bus"}),
    ("Patient", {"_cursor": "!!!"}),
    ("Patient", {"_cursor": "bm90LWpzb24"}),  # base64 of "not-json"
    ("Patient", {"_pretty": "yes"}),
])
def test_invalid_values_are_rejected(reader, people, rtype, params):
    body = rejected(reader, rtype, params)
    assert body["issue"][0]["code"] in ("invalid", "not-supported")


def _cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(("sort", "payload"), [
    (None, [0, ["x", "y"]]),  # rank and pk must be integers
    (None, [0, [0, True]]),
    (None, [0, [0, 10**30]]),  # out of range
    (None, [0, [5, 1]]),  # no such kind rank
    (None, [0, ["Doe", 0, 1]]),  # a sort value without _sort
    ("birthdate", [0, ["not-a-date", 0, 1]]),
    ("birthdate", [0, [19900101, 0, 1]]),
    ("family", [0, [42, 0, 1]]),
    ("_lastUpdated", [0, ["yesterday", 0, 1]]),
    ("family", [0, [0, 1]]),  # a cursor from an unsorted search
])
def test_forged_cursor_is_rejected(reader, people, sort, payload):
    params = {"_cursor": _cursor(payload)}
    if sort:
        params["_sort"] = sort
    body = rejected(reader, "Patient", params)
    assert body["issue"][0]["expression"] == ["_cursor"]


def test_forged_cursor_is_rejected_by_history_too(reader, people):
    # _history shares the cursor format: a forged one is a 400 there as well, never a 500.
    for payload in ([0, [True, 0]], [0, [2**64, 0]], [0, ["x", 0]], [0, [1.5, 0]]):
        resp = reader.get(f"Patient/_history?_cursor={_cursor(payload)}")
        assert resp.status_code == 400, f"{payload}: {resp.status_code} {resp.text}"
        assert resp.json()["issue"][0]["expression"] == ["_cursor"]


# --- Patient: invalid dates ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1990-13-01", "1990-02-30", "31-01-1990", "1990-1-1", "xx1990", "gt",
                                   "1990-01-01T25:00Z", "1990-01-01T10Z", "9999-12-31", "ap0001-01-01",
                                   "1990-01-01T10:00:00+24:00"])
def test_invalid_birthdate_is_rejected(reader, people, value):
    body = rejected(reader, "Patient", {"birthdate": value})
    assert body["issue"][0]["code"] == "invalid"
    assert body["issue"][0]["expression"] == ["birthdate"]


@pytest.mark.parametrize("value", ["yesterday", "2025-01-01T10:00:00.1234567Z", "2025-01-01 10:00", "9999-12",
                                   "2025-00", "2025-01-01T10:00:00+2:00", "le"])
def test_invalid_last_updated_is_rejected(reader, value):
    body = rejected(reader, "Patient", {"_lastUpdated": value})
    assert body["issue"][0]["expression"] == ["_lastUpdated"]


# --- Location ------------------------------------------------------------------------------------------


def test_location_name(reader, towns):
    assert found(reader, "Location", {"name": "jam"}, towns) == {"Jamu", "Jamula"}
    assert found(reader, "Location", {"name:exact": "Jamu"}, towns) == {"Jamu"}
    assert found(reader, "Location", {"name:contains": "ILU"}, towns) == {"Ilula"}


def test_location_type_is_the_level(reader, towns):
    assert found(reader, "Location", {"type": "R"}, towns) == {"Ultha", "Tahida"}
    assert found(reader, "Location", {"type": "D"}, towns) == {"Rapta", "Mbeya"}
    assert found(reader, "Location", {"type": "W"}, towns) == {"Jamu", "Ilula"}
    assert found(reader, "Location", {"type": "V"}, towns) == {"Jamula", "Kipawa"}
    assert found(reader, "Location", {"type": "R,V"}, towns) == {"Ultha", "Tahida", "Jamula", "Kipawa"}
    assert found(reader, "Location", {"type": f"{CS}location-type|W"}, towns) == {"Jamu", "Ilula"}
    assert found(reader, "Location", {"type": "http://example.org/levels|W"}, towns) == set()
    assert found(reader, "Location", {"physical-type": "D"}, towns) == {"Rapta", "Mbeya"}
    assert found(reader, "Location", {"type:not": "V"}, towns) == set(towns) - {"Jamula", "Kipawa"}
    rejected(reader, "Location", {"type": "X"})


def test_location_partof_and_address(reader, towns):
    assert found(reader, "Location", {"partof": f"Location/{towns['Ultha']}"}, towns) == {"Rapta"}
    assert found(reader, "Location", {"partof": towns["Jamu"]}, towns) == {"Jamula"}
    assert found(reader, "Location", {"partof:missing": "true"}, towns) == {"Ultha", "Tahida"}
    # address: the location's own name or any ancestor's.
    assert found(reader, "Location", {"address": "rapta"}, towns) == {"Rapta", "Jamu", "Jamula"}
    assert found(reader, "Location", {"address": "ultha"}, towns) == {"Ultha", "Rapta", "Jamu", "Jamula"}
    assert found(reader, "Location", {"address": "kipawa"}, towns) == {"Kipawa"}
    assert found(reader, "Location", {"identifier": "R2D1"}, towns) == {"Mbeya"}


# --- Patient: birthdate --------------------------------------------------------------------------------


def _births(*names: str) -> set[str]:
    return set(names)


def _check_dates(api: Any, births: dict[str, str], cases: dict[str, set[str]]) -> None:
    failures = []
    for value, expected in cases.items():
        got = found(api, "Patient", {"birthdate": value}, births)
        if got != expected:
            failures.append(f"birthdate={value}: got {sorted(got)}, expected {sorted(expected)}")
    assert not failures, "\n".join(failures)


def test_birthdate_prefixes_at_year_precision(reader, births):
    in_1990 = _births("1990-01-01", "1990-01-31", "1990-02-01", "1990-12-31")
    before, after = _births("1980-06-30", "1989-12-31"), _births("1991-01-01", "2000-06-15")
    _check_dates(reader, births, {
        "1990": in_1990, "eq1990": in_1990, "ne1990": before | after,
        "gt1990": after, "sa1990": after, "ge1990": in_1990 | after,
        "lt1990": before, "eb1990": before, "le1990": before | in_1990,
    })


def test_birthdate_prefixes_at_month_precision(reader, births):
    january = _births("1990-01-01", "1990-01-31")
    before = _births("1980-06-30", "1989-12-31")
    after = _births("1990-02-01", "1990-12-31", "1991-01-01", "2000-06-15")
    _check_dates(reader, births, {
        "1990-01": january, "eq1990-01": january, "ne1990-01": before | after,
        "gt1990-01": after, "sa1990-01": after, "ge1990-01": january | after,
        "lt1990-01": before, "eb1990-01": before, "le1990-01": before | january,
        "1990-02": _births("1990-02-01"),
    })


def test_birthdate_prefixes_at_day_precision(reader, births):
    day = _births("1990-01-31")
    before = _births("1980-06-30", "1989-12-31", "1990-01-01")
    after = _births("1990-02-01", "1990-12-31", "1991-01-01", "2000-06-15")
    _check_dates(reader, births, {
        "1990-01-31": day, "eq1990-01-31": day, "ne1990-01-31": before | after,
        "gt1990-01-31": after, "sa1990-01-31": after, "ge1990-01-31": day | after,
        "lt1990-01-31": before, "eb1990-01-31": before, "le1990-01-31": before | day,
        "1990-01-30": set(),
    })


def test_birthdate_approximately_widens_by_a_tenth_of_the_distance_to_now(reader, births):
    # ap1990-01-31 is ~37 years ago: ±~3.7 years, so 1986-1993 match and 1980 / 2000 do not.
    near = _births("1989-12-31", "1990-01-01", "1990-01-31", "1990-02-01", "1990-12-31", "1991-01-01")
    _check_dates(reader, births, {"ap1990-01-31": near, "ap1990-01": near, "ap1990": near,
                                  "ap1980-06-30": _births("1980-06-30")})


def test_birthdate_with_a_time_compares_the_whole_day(reader, births):
    # A time narrows the search range to a minute; a day of birth is a whole day that overlaps it.
    _check_dates(reader, births, {
        "1990-01-31T10:00Z": set(),  # a day does not fit inside one minute
        "ge1990-12-31T23:00Z": _births("1990-12-31", "1991-01-01", "2000-06-15"),
        "lt1990-01-01T12:00:00Z": _births("1980-06-30", "1989-12-31", "1990-01-01"),
        "ap1990-01-31T12:00:00+02:00": _births("1989-12-31", "1990-01-01", "1990-01-31", "1990-02-01",
                                               "1990-12-31", "1991-01-01"),
    })


# --- Group ---------------------------------------------------------------------------------------------


def test_group_member_and_identifier(reader, family):
    groups = {"family": family["family"]}
    assert found(reader, "Group", {"member": f"Patient/{family['member']}"}, groups) == {"family"}
    assert found(reader, "Group", {"member": family["head"]}, groups) == {"family"}
    assert found(reader, "Group", {"member": family["alone"]}, groups) == set()
    assert found(reader, "Group", {"identifier": "FAM0001"}, groups) == {"family"}
    assert found(reader, "Group", {"identifier": f"UUID|{family['family']}"}, groups) == {"family"}
    assert found(reader, "Group", {"identifier": "FAM0002"}, groups) == set()  # a member's number is no code
    rejected(reader, "Group", {"member": f"Group/{family['family']}"})


def test_group_name_is_the_head_s_name(reader, family):
    groups = {"family": family["family"]}
    assert reader.get(f"Group/{family['family']}").json()["name"] == "Kimaro Joseph"
    assert found(reader, "Group", {"name": "kimaro"}, groups) == {"family"}
    assert found(reader, "Group", {"name": "KIM"}, groups) == {"family"}
    assert found(reader, "Group", {"name": "smith"}, groups) == set()
    assert found(reader, "Group", {"name": "joseph"}, groups) == set()  # starts-with on "Kimaro Joseph"


def test_group_name_exact_and_contains_use_the_whole_group_name(reader, family):
    groups = {"family": family["family"]}
    assert found(reader, "Group", {"name:exact": "Kimaro Joseph"}, groups) == {"family"}
    assert found(reader, "Group", {"name:exact": "kimaro joseph"}, groups) == set()
    assert found(reader, "Group", {"name:contains": "jose"}, groups) == {"family"}
    assert found(reader, "Group", {"name": "kimaro j"}, groups) == {"family"}


def test_patient_group_finds_the_family_members(reader, family):
    fam = family["family"]
    patients = {k: v for k, v in family.items() if k != "family"}
    assert found(reader, "Patient", {"group": f"Group/{fam}"}, patients) == {"head", "member"}
    assert found(reader, "Patient", {"group": fam}, patients) == {"head", "member"}
    assert found(reader, "Patient", {"group": "Group/no-such-family"}, patients) == set()
    assert found(reader, "Patient", {"group:missing": "true"}, patients) == {"alone"}
    rejected(reader, "Patient", {"group": f"Location/{fam}"})


# --- Organization --------------------------------------------------------------------------------------


def test_organization_type_selects_the_kind(reader, orgs):
    assert found(reader, "Organization", {"type": "prov"}, orgs) == {"hf"}
    assert found(reader, "Organization", {"type": "bus"}, orgs) == {"ph"}
    assert found(reader, "Organization", {"type": "ins"}, orgs) == {"insurer"}
    assert found(reader, "Organization", {"type": "prov,bus"}, orgs) == {"hf", "ph"}
    assert found(reader, "Organization", {"type:not": "ins"}, orgs) == {"hf", "ph"}
    assert found(reader, "Organization", {"type": f"{ORG_TYPE}|prov"}, orgs) == {"hf"}
    assert found(reader, "Organization", {"type": "http://example.org/kinds|prov"}, orgs) == set()
    assert found(reader, "Organization", {"type": "dept"}, orgs) == set()


def test_organization_name_and_address(reader, orgs):
    assert found(reader, "Organization", {"name": "rapta"}, orgs) == {"hf"}
    assert found(reader, "Organization", {"name": "MY"}, orgs) == {"ph"}
    assert found(reader, "Organization", {"name": "openimis"}, orgs) == {"insurer"}
    assert found(reader, "Organization", {"name:contains": "hosp"}, orgs) == {"hf"}
    # A facility's address is its district, a policy holder's its village; the insurer has none.
    assert found(reader, "Organization", {"address": "rapta"}, orgs) == {"hf"}
    assert found(reader, "Organization", {"address": "mbeya"}, orgs) == {"ph"}
    assert found(reader, "Organization", {"address": "ultha"}, orgs) == {"hf"}
    assert found(reader, "Organization", {"address": "kipawa"}, orgs) == {"ph"}
    assert found(reader, "Organization", [("address", "rapta"), ("type", "bus")], orgs) == set()


# --- injection -----------------------------------------------------------------------------------------

INJECTIONS = ["' OR 1=1 --", '"; DROP TABLE insuree; --', "../../etc/passwd", "%00", "\x00", "<script>",
              "<script>alert(1)</script>"]
RESULT_PARAMS = ["_sort", "_count", "_total", "_summary", "_elements", "_cursor", "_pretty", "_format"]


def _row_counts(engine: Any) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(
            conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in [resource_version] + [k.table for kinds in TYPES.values() for k in kinds]
        )


@pytest.mark.parametrize("rtype", ["Patient", "Group", "Location", "Organization"])
def test_injection_in_every_search_parameter_is_a_client_error(reader, engine, family, orgs, rtype):
    params: dict[str, Any] = {}
    for kind in TYPES[rtype]:
        params.update(kind.search_params)
    keys = [name + (f":{m}" if m else "") for name, p in sorted(params.items())
            for m in [None, *sorted(p.modifiers), "missing"]]
    keys += RESULT_PARAMS
    before = _row_counts(engine)
    failures = []
    for key in keys:
        for value in INJECTIONS:
            resp = reader.get(rtype, params={key: value})
            body = resp.json()
            if not (400 <= resp.status_code < 500 and body.get("resourceType") == "OperationOutcome"):
                failures.append(f"{rtype}?{key}={value!r}: {resp.status_code}")
    assert not failures, "\n".join(failures)
    assert _row_counts(engine) == before
    assert len(matches(bundle(reader, rtype))) > 0  # the tables are still there and readable


def test_injection_in_a_raw_query_string_is_a_client_error(reader, engine, family):
    before = _row_counts(engine)
    for raw in ["family=%27%20OR%201%3D1%20--", "family=x%00", "_id=..%2F..%2Fetc%2Fpasswd",
                "family=%3Cscript%3E", "identifier=%22%3B%20DROP%20TABLE%20insuree%3B%20--", "family=%C3%28"]:
        resp = reader.get(f"Patient?{raw}")
        assert 400 <= resp.status_code < 500, f"{raw}: {resp.status_code} {resp.text}"
        assert resp.json()["resourceType"] == "OperationOutcome"
    assert _row_counts(engine) == before


# --- tests that write (each on a fresh database) -------------------------------------------------------


def test_the_insurer_always_exists(api):
    ins = {"insurer": INSURER_ID}
    assert found(api, "Organization", None, ins) == {"insurer"}
    assert found(api, "Organization", {"type": "ins"}, ins) == {"insurer"}
    assert found(api, "Organization", {"identifier": "openIMIS"}, ins) == {"insurer"}


def test_general_practitioner_is_the_first_point_of_service(api, loc):
    hf = created(api.post("Organization", health_facility("HF001", "Rapta Hospital", loc["Rapta"])))
    ph = created(api.post("Organization", policy_holder("PH001", "My Trade", loc["Jamula"])))
    treated = patient("523456789", "Client", "Treated", loc["Jamula"])
    treated["generalPractitioner"] = [{"reference": f"Organization/{hf['id']}"}]
    names = {"treated": created(api.post("Patient", treated))["id"],
             "other": created(api.post("Patient", patient("623456789", "Client", "Other", loc["Jamula"])))["id"]}
    assert found(api, "Patient", {"general-practitioner": f"Organization/{hf['id']}"}, names) == {"treated"}
    assert found(api, "Patient", {"general-practitioner": hf["id"]}, names) == {"treated"}
    assert found(api, "Patient", {"general-practitioner": ph["id"]}, names) == set()  # not a facility
    assert found(api, "Patient", {"general-practitioner:missing": "false"}, names) == {"treated"}
    assert found(api, "Patient", {"general-practitioner:missing": "true"}, names) == {"other"}


# --- _lastUpdated --------------------------------------------------------------------------------------


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


PRECISIONS = ["year", "month", "day", "minute", "second", "milli", "micro"]


def _render(moment: datetime, precision: str, tz: timezone = UTC) -> str:
    local = moment.astimezone(tz)
    zone = "Z" if tz is UTC else local.strftime("%z")[:3] + ":" + local.strftime("%z")[3:]
    return {
        "year": f"{local:%Y}", "month": f"{local:%Y-%m}", "day": f"{local:%Y-%m-%d}",
        "minute": f"{local:%Y-%m-%dT%H:%M}{zone}", "second": f"{local:%Y-%m-%dT%H:%M:%S}{zone}",
        "milli": f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond // 1000:03d}{zone}",
        "micro": f"{local:%Y-%m-%dT%H:%M:%S.%f}{zone}",
    }[precision]


def _key(moment: datetime, precision: str) -> tuple[int, ...]:
    m = moment.astimezone(UTC)
    full = (m.year, m.month, m.day, m.hour, m.minute, m.second, m.microsecond // 1000, m.microsecond)
    size = {"year": 1, "month": 2, "day": 3, "minute": 5, "second": 6, "milli": 7, "micro": 8}[precision]
    return full[:size]


# A point in time t matches prefix p against a value v of some precision exactly when the truncations of t and
# v to that precision compare so (FHIR R4 search: the value is the range [v, v + 1 unit)).
ORACLE = {
    "eq": lambda t, v: t == v, "ne": lambda t, v: t != v, "gt": lambda t, v: t > v, "sa": lambda t, v: t > v,
    "ge": lambda t, v: t >= v, "lt": lambda t, v: t < v, "eb": lambda t, v: t < v, "le": lambda t, v: t <= v,
}


def test_last_updated_every_prefix_precision_and_time_zone(api, loc):
    stamps: dict[str, datetime] = {}
    for i in range(3):
        p = created(api.post("Patient", patient(f"L{i:08d}", "Stamp", "Time", loc["Jamula"])))
        stamps[p["id"]] = _instant(p["meta"]["lastUpdated"])
        time.sleep(0.002)
    names = {pid: pid for pid in stamps}
    middle = sorted(stamps.values())[1]
    zones = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))]
    failures = []
    for precision in PRECISIONS:
        for tz in zones if precision not in ("year", "month", "day") else [UTC]:
            for prefix, test in ORACLE.items():
                value = prefix + _render(middle, precision, tz)
                want = {pid for pid, t in stamps.items() if test(_key(t, precision), _key(middle, precision))}
                got = found(api, "Patient", {"_lastUpdated": value}, names)
                if got != want:
                    failures.append(f"_lastUpdated={value}: {len(got)} found, {len(want)} expected")
    assert not failures, "\n".join(failures)


def test_last_updated_just_before_and_just_after_a_write(api, loc):
    ids = {}
    for name in ("first", "second"):
        p = created(api.post("Patient", patient(f"J{len(ids):08d}", "Stamp", name.title(), loc["Jamula"])))
        ids[name] = p["id"]
        time.sleep(0.002)
    first = _instant(api.get(f"Patient/{ids['first']}").json()["meta"]["lastUpdated"])
    us = timedelta(microseconds=1)
    at, before, after = (_render(m, "micro") for m in (first, first - us, first + us))
    assert found(api, "Patient", {"_lastUpdated": at}, ids) == {"first"}
    assert found(api, "Patient", {"_lastUpdated": f"gt{before}"}, ids) == {"first", "second"}
    assert found(api, "Patient", {"_lastUpdated": f"gt{at}"}, ids) == {"second"}
    assert found(api, "Patient", {"_lastUpdated": f"lt{after}"}, ids) == {"first"}
    assert found(api, "Patient", {"_lastUpdated": f"lt{at}"}, ids) == set()
    assert found(api, "Patient", {"_lastUpdated": f"le{at}"}, ids) == {"first"}
    assert found(api, "Patient", {"_lastUpdated": f"ge{after}"}, ids) == {"second"}
    # An update moves lastUpdated: the patient leaves "le <first write>".
    body = api.get(f"Patient/{ids['first']}").json()
    body["name"][0]["given"] = ["Changed"]
    assert api.put(f"Patient/{ids['first']}", body).status_code == 200
    assert found(api, "Patient", {"_lastUpdated": f"le{at}"}, ids) == set()


def test_last_updated_calendar_boundaries_and_offsets(api, engine, loc):
    # Pinned instants (written to the entity rows that search reads) make the calendar boundaries exact.
    pinned = {
        "old_year": datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        "new_year": datetime(2025, 1, 1, tzinfo=UTC),
        "morning": datetime(2025, 1, 1, 4, 59, 59, tzinfo=UTC),
    }
    names = {}
    for i, (name, moment) in enumerate(pinned.items()):
        body = patient(f"C{i:08d}", "Pinned", "Time", loc["Jamula"])
        names[name] = created(api.post("Patient", body))["id"]
        micros = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        with engine.begin() as conn:
            conn.execute(update(insuree).where(insuree.c.id == names[name]).values(last_updated=micros))
    cases = {
        "2024": {"old_year"}, "2025": {"new_year", "morning"}, "2024-12": {"old_year"},
        "2025-01-01": {"new_year", "morning"}, "lt2025": {"old_year"},
        "ge2025-01-01": {"new_year", "morning"},
        "2025-01-01T00:00Z": {"new_year"},  # minute precision
        "2025-01-01T02:00+02:00": {"new_year"},  # the same minute, east of UTC
        "2024-12-31T19:00-05:00": {"new_year"},  # and west of UTC
        "2024-12-31T23:59:59.999999Z": {"old_year"},
        "2024-12-31T23:59:59.999Z": {"old_year"},  # millisecond precision covers the last microsecond
        "2024-12-31T23:59:59Z": {"old_year"},
        "gt2024-12-31T23:59:59.999999Z": {"new_year", "morning"},
        "le2024-12-31T18:59:59.999999-05:00": {"old_year"},
        "2025-01-01T04:59:59Z": {"morning"}, "2025-01-01T04:59:59+00:00": {"morning"},
        "2024-12-31T23:59:59-05:00": {"morning"},
        "sa2025-01-01T00:00:00Z": {"morning"}, "eb2025-01-01T00:00:00Z": {"old_year"},
        "eb2025-01-01T00:00:00.000001Z": {"old_year", "new_year"},
        "ne2025-01-01T00:00:00Z": {"old_year", "morning"},
        # ap widens the range by a tenth of its distance to now (here at least ~0.2 year on each side).
        "ap2024": {"old_year", "new_year", "morning"}, "ap2020": set(),
    }
    failures = []
    for value, want in cases.items():
        got = found(api, "Patient", {"_lastUpdated": value}, names)
        if got != want:
            failures.append(f"_lastUpdated={value}: got {sorted(got)}, expected {sorted(want)}")
    assert not failures, "\n".join(failures)


def test_last_updated_with_an_unencoded_plus_offset_is_read_as_a_time_zone(api):
    resp = api.get("Patient?_lastUpdated=ge2000-01-01T00:00:00+00:00")
    assert resp.status_code == 200, resp.text
