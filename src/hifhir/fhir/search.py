"""Search execution: parameter parsing, SQL per kind, keyset paging merged across kinds, Bundle assembly.

Paging is keyset, never offset: the cursor carries the sort values of the last entry plus (kind rank, pk).
Entity pks only grow, so pages neither skip nor repeat existing matches while other writes happen.
"""

from __future__ import annotations

import base64
import binascii
import functools
import heapq
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import Connection, and_, bindparam, collate, func, or_, select

from hifhir.auth import scope as location_scope
from hifhir.fhir.errors import FhirError, invalid, issue
from hifhir.fhir.kind import ResourceKind
from hifhir.fhir.searchparams import (
    RefPath,
    SearchParam,
    SortKey,
    id_param,
    identifier_param,
    instant_param,
)
from hifhir.store.fast import FastStatement
from hifhir.store.tables import UPDATED_IN_PLACE, OnPostgresql, is_current
from hifhir.store.tables import resource_version as rv

RESULT_PARAMS = {"_count", "_sort", "_total", "_summary", "_elements", "_cursor", "_format", "_pretty"}
INCLUDE_PARAMS = {"_include", "_revinclude"}
UNSUPPORTED_RESULT_PARAMS = {"_contained", "_containedType"}
MAX_CHAIN_DEPTH = 3  # `a.b.c`, or nested `_has` — deeper chains cost joins nobody needs
MAX_SORT_KEYS = 8  # each is an ORDER BY column and a cursor value
MAX_ELEMENTS = 100  # more names than any resource has elements
INCLUDE_ROW_FACTOR = 20  # rows a reverse include may read per resource it may add (see _follow)
MAX_INCLUDE_ROUNDS = 4  # :iterate stops after this many hops even when new resources keep appearing


def common_params(kind: ResourceKind) -> dict[str, SearchParam]:
    t = kind.table
    params = {
        "_id": id_param(t.c.id),
        "_lastUpdated": instant_param("_lastUpdated", kind.updated, "When the resource last changed",
                                      since=_changed_since(kind)),
    }
    code_col = t.c[kind.code_column] if kind.code_column else None
    params["identifier"] = identifier_param(t.c.id, code_col)
    return params


def _changed_since(kind: ResourceKind) -> Callable[[int], Any] | None:
    """For a kind whose table has no index on its change time on PostgreSQL (`store.tables.UPDATED_IN_PLACE`): the
    rows with a version stored since a moment, found through resource_version's time index. The newest version of a
    resource is stored with its row's change time, so a row changed since the moment has such a version, and one
    that has such a version changed since. The ids are compared in the entity ids' collation ("C"), so that the
    rows are found through the id's unique index."""
    if kind.table.name not in UPDATED_IN_PLACE or kind.updated_column != "last_updated":
        return None
    ids = kind.table.c.id

    def since(moment: int) -> Any:
        return OnPostgresql(ids.in_(select(collate(rv.c.res_id, "C")).where(
            rv.c.res_type == kind.resource_type, rv.c.last_updated >= moment)))

    return since


def common_sorts(kind: ResourceKind) -> dict[str, SortKey]:
    t = kind.table
    return {"_id": SortKey(t.c.id), "_lastUpdated": SortKey(kind.updated, "int")}


@dataclass(frozen=True, slots=True)
class Include:
    """`_include=Source:param[:Target]` (reverse=False) or `_revinclude=…` (reverse=True), optionally :iterate."""

    reverse: bool
    source_type: str
    param: str
    target_type: str | None
    iterate: bool


@dataclass
class SearchRequest:
    resource_type: str
    kinds: list[ResourceKind]
    criteria: dict[str, list[tuple[str | None, list[str]]]] = field(default_factory=dict)
    count: int = 10
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (name, descending)
    total: str = "none"
    summary: str | None = None
    elements: list[str] | None = None
    cursor: list[Any] | None = None
    backward: bool = False
    warnings: list[dict[str, Any]] = field(default_factory=list)
    passthrough: list[tuple[str, str]] = field(default_factory=list)  # params echoed in links
    includes: list[Include] = field(default_factory=list)
    # The kinds chains and _has read through: the caller checks the user may read them (their facts would leak
    # through the matches otherwise). Included kinds the user cannot read are left out instead.
    involved_kinds: set[str] = field(default_factory=set)
    # The principal whose location scope (auth/scope.py) filters the matches, the rows chains and _has read through,
    # and the included resources; None: no scope.
    scope: Any = None


