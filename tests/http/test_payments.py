"""Payments (IG row 24 PaymentNotice; base R4 PaymentReconciliation; domain §2.23, §3.6): a payment of an invoice
or a bill, what it changes (paid amount, balanced invoice, the policy's contribution and activation), the
refused ones (over-payment, cancelled invoice, duplicate reference, bad input: each writes nothing), cancellation
and refund, the reconciliation that clears payments, search and rights.

Contribution invoices are the ones POST Contract makes; bills are inserted as a business event would."""

from __future__ import annotations

import copy
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, update

from hifhir.api import rest
from hifhir.fhir.errors import FhirError
from hifhir.fhir.kind import WriteContext
from hifhir.fhir.validate import validate_resource
from hifhir.store.db import transaction
from hifhir.store.tables import (
    bill,
    bill_line,
    health_facility,
    invoice,
    payment_notice,
    payment_reconciliation,
    policy,
    premium,
    resource_version,
)
from tests.builders import health_facility as hf_resource
from tests.builders_enrolment import days_ago, family_contract, make_scheme
from tests.builders_enrolment import premium as premium_ext
from tests.conftest import CLERK, NOBODY, Api
from tests.http.test_terminology import user_with_rights
from tests.responses import created, refused

IG = "https://openimis.github.io/openimis_fhir_r4_ig/"
NOTICE_PROFILE = f"{IG}StructureDefinition/openimis-payment-notice"
RECONCILIATION_PROFILE = "http://hl7.org/fhir/StructureDefinition/PaymentReconciliation"
HIFHIR_EXT = "https://hifhir.org/fhir/StructureDefinition/"
INSURER = "Organization/openIMIS-Implementation"
PAYMENT_STATUS = "http://terminology.hl7.org/CodeSystem/paymentstatus"
PAYMENT_TYPE = "http://terminology.hl7.org/CodeSystem/payment-type"
UUID_TYPE = {"coding": [{"system": f"{IG}CodeSystem/openimis-identifiers", "code": "UUID"}]}
EXTERNAL = "https://payments.example.org/fhir/PaymentReconciliation/settlement-7"
TODAY = date.today().isoformat()


# --- builders and helpers ----------------------------------------------------------------------------------------


def notice(request: str | dict[str, Any], amount: Any, reference: str | None = None, *, status: str = "active",
           payment: str = EXTERNAL, pay_date: str = TODAY, payment_status: str = "paid",
           recipient: str = INSURER) -> dict[str, Any]:
    """A PaymentNotice as the payments platform sends it (IG openimis-payment-notice)."""
    res: dict[str, Any] = {"resourceType": "PaymentNotice", "meta": {"profile": [NOTICE_PROFILE]}}
    if reference is not None:
        res["identifier"] = [{"type": UUID_TYPE, "value": reference}]
    res.update({
        "status": status,
        "request": request if isinstance(request, dict) else {"reference": request},
        "created": f"{TODAY}T10:00:00Z",
        "payment": {"reference": payment},
        "paymentDate": pay_date,
        "recipient": {"reference": recipient},
        "amount": {"value": amount, "currency": "EUR"},
        "paymentStatus": {"coding": [{"system": PAYMENT_STATUS, "code": payment_status}]},
    })
    return res


def detail(*, identifier: str | None = None, request: str | None = None, amount: Any = None) -> dict[str, Any]:
    d: dict[str, Any] = {"type": {"coding": [{"system": PAYMENT_TYPE, "code": "payment"}]}}
    if identifier is not None:
        d["identifier"] = {"value": identifier}
    if request is not None:
        d["request"] = {"reference": request}
    if amount is not None:
        d["amount"] = {"value": amount, "currency": "EUR"}
    return d


def reconciliation(amount: Any, details: list[dict[str, Any]], *, status: str = "active",
                   platform_ref: str | None = "SETTLE-2026-001", outcome: str | None = "complete") -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "PaymentReconciliation", "status": status,
                           "created": f"{TODAY}T18:00:00+01:00", "paymentIssuer": {"reference": INSURER}}
    if outcome:
        res["outcome"] = outcome
    res.update({"paymentDate": TODAY, "paymentAmount": {"value": amount, "currency": "EUR"}})
    if platform_ref:
        res["paymentIdentifier"] = {"value": platform_ref}
    if details:
        res["detail"] = details
    return res


