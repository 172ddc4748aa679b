"""Location scoping (auth/scope.py, domain §4.1): a district user, an enrolment officer and a claim administrator
see the data of their locations — read and vread (404 outside), search, `_include`/`_revinclude`, history, chains
and `_has`, conditional create and update, Bundle entries, writes (403 into another location) and notifications —
while the administrator and national users see everything. Every scenario checks that no id of an out-of-scope
resource appears anywhere in the answers.

The world: two regions R1 → D1 → W1 → V1 and R2 → D2 → W2 → V2 (plus a second village V1b in W1); family A in V1,
family B in V2, family C in V1b; a policy (Contract, Coverage, contribution Invoice) for A and for B; facilities
HF1 and HF1b in D1, HF2 in D2; claims: A's head at HF1, B's head at HF2, B's head at HF1 (a patient of D2 treated
in D1: the cross link includes and chains must not follow) and A's child at HF1b."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, select, update

from hifhir import config
from hifhir.auth.roles import SYSTEM_ROLES
from hifhir.auth.scope import condition
from hifhir.auth.users import create_user, ensure_role
from hifhir.domain.invoicing import invoice_for_policy
from hifhir.fhir.kind import WriteContext
from hifhir.fhir.registry import ALL_KINDS, KINDS
from hifhir.notify import delivery as notify_delivery
from hifhir.notify import matching
from hifhir.outbox.worker import Worker
from hifhir.store.db import reader, transaction
from hifhir.store.fast import STATEMENT_OBSERVERS
from hifhir.store.tables import (
    app_user,
    claim,
    claim_admin,
    coverage,
    health_facility,
    invoice,
    officer,
    policy,
    user_district,
)
from hifhir.store.tables import location as location_table
from tests.builders import health_facility as hf_resource
from tests.builders import location, patient
from tests.builders_eligibility import insert_claim
from tests.builders_enrolment import BC01, contract, days_ago, family_contract, make_family, make_product, make_scheme
from tests.builders_practitioner import claim_admin as claim_admin_resource
from tests.builders_practitioner import claim_admin_role, officer_role
from tests.conftest import Api
from tests.http.test_notifications import CONFIG, events, subscribe
from tests.http.test_notifications import receiver as receiver  # the fixture, under its name
from tests.http.test_patched_versions import store_filler_patient_versions
from tests.responses import created, refused

# Every right a system role has, and every right a kind asks for: scoping, not rights, is what these tests are about.
ALL_RIGHTS = sorted({r for _name, _flag, rights in SYSTEM_ROLES for r in rights}
                    | {r for k in ALL_KINDS for i in ("read", "create", "update", "delete")
                       if isinstance(r := getattr(getattr(k, "rights", None), i, None), int)})
SCOPED_ROLE = "scope-tests"


# --- the world ------------------------------------------------------------------------------------------------


@dataclass
class Side:
    """What one district holds."""

    family: str = ""
    members: dict[str, str] = field(default_factory=dict)  # role → Patient id
    contract: str = ""
    coverage: str = ""
    invoice: str = ""
    facility: str = ""
    claim: str = ""  # a claim of the head at this side's facility

    def ids(self) -> set[str]:
        return {self.family, *self.members.values(), self.contract, self.coverage, self.invoice, self.facility,
                self.claim} - {""}


@dataclass
class World:
    places: dict[str, str]
    officer: str  # enrolment officer E00001 (district D1)
    a: Side  # district D1
    b: Side  # district D2
    cross_claim: str  # B's head treated at HF1 (D1)
    other_facility: str  # HF1b, also in D1
    other_claim: str  # A's child at HF1b
    village_c: str  # V1b, in W1 next to V1
    family_c: str
    members_c: dict[str, str]

    def outside_d1(self) -> set[str]:
        """What a D1 user must never see: district D2's data and places — but what the cross claim, which D1 sees,
        refers to (its patient, the patient's policy)."""
        return self.b.ids() - self.cross_refs() | {self.places[k] for k in ("R2", "D2", "W2", "V2")}

    def cross_refs(self) -> set[str]:
        return {self.b.members["head"], self.b.contract, self.b.coverage}


def _pk(conn: Any, table: Any, res_id: str) -> int:
    return int(conn.execute(select(table.c.pk).where(table.c.id == res_id)).scalar_one())


def _versioned(engine: Engine, marks: Iterable[tuple[str, int]]) -> None:
    """Record the FHIR versions of rows inserted in SQL (claims, invoices), as a business event does."""
    with transaction(engine, write=True) as conn:
        ctx = WriteContext(conn, "Admin")
        for kind_name, pk in marks:
            ctx.mark(kind_name, pk)
        ctx.flush()


def _claim(engine: Engine, facility: str, patient_id: str) -> str:
    pk = insert_claim(engine, facility, patient_id)
    _versioned(engine, [("claim", pk), ("claim-response", pk)])
    with transaction(engine, write=False) as conn:
        return str(conn.execute(select(claim.c.id).where(claim.c.pk == pk)).scalar_one())


def _policy_rows(engine: Engine, contract_id: str) -> tuple[str, str]:
    """(Coverage id, contribution Invoice id) of a Contract's policy (the invoice made if enrolment did not)."""
    with transaction(engine, write=True) as conn:
        policy_pk = _pk(conn, policy, contract_id)
        found = conn.execute(select(invoice.c.pk).where(invoice.c.policy_pk == policy_pk)).scalar()
        if found is None:
            ctx = WriteContext(conn, "Admin")
            pk = invoice_for_policy(conn, policy_pk, today=date.today(), now=ctx.now)
            assert pk is not None
            ctx.mark("invoice", pk)
            ctx.flush()
            found = pk
        coverage_id = conn.execute(select(coverage.c.id).where(coverage.c.policy_pk == policy_pk)).scalar_one()
        invoice_id = conn.execute(select(invoice.c.id).where(invoice.c.pk == found)).scalar_one()
    return str(coverage_id), str(invoice_id)


@pytest.fixture
def world(api: Api, engine: Engine) -> World:
    s = make_scheme(api)
    p = s.places
    a = Side(family=s.family, members=s.members)
    a.contract = created(api.post("Contract", family_contract(s)))["id"]
    b = Side()
    b.family, b.members = make_family(api, p["V2"], "2000000")
    product_b = make_product(api, "BC02", p["R2"], **BC01)  # type: ignore[arg-type]
    b.contract = created(api.post("Contract", contract(f"Group/{b.family}", b.members["head"],
                                                       list(b.members.values()), product_b,
                                                       issued=days_ago(10))))["id"]
    for side in (a, b):
        side.coverage, side.invoice = _policy_rows(engine, side.contract)
    a.facility = created(api.post("Organization", hf_resource("HF1", p["D1"])))["id"]
    b.facility = created(api.post("Organization", hf_resource("HF2", p["D2"])))["id"]
    other_facility = created(api.post("Organization", hf_resource("HF1B", p["D1"])))["id"]
    a.claim = _claim(engine, a.facility, a.members["head"])
    b.claim = _claim(engine, b.facility, b.members["head"])
    cross_claim = _claim(engine, a.facility, b.members["head"])
    other_claim = _claim(engine, other_facility, a.members["child1"])
    village_c = created(api.post("Location", location("R1D1W1V2", "Ultha V2", "V", p["W1"])))["id"]
    family_c, members_c = make_family(api, village_c, "3000000")
    return World(p, s.officer, a, b, cross_claim, other_facility, other_claim, village_c, family_c, members_c)


def user(api: Api, app: Any, username: str, *, districts: Iterable[str] = (), user_type: str = "interactive",
         officer_id: str | None = None, claim_admin_id: str | None = None, facility: str | None = None) -> Api:
    """An Api logged in as a new user holding every right, narrowed by its location scope only."""
    with transaction(app.engine, write=True) as conn:
        ensure_role(conn, SCOPED_ROLE, 0, ALL_RIGHTS)
        pk = create_user(conn, username, "", roles=[SCOPED_ROLE], password_hash="not-a-login")
        values: dict[str, Any] = {"user_type": user_type}
        if officer_id is not None:
            values["officer_pk"] = _pk(conn, officer, officer_id)
        if claim_admin_id is not None:
            values["claim_admin_pk"] = _pk(conn, claim_admin, claim_admin_id)
        if facility is not None:
            values["hf_pk"] = _pk(conn, health_facility, facility)
        conn.execute(update(app_user).where(app_user.c.pk == pk).values(**values))
        for district in districts:
            conn.execute(insert(user_district).values(user_pk=pk, location_pk=_pk(conn, location_table, district)))
    return Api(api.client, app.tokens.issue(username)[0])


def ids_of(bundle: dict[str, Any], mode: str | None = None) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", ())
            if "resource" in e and e["resource"]["resourceType"] != "OperationOutcome"
            and (mode is None or e.get("search", {}).get("mode") == mode)}