def _split_values(raw: str) -> list[str]:
    # Commas separate OR-ed values; `\,` is a literal comma.
    parts, cur, i = [], [], 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw) and raw[i + 1] == ",":
            cur.append(",")
            i += 2
            continue
        if ch == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def parse_search(
    resource_type: str,
    kinds: list[ResourceKind],
    items: list[tuple[str, str]],
    *,
    strict: bool,
    page_default: int,
    page_max: int,
) -> SearchRequest:
    req = SearchRequest(resource_type, kinds, count=page_default)
    known = set().union(*(set(k.search_params) for k in kinds))
    for key, value in items:
        name, _, modifier = key.partition(":")
        if name in RESULT_PARAMS:
            _apply_result_param(req, name, value, page_max)
            if name not in ("_cursor", "_format", "_pretty"):
                req.passthrough.append((key, value))
            continue
        if name in INCLUDE_PARAMS:
            _add_include(req, name, modifier, value, strict)
            continue
        if key.startswith("_has:") or ("." in key and not key.startswith("_")):
            name, modifier = key, ""  # chains and _has carry their modifiers inside; resolved per kind
            problem = _cross_problem(kinds, key, req.involved_kinds, 1)
        else:
            problem = None if name in known and name not in UNSUPPORTED_RESULT_PARAMS else (
                f"Unknown or unsupported search parameter '{key}' for {resource_type}")
        if problem is not None:
            if strict:
                raise FhirError.one(400, "not-supported", problem, expression=key)
            req.warnings.append(issue("not-supported", problem + " (ignored)", severity="warning", expression=key))
            continue
        if value == "":
            continue  # an empty value means "no constraint" in FHIR
        req.criteria.setdefault(name, []).append((modifier or None, _split_values(value)))
        req.passthrough.append((key, value))
    if req.cursor is not None:
        _check_cursor(req)
    return req


def _kinds_of(resource_type: str) -> list[ResourceKind]:
    from hifhir.fhir.registry import kinds_of_type

    return kinds_of_type(resource_type)


def _kind(name: str) -> ResourceKind:
    from hifhir.fhir.registry import KINDS

    return KINDS[name]


def _cross_problem(kinds: list[ResourceKind], key: str, involved: set[str], depth: int) -> str | None:
    """Why a chained (`a.b`) or reverse-chained (`_has:T:ref:p`) parameter cannot be searched on these kinds, or
    None when at least one kind can; records the kinds it reads in `involved`."""
    if depth > MAX_CHAIN_DEPTH:
        return f"'{key[:80]}' chains deeper than {MAX_CHAIN_DEPTH} levels"
    if key.startswith("_has:"):
        parts = key.split(":", 3)
        if len(parts) != 4 or not all(parts[1:]):
            return f"'{key[:80]}': _has takes _has:<Type>:<reference parameter>:<parameter>"
        _, source_type, ref_name, inner = parts
        wanted = {k.name for k in kinds}
        sources = [k for k in _kinds_of(source_type)
                   if any(p.target_kind in wanted for p in _paths(k, ref_name))]
        if not sources:
            return f"'{key[:80]}': {source_type[:40]} has no reference parameter '{ref_name[:40]}' to this type"
        involved.update(k.name for k in sources)
        return _cross_problem(sources, inner, involved, depth + 1)
    if "." not in key:
        name = key.partition(":")[0]
        if any(name in k.search_params for k in kinds):
            return None
        return f"Unknown search parameter '{name[:60]}'"
    head, rest = key.split(".", 1)
    ref_name, _, type_filter = head.partition(":")
    targets = {p.target_kind for k in kinds for p in _paths(k, ref_name)}
    target_kinds = [_kind(t) for t in sorted(targets)
                    if not type_filter or _kind(t).resource_type == type_filter]
    if not target_kinds:
        return f"'{key[:80]}': '{head[:40]}' is not a reference parameter of this type"
    involved.update(k.name for k in target_kinds)
    return _cross_problem(target_kinds, rest, involved, depth + 1)


def _paths(kind: ResourceKind, param_name: str) -> tuple[RefPath, ...]:
    param = kind.search_params.get(param_name)
    return param.paths if param is not None else ()


