"""Layer 2: StructureDefinition-driven validation (IG profiles and base R4 resources).

Each StructureDefinition snapshot is compiled once, lazily, into a tree of :class:`Node`
(the "check plan"): cardinalities, types and choice types, fixed/pattern values, required
bindings, invariants (compiled FHIRPath) and slicing with pre-resolved discriminators.
Validation then walks the resource along that tree; nothing is interpreted per request.

Scope and deliberate limits (no false positives is preferred to completeness):

* Only what the snapshot expands is checked: a data type element that the snapshot does
  not unfold (e.g. ``Patient.identifier.period``) gets only the base JSON-schema checks.
* ``contentReference`` elements (e.g. ``Contract.term.group``) are checked for their own
  cardinality only, not recursively.
* Slicing discriminators supported: ``value``/``pattern`` (paths through children,
  ``extension[slice]`` filters, choice names, into fixed/pattern values), ``exists`` and
  ``type``. A discriminator that cannot be resolved from the snapshot disables checks of
  that slicing (logged once) rather than guessing.
* Extension slices are matched on their ``type[0].profile[0]`` URL (SUSHI snapshots do not
  carry a fixed ``url`` on the slice) and the matching extension StructureDefinition from
  ``data/ig/definitions`` then validates the extension (value[x] type, sub-extensions,
  cardinalities). Unsliced extensions whose URL is an IG extension are validated too;
  unknown extension URLs are accepted.
* Reference targets (``targetProfile``) are not resolved; that is the store's concern.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hifhir.fhir.validation import corrections
from hifhir.fhir.validation.fhirpath import UnsupportedExpression, compile_expression, evaluate
from hifhir.fhir.validation.issues import Issue
from hifhir.fhir.validation.terminology import ValueSetIndex, get_index

log = logging.getLogger(__name__)

_DATA = Path(__file__).resolve().parent.parent.parent / "data"
_IG_DEFINITIONS = _DATA / "ig" / "definitions"
_BASE_STRUCTURE = _DATA / "base-structure.json.gz"

# Invariants handled natively or knowingly skipped (see fhirpath.py docstring).
_NATIVE_OR_SKIPPED = frozenset({"ele-1", "ext-1", "dom-3", "dom-6"})

# All R4 data type names as they appear as choice-type suffixes (valueString...).
_TYPE_NAMES = [
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "markdown",
    "oid",
    "positiveInt",
    "string",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "Coding",
    "ContactPoint",
    "Count",
    "Distance",
    "Duration",
    "HumanName",
    "Identifier",
    "Money",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "SampledData",
    "Signature",
    "Timing",
    "ContactDetail",
    "Contributor",
    "DataRequirement",
    "Expression",
    "ParameterDefinition",
    "RelatedArtifact",
    "TriggerDefinition",
    "UsageContext",
    "Dosage",
    "Meta",
]
_SUFFIX_TO_TYPE = {t[0].upper() + t[1:]: t for t in _TYPE_NAMES}


# ---------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Constraint:
    key: str
    severity: str
    human: str
    fn: Any


@dataclass(slots=True, eq=False)
class Discriminator:
    kind: str  # value | exists | type
    names: tuple[str, ...]  # instance path, e.g. ("extension", "valueCodeableConcept", ...)
    slice_names: tuple[str | None, ...]  # "type" for an `extension[type]` step
    url_filters: tuple[str | None, ...] = ()  # resolved extension URL for those steps

    def values(self, item: Any) -> list[Any]:
        """The instance values the discriminator path selects in ``item``."""
        items = [item]
        for name, url in zip(self.names, self.url_filters, strict=True):
            nxt: list[Any] = []
            for it in items:
                if not isinstance(it, dict):
                    continue
                v = it.get(name)
                if v is None:
                    continue
                if isinstance(v, list):
                    if url is None:
                        nxt.extend(v)
                    else:
                        nxt.extend(x for x in v if isinstance(x, dict) and x.get("url") == url)
                elif url is None or (isinstance(v, dict) and v.get("url") == url):
                    nxt.append(v)
            items = nxt
        return items


@dataclass(slots=True, eq=False)
class SliceMatcher:
    """Pre-resolved expectations of one slice for each discriminator of the slicing."""

    node: Node
    expected: list[Any]  # per discriminator: list of values / bool / frozenset of type suffixes


@dataclass(slots=True, eq=False)
class Slicing:
    rules: str
    discriminators: list[Discriminator]
    matchers: list[SliceMatcher]
    usable: bool
    extra_values: frozenset[str] = frozenset()  # IG correction: accepted unmatched values
    # single `value` discriminator whose slices all expect strings: value -> slice indexes
    index: dict[str, list[int]] | None = None

    def candidates(self, item: Any) -> list[int]:
        """Indexes of the slices ``item`` matches, in slice order."""
        if self.index is not None:
            out: list[int] = []
            for v in self.discriminators[0].values(item):
                if isinstance(v, str):
                    for j in self.index.get(v, ()):
                        if j not in out:
                            out.append(j)
            if len(out) > 1:
                out.sort()
            return out
        vals = [d.values(item) if d.names else [item] for d in self.discriminators]
        return [j for j, m in enumerate(self.matchers) if _matches_slice(item, self, m, vals)]


@dataclass(slots=True, eq=False)
class Node:
    id: str
    name: str
    min: int
    max: int | None  # None = unbounded
    is_array: bool
    types: tuple[str, ...]
    choice_base: str | None = None
    allowed_suffixes: frozenset[str] = frozenset()
    type_profiles: tuple[str, ...] = ()
    fixed: Any = None
    has_fixed: bool = False
    pattern: Any = None
    has_pattern: bool = False
    binding: str | None = None
    constraints: list[Constraint] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)
    slices: list[Node] = field(default_factory=list)
    slicing_def: dict[str, Any] | None = None
    slicing: Slicing | None = None
    slice_name: str | None = None
    # derived, see _Compiler._finalise
    required: list[Node] = field(default_factory=list)
    required_choices: list[Node] = field(default_factory=list)
    by_key: dict[str, Node] = field(default_factory=dict)
    value_checks: bool = False
    is_extension: bool = False
    ext_profile: str | None = None

    def child(self, name: str) -> Node | None:
        for c in self.children:
            if c.name == name:
                return c
        return None


def _split_id(eid: str) -> list[str]:
    return eid.split(".")


def _fixed_or_pattern(el: dict[str, Any]) -> tuple[str | None, Any]:
    for k, v in el.items():
        if k.startswith("fixed"):
            return "fixed", v
        if k.startswith("pattern"):
            return "pattern", v
    return None, None


class _Compiler:
    def __init__(self, sd: dict[str, Any], registry: ProfileRegistry) -> None:
        self.sd = sd
        self.url: str = sd["url"]
        self.registry = registry

    def compile(self) -> Node:
        nodes: dict[str, Node] = {}
        root: Node | None = None
        for el in self.sd["snapshot"]["element"]:
            node = self._node(el)
            nodes[node.id] = node
            segs = _split_id(node.id)
            if len(segs) == 1:
                root = node
                continue
            last = segs[-1]
            if ":" in last:
                base_id = ".".join([*segs[:-1], last.split(":", 1)[0]])
                parent = nodes.get(base_id)
                if parent is not None:
                    parent.slices.append(node)
                continue
            parent = nodes.get(".".join(segs[:-1]))
            if parent is not None:
                parent.children.append(node)
        if root is None:
            raise ValueError(f"{self.url}: snapshot without root element")
        self._finalise(root)
        return root

    def _node(self, el: dict[str, Any]) -> Node:
        eid: str = el["id"]
        last = _split_id(eid)[-1]
        name = last.split(":", 1)[0]
        max_s = el.get("max", "*")
        override = corrections.MAX_OVERRIDES.get((self.url, eid))
        if override is not None:
            max_s = override
        base_max = el.get("base", {}).get("max", max_s)
        types = tuple(t["code"] for t in el.get("type", []))
        node = Node(
            id=eid,
            name=name,
            min=int(el.get("min", 0)),
            max=None if max_s == "*" else int(max_s),
            is_array=base_max != "1",
            types=types,
            slice_name=el.get("sliceName"),
        )
        if name.endswith("[x]"):
            node.choice_base = name[:-3]
            node.allowed_suffixes = frozenset(t[0].upper() + t[1:] for t in types)
        profiles: list[str] = []
        for t in el.get("type", []):
            profiles.extend(t.get("profile", []))
        node.type_profiles = tuple(profiles)
        kind, value = _fixed_or_pattern(el)
        if kind == "fixed":
            node.fixed, node.has_fixed = value, True
        elif kind == "pattern":
            node.pattern, node.has_pattern = value, True
        b = el.get("binding")
        if b and b.get("strength") == "required" and b.get("valueSet"):
            node.binding = b["valueSet"].split("|", 1)[0]
        for c in el.get("constraint", []):
            key = c.get("key", "")
            if key in _NATIVE_OR_SKIPPED or not c.get("expression"):
                continue
            if any(
                self.url == u and (eid == p or eid.startswith(p + ".")) and key == k
                for u, p, k in corrections.SKIPPED_CONSTRAINTS
            ):
                continue
            try:
                fn = compile_expression(c["expression"])
            except UnsupportedExpression:
                log.debug("skipping unsupported invariant %s on %s", key, eid)
                continue
            node.constraints.append(Constraint(key, c.get("severity", "error"), c.get("human", ""), fn))
        if el.get("slicing"):
            node.slicing_def = el["slicing"]
        return node

    def _finalise(self, node: Node) -> None:
        for c in node.children:
            self._finalise(c)
        for s in node.slices:
            self._finalise(s)
        if node.slicing_def is not None:
            node.slicing = self._slicing(node)
        node.is_extension = "Extension" in node.types
        if node.is_extension and node.type_profiles:
            node.ext_profile = node.type_profiles[0]
        node.value_checks = bool(node.has_fixed or node.has_pattern or node.binding or node.constraints)
        node.required = [c for c in node.children if c.min > 0 and c.choice_base is None]
        node.required_choices = [c for c in node.children if c.min > 0 and c.choice_base is not None]
        # Only children with something to check are looked up while walking: a plain
        # optional element of unbounded/base cardinality needs nothing beyond layer 1.
        for c in node.children:
            if c.choice_base is not None:
                # every possible valueX key, so that a type the profile forbids is caught
                for suffix in _SUFFIX_TO_TYPE:
                    node.by_key[c.choice_base + suffix] = c
            elif (
                c.max == 0
                or (c.is_array and c.max is not None)
                or c.value_checks
                or c.children
                or c.is_extension
                or c.slicing is not None
            ):
                node.by_key[c.name] = c

    # -- slicing ------------------------------------------------------------------------
    def _slicing(self, node: Node) -> Slicing:
        sdef = node.slicing_def or {}
        discs: list[Discriminator] = []
        usable = True
        for d in sdef.get("discriminator", []):
            kind = d.get("type", "value")
            if kind == "pattern":
                kind = "value"
            segs = _parse_disc_path(d.get("path", "$this"))
            disc = Discriminator(kind, tuple(n for n, _ in segs), tuple(s for _, s in segs))
            filters = _resolve_url_filters(disc, node.slices)
            if filters is None:
                usable = False
                filters = tuple(None for _ in segs)
            disc.url_filters = filters
            discs.append(disc)
        if not discs or kind_unsupported(discs):
            usable = False
        matchers: list[SliceMatcher] = []
        for s in node.slices:
            expected: list[Any] = []
            for d in discs:
                exp = _resolve_expected(s, d)
                if exp is None:
                    usable = False
                    log.debug("%s: cannot resolve discriminator for slice %s", self.url, s.id)
                expected.append(exp)
            matchers.append(SliceMatcher(s, expected))
        if not usable:
            log.info("%s: slicing of %s not checked (unresolvable discriminator)", self.url, node.id)
        extra = corrections.CLOSED_SLICING_EXTRA_VALUES.get((self.url, node.id), frozenset())
        slicing = Slicing(sdef.get("rules", "open"), discs, matchers, usable, extra)
        if (
            usable
            and len(discs) == 1
            and discs[0].kind == "value"
            and discs[0].names
            and all(isinstance(v, str) for m in matchers for v in m.expected[0])
        ):
            index: dict[str, list[int]] = {}
            for j, m in enumerate(matchers):
                for v in m.expected[0]:
                    index.setdefault(v, []).append(j)
            slicing.index = index
        return slicing


def kind_unsupported(discs: list[Discriminator]) -> bool:
    return any(d.kind not in ("value", "exists", "type") for d in discs)


def _parse_disc_path(path: str) -> list[tuple[str, str | None]]:
    """``extension[type].valueCodeableConcept.coding.code`` -> [(name, slice name)...]."""
    if path == "$this":
        return []
    segs: list[tuple[str, str | None]] = []
    for raw in path.split("."):
        if raw.startswith("extension(") and raw.endswith(")"):
            # FHIRPath form extension('url'): keep the URL itself as the "slice name"
            segs.append(("extension", "url:" + raw[len("extension(") : -1].strip("'\"")))
        elif "[" in raw and raw.endswith("]") and not raw.endswith("[x]"):
            name, sl = raw[:-1].split("[", 1)
            segs.append((name, sl))
        else:
            segs.append((raw, None))
    return segs


def _extension_url(node: Node) -> str | None:
    if node.type_profiles:
        return node.type_profiles[0]
    url = node.child("url")
    if url is not None and url.has_fixed:
        return str(url.fixed)
    return None


def _find_child(node: Node, name: str) -> Node | None:
    c = node.child(name)
    if c is not None:
        return c
    for ch in node.children:
        if ch.choice_base is not None and (
            name == ch.name
            or (name.startswith(ch.choice_base) and name[len(ch.choice_base) :] in ch.allowed_suffixes)
        ):
            return ch
    return None


def _resolve_url_filters(d: Discriminator, slices: list[Node]) -> tuple[str | None, ...] | None:
    """For ``extension[name]`` steps: the URL of the extension slice ``name`` (the same in
    every slice of the slicing, as the path is common). None if unresolvable."""
    out: list[str | None] = []
    for i, sl in enumerate(d.slice_names):
        if sl is None:
            out.append(None)
            continue
        if sl.startswith("url:"):
            out.append(sl[4:])
            continue
        url: str | None = None
        for s in slices:
            node: Node | None = s
            for name in d.names[:i]:
                node = _find_child(node, name) if node is not None else None
            ext = _find_child(node, d.names[i]) if node is not None else None
            sub = next((x for x in ext.slices if x.slice_name == sl), None) if ext else None
            url = _extension_url(sub) if sub is not None else None
            if url is not None:
                break
        if url is None:
            return None
        out.append(url)
    return tuple(out)


def _resolve_expected(slice_node: Node, d: Discriminator) -> Any:
    """What the discriminator path must yield for an item to belong to ``slice_node``."""
    node: Node | None = slice_node
    names = d.names
    if d.kind == "value" and names == ("url",) and slice_node.ext_profile:
        # SUSHI extension slices carry the extension's URL as type profile only
        return [slice_node.ext_profile]
    for i, name in enumerate(names):
        assert node is not None
        if node.has_fixed or node.has_pattern:
            return _values_at(node.fixed if node.has_fixed else node.pattern, names[i:])
        nxt = _find_child(node, name)
        if nxt is None:
            return None
        sl = d.slice_names[i]
        if sl is not None:
            if sl.startswith("url:"):
                nxt = next((x for x in nxt.slices if _extension_url(x) == sl[4:]), None)
            else:
                nxt = next((x for x in nxt.slices if x.slice_name == sl), None)
            if nxt is None:
                return None
        node = nxt
    assert node is not None
    if d.kind == "exists":
        if node.min >= 1:
            return True
        if node.max == 0:
            return False
        return None
    if d.kind == "type":
        return node.allowed_suffixes or None
    if node.has_fixed or node.has_pattern:
        return [node.fixed if node.has_fixed else node.pattern]
    return None


def _values_at(value: Any, names: tuple[str, ...]) -> list[Any]:
    items = [value]
    for name in names:
        nxt: list[Any] = []
        for it in items:
            if isinstance(it, dict) and name in it:
                v = it[name]
                nxt.extend(v if isinstance(v, list) else [v])
        items = nxt
    return items


# ---------------------------------------------------------------------------------------
# matching helpers
# ---------------------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def pattern_matches(pattern: Any, value: Any) -> bool:
    """FHIR pattern semantics: the value contains everything the pattern has (recursively;
    every pattern array item must match some value array item)."""
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(k in value and pattern_matches(pv, value[k]) for k, pv in pattern.items())
    if isinstance(pattern, list):
        vals = value if isinstance(value, list) else [value]
        return all(any(pattern_matches(p, v) for v in vals) for p in pattern)
    return _same(pattern, value)


def _fixed_matches(fixed: Any, value: Any) -> bool:
    if isinstance(fixed, dict):
        return (
            isinstance(value, dict)
            and fixed.keys() == value.keys()
            and all(_fixed_matches(fixed[k], value[k]) for k in fixed)
        )
    if isinstance(fixed, list):
        return (
            isinstance(value, list)
            and len(fixed) == len(value)
            and all(_fixed_matches(f, v) for f, v in zip(fixed, value, strict=True))
        )
    return _same(fixed, value)


def _matches_slice(item: Any, slicing: Slicing, m: SliceMatcher, vals: list[list[Any]]) -> bool:
    for d, exp, dvals in zip(slicing.discriminators, m.expected, vals, strict=True):
        if d.kind == "exists":
            if bool(dvals) is not exp:
                return False
        elif d.kind == "type":
            if not isinstance(item, dict) or len(d.names) != 1:
                return False
            base = d.names[0]
            base = base[:-3] if base.endswith("[x]") else base
            if not any(base + suffix in item for suffix in exp):
                return False
        elif not any(pattern_matches(e, v) for e in exp for v in dvals):
            return False
    return True


def _type_label(suffix: str) -> str:
    return _SUFFIX_TO_TYPE.get(suffix, suffix)


# ---------------------------------------------------------------------------------------
# walker
# ---------------------------------------------------------------------------------------


class _Walk:
    __slots__ = ("issues", "registry", "resource", "vs")

    def __init__(self, resource: dict[str, Any], registry: ProfileRegistry, vs: ValueSetIndex) -> None:
        self.issues: list[Issue] = []
        self.resource = resource
        self.registry = registry
        self.vs = vs

    def err(self, code: str, expr: str, msg: str, severity: str = "error") -> None:
        self.issues.append(Issue(severity, code, expr, msg))

    # -- element level --------------------------------------------------------------------
    def children(self, node: Node, obj: dict[str, Any], path: str) -> None:
        for c in node.required:
            if c.name not in obj and ("_" + c.name) not in obj:
                self.err(
                    "required",
                    f"{path}.{c.name}",
                    f"{path}.{c.name}: minimum required = {c.min}, but only found 0",
                )
        by_key = node.by_key
        choices: list[tuple[Node, str]] | None = None
        for k, v in obj.items():
            c = by_key.get(k)
            if c is None:
                if k[:1] == "_" and k[1:] not in obj:
                    # a primitive present only through its extension (`_status`)
                    c = by_key.get(k[1:])
                    if c is not None:
                        if c.choice_base is not None:
                            choices = choices or []
                            choices.append((c, k[1:]))
                        elif c.max == 0:
                            self.err(
                                "structure",
                                f"{path}.{k[1:]}",
                                f"{path}.{k[1:]} is not allowed by the profile (max = 0)",
                            )
                continue
            if c.choice_base is not None:
                choices = choices or []
                choices.append((c, k))
                continue
            self.element(c, v, f"{path}.{k}")
        if choices is not None:
            self.choices(choices, obj, path)
        for c in node.required_choices:
            if choices is None or not any(cc is c for cc, _ in choices):
                self.err(
                    "required",
                    f"{path}.{c.name}",
                    f"{path}.{c.name}: minimum required = {c.min}, but only found 0",
                )

    def element(self, c: Node, v: Any, epath: str) -> None:
        items = v if isinstance(v, list) else [v]
        n = len(items)
        if c.max == 0:
            self.err("structure", epath, f"{epath} is not allowed by the profile (max = 0)")
            return
        if n < c.min:
            self.err("required", epath, f"{epath}: minimum required = {c.min}, but only found {n}")
        if c.max is not None and n > c.max:
            self.err("structure", epath, f"{epath}: maximum allowed = {c.max}, but found {n}")
        indexed = isinstance(v, list)
        slicing = c.slicing
        if slicing is not None and slicing.usable:
            self.sliced(c, slicing, items, epath, indexed)
            return
        if c.value_checks or c.children or c.is_extension:
            if indexed:
                for i, it in enumerate(items):
                    self.item(c, it, f"{epath}[{i}]", None, False)
            else:
                self.item(c, v, epath, None, False)

    def choices(self, found: list[tuple[Node, str]], obj: dict[str, Any], path: str) -> None:
        by_node: dict[int, list[str]] = {}
        nodes: dict[int, Node] = {}
        for c, k in found:
            by_node.setdefault(id(c), []).append(k)
            nodes[id(c)] = c
        for nid, keys in by_node.items():
            c = nodes[nid]
            base = c.choice_base
            assert base is not None
            bl = len(base)
            if c.max == 0:
                self.err(
                    "structure",
                    f"{path}.{keys[0]}",
                    f"{path}.{c.name} is not allowed by the profile (max = 0)",
                )
                continue
            if len(keys) > 1:
                self.err(
                    "structure",
                    f"{path}.{keys[1]}",
                    f"Only one {c.name} is allowed at {path}, found {', '.join(keys)}",
                )
            for k in keys:
                suffix = k[bl:]
                epath = f"{path}.{k}"
                if suffix not in c.allowed_suffixes:
                    allowed = ", ".join(sorted(_type_label(s) for s in c.allowed_suffixes))
                    self.err(
                        "structure",
                        epath,
                        f"Type {_type_label(suffix)} is not allowed for {c.name} at {path} "
                        f"(allowed: {allowed})",
                    )
                    continue
                v = obj.get(k)
                if v is not None and (c.value_checks or c.children):
                    self.item(c, v, epath, _SUFFIX_TO_TYPE.get(suffix), False)

    def item(self, node: Node, it: Any, ipath: str, ctype: str | None, claimed: bool) -> None:
        """Check one value against ``node``. ``claimed``: an extension slice will validate
        this extension against its definition, so do not do it again here."""
        if node.value_checks:
            if node.has_fixed and not _fixed_matches(node.fixed, it):
                self.err(
                    "value",
                    ipath,
                    f"Value at {ipath} must be exactly {json.dumps(node.fixed)}, found {json.dumps(it)}",
                )
            if node.has_pattern and not pattern_matches(node.pattern, it):
                self.err(
                    "value",
                    ipath,
                    f"Value at {ipath} must match the pattern {json.dumps(node.pattern)}, "
                    f"found {json.dumps(it)}",
                )
            if node.binding is not None:
                self.binding(node, it, ipath, ctype)
            for con in node.constraints:
                if evaluate(con.fn, it, self.resource) is False:
                    sev = "error" if con.severity == "error" else "warning"
                    self.err("invariant", ipath, f"Constraint failed: {con.key}: {con.human}", sev)
        if not isinstance(it, dict):
            return
        if node.ext_profile is not None:
            ext_root = self.registry.get(node.ext_profile)
            if ext_root is not None:
                self.item(ext_root, it, ipath, None, True)
                claimed = True
        if node.children:
            self.children(node, it, ipath)
        elif node.is_extension and not claimed:
            # an extension no slice claims: validate it if it is one of the IG's extensions
            url = it.get("url")
            if isinstance(url, str):
                ext_root = self.registry.get_extension(url)
                if ext_root is not None:
                    self.item(ext_root, it, ipath, None, True)

    def sliced(self, c: Node, slicing: Slicing, items: list[Any], epath: str, indexed: bool) -> None:
        matchers = slicing.matchers
        counts = [0] * len(matchers)
        base_checks = c.value_checks or bool(c.children)
        for i, it in enumerate(items):
            ipath = f"{epath}[{i}]" if indexed else epath
            cands = slicing.candidates(it)
            # Several slices may share the same discriminator value: the IG reuses one
            # extension for e.g. Coverage enrollDate/effectiveDate (both coverage-date) and
            # the four InsurancePlan periods. Such slices cannot be told apart, so items
            # fill them in order, each up to its max.
            hit = -1
            for j in cands:
                if hit < 0:
                    hit = j
                mx = matchers[j].node.max
                if mx is None or counts[j] < mx:
                    hit = j
                    break
            if hit < 0:
                if slicing.rules == "closed" and not self._extra_ok(slicing, it):
                    self.err(
                        "structure",
                        ipath,
                        f"{ipath} does not match any slice defined by the profile and the slicing is closed",
                    )
                self.item(c, it, ipath, None, False)
                continue
            counts[hit] += 1
            s = matchers[hit].node
            if s.children:
                self.item(s, it, ipath, None, False)
            else:
                if base_checks:
                    self.item(c, it, ipath, None, True)
                self.item(s, it, ipath, None, False)
        for j, m in enumerate(matchers):
            s = m.node
            n = counts[j]
            if n < s.min:
                self.err(
                    "required",
                    epath,
                    f"{epath}: slice '{s.slice_name}' requires at least {s.min} item(s), found {n}",
                )
            if s.max is not None and n > s.max:
                self.err(
                    "structure",
                    epath,
                    f"{epath}: slice '{s.slice_name}' allows at most {s.max} item(s), found {n}",
                )

    def _extra_ok(self, slicing: Slicing, it: Any) -> bool:
        if not slicing.extra_values or not slicing.discriminators:
            return False
        vals = slicing.discriminators[0].values(it)
        return any(v in slicing.extra_values for v in vals if isinstance(v, str))

    # -- terminology ----------------------------------------------------------------------
    def binding(self, node: Node, it: Any, ipath: str, ctype: str | None) -> None:
        url = node.binding
        assert url is not None
        pairs = self.vs.codes(url)
        if pairs is None:
            return  # unknown / unexpandable value set: never guess
        codes = self.vs.code_values(url) or frozenset()
        t = ctype or (node.types[0] if len(node.types) == 1 else None)
        if isinstance(it, str):
            if it not in codes:
                self.err(
                    "code-invalid", ipath, f"Code '{it}' at {ipath} is not in the required value set {url}"
                )
            return
        if not isinstance(it, dict):
            return
        if t == "Coding" or (t is None and "code" in it):
            if not _coding_ok(it, pairs, codes):
                self.err(
                    "code-invalid",
                    ipath,
                    f"Coding {_show(it)} at {ipath} is not in the required value set {url}",
                )
            return
        if t == "CodeableConcept" or (t is None and ("coding" in it or "text" in it)):
            codings = it.get("coding") or []
            if not isinstance(codings, list):
                return  # a wrong JSON type: the schema layer reports it
            if not codings:
                self.err(
                    "code-invalid",
                    ipath,
                    f"{ipath} has no coding from the required value set {url} (text alone is not enough)",
                )
                return
            if not any(isinstance(cd, dict) and _coding_ok(cd, pairs, codes) for cd in codings):
                shown = ", ".join(_show(cd) for cd in codings if isinstance(cd, dict))
                self.err(
                    "code-invalid",
                    ipath,
                    f"None of the codings {shown} at {ipath} is in the required value set {url}",
                )
            return
        if t == "Quantity" and "code" in it and not _coding_ok(it, pairs, codes):
            self.err(
                "code-invalid",
                ipath,
                f"Unit {_show(it)} at {ipath} is not in the required value set {url}",
            )


def _coding_ok(cd: dict[str, Any], pairs: frozenset[tuple[str, str]], codes: frozenset[str]) -> bool:
    code = cd.get("code")
    if not isinstance(code, str):
        return False
    system = cd.get("system")
    if system is None:
        return code in codes  # no system given: accept a code of the set (lenient)
    if not isinstance(system, str):
        return False  # a wrong JSON type (the schema layer reports it); unhashable besides
    return (system, code) in pairs


def _show(cd: dict[str, Any]) -> str:
    s = cd.get("system")
    return f"{s}#{cd.get('code')}" if s else f"#{cd.get('code')}"


# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Definition:
    type: str
    kind: str | None
    path: Path


class ProfileRegistry:
    """IG StructureDefinitions and base resource definitions, compiled on first use."""

    def __init__(self, ig_dir: Path = _IG_DEFINITIONS, base_file: Path = _BASE_STRUCTURE) -> None:
        # Only what lookups need stays in memory (url → type, kind, file); a definition's body (snapshots: ~7 MB for
        # the IG, ~15 MB for the base resources) is read to compile it and then dropped, since every worker would
        # otherwise hold it for its lifetime.
        self._sds: dict[str, _Definition] = {}
        for p in sorted(ig_dir.glob("StructureDefinition-*.json")):
            sd = json.loads(p.read_text())
            self._sds[sd["url"]] = _Definition(str(sd.get("type")), sd.get("kind"), p)
        self._base_file = base_file
        self._base: dict[str, dict[str, Any]] | None = None
        self._plans: dict[str, Node | None] = {}
        self._lock = threading.RLock()
        self._extension_urls = frozenset(u for u, d in self._sds.items() if d.type == "Extension")

    # -- lookup ---------------------------------------------------------------------------
    def structure_definition(self, url: str) -> dict[str, Any] | None:
        definition = self._sds.get(url.split("|", 1)[0])
        return None if definition is None else json.loads(definition.path.read_text())

    def profiles_for_type(self, resource_type: str) -> list[str]:
        return sorted(u for u, d in self._sds.items() if d.type == resource_type and d.kind == "resource")

    def resource_profiles(self) -> list[str]:
        """All IG profiles of resources (not extensions)."""
        return sorted(u for u, d in self._sds.items() if d.kind == "resource")

    def resource_type_of(self, url: str) -> str | None:
        definition = self._sds.get(url.split("|", 1)[0])
        return None if definition is None else definition.type

    def _base_sds(self) -> dict[str, dict[str, Any]]:
        if self._base is None:
            with gzip.open(self._base_file, "rb") as fh:
                self._base = json.load(fh)
        return self._base

    def release_sources(self) -> None:
        """Drop the base definitions read for compiling (a later compile of another type reads them again)."""
        with self._lock:
            self._base = None

    def get(self, url: str) -> Node | None:
        """Compiled plan of an IG profile/extension by canonical URL (None if unknown)."""
        key = url.split("|", 1)[0]
        if key in self._plans:
            return self._plans[key]
        with self._lock:
            if key not in self._plans:
                sd = self.structure_definition(key)
                self._plans[key] = None if sd is None else _Compiler(sd, self).compile()
            return self._plans[key]

    def get_extension(self, url: str) -> Node | None:
        return self.get(url) if url in self._extension_urls else None

    def get_base(self, resource_type: str) -> Node | None:
        """Compiled plan of a base R4 resource definition (cardinality/choice/bindings)."""
        key = "base:" + resource_type
        if key in self._plans:
            return self._plans[key]
        with self._lock:
            if key not in self._plans:
                sd = self._base_sds().get(resource_type)
                self._plans[key] = None if sd is None else _Compiler(sd, self).compile()
            return self._plans[key]

    # -- validation -----------------------------------------------------------------------
    def validate(self, resource: dict[str, Any], plan: Node, root: str | None = None) -> list[Issue]:
        w = _Walk(resource, self, get_index())
        path = root or plan.name
        w.item(plan, resource, path, None, False)
        return w.issues


_registry: ProfileRegistry | None = None
_registry_lock = threading.Lock()


def get_registry() -> ProfileRegistry:
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                _registry = ProfileRegistry()
    return _registry