def no_leak(resp: Any, hidden: Iterable[str]) -> None:
    """None of the hidden ids anywhere in the answer (bodies, references, links, diagnostics)."""
    text = resp.text
    leaked = sorted(i for i in hidden if i and i in text)
    assert not leaked, f"out-of-scope ids in the answer: {leaked}"


def found(api: Api, path: str) -> dict[str, Any]:
    resp = api.get(path)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture
def d1(api: Api, app: Any, world: World) -> Api:
    return user(api, app, "district1", districts=[world.places["D1"]])


# --- read and vread ---------------------------------------------------------------------------------------------


def test_a_district_user_reads_its_district_and_gets_404_outside(api, d1, world):
    w, a, b = world, world.a, world.b
    inside = [("Patient", a.members["head"]), ("Group", a.family), ("Contract", a.contract),
              ("Coverage", a.coverage), ("Invoice", a.invoice), ("Organization", a.facility), ("Claim", a.claim),
              ("ClaimResponse", a.claim), ("Location", w.places["V1"]), ("Location", w.places["D1"]),
              ("Location", w.places["R1"]),  # the region above its district: the place, not its data
              ("Claim", w.cross_claim)]  # treated at a facility of D1, whoever the patient
    outside = [("Patient", b.members["head"]), ("Group", b.family), ("Contract", b.contract),
               ("Coverage", b.coverage), ("Invoice", b.invoice), ("Organization", b.facility), ("Claim", b.claim),
               ("ClaimResponse", b.claim), ("Location", w.places["V2"]), ("Location", w.places["R2"])]
    for rtype, rid in inside:
        version = found(d1, f"{rtype}/{rid}")["meta"]["versionId"]
        assert d1.get(f"{rtype}/{rid}/_history/{version}").status_code == 200, (rtype, rid)
    for rtype, rid in outside:
        version = found(api, f"{rtype}/{rid}")["meta"]["versionId"]
        for path in (f"{rtype}/{rid}", f"{rtype}/{rid}/_history/{version}"):
            refused(d1.get(path), 404)
        assert api.get(f"{rtype}/{rid}").status_code == 200, (rtype, rid)  # the administrator sees it
    # A deleted resource outside the scope is unknown too (404, not 410: deletion is a fact about it).
    assert api.delete(f"Patient/{b.members['child2']}").status_code == 204
    refused(d1.get(f"Patient/{b.members['child2']}"), 404)
    assert api.get(f"Patient/{b.members['child2']}").status_code == 410


