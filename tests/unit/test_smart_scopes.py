"""SMART system scopes: parsing v1 and v2, what they allow, narrowing a request to what a client may have."""

from __future__ import annotations

import pytest

from hifhir.auth.clients import parse_scopes
from hifhir.auth.scopes import ScopeError, SmartScopes

ALL = ("read", "search", "create", "update", "delete")


def allowed(scopes: str, rtype: str) -> set[str]:
    parsed = parse_scopes(scopes)
    return {i for i in ALL if parsed.allows(rtype, i)}


@pytest.mark.parametrize(("scope", "on_patient", "on_claim"), [
    ("system/Patient.read", {"read", "search"}, set()),
    ("system/Patient.write", {"create", "update", "delete"}, set()),
    ("system/Patient.*", set(ALL), set()),
    ("system/*.read", {"read", "search"}, {"read", "search"}),
    ("system/*.*", set(ALL), set(ALL)),
    ("system/Claim.cr", set(), {"create", "read"}),
    ("system/Patient.rs", {"read", "search"}, set()),
    ("system/*.cruds", set(ALL), set(ALL)),
    ("system/Patient.s system/Claim.d", {"search"}, {"delete"}),
])
def test_v1_and_v2_scopes_allow_their_interactions(scope, on_patient, on_claim):
    assert allowed(scope, "Patient") == on_patient
    assert allowed(scope, "Claim") == on_claim


@pytest.mark.parametrize("scope", [
    "patient/Patient.read", "user/*.read", "openid", "system/Patient", "system/Patient.rc", "system/Patient.crudsx",
    "system/Patient.rr", "system/Patient.", "system/NotAType.read", "system/patient.read", "system/Patient.*s",
    "system/Patient.cruds?category=x", "system/*.write.read",
])
def test_unknown_or_malformed_scopes_are_refused(scope):
    with pytest.raises(ScopeError):
        parse_scopes(scope)


@pytest.mark.parametrize(("requested", "client_may", "granted"), [
    ("system/Patient.read", "system/*.read", "system/Patient.read"),
    ("system/*.read", "system/Patient.read system/Claim.read", "system/Patient.read system/Claim.read"),
    ("system/Patient.*", "system/*.read", "system/Patient.read"),
    ("system/Claim.cruds", "system/Claim.cr", "system/Claim.cr"),
    ("system/Claim.write", "system/*.cruds", "system/Claim.write"),
    ("system/Patient.read system/*.read", "system/*.read", "system/*.read"),
    ("system/Claim.write", "system/*.read", ""),
])
def test_a_request_is_narrowed_to_what_the_client_may_have(requested, client_may, granted):
    assert str(parse_scopes(requested).narrowed_to(parse_scopes(client_may))) == granted


def test_no_scope_allows_nothing():
    empty = SmartScopes([])
    assert not empty
    assert not empty.allows("Patient", "read")
