"""The validator's issue type (one OperationOutcome.issue)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ERROR_SEVERITIES = frozenset({"error", "fatal"})


@dataclass(slots=True)
class Issue:
    """One validation finding.

    ``code`` is an OperationOutcome issue-type code (``required``, ``value``, ``invalid``,
    ``structure``, ``code-invalid``, ``invariant``...). ``expression`` is a FHIRPath-like
    location such as ``Patient.name[0].family``.
    """

    severity: str
    code: str
    expression: str
    diagnostics: str

    @property
    def is_error(self) -> bool:
        return self.severity in ERROR_SEVERITIES

    def to_fhir(self) -> dict[str, Any]:
        """The OperationOutcome.issue dict (expression is a one-element list)."""
        return {
            "severity": self.severity,
            "code": self.code,
            "expression": [self.expression],
            "diagnostics": self.diagnostics,
        }


def error(code: str, expression: str, diagnostics: str) -> Issue:
    return Issue("error", code, expression, diagnostics)


def warning(code: str, expression: str, diagnostics: str) -> Issue:
    return Issue("warning", code, expression, diagnostics)