def test_users_without_a_district_and_technical_users_see_everything(api, app, world):
    national = user(api, app, "national")
    technical = user(api, app, "robot", user_type="technical", districts=[world.places["D1"]])
    for who in (national, technical, api):
        assert who.get(f"Patient/{world.b.members['head']}").status_code == 200
        patients = ids_of(found(who, "Patient?_count=100"))
        assert {*world.a.members.values(), *world.b.members.values(), *world.members_c.values()} <= patients


# --- search, includes, chains --------------------------------------------------------------------------------


def test_searches_leave_out_of_scope_rows_out(api, d1, world):
    w, a, b = world, world.a, world.b
    expected = {
        "Patient": {*a.members.values(), *w.members_c.values()},
        "Group": {a.family, w.family_c},
        "Contract": {a.contract},
        "Coverage": {a.coverage},
        "Invoice": {a.invoice},
        "Claim": {a.claim, w.cross_claim, w.other_claim},
        "ClaimResponse": {a.claim, w.cross_claim, w.other_claim},
        "Location": {w.places[k] for k in ("R1", "D1", "W1", "V1")} | {w.village_c},
    }
    for rtype, ids in expected.items():
        resp = d1.get(f"{rtype}?_count=100&_total=accurate")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert ids_of(body) == ids, rtype
        assert body["total"] == len(ids), rtype
        no_leak(resp, w.outside_d1())
    assert {a.facility, b.facility, w.other_facility} <= ids_of(found(api, "Organization?_count=100"))
    assert b.facility not in ids_of(found(d1, "Organization?_count=100"))
    # Paging keeps to the scope as well.
    first = found(d1, "Patient?_count=2")
    following = [link["url"] for link in first["link"] if link["relation"] == "next"]
    assert following
    assert not (ids_of(found(d1, following[0])) & b.ids())


