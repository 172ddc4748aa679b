"""Subscription (IG row 25, R4 rest-hook; src/hifhir/fhir/profiles/subscription.py): create, read, update, delete,
search; criteria checked by the search engine, endpoints by the allow-list, headers never shown back, status
requested → active, owners and their rights; on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select

from hifhir import config
from hifhir.auth.users import create_user, ensure_role
from hifhir.notify import matching
from hifhir.store.db import transaction
from hifhir.store.tables import subscription
from tests.builders import location
from tests.conftest import CLERK, Api, load_example
from tests.responses import created, refused

PROFILE = "https://openimis.github.io/openimis_fhir_r4_ig/StructureDefinition/openimis-subscription"
SECRET = "s3cret-of-the-subscriber-0123456789"
PATIENT_READ, GROUP_READ, INVOICE_READ = 101101, 101001, 155101
SUBSCRIPTION_RIGHTS = [158001, 158002, 158003, 158004]


def subscription_resource(criteria: str = "Location?type=V", endpoint: str = "https://hooks.example.org/fhir",
                          *, headers: list[str] | None = None, payload: str | None = None,
                          status: str = "requested", end: str | None = None) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint}
    if payload is not None:
        channel["payload"] = payload
    if headers is not None:
        channel["header"] = headers
    res: dict[str, Any] = {"resourceType": "Subscription", "meta": {"profile": [PROFILE]}, "status": status,
                           "reason": "Accounting system integration", "criteria": criteria, "channel": channel}
    if end is not None:
        res["end"] = end
    return res


@pytest.fixture(autouse=True)
def no_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """Production defaults: https to public hosts only (tests that need a local receiver allow 127.0.0.1)."""
    monkeypatch.setattr(config, "NOTIFY", dataclasses.replace(config.NOTIFY, allow_http=frozenset()))
    matching.forget()


def stored(engine: Engine, sub_id: str) -> Any:
    with transaction(engine, write=False) as conn:
        return conn.execute(select(subscription).where(subscription.c.id == sub_id)).one()


def user_with(api: Api, app: Any, username: str, rights: list[int]) -> Api:
    """An Api logged in as a new user holding exactly these rights (through a role of their own)."""
    with transaction(app.engine, write=True) as conn:
        ensure_role(conn, f"role-{username}", 0, rights)
        create_user(conn, username, "", roles=[f"role-{username}"], password_hash="not-a-login")
    return Api(api.client, app.tokens.issue(username)[0])


# --- create, read, search, update, delete -----------------------------------------------------------------------


def test_the_ig_example_is_created_active_and_its_header_value_is_never_shown_back(api, engine):
    example = load_example("Subscription-ContributionInvoiceSubscription")
    del example["id"]
    body = created(api.post("Subscription", example))
    assert body["status"] == "active"  # requested → active: the endpoint passed the allow-list, no handshake
    assert body["criteria"] == "Invoice?type=contribution"
    assert body["reason"] == "Accounting system integration"
    assert body["channel"] == {"type": "rest-hook", "endpoint": "https://api.accounting.org/invoice/contribution",
                               "header": ["Authorization: [hidden]"]}
    answers = [api.get(f"Subscription/{body['id']}"), api.get("Subscription"),
               api.get(f"Subscription/{body['id']}/_history"), api.get(f"Subscription/{body['id']}/_history/1")]
    for resp in answers:
        assert resp.status_code == 200
        assert "secret-token-abc-123" not in resp.text
        assert "Authorization: [hidden]" in resp.text
    row = stored(engine, body["id"])
    assert orjson.loads(row.headers) == [["Authorization", "Bearer secret-token-abc-123"]]
    assert (row.owner, row.resource_type, row.failures, row.error) == ("Admin", "Invoice", 0, None)
    assert len(row.secret) >= 32  # generated: no X-Hifhir-Secret was given


def test_a_subscription_is_read_updated_and_deleted(api, engine):
    first = created(api.post("Subscription", subscription_resource("Location")))
    assert first["meta"]["versionId"] == "1"
    changed = {**first, "criteria": "Patient?gender=female", "reason": "Women's health programme",
               "channel": {"type": "rest-hook", "endpoint": "https://other.example.org/hook",
                           "payload": "application/fhir+json"}}
    resp = api.put(f"Subscription/{first['id']}", changed)
    assert resp.status_code == 200, resp.text
    second = resp.json()
    assert second["meta"]["versionId"] == "2"
    assert (second["criteria"], second["reason"], second["status"]) == (
        "Patient?gender=female", "Women's health programme", "active")
    assert second["channel"] == {"type": "rest-hook", "endpoint": "https://other.example.org/hook",
                                 "payload": "application/fhir+json"}
    assert stored(engine, first["id"]).resource_type == "Patient"
    assert api.get(f"Subscription/{first['id']}").json() == second
    assert api.delete(f"Subscription/{first['id']}").status_code == 204
    assert api.get(f"Subscription/{first['id']}").status_code == 410


def test_search_by_status_channel_type_criteria_and_url(api):
    a = created(api.post("Subscription", subscription_resource("Invoice?type=contribution")))["id"]
    b = created(api.post("Subscription", subscription_resource("Patient?gender=male",
                                                               "https://b.example.org/hook?k=1")))["id"]
    c = created(api.post("Subscription", subscription_resource("Invoice", status="off")))["id"]

    def ids(query: str) -> set[str]:
        resp = api.get(f"Subscription?{query}")
        assert resp.status_code == 200, resp.text
        return {e["resource"]["id"] for e in resp.json().get("entry", [])}

    assert ids("status=active") == {a, b}
    assert ids("status=off") == {c}
    assert ids("type=rest-hook") == {a, b, c}
    assert ids("criteria=Invoice") == {a, c}  # a prefix by default: every subscription to invoices
    assert ids("criteria:exact=Invoice") == {c}
    assert ids("criteria:exact=Invoice%3Ftype%3Dcontribution") == {a}
    assert ids("url=https%3A%2F%2Fb.example.org%2Fhook%3Fk%3D1") == {b}
    assert ids("url=https%3A%2F%2Fb.example.org") == set()
    assert ids("url:below=https%3A%2F%2Fb.example.org") == {b}
    assert ids(f"_id={a}") == {a}
    assert ids("_lastUpdated=gt2020-01-01") == {a, b, c}
    refused(api.get("Subscription?type=websocket"), 400, expression="type")
    refused(api.get("Subscription?status=paused"), 400, expression="status")


# --- criteria ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("criteria", [
    "Observation?code=1234",  # a type this server does not support
    "Patient?colour=blue",  # an unknown parameter
    "Patient?birthdate=yesterday",  # a value the parameter refuses
    "Patient?gender=robot",  # an unknown code
    "Patient?_count=5",  # result parameters shape a page, not a selection
    "Patient?_include=Patient:group",
    "Subscription?status=active",  # subscriptions to subscriptions would feed deliveries back into themselves
    "?gender=male",
    "Patient?gender",  # malformed query
])
def test_a_criteria_the_search_engine_refuses_is_422(api, engine, criteria):
    refused(api.post("Subscription", subscription_resource(criteria)), 422, expression="Subscription.criteria")
    with transaction(engine, write=False) as conn:
        assert conn.execute(select(subscription)).all() == []


@pytest.mark.parametrize("criteria", [
    "Patient", "Patient?", "Patient?address-city=Jamula&gender=female,male", "Organization?type=prov",
    "Invoice?type=contribution", "Claim?status=active", "ClaimResponse?outcome=complete", "Coverage?status=active",
    "Contract?status=executed", "Group?_has:Patient:group:gender=female", "Patient?group.identifier=F1",
    "Location?_lastUpdated=gt2024-01-01T00:00:00Z",
])
def test_a_criteria_is_any_search_on_a_supported_type(api, criteria):
    body = created(api.post("Subscription", subscription_resource(criteria)))
    assert body["criteria"] == criteria


# --- channel ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [
    "http://hooks.example.org/fhir",  # plain http to a host that is not on the allow-list
    "https://127.0.0.1/hook",  # loopback
    "https://localhost:8443/hook",
    "https://api.localhost/hook",
    "https://10.1.2.3/hook",  # private
    "https://192.168.0.10/hook",
    "https://169.254.169.254/latest/meta-data",  # link-local: cloud metadata
    "https://100.64.0.1/hook",  # shared address space
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
    "https://[fd00::1]/hook",  # unique local
    "https://0.0.0.0/hook",
    "https://user:pass@hooks.example.org/fhir",  # credentials belong in channel.header
    "ftp://hooks.example.org/fhir",
    "hooks.example.org/fhir",
])
def test_an_endpoint_outside_the_allow_list_is_422(api, endpoint):
    refused(api.post("Subscription", subscription_resource("Patient", endpoint)), 422,
            expression="Subscription.channel.endpoint")


def test_hosts_on_the_allow_list_may_be_reached_over_http_and_at_internal_addresses(api, monkeypatch):
    monkeypatch.setattr(config, "NOTIFY", dataclasses.replace(
        config.NOTIFY, allow_http=frozenset({"127.0.0.1", "receiver.internal", "10.20.0.0/16"})))
    for endpoint in ("http://127.0.0.1:8099/hook", "https://127.0.0.1/hook", "http://receiver.internal/hook",
                     "http://10.20.3.4:8080/hook"):
        created(api.post("Subscription", subscription_resource("Patient", endpoint)))
    for endpoint in ("http://127.0.0.2/hook", "https://10.21.0.1/hook", "http://localhost/hook"):
        refused(api.post("Subscription", subscription_resource("Patient", endpoint)), 422,
                expression="Subscription.channel.endpoint")


def test_only_rest_hook_channels_are_accepted(api):
    resource = subscription_resource("Patient")
    resource["channel"]["type"] = "websocket"
    refused(api.post("Subscription", resource), 400, 422, expression="channel.type")


def test_the_payload_is_absent_or_the_fhir_json_resource(api, engine):
    full = created(api.post("Subscription", subscription_resource("Patient", payload="application/fhir+json")))
    assert full["channel"]["payload"] == "application/fhir+json"
    assert stored(engine, full["id"]).payload == "application/fhir+json"
    empty = created(api.post("Subscription", subscription_resource("Patient")))
    assert "payload" not in empty["channel"]
    assert stored(engine, empty["id"]).payload is None
    refused(api.post("Subscription", subscription_resource("Patient", payload="application/xml")), 422,
            expression="Subscription.channel.payload")


@pytest.mark.parametrize("header", [
    "Content-Type: text/plain",  # set by the notification itself
    "Host: internal.example.org",
    "X-Hifhir-Signature: forged",
    "X-Hifhir-Delivery: 1",
    "Bad Name: x",  # not an HTTP token
    "No colon here",
    "X-Hifhir-Secret: short",  # the signing secret has 16 to 64 characters
    "X-Api-Key: [hidden]",  # nothing stored to keep
    '{"Authorization": 42}',  # the openIMIS JSON form needs string values
    "X-Region: 東京",  # HTTP/1.1 header values are Latin-1
])
def test_a_header_a_subscriber_may_not_choose_is_422(api, header):
    refused(api.post("Subscription", subscription_resource("Patient", headers=[header])), 422,
            expression="Subscription.channel.header")


def test_a_header_with_a_line_break_is_refused(api):
    resp = api.post("Subscription", subscription_resource("Patient", headers=["X-Api-Key: a\r\nHost: evil"]))
    refused(resp, 400, 422, expression="channel.header")


def test_a_header_given_twice_is_422(api):
    refused(api.post("Subscription", subscription_resource("Patient", headers=["X-Api-Key: a", "x-api-key: b"])),
            422, expression="Subscription.channel.header")


def test_headers_in_the_openimis_json_form_are_accepted_and_hidden_alike(api, engine):
    body = created(api.post("Subscription", subscription_resource(
        "Patient", headers=['{"Authorization": "Bearer abc", "X-Api-Key": "k-1"}'])))
    assert body["channel"]["header"] == ["Authorization: [hidden]", "X-Api-Key: [hidden]"]
    assert orjson.loads(stored(engine, body["id"]).headers) == [["Authorization", "Bearer abc"],
                                                                ["X-Api-Key", "k-1"]]


def test_a_put_of_what_was_read_keeps_the_hidden_values_and_a_header_left_out_is_removed(api, engine):
    body = created(api.post("Subscription", subscription_resource(
        "Patient", headers=["Authorization: Bearer abc", f"X-Hifhir-Secret: {SECRET}", "X-Api-Key: k-1"])))
    assert body["channel"]["header"] == ["Authorization: [hidden]", "X-Hifhir-Secret: [hidden]",
                                         "X-Api-Key: [hidden]"]
    assert stored(engine, body["id"]).secret == SECRET
    read = api.get(f"Subscription/{body['id']}").json()
    read["criteria"] = "Patient?gender=male"
    read["channel"]["header"] = ["Authorization: [hidden]", f"X-Hifhir-Secret: {'[hidden]'}", "X-Api-Key: k-2"]
    assert api.put(f"Subscription/{body['id']}", read).status_code == 200
    row = stored(engine, body["id"])
    assert orjson.loads(row.headers) == [["Authorization", "Bearer abc"], ["X-Hifhir-Secret", SECRET],
                                         ["X-Api-Key", "k-2"]]
    assert row.secret == SECRET
    del read["channel"]["header"]
    assert api.put(f"Subscription/{body['id']}", read).status_code == 200
    row = stored(engine, body["id"])
    assert row.headers is None
    assert row.secret != SECRET  # the client's secret removed with its header: a generated one again


# --- status -----------------------------------------------------------------------------------------------------


def test_off_is_the_clients_choice_and_active_again_too(api):
    body = created(api.post("Subscription", subscription_resource("Patient", status="off")))
    assert body["status"] == "off"
    body["status"] = "active"
    assert api.put(f"Subscription/{body['id']}", body).json()["status"] == "active"


def test_an_end_in_the_past_turns_the_subscription_off(api, engine):
    body = created(api.post("Subscription", subscription_resource("Patient", end="2020-01-01T00:00:00Z")))
    assert (body["status"], body["end"]) == ("off", "2020-01-01T00:00:00.000000Z")
    later = created(api.post("Subscription", subscription_resource("Patient", end="2099-12-31T00:00:00+00:00")))
    assert (later["status"], later["end"]) == ("active", "2099-12-31T00:00:00.000000Z")
    assert stored(engine, later["id"]).end_instant == 4102358400 * 1_000_000


def test_error_is_the_servers_status(api, engine):
    refused(api.post("Subscription", subscription_resource("Patient", status="error")), 422,
            expression="Subscription.status")
    body = created(api.post("Subscription", subscription_resource("Patient")))
    body["status"] = "error"
    refused(api.put(f"Subscription/{body['id']}", body), 422, expression="Subscription.status")
    body["status"], body["error"] = "active", "a client cannot write the server's error note"
    resp = api.put(f"Subscription/{body['id']}", body)
    assert resp.status_code == 200 and "error" not in resp.json()


def test_a_client_putting_back_a_subscription_in_error_keeps_it_in_error(api, engine):
    body = created(api.post("Subscription", subscription_resource("Patient")))
    with transaction(engine, write=True) as conn:
        conn.execute(subscription.update().where(subscription.c.id == body["id"]).values(
            status="error", error="3 consecutive deliveries failed", failures=3))
    body["status"] = "error"
    kept = api.put(f"Subscription/{body['id']}", body).json()
    assert (kept["status"], kept["error"]) == ("error", "3 consecutive deliveries failed")
    assert stored(engine, body["id"]).failures == 3
    kept["status"] = "active"  # the subscriber fixed its endpoint
    revived = api.put(f"Subscription/{body['id']}", kept).json()
    assert revived["status"] == "active" and "error" not in revived
    assert stored(engine, body["id"]).failures == 0


# --- rights and owners ------------------------------------------------------------------------------------------


def test_subscriptions_need_the_openimis_subscription_rights(api, app):
    clerk = Api(api.client, app.tokens.issue(CLERK[0])[0])  # a Clerk reads patients but holds no 158xxx right
    refused(clerk.post("Subscription", subscription_resource("Patient")), 403)
    refused(clerk.get("Subscription"), 403)


def test_the_criteria_must_be_a_search_the_owner_may_run(api, app):
    subscriber = user_with(api, app, "subscriber", [*SUBSCRIPTION_RIGHTS, PATIENT_READ])
    body = created(subscriber.post("Subscription", subscription_resource("Patient?gender=female")))
    assert body["status"] == "active"
    refused(subscriber.post("Subscription", subscription_resource("Invoice?type=contribution")), 403,
            expression="Subscription.criteria", text="155101")
    # A chain reads the family too: its read right is needed as well.
    refused(subscriber.post("Subscription", subscription_resource("Patient?group.identifier=F1")), 403,
            expression="Subscription.criteria", text=str(GROUP_READ))


def test_only_the_owner_or_an_administrator_changes_or_deletes_a_subscription(api, app, engine):
    owner = user_with(api, app, "owner", [*SUBSCRIPTION_RIGHTS, PATIENT_READ])
    other = user_with(api, app, "other", [*SUBSCRIPTION_RIGHTS, PATIENT_READ])
    body = created(owner.post("Subscription", subscription_resource("Patient")))
    assert other.get(f"Subscription/{body['id']}").status_code == 200  # listed to every holder of 158001
    body["status"] = "off"
    refused(other.put(f"Subscription/{body['id']}", body), 403, text="owner")
    refused(other.delete(f"Subscription/{body['id']}"), 403, text="owner")
    assert owner.put(f"Subscription/{body['id']}", body).json()["status"] == "off"
    body["status"] = "active"
    assert api.put(f"Subscription/{body['id']}", body).status_code == 200  # the administrator
    assert stored(engine, body["id"]).owner == "owner"  # an administrator's update keeps the owner
    assert owner.delete(f"Subscription/{body['id']}").status_code == 204


def test_an_update_checks_the_criteria_against_the_owners_rights_not_the_editors(api, app):
    owner = user_with(api, app, "owner", [*SUBSCRIPTION_RIGHTS, PATIENT_READ])
    body = created(owner.post("Subscription", subscription_resource("Patient")))
    body["criteria"] = "Invoice?type=contribution"
    refused(api.put(f"Subscription/{body['id']}", body), 403, expression="Subscription.criteria")


def test_a_location_is_created_without_any_subscription_cost_beyond_the_check(api, engine):
    """No subscription: a write enqueues nothing (the flush observer stops at the freshness aggregate)."""
    from hifhir.store.tables import outbox

    created(api.post("Location", location("R9", "Nowhere", "R")))
    with transaction(engine, write=False) as conn:
        assert conn.execute(select(outbox)).all() == []