def _add_include(req: SearchRequest, name: str, modifier: str, value: str, strict: bool) -> None:
    reverse = name == "_revinclude"
    if modifier not in ("", "iterate", "recurse"):
        raise invalid(f"Modifier ':{modifier[:20]}' is not supported on {name}", name)
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise invalid(f"{name} takes <SourceType>:<reference parameter>[:<TargetType>]", name)
    source_type, param_name, target_type = parts[0], parts[1], parts[2] if len(parts) == 3 else None
    kinds = _kinds_of(source_type)
    ok = any(_paths(k, param_name) for k in kinds)
    if not reverse and not modifier:  # a plain _include starts from the matches themselves
        ok = ok and source_type == req.resource_type
    if ok and target_type is not None:
        ok = any(_kind(p.target_kind).resource_type == target_type for k in kinds for p in _paths(k, param_name))
    if not ok:
        msg = f"Cannot {name} '{value[:80]}' on {req.resource_type}: no such reference parameter"
        if strict:
            raise FhirError.one(400, "not-supported", msg, expression=name)
        req.warnings.append(issue("not-supported", msg + " (ignored)", severity="warning", expression=name))
        return
    req.includes.append(Include(reverse, source_type, param_name, target_type, modifier != ""))
    req.passthrough.append((f"{name}:{modifier}" if modifier else name, value))


_MAX_INT = 2**63 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -_MAX_INT <= value <= _MAX_INT


def _cursor_value_ok(value: Any, kind: str) -> bool:
    if value is None:
        return True
    if kind == "int":
        return _is_int(value)
    if kind == "date":
        try:
            date.fromisoformat(value)
        except (TypeError, ValueError):
            return False
        return True
    return isinstance(value, str)


def _check_cursor(req: SearchRequest) -> None:
    """A cursor is opaque to clients but travels through their hands: check every value's type against the
    sort keys before it reaches SQL, so that a forged or stale cursor is a 400, never a 500."""
    *sort_vals, rank, pk = req.cursor or [None, None]
    ok = len(sort_vals) == len(req.sort) and _is_int(rank) and 0 <= rank < len(req.kinds) and _is_int(pk)
    if ok:
        sort_kinds = [req.kinds[rank].sort_params[name].kind for name, _desc in req.sort]
        ok = all(_cursor_value_ok(v, k) for v, k in zip(sort_vals, sort_kinds, strict=True))
    if not ok:
        raise invalid("Invalid paging cursor (or it does not match _sort)", "_cursor")


def _apply_result_param(req: SearchRequest, name: str, value: str, page_max: int) -> None:
    if name == "_count":
        if not value.isdigit() or len(value) > 9:
            raise invalid("_count must be a non-negative integer", "_count")
        req.count = min(int(value), page_max)
    elif name == "_sort":
        if len(req.sort) + value.count(",") >= MAX_SORT_KEYS:
            raise invalid(f"_sort takes at most {MAX_SORT_KEYS} keys", "_sort")
        for part in value.split(","):
            desc = part.startswith("-")
            key = part[1:] if desc else part
            if not key:
                continue
            if not all(key in k.sort_params for k in req.kinds):
                raise invalid(f"Cannot sort {req.resource_type} by '{key}'", "_sort")
            req.sort.append((key, desc))
    elif name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise invalid("_total must be none, estimate or accurate", "_total")
        req.total = value
    elif name == "_summary":
        if value not in ("true", "false", "count", "data", "text"):
            raise invalid("_summary must be true, false, count, data or text", "_summary")
        req.summary = value
    elif name == "_elements":
        req.elements = [e.strip() for e in value.split(",") if e.strip()]
        if len(req.elements) > MAX_ELEMENTS:
            raise invalid(f"_elements takes at most {MAX_ELEMENTS} element names", "_elements")
        for e in req.elements:
            if not e.replace("_", "").isalnum():
                raise invalid(f"Invalid element name '{e[:40]}' in _elements", "_elements")
    elif name == "_cursor":
        req.backward, req.cursor = decode_cursor(value)
    elif name == "_pretty" and value not in ("true", "false"):
        raise invalid("_pretty must be true or false", "_pretty")


def encode_cursor(values: list[Any], backward: bool) -> str:
    payload = orjson.dumps([1 if backward else 0, values])
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[bool, list[Any]]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        direction, values = orjson.loads(raw)
        if direction not in (0, 1) or not isinstance(values, list) or len(values) < 2:
            raise ValueError
        # Only what encode_cursor writes: None, strings and 64-bit integers (no booleans, floats, big ints).
        if not all(v is None or (isinstance(v, str) and len(v) <= 1024) or _is_int(v) for v in values):
            raise ValueError
        return bool(direction), values
    except (ValueError, binascii.Error, orjson.JSONDecodeError, TypeError):
        raise invalid("Invalid paging cursor", "_cursor") from None


