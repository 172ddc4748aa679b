"""The GovStack scenario of the seed, end to end (issue 6; webinar 2022-05-31, "Cas d'utilisation DIAL : transfert
monétaire inconditionnel"), on SQLite and PostgreSQL:

| seed step                       | from → to                   | FHIR here                                     |
|---------------------------------|-----------------------------|-----------------------------------------------|
| (beforehand)                    | payments BB → openIMIS      | POST Subscription `Invoice?type=contribution` |
| 2. admission and registration   | registration BB → openIMIS  | GET InsurancePlan                             |
| 4. eligibility and enrolment    | registration BB → openIMIS  | POST Patient ×3, Group, Contract (unpaid)     |
| 5. benefit package              | openIMIS                    | the policy value; the contribution Invoice    |
| 6. notification                 | openIMIS → payments BB      | the Invoice (rest-hook, signed)               |
| 7. benefit delivery (payment)   | payments BB → openIMIS      | POST PaymentNotice, PaymentReconciliation     |
|                                 | openIMIS → payments BB      | the balanced Invoice                          |

The two building blocks are two API users holding only the rights their part needs; the payments building block's
notification endpoint is a real HTTP server on 127.0.0.1 (the allow-list admits it, as an operator would configure
it). Everything goes through the HTTP API; the only other thing a test looks at is what that endpoint received.
Deliveries are run by the outbox worker (`Worker.drain`), and time is moved through the outbox's due times
(`drain(now=…)`) instead of waiting out the backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine

from hifhir import config
from hifhir.config import NotifyConfig, OutboxConfig
from hifhir.notify import delivery as notify_delivery
from hifhir.notify import matching, transport
from hifhir.outbox.worker import Worker
from tests.builders import CS, PROFILE, location, patient
from tests.builders import group as family_group
from tests.builders_eligibility import enquiry
from tests.builders_enrolment import contract, make_product, years_ago
from tests.conftest import Api
from tests.http.test_subscriptions import user_with
from tests.responses import created

TODAY = date.today().isoformat()
FHIR_JSON = "application/fhir+json"
HIFHIR_EXT = "https://hifhir.org/fhir/StructureDefinition/"
INSURER = "Organization/openIMIS-Implementation"
PAYMENTS_SECRET = "govstack-payments-signing-key-2026"  # the key the payments building block verifies with
PAYMENTS_INBOUND_TOKEN = "Bearer govstack-im-token-7f3a"  # what its information mediator expects from openIMIS
SETTLEMENT = "https://payments.govstack.example.org/settlements/2026-0042"  # the payments BB's own record

# The outbox as the tests drive it: one delivery at a time, a 10 s backoff doubling at each failure, no jitter.
BACKOFF = 10 * 1_000_000  # µs
OUTBOX = OutboxConfig(concurrency=1, lease_s=60.0, backoff_base_s=BACKOFF / 1_000_000, backoff_cap_s=600.0,
                      jitter=0.0, max_attempts=6)

# The rights each building block holds (domain §4): nothing more.
REGISTRATION_RIGHTS = [
    121001,  # InsurancePlan read (the products)
    101101, 101102,  # Patient read, create
    101001, 101002,  # Group read, create
    101201, 101202,  # Contract (policy) read, create; Coverage read; eligibility enquiry
]
PAYMENTS_RIGHTS = [
    158001, 158002, 158003, 158004,  # Subscription
    155101,  # Invoice read (also what the worker checks before each notification of an invoice)
    155201, 155202,  # PaymentNotice and PaymentReconciliation read, create
]


# --- the payments building block's notification endpoint -------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def resource(self) -> str:
        return self.headers["x-hifhir-resource"]

    def signed_with(self, secret: str) -> bool:
        """The check the payments building block makes (README, notify/delivery.py): HMAC-SHA256 of
        `<timestamp>.<delivery id>.<resource>.<body>`, and a timestamp recent enough to refuse replays."""
        h = self.headers
        message = f"{h['x-hifhir-timestamp']}.{h['x-hifhir-delivery']}.{h['x-hifhir-resource']}.".encode()
        expected = "sha256=" + hmac.new(secret.encode(), message + self.body, hashlib.sha256).hexdigest()
        fresh = abs(int(h["x-hifhir-timestamp"]) - time.time()) < 300
        return fresh and hmac.compare_digest(expected, h["x-hifhir-signature"])


class PaymentsEndpoint:
    """`POST /invoice-events` of the GovStack payments building block on 127.0.0.1: down (its port bound but not
    listening: connections are refused) until `start()`, then up, answering the statuses queued in `answers`
    first, 200 afterwards."""

    def __init__(self) -> None:
        # The port is held from the start, so that the endpoint comes back where the Subscription points.
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        self.received: list[Notification] = []
        self.answers: list[int] = []
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/govstack/payments/invoice-events"

    def _answer(self, got: Notification) -> int:
        with self._lock:
            self.received.append(got)
            return self.answers.pop(0) if self.answers else 200

    def start(self) -> None:
        answer = self._answer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = answer(Notification({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = self._socket
        server.server_activate()
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._server = server

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._socket.close()


@pytest.fixture
def endpoint() -> Iterator[PaymentsEndpoint]:
    """Not started: each test says when the payments building block is up."""
    ep = PaymentsEndpoint()
    yield ep
    transport.close_all()
    ep.close()


@pytest.fixture(autouse=True)
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's configuration for a building block on this machine (HIFHIR_NOTIFY_ALLOW_HTTP=127.0.0.1); a
    subscription is in error after 2 consecutive failed deliveries."""
    monkeypatch.setattr(config, "NOTIFY", NotifyConfig(allow_http=frozenset({"127.0.0.1"}), max_failures=2,
                                                       timeout_s=5.0))
    matching.forget()
    notify_delivery.forget_principals()