def test_include_and_revinclude_leave_out_of_scope_resources_out(api, app, d1, world):
    w, a, b = world, world.a, world.b
    resp = d1.get("Claim?_include=Claim:patient&_count=100")
    body = resp.json()
    assert ids_of(body, "match") == {a.claim, w.cross_claim, w.other_claim}
    # The cross claim's patient lives in D2: matched claim, but its patient is not included.
    assert ids_of(body, "include") == {a.members["head"], a.members["child1"]}
    no_leak(resp, w.outside_d1())
    admin_body = found(api, "Claim?_include=Claim:patient&_count=100")
    assert b.members["head"] in ids_of(admin_body, "include")

    d2 = user(api, app, "district2", districts=[w.places["D2"]])
    resp = d2.get(f"Patient?_id={b.members['head']}&_revinclude=Claim:patient&_revinclude=Group:member")
    body = resp.json()
    assert ids_of(body, "match") == {b.members["head"]}
    assert ids_of(body, "include") == {b.claim, b.family}  # not the claim of HF1, in D1
    no_leak(resp, [w.cross_claim, a.claim, a.family, a.facility])
    # :iterate does not walk on from what was left out either.
    resp = d2.get(f"Patient?_id={b.members['head']}&_revinclude=Claim:patient"
                  "&_include:iterate=Claim:provider")
    assert ids_of(resp.json(), "include") == {b.claim, b.facility}
    no_leak(resp, [w.cross_claim, a.facility])


def test_chains_and_has_do_not_reveal_what_is_outside_the_scope(api, app, d1, world):
    w, b = world, world.b
    head_b_code = "20000000"  # the CHF id make_family gives B's head
    query = f"Claim?patient.identifier={head_b_code}"
    assert ids_of(found(api, query)) == {b.claim, w.cross_claim}
    # D1 sees the cross claim itself, but not through its patient, who is outside D1.
    resp = d1.get(query)
    assert ids_of(resp.json()) == set()
    no_leak(resp, [w.cross_claim, *b.ids()])
    assert ids_of(found(d1, f"Claim?patient={b.members['head']}")) == {w.cross_claim}  # a plain reference is fine

    d2 = user(api, app, "district2", districts=[w.places["D2"]])
    has = f"Patient?_has:Claim:patient:provider={w.a.facility}"
    assert ids_of(found(api, has)) == {w.a.members["head"], b.members["head"]}
    resp = d2.get(has)  # the claim at HF1 is outside D2: it must not select B's head
    assert ids_of(resp.json()) == set()
    assert ids_of(found(d2, f"Patient?_has:Claim:patient:provider={b.facility}")) == {b.members["head"]}
    assert ids_of(found(d1, f"Group?member.identifier={head_b_code}")) == set()


# --- history ----------------------------------------------------------------------------------------------------


def test_history_of_a_resource_outside_is_404_and_type_history_is_filtered(api, d1, world):
    w, a, b = world, world.a, world.b
    refused(d1.get(f"Patient/{b.members['head']}/_history"), 404)
    assert d1.get(f"Patient/{a.members['head']}/_history").status_code == 200
    for rtype in ("Patient", "Group", "Claim", "Location", "Contract", "Invoice"):
        resp = d1.get(f"{rtype}/_history?_count=100")
        assert resp.status_code == 200, resp.text
        assert resp.json().get("entry"), rtype
        no_leak(resp, w.outside_d1())
    entries = found(d1, "Patient/_history?_count=100")["entry"]
    assert {e["fullUrl"].rsplit("/", 1)[1] for e in entries} == {*a.members.values(), *w.members_c.values()}
    admin = found(api, "Patient/_history?_count=100")["entry"]
    assert b.members["head"] in {e["fullUrl"].rsplit("/", 1)[1] for e in admin}


# --- writes and conditional interactions ---------------------------------------------------------------------------