def ok(resp: Any, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    return resp.json()


def get(api: Api, path: str) -> dict[str, Any]:
    return ok(api.get(path))


def put(api: Api, resource: dict[str, Any], status: int = 200) -> Any:
    return api.put(f"{resource['resourceType']}/{resource['id']}", resource)


def search(api: Api, query: str) -> set[str]:
    bundle = get(api, query)
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


def valid(resource: dict[str, Any]) -> dict[str, Any]:
    profile = resource["meta"]["profile"][0]
    _, issues = validate_resource(copy.deepcopy(resource), None if profile == RECONCILIATION_PROFILE else profile)
    errors = [i.to_fhir() for i in issues if i.severity in ("error", "fatal")]
    assert not errors, errors
    return resource


def ext(resource: dict[str, Any], name: str) -> Any:
    found = next((e for e in resource.get("extension", []) if e["url"] == HIFHIR_EXT + name), None)
    return None if found is None else found.get("valueCode", found.get("valueMoney"))


def strip(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")}


def rendered(engine: Engine, kind_name: str, resource: dict[str, Any]) -> dict[str, Any]:
    from hifhir.fhir.registry import KINDS

    kind = KINDS[kind_name]
    with transaction(engine, write=False) as conn:
        pk = conn.execute(select(kind.table.c.pk).where(kind.table.c.id == resource["id"])).scalar_one()
        return kind.render(conn, [pk])[pk]


def invoice_of(api: Api, engine: Engine, contract_id: str) -> str:
    """The contribution invoice the Contract write made for its policy."""
    with transaction(engine, write=False) as conn:
        pk = conn.execute(select(policy.c.pk).where(policy.c.id == contract_id)).scalar_one()
        return str(conn.execute(select(invoice.c.id).where(invoice.c.policy_pk == pk,
                                                           invoice.c.deleted.is_(False))).scalar_one())


def make_bill(api: Api, engine: Engine, s: Any, amount: int = 5000, code: str = "BL-HF1-2026-01") -> str:
    """A claim-batch bill to a health facility, inserted as a batch run would (status validated)."""
    hf = api.post("Organization", hf_resource("HF000001", s.places["D1"]))
    hf_id = hf.json()["id"] if hf.status_code == 201 else get(api, "Organization?code=HF000001")["entry"][0][
        "resource"]["id"]
    with transaction(engine, write=True) as conn:
        hf_pk = conn.execute(select(health_facility.c.pk).where(health_facility.c.id == hf_id)).scalar_one()
        bill_id = f"b{code.lower()}"
        pk = conn.execute(insert(bill).values(
            id=bill_id, uuid=None, code=code, type_code="claim-batch", status=1, payee_type="health-facility",
            payee_pk=hf_pk, date_issued=date.today(), currency="EUR", amount_net=amount,
            amount_total=amount)).inserted_primary_key[0]
        conn.execute(insert(bill_line).values(bill_pk=pk, sequence=1, line_type="claim", code="CL1", quantity=1,
                                              unit_price=amount, amount_net=amount, amount_total=amount))
        ctx = WriteContext(conn, "test")
        ctx.mark("bill", pk)
        ctx.flush()
    return bill_id


def set_invoice_status(engine: Engine, invoice_id: str, status: int) -> None:
    with transaction(engine, write=True) as conn:
        conn.execute(update(invoice).where(invoice.c.id == invoice_id).values(status=status))


def invoice_row(engine: Engine, invoice_id: str) -> Any:
    with transaction(engine, write=False) as conn:
        return conn.execute(select(invoice).where(invoice.c.id == invoice_id)).one()


def counts(engine: Engine) -> tuple[int, ...]:
    with transaction(engine, write=False) as conn:
        sizes = tuple(conn.execute(select(func.count()).select_from(t)).scalar_one()
                      for t in (payment_notice, payment_reconciliation, premium, resource_version))
        paid = tuple(conn.execute(select(invoice.c.amount_paid, invoice.c.status, invoice.c.version_id)
                                  .order_by(invoice.c.pk)).all())
        policies = tuple(conn.execute(select(policy.c.status, policy.c.version_id).order_by(policy.c.pk)).all())
    return (*sizes, paid, policies)  # type: ignore[return-value]


def premiums_of(engine: Engine, contract_id: str) -> list[tuple[str, Any, str]]:
    with transaction(engine, write=False) as conn:
        return [(r.receipt, r.amount, r.pay_type) for r in conn.execute(
            select(premium).join(policy, policy.c.pk == premium.c.policy_pk)
            .where(policy.c.id == contract_id, premium.c.deleted.is_(False)).order_by(premium.c.pk))]


@pytest.fixture
def scheme(api: Api) -> Any:
    return make_scheme(api)


def idle_contract(api: Api, s: Any, product: str = "BC01") -> dict[str, Any]:
    """An unpaid policy: BC01 (lump sum 10000, one installment) or FC01 (4 members → 18000, three
    installments)."""
    c = created(api.post("Contract", family_contract(s, product, issued=days_ago(10))))
    assert c["status"] == "offered"
    return c


# --- payment of a contribution invoice ---------------------------------------------------------------------------


def test_full_payment_balances_the_invoice_and_activates_the_policy(api, engine, scheme):
    s = scheme
    c = idle_contract(api, s)
    inv_id = invoice_of(api, engine, c["id"])
    before = get(api, f"Invoice/{inv_id}")
    assert before["status"] == "issued" and before["totalGross"]["value"] == 10000
    cov_version = get(api, f"Coverage/{c['id']}")["meta"]["versionId"]

    pn = created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 10000, "TX-0001", pay_date=days_ago(1))))
    valid(pn)
    assert pn["identifier"] == [{"type": UUID_TYPE, "value": "TX-0001"}]
    assert pn["status"] == "active" and pn["request"] == {"reference": f"Invoice/{inv_id}"}
    assert pn["payment"] == {"reference": EXTERNAL}  # not stored here: kept as the platform's URL
    assert pn["recipient"] == {"reference": INSURER}
    assert pn["amount"] == {"value": 10000, "currency": "EUR"} and pn["paymentDate"] == days_ago(1)
    assert pn["paymentStatus"]["coding"][0]["code"] == "paid"
    assert get(api, f"PaymentNotice/{pn['id']}") == pn
    assert rendered(engine, "payment-notice", pn) == strip(pn)  # the body built in the write is what render gives

    after = valid(get(api, f"Invoice/{inv_id}"))
    assert after["status"] == "balanced" and ext(after, "invoice-status") == "paid"
    assert ext(after, "invoice-amount-paid")["value"] == 10000
    assert int(after["meta"]["versionId"]) == int(before["meta"]["versionId"]) + 1  # notified as changed
    row = invoice_row(engine, inv_id)
    assert row.date_paid == date.today() - timedelta(days=1)

    # the payment is the policy's contribution; the Contract path's activation ran
    assert premiums_of(engine, c["id"]) == [("TX-0001", 10000, "B")]
    contract = get(api, f"Contract/{c['id']}")
    assert contract["status"] == "executed" and contract["meta"]["versionId"] == "2"
    assert contract["term"][0]["asset"][0]["usePeriod"][0]["start"] == days_ago(1)
    coverage = get(api, f"Coverage/{c['id']}")
    assert coverage["status"] == "active" and int(coverage["meta"]["versionId"]) == int(cov_version) + 1
    assert get(api, f"Patient/{s.head}")["active"] is True and get(api, f"Group/{s.family}")["active"] is True


