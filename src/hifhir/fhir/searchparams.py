"""Search parameter types (string, token, date, reference…) and the SQL clause each builds.

Every value is checked against the shape its type allows before it reaches SQL (values are always bound
parameters; the checks exist so that garbage gets a clear 400 rather than an empty page).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, false, not_, or_, select, true

from hifhir.fhir.errors import invalid
from hifhir.fhir.kind import IDENTIFIER_SYSTEM

Clause = ColumnElement[bool]

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_STRING_RE = re.compile(r"^[\w\s'’.\-(),&]{1,100}$", re.UNICODE)
_TOKEN_RE = re.compile(r"^[A-Za-z0-9\-._@+:/]{1,128}$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d{1,6})?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def normalise_text(value: str) -> str:
    """The folded form stored in *_norm columns: case-insensitive matching, like FHIR string search."""
    return value.casefold().strip()


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(slots=True)
class SearchParam:
    name: str
    type: str  # string | token | date | reference | number | uri | special
    clause: Callable[[str, str | None, str], Clause]  # (value, modifier, expression) -> clause
    modifiers: frozenset[str] = frozenset()
    documentation: str = ""
    missing: Callable[[bool], Clause] | None = None

    def build(self, modifier: str | None, values: list[str]) -> Clause:
        expression = f"{self.name}:{modifier}" if modifier else self.name
        if modifier == "missing":
            if self.missing is None:
                raise invalid(f"Modifier ':missing' is not supported on '{self.name}'", expression)
            if len(values) != 1 or values[0] not in ("true", "false"):
                raise invalid(f"'{expression}' takes true or false", expression)
            return self.missing(values[0] == "true")
        if modifier is not None and modifier not in self.modifiers:
            raise invalid(f"Modifier ':{modifier}' is not supported on '{self.name}'", expression)
        clauses = [self.clause(v, modifier, expression) for v in values]
        return clauses[0] if len(clauses) == 1 else or_(*clauses)


def _missing_for(*columns: Any) -> Callable[[bool], Clause]:
    def build(missing: bool) -> Clause:
        if missing:
            return and_(*[c.is_(None) for c in columns])
        return or_(*[c.is_not(None) for c in columns])

    return build


# --- string -------------------------------------------------------------------------------------------


def check_string(value: str, expression: str) -> str:
    if not _STRING_RE.match(value):
        raise invalid(
            f"Invalid value for '{expression}': letters, digits, spaces and . , ' - ( ) & only, "
            "at most 100 characters",
            expression,
        )
    return value


def string_param(name: str, *norm_columns: Any, raw_columns: tuple[Any, ...] = (), doc: str = "") -> SearchParam:
    """FHIR string search on pre-folded columns: starts-with by default, `:exact`, `:contains`."""
    raw = raw_columns or norm_columns

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        check_string(value, expression)
        if modifier == "exact":
            return or_(*[c == value for c in raw])
        folded = normalise_text(value)
        if modifier == "contains":
            pattern = f"%{_escape_like(folded)}%"
            return or_(*[c.like(pattern, escape="\\") for c in norm_columns])
        # A range on the folded column uses its b-tree index on both engines (LIKE would not on SQLite).
        return or_(*[and_(c >= folded, c < folded + "\U0010ffff") for c in norm_columns])

    return SearchParam(
        name, "string", clause, frozenset({"exact", "contains"}), doc, _missing_for(*norm_columns)
    )


def subquery_string_param(
    name: str, column: Any, make_subquery: Callable[[Callable[[Any], Clause]], Any], doc: str = ""
) -> SearchParam:
    """A string matched on another table: `column IN (subquery where <string match>)`."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        check_string(value, expression)

        def matcher(norm_col: Any) -> Clause:
            return string_param(name, norm_col).clause(value, modifier, expression)

        return column.in_(make_subquery(matcher))

    return SearchParam(name, "string", clause, frozenset({"exact", "contains"}), doc, _missing_for(column))


# --- token --------------------------------------------------------------------------------------------


def split_token(value: str, expression: str) -> tuple[str | None, str]:
    if "|" in value:
        system, code = value.split("|", 1)
        return system, code
    return None, value


def check_token(code: str, expression: str) -> str:
    if not _TOKEN_RE.match(code):
        raise invalid(f"Invalid token value for '{expression}'", expression)
    return code


