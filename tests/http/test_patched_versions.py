"""Versions written by patching the previous stored body (hifhir.fhir.patching): a payment that activates a policy
re-versions its members' Patients (active), their Group (active), the Invoice (status, amount paid), the Coverage
(status, effective date) and the Contract (the contribution, status, effective date) from their stored bodies
instead of rendering them; a resource whose previous version is
not stored, or that the write changed otherwise too, is rendered; and under HIFHIR_VERIFY_PATCHES (on for the whole
suite) a patch that disagrees with the render fails the write."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update

from hifhir.fhir import patching
from hifhir.fhir.kind import WriteContext
from hifhir.fhir.registry import KINDS
from hifhir.store.db import transaction
from hifhir.store.tables import insuree, policy, premium, resource_version
from tests.builders_enrolment import TODAY, days_ago, make_scheme
from tests.conftest import Api
from tests.http.test_payments import counts, get, idle_contract, invoice_of, notice, rendered, strip
from tests.responses import created

PATCHED_KINDS = ("patient", "group", "invoice", "coverage", "contract")


@pytest.fixture
def scheme(api: Api) -> Any:
    return make_scheme(api)


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[int]]]:
    """kind name → the pks its render_plan was asked for, while the fixture lives."""
    asked: dict[str, list[int]] = {name: [] for name in PATCHED_KINDS}
    for name in PATCHED_KINDS:
        kind_class = type(KINDS[name])
        original = kind_class.render_plan

        def spy(self: Any, conn: Any, pks: list[int], _original: Any = original) -> Any:
            asked[self.name].extend(pks)
            return _original(self, conn, pks)

        monkeypatch.setattr(kind_class, "render_plan", spy)
    yield asked


def members_and_group(api: Api, s: Any) -> dict[str, dict[str, Any]]:
    bodies = {f"Patient/{pid}": get(api, f"Patient/{pid}") for pid in s.all_members()}
    bodies[f"Group/{s.family}"] = get(api, f"Group/{s.family}")
    return bodies


def test_a_payment_that_activates_a_policy_patches_its_members_group_invoice_coverage_and_contract(
        api, engine, scheme, renders, monkeypatch):
    monkeypatch.setenv("HIFHIR_VERIFY_PATCHES", "0")  # nothing but the patches: the check would render them
    s = scheme
    c = idle_contract(api, s)
    inv_id = invoice_of(api, engine, c["id"])
    before = members_and_group(api, s)
    invoice_before = get(api, f"Invoice/{inv_id}")
    coverage_before = get(api, f"Coverage/{c['id']}")
    contract_before = get(api, f"Contract/{c['id']}")
    assert all(b["active"] is False for b in before.values())
    assert coverage_before["status"] == "draft" and "valueDate" not in coverage_before["extension"][1]
    for asked in renders.values():
        asked.clear()

    created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 10000, "TX-PATCH-1", pay_date=days_ago(1))))

    assert renders == {"patient": [], "group": [], "invoice": [], "coverage": [], "contract": []}
    after = members_and_group(api, s)
    for path, body in after.items():
        assert body["active"] is True, path
        assert int(body["meta"]["versionId"]) == int(before[path]["meta"]["versionId"]) + 1, path
        assert {k: v for k, v in strip(body).items() if k != "active"} == \
            {k: v for k, v in strip(before[path]).items() if k != "active"}, path
        kind = "patient" if path.startswith("Patient/") else "group"
        assert strip(body) == rendered(engine, kind, body), path  # what a render gives now
    invoice_after = get(api, f"Invoice/{inv_id}")
    assert invoice_after["status"] == "balanced"
    assert int(invoice_after["meta"]["versionId"]) == int(invoice_before["meta"]["versionId"]) + 1
    assert strip(invoice_after) == rendered(engine, "invoice", invoice_after)
    coverage_after = get(api, f"Coverage/{c['id']}")
    assert coverage_after["status"] == "active"
    assert coverage_after["extension"][1] == {"id": "effectiveDate", "url": coverage_before["extension"][1]["url"],
                                              "valueDate": days_ago(1)}
    assert coverage_after["extension"][2]["valueCodeableConcept"]["coding"][0]["code"] == "active"
    assert int(coverage_after["meta"]["versionId"]) == int(coverage_before["meta"]["versionId"]) + 1
    assert strip(coverage_after) == rendered(engine, "coverage", coverage_after)
    contract_after = get(api, f"Contract/{c['id']}")
    assert (contract_before["status"], contract_after["status"]) == ("offered", "executed")
    premiums_before = contract_before["term"][0]["asset"][0].get("extension", [])
    premiums_after = contract_after["term"][0]["asset"][0]["extension"]
    assert premiums_after[:-1] == premiums_before
    assert {e["url"]: e for e in premiums_after[-1]["extension"]}["receipt"]["valueString"] == "TX-PATCH-1"
    assert int(contract_after["meta"]["versionId"]) == int(contract_before["meta"]["versionId"]) + 1
    assert strip(contract_after) == rendered(engine, "contract", contract_after)


def test_a_contract_whose_new_contribution_does_not_come_last_is_rendered(api, engine, scheme, renders,
                                                                          monkeypatch):
    """On PostgreSQL a contribution committed by another payment meanwhile may have taken a later pk than this one's;
    the render lists contributions by pk, so the Contract is rendered, not patched. (SQLite gives a new row the
    largest pk: there the contribution a payment adds always comes last.)"""
    if engine.dialect.name != "postgresql":
        pytest.skip("a sequence's pks are PostgreSQL's")
    monkeypatch.setenv("HIFHIR_VERIFY_PATCHES", "0")
    c = idle_contract(api, scheme)
    inv_id = invoice_of(api, engine, c["id"])
    with transaction(engine, write=True) as conn:  # a photo fee with a pk far ahead, as if committed meanwhile
        pol = conn.execute(select(policy.c.pk, policy.c.product_pk).where(policy.c.id == c["id"])).one()
        conn.execute(insert(premium).values(pk=10**6, policy_pk=pol.pk, product_pk=pol.product_pk, amount=1,
                                            receipt="PHOTO-LATER", pay_date=TODAY, pay_type="C", is_photo_fee=True))
    for asked in renders.values():
        asked.clear()

    created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 10000, "TX-EARLIER", pay_date=days_ago(1))))

    assert renders["contract"] == [pol.pk]
    contract = get(api, f"Contract/{c['id']}")
    receipts = [{e["url"]: e for e in p["extension"]}["receipt"]["valueString"]
                for p in contract["term"][0]["asset"][0]["extension"]]
    assert receipts[-2:] == ["TX-EARLIER", "PHOTO-LATER"]
    assert strip(contract) == rendered(engine, "contract", contract)


def test_a_resource_whose_previous_version_is_not_stored_is_rendered(api, engine, scheme, renders, monkeypatch):
    monkeypatch.setenv("HIFHIR_VERIFY_PATCHES", "0")
    s = scheme
    c = idle_contract(api, s)
    inv_id = invoice_of(api, engine, c["id"])
    head = get(api, f"Patient/{s.head}")
    with transaction(engine, write=True) as conn:  # e.g. a row written by SQL, as a migration or a loader may
        conn.execute(delete(resource_version).where(
            resource_version.c.res_type == "Patient", resource_version.c.res_id == s.head,
            resource_version.c.version == int(head["meta"]["versionId"])))
        head_pk = conn.execute(select(KINDS["patient"].table.c.pk)
                               .where(KINDS["patient"].table.c.id == s.head)).scalar_one()
    for asked in renders.values():
        asked.clear()

    created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 10000, "TX-PATCH-2")))

    assert renders["patient"] == [head_pk]  # the head alone: the other members were patched
    after = get(api, f"Patient/{s.head}")
    assert after["active"] is True and int(after["meta"]["versionId"]) == int(head["meta"]["versionId"]) + 1
    assert strip(after) == rendered(engine, "patient", after)


def test_under_verification_a_patch_that_disagrees_with_the_render_fails_the_write(api, engine, scheme,
                                                                                    monkeypatch):
    assert KINDS["patient"].patch_body({}, {"has_active_policy": True})  # the real patch applies

    def wrong(self: Any, body: dict[str, Any], change: Any) -> bool:
        body["active"] = not change["has_active_policy"]
        return True

    monkeypatch.setenv("HIFHIR_VERIFY_PATCHES", "1")
    monkeypatch.setattr(type(KINDS["patient"]), "patch_body", wrong)
    s = scheme
    c = idle_contract(api, s)
    inv_id = invoice_of(api, engine, c["id"])
    state = counts(engine)

    resp = api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 10000, "TX-PATCH-3"))

    assert resp.status_code == 500, resp.text
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert counts(engine) == state  # rolled back: no payment, no contribution, no version
    assert get(api, f"Patient/{s.head}")["active"] is False


def _head_pk(engine: Any, head_id: str) -> int:
    with transaction(engine, write=False) as conn:
        return int(conn.execute(select(insuree.c.pk).where(insuree.c.id == head_id)).scalar_one())


def flag_and(engine: Any, insuree_pk: int, other_change: Callable[[WriteContext], None]) -> None:
    """One write: the insuree's has_active_policy set (a patch alone), then `other_change`."""
    with transaction(engine, write=True) as conn:
        ctx = WriteContext(conn, "test")
        ctx.versioned_update("patient", [insuree_pk], {"has_active_policy": True})
        other_change(ctx)
        ctx.flush()


