"""Claims over FHIR (IG rows 14–15, domain §3.3–3.4, reference §3.3–3.4): POST Claim stores the claim and its
lines, runs the checks, processes and valuates, and answers 200 with the ClaimResponse; both stay readable and
searchable; bad input is a 4xx that writes nothing; claim-AI contained resources; rendering of every status."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, update

from hifhir.api import rest
from hifhir.auth.users import create_user
from hifhir.fhir.kind import WriteContext
from hifhir.fhir.registry import KINDS
from hifhir.store.codelists import seed_diagnoses
from hifhir.store.db import transaction
from hifhir.store.tables import (
    claim,
    claim_attachment,
    claim_ded_rem,
    claim_item,
    claim_service,
    insuree,
    medical_item,
    resource_version,
)
from hifhir.store.tables import claim_admin as claim_admin_table
from tests.builders import group
from tests.builders import health_facility as hf_resource
from tests.builders import patient as patient_resource
from tests.builders_claim_fhir import (
    attachment,
    contained,
    item,
    logical,
    service,
    supporting,
)
from tests.builders_claim_fhir import claim as fhir_claim
from tests.builders_claims import Line, entered_claim, price_lists
from tests.builders_eligibility import Places, insert_policy, new_item, new_product, new_service, places
from tests.builders_medical import assert_valid
from tests.builders_practitioner import claim_admin, claim_admin_role
from tests.conftest import CLERK, Api
from tests.renders import renders_of
from tests.responses import created, refused

TODAY = date.today()
YESTERDAY = TODAY - timedelta(days=1)
CS = "https://openimis.github.io/openimis_fhir_r4_ig/CodeSystem/"


# --- the world ------------------------------------------------------------------------------------------------


@dataclass
class World:
    places: Places
    patient: dict[str, Any]  # Patient 100000001, an adult head of family with an active policy
    coverage: str  # the Coverage id of that policy
    ca: str  # claim administrator CA001 (Practitioner id) of the facility RAHOS001
    consult: str  # ActivityDefinition A1, category C, price 40
    aspirin: str  # Medication 0001, price 10
    bandage: str  # Medication 0002, price 10, in the price list but covered by no product


@pytest.fixture
def world(api: Api, engine: Engine) -> World:
    p = places(api)
    ca = created(api.post("Practitioner", claim_admin("CA001")))["id"]
    created(api.post("PractitionerRole", claim_admin_role("CAR001", ca, p.facility)))
    consult, aspirin, bandage = new_service(api, "A1", "C"), new_item(api, "0001"), new_item(api, "0002")
    product = new_product(api, "BASIC", p.region, services={consult: {}}, items={aspirin: {}})
    patient = created(api.post("Patient", patient_resource("100000001", "Doe", "John", p.village, head=True)))
    created(api.post("Group", group("100000001", [patient["id"]], p.village)))
    with transaction(engine, write=True) as conn:
        seed_diagnoses(conn)
    policy = insert_policy(engine, product["id"], [patient["id"]])
    price_lists(engine, p.facility, items={"0001": None, "0002": None}, services={"A1": None})
    return World(p, patient, policy.coverage_id, ca, consult, aspirin, bandage)


def claim_of(w: World, code: str = "C0001", **kw: Any) -> dict[str, Any]:
    """A valid claim of the world: a consultation and two aspirins, unless `lines` says otherwise."""
    kw.setdefault("lines", [service(f"ActivityDefinition/{w.consult}"), item(f"Medication/{w.aspirin}", 2)])
    kw.setdefault("coverage", f"Coverage/{w.coverage}")
    return fhir_claim(code, kw.pop("patient", f"Patient/{w.patient['id']}"),
                      kw.pop("provider", f"Organization/{w.places.facility}"),
                      kw.pop("enterer", f"Practitioner/{w.ca}"), **kw)


def answered(resp: Any) -> dict[str, Any]:
    """A 200 ClaimResponse that passes its IG profile."""
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["resourceType"] == "ClaimResponse", body
    return assert_valid(body)


def adjudications(line: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(category, reason, amount, value) of each adjudication of a ClaimResponse item."""
    return [(a["category"]["coding"][0]["code"], a["reason"]["coding"][0]["code"], a["amount"]["value"], a["value"])
            for a in line["adjudication"]]


def totals(body: dict[str, Any]) -> dict[str, Any]:
    return {t["category"]["coding"][0]["code"]: t["amount"]["value"] for t in body["total"]}


