"""Spying on a kind's render: which resources a write read back to store them."""

from __future__ import annotations

from typing import Any

import pytest

from hifhir.fhir.registry import KINDS


def renders_of(monkeypatch: pytest.MonkeyPatch, kind_name: str) -> list[int]:
    """The pks the kind's `render_plan` is asked for from now on (the list fills as the test runs), with the check of
    a body a write built itself against the render (HIFHIR_VERIFY_PATCHES) off: only the write's own path renders."""
    kind_class = type(KINDS[kind_name])
    monkeypatch.setenv("HIFHIR_VERIFY_PATCHES", "0")
    asked: list[int] = []
    original = kind_class.render_plan

    def spy(self: Any, conn: Any, pks: list[int]) -> Any:
        asked.extend(pks)
        return original(self, conn, pks)

    monkeypatch.setattr(kind_class, "render_plan", spy)
    return asked
