"""The IG's own examples (ig/README.md §1b rows 1–6) are accepted and read back equivalent.

Equivalence (`differences`): every element the example carries comes back with the same value, list order
ignored, `meta` ignored. The server may ADD elements it derives (identifier[UUID], address names,
`active`, `name.use`, `quantity`, code displays…). Where an example contradicts the IG or the other examples,
`expected()` states what the server returns instead, each with a comment citing ig/README.md §9.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import orjson

from tests.conftest import load_example

LOCATIONS = ["Location-Upper-River-Region", "Location-Jimara-district", "Location-Jamu-municipality",
             "Location-Jamula-village"]
ORGANIZATIONS = ["Organization-RaptaDistrictHospital", "Organization-MyTradePolicyHolder"]
PATIENTS = ["Patient-john-doe", "Patient-jane-doe"]
GROUP = "Group-doe-family"
INSURER = "Organization-openIMIS-Implementation"
GROUP_EXT = "https://openimis.github.io/openimis_fhir_r4_ig/StructureDefinition/patient-group-reference"
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


# --- equivalence -------------------------------------------------------------------------------------------


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where `actual` fails to carry an element of `expected` with the same value (empty = equivalent).

    Objects: every key of `expected` (but `meta` at the top) must be in `actual`, recursively; extra keys are
    derived elements and allowed. Lists: each expected item must match a distinct actual item, in any order;
    extra actual items are allowed. Primitives: equal values (and JSON types: True is not 1).
    """
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path or '.'}: expected an object, got {actual!r}"]
        out: list[str] = []
        for key, value in expected.items():
            if key == "meta" and not path:
                continue
            if key not in actual:
                out.append(f"{path}.{key}: missing (expected {value!r})")
            else:
                out.extend(differences(value, actual[key], f"{path}.{key}"))
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {actual!r}"]
        if _match_all(expected, actual, path):
            return []
        out = [f"{path}: no matching items for {len(expected)} expected in {len(actual)} returned"]
        for i, item in enumerate(expected):  # name the first item(s) that match nothing, for the message
            if not any(not differences(item, a, f"{path}[{i}]") for a in actual):
                best = min((differences(item, a, f"{path}[{i}]") for a in actual), key=len, default=[])
                out.extend(best or [f"{path}[{i}]: {item!r} has no counterpart"])
        return out
    if type(expected) is not type(actual) or expected != actual:
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    return []


def _match_all(expected: list[Any], actual: list[Any], path: str) -> bool:
    """A one-to-one assignment of expected items to actual items (backtracking; lists here are short)."""

    def assign(i: int, used: frozenset[int]) -> bool:
        if i == len(expected):
            return True
        return any(j not in used and not differences(expected[i], a, f"{path}[{i}]")
                   and assign(i + 1, used | {j}) for j, a in enumerate(actual))

    return assign(0, frozenset())


