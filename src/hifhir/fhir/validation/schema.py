"""Layer 1: base R4 structure, checked with ``jsonschema_rs`` against the official
HL7 FHIR R4 JSON schema (``data/fhir.schema.json.gz``, 4.0.1).

One validator is compiled per resource type, lazily, from ``#/definitions/<Type>`` plus
only the definitions reachable from it (measured: ~3 ms to compile instead of ~30 ms
with all 680 definitions attached, and the same ~5 µs per Patient validation).

The schema is patched in memory (never on disk) where it is weaker than FHIR JSON rules:

* ``ResourceList`` (contained / Bundle.entry.resource / Parameters.parameter.resource) is
  reduced to "an object with a resourceType": the 146-branch ``oneOf`` is slow and gives
  useless errors. Nested resources are validated separately with their own type's
  validator, which yields precise errors and paths.
* ``integer``/``positiveInt``/``unsignedInt`` are typed ``number`` with a regex that JSON
  schema ignores for numbers; they become ``integer`` with the R4 ranges.
* every array gets ``minItems: 1`` and every complex type ``minProperties: 1`` (FHIR JSON
  forbids empty arrays/objects; this is most of invariant ele-1).
* ``_x`` primitive-extension arrays may hold ``null`` (FHIR JSON aligns them with values).
* Extension: ``url`` is required and ext-1 (extension XOR value[x]) is encoded with
  ``dependencies``/``anyOf``; Narrative: ``status`` is required. These are the primitive
  1..1 elements of the data types the profiles use; the JSON schema only lists required
  complex elements (a primitive may legally appear as ``_x`` only).
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs

from hifhir.fhir.validation.issues import Issue, error

_SCHEMA_FILE = Path(__file__).resolve().parent.parent.parent / "data" / "fhir.schema.json.gz"
_DRAFT = "http://json-schema.org/draft-06/schema#"
# For validators shared by several types: draft 7 adds `if`/`then` (the dispatch on resourceType) and, otherwise,
# only keywords the R4 schema does not use (readOnly, $comment, content*); the R4 schema is draft 6.
_DRAFT_7 = "http://json-schema.org/draft-07/schema#"
_REF_RE = re.compile(r"#/definitions/([A-Za-z0-9_]+)")

# dateTime/instant with a time but without a time zone (accepted in lenient mode only).
DATETIME_NO_TZ_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")

_INT_RANGES: dict[str, dict[str, Any]] = {
    "integer": {"type": "integer", "minimum": -2147483648, "maximum": 2147483647},
    "positiveInt": {"type": "integer", "minimum": 1, "maximum": 2147483647},
    "unsignedInt": {"type": "integer", "minimum": 0, "maximum": 2147483647},
}


def _strip_descriptions(node: Any) -> Any:
    # Only the string annotations: "description" is also a FHIR element name in properties.
    if isinstance(node, dict):
        return {
            k: _strip_descriptions(v)
            for k, v in node.items()
            if not (k == "description" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_strip_descriptions(v) for v in node]
    return node


def _patch(defs: dict[str, Any]) -> None:
    # Choice-type primitives (valueDateTime, multipleBirthInteger...) are inlined copies of
    # the primitive definition; point them back to it so that the patches below apply and
    # errors can name the primitive type.
    prim_patterns = {
        name: d["pattern"] for name, d in defs.items() if "properties" not in d and "pattern" in d
    }
    for d in defs.values():
        for pname, p in d.get("properties", {}).items():
            pat = p.get("pattern")
            if pat is None:
                continue
            for prim, ppat in prim_patterns.items():
                if ppat == pat and pname.endswith(prim[0].upper() + prim[1:]):
                    d["properties"][pname] = {"$ref": f"#/definitions/{prim}"}
                    break
    defs["ResourceList"] = {
        "type": "object",
        "required": ["resourceType"],
        "properties": {"resourceType": {"type": "string"}},
    }
    for name, rng in _INT_RANGES.items():
        defs[name] = dict(rng)
    # a regex on a JSON boolean/number is ignored by JSON schema except to double-report a
    # string given instead ("True" would yield a type *and* a pattern error)
    for name in ("boolean", "decimal"):
        defs[name].pop("pattern", None)
    for d in defs.values():
        props = d.get("properties")
        if not isinstance(props, dict):
            continue
        if "resourceType" not in props:
            d["minProperties"] = 1
        for pname, p in props.items():
            if p.get("type") == "array":
                p["minItems"] = 1
                if pname.startswith("_") and "$ref" in p.get("items", {}):
                    p["items"] = {"oneOf": [{"type": "null"}, p["items"]]}
    for d in defs.values():
        props = d.get("properties")
        if not isinstance(props, dict):
            continue
        for pname, p in list(props.items()):
            # the FHIRVersion enum of the 4.0.1 schema stops at 4.0.0
            for holder in (p, p.get("items", {})):
                enum = holder.get("enum")
                if isinstance(enum, list) and "4.0.0" in enum and "4.0.1" not in enum:
                    enum.append("4.0.1")
            # the generator omitted `_x` for canonical-typed elements (72 of them, e.g.
            # StructureDefinition._baseDefinition), which SUSHI and HL7 tools do emit
            if pname.startswith("_") or f"_{pname}" in props:
                continue
            if p.get("$ref") == "#/definitions/canonical":
                props[f"_{pname}"] = {"$ref": "#/definitions/Element"}
            elif p.get("items", {}).get("$ref") == "#/definitions/canonical":
                props[f"_{pname}"] = {
                    "type": "array",
                    "minItems": 1,
                    "items": {"oneOf": [{"type": "null"}, {"$ref": "#/definitions/Element"}]},
                }
    # FHIR strings forbid control characters other than TAB/CR/LF; the schema's
    # `[ \r\n\t\S]` also rejects Unicode spaces (NBSP in pasted names, HL7's own
    # CodeSystems), a false positive for text fields.
    for name in ("string", "markdown"):
        defs[name]["pattern"] = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F]+$"
    ext = defs["Extension"]
    # `_valueDate` alone (a primitive value carried only by its extensions, e.g. a data-absent-reason) is a value too:
    # in FHIRPath, `value.exists()` holds for it.
    value_keys = [k for k in ext["properties"] if k.startswith(("value", "_value"))]
    ext["required"] = ["url"]
    ext["dependencies"] = {"extension": {"not": {"anyOf": [{"required": [k]} for k in value_keys]}}}
    ext["anyOf"] = [{"required": ["extension"]}] + [{"required": [k]} for k in value_keys]
    narrative = defs["Narrative"]
    narrative["required"] = sorted(set(narrative.get("required", [])) | {"status"})
    # The generator left `"type": "object"` off complex definitions, so a string or an array given where a
    # CodeableConcept or Reference belongs would pass (and crash the mapping later).
    for d in defs.values():
        if isinstance(d.get("properties"), dict):
            d.setdefault("type", "object")


class SchemaLayer:
    """Compiled, cached per-type JSON-schema validators plus error translation."""

    def __init__(self, schema_file: Path = _SCHEMA_FILE) -> None:
        with gzip.open(schema_file, "rb") as fh:
            schema = json.load(fh)
        defs: dict[str, Any] = _strip_descriptions(schema["definitions"])
        _patch(defs)
        self._defs = defs
        self.resource_types: frozenset[str] = frozenset(schema["discriminator"]["mapping"])
        self._refs: dict[str, frozenset[str]] = {
            name: frozenset(_REF_RE.findall(json.dumps(d))) for name, d in defs.items()
        }
        self._validators: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- schema navigation helpers used by the legacy normaliser -----------------------
    @property
    def definitions(self) -> dict[str, Any]:
        return self._defs

    def _reachable(self, root: str) -> dict[str, Any]:
        seen: set[str] = set()
        todo = [root]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo.extend(self._refs.get(name, ()))
        return {k: copy.deepcopy(self._defs[k]) for k in seen if k in self._defs}

    def validator(self, resource_type: str) -> Any:
        v = self._validators.get(resource_type)
        if v is None:
            with self._lock:
                v = self._validators.get(resource_type)
                if v is None:
                    v = jsonschema_rs.validator_for(
                        {
                            "$schema": _DRAFT,
                            "$ref": f"#/definitions/{resource_type}",
                            "definitions": self._reachable(resource_type),
                        }
                    )
                    self._validators[resource_type] = v
        return v

    def compile_together(self, resource_types: Iterable[str]) -> None:
        """From now on, validate these types with one validator. Each per-type validator compiles again every
        definition its type reaches — the datatypes and their patterns, most of them shared by all types: the 20
        types clients write take 21 MB a process that way, 7 MB in one validator (its `if` on resourceType costs
        ~1 µs a resource). Per-type validators keep serving every other type."""
        types = sorted(set(resource_types) & self.resource_types)
        if not types:
            return
        definitions: dict[str, Any] = {}
        for resource_type in types:
            definitions.update(self._reachable(resource_type))
        shared = jsonschema_rs.validator_for({
            "$schema": _DRAFT_7,
            "definitions": definitions,
            "allOf": [{"if": {"properties": {"resourceType": {"const": t}}, "required": ["resourceType"]},
                       "then": {"$ref": f"#/definitions/{t}"}} for t in types],
        })
        with self._lock:
            for resource_type in types:
                self._validators[resource_type] = shared

    # -- validation ---------------------------------------------------------------------
    def validate(self, resource: Any, prefix: str | None = None, *, lenient: bool = False) -> list[Issue]:
        """Validate a resource (and, recursively, the resources nested in it)."""
        issues: list[Issue] = []
        self._validate(resource, prefix, lenient, issues)
        return issues

    def _validate(self, resource: Any, prefix: str | None, lenient: bool, issues: list[Issue]) -> None:
        if not isinstance(resource, dict):
            issues.append(error("structure", prefix or "Resource", "A resource must be a JSON object"))
            return
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or rtype not in self.resource_types:
            issues.append(
                error(
                    "structure",
                    f"{prefix}.resourceType" if prefix else "resourceType",
                    f"Unknown or missing resourceType {rtype!r}",
                )
            )
            return
        root = prefix or rtype
        v = self.validator(rtype)
        try:
            if not v.is_valid(resource):
                # jsonschema_rs builds every error up front, ~1-3 ms each (an anyOf error carries its alternatives):
                # a large invalid body (20,000 bad extensions: a minute of CPU) only gets its first error.
                errors = v.iter_errors(resource) if not _larger_than(resource, _FULL_REPORT_NODES) \
                    else _first_error(v, resource)
                for err in errors:
                    issue = self._translate(err, root, lenient)
                    if issue is not None:
                        issues.append(issue)
        except ValueError:  # jsonschema_rs gives up on very deep nesting (orjson accepts 1,024 levels)
            issues.append(error("structure", root, "The resource is nested too deeply"))
            return
        for path, nested in nested_resources(resource, root):
            self._validate(nested, path, lenient, issues)

    def _translate(self, err: Any, root: str, lenient: bool) -> Issue | None:
        path = expression(root, err.instance_path)
        kind = err.kind
        name = kind.name
        schema_path = err.schema_path
        defname = _last_definition(schema_path)
        inst = err.instance
        if name == "additionalProperties":
            props = ", ".join(f"'{p}'" for p in kind.unexpected)
            first = kind.unexpected[0] if len(kind.unexpected) == 1 else None
            where = f"{path}.{first}" if first else path
            return error("structure", where, f"Unrecognised element(s) {props} at {path}")
        if name == "required":
            return error(
                "required", f"{path}.{kind.property}", f"Missing required element '{kind.property}' at {path}"
            )
        if name == "type":
            expected = " or ".join(str(t) for t in kind.types) if hasattr(kind, "types") else "?"
            got = _json_type(inst)
            if "array" in expected and got == "object":
                msg = f"{path} must be a JSON array (repeating element), got an object"
            else:
                what = f" ({defname})" if defname and defname[0].islower() else ""
                msg = f"Wrong JSON type at {path}: expected {expected}{what}, got {got}"
            return error("value", path, msg)
        if name == "pattern":
            if (
                lenient
                and defname in ("dateTime", "instant")
                and isinstance(inst, str)
                and DATETIME_NO_TZ_RE.match(inst)
            ):
                return None  # already reported as a warning by normalise_legacy
            return error("value", path, f"Invalid {defname or 'value'} {inst!r} at {path}")
        if name == "enum":
            opts = ", ".join(str(o) for o in kind.options)
            return error("code-invalid", path, f"Code {inst!r} is not allowed at {path} (allowed: {opts})")
        if name == "constant":
            return error("invalid", path, f"Value {inst!r} at {path} is not the expected one")
        if name in ("minimum", "maximum"):
            return error(
                "value", path, f"Value {inst!r} at {path} is out of range for {defname or 'integer'}"
            )
        if name == "minItems":
            return error("structure", path, f"Empty array at {path} (FHIR JSON arrays must not be empty)")
        if name == "minProperties":
            return error(
                "structure",
                path,
                f"Empty object at {path} (ele-1: all FHIR elements must have a value or children)",
            )
        if defname == "Extension" and name in ("anyOf", "not"):
            return error(
                "invariant",
                path,
                f"ext-1: extension at {path} must have either extensions or value[x], not both",
            )
        return error("invalid", path, f"{path}: {err.message}")


def _last_definition(schema_path: list[Any]) -> str | None:
    for i in range(len(schema_path) - 2, -1, -1):
        if schema_path[i] == "definitions":
            return str(schema_path[i + 1])
    return None


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def expression(root: str, instance_path: list[Any]) -> str:
    """``["name", 0, "family"]`` -> ``Patient.name[0].family``."""
    parts = [root]
    for p in instance_path:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(f".{p}")
    return "".join(parts)


def nested_resources(resource: dict[str, Any], root: str) -> Iterator[tuple[str, Any]]:
    """Resources embedded in a resource, with their FHIRPath-like location."""
    contained = resource.get("contained")
    if isinstance(contained, list):
        for i, r in enumerate(contained):
            yield f"{root}.contained[{i}]", r
    rtype = resource.get("resourceType")
    if rtype == "Bundle":
        entries = resource.get("entry")
        if isinstance(entries, list):
            for i, e in enumerate(entries):
                if not isinstance(e, dict):
                    continue
                if "resource" in e:
                    yield f"{root}.entry[{i}].resource", e["resource"]
                resp = e.get("response")
                if isinstance(resp, dict) and "outcome" in resp:
                    yield f"{root}.entry[{i}].response.outcome", resp["outcome"]
    elif rtype == "Parameters":
        yield from _parameter_resources(resource.get("parameter"), f"{root}.parameter")


def _parameter_resources(params: Any, base: str) -> Iterator[tuple[str, Any]]:
    if not isinstance(params, list):
        return
    for i, p in enumerate(params):
        if not isinstance(p, dict):
            continue
        if "resource" in p:
            yield f"{base}[{i}].resource", p["resource"]
        yield from _parameter_resources(p.get("part"), f"{base}[{i}].part")


_FULL_REPORT_NODES = 2000  # JSON values in a body up to which an invalid body gets every schema error reported


def _larger_than(value: Any, limit: int) -> bool:
    """Whether the JSON value has more than `limit` values in all (stops counting there)."""
    stack, n = [value], 0
    while stack:
        item = stack.pop()
        n += 1
        if n > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _first_error(v: Any, resource: Any) -> list[Any]:
    try:
        v.validate(resource)
    except jsonschema_rs.ValidationError as err:
        return [err]
    return []


_layer: SchemaLayer | None = None
_layer_lock = threading.Lock()


def get_schema_layer() -> SchemaLayer:
    global _layer
    if _layer is None:
        with _layer_lock:
            if _layer is None:
                _layer = SchemaLayer()
    return _layer
