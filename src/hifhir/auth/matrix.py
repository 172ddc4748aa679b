"""The rights matrix: which openIMIS right(s) each interaction on each kind, type and endpoint needs — the one place
that says who may do what (reference/openimis-domain.md §4.3, §4.5; the reference's `[]`-means-anyone mistake of
reference/openimis-fhir-module.md §6 is what this table exists to avoid).

Rules:
* A row names a *subject*: a kind (`patient`, `health-facility`…: one IG profile), a resource type that is not a kind
  (CodeSystem, AuditEvent…), or an endpoint (`admin/users`). Columns read / create / update / delete, plus named
  operations. Read also guards vread, search, history and `_include`; `$validate` needs create or update.
* An entry is `any_of(r1, r2…)`: a holder of any one of the rights may. `ANY_ROLE` (any user holding at least one
  right — configuration such as code lists, never personal data), `PER_ENTRY` (a Bundle: each entry is checked as
  the single interaction would be) and `NEVER` (nobody, the IMIS Administrator included) are declared markers.
* A missing row or column (None) is denied: nothing is open to any authenticated user by default. The IMIS
  Administrator passes every declared subject's checks but NEVER (openIMIS `User.has_perms`, domain §4.1).
* A system client (OAuth2) needs, besides the rights of its technical user, a SMART scope allowing the interaction
  on the resource type (`Principal.scopes`, auth/scopes.py).
* The public endpoints (no token at all) are listed in PUBLIC_ENDPOINTS, on purpose.

`hifhir rights` prints this table as Markdown (README.md "Rights" is that output).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from hifhir.fhir.errors import forbidden

if TYPE_CHECKING:
    from hifhir.auth.users import Principal


@dataclass(frozen=True, slots=True)
class Need:
    """What an interaction needs: one of `rights`, or a marker (`mode`)."""

    rights: frozenset[int] = frozenset()
    mode: str = "rights"  # rights | any-role | per-entry | never

    def granted(self, principal: Principal) -> bool:
        if self.mode == "never":
            return False
        if self.mode == "per-entry" or principal.is_admin:
            return True
        if self.mode == "any-role":
            return bool(principal.rights)
        return not self.rights.isdisjoint(principal.rights)

    def __str__(self) -> str:
        if self.mode != "rights":
            return {"any-role": "any role", "per-entry": "per entry", "never": "never"}[self.mode]
        return " or ".join(str(r) for r in sorted(self.rights))


def any_of(*rights: int) -> Need:
    return Need(frozenset(rights))


ANY_ROLE = Need(mode="any-role")
PER_ENTRY = Need(mode="per-entry")
NEVER = Need(mode="never")


@dataclass(frozen=True, slots=True)
class Row:
    subject: str
    resource_type: str  # what SMART scopes name ("" for endpoints outside FHIR)
    label: str
    read: Need | None = None
    create: Need | None = None
    update: Need | None = None
    delete: Need | None = None
    operations: Mapping[str, Need] = field(default_factory=lambda: MappingProxyType({}))
    note: str = ""


def _crud(base: int) -> dict[str, Need]:
    """The openIMIS group convention (AABBCC): 01 search/read, 02 add, 03 edit, 04 delete."""
    return {"read": any_of(base + 1), "create": any_of(base + 2), "update": any_of(base + 3),
            "delete": any_of(base + 4)}


def _ops(**ops: Need) -> Mapping[str, Need]:
    return MappingProxyType({f"${name.replace('_', '-')}": need for name, need in ops.items()})


# Who needs the insurer Organization (the payee of contributions and the insurer of every Coverage and
# eligibility answer): enrolment, enquiry, claims and payments — not any authenticated user.
_INSURER_READERS = any_of(101002, 101102, 101105, 101201, 101202, 111001, 111002, 155101, 155201, 156101, 156201)
# Eligibility (domain §4.3/§4.5): openIMIS checks Policy search 101201; the Insuree "enquire" right 101105 is the
# one the Manager holds for exactly this job (domain §4.4), so either will do.
_ENQUIRY = any_of(101201, 101105)
# Feedback: the reference reads CommunicationRequest/Communication with 111010 (Claims.Update, which selects
# feedback); whoever delivers the feedback (111009) reads what is asked too.
_FEEDBACK_READ = any_of(111010, 111009)

ROWS: tuple[Row, ...] = (
    # --- insurees, families, policies ----------------------------------------------------------------------
    Row("patient", "Patient", "Patient (insuree)", **_crud(101100), operations=_ops(photo=any_of(101101))),
    Row("group", "Group", "Group (family)", **_crud(101000)),
    Row("contract", "Contract", "Contract (policy)", read=any_of(101201), create=any_of(101202),
        update=any_of(101203), delete=any_of(101204)),
    Row("coverage", "Coverage", "Coverage (policy, read-only)", read=any_of(101201)),
    Row("eligibility-request", "CoverageEligibilityRequest", "CoverageEligibilityRequest", read=_ENQUIRY,
        create=_ENQUIRY, note="created once: update/delete 405"),
    Row("eligibility-response", "CoverageEligibilityResponse", "CoverageEligibilityResponse (read-only)",
        read=_ENQUIRY),
    # --- claims ------------------------------------------------------------------------------------------
    Row("claim", "Claim", "Claim", read=any_of(111001), create=any_of(111002, 111007), delete=any_of(111004),
        note="a submitted claim is a record: update/delete 405"),
    Row("claim-response", "ClaimResponse", "ClaimResponse", read=any_of(111001), update=any_of(111008),
        note="update = the medical officer's review; communicationRequest shown with 111009 only"),
    Row("communication-request", "CommunicationRequest", "CommunicationRequest (feedback prompt, read-only)",
        read=_FEEDBACK_READ),
    Row("communication", "Communication", "Communication (feedback)", read=_FEEDBACK_READ, create=any_of(111009)),
    # --- registers ---------------------------------------------------------------------------------------
    Row("location", "Location", "Location", **_crud(121900)),
    Row("health-facility", "Organization", "Organization (health facility)", **_crud(121100)),
    Row("policy-holder", "Organization", "Organization (policy holder)", **_crud(150100)),
    Row("insurer", "Organization", "Organization (insurer, read-only)", read=_INSURER_READERS),
    Row("medication", "Medication", "Medication (medical item)", **_crud(122100)),
    Row("activity-definition", "ActivityDefinition", "ActivityDefinition (medical service)", **_crud(121400)),
    Row("insurance-plan", "InsurancePlan", "InsurancePlan (product)", **_crud(121000)),
    Row("claim-admin", "Practitioner", "Practitioner (claim administrator)", **_crud(121600)),
    Row("enrolment-officer", "Practitioner", "Practitioner (enrolment officer)", **_crud(121500)),
    Row("claim-admin-role", "PractitionerRole", "PractitionerRole (claim administrator)", **_crud(121600)),
    Row("enrolment-officer-role", "PractitionerRole", "PractitionerRole (enrolment officer)", **_crud(121500)),
    # --- finance -----------------------------------------------------------------------------------------
    Row("invoice", "Invoice", "Invoice (contribution invoice, read-only)", read=any_of(155101)),
    Row("bill", "Invoice", "Invoice (bill, read-only)", read=any_of(156101)),
    Row("payment-notice", "PaymentNotice", "PaymentNotice", **_crud(155200)),
    Row("payment-reconciliation", "PaymentReconciliation", "PaymentReconciliation", **_crud(155200)),
    # --- notifications, audit ----------------------------------------------------------------------------
    Row("subscription", "Subscription", "Subscription", **_crud(158000),
        note="update/delete: its owner or an IMIS Administrator"),
    Row("AuditEvent", "AuditEvent", "AuditEvent", read=any_of(131207), create=NEVER, update=NEVER, delete=NEVER,
        note="written by the server only"),
    # --- definitional resources (configuration, no personal data) ----------------------------------------
    Row("CodeSystem", "CodeSystem", "CodeSystem (code lists)", read=ANY_ROLE, update=any_of(131303),
        operations=_ops(lookup=ANY_ROLE, validate_code=ANY_ROLE),
        note="update: the openIMIS code lists only (others 405)"),
    Row("diagnoses", "CodeSystem", "CodeSystem diagnosis-ICD10-level1", read=ANY_ROLE, update=any_of(131001),
        operations=_ops(lookup=ANY_ROLE, validate_code=ANY_ROLE)),
    Row("ValueSet", "ValueSet", "ValueSet (incl. price lists)", read=ANY_ROLE,
        operations=_ops(expand=ANY_ROLE, validate_code=ANY_ROLE)),
    Row("StructureDefinition", "StructureDefinition", "StructureDefinition", read=ANY_ROLE),
    Row("ImplementationGuide", "ImplementationGuide", "ImplementationGuide", read=ANY_ROLE),
    # --- batch/transaction, administration ---------------------------------------------------------------
    Row("Bundle", "Bundle", "Bundle (POST batch/transaction)", operations=MappingProxyType(
        {"transaction": PER_ENTRY, "batch": PER_ENTRY}), note="each entry needs what it would need alone"),
    Row("admin/users", "", "/api/admin/users", **_crud(121700)),
    Row("admin/roles", "", "/api/admin/roles", **_crud(122000)),
)

BY_SUBJECT: Mapping[str, Row] = MappingProxyType({row.subject: row for row in ROWS})

# Reachable without a token, on purpose: discovery, health and the ways to get a token.
PUBLIC_ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("GET /fhir/metadata, /api/api_fhir_r4/metadata", "the CapabilityStatement (FHIR discovery)"),
    ("GET /.well-known/smart-configuration", "SMART discovery: where and how to get a token"),
    ("POST /api/api_fhir_r4/login/, /api/login, /fhir/login", "user login (throttled)"),
    ("POST /oauth/token", "OAuth2 client credentials (the client authenticates itself)"),
    ("GET /healthz", "liveness probe, no data"),
)

# Interactions a kind row answers through its columns; anything else is an operation name.
_COLUMN = {"read": "read", "vread": "read", "search": "read", "history": "read", "include": "read",
           "create": "create", "update": "update", "delete": "delete"}
# The SMART scope interaction(s) each hifhir interaction needs (any one of them).
_SCOPE = {"read": ("read",), "vread": ("read",), "history": ("read",), "include": ("read",), "search": ("search",),
          "create": ("create",), "update": ("update",), "delete": ("delete",), "$validate": ("create", "update")}


def need_of(subject: str, interaction: str) -> Need | None:
    """The declared need of one subject's interaction (None: not declared, denied)."""
    row = BY_SUBJECT.get(subject)
    if row is None:
        return None
    column = _COLUMN.get(interaction)
    if column is not None:
        need: Need | None = getattr(row, column)
        return need
    return row.operations.get(interaction)