def _where(kind: ResourceKind, req: SearchRequest) -> list[Any] | None:
    """The WHERE clauses for one kind; None when the kind cannot match (a parameter only another kind has)."""
    t = kind.table
    clauses: list[Any] = [is_current(t)]
    in_scope = location_scope.condition(kind, req.scope)
    if in_scope is not None:
        clauses.append(in_scope)
    for name, occurrences in req.criteria.items():
        for modifier, values in occurrences:
            clause = _criterion(kind, name, modifier, values, req.scope)
            if clause is None:
                return None
            clauses.append(clause)
    return clauses


def _criterion(kind: ResourceKind, key: str, modifier: str | None, values: list[str], scope: Any = None) -> Any | None:
    """One search criterion on one kind: a plain parameter, a chain `ref.param` or a reverse chain `_has:…`;
    None when this kind cannot satisfy it. `scope`: the principal whose scope the rows chains read must be in."""
    if key.startswith("_has:"):
        return _has_clause(kind, key, values, scope)
    if modifier is None and "." in key:
        return _chain_clause(kind, key, values, scope)
    if modifier is None and ":" in key:  # the leaf of a chain still carries its modifier
        key, _, modifier = key.partition(":")
    param = kind.search_params.get(key)
    return None if param is None else param.build(modifier, values)


def _chain_clause(kind: ResourceKind, key: str, values: list[str], scope: Any = None) -> Any | None:
    """`ref.param=v`: the kind references a current target matching `param=v` (any of the reference's paths)."""
    head, rest = key.split(".", 1)
    ref_name, _, type_filter = head.partition(":")
    options = []
    for path in _paths(kind, ref_name):
        target = _kind(path.target_kind)
        if type_filter and target.resource_type != type_filter:
            continue
        inner = _criterion(target, rest, None, values, scope)
        if inner is None:
            continue
        targets = select(target.table.c.pk).where(is_current(target.table), inner)
        in_scope = location_scope.condition(target, scope)  # a chain must not tell what is outside the scope
        options.append(path.matches(targets if in_scope is None else targets.where(in_scope)))
    if not options:
        return None
    return options[0] if len(options) == 1 else or_(*options)


def _has_clause(kind: ResourceKind, key: str, values: list[str], scope: Any = None) -> Any | None:
    """`_has:Source:ref:param=v`: some current Source whose `ref` points at this entity matches `param=v`."""
    _, source_type, ref_name, inner_key = key.split(":", 3)
    options = []
    for source in _kinds_of(source_type):
        paths = [p for p in _paths(source, ref_name) if p.target_kind == kind.name]
        if not paths:
            continue
        inner = _criterion(source, inner_key, None, values, scope)
        if inner is None:
            continue
        matching = select(source.table.c.pk).where(is_current(source.table), inner)
        in_scope = location_scope.condition(source, scope)
        if in_scope is not None:
            matching = matching.where(in_scope)
        options.extend(kind.table.c.pk.in_(path.targets_of(matching)) for path in paths)
    if not options:
        return None
    return options[0] if len(options) == 1 else or_(*options)


def _sort_keys(kind: ResourceKind, req: SearchRequest) -> list[tuple[Any, bool, str]]:
    keys = [(kind.sort_params[name].expression, desc, kind.sort_params[name].kind) for name, desc in req.sort]
    return keys