@pytest.fixture
def worker(engine: Engine) -> Iterator[Worker]:
    w = Worker(engine, OUTBOX, topics=["notify"])
    yield w
    w.close()


# --- openIMIS and the two building blocks ------------------------------------------------------------------------


@dataclass
class Registers:
    """What the openIMIS administrator configured (through the API): the places and the products."""

    region: str
    village: str
    products: dict[str, str]  # code → InsurancePlan id


# CT01, the cash-transfer scheme's product: per person (no lump sum), 2500 an adult, 1000 a child, a registration
# fee of 200 a member (new policies) and a general assembly lump sum of 400 a family.
CT01 = dict(lump_sum=0, threshold=6, member_count=10, premium_adult=2500, premium_child=1000, max_installments=1,
            extra_costs={"registrationFee": 200, "generalAssemblyLumpSum": 400})
BC01 = dict(lump_sum=10000, threshold=6, member_count=6, max_installments=1)


@pytest.fixture
def registers(api: Api) -> Registers:
    ids: dict[str, str] = {}
    parent = None
    for level, code, name in (("R", "R1", "Ultha"), ("D", "R1D1", "Rapta"), ("W", "R1D1W1", "Jamu"),
                              ("V", "R1D1W1V1", "Jamula")):
        parent = ids[level] = created(api.post("Location", location(code, name, level, parent)))["id"]
    products = {"CT01": make_product(api, "CT01", ids["R"], **CT01),  # type: ignore[arg-type]
                "BC01": make_product(api, "BC01", ids["R"], **BC01)}  # type: ignore[arg-type]
    return Registers(ids["R"], ids["V"], products)


@pytest.fixture
def registration(api: Api, app: Any) -> Api:
    """The GovStack registration building block's API client."""
    return user_with(api, app, "govstack-registration", REGISTRATION_RIGHTS)


@pytest.fixture
def payments(api: Api, app: Any) -> Api:
    """The GovStack payments building block's API client."""
    return user_with(api, app, "govstack-payments", PAYMENTS_RIGHTS)


