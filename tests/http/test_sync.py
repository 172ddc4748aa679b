"""Delta sync of a catalogue by a point-of-service client, as the README's sync loop describes it: a full load by
keyset paging while others write, then `_history?_since=<sync point>` deltas; the copy ends equal to the server."""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import load_example

CS_IDENTIFIERS = "https://openimis.github.io/openimis_fhir_r4_ig/CodeSystem/openimis-identifiers"
TYPES = ("Medication", "ActivityDefinition")


def _catalogue_entry(resource_type: str, n: int) -> dict[str, Any]:
    """The IG example of the type under a new code (and no client UUID, so the server assigns the id)."""
    example = "Medication-AspirinMedication" if resource_type == "Medication" else \
        "ActivityDefinition-GeneralConsultationService"
    res = copy.deepcopy(load_example(example))
    res.pop("id", None)
    code = f"{'I' if resource_type == 'Medication' else 'S'}{n:05d}"
    res["identifier"] = [{"type": {"coding": [{"system": CS_IDENTIFIERS, "code": "Code"}]}, "value": code}]
    if resource_type == "Medication":
        res["code"]["text"] = f"Item {code}"
    else:
        res["name"], res["title"] = code, f"Service {code}"
    return res


def bulk_create(engine: Any, resource_type: str, count: int) -> None:
    """Thousands of entries through the kinds' write path (the path POST takes), a transaction per thousand."""
    from hifhir.api.rest import select_kind
    from hifhir.fhir.kind import WriteContext
    from hifhir.fhir.registry import kinds_of_type
    from hifhir.store.db import transaction

    kinds = kinds_of_type(resource_type)
    for start in range(0, count, 1000):
        with transaction(engine, write=True) as conn:
            ctx = WriteContext(conn, "catalogue-loader")
            for n in range(start, min(count, start + 1000)):
                res = _catalogue_entry(resource_type, n)
                kind = select_kind(kinds, res)
                ctx.new_id = str(uuid.uuid4())
                ctx.mark(kind.name, kind.write(ctx, res, None))
            ctx.flush()


def pages(api: Any, first: str) -> Iterator[dict[str, Any]]:
    url: str | None = first
    while url:
        resp = api.get(url)
        assert resp.status_code == 200, resp.text
        bundle = resp.json()
        yield bundle
        url = next((link["url"].split("/fhir/", 1)[1] for link in bundle["link"] if link["relation"] == "next"),
                   None)


class Client:
    """A point-of-service copy: id → resource, per type, plus the sync point to resume from."""

    def __init__(self) -> None:
        self.copy: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in TYPES}
        self.sync_point: dict[str, str] = {}

    def full_load(self, api: Any, resource_type: str, between_pages: Callable[[], None]) -> None:
        for i, bundle in enumerate(pages(api, f"{resource_type}?_count=1000")):
            if i == 0:
                self.sync_point[resource_type] = bundle["meta"]["lastUpdated"]
            for entry in bundle.get("entry", []):
                res = entry["resource"]
                assert res["id"] not in self.copy[resource_type], "a full load never repeats a resource"
                self.copy[resource_type][res["id"]] = res
            between_pages()

    def delta(self, api: Any, resource_type: str, between_pages: Callable[[], None] = lambda: None) -> int:
        """One delta round; returns how many history entries it read."""
        applied: set[str] = set()
        seen_versions: set[tuple[str, str]] = set()
        read = 0
        query = f"{resource_type}/_history?_since={self.sync_point[resource_type]}&_count=500"
        for i, bundle in enumerate(pages(api, query.replace("+", "%2B"))):
            if i == 0:
                new_point = bundle["meta"]["lastUpdated"]
            for entry in bundle.get("entry", []):
                read += 1
                res_id = entry["fullUrl"].rsplit("/", 1)[1]
                version = entry["response"]["etag"]
                assert (res_id, version) not in seen_versions, "a history page sequence never repeats a change"
                seen_versions.add((res_id, version))
                if res_id in applied:
                    continue  # newest first: the first entry met for an id is its current state
                applied.add(res_id)
                if entry["request"]["method"] == "DELETE":
                    self.copy[resource_type].pop(res_id, None)
                else:
                    self.copy[resource_type][res_id] = entry["resource"]
            between_pages()
        self.sync_point[resource_type] = new_point
        return read


def server_state(api: Any, resource_type: str) -> dict[str, dict[str, Any]]:
    state: dict[str, dict[str, Any]] = {}
    for bundle in pages(api, f"{resource_type}?_count=1000"):
        for entry in bundle.get("entry", []):
            state[entry["resource"]["id"]] = entry["resource"]
    return state