def test_partial_payments_keep_the_invoice_issued_until_complete(api, engine, scheme):
    s = scheme
    c = idle_contract(api, s, "FC01")  # 18000, up to three installments
    inv_id = invoice_of(api, engine, c["id"])
    created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 8000, "TX-P1", pay_date=days_ago(3))))
    part = get(api, f"Invoice/{inv_id}")
    assert part["status"] == "issued" and ext(part, "invoice-status") == "validated"
    assert ext(part, "invoice-amount-paid")["value"] == 8000
    assert invoice_row(engine, inv_id).date_paid is None
    assert get(api, f"Contract/{c['id']}")["status"] == "offered"  # 8000 of 18000: still idle
    assert premiums_of(engine, c["id"]) == [("TX-P1", 8000, "B")]

    created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 10000.0, "TX-P2", pay_date=days_ago(1))))
    done = get(api, f"Invoice/{inv_id}")
    assert done["status"] == "balanced" and ext(done, "invoice-amount-paid")["value"] == 18000
    assert invoice_row(engine, inv_id).date_paid == date.today() - timedelta(days=1)
    contract = get(api, f"Contract/{c['id']}")
    assert contract["status"] == "executed"
    receipts = [next(x["valueString"] for x in p["extension"] if x["url"] == "receipt")
                for p in contract["term"][0]["asset"][0]["extension"]]
    assert receipts == ["TX-P1", "TX-P2"]


