"""Client-facing errors, always rendered as an OperationOutcome with the right HTTP status."""

from __future__ import annotations

from typing import Any


def issue(
    code: str, diagnostics: str, *, expression: str | None = None, severity: str = "error"
) -> dict[str, Any]:
    out: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        out["expression"] = [expression]
    return out


def operation_outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": issues}


class FhirError(Exception):
    """Raised anywhere below the HTTP layer; the API turns it into an OperationOutcome response."""

    def __init__(self, status: int, issues: list[dict[str, Any]], headers: dict[str, str] | None = None):
        super().__init__(issues[0]["diagnostics"] if issues else str(status))
        self.status = status
        self.issues = issues
        self.headers = headers or {}

    @classmethod
    def one(
        cls, status: int, code: str, diagnostics: str, *, expression: str | None = None
    ) -> FhirError:
        return cls(status, [issue(code, diagnostics, expression=expression)])


def invalid(diagnostics: str, expression: str | None = None) -> FhirError:
    return FhirError.one(400, "invalid", diagnostics, expression=expression)


def not_found(diagnostics: str) -> FhirError:
    return FhirError.one(404, "not-found", diagnostics)


def business_rule(diagnostics: str, expression: str | None = None) -> FhirError:
    return FhirError.one(422, "business-rule", diagnostics, expression=expression)


def conflict(diagnostics: str, expression: str | None = None) -> FhirError:
    return FhirError.one(409, "conflict", diagnostics, expression=expression)


def forbidden(diagnostics: str) -> FhirError:
    return FhirError.one(403, "forbidden", diagnostics)