class Writer:
    """Another client changing the catalogue: updates (new price) and deletions of random entries."""

    def __init__(self, api: Any, ids: dict[str, list[str]], seed: int = 7) -> None:
        self.api = api
        self.rng = random.Random(seed)
        self.alive = {t: list(v) for t, v in ids.items()}
        self.updates = 0
        self.deletes = 0

    def update(self, resource_type: str) -> None:
        res_id = self.rng.choice(self.alive[resource_type])
        res = self.api.get(f"{resource_type}/{res_id}").json()
        price = next(e for e in res["extension"] if e["url"].endswith("/unit-price"))
        price["valueMoney"]["value"] = self.rng.randint(1, 90_000)
        resp = self.api.put(f"{resource_type}/{res_id}", res)
        assert resp.status_code == 200, resp.text
        self.updates += 1

    def delete(self, resource_type: str) -> None:
        res_id = self.alive[resource_type].pop(self.rng.randrange(len(self.alive[resource_type])))
        assert self.api.delete(f"{resource_type}/{res_id}").status_code in (200, 204)
        self.deletes += 1

    def burst(self, updates: int, deletes: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(updates):
                self.update(TYPES[i % 2])
            for i in range(deletes):
                self.delete(TYPES[i % 2])

        return run


@pytest.fixture
def catalogue(api: Any, engine: Any) -> dict[str, list[str]]:
    """5,000 items and 5,000 services."""
    for resource_type in TYPES:
        bulk_create(engine, resource_type, 5000)
    return {t: list(server_state(api, t)) for t in TYPES}


def test_client_copy_equals_server_after_a_full_load_with_concurrent_changes_and_one_delta(
        api, catalogue, app, monkeypatch):
    monkeypatch.setattr(app.settings, "sync_settle_ms", 1000)
    assert sum(len(v) for v in catalogue.values()) == 10_000
    writer = Writer(api, catalogue)
    client = Client()
    # 5 pages of 1000 per type; after each page another client makes 50 updates and 5 deletions (both types)
    for resource_type in TYPES:
        client.full_load(api, resource_type, writer.burst(50, 5))
    assert (writer.updates, writer.deletes) == (500, 50)
    # the copy is stale now (changes landed behind and ahead of the pages) …
    assert any(client.copy[t] != server_state(api, t) for t in TYPES)
    # … and one delta round per type makes it exact, deletions included
    for resource_type in TYPES:
        read = client.delta(api, resource_type)
        assert read >= 130  # at least the changes made to this type while it was paged
        assert client.copy[resource_type] == server_state(api, resource_type)
    # a further round with no change in between brings nothing new and keeps the copy exact
    for resource_type in TYPES:
        client.delta(api, resource_type)
        assert client.copy[resource_type] == server_state(api, resource_type)


def test_history_paging_never_repeats_a_change_while_writes_continue(api, engine):
    bulk_create(engine, "Medication", 600)
    ids = list(server_state(api, "Medication"))
    writer = Writer(api, {"Medication": ids, "ActivityDefinition": []})
    client = Client()
    client.sync_point["Medication"] = "2000-01-01T00:00:00Z"

    def more_writes() -> None:
        for _ in range(10):
            writer.update("Medication")

    read = client.delta(api, "Medication", between_pages=more_writes)  # asserts no repeat inside
    assert read >= 600
    client.delta(api, "Medication")  # and the next round catches what was written while paging
    assert client.copy["Medication"] == server_state(api, "Medication")


def test_last_updated_search_gives_each_changed_resource_once_oldest_first(api, engine, app, monkeypatch):
    monkeypatch.setattr(app.settings, "sync_settle_ms", 0)
    bulk_create(engine, "ActivityDefinition", 300)
    ids = list(server_state(api, "ActivityDefinition"))
    point = api.get("ActivityDefinition?_count=1").json()["meta"]["lastUpdated"]
    writer = Writer(api, {"Medication": [], "ActivityDefinition": ids}, seed=3)
    for _ in range(40):
        writer.update("ActivityDefinition")
    changed = [e["resource"] for bundle in pages(api, f"ActivityDefinition?_lastUpdated=gt{point}"
                                                 "&_sort=_lastUpdated&_count=7")
               for e in bundle.get("entry", [])]
    stamps = [r["meta"]["lastUpdated"] for r in changed]
    assert stamps == sorted(stamps)
    assert len({r["id"] for r in changed}) == len(changed)
    current = server_state(api, "ActivityDefinition")
    assert all(current[r["id"]] == r for r in changed)
    assert {r["id"] for r in changed} == {i for i, r in current.items() if r["meta"]["versionId"] != "1"}