def test_over_payment_is_refused_and_writes_nothing(api, engine, scheme):
    s = scheme
    c = idle_contract(api, s, "FC01")
    inv_id = invoice_of(api, engine, c["id"])
    before = counts(engine)
    refused(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 18000.01, "TX-O1")), 422,
            expression="PaymentNotice.amount", text="Over-payment")
    assert counts(engine) == before

    created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 18000, "TX-O2")))
    before = counts(engine)
    refused(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 1, "TX-O3")), 422, text="nothing is left")
    assert counts(engine) == before


def test_a_notice_read_ahead_sees_the_payment_made_before_it_took_the_writer_lock(api, app, engine, scheme):
    """A create parses the notice and reads its invoice before the write transaction (on SQLite, outside the writer
    lock); the write reads the invoice again: a payment committed in between is counted."""
    c = idle_contract(api, scheme, "FC01")  # 18000
    inv_id = invoice_of(api, engine, c["id"])
    call = rest.Call(engine=app.engine, reader=app.reader, settings=app.settings, base_url="http://testserver/fhir",
                     principal=app.principals.get("Admin"), lenient=False)
    prepared = rest.prepare_write(call, "PaymentNotice", notice(f"Invoice/{inv_id}", 18000, "TX-R1"), None)
    rest.read_ahead(call, prepared)
    created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 18000, "TX-R2")))  # meanwhile, paid in full
    before = counts(engine)

    with pytest.raises(FhirError) as refusal:
        rest._run_one(call, lambda ctx: rest.apply_create(call, ctx, prepared, None))

    assert refusal.value.status == 422 and "nothing is left to pay" in str(refusal.value)
    assert counts(engine) == before


def test_payment_to_a_cancelled_or_suspended_invoice_is_409(api, engine, scheme):
    s = scheme
    c = idle_contract(api, s)
    inv_id = invoice_of(api, engine, c["id"])
    for status, word in ((3, "cancelled"), (5, "suspended"), (0, "draft")):
        set_invoice_status(engine, inv_id, status)
        before = counts(engine)
        refused(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 10000, f"TX-C{status}")), 409,
                expression="PaymentNotice.request", text=word)
        assert counts(engine) == before
    # a deleted invoice is not current: the reference itself fails
    with transaction(engine, write=True) as conn:
        conn.execute(update(invoice).where(invoice.c.id == inv_id).values(status=4, deleted=True))
    refused(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 10000, "TX-C4")), 422,
            expression="PaymentNotice.request")


def test_duplicate_reference_is_409_and_changes_nothing(api, engine, scheme):
    s = scheme
    c = idle_contract(api, s, "FC01")
    inv_id = invoice_of(api, engine, c["id"])
    first = created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 5000, "TX-D1")))
    before = counts(engine)
    refused(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 5000, "TX-D1")), 409,
            expression="PaymentNotice.identifier", text="already recorded")
    assert counts(engine) == before
    # a payment completing the invoice sent twice: still the duplicate's 409, not an over-payment
    created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 13000, "TX-D2")))
    before = counts(engine)
    refused(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 13000, "TX-D2")), 409)
    assert counts(engine) == before
    assert search(api, "PaymentNotice?identifier=TX-D1") == {first["id"]}
    assert search(api, "PaymentNotice?identifier=UUID|TX-D1") == {first["id"]}


def test_reference_already_used_as_a_receipt_of_the_product_is_409(api, engine, scheme):
    s = scheme
    paid_elsewhere = family_contract(s, "BC01", covered=[s.head], issued=days_ago(400))
    paid_elsewhere["term"][0]["asset"][0]["extension"] = [premium_ext(10000, "RC-77", days_ago(399))]
    created(api.post("Contract", paid_elsewhere))  # last year's policy, its contribution receipted RC-77
    c = idle_contract(api, s)
    inv_id = invoice_of(api, engine, c["id"])
    before = counts(engine)
    refused(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 10000, "RC-77")), 409,
            expression="PaymentNotice.identifier", text="Receipt RC-77")
    assert counts(engine) == before


def test_deleting_an_idle_policy_cancels_its_invoice_which_then_takes_no_payment(api, engine, scheme):
    s = scheme
    c = idle_contract(api, s)
    inv_id = invoice_of(api, engine, c["id"])
    assert api.delete(f"Contract/{c['id']}").status_code == 204  # an idle policy may be deleted
    inv = ok(api.get(f"Invoice/{inv_id}"))
    assert (inv["status"], inv["meta"]["versionId"]) == ("cancelled", "2")
    before = counts(engine)
    refused(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 10000, "TX-G1")), 409,
            expression="PaymentNotice.request", text="is cancelled: it accepts no payment")
    assert counts(engine) == before


