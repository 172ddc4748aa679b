"""The one table of supported kinds. Adding a profile = one module in `profiles/` plus one line here."""

from __future__ import annotations

import re

from hifhir.fhir.kind import ResourceKind
from hifhir.fhir.profiles.activity_definition import ActivityDefinitionKind
from hifhir.fhir.profiles.claim import ClaimKind, ClaimResponseKind
from hifhir.fhir.profiles.communication import CommunicationKind, CommunicationRequestKind
from hifhir.fhir.profiles.contract import ContractKind
from hifhir.fhir.profiles.coverage import CoverageKind
from hifhir.fhir.profiles.eligibility import EligibilityRequestKind, EligibilityResponseKind
from hifhir.fhir.profiles.group import GroupKind
from hifhir.fhir.profiles.insurance_plan import InsurancePlanKind
from hifhir.fhir.profiles.invoice import BillKind, InvoiceKind
from hifhir.fhir.profiles.location import LocationKind
from hifhir.fhir.profiles.medication import MedicationKind
from hifhir.fhir.profiles.organization import (
    HealthFacilityKind,
    InsurerKind,
    PolicyHolderKind,
)
from hifhir.fhir.profiles.patient import PatientKind
from hifhir.fhir.profiles.payment import PaymentNoticeKind, PaymentReconciliationKind
from hifhir.fhir.profiles.practitioner import ClaimAdminKind, EnrolmentOfficerKind
from hifhir.fhir.profiles.practitioner_role import ClaimAdminRoleKind, EnrolmentOfficerRoleKind
from hifhir.fhir.profiles.subscription import SubscriptionKind

ALL_KINDS: list[ResourceKind] = [
    PatientKind(),
    GroupKind(),
    LocationKind(),
    HealthFacilityKind(),
    PolicyHolderKind(),
    InsurerKind(),
    MedicationKind(),
    ActivityDefinitionKind(),
    InsurancePlanKind(),
    ClaimAdminKind(),
    EnrolmentOfficerKind(),
    ClaimAdminRoleKind(),
    EnrolmentOfficerRoleKind(),
    ContractKind(),
    CoverageKind(),
    EligibilityRequestKind(),
    EligibilityResponseKind(),
    ClaimKind(),
    ClaimResponseKind(),
    CommunicationRequestKind(),
    CommunicationKind(),
    SubscriptionKind(),
    InvoiceKind(), BillKind(),
    PaymentNoticeKind(), PaymentReconciliationKind(),
]

KINDS: dict[str, ResourceKind] = {k.name: k for k in ALL_KINDS}
TYPES: dict[str, list[ResourceKind]] = {}
for _kind in ALL_KINDS:
    TYPES.setdefault(_kind.resource_type, []).append(_kind)
BY_PROFILE: dict[str, ResourceKind] = {k.profile: k for k in ALL_KINDS}

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_REF_RE = re.compile(r"^(?:.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def kinds_of_type(resource_type: str) -> list[ResourceKind]:
    return TYPES.get(resource_type, [])


def parse_reference(ref: str) -> tuple[str, str] | None:
    """`Type/id`, `base/Type/id` or `Type/id/_history/v` → (Type, id)."""
    m = _REF_RE.match(ref)
    return (m.group(1), m.group(2)) if m else None


def valid_id(value: str) -> bool:
    return bool(ID_RE.match(value))