def ok(resp: Any, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    return resp.json()


def matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def ext(resource: dict[str, Any], name: str) -> Any:
    found = next((e for e in resource.get("extension", []) if e["url"] == HIFHIR_EXT + name), None)
    return None if found is None else found.get("valueCode", found.get("valueMoney"))


# --- the steps ----------------------------------------------------------------------------------------------------


def subscribe_to_contribution_invoices(payments: Api, endpoint: PaymentsEndpoint) -> str:
    """Beforehand — the payments building block asks to be told of every contribution invoice, with the invoice in the
    notification, signed with its own key, and with the header its information mediator expects."""
    body = {
        "resourceType": "Subscription",
        "meta": {"profile": [f"{PROFILE}openimis-subscription"]},
        "status": "requested",
        "reason": "GovStack payments: contributions to collect",
        "criteria": "Invoice?type=contribution",
        "channel": {"type": "rest-hook", "endpoint": endpoint.url, "payload": FHIR_JSON,
                    "header": [f"Authorization: {PAYMENTS_INBOUND_TOKEN}", f"X-Hifhir-Secret: {PAYMENTS_SECRET}"]},
    }
    sub = created(payments.post("Subscription", body))
    assert sub["status"] == "active"
    # Header values are never shown back (neither the token nor the signing key).
    assert sub["channel"]["header"] == ["Authorization: [hidden]", "X-Hifhir-Secret: [hidden]"]
    return str(sub["id"])


def choose_product(registration: Api, code: str) -> dict[str, Any]:
    """Step 2 — the registration building block lists the products and picks the cash-transfer one."""
    plans = matches(ok(registration.get("InsurancePlan?status=active")))
    by_code = {p["identifier"][0]["value"]: p for p in plans}
    assert set(by_code) == {"CT01", "BC01"}
    return by_code[code]


@dataclass
class Household:
    head: str
    members: list[str]  # Patient ids, head first
    family: str  # Group id
    contract: dict[str, Any]  # as POST Contract answered


def enrol_household(registration: Api, registers: Registers, product: dict[str, Any]) -> Household:
    """Step 4 — the beneficiary household (two adults, a child) is enrolled: each member, the family, then the
    policy (a Contract without premium: its value is for openIMIS to compute)."""
    members = [
        created(registration.post("Patient", patient(chf, "Mensah", given, registers.village, gender=gender,
                                                     birth_date=born, head=chf.endswith("0"))))["id"]
        for chf, given, gender, born in (("770000000", "Ama", "female", years_ago(41)),
                                         ("770000001", "Kofi", "male", years_ago(39)),
                                         ("770000002", "Esi", "female", years_ago(8)))]
    family = created(registration.post("Group", family_group("770000000", members, registers.village)))["id"]
    policy = created(registration.post("Contract", contract(f"Group/{family}", members[0], members,
                                                            product["id"], issued=TODAY)))
    return Household(members[0], members, family, policy)


def contribution_invoice(payments: Api, household: Household) -> dict[str, Any]:
    """Step 5 (openIMIS) seen by the payments building block: the family's contribution invoice, found by the
    family (subject) and by the head who pays it (recipient)."""
    by_subject = matches(ok(payments.get(f"Invoice?type=contribution&subject=Group/{household.family}")))
    by_recipient = matches(ok(payments.get(f"Invoice?recipient=Patient/{household.head}")))
    assert [i["id"] for i in by_subject] == [i["id"] for i in by_recipient] and len(by_subject) == 1
    return by_subject[0]


def pay(payments: Api, invoice: dict[str, Any], transaction: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step 7 — the payments building block has paid the amount due: it notifies the payment (its transaction
    reference as the identifier, its settlement as the payment), then sends the settlement report listing it."""
    amount = invoice["totalGross"]
    notice = created(payments.post("PaymentNotice", {
        "resourceType": "PaymentNotice",
        "meta": {"profile": [f"{PROFILE}openimis-payment-notice"]},
        "identifier": [{"type": {"coding": [{"system": f"{CS}openimis-identifiers", "code": "UUID"}]},
                        "value": transaction}],
        "status": "active",
        "request": {"reference": f"Invoice/{invoice['id']}"},
        "created": f"{TODAY}T09:30:00Z",
        "payment": {"reference": SETTLEMENT},
        "paymentDate": TODAY,
        "recipient": {"reference": INSURER},
        "amount": amount,
        "paymentStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/paymentstatus",
                                      "code": "paid"}]},
    }))
    report = created(payments.post("PaymentReconciliation", {
        "resourceType": "PaymentReconciliation",
        "status": "active",
        "created": f"{TODAY}T18:00:00Z",
        "paymentIssuer": {"reference": INSURER},
        "outcome": "complete",
        "paymentDate": TODAY,
        "paymentAmount": amount,
        "paymentIdentifier": {"value": "GOVSTACK-SETTLE-2026-0042"},
        "detail": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/payment-type",
                                         "code": "payment"}]},
                    "identifier": {"value": transaction}, "amount": amount}],
    }))
    return notice, report


def covered(registration: Api, patient_id: str) -> list[dict[str, Any]]:
    """The eligibility enquiry (IG use case 2): the insurances the member is covered by today."""
    answer = ok(registration.post("CoverageEligibilityRequest", enquiry(f"Patient/{patient_id}")))
    assert answer["resourceType"] == "CoverageEligibilityResponse" and answer["outcome"] == "complete"
    return list(answer.get("insurance", []))


def assert_is_the_version(got: Notification, payments: Api, sub_id: str, resource: str, event: str) -> None:
    """A notification as the payments building block checks it: signed with its key, for its subscription,
    about one version of the invoice, whose body is that version as openIMIS stored it."""
    assert got.signed_with(PAYMENTS_SECRET) and not got.signed_with("another-key-of-16-chars+")
    assert got.headers["content-type"] == FHIR_JSON
    assert got.headers["authorization"] == PAYMENTS_INBOUND_TOKEN  # the stored header, sent
    assert "x-hifhir-secret" not in got.headers  # the signing key itself is never sent
    assert uuid.UUID(got.headers["x-hifhir-delivery"])  # the deduplication key
    assert (got.headers["x-hifhir-subscription"], got.headers["x-hifhir-event"], got.resource) == (
        sub_id, event, resource)
    assert orjson.loads(got.body) == ok(payments.get(resource))


# --- the scenario -------------------------------------------------------------------------------------------------


def test_govstack_cash_transfer(registers, registration, payments, endpoint, worker):
    """The flow of the seed's step table, the payments building block up throughout."""
    endpoint.start()

    # Beforehand, the payments building block subscribes to contribution invoices.
    sub_id = subscribe_to_contribution_invoices(payments, endpoint)

    # 2. The registration building block lists the products.
    product = choose_product(registration, "CT01")

    # 4. It enrols the household: nobody is covered until the contribution is paid.
    household = enrol_household(registration, registers, product)
    policy = household.contract
    assert policy["status"] == "offered"  # idle
    assert ok(registration.get(f"Coverage/{policy['id']}"))["status"] == "draft"
    assert ok(registration.get(f"Patient/{household.head}"))["active"] is False
    assert covered(registration, household.members[2]) == []

    # 5. openIMIS computes the benefit: 2 adults × 2500 + 1 child × 1000 + 3 members × 200 registration + 400
    # general assembly = 7000, the policy's value; and invoices it to the head of the family.
    value = policy["term"][0]["asset"][0]["valuedItem"][0]["net"]
    assert value == {"value": 7000, "currency": "EUR"}
    invoice = contribution_invoice(payments, household)
    assert invoice["status"] == "issued" and ext(invoice, "invoice-status") == "validated"
    assert invoice["type"]["coding"][0]["code"] == "contribution"
    assert invoice["recipient"] == {"reference": f"Patient/{household.head}"}
    assert invoice["totalGross"] == invoice["totalNet"] == value
    assert invoice["meta"]["versionId"] == "1"
    issued = f"Invoice/{invoice['id']}/_history/1"

    # 6. openIMIS notifies the payments building block of the new invoice.
    assert endpoint.received == []  # sent by the outbox worker after the commit, not by the request
    assert worker.drain().done == 1
    [new_invoice] = endpoint.received
    assert_is_the_version(new_invoice, payments, sub_id, issued, "create")
    assert orjson.loads(new_invoice.body)["totalGross"] == value  # what the payments BB is to collect

    # 7. The payments building block pays it and tells openIMIS: a payment notice and the settlement report.
    notice, report = pay(payments, orjson.loads(new_invoice.body), "GS-TX-0001")
    assert notice["request"] == {"reference": f"Invoice/{invoice['id']}"} and notice["amount"] == value
    assert [d["identifier"]["value"] for d in report["detail"]] == ["GS-TX-0001"]
    assert report["detail"][0]["request"] == {"reference": f"Invoice/{invoice['id']}"}
    cleared = ok(payments.get(f"PaymentNotice/{notice['id']}"))
    assert cleared["paymentStatus"]["coding"][0]["code"] == "cleared"
    assert cleared["payment"] == {"reference": f"PaymentReconciliation/{report['id']}"}

    #    The invoice is balanced, the policy active, the household covered.
    balanced = ok(payments.get(f"Invoice/{invoice['id']}"))
    assert balanced["status"] == "balanced" and ext(balanced, "invoice-status") == "paid"
    assert ext(balanced, "invoice-amount-paid") == value
    assert ok(registration.get(f"Contract/{policy['id']}"))["status"] == "executed"
    coverage = ok(registration.get(f"Coverage/{policy['id']}"))
    assert coverage["status"] == "active"
    assert all(ok(registration.get(f"Patient/{m}"))["active"] is True for m in household.members)
    assert ok(registration.get(f"Group/{household.family}"))["active"] is True
    [insurance] = covered(registration, household.members[2])
    assert insurance["coverage"] == {"reference": f"Coverage/{coverage['id']}"}
    assert insurance["item"][0]["name"] == "CT01"

    #    openIMIS notifies the change: once per new version of the invoice, nothing else.
    assert worker.drain().done == 1
    assert len(endpoint.received) == 2
    versions = [e["resource"]["meta"]["versionId"] for e in ok(payments.get(f"Invoice/{invoice['id']}/_history"))[
        "entry"]]
    assert sorted(versions, key=int) == ["1", "2"]  # issued, then balanced by the payment
    paid = endpoint.received[1]
    assert_is_the_version(paid, payments, sub_id, f"Invoice/{invoice['id']}/_history/2", "update")
    assert orjson.loads(paid.body)["status"] == "balanced"
    assert paid.headers["x-hifhir-delivery"] != new_invoice.headers["x-hifhir-delivery"]
    assert worker.drain().ran == 0 and len(endpoint.received) == 2
    assert ok(payments.get(f"Subscription/{sub_id}"))["status"] == "active"


def test_govstack_payments_down_when_the_invoice_is_issued(registers, registration, payments, endpoint, worker):
    """The payments building block is down when openIMIS invoices the contribution: the notification is retried
    with the outbox backoff (10 s, 20 s, 40 s …), the Subscription is in error meanwhile, and once the endpoint is
    back the invoice arrives — with the same delivery id at every attempt, so a repeat can be dropped — and the
    Subscription is active again."""
    sub_id = subscribe_to_contribution_invoices(payments, endpoint)  # accepted: the endpoint is not called now
    household = enrol_household(registration, registers, choose_product(registration, "CT01"))
    invoice = contribution_invoice(payments, household)
    issued = f"Invoice/{invoice['id']}/_history/1"

    t0 = time.time_ns() // 1000  # the outbox's clock (µs), from now on moved by the test
    assert worker.drain(now=t0).retrying == 1  # attempt 1: nothing listens on the endpoint's port
    assert worker.drain(now=t0 + BACKOFF - 1).ran == 0  # not due before its backoff
    assert ok(payments.get(f"Subscription/{sub_id}"))["status"] == "active"  # one failure is not an error yet
    assert worker.drain(now=t0 + BACKOFF).retrying == 1  # attempt 2, 10 s later: still down
    failing = ok(payments.get(f"Subscription/{sub_id}"))
    assert failing["status"] == "error"
    assert "2 consecutive deliveries failed" in failing["error"] and "unreachable" in failing["error"]
    assert endpoint.received == []

    endpoint.start()
    endpoint.answers = [503]  # back, but not ready yet
    assert worker.drain(now=t0 + 3 * BACKOFF - 1).ran == 0
    assert worker.drain(now=t0 + 3 * BACKOFF).retrying == 1  # attempt 3, 20 s later: 503
    assert ok(payments.get(f"Subscription/{sub_id}"))["status"] == "error"
    assert worker.drain(now=t0 + 7 * BACKOFF).done == 1  # attempt 4, 40 s later: delivered
    recovered = ok(payments.get(f"Subscription/{sub_id}"))
    assert recovered["status"] == "active" and "error" not in recovered

    refused_once, delivered = endpoint.received
    for got in (refused_once, delivered):
        assert_is_the_version(got, payments, sub_id, issued, "create")
    assert refused_once.headers["x-hifhir-delivery"] == delivered.headers["x-hifhir-delivery"]
    assert worker.drain(now=t0 + 20 * BACKOFF).ran == 0  # delivered: never sent again

    # The flow goes on: the payment is notified, and the balanced invoice reaches the payments BB at once.
    pay(payments, orjson.loads(delivered.body), "GS-TX-0002")
    assert worker.drain().done == 1
    assert [got.resource for got in endpoint.received[2:]] == [f"Invoice/{invoice['id']}/_history/2"]
    assert orjson.loads(endpoint.received[2].body)["status"] == "balanced"