def test_notice_without_reference_shows_its_id_and_keeps_none(api, engine, scheme):
    s = scheme
    c = idle_contract(api, s, "FC01")
    inv_id = invoice_of(api, engine, c["id"])
    pn = created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 1000)))
    assert pn["identifier"] == [{"type": UUID_TYPE, "value": pn["id"]}]
    assert premiums_of(engine, c["id"]) == [(pn["id"], 1000, "B")]  # the notice id is the receipt
    pn["paymentStatus"]["coding"][0]["code"] = "cleared"  # cleared by hand (an external reconciliation)
    again = ok(put(api, pn))
    assert again["identifier"] == pn["identifier"] and again["meta"]["versionId"] == "2"
    with transaction(engine, write=False) as conn:
        assert conn.execute(select(payment_notice.c.reference)).scalar_one() is None
    assert rendered(engine, "payment-notice", again) == strip(again)


def test_uuid_reference_becomes_the_id_and_logical_request_by_code(api, engine, scheme):
    s = scheme
    c = idle_contract(api, s)
    inv_id = invoice_of(api, engine, c["id"])
    code = invoice_row(engine, inv_id).code
    ref = "0f7a8a34-2d0e-4e34-a1a4-2f0c4a6f3b11"
    by_code = {"type": "Invoice", "identifier": {"type": {"coding": [{"code": "Code"}]}, "value": code}}
    pn = created(api.post("PaymentNotice", notice(by_code, 10000, ref)))
    assert pn["id"] == ref and pn["request"] == {"reference": f"Invoice/{inv_id}"}
    assert get(api, f"Invoice/{inv_id}")["status"] == "balanced"


def test_bill_payment(api, engine, scheme):
    s = scheme
    bill_id = make_bill(api, engine, s)
    before = counts(engine)
    pn = created(api.post("PaymentNotice", notice({"reference": f"Invoice/{bill_id}", "type": "bill"}, 5000,
                                                  "HF-PAY-1")))
    assert pn["request"] == {"reference": f"Invoice/{bill_id}"}
    paid = valid(get(api, f"Invoice/{bill_id}"))
    assert paid["status"] == "balanced" and paid["meta"]["versionId"] == "2"
    with transaction(engine, write=False) as conn:
        row = conn.execute(select(bill).where(bill.c.id == bill_id)).one()
    assert (row.status, row.amount_paid, row.date_paid) == (2, 5000, date.today())
    assert counts(engine)[2] == before[2]  # a bill has no policy: no contribution
    assert search(api, f"PaymentNotice?request=Invoice/{bill_id}") == {pn["id"]}
    # `type: invoice` narrows the lookup to invoices: the bill is not found
    refused(api.post("PaymentNotice", notice({"reference": f"Invoice/{bill_id}", "type": "invoice"}, 1, "HF-2")),
            422)


def test_cancelled_notice_suspends_and_refund_and_correction(api, engine, scheme):
    s = scheme
    c = idle_contract(api, s, "FC01")
    inv_id = invoice_of(api, engine, c["id"])
    # an accepted installment, then entered-in-error: the amount leaves, the contribution goes
    pn = created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 8000, "TX-E1")))
    pn["status"] = "entered-in-error"
    corrected = ok(put(api, pn))
    assert corrected["status"] == "entered-in-error" and corrected["meta"]["versionId"] == "2"
    row = invoice_row(engine, inv_id)
    assert (row.amount_paid, row.status) == (0, 1)
    assert premiums_of(engine, c["id"]) == []
    corrected["status"] = "active"
    refused(put(api, corrected), 409, text="final")

    # full payment then refund (active → cancelled): suspended, owed again; the policy stays active
    pn = created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 18000, "TX-R1")))
    assert get(api, f"Contract/{c['id']}")["status"] == "executed"
    pn["status"] = "cancelled"
    ok(put(api, pn))
    refunded = get(api, f"Invoice/{inv_id}")
    assert refunded["status"] == "issued" and ext(refunded, "invoice-status") == "suspended"
    row = invoice_row(engine, inv_id)
    assert (row.amount_paid, row.date_paid) == (0, None)
    with transaction(engine, write=False) as conn:
        assert conn.execute(select(payment_notice.c.detail_status).where(
            payment_notice.c.reference == "TX-R1")).scalar_one() == 2  # refunded
    assert premiums_of(engine, c["id"]) == []
    assert get(api, f"Contract/{c['id']}")["status"] == "executed"
    refused(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 18000, "TX-R2")), 409, text="suspended")


