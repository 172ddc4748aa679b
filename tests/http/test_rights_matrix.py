"""The rights matrix, enforced (issue 7): every kind × interaction × each of the 12 system roles (and a user with no
role), on SQLite and PostgreSQL — allowed → through the right check, denied → 403 with nothing written and no
existence revealed; included resources of kinds a user may not read left out; each role doing its job.

The expectations are written here by hand from reference/openimis-domain.md §4.4 (which role holds which right) and
§4.3/§4.5 (which right each resource needs), with hifhir's declared deviations (README.md "Rights"): they do not
read src/hifhir/auth/matrix.py, so a wrong entry there fails here.

How the matrix test reaches each interaction without a fixture per kind: one version of a resource of every kind is
put in the history table (reads, vreads and instance histories are served from it); writes carry a minimal body,
so an allowed one stops at validation (400/422) and a denied one at the right check (403) — nothing is written by
either. Deletes name an id that does not exist: the type-level check (may the user delete any kind of the type?)
answers 403 before any lookup, an allowed user gets 404; the kind's own delete right on an existing row is
`test_a_delete_checks_the_kind_of_the_row`.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func, insert, select

from hifhir import config
from hifhir.auth.matrix import markdown_table
from hifhir.auth.users import create_user
from hifhir.fhir.kind import now_us
from hifhir.fhir.registry import KINDS
from hifhir.store.db import transaction
from hifhir.store.tables import resource_version
from tests.builders import group as family_group
from tests.builders import health_facility, location, patient
from tests.builders_eligibility import enquiry
from tests.builders_enrolment import family_contract, make_scheme
from tests.builders_practitioner import enrolment_officer, officer_role
from tests.conftest import Api
from tests.http.test_claims import World, answered, claim_of
from tests.http.test_claims import world as world  # the fixture, shared
from tests.http.test_feedback import communication
from tests.http.test_payments import invoice_of, notice
from tests.http.test_search import policy_holder
from tests.responses import created, refused

# The 12 system roles (domain §4.2), by the abbreviation the tables below use; NO is a user with no role at all.
ROLES = {
    "EO": "Enrolment Officer", "MG": "Manager", "AC": "Accountant", "CL": "Clerk", "MO": "Medical Officer",
    "SA": "Scheme Administrator", "IA": "IMIS Administrator", "RC": "Receptionist", "CA": "Claim Administrator",
    "CC": "Claim Contributor", "HA": "HF Administrator", "OA": "Offline Administrator",
}
USERS = [*ROLES, "NO"]
UNSUPPORTED = "405"  # the interaction does not exist for the kind: refused as such, whoever asks

# Who reads what (domain §4.4 rights → §4.3/§4.5 resources):
INSUREES = "EO AC CL RC CA IA"  # 101101 / 101001 / 101201: insurees, families, policies
ENQUIRERS = "EO MG AC CL SA RC CA IA"  # 101201 policy search or 101105 enquire (the Manager's job)
CLAIM_READERS = "MO CA CC IA"  # 111001
FEEDBACK = "MO IA"  # 111010 / 111009
# Locations 121901: Accountant, Clerk, Receptionist, Claim Administrator and the IMIS Administrator (§4.4), plus the
# deviations: the enrolment officer's master data, the scheme administrator's registers.
LOCATION_READERS = "EO AC CL SA RC CA IA"
MASTER_DATA = "EO SA CA IA"  # products, facilities, items, services: the scheme administrator + master-data sync
REGISTRARS = "SA IA"  # the scheme administrator maintains the registers (§4.4)
FINANCE = "AC IA"  # invoices, bills and payments: the accountant (deviation, §4.4 "in practice") and the admin
# The insurer Organization: whoever enrols, enquires, claims or pays — every role but the user administrators.
INSURER_READERS = "EO MG AC CL MO SA IA RC CA CC"

# kind: (resource type, read [read, vread, instance history], create, update). UNSUPPORTED: 405 for everyone.
KIND_EXPECTED: dict[str, tuple[str, str, str, str]] = {
    "patient": ("Patient", INSUREES, "EO CL IA", "EO CL IA"),
    "group": ("Group", INSUREES, "EO CL IA", "EO CL IA"),
    "contract": ("Contract", INSUREES, "EO CL IA", "EO CL IA"),
    "coverage": ("Coverage", INSUREES, UNSUPPORTED, UNSUPPORTED),
    "eligibility-request": ("CoverageEligibilityRequest", ENQUIRERS, ENQUIRERS, UNSUPPORTED),
    "eligibility-response": ("CoverageEligibilityResponse", ENQUIRERS, UNSUPPORTED, UNSUPPORTED),
    "claim": ("Claim", CLAIM_READERS, "CA CC IA", UNSUPPORTED),
    "claim-response": ("ClaimResponse", CLAIM_READERS, UNSUPPORTED, "MO IA"),
    "communication-request": ("CommunicationRequest", FEEDBACK, UNSUPPORTED, UNSUPPORTED),
    "communication": ("Communication", FEEDBACK, FEEDBACK, UNSUPPORTED),
    "location": ("Location", LOCATION_READERS, "IA", "IA"),
    "health-facility": ("Organization", MASTER_DATA, REGISTRARS, REGISTRARS),
    "policy-holder": ("Organization", "IA", "IA", "IA"),
    "insurer": ("Organization", INSURER_READERS, UNSUPPORTED, UNSUPPORTED),
    "medication": ("Medication", MASTER_DATA, REGISTRARS, REGISTRARS),
    "activity-definition": ("ActivityDefinition", MASTER_DATA, REGISTRARS, REGISTRARS),
    "insurance-plan": ("InsurancePlan", MASTER_DATA, REGISTRARS, REGISTRARS),
    "claim-admin": ("Practitioner", "SA CA IA", REGISTRARS, REGISTRARS),
    "enrolment-officer": ("Practitioner", "EO SA IA", REGISTRARS, REGISTRARS),
    "claim-admin-role": ("PractitionerRole", "SA CA IA", REGISTRARS, REGISTRARS),
    "enrolment-officer-role": ("PractitionerRole", "EO SA IA", REGISTRARS, REGISTRARS),
    "invoice": ("Invoice", FINANCE, UNSUPPORTED, UNSUPPORTED),
    "bill": ("Invoice", FINANCE, UNSUPPORTED, UNSUPPORTED),
    "payment-notice": ("PaymentNotice", FINANCE, FINANCE, FINANCE),
    "payment-reconciliation": ("PaymentReconciliation", FINANCE, FINANCE, FINANCE),
    "subscription": ("Subscription", "IA", "IA", "IA"),
}

# type: (search and type history [any kind of the type readable], delete [any kind of the type deletable: checked
# before the lookup], $validate [create or update on a writable kind; IA only where no kind is writable]).
TYPE_EXPECTED: dict[str, tuple[str, str, str]] = {
    "Patient": (INSUREES, "EO CL IA", "EO CL IA"),
    "Group": (INSUREES, "EO CL IA", "EO CL IA"),
    "Contract": (INSUREES, "EO CL IA", "EO CL IA"),
    "Coverage": (INSUREES, "IA", "IA"),
    "CoverageEligibilityRequest": (ENQUIRERS, "IA", ENQUIRERS),
    "CoverageEligibilityResponse": (ENQUIRERS, "IA", "IA"),
    "Claim": (CLAIM_READERS, "CA IA", "CA CC IA"),  # 111004: the claim administrator's delete right (then 405)
    "ClaimResponse": (CLAIM_READERS, "IA", "MO IA"),
    "CommunicationRequest": (FEEDBACK, "IA", "IA"),
    "Communication": (FEEDBACK, "IA", FEEDBACK),
    "Location": (LOCATION_READERS, "IA", "IA"),
    "Organization": (INSURER_READERS, REGISTRARS, REGISTRARS),
    "Medication": (MASTER_DATA, REGISTRARS, REGISTRARS),
    "ActivityDefinition": (MASTER_DATA, REGISTRARS, REGISTRARS),
    "InsurancePlan": (MASTER_DATA, REGISTRARS, REGISTRARS),
    "Practitioner": ("EO SA CA IA", REGISTRARS, REGISTRARS),
    "PractitionerRole": ("EO SA CA IA", REGISTRARS, REGISTRARS),
    "Invoice": (FINANCE, "IA", "IA"),
    "PaymentNotice": (FINANCE, FINANCE, FINANCE),
    "PaymentReconciliation": (FINANCE, FINANCE, FINANCE),
    "Subscription": ("IA", "IA", "IA"),
}

EVERY_ROLE = " ".join(ROLES)  # terminology and profiles: configuration, any role right (not a role-less user)
CODE_LIST_EDITORS = "IA HA OA"  # 131303 (utilities: execute scripts)
DIAGNOSIS_EDITORS = "SA IA"  # 131001 (diagnoses upload)


def who(text: str) -> frozenset[str]:
    return frozenset(text.split())


def role_users(app: Any, engine: Engine, client: Any) -> dict[str, Api]:
    """One user per system role (named after it) and one with no role; tokens straight from the issuer."""
    with transaction(engine, write=True) as conn:
        for abbr in USERS:
            create_user(conn, f"m{abbr}", "", roles=[ROLES[abbr]] if abbr in ROLES else [],
                        password_hash="unused")
    return {abbr: Api(client, app.tokens.issue(f"m{abbr}")[0]) for abbr in USERS}


def seed_one_version_of_each_kind(engine: Engine) -> None:
    rows = [{"res_type": kind.resource_type, "res_id": f"matrix-{name}", "kind": name, "version": 1,
             "last_updated": now_us(), "operation": "create", "user_name": "Admin",
             "body": orjson.dumps({"resourceType": kind.resource_type, "id": f"matrix-{name}",
                                   "meta": {"versionId": "1", "profile": [kind.profile]}})}
            for name, kind in KINDS.items()]
    with transaction(engine, write=True) as conn:
        conn.execute(insert(resource_version), rows)


def history_mark(engine: Engine) -> tuple[int, int]:
    """(versions, last sequence number) of the history table: every write appends to it."""
    with engine.connect() as conn:
        row = conn.execute(select(func.count(), func.max(resource_version.c.seq))).one()
    return int(row[0]), int(row[1] or 0)


class Checker:
    """Sends one request per expectation and collects every mismatch (a full report, not the first failure)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.failures: list[str] = []
        self.count = 0

    def expect(self, user: str, api: Api, label: str, allowed: frozenset[str], request: tuple[str, str, Any],
               ok: tuple[int, ...], *, denied: int = 403) -> None:
        method, path, body = request
        writes = method != "GET"
        self.count += 1
        before = history_mark(self.engine) if writes and user not in allowed else None
        if method == "FORM":  # POST Type/_search with a form body
            resp = api.client.post(f"/fhir/{path}", data=body, headers={"Authorization": f"Bearer {api.token}"})
        elif body is None:
            resp = getattr(api, method.lower())(path)
        else:
            resp = getattr(api, method.lower())(path, body)
        wanted = ok if user in allowed else (denied,)
        if resp.status_code not in wanted:
            self.failures.append(f"{user} {label}: {resp.status_code} (expected {'/'.join(map(str, wanted))}) "
                                 f"{resp.text[:160]}")
        if writes and user not in allowed and history_mark(self.engine) != before:
            self.failures.append(f"{user} {label}: refused, yet something was written")
        if resp.status_code == 403 and f"m{user}" not in resp.json()["issue"][0]["diagnostics"]:
            self.failures.append(f"{user} {label}: the 403 does not say who lacks what: {resp.text[:160]}")


