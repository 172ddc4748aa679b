"""Keyset paging through the real ASGI app: 1,000 patients walked with `next` and `previous` links, sorted and
unsorted, with and without other writes between the page fetches.

The guarantee (src/hifhir/fhir/search.py): pages are cut by a cursor holding the sort values of the last entry
plus the entity's primary key, never by an offset. Hence, while a client walks the `next` links:

* every resource that matched when the walk started, was not deleted before the walk reached it, and whose
  sort values did not change, is returned exactly once (without `_sort`, the order is creation order and no
  write changes it, so this covers every resource that existed at the start and was not deleted);
* no resource is returned twice;
* each entry is the resource's current version at the time its page was fetched;
* resources created during the walk are returned at most once (with the default creation order: exactly once,
  on the last pages, because their keys are greater than every key that existed at the start).
"""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from hifhir.api.app import HifhirApp
from hifhir.fhir.kind import WriteContext
from hifhir.fhir.registry import KINDS
from hifhir.store.db import transaction
from hifhir.store.tables import resource_version
from tests.builders import ident, location, patient
from tests.conftest import ADMIN, Api, _reset, load_example

N = 1000
PAGE = 37  # 1000 = 27 × 37 + 1: the last page holds one entry
FAMILIES = 37  # family names Fam00 … Fam36: ~27 patients share each, so ties cross page boundaries
MAX_COUNT = 1000  # Settings.page_size_max in the test configuration


def family_of(i: int) -> str:
    return f"Fam{(i * 7) % FAMILIES:02d}"


def birth_of(i: int) -> date:
    return date(1950, 1, 1) + timedelta(days=(i * 7919) % 400)  # 400 distinct days: ties here too


# --- the shared data set ---------------------------------------------------------------------------------
#
# Loading 1,000 patients costs one to four seconds per backend, so the tests share one data set, loaded
# through the write path (PatientKind.write + WriteContext.flush, in one transaction: what a POST does, minus
# HTTP and validation). It is reloaded whenever the database changed since it was loaded (a test wrote, or a
# test of another module reset the database). The tests that write come last.


class Thousand:
    def __init__(self, settings: Any, engine: Engine, api: Api) -> None:
        self.settings, self.engine, self.api = settings, engine, api
        self.ids: list[str] = []  # in creation order
        self.village = ""
        self.fingerprint: tuple[Any, ...] = ()

    def _fingerprint(self) -> tuple[Any, ...]:
        with self.engine.connect() as conn:
            count, last = conn.execute(select(func.count(), func.max(resource_version.c.seq))).one()
            mine = conn.execute(select(func.count()).select_from(resource_version).where(
                resource_version.c.res_id == (self.ids[0] if self.ids else ""))).scalar_one()
        return count, last, mine

    def ensure(self, *, pristine: bool = True) -> Thousand:
        """Load the data set unless it is there; `pristine=False` accepts it changed by earlier tests (but
        still reloads it after a reset)."""
        current = self._fingerprint()
        if not self.ids or not current[2] or (pristine and current != self.fingerprint):
            self._load()
            self.fingerprint = self._fingerprint()
        return self

    def _load(self) -> None:
        _reset(self.settings, self.engine)
        parent = None
        for code, name, level in [("R1", "Ultha", "R"), ("R1D1", "Rapta", "D"), ("R1D1W1", "Jamu", "W"),
                                  ("R1D1W1V1", "Jamula", "V")]:
            resp = self.api.post("Location", location(code, name, level, parent))
            assert resp.status_code == 201, resp.text
            parent = resp.json()["id"]
        self.village = str(parent)
        kind = KINDS["patient"]
        ids = []
        with transaction(self.engine, write=True) as conn:
            ctx = WriteContext(conn, ADMIN[0])
            for i in range(N):
                ctx.new_id = str(uuid.uuid4())
                body = patient(f"{i:09d}", family_of(i), f"Given{i}", self.village,
                               gender=("male", "female")[i % 2], birth_date=birth_of(i).isoformat())
                ctx.mark(kind.name, kind.write(ctx, body, None))
                ids.append(ctx.new_id)
            ctx.flush()
        self.ids = ids


@pytest.fixture(scope="module")
def shared(backend: tuple[Any, Engine]) -> Any:
    settings, engine = backend
    app = HifhirApp(settings, engine)
    with TestClient(app, base_url="http://testserver") as client:
        yield Thousand(settings, engine, Api(client, app.tokens.issue(ADMIN[0])[0]))


@pytest.fixture
def thousand(shared: Thousand) -> Thousand:
    return shared.ensure()


@pytest.fixture
def api(app: Any, client: Any) -> Api:
    """The conftest `api` (a fresh database) without the password login (argon2 is slow, tested elsewhere)."""
    return Api(client, app.tokens.issue(ADMIN[0])[0])


# --- helpers -------------------------------------------------------------------------------------------


def get_page(api: Api, url: str) -> dict[str, Any]:
    resp = api.get(url)
    assert resp.status_code == 200, f"{url}: {resp.text}"
    body = resp.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def link(page: dict[str, Any], relation: str) -> str | None:
    urls = [lnk["url"] for lnk in page["link"] if lnk["relation"] == relation]
    assert len(urls) <= 1
    return urls[0] if urls else None