def test_a_write_that_also_updates_another_column_of_the_row_renders_the_resource(api, engine, scheme, renders,
                                                                                   monkeypatch):
    monkeypatch.setenv("HIFHIR_VERIFY_PATCHES", "0")
    head_pk = _head_pk(engine, scheme.head)
    for asked in renders.values():
        asked.clear()

    flag_and(engine, head_pk, lambda ctx: ctx.update(insuree, head_pk, {"phone": "+255700000042"}))

    assert renders["patient"] == [head_pk]
    after = get(api, f"Patient/{scheme.head}")
    assert after["active"] is True
    assert {"system": "phone", "value": "+255700000042"} in after["telecom"]


def test_a_resource_marked_changed_besides_its_patch_is_rendered(api, engine, scheme, renders, monkeypatch):
    monkeypatch.setenv("HIFHIR_VERIFY_PATCHES", "0")
    head_pk = _head_pk(engine, scheme.head)
    for asked in renders.values():
        asked.clear()

    def mark_after_an_update(ctx: WriteContext) -> None:
        ctx.conn.execute(update(insuree).where(insuree.c.pk == head_pk).values(email="doe@example.org"))
        ctx.mark("patient", head_pk)

    flag_and(engine, head_pk, mark_after_an_update)

    assert renders["patient"] == [head_pk]
    after = get(api, f"Patient/{scheme.head}")
    assert after["active"] is True
    assert {"system": "email", "value": "doe@example.org"} in after["telecom"]