def items_by_sequence(body: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {i["itemSequence"]: i for i in body["item"]}


def counts(engine: Engine) -> dict[str, int]:
    """Rows a refused claim must not have written."""
    with transaction(engine, write=False) as conn:
        return {
            "claim": conn.execute(select(func.count()).select_from(claim)).scalar_one(),
            "items": conn.execute(select(func.count()).select_from(claim_item)).scalar_one(),
            "services": conn.execute(select(func.count()).select_from(claim_service)).scalar_one(),
            "attachments": conn.execute(select(func.count()).select_from(claim_attachment)).scalar_one(),
            "history": conn.execute(select(func.count()).select_from(resource_version).where(
                resource_version.c.res_type.in_(["Claim", "ClaimResponse"]))).scalar_one(),
        }


NOTHING = {"claim": 0, "items": 0, "services": 0, "attachments": 0, "history": 0}


def claim_row(engine: Engine, claim_id: str) -> Any:
    with transaction(engine, write=False) as conn:
        return conn.execute(select(claim).where(claim.c.id == claim_id)).one()


def line_rows(engine: Engine, claim_id: str) -> list[Any]:
    with transaction(engine, write=False) as conn:
        pk = conn.execute(select(claim.c.pk).where(claim.c.id == claim_id)).scalar_one()
        items = conn.execute(select(claim_item).where(claim_item.c.claim_pk == pk).order_by(claim_item.c.pk)).all()
        services = conn.execute(select(claim_service).where(claim_service.c.claim_pk == pk)
                                .order_by(claim_service.c.pk)).all()
    return [*items, *services]


# --- the happy path -----------------------------------------------------------------------------------------------


def test_post_claim_answers_200_with_the_valuated_claim_response(api, engine, world):
    resp = api.post("Claim", claim_of(world, explanation="Head pain"))
    body = answered(resp)
    claim_id = body["id"]
    assert resp.headers["Location"].endswith(f"/ClaimResponse/{claim_id}/_history/1")
    assert body["meta"]["versionId"] == "1"
    assert (body["status"], body["use"], body["outcome"]) == ("active", "claim", "complete")
    assert body["request"] == {"reference": f"Claim/{claim_id}"}
    assert body["patient"] == {"reference": f"Patient/{world.patient['id']}"}
    assert body["requestor"] == {"reference": f"Practitioner/{world.ca}"}
    assert body["insurer"] == {"reference": "Organization/openIMIS-Implementation"}
    assert body["type"]["coding"][0]["code"] == "O"
    assert body["created"] == TODAY.isoformat()
    assert {(i["type"]["coding"][0]["code"], i["value"]) for i in body["identifier"]} == {
        ("Code", "C0001"), ("UUID", claim_id)}
    lines = items_by_sequence(body)
    assert lines[1]["extension"][0]["valueReference"] == {"reference": f"ActivityDefinition/{world.consult}"}
    assert lines[2]["extension"][0]["valueReference"] == {"reference": f"Medication/{world.aspirin}"}
    # entered, checked, processed at the unit price; valuated = the line's amount (100% co-insurance)
    assert adjudications(lines[1]) == [("2", "0", 40, 1), ("4", "0", 40, 1), ("8", "0", 40, 1), ("16", "0", 40, 1)]
    assert adjudications(lines[2]) == [("2", "0", 10, 2), ("4", "0", 10, 2), ("8", "0", 10, 2), ("16", "0", 20, 2)]
    assert lines[1]["adjudication"][0]["reason"]["coding"][0]["display"] == "ACCEPTED"
    assert lines[1]["adjudication"][3]["category"]["coding"][0]["display"] == "Valuated"
    assert totals(body) == {"2": 60, "4": 60, "8": 60, "16": 60}
    row = claim_row(engine, claim_id)
    assert (row.status, row.code, row.claimed, row.approved, row.valuated) == (
        16, "C0001", Decimal(60), Decimal(60), Decimal(60))
    assert (row.date_from, row.date_to, row.date_claimed, row.visit_type, row.icd_code) == (
        YESTERDAY, None, TODAY, "O", "A00")
    assert row.explanation == "Head pain"


@pytest.fixture
def response_renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    return renders_of(monkeypatch, "claim-response")


def response_rendered_now(engine: Engine, claim_id: str) -> dict[str, Any]:
    with transaction(engine, write=False) as conn:
        pk = conn.execute(select(claim.c.pk).where(claim.c.id == claim_id)).scalar_one()
        return KINDS["claim-response"].render(conn, [pk])[pk]


@pytest.mark.parametrize("case", ["valuated", "rejected"])
def test_a_claim_decided_at_once_is_answered_with_what_was_written_not_read_back(
        api, engine, world, response_renders, case):
    lines = [service(f"ActivityDefinition/{world.consult}"), item(f"Medication/{world.aspirin}", 2),
             item(f"Medication/{world.bandage}", 3)]  # the bandage: in no product, rejected
    if case == "rejected":
        lines = [item(f"Medication/{world.bandage}", 3)]

    body = answered(api.post("Claim", claim_of(world, lines=lines)))

    assert response_renders == []
    assert body["outcome"] == "complete"
    assert {k: v for k, v in body.items() if k not in ("resourceType", "id", "meta")} == \
        response_rendered_now(engine, body["id"])
    if case == "valuated":
        assert [a[0] for a in adjudications(items_by_sequence(body)[3])] == ["1"]  # rejected: category 1
    else:
        assert claim_row(engine, body["id"]).status == 1


def test_a_claim_held_for_review_is_answered_with_its_read_back_response(
        api, engine, world, response_renders, monkeypatch):
    from hifhir import config

    monkeypatch.setattr(config, "REVIEW_SELECTION", "all:0")

    body = answered(api.post("Claim", claim_of(world)))

    assert response_renders != []
    assert body["outcome"] == "partial"
    assert {k: v for k, v in body.items() if k not in ("resourceType", "id", "meta")} == \
        response_rendered_now(engine, body["id"])


def test_lines_are_stored_as_the_entered_claim_builder_stores_them(api, engine, world):
    """Items first, then services, each keeping Claim.item.sequence; passed with reason 0 before the checks."""
    body = answered(api.post("Claim", claim_of(world, lines=[
        service(f"ActivityDefinition/{world.consult}", sequence=1), item(f"Medication/{world.aspirin}", 3, 10, 2),
        item(f"Medication/{world.bandage}", 1, "2.5", 3)])))
    rows = line_rows(engine, body["id"])
    with transaction(engine, write=False) as conn:
        codes = dict(conn.execute(select(medical_item.c.pk, medical_item.c.code)).all())
    assert [(r.sequence, getattr(r, "item_pk", None) and codes[r.item_pk], r.qty_provided, r.price_asked)
            for r in rows] == [(2, "0001", Decimal(3), Decimal(10)), (3, "0002", Decimal(1), Decimal("2.5")),
                               (1, None, Decimal(1), Decimal(40))]
    assert claim_row(engine, body["id"]).claimed == Decimal("72.5")


def test_a_claim_of_many_lines_sends_no_statement_the_driver_parses_anew_at_each_execution(
        api, engine, world, monkeypatch):
    """psycopg caches its conversion of a `%s` statement only up to 50 parameters and 4 KB: a longer one (a multi-row
    insert of a claim's lines) would be split again at every execution, ~2 µs a parameter."""
    if engine.dialect.name != "postgresql":
        pytest.skip("psycopg: PostgreSQL only")
    import psycopg._queries

    parsed: list[bytes] = []
    original = psycopg._queries._query2pg_nocache

    def spy(query: bytes, encoding: str) -> Any:
        parsed.append(query)
        return original(query, encoding)

    monkeypatch.setattr(psycopg._queries, "_query2pg_nocache", spy)
    lines = [item(f"Medication/{world.aspirin}", sequence=n) for n in range(1, 13)]
    lines += [service(f"ActivityDefinition/{world.consult}", sequence=n) for n in range(13, 25)]

    body = answered(api.post("Claim", claim_of(world, lines=lines)))

    assert len(line_rows(engine, body["id"])) == 24  # 12 rows of 19 columns a table: 228 parameters
    assert parsed == []


_DECIDED_COLUMNS = ("status", "rejection_reason", "qty_provided", "qty_approved", "price_asked", "product_pk",
                    "policy_pk", "price_origin", "limitation", "limitation_value", "price_adjusted", "price_valuated",
                    "deductable_amount", "exceed_ceiling_amount", "exceed_ceiling_amount_category",
                    "remunerated_amount")


def decided_lines(conn: Any, claim_pk: int) -> dict[tuple[str, int], tuple[Any, ...]]:
    """What the checks and processing decided of each line, by kind and rank within the kind."""
    return {(kind, rank): tuple(getattr(r, c) for c in _DECIDED_COLUMNS)
            for kind, table in (("item", claim_item), ("service", claim_service))
            for rank, r in enumerate(conn.execute(select(table).where(table.c.claim_pk == claim_pk)
                                                  .order_by(table.c.pk)).all())}


_DECIDED_CLAIM = ("status", "rejection_reason", "category", "approved", "valuated", "remunerated", "date_processed")
_CONSUMED = ("policy_pk", "insuree_pk", "ded_g", "ded_op", "ded_ip", "rem_g", "rem_op", "rem_ip", "rem_consult",
             "rem_surgery", "rem_delivery", "rem_hospitalization", "rem_antenatal")


def decided_claim(conn: Any, claim_pk: int) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """What the checks and processing decided of the claim itself, and what it consumes of its policies."""
    head = conn.execute(select(*(claim.c[c] for c in _DECIDED_CLAIM)).where(claim.c.pk == claim_pk)).one()
    consumed = conn.execute(select(*(claim_ded_rem.c[c] for c in _CONSUMED))
                            .where(claim_ded_rem.c.claim_pk == claim_pk).order_by(claim_ded_rem.c.policy_pk)).all()
    return tuple(head), [tuple(r) for r in consumed]


def test_a_submitted_claim_and_its_lines_are_written_once_as_checks_and_processing_of_the_stored_claim_leave_them(
        api, engine, world):
    """POST Claim decides the claim and its lines before it inserts them (no UPDATE of a row it inserted); each is
    stored as the checks and processing of the same claim, entered and stored first, leave it, with the same
    consumption of its policy."""
    from hifhir.domain.claims import checks, valuation
    from hifhir.fhir.kind import now_us
    from hifhir.store.fast import STATEMENT_OBSERVERS
    from tests.builders_claims import Line

    entered = entered_claim(engine, world.places.facility, world.patient["id"], code="C0009",
                            items=[Line("0001", 2, 10), Line("0002", 1, 10)], services=[Line("A1", 1, 40)])
    with transaction(engine, write=True) as conn:
        assert checks.submit(conn, entered, today=TODAY, now=now_us()) == 4
        assert valuation.process(conn, entered, today=TODAY, now=now_us()) == 16
        stored = decided_lines(conn, entered)
        stored_claim = decided_claim(conn, entered)
        conn.rollback()  # the entered claim stays entered: no usage for the submission below

    seen: list[str] = []
    STATEMENT_OBSERVERS.append(seen.append)
    try:
        body = answered(api.post("Claim", claim_of(world, lines=[
            item(f"Medication/{world.aspirin}", 2, 10), item(f"Medication/{world.bandage}", 1, 10),
            service(f"ActivityDefinition/{world.consult}")])))
    finally:
        STATEMENT_OBSERVERS.remove(seen.append)
    assert not [s for s in seen if s.startswith(("UPDATE claim ", "UPDATE claim_item", "UPDATE claim_service"))]
    with transaction(engine, write=False) as conn:
        posted_pk = conn.execute(select(claim.c.pk).where(claim.c.id == body["id"])).scalar_one()
        posted, posted_claim = decided_lines(conn, posted_pk), decided_claim(conn, posted_pk)
    assert posted == stored
    assert posted_claim == stored_claim
    assert posted_claim[0][0] == 16 and len(posted_claim[1]) == 1  # valuated; one policy consumed
    # the bandage, in the price list but covered by no product, is rejected by processing; the others valuated
    assert [(line[0], line[1]) for line in posted.values()] == [(1, 0), (2, 3), (1, 0)]


# Read by the checks and processing, changed by no claim: a submission reads them before its write transaction.
_MASTER_DATA = ("price_list", "insuree_policy", "product_item", "product_service")


def test_on_sqlite_a_claim_reads_registers_price_lists_and_policies_before_it_takes_the_writer_lock(
        api, engine, world, monkeypatch):
    """The writer lock serialises every write of a SQLite database: a submission holds it only to read what other
    claims change (the claim with its insuree, the insuree's other claims) and to write."""
    if engine.dialect.name != "sqlite":
        pytest.skip("the writer lock is SQLite's; on PostgreSQL the reads stay in the write transaction")
    from hifhir.store import db
    from hifhir.store.fast import STATEMENT_OBSERVERS

    held: list[bool] = [False]
    seen: list[tuple[bool, str]] = []
    enter, leave = db.WriterLock.__enter__, db.WriterLock.__exit__

    def entered(lock: db.WriterLock) -> db.WriterLock:
        taken = enter(lock)
        held[0] = True
        return taken

    def left(lock: db.WriterLock, *exc: Any) -> None:
        held[0] = False
        leave(lock, *exc)

    def record(sql: str) -> None:
        seen.append((held[0], " ".join(sql.split())))

    def record_sqlalchemy(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        record(sql)

    monkeypatch.setattr(db.WriterLock, "__enter__", entered)
    monkeypatch.setattr(db.WriterLock, "__exit__", left)
    STATEMENT_OBSERVERS.append(record)
    event.listen(engine, "before_cursor_execute", record_sqlalchemy)
    try:
        body = answered(api.post("Claim", claim_of(world)))
    finally:
        event.remove(engine, "before_cursor_execute", record_sqlalchemy)
        STATEMENT_OBSERVERS.remove(record)

    assert totals(body)["16"] == 60  # checked and valuated with what was read before the lock
    before = [sql for locked, sql in seen if not locked]
    under = [sql for locked, sql in seen if locked]
    assert all(any(table in sql for sql in before) for table in _MASTER_DATA)
    assert [sql for sql in under if any(table in sql for table in _MASTER_DATA)] == []
    assert any(sql.startswith("INSERT INTO claim ") for sql in under)


def test_a_claim_read_ahead_counts_a_claim_of_the_insuree_committed_before_its_write(api, app, engine, world):
    """What other claims change is read in the write transaction: a duplicate submitted while the claim was being
    read ahead (on SQLite, outside the writer lock) is seen, and the claim's consultation is rejected with 6."""
    call = rest.Call(engine=app.engine, reader=app.reader, settings=app.settings, base_url="http://testserver/fhir",
                     principal=app.principals.get("Admin"), lenient=False)
    prepared = rest.prepare_write(call, "Claim", claim_of(world, "C0001"), None)
    rest.read_ahead(call, prepared)
    # meanwhile: the same consultation, the same day
    answered(api.post("Claim", claim_of(world, "C0002", lines=[service(f"ActivityDefinition/{world.consult}")])))

    pending, flushed = rest._run_one(call, lambda ctx: rest.apply_create(call, ctx, prepared, None))

    written = pending.written(flushed)
    assert written is not None
    lines = items_by_sequence(api.get(f"ClaimResponse/{written.id}").json())
    assert adjudications(lines[1]) == [("1", "6", 40, 1)]  # the consultation: rejected, duplicated
    assert adjudications(lines[2])[-1] == ("16", "0", 20, 2)  # the aspirins: valuated


def test_claim_reads_back_as_sent(api, engine, world):
    sent = claim_of(world, explanation="Head pain", guarantee="G-77", diagnoses=["A00", "B01", "A02"],
                    visit_type="E", end=YESTERDAY)
    claim_id = answered(api.post("Claim", sent))["id"]
    resp = api.get(f"Claim/{claim_id}")
    assert resp.status_code == 200, resp.text
    body = assert_valid(resp.json())
    assert body["meta"]["versionId"] == "1"
    for key in ("status", "use", "type", "patient", "billablePeriod", "created", "enterer", "provider", "priority",
                "total"):
        assert body[key] == sent[key], key
    assert body["insurance"] == sent["insurance"]
    assert [d["diagnosisCodeableConcept"]["coding"][0]["code"] for d in body["diagnosis"]] == ["A00", "B01", "A02"]
    assert [(s["category"]["coding"][0]["code"], s["valueString"]) for s in body["supportingInfo"]] == [
        ("explanation", "Head pain"), ("guarantee", "G-77")]
    assert [(i["sequence"], i["productOrService"]["text"], i["quantity"], i["unitPrice"]) for i in body["item"]] == [
        (1, "A1", {"value": 1}, {"value": 40, "currency": "EUR"}),
        (2, "0001", {"value": 2}, {"value": 10, "currency": "EUR"})]
    assert body["item"][0]["extension"] == sent["item"][0]["extension"]
    assert {(i["type"]["coding"][0]["code"], i["value"]) for i in body["identifier"]} == {
        ("Code", "C0001"), ("UUID", claim_id)}
    row = claim_row(engine, claim_id)
    assert (row.visit_type, row.date_to, row.icd_code, row.icd_code_1, row.icd_code_2, row.icd_code_3,
            row.guarantee_id) == ("E", YESTERDAY, "A00", "B01", "A02", None, "G-77")
    response = api.get(f"ClaimResponse/{claim_id}")
    assert response.status_code == 200 and assert_valid(response.json())["outcome"] == "complete"


def test_claim_response_is_searchable_and_readable_by_its_claim(api, world):
    claim_id = answered(api.post("Claim", claim_of(world)))["id"]
    for query in (f"request=Claim/{claim_id}", f"patient=Patient/{world.patient['id']}", "outcome=complete",
                  f"requestor=Practitioner/{world.ca}", "status=active", f"created={TODAY.isoformat()}",
                  "identifier=C0001", f"identifier=UUID|{claim_id}", "claim-status=16", "claim-status=valuated",
                  f"item-reference=Medication/{world.aspirin}"):
        resp = api.get(f"ClaimResponse?{query}")
        assert resp.status_code == 200, (query, resp.text)
        assert [e["resource"]["id"] for e in resp.json().get("entry", [])] == [claim_id], query
    for query in ("outcome=queued", "outcome=partial", "claim-status=rejected", "status=cancelled",
                  f"created=lt{TODAY.isoformat()}", "identifier=OTHER"):
        resp = api.get(f"ClaimResponse?{query}")
        assert resp.status_code == 200, (query, resp.text)
        assert "entry" not in resp.json(), query


def test_claim_is_searchable(api, world):
    claim_id = answered(api.post("Claim", claim_of(world)))["id"]
    for query in (f"patient=Patient/{world.patient['id']}", f"provider=Organization/{world.places.facility}",
                  f"enterer=Practitioner/{world.ca}", f"created={TODAY.isoformat()}", "status=active",
                  "use=claim", "identifier=C0001", f"identifier=UUID|{claim_id}", "claim-status=valuated",
                  f"item-reference=ActivityDefinition/{world.consult}", f"_lastUpdated=ge{YESTERDAY.isoformat()}",
                  f"_id={claim_id}"):
        resp = api.get(f"Claim?{query}")
        assert resp.status_code == 200, (query, resp.text)
        entries = resp.json().get("entry", [])
        assert [e["resource"]["id"] for e in entries] == [claim_id], query
        assert entries[0]["resource"]["resourceType"] == "Claim"
    for query in ("use=preauthorization", "claim-status=2", f"item-reference=Medication/{world.bandage}",
                  f"created=gt{TODAY.isoformat()}"):
        resp = api.get(f"Claim?{query}")
        assert resp.status_code == 200, (query, resp.text)
        assert "entry" not in resp.json(), query


# --- identifiers, resubmission, immutability -------------------------------------------------------------------


def test_a_client_uuid_becomes_the_id_of_claim_and_claim_response(api, world):
    claim_uuid = str(uuid.uuid4())
    body = answered(api.post("Claim", claim_of(world, claim_uuid=claim_uuid)))
    assert body["id"] == claim_uuid
    assert api.get(f"Claim/{claim_uuid}").status_code == 200
    again = api.post("Claim", claim_of(world, "C0002", claim_uuid=claim_uuid))
    refused(again, 409, expression="Claim.identifier", text=claim_uuid)


def test_resubmitting_a_claim_code_is_a_409_that_changes_nothing(api, engine, world):
    first = answered(api.post("Claim", claim_of(world)))
    before = counts(engine)
    refused(api.post("Claim", claim_of(world)), 409, expression="Claim.identifier", text="C0001")
    assert counts(engine) == before
    assert api.get(f"ClaimResponse/{first['id']}").json()["meta"]["versionId"] == "1"


def test_a_resubmitted_code_is_a_409_once_the_driver_prepared_the_insert(api, engine, world):
    """On PostgreSQL a prepared claim insert waits for the next round trip: its violation is raised there, and
    still answered with the 409 naming the code, nothing written."""
    for i in range(8):
        answered(api.post("Claim", claim_of(world, f"P{i:04d}")))
    before = counts(engine)

    again = api.post("Claim", claim_of(world, "P0003"))

    body = refused(again, 409, expression="Claim.identifier", text="P0003")
    assert body["issue"][0]["diagnostics"] == ("Claim code P0003 is already used by a current claim of this "
                                               "health facility")
    assert counts(engine) == before
    answered(api.post("Claim", claim_of(world, "P0100")))  # the next claim goes through


def test_the_same_claim_code_may_be_used_by_another_facility(api, engine, world):
    answered(api.post("Claim", claim_of(world)))
    other = created(api.post("Organization", hf_resource("RAHOS002", world.places.district)))["id"]
    created(api.post("PractitionerRole", claim_admin_role("CAR002", world.ca, other)))
    price_lists(engine, other, items={"0001": None}, services={"A1": None})
    answered(api.post("Claim", claim_of(world, provider=f"Organization/{other}")))


def test_claims_cannot_be_updated_or_deleted(api, world):
    sent = claim_of(world)
    claim_id = answered(api.post("Claim", sent))["id"]
    refused(api.put(f"Claim/{claim_id}", {**sent, "id": claim_id}), 405)
    refused(api.put(f"Claim/{uuid.uuid4()}", {**sent, "id": "x"}), 400, 405)
    refused(api.delete(f"Claim/{claim_id}"), 405)
    response = api.get(f"ClaimResponse/{claim_id}").json()
    refused(api.post("ClaimResponse", response), 405)
    # A PUT delivers a medical officer's review (tests/http/test_review.py): this claim was never selected for one.
    refused(api.put(f"ClaimResponse/{claim_id}", response), 409)
    refused(api.delete(f"ClaimResponse/{claim_id}"), 405)
    assert api.get(f"Claim/{claim_id}").json()["meta"]["versionId"] == "1"


# --- rights ---------------------------------------------------------------------------------------------------------


def test_rights_claims_add_to_submit_and_claims_search_to_read(api, app, engine, world):
    claim_id = answered(api.post("Claim", claim_of(world)))["id"]
    clerk = Api(api.client, app.tokens.issue(CLERK[0])[0])  # a Clerk has no claim right at all
    refused(clerk.post("Claim", claim_of(world, "C0002")), 403)
    refused(clerk.get(f"Claim/{claim_id}"), 403)
    refused(clerk.get(f"ClaimResponse/{claim_id}"), 403)
    refused(clerk.get("ClaimResponse?outcome=complete"), 403)
    with transaction(engine, write=True) as conn:
        create_user(conn, "contributor", "x", roles=["Claim Contributor"])  # 111001, 111002, 111005
    contributor = Api(api.client, app.tokens.issue("contributor")[0])
    answered(contributor.post("Claim", claim_of(world, "C0003")))
    assert contributor.get(f"Claim/{claim_id}").status_code == 200
    assert contributor.get(f"ClaimResponse/{claim_id}").status_code == 200


# --- references: codes, insurance numbers, logical and contained references --------------------------------------


def test_references_by_business_code(api, engine, world):
    body = answered(api.post("Claim", claim_of(
        world, patient="Patient/100000001", provider="Organization/RAHOS001", enterer="Practitioner/CA001",
        lines=[service("ActivityDefinition/A1"), item("Medication/0001", 2)])))
    claim_body = api.get(f"Claim/{body['id']}").json()
    assert claim_body["patient"] == {"reference": f"Patient/{world.patient['id']}"}
    assert claim_body["provider"] == {"reference": f"Organization/{world.places.facility}"}
    assert claim_body["enterer"] == {"reference": f"Practitioner/{world.ca}"}
    assert [i["extension"][0]["valueReference"]["reference"] for i in claim_body["item"]] == [
        f"ActivityDefinition/{world.consult}", f"Medication/{world.aspirin}"]
    assert body["outcome"] == "complete"


def test_logical_references_by_identifier(api, world):
    body = answered(api.post("Claim", claim_of(
        world, patient=logical("Patient", "100000001"), provider=logical("Organization", "RAHOS001"),
        enterer=logical("Practitioner", "CA001"),
        lines=[service(logical("ActivityDefinition", world.consult, "UUID")),
               item(logical("Medication", "0001"), 2)])))
    assert body["patient"] == {"reference": f"Patient/{world.patient['id']}"}
    assert totals(body)["16"] == 60


def test_claim_ai_contained_resources_are_matched_to_the_registers(api, world):
    """The claim-AI module sends the claim's Patient, Organization, Practitioner, Medication and
    ActivityDefinition as contained resources, referenced by `#id` (and its own `#Type/uuid` form)."""
    sent = claim_of(
        world, patient={"reference": "#pat"}, provider={"reference": "#hf"}, enterer={"reference": "#ca"},
        lines=[service({"reference": f"#ActivityDefinition/{world.consult}"}), item({"reference": "#med"}, 2)],
        contained=[contained("Patient", "pat", code="100000001"),
                   contained("Organization", "hf", code="RAHOS001", name="Rapta"),
                   contained("Practitioner", "ca", code="CA001"),
                   contained("ActivityDefinition", world.consult, uuid=world.consult, status="active"),
                   contained("Medication", "med", code="0001")])
    body = answered(api.post("Claim", sent))
    stored = assert_valid(api.get(f"Claim/{body['id']}").json())
    assert "contained" not in stored
    assert stored["patient"] == {"reference": f"Patient/{world.patient['id']}"}
    assert stored["provider"] == {"reference": f"Organization/{world.places.facility}"}
    assert stored["enterer"] == {"reference": f"Practitioner/{world.ca}"}
    assert [i["extension"][0]["valueReference"]["reference"] for i in stored["item"]] == [
        f"ActivityDefinition/{world.consult}", f"Medication/{world.aspirin}"]


@pytest.mark.parametrize("case", ["unmatched", "no-identifier", "missing", "wrong-type"])
def test_contained_resources_that_match_nothing_are_refused(api, engine, world, case):
    pat = {"unmatched": contained("Patient", "pat", code="999999999"),
           "no-identifier": contained("Patient", "pat"),
           "missing": contained("Patient", "other", code="100000001"),
           "wrong-type": contained("Organization", "pat", code="RAHOS001")}[case]
    resp = api.post("Claim", claim_of(world, patient={"reference": "#pat"}, contained=[pat]))
    expression = "Claim.contained[0]" if case in ("unmatched", "no-identifier") else "Claim.patient"
    refused(resp, 422, expression=expression)
    assert counts(engine) == NOTHING


# --- bad input: 4xx with an expression, nothing written ----------------------------------------------------------


def _bad_claims(w: World) -> dict[str, tuple[dict[str, Any], int, str]]:
    other_patient = "Patient/" + str(uuid.uuid4())
    return {
        "unknown patient": (claim_of(w, patient=other_patient), 422, "Claim.patient"),
        "unknown insurance number": (claim_of(w, patient="Patient/999999999"), 422, "Claim.patient"),
        "unknown facility": (claim_of(w, provider="Organization/NOPE0001"), 422, "Claim.provider"),
        "unknown enterer": (claim_of(w, enterer="Practitioner/NOBODY"), 422, "Claim.enterer"),
        "unknown item": (claim_of(w, lines=[item("Medication/9999")]), 422, "Claim.item[0].extension"),
        "unknown service": (claim_of(w, lines=[item(f"Medication/{w.aspirin}"), service("ActivityDefinition/ZZ")]),
                            422, "Claim.item[1].extension"),
        "item category naming a service": (
            claim_of(w, lines=[item(f"ActivityDefinition/{w.consult}")]), 422, "Claim.item[0].extension"),
        "negative quantity": (claim_of(w, lines=[item(f"Medication/{w.aspirin}", -1)], total=10), 422,
                              "Claim.item[0].quantity.value"),
        "zero quantity": (claim_of(w, lines=[item(f"Medication/{w.aspirin}", 0)], total=10), 422,
                          "Claim.item[0].quantity.value"),
        "non-numeric quantity": (claim_of(w, lines=[item(f"Medication/{w.aspirin}", "two")], total=10), 400,
                                 "Claim.item[0].quantity.value"),
        "negative price": (claim_of(w, lines=[item(f"Medication/{w.aspirin}", 1, -10)], total=10), 422,
                           "Claim.item[0].unitPrice"),
        "three decimals": (claim_of(w, lines=[item(f"Medication/{w.aspirin}", 1, "10.005")], total=10), 422,
                           "Claim.item[0].unitPrice"),
        "six diagnoses": (claim_of(w, diagnoses=["A00", "A01", "A02", "A03", "A04", "A05"]), 400,
                          "Claim.diagnosis"),
        "end before start": (claim_of(w, start=YESTERDAY, end=YESTERDAY - timedelta(days=1)), 422,
                             "Claim.billablePeriod.end"),
        "partial start date": (claim_of(w) | {"billablePeriod": {"start": "2026-01"}}, 422,
                               "Claim.billablePeriod.start"),
        "unknown visit type": (claim_of(w, visit_type="X"), 400, "Claim.type"),
        "duplicate sequence": (claim_of(w, lines=[item(f"Medication/{w.aspirin}", sequence=1),
                                                  service(f"ActivityDefinition/{w.consult}", sequence=1)]),
                               422, "Claim.item[1].sequence"),
        "coverage of nobody": (claim_of(w, coverage=f"Coverage/{uuid.uuid4()}"), 422, "Claim.insurance[0].coverage"),
        "foreign currency": (claim_of(w, lines=[item(f"Medication/{w.aspirin}")]) | {
            "total": {"value": 10, "currency": "USD"}}, 422, "Claim.total"),
        "attachment without data": (claim_of(w, attachments=[supporting(
            "attachment", 3, valueAttachment={"url": "http://example.org/x.pdf"})]), 422,
            "Claim.supportingInfo[0].valueAttachment.data"),
        "attachment with a wrong hash": (claim_of(w, attachments=[attachment(b"%PDF-1.4", 3, hash_form="wrong")]),
                                         422, "Claim.supportingInfo[0].valueAttachment.hash"),
        "reference's hash on the FHIR base": (
            claim_of(w, attachments=[attachment(b"%PDF-1.4", 3, hash_form="reference")]), 422,
            "Claim.supportingInfo[0].valueAttachment.hash"),
        "guarantee too long": (claim_of(w, guarantee="G" * 51), 422, "Claim.supportingInfo[0].valueString"),
        "claim code too long": (claim_of(w, "C" * 51), 422, "Claim.identifier"),
        "not a UUID": (claim_of(w, claim_uuid="not-a-uuid"), 422, "Claim.identifier"),
    }


BAD = ["unknown patient", "unknown insurance number", "unknown facility", "unknown enterer", "unknown item",
       "unknown service", "item category naming a service", "negative quantity", "zero quantity",
       "non-numeric quantity", "negative price", "three decimals", "six diagnoses", "end before start",
       "partial start date", "unknown visit type", "duplicate sequence", "coverage of nobody", "foreign currency",
       "attachment without data", "attachment with a wrong hash", "reference's hash on the FHIR base",
       "guarantee too long", "claim code too long", "not a UUID"]


@pytest.mark.parametrize("case", BAD)
def test_bad_claims_are_refused_and_write_nothing(api, engine, world, case):
    body, status, expression = _bad_claims(world)[case]
    refused(api.post("Claim", body), status, expression=expression)
    assert counts(engine) == NOTHING


def test_a_claim_administrator_of_another_facility_is_refused(api, engine, world):
    other = created(api.post("Organization", hf_resource("RAHOS002", world.places.district)))["id"]
    stranger = created(api.post("Practitioner", claim_admin("CA002", "Other", "Admin")))["id"]
    created(api.post("PractitionerRole", claim_admin_role("CAR002", stranger, other)))
    refused(api.post("Claim", claim_of(world, enterer=f"Practitioner/{stranger}")), 422,
            expression="Claim.enterer", text="RAHOS001")
    assert counts(engine) == NOTHING


def test_a_coverage_of_another_insuree_is_refused(api, engine, world):
    other = created(api.post("Patient", patient_resource("100000009", "Roe", "Jane", world.places.village)))["id"]
    product = api.get("InsurancePlan?identifier=BASIC").json()["entry"][0]["resource"]["id"]
    foreign = insert_policy(engine, product, [other]).coverage_id
    refused(api.post("Claim", claim_of(world, coverage=f"Coverage/{foreign}")), 422,
            expression="Claim.insurance[0].coverage")
    assert counts(engine) == NOTHING


# --- attachments ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hash_form", ["fhir", "hex", None])
def test_attachments_are_stored_decoded_and_read_back(api, engine, world, hash_form):
    data = b"%PDF-1.4 scanned prescription"
    sent = claim_of(world, explanation="see scan", attachments=[
        attachment(data, 3, hash_form=hash_form, creation="2026-01-05T10:00:00Z"),
        attachment(b"second", 4, title="x-ray.png", content_type="image/png")])
    claim_id = answered(api.post("Claim", sent))["id"]
    with transaction(engine, write=False) as conn:
        rows = conn.execute(select(claim_attachment).order_by(claim_attachment.c.sequence)).all()
    assert [(r.sequence, r.title, r.content_type, r.data) for r in rows] == [
        (3, "scan.pdf", "application/pdf", data), (4, "x-ray.png", "image/png", b"second")]
    assert rows[0].hash == hashlib.sha1(data).hexdigest()
    info = assert_valid(api.get(f"Claim/{claim_id}").json())["supportingInfo"]
    assert [(s["sequence"], s["category"]["coding"][0]["code"]) for s in info] == [
        (1, "explanation"), (3, "attachment"), (4, "attachment")]
    att = info[1]["valueAttachment"]
    assert base64.b64decode(att["data"]) == data
    assert att["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert (att["title"], att["contentType"], att["creation"]) == ("scan.pdf", "application/pdf",
                                                                   "2026-01-05T10:00:00Z")


def test_the_reference_modules_attachment_hash_is_accepted_on_its_alias(api, engine, world):
    sent = claim_of(world, attachments=[attachment(b"%PDF-1.4", 3, hash_form="reference")])
    answered(api.as_alias().post("Claim", sent))
    assert counts(engine)["attachments"] == 1


# --- the checks' outcome on the ClaimResponse ----------------------------------------------------------------------


def test_a_line_no_product_covers_is_rejected_and_the_rest_valuated(api, world):
    body = answered(api.post("Claim", claim_of(world, lines=[item(f"Medication/{world.aspirin}", 2),
                                                             item(f"Medication/{world.bandage}", 1)])))
    assert body["outcome"] == "complete"
    lines = items_by_sequence(body)
    assert adjudications(lines[1]) == [("2", "0", 10, 2), ("4", "0", 10, 2), ("8", "0", 10, 2), ("16", "0", 20, 2)]
    assert adjudications(lines[2]) == [("1", "3", 10, 1)]
    assert lines[2]["adjudication"][0]["reason"]["coding"][0]["display"] == "NO PRODUCT FOUND"
    assert totals(body) == {"2": 30, "4": 20, "8": 20, "16": 20}


def test_a_claim_whose_every_line_is_rejected_is_complete_and_rejected(api, engine, world):
    body = answered(api.post("Claim", claim_of(world, lines=[item(f"Medication/{world.bandage}", 3)])))
    assert body["outcome"] == "complete"
    assert adjudications(body["item"][0]) == [("1", "3", 10, 3)]
    assert totals(body) == {"2": 30, "1": 30}
    assert body["total"][1]["category"]["coding"][0]["display"] == "Rejected"
    assert claim_row(engine, body["id"]).status == 1


def test_an_unknown_diagnosis_is_not_a_4xx_but_rejection_reason_8(api, engine, world):
    body = answered(api.post("Claim", claim_of(world, diagnoses=["A00", "XYZ9"])))
    assert {code for i in body["item"] for _, code, _, _ in adjudications(i)} == {"8"}
    assert claim_row(engine, body["id"]).icd_code_1 == "XYZ9"


def test_a_total_that_is_not_the_sum_of_the_lines_is_rejection_reason_20(api, engine, world):
    body = answered(api.post("Claim", claim_of(world, total=61)))  # valid: 20 is added to the IG value set
    assert {a["reason"]["coding"][0]["code"] for i in body["item"] for a in i["adjudication"]} == {"20"}
    assert {a["reason"]["coding"][0]["display"] for i in body["item"] for a in i["adjudication"]} == {"INVALID CLAIM"}
    assert claim_row(engine, body["id"]).claimed == Decimal(61)


def test_a_deleted_item_is_stored_and_rejected_with_reason_1(api, engine, world):
    with transaction(engine, write=True) as conn:
        conn.execute(update(medical_item).where(medical_item.c.id == world.bandage).values(deleted=True))
    body = answered(api.post("Claim", claim_of(world, lines=[item(f"Medication/{world.aspirin}"),
                                                             item(f"Medication/{world.bandage}")])))
    assert adjudications(items_by_sequence(body)[2]) == [("1", "1", 10, 1)]


def test_a_deleted_insuree_is_stored_and_rejected_with_reason_7(api, engine, world):
    with transaction(engine, write=True) as conn:
        conn.execute(update(insuree).where(insuree.c.id == world.patient["id"]).values(deleted=True))
    body = answered(api.post("Claim", claim_of(world, patient=f"Patient/{world.patient['id']}")))
    assert body["outcome"] == "complete"
    assert {code for i in body["item"] for _, code, _, _ in adjudications(i)} == {"7"}


def test_the_insurance_number_of_a_deleted_insuree_names_no_one(api, engine, world):
    # Insurance numbers are unique among current insurees only (another may get it): by number, a deleted insuree
    # is not found; by its id it is (the test above).
    with transaction(engine, write=True) as conn:
        conn.execute(update(insuree).where(insuree.c.id == world.patient["id"]).values(deleted=True))
    before = counts(engine)
    assert refused(api.post("Claim", claim_of(world, patient="Patient/100000001")), 422, expression="Claim.patient")
    assert counts(engine) == before


# --- rendering of every status (claims loaded in SQL) ----------------------------------------------------------------


def publish(engine: Engine, pk: int) -> str:
    """Version a claim loaded in SQL as Claim and ClaimResponse (rendered from its rows); returns its id."""
    with transaction(engine, write=True) as conn:
        claim_id = str(conn.execute(select(claim.c.id).where(claim.c.pk == pk)).scalar_one())
        ctx = WriteContext(conn, "test")
        ctx.created[(claim.name, pk)] = claim_id  # both kinds at version 1, as a POST leaves them
        ctx.mark("claim", pk)
        ctx.mark("claim-response", pk)
        ctx.flush()
    return claim_id


def sql_claim(engine: Engine, w: World, **columns: Any) -> int:
    """An entered claim of the world in SQL (a consultation, 2 aspirins at 10, 1 bandage at 5), entered by CA001,
    with the claim columns given."""
    pk = entered_claim(engine, w.places.facility, w.patient["id"], code="SQL1",
                       items=[Line("0001", 2, 10), Line("0002", 1, 5)], services=[Line("A1", 1, 40)])
    with transaction(engine, write=True) as conn:
        ca_pk = conn.execute(select(claim_admin_table.c.pk).where(claim_admin_table.c.id == w.ca)).scalar_one()
        conn.execute(update(claim).where(claim.c.pk == pk).values(claim_admin_pk=ca_pk, **columns))
    return pk


def set_lines(engine: Engine, pk: int, **by_sequence: dict[str, Any]) -> None:
    """Line columns by sequence (`s1=…`: the consultation is sequence 3, the items 1 and 2)."""
    with transaction(engine, write=True) as conn:
        for key, values in by_sequence.items():
            seq = int(key[1:])
            for table in (claim_item, claim_service):
                conn.execute(update(table).where(table.c.claim_pk == pk, table.c.sequence == seq).values(**values))


def read_response(api: Api, claim_id: str) -> dict[str, Any]:
    resp = api.get(f"ClaimResponse/{claim_id}")
    assert resp.status_code == 200, resp.text
    return assert_valid(resp.json())


def test_an_entered_claim_is_queued(api, engine, world):
    claim_id = publish(engine, sql_claim(engine, world))
    body = read_response(api, claim_id)
    assert body["outcome"] == "queued"
    assert body["created"] == YESTERDAY.isoformat()  # the date claimed while not yet submitted
    assert [adjudications(i) for i in body["item"]] == [
        [("2", "0", 10, 2)], [("2", "0", 5, 1)], [("2", "0", 40, 1)]]
    assert totals(body) == {"2": 65}
    assert api.get(f"ClaimResponse?outcome=queued&request={claim_id}").json()["entry"][0]["resource"]["id"] \
        == claim_id


def test_a_checked_claim_is_partial_with_its_rejected_lines(api, engine, world):
    stamp = int(time.time() * 1_000_000)
    pk = sql_claim(engine, world, status=4, submit_stamp=stamp, approved=Decimal(55))
    set_lines(engine, pk, s1={"qty_approved": Decimal(1), "price_approved": Decimal(15)},
              s2={"status": 2, "rejection_reason": 2, "qty_approved": Decimal(0)})
    body = read_response(api, publish(engine, pk))
    assert body["outcome"] == "partial"
    assert body["created"] == TODAY.isoformat()
    assert [adjudications(i) for i in body["item"]] == [
        [("2", "0", 10, 2), ("4", "0", 15, 1)], [("1", "2", 5, 1)], [("2", "0", 40, 1), ("4", "0", 40, 1)]]
    assert body["item"][1]["adjudication"][0]["reason"]["coding"][0]["display"] == "NOT IN PRICE LIST"
    assert totals(body) == {"2": 65, "4": 55}


def test_a_processed_claim_is_partial_with_its_adjustment(api, engine, world):
    pk = sql_claim(engine, world, status=8, adjustment="Price list applied")
    set_lines(engine, pk, s1={"price_adjusted": Decimal(8)}, s2={"price_adjusted": Decimal(5)},
              s3={"price_adjusted": Decimal(35)})
    body = read_response(api, publish(engine, pk))
    assert body["outcome"] == "partial"
    assert body["processNote"] == [{"text": "Price list applied"}]
    assert [adjudications(i)[-1] for i in body["item"]] == [("8", "0", 8, 2), ("8", "0", 5, 1), ("8", "0", 35, 1)]
    assert totals(body) == {"2": 65, "4": 65, "8": 56}


def test_a_valuated_claim_is_complete(api, engine, world):
    pk = sql_claim(engine, world, status=16)
    set_lines(engine, pk, s1={"price_adjusted": Decimal(10), "price_valuated": Decimal(16)},
              s2={"price_adjusted": Decimal(5), "price_valuated": Decimal(5)},
              s3={"price_adjusted": Decimal(40), "price_valuated": Decimal("30.5")})
    body = read_response(api, publish(engine, pk))
    assert body["outcome"] == "complete"
    assert [adjudications(i)[-1] for i in body["item"]] == [("16", "0", 16, 2), ("16", "0", 5, 1),
                                                            ("16", "0", 30.5, 1)]
    assert totals(body) == {"2": 65, "4": 65, "8": 65, "16": 51.5}


def test_a_rejected_claim_is_complete(api, engine, world):
    pk = sql_claim(engine, world, status=1, rejection_reason=21)
    with transaction(engine, write=True) as conn:
        for table in (claim_item, claim_service):
            conn.execute(update(table).where(table.c.claim_pk == pk).values(status=2, rejection_reason=7))
    body = read_response(api, publish(engine, pk))
    assert body["outcome"] == "complete"
    assert [adjudications(i) for i in body["item"]] == [[("1", "7", 10, 2)], [("1", "7", 5, 1)], [("1", "7", 40, 1)]]
    assert totals(body) == {"2": 65, "1": 65}


def test_a_claim_loaded_in_sql_renders_from_its_rows(api, engine, world):
    pk = sql_claim(engine, world, explanation="loaded", icd_code_1="B01")
    claim_id = publish(engine, pk)
    body = assert_valid(api.get(f"Claim/{claim_id}").json())
    assert body["insurance"] == [{"sequence": 1, "focal": True,
                                  "coverage": {"reference": f"Coverage/{world.coverage}"}}]
    assert [(i["sequence"], i["productOrService"]["text"]) for i in body["item"]] == [(1, "0001"), (2, "0002"),
                                                                                      (3, "A1")]
    assert [d["diagnosisCodeableConcept"]["coding"][0]["code"] for d in body["diagnosis"]] == ["A00", "B01"]
    assert body["supportingInfo"][0]["valueString"] == "loaded"
    assert body["total"] == {"value": 65, "currency": "EUR"}
    # a re-render repeats the stored version (the Claim is immutable)
    with transaction(engine, write=True) as conn:
        again = KINDS["claim"].render(conn, [pk])[pk]
    assert again == {k: v for k, v in body.items() if k not in ("resourceType", "id", "meta")}


# --- generic interactions on the claim kinds -----------------------------------------------------------------------


def test_claim_response_includes_its_claim_and_chains_to_the_patient(api, world):
    claim_id = answered(api.post("Claim", claim_of(world)))["id"]
    bundle = api.get(f"ClaimResponse?request={claim_id}&_include=ClaimResponse:request").json()
    assert sorted((e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]) == [
        ("Claim", claim_id), ("ClaimResponse", claim_id)]
    bundle = api.get(f"Claim?_id={claim_id}&_revinclude=ClaimResponse:request").json()
    assert sorted(e["resource"]["resourceType"] for e in bundle["entry"]) == ["Claim", "ClaimResponse"]
    bundle = api.get("ClaimResponse?patient.identifier=100000001").json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [claim_id]


def test_a_batch_of_claims_answers_each_with_its_claim_response_or_its_error(api, engine, world):
    good, bad = claim_of(world, "B1"), claim_of(world, "B2", patient="Patient/999999999")
    resp = api.post("", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": good, "request": {"method": "POST", "url": "Claim"}},
        {"resource": bad, "request": {"method": "POST", "url": "Claim"}}]})
    assert resp.status_code == 200, resp.text
    first, second = resp.json()["entry"]
    assert first["response"]["status"].startswith("200"), first
    assert assert_valid(first["resource"])["resourceType"] == "ClaimResponse"
    assert first["response"]["location"].startswith("ClaimResponse/")
    assert second["response"]["status"].startswith("422"), second
    assert counts(engine)["claim"] == 1