def test_writes_into_another_district_are_403_and_updates_outside_are_404(api, d1, world, engine):
    w, a, b = world, world.a, world.b
    refused(d1.post("Patient", patient("900000001", "Roe", "Ann", w.places["V2"])), 403)
    assert ids_of(found(api, "Patient?identifier=900000001")) == set()  # nothing written
    assert d1.post("Patient", patient("900000002", "Roe", "Ann", w.places["V1"])).status_code == 201
    # A place below its district is its own at once (not when its scope is next resolved); one below D2 is not.
    ward = created(d1.post("Location", location("R1D1W9", "New ward", "W", w.places["D1"])))["id"]
    village = created(d1.post("Location", location("R1D1W9V1", "New village", "V", ward)))["id"]
    assert d1.get(f"Location/{village}").status_code == 200
    refused(d1.post("Location", location("R2D1W9", "Elsewhere", "W", w.places["D2"])), 403)
    head_b = found(api, f"Patient/{b.members['head']}")
    head_b["name"][0]["given"] = ["Changed"]
    resp = d1.put(f"Patient/{b.members['head']}", head_b)
    refused(resp, 404)
    refused(d1.delete(f"Patient/{b.members['child1']}"), 404)
    assert found(api, f"Patient/{b.members['head']}")["meta"]["versionId"] == head_b["meta"]["versionId"]
    assert api.get(f"Patient/{b.members['child1']}").status_code == 200
    group_a = found(d1, f"Group/{a.family}")
    [place] = [e for e in group_a["extension"][0]["valueAddress"]["extension"] if "valueReference" in e]
    place["valueReference"]["reference"] = f"Location/{w.places['V2']}"
    refused(d1.put(f"Group/{a.family}", group_a), 403)  # a family moved to D2 would leave the scope
    assert found(api, f"Group/{a.family}")["meta"]["versionId"] == group_a["meta"]["versionId"]


def test_conditional_create_and_update_see_only_the_scope(api, d1, world):
    w, a, b = world, world.a, world.b
    head_a_code, head_b_code = "10000000", "20000000"
    # Inside: the match is the existing resource (200, nothing created).
    resp = d1.post("Patient", patient(head_a_code, "Doe", "Head", w.places["V1"]),
                   headers={"If-None-Exist": f"identifier={head_a_code}"})
    assert resp.status_code == 200 and resp.json()["id"] == a.members["head"]
    # Outside: the match is invisible, so it is a create — of an insurance number that is taken (409, generic).
    resp = d1.post("Patient", patient(head_b_code, "Doe", "Head", w.places["V1"]),
                   headers={"If-None-Exist": f"identifier={head_b_code}"})
    refused(resp, 409)
    no_leak(resp, b.ids())
    # …and into the other district it is the scope's 403.
    resp = d1.post("Patient", patient("900000003", "Doe", "Head", w.places["V2"]),
                   headers={"If-None-Exist": f"identifier={head_b_code}"})
    refused(resp, 403)
    no_leak(resp, b.ids())
    # Conditional update: an out-of-scope match is no match either.
    body = found(api, f"Patient/{b.members['head']}")
    body.pop("id")
    body["name"][0]["given"] = ["Changed"]
    resp = d1.put(f"Patient?identifier={head_b_code}", body)
    assert resp.status_code in (403, 409), resp.text
    no_leak(resp, b.ids())
    assert found(api, f"Patient/{b.members['head']}")["name"][0]["given"] != ["Changed"]
    mine = found(d1, f"Patient/{a.members['spouse']}")
    mine.pop("id")
    mine["name"][0]["given"] = ["Renamed"]
    resp = d1.put("Patient?identifier=10000001", mine)
    assert resp.status_code == 200 and resp.json()["id"] == a.members["spouse"]


def test_bundle_entries_are_scoped_like_single_interactions(d1, world):
    a, b = world.a, world.b
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{a.members['head']}"}},
        {"request": {"method": "GET", "url": f"Patient/{b.members['head']}"}},
        {"request": {"method": "GET", "url": "Group?_count=100"}},
        {"request": {"method": "GET", "url": f"Group/{b.family}"}},
    ]}
    resp = d1.post("", bundle)
    assert resp.status_code == 200, resp.text
    statuses = [e["response"]["status"] for e in resp.json()["entry"]]
    assert statuses[0].startswith("200") and statuses[1].startswith("404") and statuses[3].startswith("404")
    assert ids_of(resp.json()["entry"][2]["resource"]) == {a.family, world.family_c}
    for entry in (resp.json()["entry"][1], resp.json()["entry"][3]):
        assert entry.get("resource", {}).get("resourceType", "OperationOutcome") == "OperationOutcome"
    no_leak(resp, world.outside_d1() - {b.family})  # the ids asked for are echoed in the 404s, nothing else