def test_a_new_cancelled_notice_suspends_its_invoice_and_a_draft_changes_nothing(api, engine, scheme):
    s = scheme
    c = idle_contract(api, s)
    inv_id = invoice_of(api, engine, c["id"])
    draft = created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 10000, "TX-DR", status="draft")))
    assert invoice_row(engine, inv_id).amount_paid == 0
    draft["status"] = "active"  # the draft confirmed: now it pays
    assert ok(put(api, draft))["status"] == "active"
    assert get(api, f"Invoice/{inv_id}")["status"] == "balanced"

    c2 = created(api.post("Contract", family_contract(s, "FC01", issued=days_ago(2), covered=[s.head])))
    inv2 = invoice_of(api, engine, c2["id"])
    created(api.post("PaymentNotice", notice(f"Invoice/{inv2}", 100, "TX-CX", status="cancelled")))
    row = invoice_row(engine, inv2)
    assert (row.status, row.amount_paid) == (5, 0)
    # nothing else of a payment may change
    pn = get(api, "PaymentNotice?identifier=TX-DR")["entry"][0]["resource"]
    pn["amount"]["value"] = 9999
    refused(put(api, pn), 409, text="cannot change")
    refused(api.delete(f"PaymentNotice/{pn['id']}"), 405)


# --- reconciliation --------------------------------------------------------------------------------------------


def paid_installments(api: Api, engine: Engine, s: Any) -> tuple[str, str, list[dict[str, Any]]]:
    c = idle_contract(api, s, "FC01")
    inv_id = invoice_of(api, engine, c["id"])
    notices = [created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", amount, ref)))
               for amount, ref in ((5000, "TX-A"), (6000, "TX-B"), (7000, "TX-C"))]
    return c["id"], inv_id, notices


def test_reconciliation_clears_the_payments_it_lists(api, engine, scheme):
    s = scheme
    _, inv_id, (a, b, c) = paid_installments(api, engine, s)
    bill_id = make_bill(api, engine, s, amount=2500)
    d = created(api.post("PaymentNotice", notice(f"Invoice/{bill_id}", 2500, "HF-TX")))
    body = reconciliation(11000 + 2500, [detail(identifier="TX-A", amount=5000),
                                         detail(request=f"PaymentNotice/{b['id']}"),
                                         detail(request=f"Invoice/{bill_id}")])
    rec = created(api.post("PaymentReconciliation", body))
    valid(rec)
    assert rec["meta"]["profile"] == [RECONCILIATION_PROFILE]
    assert rec["identifier"][0]["value"] == rec["id"]
    assert rec["paymentIssuer"] == {"reference": INSURER} and rec["outcome"] == "complete"
    assert rec["paymentIdentifier"] == {"value": "SETTLE-2026-001"}
    assert rec["paymentAmount"] == {"value": 13500, "currency": "EUR"}
    shown = {x["identifier"]["value"]: x for x in rec["detail"]}
    assert set(shown) == {"TX-A", "TX-B", "HF-TX"}
    assert shown["TX-A"]["request"] == {"reference": f"Invoice/{inv_id}"}
    assert shown["HF-TX"]["request"] == {"reference": f"Invoice/{bill_id}"}
    assert shown["TX-B"]["amount"]["value"] == 6000 and shown["TX-B"]["date"] == TODAY
    assert rendered(engine, "payment-reconciliation", rec) == strip(rec)

    for pn in (a, b, d):
        cleared = get(api, f"PaymentNotice/{pn['id']}")
        assert cleared["paymentStatus"]["coding"][0]["code"] == "cleared"
        assert cleared["payment"] == {"reference": f"PaymentReconciliation/{rec['id']}"}
        assert cleared["meta"]["versionId"] == "2"
    assert get(api, f"PaymentNotice/{c['id']}")["paymentStatus"]["coding"][0]["code"] == "paid"
    assert search(api, "PaymentNotice?payment-status=cleared") == {a["id"], b["id"], d["id"]}
    assert search(api, f"PaymentNotice?payment=PaymentReconciliation/{rec['id']}") == {a["id"], b["id"], d["id"]}
    assert search(api, f"PaymentNotice?request=Invoice/{inv_id}&payment-status=paid") == {c["id"]}

    # search the reports
    assert search(api, "PaymentReconciliation?identifier=SETTLE-2026-001") == {rec["id"]}
    assert search(api, f"PaymentReconciliation?request=Invoice/{bill_id}") == {rec["id"]}
    assert search(api, f"PaymentReconciliation?status=active&outcome=complete&created={TODAY}") == {rec["id"]}
    assert search(api, "PaymentReconciliation?created=lt2000-01-01") == set()
    assert search(api, f"PaymentReconciliation?payment-issuer={INSURER}") == {rec["id"]}
    assert search(api, "PaymentReconciliation?payment-issuer=Organization/other") == set()
    assert search(api, f"PaymentReconciliation?_id={rec['id']}&_lastUpdated=ge2020-01-01") == {rec["id"]}
    both = get(api, f"PaymentReconciliation?_id={rec['id']}&_revinclude=PaymentNotice:payment")
    assert len(both["entry"]) == 4

    # a cleared payment cannot be listed by another report, nor un-cleared by hand
    refused(api.post("PaymentReconciliation", reconciliation(5000, [detail(identifier="TX-A")])), 409,
            text="already cleared")
    a_now = get(api, f"PaymentNotice/{a['id']}")
    a_now["paymentStatus"]["coding"][0]["code"] = "paid"
    refused(put(api, a_now), 409, text="cancel the reconciliation")

    # cancelling the report makes its payments paid again, still naming it
    rec["status"] = "cancelled"
    cancelled = ok(put(api, rec))
    assert cancelled["status"] == "cancelled" and len(cancelled["detail"]) == 3
    again = get(api, f"PaymentNotice/{a['id']}")
    assert again["paymentStatus"]["coding"][0]["code"] == "paid"
    assert again["payment"] == {"reference": f"PaymentReconciliation/{rec['id']}"}
    refused(api.delete(f"PaymentReconciliation/{rec['id']}"), 405)