def entries(page: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in page.get("entry", [])]


def ids_of(page: dict[str, Any]) -> list[str]:
    return [r["id"] for r in entries(page)]


def walk(api: Api, first_url: str, between: Any = None) -> list[dict[str, Any]]:
    """Every page, following `next` links; `between(pages)` runs before each `next` link is followed."""
    pages = [get_page(api, first_url)]
    while (url := link(pages[-1], "next")) is not None:
        if between is not None:
            between(pages)
        pages.append(get_page(api, url))
        assert len(pages) <= N, "the walk does not end"
    return pages


# --- walking forward -----------------------------------------------------------------------------------


def test_next_links_visit_every_patient_exactly_once_in_creation_order(thousand):
    pages = walk(thousand.api, f"Patient?_count={PAGE}")
    assert [len(ids_of(p)) for p in pages] == [PAGE] * (N // PAGE) + [N % PAGE]
    seen = [i for p in pages for i in ids_of(p)]
    assert seen == thousand.ids
    assert link(pages[0], "previous") is None
    assert link(pages[-1], "next") is None
    assert all(link(p, "previous") is not None for p in pages[1:])
    assert all(f"_count={PAGE}" in str(link(p, "next")) for p in pages[:-1])


def test_previous_links_return_the_exact_previous_page(thousand):
    api = thousand.api
    pages = walk(api, f"Patient?_count={PAGE}")
    for k in range(1, len(pages)):
        back = get_page(api, str(link(pages[k], "previous")))
        assert ids_of(back) == ids_of(pages[k - 1]), f"previous of page {k}"
        # and from there, next leads forward to the same page again
        assert ids_of(get_page(api, str(link(back, "next")))) == ids_of(pages[k]), f"next of previous of {k}"
    # Walking back from the last page with previous links alone retraces every page.
    back_pages = [pages[-1]]
    while (url := link(back_pages[-1], "previous")) is not None:
        back_pages.append(get_page(api, url))
    assert [ids_of(p) for p in reversed(back_pages)] == [ids_of(p) for p in pages]


def test_paging_sorted_by_family_keeps_ties_in_creation_order(thousand):
    api = thousand.api
    pages = walk(api, f"Patient?_sort=family&_count={PAGE}")
    seen = [i for p in pages for i in ids_of(p)]
    expected = [thousand.ids[i] for i in sorted(range(N), key=lambda i: (family_of(i), i))]
    assert seen == expected
    families = [r["name"][0]["family"] for p in pages for r in entries(p)]
    assert families == sorted(families)
    for k in (1, 5, len(pages) - 1):
        back = get_page(api, str(link(pages[k], "previous")))
        assert ids_of(back) == ids_of(pages[k - 1]), f"previous of sorted page {k}"
    assert all("_sort=family" in str(link(p, "next")) for p in pages[:-1])


def test_paging_sorted_by_birthdate_descending(thousand):
    api = thousand.api
    pages = walk(api, f"Patient?_sort=-birthdate&_count={PAGE}")
    seen = [i for p in pages for i in ids_of(p)]
    expected = [thousand.ids[i] for i in sorted(range(N), key=lambda i: (-birth_of(i).toordinal(), i))]
    assert seen == expected
    for k in (1, 13, len(pages) - 1):
        back = get_page(api, str(link(pages[k], "previous")))
        assert ids_of(back) == ids_of(pages[k - 1]), f"previous of page {k}"


def test_paging_with_a_filter_and_two_sort_keys(thousand):
    api = thousand.api
    pages = walk(api, f"Patient?gender=female&_sort=family,-birthdate&_count={PAGE}&_total=accurate")
    assert all(p["total"] == N // 2 for p in pages)
    seen = [i for p in pages for i in ids_of(p)]
    females = [i for i in range(N) if i % 2 == 1]
    expected = [thousand.ids[i] for i in sorted(females, key=lambda i: (family_of(i), -birth_of(i).toordinal(), i))]
    assert seen == expected


# --- writes between the page fetches -------------------------------------------------------------------


def test_walking_while_other_writes_happen(thousand):
    api, ids = thousand.api, thousand.ids
    created: list[str] = []
    updated_unseen: dict[str, str] = {}  # id → its new given name
    deleted_unseen: list[str] = []
    deleted_seen: list[str] = []

    def create(n: int) -> None:
        for _ in range(n):
            resp = api.post("Patient", patient(f"N{len(created):08d}", "Newcomer", "Late", thousand.village))
            assert resp.status_code == 201, resp.text
            created.append(resp.json()["id"])

    def rename(pid: str, given: str, family: str | None = None) -> None:
        body = api.get(f"Patient/{pid}").json()
        body["name"][0]["given"] = [given]
        if family:
            body["name"][0]["family"] = family
        resp = api.put(f"Patient/{pid}", body)
        assert resp.status_code == 200, resp.text

    def delete(pid: str) -> None:
        assert api.delete(f"Patient/{pid}").status_code == 204

    def between(pages: list[dict[str, Any]]) -> None:
        seen = [i for p in pages for i in ids_of(p)]
        unseen = [pid for pid in ids if pid not in set(seen)]
        if len(pages) == 2:
            create(3)
        elif len(pages) == 4:
            rename(seen[0], "Again")  # already seen: not returned again
            rename(seen[-1], "Again")
            for pid in (unseen[500], unseen[-1]):  # not yet seen: returned once, updated
                updated_unseen[pid] = "Updated"
                rename(pid, "Updated")
        elif len(pages) == 6:
            deleted_unseen.append(unseen[300])
            delete(unseen[300])
        elif len(pages) == 9:
            rename(unseen[10], "Moved", family="Aaaa")  # a new family name does not move it without _sort
            updated_unseen[unseen[10]] = "Moved"
            create(2)
            deleted_seen.append(seen[5])
            delete(seen[5])

    pages = walk(api, f"Patient?_count={PAGE}", between)
    seen = [i for p in pages for i in ids_of(p)]
    assert len(created) == 5 and len(updated_unseen) == 3 and deleted_unseen and deleted_seen

    assert len(seen) == len(set(seen)), "an entry was returned twice"
    survivors = [pid for pid in ids if pid not in deleted_unseen]
    assert [pid for pid in seen if pid not in created] == survivors  # each once, in creation order
    assert not set(deleted_unseen) & set(seen)
    assert set(deleted_seen) <= set(seen)  # returned before it was deleted
    assert seen[-len(created):] == created  # newcomers: once each, after everything that existed before
    current = {r["id"]: r for p in pages for r in entries(p)}
    for pid, given in updated_unseen.items():
        assert current[pid]["name"][0]["given"] == [given]
        assert current[pid]["meta"]["versionId"] == "2"


# --- _count --------------------------------------------------------------------------------------------


def test_count_is_capped_at_the_configured_maximum(shared):
    # Runs on the data set as the previous tests left it: at least 1,000 patients, plus one more here.
    thousand = shared.ensure(pristine=False)
    api = thousand.api
    extra = api.post("Patient", patient("X00000001", "Extra", "One", thousand.village))
    assert extra.status_code == 201, extra.text
    total = get_page(api, "Patient?_summary=count")["total"]
    assert total > MAX_COUNT
    for count in ("5000", str(MAX_COUNT + 1), str(MAX_COUNT)):
        first = get_page(api, f"Patient?_count={count}")
        assert len(ids_of(first)) == MAX_COUNT, f"_count={count}"
        rest = get_page(api, str(link(first, "next")))
        assert len(ids_of(rest)) == total - MAX_COUNT
        assert ids_of(rest)[-1] == extra.json()["id"]
        assert link(rest, "next") is None
    assert len(ids_of(get_page(api, "Patient"))) == 10  # the default page size


# --- several kinds behind one type ---------------------------------------------------------------------


def test_organization_pages_merge_the_three_kinds(api):
    """Organization is three tables (facility, policy holder, insurer): pages merge them in one order."""
    parent = None
    places = {}
    for code, name, level in [("R1", "Ultha", "R"), ("R1D1", "Rapta", "D"), ("R1D1W1", "Jamu", "W"),
                              ("R1D1W1V1", "Jamula", "V")]:
        parent = places[name] = api.post("Location", location(code, name, level, parent)).json()["id"]
    names = {"openIMIS-Implementation": "openIMIS Implementation"}
    for i, name in enumerate(["Mbeya Clinic", "Zanzibar Hospital", "Arusha Centre"]):
        hf = load_example("Organization-RaptaDistrictHospital")
        del hf["id"]
        hf["identifier"], hf["name"] = [ident(f"HF{i}")], name
        hf["address"][0]["extension"][0]["valueReference"]["reference"] = f"Location/{places['Rapta']}"
        resp = api.post("Organization", hf)
        assert resp.status_code == 201, resp.text
        names[resp.json()["id"]] = name
    for i, name in enumerate(["Kilimanjaro Traders", "Bagamoyo Fish"]):
        ph = load_example("Organization-MyTradePolicyHolder")
        del ph["id"]
        ph["identifier"], ph["name"] = [ident(f"PH{i}")], name
        ph["address"][0]["extension"][1]["valueReference"]["reference"] = f"Location/{places['Jamula']}"
        resp = api.post("Organization", ph)
        assert resp.status_code == 201, resp.text
        names[resp.json()["id"]] = name

    pages = walk(api, "Organization?_count=2")
    assert [len(ids_of(p)) for p in pages] == [2, 2, 2]
    seen = [i for p in pages for i in ids_of(p)]
    assert sorted(seen) == sorted(names)
    for k in (1, 2):
        assert ids_of(get_page(api, str(link(pages[k], "previous")))) == ids_of(pages[k - 1])

    for sort, reverse in (("name", False), ("-name", True)):
        pages = walk(api, f"Organization?_sort={sort}&_count=2")
        got = [names[i] for p in pages for i in ids_of(p)]
        assert got == sorted(names.values(), key=str.casefold, reverse=reverse), sort
        for k in (1, 2):
            assert ids_of(get_page(api, str(link(pages[k], "previous")))) == ids_of(pages[k - 1])