def _coerce(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "date":
        return date.fromisoformat(value) if isinstance(value, str) else value
    return value


def _keyset_condition(
    keys: list[tuple[Any, bool, str]], values: list[Any], tail: str, pk_col: Any, pk_value: int,
    pk_descending: bool = False,
) -> Any:
    """Rows strictly after the cursor in (keys…, rank, pk) order; `tail` encodes how rank compares, and pk order
    flips when paging backwards."""
    ors = []
    prefix: list[Any] = []
    for (expr, desc, kind), raw in zip(keys, values, strict=True):
        value = _coerce(raw, kind)
        ors.append(and_(*prefix, expr < value if desc else expr > value))
        prefix.append(expr == value)
    if tail == "after":  # this kind ranks after the cursor's: equal sort values qualify
        ors.append(and_(*prefix) if prefix else True)
    elif tail == "same":
        ors.append(and_(*prefix, pk_col < pk_value if pk_descending else pk_col > pk_value))
    return or_(*ors) if ors else False


def _sort_value(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    return value


@dataclass(slots=True)
class Hit:
    sort_key: tuple[Any, ...]
    cursor: list[Any]
    res_id: str
    version: int
    body: bytes = b""


def _order_tuple(values: list[Any], descs: list[bool], rank: int, pk: int) -> tuple[Any, ...]:
    out: list[Any] = []
    for v, desc in zip(values, descs, strict=True):
        out.append(_Desc(v) if desc else _Asc(v))
    return (*out, rank, pk)


class _Asc:
    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __lt__(self, other: _Asc) -> bool:
        if self.v is None or other.v is None:
            return self.v is None and other.v is not None
        return bool(self.v < other.v)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Asc) and self.v == other.v


class _Desc(_Asc):
    def __lt__(self, other: _Asc) -> bool:
        if self.v is None or other.v is None:
            return self.v is not None and other.v is None
        return bool(self.v > other.v)


def _query_kind(
    conn: Connection, kind: ResourceKind, rank: int, req: SearchRequest, limit: int, reverse: bool
) -> list[Hit]:
    t = kind.table
    keys = _sort_keys(kind, req)
    descs = [d != reverse for _, d, _ in keys]
    eff_keys = [(e, d, k) for (e, _, k), d in zip(keys, descs, strict=True)]
    # A scoped user's statement binds the scope's pks: built per request, not cached.
    scoped = req.scope is not None and location_scope.condition(kind, req.scope) is not None
    cached = _cached_first_page(kind, req, eff_keys, reverse) if req.cursor is None and not scoped else None
    if cached is not None:
        statement, params = cached
        rows = statement.execute(conn, {**params, "page_limit": limit})
        return [_hit(row, eff_keys, rank, reverse) for row in rows]
    where = _where(kind, req)
    if where is None:
        return []
    if req.cursor is not None:
        *sort_vals, c_rank, c_pk = req.cursor  # checked by _check_cursor
        if not reverse:
            tail = "after" if rank > c_rank else "same" if rank == c_rank else "before"
        else:
            tail = "after" if rank < c_rank else "same" if rank == c_rank else "before"
        cond = _keyset_condition(eff_keys, sort_vals, tail, t.c.pk, c_pk, pk_descending=reverse)
        where.append(cond)
    order = [e.desc() if d else e.asc() for e, d, _ in eff_keys]
    order.append(t.c.pk.desc() if reverse else t.c.pk.asc())
    # Only the entity table here: joining the history table lets planners without statistics drive the query
    # from it; the page's bodies are fetched afterwards by key (`_attach_bodies`).
    stmt = (
        select(t.c.pk, t.c.id, kind.version, *[e for e, _, _ in eff_keys])
        .where(*where)
        .order_by(*order)
        .limit(limit)
    )
    return [_hit(row, eff_keys, rank, reverse) for row in conn.execute(stmt)]


def _hit(row: Any, eff_keys: list[tuple[Any, bool, str]], rank: int, reverse: bool) -> Hit:
    pk, res_id, version = row[0], row[1], row[2]
    sort_vals = list(row[3:])
    return Hit(
        _order_tuple(sort_vals, [d for _, d, _ in eff_keys], -rank if reverse else rank, -pk if reverse else pk),
        [*[_sort_value(v) for v in sort_vals], rank, pk],
        res_id,
        version,
    )


# First pages of searches whose every criterion is a single value of a parameter with a parse/shaped split are
# served by statements built once per shape (statement construction costs more than the query itself).
_FIRST_PAGE_CACHE: dict[Hashable, FastStatement] = {}
_FIRST_PAGE_CACHE_MAX = 512


def _cached_first_page(
    kind: ResourceKind, req: SearchRequest, eff_keys: list[tuple[Any, bool, str]], reverse: bool
) -> tuple[FastStatement, dict[str, Any]] | None:
    shapes: list[tuple[str, str | None, Hashable]] = []
    params: dict[str, Any] = {}
    for name, occurrences in sorted(req.criteria.items()):
        param = kind.search_params.get(name)
        if param is None or param.parse is None or param.shaped is None:
            return None
        for modifier, values in occurrences:
            if len(values) != 1 or (modifier is not None and modifier not in param.modifiers):
                return None
            expression = f"{name}:{modifier}" if modifier else name
            shape, vals = param.parse(values[0], modifier, expression)
            prefix = f"c{len(shapes)}_"
            shapes.append((name, modifier, shape))
            params.update({prefix + k: v for k, v in vals.items()})
    key = (kind.name, reverse, tuple(shapes), tuple(req.sort))
    statement = _FIRST_PAGE_CACHE.get(key)
    if statement is None:
        t = kind.table
        where: list[Any] = [is_current(t)]
        for i, (name, _modifier, shape) in enumerate(shapes):
            prefix = f"c{i}_"
            names = [k[len(prefix):] for k in params if k.startswith(prefix)]
            where.append(kind.search_params[name].shaped(shape, {n: bindparam(prefix + n) for n in names}))
        order = [e.desc() if d else e.asc() for e, d, _ in eff_keys]
        order.append(t.c.pk.desc() if reverse else t.c.pk.asc())
        statement = FastStatement(
            select(t.c.pk, t.c.id, kind.version, *[e for e, _, _ in eff_keys])
            .where(*where).order_by(*order).limit(bindparam("page_limit"))
        )
        if len(_FIRST_PAGE_CACHE) < _FIRST_PAGE_CACHE_MAX:
            _FIRST_PAGE_CACHE[key] = statement
    return statement, params


@dataclass
class SearchResult:
    hits: list[Hit]
    total: int | None
    has_next: bool
    has_prev: bool
    included: list[tuple[str, Hit]] = field(default_factory=list)  # (resource type, hit), each resource once


def execute_search(conn: Connection, req: SearchRequest, *, can_read: Callable[[ResourceKind], bool] | None = None,
                   include_cap: int = 1000) -> SearchResult:
    result = _execute_matches(conn, req)
    if req.includes and result.hits:
        result.included = _collect_includes(conn, req, result.hits, can_read or (lambda _k: True), include_cap)
    return result


def _collect_includes(conn: Connection, req: SearchRequest, hits: list[Hit],
                      can_read: Callable[[ResourceKind], bool], cap: int) -> list[tuple[str, Hit]]:
    """The resources `_include`/`_revinclude` pull in, hop by hop (`:iterate` continues from what the previous hop
    included), each at most once and never one that is already a match. Kinds the user may not read are skipped.
    More than `cap` resources is refused rather than truncated: a client syncing with includes must not get a
    silently partial page."""
    seen: set[tuple[str, int]] = {(req.kinds[h.cursor[-2]].name, h.cursor[-1]) for h in hits}
    frontier: dict[str, set[int]] = {}
    for kind_name, pk in seen:
        frontier.setdefault(kind_name, set()).add(pk)
    included: dict[str, set[int]] = {}
    n_included = 0
    for hop in range(MAX_INCLUDE_ROUNDS):
        directives = req.includes if hop == 0 else [d for d in req.includes if d.iterate]
        if not directives or not frontier:
            break
        found: dict[str, set[int]] = {}
        for directive in directives:
            for kind_name, pk in _follow(conn, directive, frontier, cap):
                if (kind_name, pk) not in seen:
                    found.setdefault(kind_name, set()).add(pk)
        found = {k: v for k, v in found.items() if can_read(_kind(k))}
        if req.scope is not None:  # included rows outside the scope are left out, and not followed further
            found = {k: pks for k, v in found.items()
                     if (pks := location_scope.visible_pks(conn, _kind(k), req.scope, v))}
        n_new = sum(len(v) for v in found.values())
        if n_included + n_new > cap:
            raise _too_many_included(cap)
        n_included += n_new
        for kind_name, pks in found.items():
            included.setdefault(kind_name, set()).update(pks)
            seen.update((kind_name, pk) for pk in pks)
        frontier = found
    return _load_current(conn, included)


def _follow(conn: Connection, directive: Include, frontier: dict[str, set[int]], cap: int) -> list[tuple[str, int]]:
    """(kind name, pk) of the entities one include directive reaches from the frontier. A reverse include can reach
    any number of rows (every insuree of 1,000 villages): past INCLUDE_ROW_FACTOR × cap rows (versions and rows
    already matched count too) it is refused before they are all read."""
    out: list[tuple[str, int]] = []
    limit = INCLUDE_ROW_FACTOR * cap + sum(len(pks) for pks in frontier.values()) + 1
    if not directive.reverse:
        for kind_name, pks in frontier.items():
            kind = _kind(kind_name)
            if kind.resource_type != directive.source_type:
                continue
            for path in _paths(kind, directive.param):
                target = _kind(path.target_kind)
                if directive.target_type and target.resource_type != directive.target_type:
                    continue
                out.extend((target.name, int(row[1])) for row in conn.execute(path.pairs(sorted(pks))))
        return out
    for source in _kinds_of(directive.source_type):
        for path in _paths(source, directive.param):
            pks = frontier.get(path.target_kind)
            if not pks:
                continue
            if directive.target_type and _kind(path.target_kind).resource_type != directive.target_type:
                continue
            rows = conn.execute(path.reverse_pairs(sorted(pks)).limit(limit)).all()
            if len(rows) >= limit:
                raise _too_many_included(cap)
            out.extend((source.name, int(row[0])) for row in rows)
    return out


def _too_many_included(cap: int) -> FhirError:
    return FhirError.one(400, "too-costly", f"_include/_revinclude would add more than {cap} resources to this page; "
                         "lower _count or narrow the search", expression="_include")


def _load_current(conn: Connection, included: dict[str, set[int]]) -> list[tuple[str, Hit]]:
    """Current ids and versions of the included entities (deleted ones drop out), with their bodies."""
    by_type: dict[str, list[Hit]] = {}
    for kind_name in sorted(included):
        kind = _kind(kind_name)
        t = kind.table
        rows = conn.execute(select(t.c.id, kind.version).where(
            t.c.pk.in_(sorted(included[kind_name])), is_current(t)).order_by(t.c.pk))
        by_type.setdefault(kind.resource_type, []).extend(Hit((), [], row[0], row[1]) for row in rows)
    out: list[tuple[str, Hit]] = []
    for resource_type, page in by_type.items():
        for start in range(0, len(page), 500):
            _attach_bodies(conn, resource_type, page[start:start + 500])
        out.extend((resource_type, hit) for hit in page)
    return out


def _execute_matches(conn: Connection, req: SearchRequest) -> SearchResult:
    total = None
    if req.total in ("accurate", "estimate") or req.summary == "count":
        total = 0
        for kind in req.kinds:
            where = _where(kind, req)
            if where is not None:
                total += conn.execute(select(func.count()).select_from(kind.table).where(*where)).scalar_one()
        if req.summary == "count" or req.count == 0:
            return SearchResult([], total, False, False)
    if req.count == 0:
        return SearchResult([], total, False, False)
    limit = req.count + 1
    reverse = req.backward
    streams = [_query_kind(conn, kind, rank, req, limit, reverse) for rank, kind in enumerate(req.kinds)]
    merged = list(heapq.merge(*streams, key=lambda h: h.sort_key)) if len(streams) > 1 else streams[0]
    more = len(merged) > req.count
    page = merged[: req.count]
    _attach_bodies(conn, req.resource_type, page)
    if reverse:
        page.reverse()
        return SearchResult(page, total, has_next=True, has_prev=more)
    return SearchResult(page, total, has_next=more, has_prev=req.cursor is not None)


@functools.lru_cache(maxsize=128)
def _bodies_statement(n_ids: int, n_versions: int) -> FastStatement:
    """The body fetch for a page of n ids (one compiled statement per page size, run through the driver)."""
    return FastStatement(select(rv.c.res_id, rv.c.version, rv.c.body).where(
        rv.c.res_type == bindparam("type"),
        rv.c.res_id.in_([bindparam(f"i{i}") for i in range(n_ids)]),
        rv.c.version.in_([bindparam(f"v{i}") for i in range(n_versions)])))


# PostgreSQL takes the page's ids as one array parameter: psycopg re-parses a statement with a thousand
# placeholders on every execution (its query cache skips large statements), ~5 ms for a 1,000-entry page. The
# server plans an array statement anew at each execution (a plan for that many ids is cheaper than the generic one):
# a page of one (an identifier search) has a statement of its own, whose one generic plan is kept (~35 µs saved).
_PG_BODIES = FastStatement(select(rv.c.res_id, rv.c.version, rv.c.body).where(
    rv.c.res_type == bindparam("type"), rv.c.res_id == func.any(bindparam("ids")),
    rv.c.version == func.any(bindparam("versions"))))
_PG_BODY = FastStatement(select(rv.c.res_id, rv.c.version, rv.c.body).where(
    rv.c.res_type == bindparam("type"), rv.c.res_id == bindparam("id"), rv.c.version == bindparam("version")))


def _attach_bodies(conn: Connection, resource_type: str, page: list[Hit]) -> None:
    """One keyed query for the stored FHIR JSON of the page's current versions."""
    if not page:
        return
    # `res_id IN (…)` walks the unique (type, id, version) index; a row-value IN (id, version) would make SQLite
    # scan another index. Older versions of the same ids come along and are dropped here.
    wanted = {(h.res_id, h.version) for h in page}
    versions = sorted({h.version for h in page})
    if conn.dialect.name == "postgresql":
        if len(page) == 1:
            rows = _PG_BODY.execute(conn, {"type": resource_type, "id": page[0].res_id, "version": page[0].version},
                                    binary=True)
        else:
            rows = _PG_BODIES.execute(conn, {"type": resource_type, "ids": [h.res_id for h in page],
                                             "versions": versions}, binary=True)
    else:
        params = {"type": resource_type}
        params.update((f"i{i}", h.res_id) for i, h in enumerate(page))
        params.update((f"v{i}", v) for i, v in enumerate(versions))
        rows = _bodies_statement(len(page), len(versions)).execute(conn, params)
    bodies = {(r.res_id, r.version): r.body for r in rows if (r.res_id, r.version) in wanted}
    for hit in page:
        hit.body = bodies[(hit.res_id, hit.version)]


def bundle_links(base_url: str, req: SearchRequest, result: SearchResult) -> list[dict[str, str]]:
    query = urlencode(req.passthrough)
    self_url = f"{base_url}/{req.resource_type}" + (f"?{query}" if query else "")
    links = [{"relation": "self", "url": self_url}]
    sep = "&" if query else "?"
    if result.hits and result.has_next:
        cursor = encode_cursor(result.hits[-1].cursor, False)
        links.append({"relation": "next", "url": f"{self_url}{sep}_cursor={cursor}"})
    if result.hits and result.has_prev:
        cursor = encode_cursor(result.hits[0].cursor, True)
        links.append({"relation": "previous", "url": f"{self_url}{sep}_cursor={cursor}"})
    return links


MANDATORY_ELEMENTS = ("resourceType", "id", "meta")


def subset(body: bytes, keep: set[str]) -> orjson.Fragment | dict[str, Any]:
    resource = orjson.loads(body)
    out = {k: v for k, v in resource.items() if k in keep or k in MANDATORY_ELEMENTS}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}]
    out["meta"] = meta
    return out


