"""`_summary=true`: the top-level elements the profiles' snapshots flag isSummary."""

from __future__ import annotations

import functools
from pathlib import Path

import orjson

DEFINITIONS = Path(__file__).resolve().parent.parent / "data" / "ig" / "definitions"


@functools.cache
def summary_elements() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in DEFINITIONS.glob("StructureDefinition-*.json"):
        sd = orjson.loads(path.read_bytes())
        if sd.get("kind") != "resource":
            continue
        rtype = sd["type"]
        names = out.setdefault(rtype, set())
        for element in sd.get("snapshot", {}).get("element", []):
            parts = element["path"].split(".")
            if len(parts) == 2 and element.get("isSummary"):
                names.add(parts[1].replace("[x]", ""))
    return out