def token_param(
    name: str,
    column: Any,
    *,
    codes: dict[str, str] | None = None,
    systems: frozenset[str] = frozenset(),
    doc: str = "",
) -> SearchParam:
    """Token search on a coded column. `codes` maps the FHIR code to the stored value (e.g. male → M)."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        system, code = split_token(value, expression)
        check_token(code, expression)
        if system and systems and system not in systems:
            return false()
        if codes is not None:
            if code not in codes:
                raise invalid(f"Unknown code '{code}' for '{expression}'", expression)
            stored: Any = codes[code]
        else:
            stored = code
        match = column == stored
        return not_(match) | column.is_(None) if modifier == "not" else match

    return SearchParam(name, "token", clause, frozenset({"not"}), doc, _missing_for(column))


def any_token_param(name: str, *columns: Any, doc: str = "") -> SearchParam:
    """A token matched exactly against any of several columns (e.g. telecom = phone or e-mail)."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        _system, code = split_token(value, expression)
        check_token(code, expression)
        return or_(*[c == code for c in columns])

    return SearchParam(name, "token", clause, frozenset(), doc, _missing_for(*columns))


def bool_param(name: str, column: Any, doc: str = "") -> SearchParam:
    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        _system, code = split_token(value, expression)
        if code not in ("true", "false"):
            raise invalid(f"'{expression}' takes true or false", expression)
        match = column.is_(True) if code == "true" else or_(column.is_(False), column.is_(None))
        return not_(match) if modifier == "not" else match

    return SearchParam(name, "token", clause, frozenset({"not"}), doc, _missing_for(column))


def identifier_param(id_column: Any, code_column: Any | None) -> SearchParam:
    """The IG's typed identifiers (no Identifier.system; the type tells Code from UUID).

    Accepted forms: `value` (any type), `|value`, `<openimis-identifiers>|Code|value` or `Code|value` /
    `UUID|value` (type-qualified), and the standard `identifier:of-type=<system>|<type>|<value>`.
    """

    def typed(type_code: str, value: str) -> Clause:
        if type_code == "UUID":
            return id_column == value
        if type_code == "Code" and code_column is not None:
            return code_column == value
        return false()

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        parts = value.split("|")
        if modifier == "of-type" or len(parts) == 3:
            if len(parts) != 3 or parts[0] not in ("", IDENTIFIER_SYSTEM):
                raise invalid(
                    f"'{expression}' takes <{IDENTIFIER_SYSTEM}>|Code|<value> or …|UUID|<value>", expression
                )
            check_token(parts[2], expression)
            return typed(parts[1], parts[2])
        if len(parts) == 2:
            qualifier, code = parts
            check_token(code, expression)
            if qualifier in ("Code", "UUID"):
                return typed(qualifier, code)
            if qualifier not in ("", IDENTIFIER_SYSTEM):
                return false()  # the IG never sets Identifier.system
        else:
            code = check_token(parts[0], expression)
        options = [id_column == code]
        if code_column is not None:
            options.append(code_column == code)
        return or_(*options)

    return SearchParam(
        "identifier",
        "token",
        clause,
        frozenset({"of-type"}),
        "Business Code or UUID identifier; `Code|x`, `UUID|x` or `:of-type=<openimis-identifiers>|Code|x`",
    )


def id_param(id_column: Any) -> SearchParam:
    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        if not _ID_RE.match(value):
            raise invalid(f"Invalid id '{value[:70]}' for '_id'", expression)
        return id_column == value

    return SearchParam("_id", "token", clause, frozenset(), "Logical id of the resource")


# --- reference ----------------------------------------------------------------------------------------


def parse_reference_value(value: str, target_type: str, expression: str) -> str:
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2:
        rtype, rid = parts[-2], parts[-1]
        if rtype != target_type:
            raise invalid(f"'{expression}' must reference {target_type}", expression)
    else:
        rid = parts[0]
    if not _ID_RE.match(rid):
        raise invalid(f"Invalid reference value for '{expression}'", expression)
    return rid