def minimal(kind_name: str, res_id: str | None = None) -> dict[str, Any]:
    kind = KINDS[kind_name]
    body: dict[str, Any] = {"resourceType": kind.resource_type, "meta": {"profile": [kind.profile]}}
    if res_id is not None:
        body["id"] = res_id
    return body


NONE = frozenset[str]()


def test_every_role_on_every_kind_and_interaction(app, client, engine):
    users = role_users(app, engine, client)
    seed_one_version_of_each_kind(engine)
    assert set(KIND_EXPECTED) == set(KINDS), "a kind without expectations: add it to KIND_EXPECTED"
    check = Checker(engine)
    for user, api in users.items():
        for kind_name, (rtype, read, create, update) in KIND_EXPECTED.items():
            rid = f"matrix-{kind_name}"
            # A user who reads another kind of the type gets 404 for this one: as unknown as a missing id.
            hidden = 404 if user in who(TYPE_EXPECTED[rtype][0]) else 403
            for label, path in (("read", f"{rtype}/{rid}"), ("vread", f"{rtype}/{rid}/_history/1"),
                                ("history", f"{rtype}/{rid}/_history")):
                check.expect(user, api, f"{label} {kind_name}", who(read), ("GET", path, None), (200,),
                             denied=hidden)
            post = ("POST", rtype, minimal(kind_name))
            put = ("PUT", f"{rtype}/{rid}", minimal(kind_name, rid))
            for label, request, allowed in (("create", post, create), ("update", put, update)):
                if allowed == UNSUPPORTED:
                    check.expect(user, api, f"{label} {kind_name}", NONE, request, (), denied=405)
                else:
                    check.expect(user, api, f"{label} {kind_name}", who(allowed), request, (400, 422))
        for rtype, (search, delete, validate) in TYPE_EXPECTED.items():
            check.expect(user, api, f"search {rtype}", who(search), ("GET", f"{rtype}?_id=matrix-none", None), (200,))
            check.expect(user, api, f"POST search {rtype}", who(search), ("FORM", f"{rtype}/_search", {"_id": "x"}),
                         (200,))
            check.expect(user, api, f"type history {rtype}", who(search), ("GET", f"{rtype}/_history", None), (200,))
            check.expect(user, api, f"delete {rtype}", who(delete), ("DELETE", f"{rtype}/matrix-none", None), (404,))
            check.expect(user, api, f"$validate {rtype}", who(validate),
                         ("POST", f"{rtype}/$validate", {"resourceType": rtype}), (200,))
        check.expect(user, api, "$photo Patient", who(INSUREES), ("GET", "Patient/matrix-patient/$photo", None),
                     (404,))
        for label, path in (("read CodeSystem", "CodeSystem/patient-profession"),
                            ("search CodeSystem", "CodeSystem?_summary=count"),
                            ("search ValueSet", "ValueSet?_count=1"),
                            ("$expand ValueSet", "ValueSet/patient-profession/$expand"),
                            ("$lookup CodeSystem", "CodeSystem/patient-profession/$lookup?code=no-such-code"),
                            ("read StructureDefinition", "StructureDefinition/openimis-patient"),
                            ("read ImplementationGuide", "ImplementationGuide/openimis.fhir.r4")):
            check.expect(user, api, label, who(EVERY_ROLE), ("GET", path, None), (200, 404))
        for label, cs_id, editors in (("update code list", "patient-profession", CODE_LIST_EDITORS),
                                      ("update diagnoses", "diagnosis-ICD10-level1", DIAGNOSIS_EDITORS)):
            # the id in the body differs from the URL's: an allowed user gets the 400 of that
            check.expect(user, api, label, who(editors),
                         ("PUT", f"CodeSystem/{cs_id}", {"resourceType": "CodeSystem", "id": "another"}), (400,))
        # The audit trail: 131207 (user activity report), the IMIS Administrator's; never written through the API.
        check.expect(user, api, "search AuditEvent", who("IA"), ("GET", "AuditEvent?_count=1", None), (200,))
        check.expect(user, api, "read AuditEvent", who("IA"), ("GET", "AuditEvent/no-such-event", None), (404,))
        check.expect(user, api, "create AuditEvent", NONE, ("POST", "AuditEvent", {"resourceType": "AuditEvent"}), (),
                     denied=405)
        # User administration: 121701 (IMIS, HF and offline administrators), roles 122001 (IMIS Administrator).
        check.expect(user, api, "list users", who("IA HA OA"), ("GET", "/api/admin/users", None), (200,))
        check.expect(user, api, "list roles", who("IA"), ("GET", "/api/admin/roles", None), (200,))
    assert check.count > 2500, check.count  # every user × kind × interaction ran
    assert not check.failures, f"{len(check.failures)} of {check.count} checks failed:\n" + "\n".join(check.failures)


