"""Claims (reference/openimis-domain.md §2.19–2.22, §3.3–3.5): the codes every claim module shares.

Submission checks live in `checks.py`, processing and valuation in `valuation.py`, the batch run in `batch.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hifhir.store.tables import (
    CLAIM_CHECKED,
    CLAIM_ENTERED,
    CLAIM_PROCESSED,
    CLAIM_REJECTED,
    CLAIM_VALUATED,
    LINE_PASSED,
    LINE_REJECTED,
)

# Review and feedback statuses (claim.review_status / claim.feedback_status).
IDLE, NOT_SELECTED, SELECTED, DELIVERED, BYPASSED = 1, 2, 4, 8, 16

# Rejection reasons (§3.3.3), the codes of the IG CodeSystem claim-rejection-reasons (20 and 21 are hifhir's
# additions to it: the reference knows them but cannot render them).
REJECTED_BY_AI = -2
REJECTED_BY_MEDICAL_OFFICER = -1
ACCEPTED = 0
INVALID_ITEM_OR_SERVICE = 1
NOT_IN_PRICE_LIST = 2
NO_PRODUCT_FOUND = 3
CATEGORY_LIMITATION = 4
FREQUENCY_FAILURE = 5
DUPLICATED = 6
FAMILY = 7
DIAGNOSIS_NOT_IN_LIST = 8
TARGET_DATE = 9
CARE_TYPE = 10
MAX_HOSPITAL_ADMISSIONS = 11
MAX_VISITS = 12
MAX_CONSULTATIONS = 13
MAX_SURGERIES = 14
MAX_DELIVERIES = 15
QTY_OVER_LIMIT = 16
WAITING_PERIOD_FAIL = 17
MAX_ANTENATAL = 19
INVALID_CLAIM = 20
NO_COVERAGE = 21

REJECTION_DISPLAYS: dict[int, str] = {
    REJECTED_BY_AI: "REJECTED BY AI EVALUATION",
    REJECTED_BY_MEDICAL_OFFICER: "REJECTED BY MEDICAL OFFICER",
    ACCEPTED: "ACCEPTED",
    INVALID_ITEM_OR_SERVICE: "INVALID ITEM OR SERVICE",
    NOT_IN_PRICE_LIST: "NOT IN PRICE LIST",
    NO_PRODUCT_FOUND: "NO PRODUCT FOUND",
    CATEGORY_LIMITATION: "CATEGORY LIMITATION",
    FREQUENCY_FAILURE: "FREQUENCY FAILURE",
    DUPLICATED: "DUPLICATED",
    FAMILY: "FAMILY",
    DIAGNOSIS_NOT_IN_LIST: "DIAGNOSIS NOT IN LIST",
    TARGET_DATE: "TARGET DATE",
    CARE_TYPE: "CARE TYPE",
    MAX_HOSPITAL_ADMISSIONS: "MAX HOSPITAL ADMISSIONS",
    MAX_VISITS: "MAX VISITS",
    MAX_CONSULTATIONS: "MAX CONSULTATIONS",
    MAX_SURGERIES: "MAX SURGERIES",
    MAX_DELIVERIES: "MAX DELIVERIES",
    QTY_OVER_LIMIT: "QTY OVER LIMIT",
    WAITING_PERIOD_FAIL: "WAITING PERIOD FAIL",
    MAX_ANTENATAL: "MAX ANTENATAL",
    INVALID_CLAIM: "INVALID CLAIM",
    NO_COVERAGE: "NO COVERAGE",
}

# Claim category (§3.3.2) → the reason a category maximum rejects with (§3.3.4 step 5).
CATEGORY_MAX_REASONS: dict[str, int] = {
    "C": MAX_CONSULTATIONS, "S": MAX_SURGERIES, "D": MAX_DELIVERIES, "A": MAX_ANTENATAL,
    "H": MAX_HOSPITAL_ADMISSIONS, "V": MAX_VISITS,
}

CLAIM_STATUS_CODES: dict[int, str] = {
    CLAIM_REJECTED: "rejected", CLAIM_ENTERED: "entered", CLAIM_CHECKED: "checked",
    CLAIM_PROCESSED: "processed", CLAIM_VALUATED: "valuated",
}



@dataclass(slots=True)
class NewLine:
    """A line of a claim being submitted, not stored yet: the checks (`reason`) and processing (`decided`, the
    columns valuation sets) decide it in memory, and the submission inserts it once, decided — no UPDATE of rows
    the same transaction inserted (on PostgreSQL each would write a new row version, re-run its foreign-key checks
    and, unless HOT, an entry in every index). `order` is its rank among the claim's lines of its kind, the order
    stored lines have by pk."""

    kind: str  # item | service
    order: int
    sequence: int
    target_pk: int
    qty: Decimal
    price: Decimal
    reason: int = 0
    decided: dict[str, Any] = field(default_factory=dict)


def target_pks(lines: Any) -> dict[str, list[int]]:
    """`item_pks` / `service_pks`: the registers the lines (anything with kind and target_pk) refer to, as the
    claim statements that read registers by line take them."""
    return {f"{kind}_pks": sorted({line.target_pk for line in lines if line.kind == kind})
            for kind in ("item", "service")}


__all__ = [
    "CLAIM_CHECKED", "CLAIM_ENTERED", "CLAIM_PROCESSED", "CLAIM_REJECTED", "CLAIM_VALUATED", "LINE_PASSED",
    "LINE_REJECTED",
]
