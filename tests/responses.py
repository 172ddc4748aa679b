"""Assertions on API answers shared by the HTTP tests."""

from __future__ import annotations

from typing import Any

OO = "OperationOutcome"


def created(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 201, resp.text
    return resp.json()


def refused(resp: Any, *statuses: int, expression: str | None = None, text: str | None = None) -> dict[str, Any]:
    """A 4xx OperationOutcome with one of `statuses`, readable diagnostics and (optionally) an expression and a
    phrase in the first issue's diagnostics."""
    assert resp.status_code in statuses, f"{resp.status_code}: {resp.text}"
    body = resp.json()
    assert body["resourceType"] == OO
    issue = body["issue"][0]
    assert issue["severity"] in ("error", "fatal")
    assert len(issue.get("diagnostics", "")) > 10, body
    if expression is not None:
        exprs = [e for i in body["issue"] for e in i.get("expression", [])]
        assert any(expression in e for e in exprs), body
    if text is not None:
        assert text in issue["diagnostics"], body
    return body