def reference_param(name: str, column: Any, target_table: Any, target_type: str, doc: str = "") -> SearchParam:
    """`param=Type/id` or `param=id` → `column IN (SELECT pk FROM target WHERE id = :id)`."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        if modifier is not None and modifier != target_type:
            raise invalid(f"'{expression}': this parameter references {target_type} only", expression)
        rid = parse_reference_value(value, target_type, expression)
        return column.in_(select(target_table.c.pk).where(target_table.c.id == rid))

    return SearchParam(name, "reference", clause, frozenset({target_type}), doc, _missing_for(column))


# --- dates --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class DateRange:
    lo: datetime  # inclusive
    hi: datetime  # exclusive


def parse_prefixed(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and not value[:2].isdigit():
        return value[:2], value[2:]
    return "eq", value


def parse_date_range(text: str, expression: str) -> DateRange:
    m = _DATE_RE.match(text)
    if not m:
        raise invalid(f"Invalid date '{text[:40]}' for '{expression}' (use YYYY[-MM[-DD[Thh:mm[:ss]][Z|±hh:mm]]])",
                      expression)
    try:
        y = int(m["y"])
        if m["m"] is None:
            return DateRange(datetime(y, 1, 1, tzinfo=UTC), datetime(y + 1, 1, 1, tzinfo=UTC))
        mo = int(m["m"])
        if m["d"] is None:
            lo = datetime(y, mo, 1, tzinfo=UTC)
            days = calendar.monthrange(y, mo)[1]
            return DateRange(lo, lo + timedelta(days=days))
        d = int(m["d"])
        if m["H"] is None:
            lo = datetime(y, mo, d, tzinfo=UTC)
            return DateRange(lo, lo + timedelta(days=1))
        tz = UTC
        if m["tz"] and m["tz"] != "Z":
            sign = 1 if m["tz"][0] == "+" else -1
            hh, mm = int(m["tz"][1:3]), int(m["tz"][4:6])
            from datetime import timezone

            tz = timezone(sign * timedelta(hours=hh, minutes=mm))
        if m["S"] is None:
            lo = datetime(y, mo, d, int(m["H"]), int(m["M"]), tzinfo=tz)
            return DateRange(lo, lo + timedelta(minutes=1))
        frac = m["f"] or ""
        micro = int((frac[1:] + "000000")[:6]) if frac else 0
        lo = datetime(y, mo, d, int(m["H"]), int(m["M"]), int(m["S"]), micro, tzinfo=tz)
        step = timedelta(microseconds=10 ** (6 - (len(frac) - 1))) if frac else timedelta(seconds=1)
        return DateRange(lo, lo + step)
    except ValueError as exc:
        raise invalid(f"Invalid date '{text[:40]}' for '{expression}': {exc}", expression) from None


def _approx(rng: DateRange) -> DateRange:
    now = datetime.now(UTC)
    delta = abs(now - rng.lo) * 0.1
    return DateRange(rng.lo - delta, rng.hi + delta)


def _to_us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def instant_param(name: str, column: Any, doc: str = "") -> SearchParam:
    """Dates against an integer-microsecond instant column (meta.lastUpdated)."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        prefix, text = parse_prefixed(value)
        rng = parse_date_range(text, expression)
        if prefix == "ap":
            rng = _approx(rng)
        lo, hi = _to_us(rng.lo), _to_us(rng.hi)
        return {
            "eq": lambda: and_(column >= lo, column < hi),
            "ap": lambda: and_(column >= lo, column < hi),
            "ne": lambda: or_(column < lo, column >= hi),
            "gt": lambda: column >= hi,
            "sa": lambda: column >= hi,
            "ge": lambda: column >= lo,
            "lt": lambda: column < lo,
            "eb": lambda: column < lo,
            "le": lambda: column < hi,
        }[prefix]()

    return SearchParam(name, "date", clause, frozenset(), doc)


def _floor_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def _ceil_day(moment: datetime) -> date:
    m = moment.astimezone(UTC)
    d = m.date()
    return d if m == datetime(d.year, d.month, d.day, tzinfo=UTC) else d + timedelta(days=1)


def date_param(name: str, column: Any, doc: str = "") -> SearchParam:
    """Dates against a DATE column: the stored value is the whole day [d, d+1)."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        prefix, text = parse_prefixed(value)
        rng = parse_date_range(text, expression)
        if prefix == "ap":
            rng = _approx(rng)
        lo_c, hi_f = _ceil_day(rng.lo), _floor_day(rng.hi)
        eq = and_(column >= lo_c, column < hi_f)
        return {
            "eq": lambda: eq,
            "ap": lambda: and_(column >= _floor_day(rng.lo), column < _ceil_day(rng.hi)),
            "ne": lambda: not_(eq),
            "gt": lambda: column >= hi_f,
            "sa": lambda: column >= _ceil_day(rng.hi),
            "ge": lambda: column >= min(lo_c, hi_f),
            "lt": lambda: column < lo_c,
            "eb": lambda: column < _floor_day(rng.lo),
            "le": lambda: column < max(lo_c, hi_f),
        }[prefix]()

    return SearchParam(name, "date", clause, frozenset(), doc, _missing_for(column))


# --- helpers for kinds -------------------------------------------------------------------------------


@dataclass(slots=True)
class SortKey:
    expression: Any
    kind: str = "string"  # string | int | date


@dataclass
class ParamSet:
    """What a kind declares: its search parameters and the sort keys `_sort` may use."""

    params: dict[str, SearchParam] = field(default_factory=dict)
    sorts: dict[str, SortKey] = field(default_factory=dict)

    def add(self, *params: SearchParam) -> ParamSet:
        for p in params:
            self.params[p.name] = p
        return self


def always_true() -> Clause:
    return true()


def since_us(value: str) -> int:
    """`_since` for history: an instant."""
    rng = parse_date_range(value, "_since")
    return _to_us(rng.lo)