def test_reconciliation_that_does_not_add_up_or_names_unknown_payments_is_refused(api, engine, scheme):
    s = scheme
    _, inv_id, (a, _, c) = paid_installments(api, engine, s)
    other_bill = make_bill(api, engine, s)
    before = counts(engine)
    refused(api.post("PaymentReconciliation", reconciliation(4000, [detail(identifier="TX-A")])), 422,
            expression="paymentAmount")
    refused(api.post("PaymentReconciliation", reconciliation(5000, [detail(identifier="TX-A", amount=4000)])), 422,
            expression="detail[0].amount")
    refused(api.post("PaymentReconciliation", reconciliation(1, [detail(identifier="NO-SUCH")])), 422,
            expression="detail[0].identifier")
    refused(api.post("PaymentReconciliation", reconciliation(10000, [detail(identifier="TX-A"),
                                                                      detail(request=f"PaymentNotice/{a['id']}")])),
            422, text="listed twice")
    refused(api.post("PaymentReconciliation", reconciliation(5000, [detail(identifier="TX-A",
                                                                           request=f"Invoice/{other_bill}")])),
            422, text="different payments")
    bad_type = reconciliation(5000, [detail(identifier="TX-A")])
    bad_type["detail"][0]["type"]["coding"][0]["code"] = "advance"
    refused(api.post("PaymentReconciliation", bad_type), 422, text="payment")
    unkept = reconciliation(5000, [detail(identifier="TX-A")])
    unkept["requestor"] = {"reference": INSURER}
    refused(api.post("PaymentReconciliation", unkept), 422, expression="requestor")
    refused(api.post("PaymentReconciliation", reconciliation(5000, [detail(identifier="TX-A")]) | {
        "paymentIssuer": {"reference": f"Patient/{s.head}"}}), 422)
    after = counts(engine)
    assert after[:2] == before[:2] and after[4] == before[4]
    # a refunded payment is not reconciled
    c["status"] = "cancelled"
    ok(put(api, c))
    refused(api.post("PaymentReconciliation", reconciliation(7000, [detail(identifier="TX-C")])), 409,
            text="cancelled")
    # the whole invoice: its accepted payments
    rec = created(api.post("PaymentReconciliation", reconciliation(11000, [detail(request=f"Invoice/{inv_id}")],
                                                                   status="draft", outcome=None)))
    assert {x["identifier"]["value"] for x in rec["detail"]} == {"TX-A", "TX-B"}
    assert get(api, f"PaymentNotice/{a['id']}")["paymentStatus"]["coding"][0]["code"] == "paid"  # a draft


