"""Writes sent at the same moment: the same write resent (a mobile app or a hospital system retrying after a
timeout while its first request still runs) or writes that compete (claims of one insuree, payments of one invoice,
enrolments of one family). The outcome is the one they would have one after the other: one copy stored, the others
the 409 (or 422) OperationOutcome, never a 5xx, nothing written twice. Each request goes through its own client (its
own event loop thread) into the one app, so their transactions overlap on the database."""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import ExitStack
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from hifhir.api.app import HifhirApp
from hifhir.store.db import transaction
from hifhir.store.tables import (
    claim,
    claim_ded_rem,
    eligibility_enquiry,
    insuree,
    payment_notice,
    payment_reconciliation,
    policy,
    premium,
)
from tests.builders import patient
from tests.builders_enrolment import days_ago, family_contract
from tests.builders_enrolment import premium as contribution
from tests.conftest import Api
from tests.http.test_claims import claim_of, world  # noqa: F401  (the claim world fixture)
from tests.http.test_eligibility import REQ, enquiry
from tests.http.test_eligibility import world as insurees  # noqa: F401
from tests.http.test_feedback import communication, feedback_rows, selected_claim
from tests.http.test_feedback import world as feedback_world  # noqa: F401
from tests.http.test_payments import (  # noqa: F401  (scheme: the enrolment fixture)
    detail,
    idle_contract,
    invoice_of,
    invoice_row,
    notice,
    paid_installments,
    reconciliation,
    scheme,
)
from tests.http.test_review import medical_officer, pending, reviewed, selecting  # noqa: F401

COPIES = 6


def at_once(app: HifhirApp, api: Api, path: str, bodies: list[dict[str, Any]], method: str = "POST",
            headers: dict[str, str] | None = None) -> list[Any]:
    """Send each body (`method` to /fhir/`path`, with `headers`), all released together, each through its own
    client; the responses, in order."""
    data = [orjson.dumps(body) for body in bodies]
    start = threading.Barrier(len(bodies))
    responses: list[Any] = [None] * len(bodies)
    with ExitStack() as stack:
        clients = [stack.enter_context(TestClient(app, base_url="http://testserver")) for _ in bodies]

        def send(i: int) -> None:
            start.wait()
            responses[i] = clients[i].request(method, f"/fhir/{path}", content=data[i], headers=api.headers(headers))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    return responses


def one_stored_the_rest_conflicts(responses: list[Any], stored: int) -> None:
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {stored: 1, 409: COPIES - 1}, [r.text[:300] for r in responses]
    for r in responses:
        if r.status_code == 409:
            assert r.json()["resourceType"] == "OperationOutcome"


def count(engine: Engine, table: Any, *where: Any) -> int:
    with transaction(engine, write=False) as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def test_a_claim_sent_several_times_at_once_is_stored_once(app, api, engine, world):  # noqa: F811
    responses = at_once(app, api, "Claim", [claim_of(world, "DUP-1")] * COPIES)

    one_stored_the_rest_conflicts(responses, 200)
    assert count(engine, claim, claim.c.code == "DUP-1") == 1


def test_a_payment_sent_several_times_at_once_is_recorded_once(app, api, engine, scheme):  # noqa: F811
    c = idle_contract(api, scheme, "FC01")
    invoice_id = invoice_of(api, engine, c["id"])

    responses = at_once(app, api, "PaymentNotice", [notice(f"Invoice/{invoice_id}", 5000, "TX-AT-ONCE")] * COPIES)

    one_stored_the_rest_conflicts(responses, 201)
    assert count(engine, payment_notice, payment_notice.c.reference == "TX-AT-ONCE") == 1
    assert count(engine, premium, premium.c.receipt == "TX-AT-ONCE") == 1
    assert invoice_row(engine, invoice_id).amount_paid == 5000


def test_an_insuree_registered_several_times_at_once_is_stored_once(app, api, engine, scheme):  # noqa: F811
    body = patient("900000001", "Twice", "Ada", scheme.places["V1"])

    responses = at_once(app, api, "Patient", [body] * COPIES)

    one_stored_the_rest_conflicts(responses, 201)
    assert count(engine, insuree, insuree.c.chf_id == "900000001") == 1


def test_an_enrolment_sent_several_times_at_once_makes_one_policy(app, api, engine, scheme):  # noqa: F811
    body = family_contract(scheme, "BC01", premiums=[contribution(10000, "RCPT-AT-ONCE", days_ago(2))])
    policies = count(engine, policy)

    responses = at_once(app, api, "Contract", [body] * COPIES)

    one_stored_the_rest_conflicts(responses, 201)
    assert count(engine, policy) == policies + 1
    assert count(engine, premium, premium.c.receipt == "RCPT-AT-ONCE") == 1


def test_enrolments_of_one_family_by_several_officers_at_once_make_one_policy(app, api, engine, scheme):  # noqa: F811
    bodies = [family_contract(scheme, "BC01", premiums=[contribution(10000, f"RCPT-{i}", days_ago(2))])
              for i in range(COPIES)]
    policies = count(engine, policy)

    responses = at_once(app, api, "Contract", bodies)

    one_stored_the_rest_conflicts(responses, 201)
    assert all("the family already has a policy of product BC01" in r.text for r in responses
               if r.status_code == 409)
    assert count(engine, policy) == policies + 1