def assert_equivalent(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    diffs = differences(expected, actual)
    assert not diffs, "\n".join(diffs) + "\n\nreturned: " + orjson.dumps(actual).decode()


def test_differences_helper_semantics():
    assert differences({"a": [1, {"b": 2}]}, {"a": [{"b": 2, "c": 3}, 1, 9], "d": 4}) == []
    assert differences({"meta": {"x": 1}, "a": 1}, {"a": 1}) == []
    assert differences({"a": [1, 1]}, {"a": [1]})  # each expected item needs its own counterpart
    assert differences({"a": True}, {"a": 1})
    assert differences({"a": {"b": "x"}}, {"a": {"b": "y"}}) == [".a.b: expected 'x', got 'y'"]
    assert differences({"a": 1}, {}) == [".a: missing (expected 1)"]


# --- what the server returns for each example -------------------------------------------------------------


def _names(by_example: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {level: by_example[name]["name"] for level, name in zip("RDWV", LOCATIONS, strict=True)}


def expected(name: str) -> dict[str, Any]:
    """The example, corrected for the IG example defects the server cannot reproduce (documented here)."""
    res = load_example(name)
    locations = {n: load_example(n) for n in LOCATIONS}
    names = _names(locations)
    if name == "Location-Jamula-village":
        # ig/README.md §9.6: the example's display "Village" differs from the CodeSystem display
        # "City/Village"; the server renders the CodeSystem display.
        res["physicalType"]["coding"][0]["display"] = "City/Village"
    for address in res.get("address", []):
        # ig/README.md §9.6 (example errors; this one is not yet listed there): the Patient and
        # Organization examples name the region "Ultha" and the district "Rapta", while the Location
        # examples they reference are "Upper River Region" and "Jimara". The address parts are rendered
        # from the referenced location (the authoritative link), so the Location examples' names come back.
        if "state" in address:
            address["state"] = names["R"]
        if "district" in address:
            address["district"] = names["D"]
        if "city" in address:
            address["city"] = names["V"]  # "Jamula" in both: unchanged
    if name == "Patient-john-doe":
        # ig/README.md §9.6 (example errors): john-doe's head-of-family contact names John Doe himself; the
        # family's head is Jane Doe (isHead, and the Group's Code is her insurance number). Patient.contact is
        # GET-only (§1b row 1) and rendered from the head, so Jane's name comes back.
        res["contact"][0]["name"] = {"family": "Doe", "given": ["Jane"]}
    if name == GROUP:
        # Group.active means "a member has an active policy" (derived, §1b rows 1–2); the example claims true
        # but the example set has no policy for the Doe family (ig/README.md §9.6: Coverage names the missing
        # joe-doe). The server derives false and ignores a sent value.
        res["active"] = False
    # ig/README.md §9.6: the Patient examples lack name.use (the profile fixes `official`) and an
    # identifier[UUID]; both are derived elements the server adds, which the equivalence allows.
    return res


def put_ok(api: Any, resource: dict[str, Any], status: tuple[int, ...] = (200, 201)) -> dict[str, Any]:
    r = api.put(f"{resource['resourceType']}/{resource['id']}", resource)
    assert r.status_code in status, r.text
    return r.json()


def without_group(patient: dict[str, Any]) -> dict[str, Any]:
    res = copy.deepcopy(patient)
    res["extension"] = [e for e in res["extension"] if e["url"] != GROUP_EXT]
    return res


def load_all_by_put(api: Any) -> None:
    """Update-as-create in dependency order: the patients first without their family, then with it."""
    for name in LOCATIONS + ORGANIZATIONS:
        put_ok(api, load_example(name), (201,))
    for name in PATIENTS:
        put_ok(api, without_group(load_example(name)), (201,))
    put_ok(api, load_example(GROUP), (201,))
    for name in PATIENTS:
        put_ok(api, load_example(name), (200,))


def read(api: Any, resource_type: str, res_id: str) -> dict[str, Any]:
    r = api.get(f"{resource_type}/{res_id}")
    assert r.status_code == 200, r.text
    return r.json()


# --- tests ------------------------------------------------------------------------------------------------


def test_examples_put_to_their_id_and_read_back_equivalent(api):
    load_all_by_put(api)
    for name in [*LOCATIONS, *ORGANIZATIONS, *PATIENTS, GROUP]:
        example = load_example(name)
        got = read(api, example["resourceType"], example["id"])
        assert got["id"] == example["id"]
        assert got["meta"]["profile"] == example["meta"]["profile"], name
        assert_equivalent(expected(name), got)
    # The PUT response is the same representation as the read.
    again = put_ok(api, load_example("Location-Jamula-village"), (200,))
    assert_equivalent(expected("Location-Jamula-village"), again)
    assert again["meta"]["versionId"] == "2"


def test_examples_put_again_unchanged_are_stable(api):
    """A second PUT of the same content reads back the same (a client round-trip does not drift)."""
    load_all_by_put(api)
    for name in [*LOCATIONS, *ORGANIZATIONS, GROUP, *PATIENTS]:
        example = load_example(name)
        before = read(api, example["resourceType"], example["id"])
        after = put_ok(api, example, (200,))
        assert _without_meta(after) == _without_meta(before), example["id"]


def test_group_example_links_its_members(api):
    load_all_by_put(api)
    group = read(api, "Group", "doe-family")
    assert group["quantity"] == 2
    assert group["name"] == "Doe Jane"
    jane = read(api, "Patient", "jane-doe")
    john = read(api, "Patient", "john-doe")
    for p, head in ((jane, True), (john, False)):
        exts = {e["url"].rsplit("/", 1)[1]: e for e in p["extension"]}
        assert exts["patient-group-reference"]["valueReference"]["reference"] == "Group/doe-family"
        assert exts["patient-is-head"]["valueBoolean"] is head


def test_insurer_example_is_served_read_only(api):
    example = load_example(INSURER)
    got = read(api, "Organization", example["id"])
    assert_equivalent({k: example[k] for k in ("resourceType", "id", "identifier", "type", "name")}, got)
    assert got["meta"]["profile"] == example["meta"]["profile"]
    r = api.put(f"Organization/{example['id']}", example)
    assert r.status_code == 405, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    body = {k: v for k, v in example.items() if k != "id"}
    r = api.post("Organization", body)
    assert r.status_code == 405, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert read(api, "Organization", example["id"])["meta"]["versionId"] == got["meta"]["versionId"]


def _rewrite_references(resource: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    text = orjson.dumps(resource).decode()
    for old, new in ids.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    return orjson.loads(text)


def test_examples_post_without_id_get_uuid_ids(api):
    """POST of each example without its id → 201 and a UUID id. An example that carries identifier[UUID]
    gets that UUID as its id (common.resolve_new_id: openIMIS clients address resources by their UUID);
    the others get a server-generated UUID."""
    ids: dict[str, str] = {}  # "Location/Jimara-district" → "Location/<uuid>"
    order = [*LOCATIONS, *ORGANIZATIONS, *PATIENTS]
    for name in order:
        example = load_example(name)
        body = _rewrite_references(without_group(example) if name in PATIENTS else example, ids)
        del body["id"]
        r = api.post(example["resourceType"], body)
        assert r.status_code == 201, f"{name}: {r.text}"
        got = r.json()
        assert UUID_RE.match(got["id"]), got["id"]
        uuids = [i["value"] for i in example.get("identifier", [])
                 if i["type"]["coding"][0]["code"] == "UUID"]
        if uuids:
            assert got["id"] == uuids[0]
        assert r.headers["location"].endswith(f"/{example['resourceType']}/{got['id']}/_history/1")
        ids[f"{example['resourceType']}/{example['id']}"] = f"{example['resourceType']}/{got['id']}"
        want = _without_id(expected(name))
        if name in PATIENTS:
            # Before the family exists there is no head to name: contact (GET-only) comes with the Group.
            want = {k: v for k, v in without_group(want).items() if k != "contact"}
        assert_equivalent(_rewrite_references(want, ids), got)
    example = load_example(GROUP)
    body = _rewrite_references(example, ids)
    del body["id"]
    r = api.post("Group", body)
    assert r.status_code == 201, r.text
    group = r.json()
    assert group["id"] == "D30F70DF-D10B-43D4-BF31-5137C118AD82"
    ids["Group/doe-family"] = f"Group/{group['id']}"
    assert_equivalent(_rewrite_references(_without_id(expected(GROUP)), ids), group)
    for name in PATIENTS:
        example = load_example(name)
        pid = ids[f"Patient/{example['id']}"].split("/")[1]
        got = read(api, "Patient", pid)
        assert got["meta"]["versionId"] == "2"  # the family's creation versions its members
        assert_equivalent(_rewrite_references(_without_id(expected(name)), ids), got)


def _without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def _without_id(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "id"}