def test_notice_naming_a_stored_reconciliation_is_linked(api, engine, scheme):
    s = scheme
    c = idle_contract(api, s, "FC01")
    inv_id = invoice_of(api, engine, c["id"])
    rec = created(api.post("PaymentReconciliation", reconciliation(0, [], platform_ref=None, status="draft")))
    assert "detail" not in rec
    pn = created(api.post("PaymentNotice", notice(f"Invoice/{inv_id}", 3000, "TX-L1",
                                                  payment=f"PaymentReconciliation/{rec['id']}")))
    assert pn["payment"] == {"reference": f"PaymentReconciliation/{rec['id']}"}
    joined = get(api, f"PaymentReconciliation/{rec['id']}")
    assert joined["meta"]["versionId"] == "2" and joined["detail"][0]["identifier"]["value"] == "TX-L1"
    # the report, confirmed with what it lists, clears it
    joined["status"], joined["paymentAmount"]["value"] = "active", 3000
    ok(put(api, joined))
    assert get(api, f"PaymentNotice/{pn['id']}")["paymentStatus"]["coding"][0]["code"] == "cleared"


# --- bad input, rights -------------------------------------------------------------------------------------------


def test_bad_payment_notices_are_refused_and_write_nothing(api, engine, scheme):
    s = scheme
    c = idle_contract(api, s)
    inv_id = invoice_of(api, engine, c["id"])
    good = notice(f"Invoice/{inv_id}", 100, "TX-BAD")
    before = counts(engine)
    cases: list[tuple[dict[str, Any], tuple[int, ...], str | None]] = [
        (notice(f"Invoice/{inv_id}", -5, "TX-BAD"), (400, 422), "amount"),
        (notice(f"Invoice/{inv_id}", 0, "TX-BAD"), (422,), "amount"),
        (notice(f"Invoice/{inv_id}", "abc", "TX-BAD"), (400, 422), "amount"),
        (notice(f"Invoice/{inv_id}", 10.001, "TX-BAD"), (400, 422), "amount"),
        (notice("Invoice/no-such-invoice", 100, "TX-BAD"), (422,), "request"),
        (notice(f"Patient/{s.head}", 100, "TX-BAD"), (422,), "request"),
        (notice(f"Invoice/{inv_id}", 100, "TX-BAD", pay_date=(date.today() + timedelta(days=2)).isoformat()),
         (422,), "paymentDate"),
        (notice(f"Invoice/{inv_id}", 100, "TX BAD with spaces"), (400,), "identifier"),
        (notice(f"Invoice/{inv_id}", 100, "TX-BAD", recipient=f"Patient/{s.head}"), (400, 422), "recipient"),
        (notice(f"Invoice/{inv_id}", 100, "TX-BAD", payment_status="refunded"), (400, 422), "paymentStatus"),
        (notice(f"Invoice/{inv_id}", 100, "TX-BAD", status="unknown"), (400,), "status"),
        ({**good, "amount": {"value": 100, "currency": "USD"}}, (422,), "amount"),
        ({k: v for k, v in good.items() if k != "request"}, (422,), "request"),
        ({k: v for k, v in good.items() if k != "amount"}, (400,), None),
    ]
    for body, statuses, expression in cases:
        refused(api.post("PaymentNotice", body), *statuses, expression=expression)
    assert counts(engine) == before


def test_rights(api, app, engine, client, scheme):
    s = scheme
    c = idle_contract(api, s)
    inv_id = invoice_of(api, engine, c["id"])
    body = notice(f"Invoice/{inv_id}", 100, "TX-RIGHTS")
    for user in (NOBODY, CLERK):  # the Clerk enrols and records premiums, not invoice payments
        other = Api(client, app.tokens.issue(user[0])[0])
        refused(other.post("PaymentNotice", body), 403)
        refused(other.post("PaymentReconciliation", reconciliation(0, [])), 403)
    reader = user_with_rights(app, engine, client, "payments-reader", [155201])
    refused(reader.post("PaymentNotice", body), 403)
    payer = user_with_rights(app, engine, client, "payments-clerk", [155201, 155202, 155203])
    pn = created(payer.post("PaymentNotice", body))
    assert get(reader, f"PaymentNotice/{pn['id']}")["id"] == pn["id"]
    assert search(reader, "PaymentNotice") == {pn["id"]}
    rec = created(payer.post("PaymentReconciliation", reconciliation(100, [detail(identifier="TX-RIGHTS")])))
    refused(Api(client, app.tokens.issue(NOBODY[0])[0]).get(f"PaymentReconciliation/{rec['id']}"), 403)
    assert get(reader, f"PaymentReconciliation/{rec['id']}")["id"] == rec["id"]
