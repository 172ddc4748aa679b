"""Commission and fees bills (IG bill-type `commission` and `fees`; `hifhir.domain.commissions`): made by
`hifhir bills commissions` / `hifhir bills fees` for a month that is over, read and searched as FHIR Invoices
(profile openimis-invoice-bill), paid with a PaymentNotice like any bill; the payment platform's fees recorded on
accepted PaymentNotices per the configured tariff.

Contributions come with POSTed Contracts (premiums sent with them) and with payments of contribution invoices;
the months are the last two that are over (M and the one before it)."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from hifhir import cli, config
from hifhir.config import PaymentsConfig
from hifhir.store.db import transaction
from hifhir.store.tables import bill, bill_line, officer, payment_notice, premium
from tests.builders_enrolment import contract, family_contract, make_family, make_scheme
from tests.builders_enrolment import premium as premium_ext
from tests.builders_practitioner import enrolment_officer
from tests.http.test_invoices import BILL_PROFILE, chf_id, code_of, components, ext, ok, search, valid
from tests.http.test_payments import invoice_of, notice
from tests.responses import created

IG = "https://openimis.github.io/openimis_fhir_r4_ig/"
M_FIRST = (date.today().replace(day=1) - timedelta(days=1)).replace(day=1)  # the last month that is over
BEFORE_FIRST = (M_FIRST - timedelta(days=1)).replace(day=1)  # the month before it
M, BEFORE = f"{M_FIRST:%Y-%m}", f"{BEFORE_FIRST:%Y-%m}"


def day(first: date, n: int) -> str:
    return (first + timedelta(days=n - 1)).isoformat()


def bills_of(engine: Engine, type_code: str) -> list[Any]:
    with transaction(engine, write=False) as conn:
        return conn.execute(select(bill).where(bill.c.type_code == type_code, bill.c.deleted.is_(False))
                            .order_by(bill.c.code)).all()


def lines_of(engine: Engine, bill_pk: int) -> list[Any]:
    with transaction(engine, write=False) as conn:
        return conn.execute(select(bill_line).where(bill_line.c.bill_pk == bill_pk)
                            .order_by(bill_line.c.sequence)).all()


def bill_count(engine: Engine) -> int:
    with transaction(engine, write=False) as conn:
        return int(conn.execute(select(func.count()).select_from(bill)).scalar_one())


def run(capsys: Any, *args: str) -> str:
    assert cli.main(["bills", *args]) == 0, capsys.readouterr().err
    return str(capsys.readouterr().out)


@pytest.fixture
def sold(api: Any, engine: Engine) -> Any:
    """Officer E00001 sold the Doe family an FC01 policy: contributions 1000.10 in the month before M, 2000.20 and
    3000.30 in M, and a 500 photo fee in M. Officer E00002 sold the Smith family a BC01 policy paid 10000 in M."""
    s = make_scheme(api)
    s.officer2 = created(api.post("Practitioner", enrolment_officer("E00002", "Smith", "Ann",
                                                                    district_id=s.places["D1"])))["id"]
    s.family2, s.members2 = make_family(api, s.places["V1"], prefix="2000000")
    issued = BEFORE_FIRST.isoformat()
    s.policy1 = created(api.post("Contract", family_contract(s, "FC01", issued=issued, premiums=[
        premium_ext(1000.10, "R-BEFORE", day(BEFORE_FIRST, 3)),
        premium_ext(2000.20, "R-M-1", day(M_FIRST, 3)),
        premium_ext(500, "PHOTO-M", day(M_FIRST, 3), category="P"),
        premium_ext(3000.30, "R-M-2", day(M_FIRST, 5))])))["id"]
    s.policy2 = created(api.post("Contract", contract(
        f"Group/{s.family2}", s.members2["head"], list(s.members2.values()), s.products["BC01"], issued=issued,
        officer_id=s.officer2, premiums=[premium_ext(10000, "S-M-1", day(M_FIRST, 10))])))["id"]
    return s


# --- commissions -------------------------------------------------------------------------------------------------


def test_commission_bill_per_officer(api, engine, command_env, capsys, sold):
    s = sold
    assert run(capsys, "commissions", "--period", M, "--rate", "2.5") == f"commission bills {M}: 2 created\n"
    first, second = bills_of(engine, "commission")
    assert (first.code, second.code) == (f"CM-E00001-{M}", f"CM-E00002-{M}")
    assert (first.payee_type, first.subject_type, first.subject_pk) == (
        "enrolment-officer", "period", M_FIRST.year * 100 + M_FIRST.month)
    assert (first.status, first.date_issued, first.date_due) == (1, date.today(), date.today() + timedelta(days=30))
    # 2.5 % of 2000.20 is 50.005: half-up to 50.01; of 3000.30, 75.0075 → 75.01. The photo fee and the
    # contribution of the month before are left out.
    lines = lines_of(engine, first.pk)
    assert [(ln.line_type, ln.code, ln.quantity, ln.unit_price, ln.deduction, ln.amount_net) for ln in lines] == [
        ("premium", "R-M-1", 1, Decimal("2000.20"), Decimal("1950.19"), Decimal("50.01")),
        ("premium", "R-M-2", 1, Decimal("3000.30"), Decimal("2925.29"), Decimal("75.01"))]
    head = chf_id(engine, s.head)
    assert lines[0].description == f"FC01 Product FC01: family of {head} Doe Head"
    with transaction(engine, write=False) as conn:
        receipts = dict(conn.execute(select(premium.c.receipt, premium.c.pk)).all())
    assert [ln.line_pk for ln in lines] == [receipts["R-M-1"], receipts["R-M-2"]]
    assert (first.amount_net, first.amount_total, first.amount_discount) == (Decimal("125.02"), Decimal("125.02"), 0)
    [other] = lines_of(engine, second.pk)
    assert (other.code, other.amount_net, second.amount_total) == ("S-M-1", 250, 250)

    r = valid(ok(api.get(f"Invoice/{first.id}")))
    assert r["meta"]["profile"] == [BILL_PROFILE] and r["meta"]["versionId"] == "1"
    assert r["type"]["coding"][0] == {"system": f"{IG}CodeSystem/bill-type", "code": "commission",
                                      "display": "Commission"}
    assert r["recipient"] == {"reference": f"Practitioner/{s.officer}"}
    assert code_of(r) == first.code and r["status"] == "issued" and ext(r, "invoice-status") == "validated"
    item = r["lineItem"][0]
    assert item["chargeItemCodeableConcept"]["coding"][0] == {"system": f"{IG}CodeSystem/bill-charge-item",
                                                             "code": "commission", "display": "Commission"}
    parts = components(r)
    assert set(parts) == {"base", "deduction"}
    assert parts["base"]["code"]["text"] == "R-M-1" and parts["base"]["amount"]["value"] == 2000.2
    assert parts["deduction"]["amount"]["value"] == -1950.19
    nets = [sum(Decimal(str(c["amount"]["value"])) for c in li["priceComponent"]) for li in r["lineItem"]]
    assert nets == [Decimal("50.01"), Decimal("75.01")]
    assert r["totalNet"]["value"] == r["totalGross"]["value"] == 125.02 and "2.5 %" in r["paymentTerms"]

    assert search(api, "Invoice?type=commission") == {first.id, second.id}
    assert search(api, f"Invoice?recipient=Practitioner/{s.officer2}") == {second.id}
    assert search(api, "Invoice?type=claim-batch") == set()

    # Again for the same month: nothing new. The month before: E00001's contribution of that month only.
    assert run(capsys, "commissions", "--period", M, "--rate", "2.5") == f"commission bills {M}: 0 created\n"
    assert len(bills_of(engine, "commission")) == 2
    assert run(capsys, "commissions", "--period", BEFORE, "--rate", "2.5").endswith(": 1 created\n")
    [before] = [b for b in bills_of(engine, "commission") if b.code == f"CM-E00001-{BEFORE}"]
    assert [(ln.code, ln.amount_net) for ln in lines_of(engine, before.pk)] == [("R-BEFORE", Decimal("25.00"))]
    with transaction(engine, write=False) as conn:
        officer_pk = conn.execute(select(officer.c.pk).where(officer.c.id == s.officer)).scalar_one()
    assert before.payee_pk == first.payee_pk == officer_pk


def test_commission_bill_is_paid_with_a_payment_notice(api, engine, command_env, capsys, sold):
    run(capsys, "commissions", "--period", M, "--rate", "2.5")
    first = bills_of(engine, "commission")[0]
    pn = created(api.post("PaymentNotice", notice({"reference": f"Invoice/{first.id}", "type": "bill"}, 125.02,
                                                  "PAY-COMMISSION-1")))
    assert pn["request"] == {"reference": f"Invoice/{first.id}"}
    r = valid(ok(api.get(f"Invoice/{first.id}")))
    assert r["status"] == "balanced" and ext(r, "invoice-status") == "paid" and r["meta"]["versionId"] == "2"
    assert ext(r, "invoice-amount-paid") == {"value": 125.02, "currency": "EUR"}


@pytest.mark.parametrize(("args", "message"), [
    (["commissions", "--period", "2026-13", "--rate", "5"], "--period must be a month as YYYY-MM"),
    (["commissions", "--period", "October", "--rate", "5"], "not 'October'"),
    (["commissions", "--period", M, "--rate", "-1"], "--rate must be a percentage above 0 and at most 100"),
    (["commissions", "--period", M, "--rate", "five"], "not 'five'"),
    (["commissions", "--period", M, "--rate", "0"], "--rate must be a percentage"),
    (["commissions", "--period", "2999-01", "--rate", "5"], "2999-01 is not over yet"),
    (["fees", "--period", "10-2026"], "--period must be a month as YYYY-MM"),
    (["fees", "--period", "2999-01"], "2999-01 is not over yet"),
])
def test_cli_refuses_bad_input(api, engine, command_env, capsys, sold, args, message):
    before = bill_count(engine)
    assert cli.main(["bills", *args]) == 1
    assert message in capsys.readouterr().err
    assert bill_count(engine) == before == 0


# --- payment-platform fees ---------------------------------------------------------------------------------------


def pay(api: Any, invoice_id: str, amount: Any, reference: str, pay_date: str, status: str = "active") -> str:
    return str(created(api.post("PaymentNotice", notice(f"Invoice/{invoice_id}", amount, reference,
                                                        pay_date=pay_date, status=status)))["id"])


def fees_of(engine: Engine) -> dict[str, Decimal | None]:
    with transaction(engine, write=False) as conn:
        return dict(conn.execute(select(payment_notice.c.reference, payment_notice.c.fees)).all())


def test_fees_are_recorded_and_billed_monthly(api, engine, command_env, capsys, sold, monkeypatch):
    monkeypatch.setattr(config, "PAYMENTS", PaymentsConfig(Decimal("1.5"), Decimal("0.25"), "MobiPay"))
    invoice_id = invoice_of(api, engine, sold.policy1)
    paid = {ref: pay(api, invoice_id, amount, ref, when) for ref, amount, when in (
        ("P-M-1", 1000, day(M_FIRST, 4)), ("P-M-2", 333.33, day(M_FIRST, 6)),
        ("P-BEFORE", 200, day(BEFORE_FIRST, 6)))}
    draft = pay(api, invoice_id, 100, "P-M-DRAFT", day(M_FIRST, 7), status="draft")
    # 1.5 % + 0.25: 15.25; 4.99995 + 0.25 → 5.25; 3.25. A payment not accepted has none.
    assert fees_of(engine) == {"P-M-1": Decimal("15.25"), "P-M-2": Decimal("5.25"), "P-BEFORE": Decimal("3.25"),
                               "P-M-DRAFT": None}
    body = {**notice(f"Invoice/{invoice_id}", 100, "P-M-DRAFT", pay_date=day(M_FIRST, 7)), "id": draft}
    ok(api.put(f"PaymentNotice/{draft}", body))  # accepted now: its fee is recorded
    assert fees_of(engine)["P-M-DRAFT"] == Decimal("1.75")

    assert run(capsys, "fees", "--period", M) == f"fees bills {M}: 1 created\n"
    [fees] = bills_of(engine, "fees")
    assert (fees.code, fees.payee_type, fees.status, fees.amount_total) == (
        f"FE-{M}", "payments-platform", 1, Decimal("22.25"))
    lines = lines_of(engine, fees.pk)
    assert [(ln.line_type, ln.code, ln.unit_price, ln.amount_net) for ln in lines] == [
        ("payment", "P-M-1", Decimal("15.25"), Decimal("15.25")),
        ("payment", "P-M-2", Decimal("5.25"), Decimal("5.25")),
        ("payment", "P-M-DRAFT", Decimal("1.75"), Decimal("1.75"))]
    with transaction(engine, write=False) as conn:
        notice_pks = dict(conn.execute(select(payment_notice.c.id, payment_notice.c.pk)).all())
    assert [ln.line_pk for ln in lines] == [notice_pks[paid["P-M-1"]], notice_pks[paid["P-M-2"]], notice_pks[draft]]

    r = valid(ok(api.get(f"Invoice/{fees.id}")))
    assert r["type"]["coding"][0]["code"] == "fees"
    assert r["recipient"] == {"type": "Organization", "display": "MobiPay"}
    assert r["lineItem"][0]["chargeItemCodeableConcept"]["coding"][0]["code"] == "fees"
    assert components(r)["base"]["amount"]["value"] == 15.25 and r["totalGross"]["value"] == 22.25
    assert search(api, "Invoice?type=fees") == {fees.id}

    # A payment accepted later in the month is not added by a second run: the month is billed.
    pay(api, invoice_id, 50, "P-M-LATE", day(M_FIRST, 8))
    assert run(capsys, "fees", "--period", M) == f"fees bills {M}: 0 created\n"
    assert len(bills_of(engine, "fees")) == 1


def test_no_fees_without_a_tariff(api, engine, command_env, capsys, sold):
    assert config.PAYMENTS.fee_percent == config.PAYMENTS.fee_fixed == 0  # the default
    invoice_id = invoice_of(api, engine, sold.policy1)
    pay(api, invoice_id, 1000, "P-FREE", day(M_FIRST, 4))
    assert fees_of(engine) == {"P-FREE": None}
    assert run(capsys, "fees", "--period", M) == f"fees bills {M}: 0 created\n"
    assert bills_of(engine, "fees") == []


def test_payment_fee_setting_is_checked():
    tariff = config.payments_config_from_env({"HIFHIR_PAYMENT_FEE_PERCENT": "2", "HIFHIR_PAYMENT_FEE_FIXED": "0.1"})
    assert (tariff.fee_percent, tariff.fee_fixed, tariff.platform_name) == (2, Decimal("0.1"), "Payments platform")
    with pytest.raises(config.ConfigError, match="HIFHIR_PAYMENT_FEE_FIXED"):
        config.payments_config_from_env({"HIFHIR_PAYMENT_FEE_FIXED": "-1"})


def test_a_commission_bill_is_seen_by_the_users_of_its_officers_district_only(api, app, engine, command_env, capsys,
                                                                            sold):
    from tests.http.test_location_scope import user

    run(capsys, "commissions", "--period", M, "--rate", "2.5")
    ids = {b.id for b in bills_of(engine, "commission")}
    here = user(api, app, "clerk-d1", districts=[sold.places["D1"]])
    elsewhere = user(api, app, "clerk-d2", districts=[sold.places["D2"]])
    assert search(here, "Invoice?type=commission") == ids
    assert search(elsewhere, "Invoice?type=commission") == set()
    assert elsewhere.get(f"Invoice/{sorted(ids)[0]}").status_code == 404