def build_searchset(
    base_url: str, req: SearchRequest, result: SearchResult, summary_elements: dict[str, set[str]],
    sync_point: str | None = None, visible: Callable[[str, bytes], bytes] | None = None,
) -> bytes:
    """`visible(resource type, body)`: the body as the user may see it (restricted elements removed)."""
    if visible is not None:
        for hit in result.hits:
            hit.body = visible(req.resource_type, hit.body)
        for resource_type, hit in result.included:
            hit.body = visible(resource_type, hit.body)
    bundle: dict[str, Any] = {"resourceType": "Bundle"}
    if sync_point is not None:
        bundle["meta"] = {"lastUpdated": sync_point}
    bundle["type"] = "searchset"
    if result.total is not None:
        bundle["total"] = result.total
    bundle["link"] = bundle_links(base_url, req, result)
    entries: list[dict[str, Any]] = []
    keep: set[str] | None = None
    if req.elements:
        keep = set(req.elements)
    elif req.summary == "true":
        keep = summary_elements.get(req.resource_type, set())
    for hit in result.hits:
        if keep is not None:
            resource: Any = subset(hit.body, keep)
        elif req.summary in ("data", "text"):
            resource = orjson.Fragment(hit.body)  # stored resources carry no narrative
        else:
            resource = orjson.Fragment(hit.body)
        entries.append(
            {"fullUrl": f"{base_url}/{req.resource_type}/{hit.res_id}", "resource": resource,
             "search": {"mode": "match"}}
        )
    for resource_type, hit in result.included:
        entries.append({"fullUrl": f"{base_url}/{resource_type}/{hit.res_id}", "resource": orjson.Fragment(hit.body),
                        "search": {"mode": "include"}})
    if req.warnings:
        outcome = {"resourceType": "OperationOutcome", "issue": req.warnings}
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    return orjson.dumps(bundle)