# --- real resources: what is included, chained, listed ---------------------------------------------------------


def as_role(app: Any, engine: Engine, client: Any, role: str, username: str) -> Api:
    with transaction(engine, write=True) as conn:
        create_user(conn, username, "", roles=[role], password_hash="unused")
    return Api(client, app.tokens.issue(username)[0])


def entries(bundle: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"])
            for e in bundle.get("entry", []) if "search" in e]


def ok(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_included_resources_of_a_kind_the_user_may_not_read_are_left_out(api, app, client, engine, world: World):
    claim_id = answered(api.post("Claim", claim_of(world)))["id"]
    patient_id = world.patient["id"]
    medical_officer = as_role(app, engine, client, "Medical Officer", "mo1")  # 111001, no insuree right
    claim_admin = as_role(app, engine, client, "Claim Administrator", "ca1")  # 111001 and 101101
    clerk = as_role(app, engine, client, "Clerk", "clerk1")  # insurees, no claims

    query = f"Claim?_id={claim_id}&_include=Claim:patient&_include=Claim:provider"
    assert sorted(entries(ok(claim_admin.get(query)))) == [  # the control: it reads all three
        ("Claim", claim_id, "match"), ("Organization", world.places.facility, "include"),
        ("Patient", patient_id, "include")]
    # the medical officer reads claims, neither insurees nor health facilities
    assert entries(ok(medical_officer.get(query))) == [("Claim", claim_id, "match")]
    revinclude = f"Patient?_id={patient_id}&_revinclude=Claim:patient&_revinclude=ClaimResponse:patient"
    assert ("Claim", claim_id, "include") in entries(ok(claim_admin.get(revinclude)))
    assert entries(ok(clerk.get(revinclude))) == [("Patient", patient_id, "match")]
    # Chaining or reverse-chaining through a type the user may not read is refused, not answered.
    refused(medical_officer.get("Claim?patient.identifier=100000001"), 403)
    refused(clerk.get("Patient?_has:Claim:patient:identifier=C0001"), 403)
    assert [e[1] for e in entries(ok(claim_admin.get("Claim?patient.identifier=100000001")))] == [claim_id]


def test_a_kind_the_user_may_not_read_is_absent_from_searches_and_histories_and_unknown_on_read(
        api, app, client, engine, world: World):
    clerk = as_role(app, engine, client, "Clerk", "clerk1")  # reads the insurer, not health facilities
    facility, insurer = world.places.facility, "openIMIS-Implementation"
    assert ok(api.get(f"Organization/{facility}"))  # it exists
    found = entries(ok(clerk.get(f"Organization?_id={facility},{insurer}")))
    assert found == [("Organization", insurer, "match")]
    history = ok(clerk.get("Organization/_history?_count=100"))
    assert {e["resource"]["id"] for e in history.get("entry", []) if "resource" in e} <= {insurer}
    assert all(facility not in e["fullUrl"] for e in history.get("entry", []))
    # 404 exactly as for an id that does not exist: the answer tells nothing about existence
    for path in (f"Organization/{facility}", f"Organization/{facility}/_history",
                 f"Organization/{facility}/_history/1"):
        refused(clerk.get(path), 404)
    refused(clerk.get("Organization/no-such-organization"), 404)
    # a user who reads no kind of the type: 403 whether or not the id exists
    claim_id = answered(api.post("Claim", claim_of(world)))["id"]
    for path in (f"Claim/{claim_id}", f"Claim/{claim_id}/_history", "Claim/no-such-claim", "Claim/_history",
                 f"Claim?_id={claim_id}"):
        refused(clerk.get(path), 403)


def test_a_delete_checks_the_kind_of_the_row(api, app, client, engine, world: World):
    scheme_admin = as_role(app, engine, client, "Scheme Administrator", "sa1")  # facilities, not policy holders
    holder_id = created(api.post("Organization", policy_holder("PH0001", "A trade", world.places.village)))["id"]
    before = history_mark(engine)
    refused(scheme_admin.delete(f"Organization/{holder_id}"), 404)  # a kind it cannot even read: as if absent
    assert history_mark(engine) == before
    assert ok(api.get(f"Organization/{holder_id}"))["id"] == holder_id
    spare = created(api.post("Organization", health_facility("RAHOS009", world.places.district)))["id"]
    assert scheme_admin.delete(f"Organization/{spare}").status_code == 204


def test_a_transaction_with_an_entry_the_user_may_not_write_writes_nothing(api, app, client, engine, world: World):
    clerk = as_role(app, engine, client, "Clerk", "clerk1")  # enrols insurees, cannot create locations
    insuree = patient("100000077", "Roe", "Jane", world.places.village)
    place = location("R9", "Elsewhere", "R")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": insuree, "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:2", "resource": place, "request": {"method": "POST", "url": "Location"}}]}
    before = history_mark(engine)
    outcome = refused(clerk.post("", bundle), 403)
    assert "Bundle.entry[1]" in outcome["issue"][0]["diagnostics"]
    assert history_mark(engine) == before
    answers = ok(clerk.post("", {**bundle, "type": "batch"}))["entry"]
    assert [a["response"]["status"][:3] for a in answers] == ["201", "403"]


def test_a_system_client_needs_both_the_right_and_a_scope():
    from hifhir.auth.matrix import authorize
    from hifhir.auth.scopes import SmartScopes
    from hifhir.auth.users import Principal

    patient, claim = KINDS["patient"], KINDS["claim"]
    clerk_rights = frozenset({101101, 101102})
    reader = Principal("svc", clerk_rights, False, scopes=SmartScopes.parse("system/Patient.read"))
    assert authorize(reader, patient, "read") and authorize(reader, patient, "search")
    assert authorize(reader, patient, "vread") and authorize(reader, patient, "history")
    assert not authorize(reader, patient, "create")  # the right alone is not enough
    assert not authorize(reader, patient, "$validate")
    assert not authorize(reader, "CodeSystem", "read")  # no scope on CodeSystem
    v2 = Principal("svc", clerk_rights | {111001}, False, scopes=SmartScopes.parse("system/Patient.c system/*.s"))
    assert authorize(v2, patient, "create") and authorize(v2, patient, "$validate")
    assert authorize(v2, claim, "search") and not authorize(v2, claim, "read")
    everything = Principal("svc", frozenset({101101}), False, scopes=SmartScopes.parse("system/*.*"))
    assert not authorize(everything, claim, "read")  # the scope alone is not enough
    admin_client = Principal("svc", frozenset(), True, scopes=SmartScopes.parse("system/Patient.read"))
    assert authorize(admin_client, patient, "read") and not authorize(admin_client, patient, "delete")
    assert not authorize(admin_client, "admin/users", "read")
    user = Principal("u", clerk_rights, False)
    assert authorize(user, patient, "create") and authorize(user, "Bundle", "transaction")
    assert not authorize(user, "no-such-subject", "read")
    assert not authorize(Principal("a", frozenset(), True), "no-such-subject", "read")
    assert not authorize(Principal("a", frozenset(), True), "AuditEvent", "delete")  # never, even for the admin


def test_a_server_start_gives_the_system_roles_the_default_rights_they_lack(app, backend, engine):
    from sqlalchemy import delete

    from hifhir.setup import prepare
    from hifhir.store.tables import role, role_right

    def accountant_rights() -> set[int]:
        with engine.connect() as conn:
            return set(conn.execute(select(role_right.c.right_code).join(role, role.c.pk == role_right.c.role_pk)
                                    .where(role.c.name == "Accountant")).scalars())

    with transaction(engine, write=True) as conn:  # a database made before the accountant got payments
        accountant = conn.execute(select(role.c.pk).where(role.c.name == "Accountant")).scalar_one()
        conn.execute(delete(role_right).where(role_right.c.role_pk == accountant, role_right.c.right_code >= 155000))
        conn.execute(insert(role_right).values(role_pk=accountant, right_code=999001))  # an operator's addition
    assert not {155201, 156201} & accountant_rights()
    prepare(backend[0], engine)
    assert {155101, 155201, 155202, 156101, 156201, 999001} <= accountant_rights()


def test_the_readme_rights_table_is_the_matrix():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme.split("<!-- rights:begin -->\n", 1)[1].split("<!-- rights:end -->", 1)[0]
    assert table == markdown_table(), "README.md is stale: paste `hifhir rights` between the rights markers"


# --- each role does its job (domain §4.4 "in practice") -----------------------------------------------------------


def test_enrolment_officer_enrols_and_enquires_and_the_manager_enquires(api, app, client, engine):
    s = make_scheme(api)
    officer = as_role(app, engine, client, "Enrolment Officer", "eo1")
    head = created(officer.post("Patient", patient("200000001", "Moe", "Ann", s.places["V1"], head=True)))["id"]
    family = created(officer.post("Group", family_group("200000001", [head], s.places["V1"])))["id"]
    s.family, s.members = family, {"head": head}
    contract = created(officer.post("Contract", family_contract(s, "BC01")))
    assert contract["status"] == "offered"
    assert ok(officer.post("CoverageEligibilityRequest", enquiry(f"Patient/{head}")))["resourceType"] == \
        "CoverageEligibilityResponse"
    manager = as_role(app, engine, client, "Manager", "mg1")  # 101105 only: the enquiry, nothing else
    assert ok(manager.post("CoverageEligibilityRequest", enquiry(f"Patient/{head}")))["resourceType"] == \
        "CoverageEligibilityResponse"
    refused(manager.get(f"Patient/{head}"), 403)


def test_claim_administrators_and_contributors_submit_claims_the_medical_officer_answers_feedback(
        api, app, client, engine, world: World, monkeypatch: pytest.MonkeyPatch):
    claim_admin = as_role(app, engine, client, "Claim Administrator", "ca1")
    contributor = as_role(app, engine, client, "Claim Contributor", "cc1")
    medical_officer = as_role(app, engine, client, "Medical Officer", "mo1")
    eo = created(api.post("Practitioner", enrolment_officer("EO001", phone="+255700000001")))["id"]
    created(api.post("PractitionerRole", officer_role("EOR001", eo, [world.places.village])))  # whom feedback asks
    with monkeypatch.context() as patched:
        patched.setattr(config, "FEEDBACK_SELECTION", "all:0")  # the claim waits for its feedback
        held = answered(claim_admin.post("Claim", claim_of(world, "J0001")))
    assert held["outcome"] == "partial"
    assert "communicationRequest" not in held  # shown with 111009 only (the IG's security page)
    assert ok(medical_officer.get(f"CommunicationRequest/{held['id']}"))["status"] == "active"
    created(medical_officer.post("Communication", communication(held["id"], world.patient["id"])))
    refused(claim_admin.get(f"CommunicationRequest/{held['id']}"), 403)
    assert answered(contributor.post("Claim", claim_of(world, "J0002")))["resourceType"] == "ClaimResponse"
    refused(contributor.post("Communication", communication(held["id"], world.patient["id"])), 403)


def test_accountant_records_payments(api, app, client, engine):
    s = make_scheme(api)
    contract = created(api.post("Contract", family_contract(s, "BC01")))
    invoice_id = invoice_of(api, engine, contract["id"])
    accountant = as_role(app, engine, client, "Accountant", "ac1")
    assert ok(accountant.get(f"Invoice/{invoice_id}"))["status"] == "issued"
    paid = created(accountant.post("PaymentNotice", notice(f"Invoice/{invoice_id}", 10000, "TX-7")))
    assert ok(accountant.get(f"PaymentNotice/{paid['id']}"))["id"] == paid["id"]
    assert ok(accountant.get(f"Invoice/{invoice_id}"))["status"] == "balanced"


def test_scheme_administrator_registers_and_the_imis_administrator_keeps_locations(api, app, client, engine):
    admin = as_role(app, engine, client, "IMIS Administrator", "ia1")
    region = created(admin.post("Location", location("R1", "Ultha", "R")))["id"]
    district = created(admin.post("Location", location("R1D1", "Rapta", "D", region)))["id"]
    scheme_admin = as_role(app, engine, client, "Scheme Administrator", "sa1")
    assert ok(scheme_admin.get(f"Location?_id={district}"))["entry"][0]["resource"]["id"] == district
    created(scheme_admin.post("Organization", health_facility("RAHOS001", district)))
    refused(scheme_admin.post("Location", location("R2", "Tahida", "R")), 403)
    receptionist = as_role(app, engine, client, "Receptionist", "rc1")  # looks insurees up, changes nothing
    refused(receptionist.post("Patient", patient("300000001", "Poe", "Al", district)), 403)