def _subjects(target: Any) -> list[tuple[str, str]]:
    """(subject, resource type) pairs `target` stands for: a kind, a kind name, a matrix subject, or a resource
    type with several kinds (any of them)."""
    name = getattr(target, "name", None)
    if name is not None and hasattr(target, "resource_type"):
        return [(str(name), str(target.resource_type))]
    if not isinstance(target, str):
        return []
    row = BY_SUBJECT.get(target)
    if row is not None:
        return [(row.subject, row.resource_type)]
    from hifhir.fhir.registry import kinds_of_type

    return [(k.name, k.resource_type) for k in kinds_of_type(target)]


def _scope_allows(principal: Principal, resource_type: str, interaction: str, need: Need) -> bool:
    scopes = principal.scopes
    if scopes is None or need.mode == "per-entry":
        return True
    wanted = _SCOPE.get(interaction, ("read",))  # operations read, unless the table says otherwise
    return any(scopes.allows(resource_type, i) for i in wanted)


def _allows(principal: Principal, subject: str, resource_type: str, interaction: str) -> bool:
    if interaction == "$validate":
        return any(_allows(principal, subject, resource_type, i) for i in ("create", "update"))
    need = need_of(subject, interaction)
    if need is None:
        # Undeclared on a declared subject: only the IMIS Administrator, who passes every check (the interaction is
        # then refused for what it is, e.g. 405); an unknown subject: nobody.
        return subject in BY_SUBJECT and principal.is_admin and principal.scopes is None
    return need.granted(principal) and _scope_allows(principal, resource_type, interaction, need)