def test_updates_of_one_version_at_once_are_one_new_version_and_412s(app, api, scheme):  # noqa: F811
    stored = api.post("Patient", patient("900000002", "Race", "Bo", scheme.places["V1"])).json()
    bodies = []
    for i in range(COPIES):
        body = {k: v for k, v in stored.items() if k != "meta"}
        body["name"] = [{**stored["name"][0], "given": [f"Name{i}"]}]
        bodies.append(body)

    responses = at_once(app, api, f"Patient/{stored['id']}", bodies, "PUT", {"If-Match": 'W/"1"'})

    assert Counter(r.status_code for r in responses) == {200: 1, 412: COPIES - 1}, [r.text[:300] for r in responses]
    winner = next(i for i, r in enumerate(responses) if r.status_code == 200)
    now = api.get(f"Patient/{stored['id']}").json()
    assert now["meta"]["versionId"] == "2" and now["name"][0]["given"] == [f"Name{winner}"]


def test_an_enquiry_sent_several_times_at_once_is_answered_once(app, api, engine, insurees):  # noqa: F811
    request_uuid = "0f9a7c3e-1b2d-4c5e-8f6a-7b8c9d0e1f2a"
    body = enquiry(f"Patient/{insurees.adult['id']}", request_uuid=request_uuid)

    responses = at_once(app, api, REQ, [body] * COPIES)

    one_stored_the_rest_conflicts(responses, 200)
    assert count(engine, eligibility_enquiry, eligibility_enquiry.c.id == request_uuid) == 1


@pytest.mark.parametrize("completing", [True, False], ids=["each-completing", "installments"])
def test_payments_of_one_invoice_at_once_never_pay_it_beyond_its_total(
        app, api, engine, scheme, completing: bool) -> None:  # noqa: F811
    c = idle_contract(api, scheme, "FC01")  # 18000, in up to three installments
    invoice_id = invoice_of(api, engine, c["id"])
    amount = 18000 if completing else 6000
    bodies = [notice(f"Invoice/{invoice_id}", amount, f"TX-RACE-{i}") for i in range(COPIES)]

    responses = at_once(app, api, "PaymentNotice", bodies)

    statuses = Counter(r.status_code for r in responses)
    accepted = 1 if completing else 3
    # the others are over-payments, as they would be one after the other
    assert statuses == {201: accepted, 422: COPIES - accepted}, [r.text[:300] for r in responses]
    assert all("Over-payment" in r.text for r in responses if r.status_code == 422)
    assert invoice_row(engine, invoice_id).amount_paid == 18000
    assert count(engine, payment_notice) == accepted


def test_claims_of_one_insuree_for_the_same_care_on_the_same_day_at_once_pass_once(app, api, engine, world):  # noqa: F811
    # Distinct claims (their own codes), each a consultation and aspirins for the same insuree on the same day: one
    # after the other, every claim after the first has both lines rejected as duplicates (6).
    bodies = [claim_of(world, f"SAME-DAY-{i}") for i in range(COPIES)]

    responses = at_once(app, api, "Claim", bodies)

    assert [r.status_code for r in responses] == [200] * COPIES, [r.text[:300] for r in responses]
    with transaction(engine, write=False) as conn:
        statuses = Counter(conn.execute(select(claim.c.status).where(claim.c.code.like("SAME-DAY-%"))).scalars())
    assert statuses == {16: 1, 1: COPIES - 1}


def test_feedback_answered_several_times_at_once_is_recorded_once(app, api, feedback_world):  # noqa: F811
    claim_id = selected_claim(feedback_world)
    bodies = [communication(claim_id, feedback_world.patient, ("yes", "no", "yes", "yes", str(1 + i % 5)))
              for i in range(COPIES)]

    responses = at_once(app, api, "Communication", bodies)

    one_stored_the_rest_conflicts(responses, 201)
    assert len(feedback_rows(feedback_world)) == 1


def test_a_review_delivered_several_times_at_once_processes_the_claim_once(
        app, api, engine, world, selecting, medical_officer):  # noqa: F811
    body = pending(api, world)

    responses = at_once(app, medical_officer, f"ClaimResponse/{body['id']}", [reviewed(body)] * COPIES, "PUT")

    one_stored_the_rest_conflicts(responses, 200)
    with transaction(engine, write=False) as conn:
        pk, status = conn.execute(select(claim.c.pk, claim.c.status).where(claim.c.id == body["id"])).one()
        accounts = conn.execute(select(func.count()).select_from(claim_ded_rem)
                                .where(claim_ded_rem.c.claim_pk == pk)).scalar_one()
    assert status == 16 and accounts == 1


def test_a_reconciliation_sent_several_times_at_once_clears_its_payments_once(app, api, engine, scheme):  # noqa: F811
    _, _, (a, b, _c) = paid_installments(api, engine, scheme)
    body = reconciliation(11000, [detail(identifier="TX-A", amount=5000), detail(request=f"PaymentNotice/{b['id']}")])

    responses = at_once(app, api, "PaymentReconciliation", [body] * COPIES)

    statuses = Counter(r.status_code for r in responses)
    assert statuses[201] == 1 and sum(statuses.values()) == COPIES, [r.text[:300] for r in responses]
    assert all(r.json()["resourceType"] == "OperationOutcome" for r in responses if r.status_code != 201)
    stored = next(r.json()["id"] for r in responses if r.status_code == 201)
    with transaction(engine, write=False) as conn:
        linked = Counter(conn.execute(select(payment_notice.c.reconciliation_pk)
                                      .where(payment_notice.c.id.in_([a["id"], b["id"]]))).scalars())
        reconciliations = conn.execute(select(func.count()).select_from(payment_reconciliation)).scalar_one()
    assert reconciliations == 1 and len(linked) == 1 and None not in linked, (stored, linked)