# --- officers and claim administrators ------------------------------------------------------------------------------


def test_an_officer_sees_the_villages_of_its_current_roles_only(api, app, world):
    w, a = world, world.a
    created(api.post("PractitionerRole", officer_role("EOR1", w.officer, [w.places["V1"]])))
    eo = user(api, app, "officer1", user_type="officer", officer_id=w.officer)
    assert eo.get(f"Patient/{a.members['head']}").status_code == 200
    refused(eo.get(f"Patient/{w.members_c['head']}"), 404)  # V1b: same ward, another village
    assert ids_of(found(eo, "Patient?_count=100")) == set(a.members.values())
    assert ids_of(found(eo, "Group?_count=100")) == {a.family}
    # Its villages and the places above them; not the neighbouring village.
    assert ids_of(found(eo, "Location?_count=100")) == {w.places[k] for k in ("R1", "D1", "W1", "V1")}
    assert eo.get(f"Practitioner/{w.officer}").status_code == 200  # itself
    # Enrolling a family in another village is refused.
    refused(eo.post("Patient", patient("900000004", "Roe", "Ann", w.village_c)), 403)
    assert eo.post("Patient", patient("900000005", "Roe", "Ann", w.places["V1"])).status_code == 201
    no_leak(eo.get("Patient?_count=100"), {*w.members_c.values(), *w.b.ids()})


def test_an_officer_whose_role_ended_or_who_has_none_sees_no_insuree(api, app, world):
    eo = user(api, app, "officer2", user_type="officer", officer_id=world.officer)  # no role yet
    assert ids_of(found(eo, "Patient?_count=100")) == set()
    refused(eo.get(f"Patient/{world.a.members['head']}"), 404)
    lost = user(api, app, "officer3", user_type="officer")  # linked to no officer at all: fail closed
    assert ids_of(found(lost, "Patient?_count=100")) == set()


def test_a_claim_administrator_sees_its_facility_claims_and_its_district_insurees(api, app, world):
    w, a, b = world, world.a, world.b
    ca = created(api.post("Practitioner", claim_admin_resource("CA001")))["id"]
    created(api.post("PractitionerRole", claim_admin_role("CAR001", ca, a.facility)))
    admin_user = user(api, app, "ca1", user_type="claim_admin", claim_admin_id=ca)
    assert ids_of(found(admin_user, "Claim?_count=100")) == {a.claim, w.cross_claim}  # not HF1b's claim
    assert ids_of(found(admin_user, "ClaimResponse?_count=100")) == {a.claim, w.cross_claim}
    refused(admin_user.get(f"Claim/{w.other_claim}"), 404)
    refused(admin_user.get(f"Claim/{b.claim}"), 404)
    # Insurees of its facility's district, for look-ups.
    assert admin_user.get(f"Patient/{a.members['head']}").status_code == 200
    refused(admin_user.get(f"Patient/{b.members['head']}"), 404)
    resp = admin_user.get("Claim?_count=100&_include=Claim:patient")
    assert ids_of(resp.json(), "include") == {a.members["head"]}  # the cross claim's patient lives in D2
    no_leak(resp, [w.other_claim, b.claim, b.family, *(set(b.members.values()) - w.cross_refs())])


def test_a_national_user_of_a_facility_sees_every_insuree_but_its_facility_claims_only(api, app, world):
    a, b = world.a, world.b
    hf_user = user(api, app, "hfuser", facility=b.facility)
    assert ids_of(found(hf_user, "Claim?_count=100")) == {b.claim}
    assert {*a.members.values(), *b.members.values()} <= ids_of(found(hf_user, "Patient?_count=100"))
    refused(hf_user.get(f"ClaimResponse/{a.claim}"), 404)


# --- notifications -------------------------------------------------------------------------------------------