def authorize(principal: Principal, target: Any, interaction: str) -> bool:
    """May `principal` do `interaction` (read, vread, search, history, include, create, update, delete, $validate or
    an operation such as $photo, $expand, transaction) on `target` (a ResourceKind, a matrix subject, or a resource
    type — then on at least one of its kinds)?"""
    return any(_allows(principal, subject, rtype, interaction) for subject, rtype in _subjects(target))


def describe(target: Any, interaction: str) -> str:
    """What the interaction needs, for a 403's text ("101101", "101201 or 101105", "any role")."""
    needs = []
    for subject, _rtype in _subjects(target):
        if interaction == "$validate":
            found = [need_of(subject, "create"), need_of(subject, "update")]
        else:
            found = [need_of(subject, interaction)]
        needs.extend(str(n) for n in found if n is not None)
    return " or ".join(dict.fromkeys(needs)) or "a right no role holds"


def require(principal: Principal, target: Any, interaction: str, what: str) -> None:
    """403 (OperationOutcome) unless `authorize`; the text says what was missing, never whether a resource exists."""
    if authorize(principal, target, interaction):
        return
    if principal.scopes is not None and _rights_only(principal, target, interaction):
        who = principal.client_id or principal.username
        raise forbidden(f"Client '{who}' has no SMART scope allowing it to {what}")
    needed = describe(target, interaction)
    needed = "a role (any right)" if needed == str(ANY_ROLE) else f"right {needed}"
    raise forbidden(f"User '{principal.username}' lacks {needed} to {what}")


def _rights_only(principal: Principal, target: Any, interaction: str) -> bool:
    """Whether the rights alone would allow it (so the scope is what refused)."""
    import dataclasses

    return authorize(dataclasses.replace(principal, scopes=None), target, interaction)


# --- the human-readable table ----------------------------------------------------------------------------------

_COLUMNS = ("read", "create", "update", "delete")


def _cell(need: Need | None) -> str:
    return "—" if need is None else str(need)


def markdown_table(rows: Iterable[Row] = ROWS) -> str:
    """The matrix as Markdown (`hifhir rights`, README.md "Rights")."""
    lines = [
        "| resource / endpoint | read, vread, search, history | create | update | delete | operations | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ops = ", ".join(f"{name}: {need}" for name, need in row.operations.items())
        cells = [row.label, *(_cell(getattr(row, c)) for c in _COLUMNS), ops, row.note]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Public, no token needed:", ""]
    lines += [f"* `{endpoint}`: {why}" for endpoint, why in PUBLIC_ENDPOINTS]
    lines += ["", "“—”: declared for nobody but the IMIS Administrator, who passes every check but “never” (the "
              "interaction is then refused for what it is, e.g. 405 on a read-only resource). “A or B”: either "
              "right. `$validate` needs the create or the update right. A system client (OAuth2) also needs a SMART "
              "scope allowing the interaction on the type."]
    return "\n".join(lines) + "\n"