def store_filler_patient_versions(conn: Any, n: int) -> None:
    """`n` stored Patient versions of no entity, and the statistics that count them (a plan test's large history)."""
    from sqlalchemy import func, literal, text

    conn.execute(resource_version.insert().from_select(
        ["res_type", "res_id", "kind", "version", "last_updated", "operation", "body"],
        select(literal("Patient"), func.concat("filler-", func.generate_series(1, n)), literal("patient"),
               literal(1), literal(0), literal("create"), literal(b"{}"))))
    conn.execute(text("ANALYZE resource_version"))


def test_on_postgresql_the_stored_bodies_are_read_through_the_version_key(engine):
    """Entity ids are collated "C", resource_version.res_id is not: compared as they are, PostgreSQL cannot probe
    resource_version's key index and reads every stored version instead (with 100,000 insurees a payment then took
    seconds)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL plan")
    with transaction(engine, write=True) as conn:
        store_filler_patient_versions(conn, 20000)
        statement = patching._stored(KINDS["patient"])._statement
        compiled = statement.compile(dialect=engine.dialect)
        plan = "\n".join(conn.exec_driver_sql(
            "EXPLAIN " + compiled.string, {**compiled.params, "pks": [1, 2]}).scalars())
        conn.rollback()

    assert "uq_resource_version_key" in plan, plan
    assert "Seq Scan on resource_version" not in plan, plan


def test_on_sqlite_a_payment_reads_the_bodies_it_patches_before_its_write_transaction(api, engine, scheme,
                                                                                      monkeypatch):
    """SQLite: read ahead, outside the writer lock (`WriteContext.prefetched`); the flush reads none of them."""
    if engine.dialect.name != "sqlite":
        pytest.skip("reads ahead of the write transaction are SQLite's (its writer lock)")
    c = idle_contract(api, scheme)
    inv_id = invoice_of(api, engine, c["id"])
    read_in_flush: list[str] = []
    original = patching.stored_plan

    def spy(kind: Any, pks: list[int]) -> Any:
        read_in_flush.append(kind.name)
        return original(kind, pks)

    monkeypatch.setattr(patching, "stored_plan", spy)
    created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 10000, "TX-AHEAD-1", pay_date=days_ago(1))))

    assert read_in_flush == []
    contract = get(api, f"Contract/{c['id']}")
    assert contract["status"] == "executed"  # patched, and checked against its render (HIFHIR_VERIFY_PATCHES)
    assert all(get(api, f"Patient/{pid}")["active"] is True for pid in scheme.all_members())


def test_a_body_read_ahead_whose_resource_moved_on_meanwhile_is_not_patched(api, engine, scheme, renders,
                                                                             monkeypatch):
    """A version read ahead that is not the one before the new version (another write came in between) is not
    patched: the resource is rendered."""
    if engine.dialect.name != "sqlite":
        pytest.skip("reads ahead of the write transaction are SQLite's (its writer lock)")
    monkeypatch.setenv("HIFHIR_VERIFY_PATCHES", "0")
    c = idle_contract(api, scheme)
    inv_id = invoice_of(api, engine, c["id"])
    group_before = get(api, f"Group/{scheme.family}")
    original = patching.current_bodies

    def older(conn: Any, wanted: Any) -> Any:  # the Group as it was a version earlier, with a tell-tale element
        found = original(conn, wanted)
        for key, (version, _) in found.items():
            if key[0] == "group":
                found[key] = (version - 1, b'{"resourceType": "Group", "name": "STALE"}')
        return found

    monkeypatch.setattr(patching, "current_bodies", older)
    for asked in renders.values():
        asked.clear()
    created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 10000, "TX-AHEAD-2", pay_date=days_ago(1))))

    assert renders["group"] and renders["patient"] == []
    group = get(api, f"Group/{scheme.family}")
    assert group["active"] is True and group.get("name") == group_before.get("name") != "STALE"
    assert strip(group) == rendered(engine, "group", group)