def test_a_scoped_subscriber_is_not_notified_of_changes_outside_its_scope(api, app, engine, world, receiver,
                                                                         monkeypatch):
    monkeypatch.setattr(config, "NOTIFY", config.NotifyConfig(allow_http=frozenset({"127.0.0.1"}),
                                                              max_failures=2, timeout_s=5.0))
    matching.forget()
    notify_delivery.forget_principals()
    d1 = user(api, app, "subscriber1", districts=[world.places["D1"]])
    subscribe(d1, "Patient", receiver.url)
    versions = {}
    for side in (world.a, world.b):
        body = found(api, f"Patient/{side.members['spouse']}")
        body["name"][0]["given"] = ["Renamed"]
        resp = api.put(f"Patient/{side.members['spouse']}", body)
        assert resp.status_code == 200
        versions[side.members["spouse"]] = resp.json()["meta"]["versionId"]
    w = Worker(engine, CONFIG, topics=["notify"])
    try:
        w.drain()
    finally:
        w.close()
    spouse = world.a.members["spouse"]
    assert events(receiver) == [("update", f"Patient/{spouse}/_history/{versions[spouse]}")]
    assert all(world.b.members["spouse"] not in r.headers.get("x-hifhir-resource", "") for r in receiver.received)


# --- cost ----------------------------------------------------------------------------------------------------------


def _statements(engine: Engine, action: Any) -> int:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    # On PostgreSQL the reads have an engine of their own (on SQLite the reader shares the engine's events).
    engines = [engine] if engine.dialect.name == "sqlite" else [engine, reader(engine)]
    for each in engines:
        event.listen(each, "before_cursor_execute", count)
    STATEMENT_OBSERVERS.append(seen.append)  # the statements sent to the driver directly (store/fast)
    try:
        action()
    finally:
        for each in engines:
            event.remove(each, "before_cursor_execute", count)
        STATEMENT_OBSERVERS.remove(seen.append)
    return len(seen)


def test_scoping_costs_unscoped_users_nothing_and_a_scoped_search_no_extra_query(api, app, d1, world):
    engine = app.engine
    place = world.places["V1"]
    for who in (api, d1):  # warm the principal caches
        assert who.get(f"Location/{place}").status_code == 200
    admin_read = _statements(engine, lambda: api.get(f"Location/{place}"))
    scoped_read = _statements(engine, lambda: d1.get(f"Location/{place}"))
    assert scoped_read == admin_read + 1  # the one scope check of a read by id
    admin_search = _statements(engine, lambda: api.get("Patient?gender=female"))
    scoped_search = _statements(engine, lambda: d1.get("Patient?gender=female"))
    assert scoped_search == admin_search  # one more condition in the same statement
    admin = app.principals.get("Admin")
    assert admin.locations is None and admin.hf_pk is None
    assert all(condition(kind, admin) is None for kind in KINDS.values())


def test_on_postgresql_a_scoped_type_history_probes_the_version_key(d1, world, engine):
    """The versions of the resources in scope are found through resource_version's key, whatever the size of the
    rest of the history: entity ids are collated "C" and res_id is not, and compared as they are, PostgreSQL cannot
    probe the key with them — it reads the type's whole history backwards, keeping what is in scope."""
    if engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL plan")
    from sqlalchemy import text

    with transaction(engine, write=True) as conn:
        store_filler_patient_versions(conn, 50000)
        conn.execute(text("ANALYZE"))  # the insurees and families of the world too
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, sql: str, params: Any, *_args: Any) -> None:
        if "FROM resource_version" in sql and "ORDER BY resource_version.seq DESC" in sql:
            statements.append((sql, params))

    reads = reader(engine)  # PostgreSQL's reads run on an engine of their own
    event.listen(reads, "before_cursor_execute", seen)
    try:
        entries = found(d1, "Patient/_history?_count=100")["entry"]
    finally:
        event.remove(reads, "before_cursor_execute", seen)
    assert {e["fullUrl"].rsplit("/", 1)[1] for e in entries} == {*world.a.members.values(),
                                                                   *world.members_c.values()}
    (sql, params), = statements
    with engine.connect() as conn:
        plan = "\n".join(conn.exec_driver_sql("EXPLAIN " + sql, params).scalars())

    assert "uq_resource_version_key" in plan, plan
