"""Search parameter types (string, token, date, reference…) and the SQL clause each builds.

Every value is checked against the shape its type allows before it reaches SQL (values are always bound
parameters; the checks exist so that garbage gets a clear 400 rather than an empty page).
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Boolean, ColumnElement, and_, false, literal, not_, or_, select, union
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.expression import FunctionElement

from hifhir.fhir.errors import FhirError, invalid
from hifhir.fhir.kind import IDENTIFIER_SYSTEM
from hifhir.store.tables import is_current

Clause = ColumnElement[bool]

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_STRING_RE = re.compile(r"^[\w\s'’.\-(),&]{1,100}$", re.UNICODE)
# The code part of a token (what follows `system|`). No '/': no code, phone, e-mail or identifier value this
# server stores has one, and a slash in a code is far more often a path-traversal probe than data.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9\-._@+:]{1,128}$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d{1,6})?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


# Combining diacritical marks (U+0300–U+036F): the accents of Latin, Greek and Cyrillic letters, once
# decomposed. Marks of other scripts (Devanagari vowel signs, nukta…) are part of the letter and are kept.
_DIACRITICS_RE = re.compile("[\u0300-\u036f]")


def normalise_text(value: str) -> str:
    """The folded form stored in *_norm columns and compared with folded search values.

    FHIR string search matches "after both have been normalized by case and accent": compatibility
    decomposition, accents dropped, Unicode case folding (ß → ss), recomposition (NFC), outer spaces trimmed.
    "Pérez", "PEREZ" and "perez" all fold to "perez".
    """
    decomposed = _DIACRITICS_RE.sub("", unicodedata.normalize("NFKD", value))
    return unicodedata.normalize("NFC", decomposed.casefold()).strip()


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
    # Optional split of `clause` for statement caching: `parse` validates a value and returns the SQL shape plus
    # the values to bind; `shaped` builds the clause from a shape and values that may be bind parameters.
    parse: Callable[[str, str | None, str], tuple[Hashable, dict[str, Any]]] | None = None
    shaped: Callable[[Hashable, dict[str, Any]], Clause] | None = None
    # Reference parameters: how the kind points at its targets (for chains, _has, _include, _revinclude).
    paths: tuple[RefPath, ...] = ()
    target_type: str | None = None

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


class _HasWord(FunctionElement[bool]):
    """`haystack` (space-separated values) holds `word` as one whole value, case- and accent-sensitively.

    Not LIKE: SQLite's LIKE ignores ASCII case, which `:exact` must not."""

    type = Boolean()
    inherit_cache = True
    name = "has_word"


def _compile_has_word(position_function: str) -> Callable[..., str]:
    def compile_(element: _HasWord, compiler: Any, **kw: Any) -> str:
        haystack, word = (compiler.process(c, **kw) for c in element.clauses)
        return f"{position_function}(' ' || {haystack} || ' ', ' ' || {word} || ' ') > 0"

    return compile_


compiles(_HasWord)(_compile_has_word("strpos"))  # PostgreSQL
compiles(_HasWord, "sqlite")(_compile_has_word("instr"))


def _is_one_of(column: Any, columns: tuple[Any, ...]) -> bool:
    return any(column is c for c in columns)


def string_param(
    name: str,
    *norm_columns: Any,
    raw_columns: tuple[Any, ...] = (),
    word_columns: tuple[Any, ...] = (),
    doc: str = "",
) -> SearchParam:
    """FHIR string search on pre-folded columns: starts-with by default, `:exact`, `:contains`.

    `word_columns` names the columns (folded or raw) that hold several space-separated values, like the given
    names joined in one column: the default search then matches the start of any of the values, and `:exact`
    any whole value (as for `HumanName.given`, which is a list).
    """
    raw = raw_columns or norm_columns

    def parse(value: str, modifier: str | None, expression: str) -> tuple[Hashable, dict[str, Any]]:
        check_string(value, expression)
        if modifier == "exact":
            return "exact", {"v": value}
        folded = normalise_text(value)
        if modifier == "contains":
            return "contains", {"pattern": f"%{_escape_like(folded)}%"}
        return "prefix", {"lo": folded, "hi": folded + "\U0010ffff", "word": f"% {_escape_like(folded)}%"}

    def shaped(shape: Hashable, vals: dict[str, Any]) -> Clause:
        if shape == "exact":
            value = vals["v"]
            return or_(*[
                or_(c == value, _HasWord(c, value if isinstance(value, BindParameter) else literal(value)))
                if _is_one_of(c, word_columns) else c == value
                for c in raw
            ])
        if shape == "contains":
            return or_(*[c.like(vals["pattern"], escape="\\") for c in norm_columns])
        # A range on the folded column uses its b-tree index on both engines (LIKE would not on SQLite).
        options = []
        for c in norm_columns:
            options.append(and_(c >= vals["lo"], c < vals["hi"]))
            if _is_one_of(c, word_columns):
                options.append(c.like(vals["word"], escape="\\"))
        return or_(*options)

    return SearchParam(
        name, "string", _clause_of(parse, shaped), frozenset({"exact", "contains"}), doc,
        _missing_for(*norm_columns), parse=parse, shaped=shaped,
    )


def _raw_column_of(norm_col: Any) -> Any | None:
    """The raw sibling of a folded `<x>_norm` column (`location.name` for `location.name_norm`), which
    `:exact` compares; None when there is none."""
    col_name = getattr(norm_col, "name", None)
    table = getattr(norm_col, "table", None)
    if isinstance(col_name, str) and col_name.endswith("_norm") and table is not None:
        return table.c.get(col_name.removesuffix("_norm"))
    return None


def subquery_string_param(
    name: str, column: Any, make_subquery: Callable[[Callable[[Any], Clause]], Any], doc: str = ""
) -> SearchParam:
    """A string matched on another table: `column IN (subquery where <string match>)`."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        check_string(value, expression)

        def matcher(norm_col: Any) -> Clause:
            raw = _raw_column_of(norm_col)
            param = string_param(name, norm_col, raw_columns=() if raw is None else (raw,))
            return param.clause(value, modifier, expression)

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

    def parse(value: str, modifier: str | None, expression: str) -> tuple[Hashable, dict[str, Any]]:
        system, code = split_token(value, expression)
        check_token(code, expression)
        if system and systems and system not in systems:
            return "none", {}
        if codes is not None:
            if code not in codes:
                raise invalid(f"Unknown code '{code}' for '{expression}'", expression)
            stored: Any = codes[code]
        else:
            stored = code
        return ("not" if modifier == "not" else "eq"), {"v": stored}

    def shaped(shape: Hashable, vals: dict[str, Any]) -> Clause:
        if shape == "none":
            return false()
        match = column == vals["v"]
        return not_(match) | column.is_(None) if shape == "not" else match

    return SearchParam(name, "token", _clause_of(parse, shaped), frozenset({"not"}), doc, _missing_for(column),
                       parse=parse, shaped=shaped)


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

    table = id_column.table

    # Each form becomes `pk IN (SELECT pk … UNION …)`: one indexed lookup per identifier column. An OR of the
    # columns lets SQLite prefer a scan in pk order (to avoid sorting) over the unique indexes.
    def parse(value: str, modifier: str | None, expression: str) -> tuple[Hashable, dict[str, Any]]:
        parts = value.split("|")
        if modifier == "of-type" or len(parts) == 3:
            if len(parts) != 3 or parts[0] not in ("", IDENTIFIER_SYSTEM):
                raise invalid(
                    f"'{expression}' takes <{IDENTIFIER_SYSTEM}>|Code|<value> or …|UUID|<value>", expression
                )
            type_code, code = parts[1], check_token(parts[2], expression)
        elif len(parts) == 2:
            qualifier, code = parts
            check_token(code, expression)
            if qualifier in ("Code", "UUID"):
                type_code = qualifier
            elif qualifier in ("", IDENTIFIER_SYSTEM):
                type_code = "any"
            else:
                type_code = "none"  # the IG never sets Identifier.system
        else:
            type_code, code = "any", check_token(parts[0], expression)
        return (type_code, bool(_UUID_RE.match(code))), {"v": code}

    def shaped(shape: Hashable, vals: dict[str, Any]) -> Clause:
        type_code, uuid_shaped = shape  # type: ignore[misc]
        value = vals["v"]
        selects: list[Any] = []
        if type_code in ("UUID", "any"):
            selects.append(select(table.c.pk).where(table.c.id == value))
            # identifier[UUID] differs from the id only for resources PUT under a client id; always a UUID.
            if uuid_shaped:
                selects.append(select(table.c.pk).where(table.c.uuid == value))
        if type_code in ("Code", "any") and code_column is not None:
            selects.append(select(table.c.pk).where(code_column == value, is_current(table)))
        return table.c.pk.in_(union(*selects)) if selects else false()

    return SearchParam(
        "identifier",
        "token",
        _clause_of(parse, shaped),
        frozenset({"of-type"}),
        "Business Code or UUID identifier; `Code|x`, `UUID|x` or `:of-type=<openimis-identifiers>|Code|x`",
        parse=parse,
        shaped=shaped,
    )


def id_param(id_column: Any) -> SearchParam:
    def parse(value: str, modifier: str | None, expression: str) -> tuple[Hashable, dict[str, Any]]:
        if not _ID_RE.match(value):
            raise invalid(f"Invalid id '{value[:70]}' for '_id'", expression)
        return "id", {"v": value}

    def shaped(shape: Hashable, vals: dict[str, Any]) -> Clause:
        return id_column == vals["v"]

    return SearchParam("_id", "token", _clause_of(parse, shaped), frozenset(), "Logical id of the resource",
                       parse=parse, shaped=shaped)


def _clause_of(parse: Callable[[str, str | None, str], tuple[Hashable, dict[str, Any]]],
               shaped: Callable[[Hashable, dict[str, Any]], Clause]) -> Callable[[str, str | None, str], Clause]:
    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        return shaped(*parse(value, modifier, expression))

    return clause


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


@dataclass(frozen=True, slots=True)
class RefPath:
    """One way entities of a kind point at entities of another kind, as (source pk, target pk) pairs.

    `owner` is the pk column of the referencing kind's table; `source` and `target` are the two columns that pair
    them: for a plain foreign-key column (`column_ref`) source is the owner pk itself; for a link table or a
    reverse foreign key (`link_ref`) both live in that other table, optionally restricted by `condition`.
    The same description drives search by reference, chained parameters, `_has`, `_include` and `_revinclude`.
    """

    owner: Any
    source: Any
    target: Any
    target_kind: str  # the registry name of the target kind
    condition: Any = None

    @property
    def is_column(self) -> bool:
        return self.source is self.owner

    def sources_of(self, targets: Any) -> Any:
        """SELECT of owner pks whose reference points into `targets` (a SELECT of target pks)."""
        stmt = select(self.source).where(self.target.in_(targets))
        return stmt if self.condition is None else stmt.where(self.condition)

    def targets_of(self, owners: Any) -> Any:
        """SELECT of target pks referenced by the owners in `owners` (a SELECT or a list of owner pks)."""
        stmt = select(self.target).where(self.source.in_(owners), self.target.is_not(None))
        return stmt if self.condition is None else stmt.where(self.condition)

    def pairs(self, owners: list[int]) -> Any:
        stmt = select(self.source, self.target).where(self.source.in_(owners), self.target.is_not(None))
        return stmt if self.condition is None else stmt.where(self.condition)

    def reverse_pairs(self, targets: list[int]) -> Any:
        stmt = select(self.source, self.target).where(self.target.in_(targets), self.source.is_not(None))
        return stmt if self.condition is None else stmt.where(self.condition)

    def matches(self, targets: Any) -> Clause:
        """The owner references one of `targets`."""
        if self.is_column:
            return self.target.in_(targets)
        return self.owner.in_(self.sources_of(targets))


def column_ref(column: Any, target_kind: str) -> RefPath:
    """A reference held in a foreign-key column of the kind's own table."""
    owner = column.table.c.pk
    return RefPath(owner, owner, column, target_kind)


def link_ref(owner: Any, source: Any, target: Any, target_kind: str, condition: Any = None) -> RefPath:
    """A reference held elsewhere: a link table (role → villages) or a reverse key (family ← insuree.family_pk)."""
    return RefPath(owner, source, target, target_kind, condition)


def _kind_table(kind_name: str) -> Any:
    from hifhir.fhir.registry import KINDS

    return KINDS[kind_name].table


def reference_param(name: str, target_type: str, *paths: RefPath, doc: str = "") -> SearchParam:
    """`param=Type/id`, `param=id` or `param:Type=id`: the owner references that (current or not) target."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        if modifier is not None and modifier != target_type:
            raise invalid(f"'{expression}': this parameter references {target_type} only", expression)
        rid = parse_reference_value(value, target_type, expression)
        options = []
        for path in paths:
            target = _kind_table(path.target_kind)
            options.append(path.matches(select(target.c.pk).where(target.c.id == rid)))
        return options[0] if len(options) == 1 else or_(*options)

    def missing(is_missing: bool) -> Clause:
        present = or_(*[p.target.is_not(None) if p.is_column else p.owner.in_(select(p.source)) for p in paths])
        return not_(present) if is_missing else present

    return SearchParam(name, "reference", clause, frozenset({target_type}), doc, missing,
                       paths=paths, target_type=target_type)


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
    # An unencoded "+" of a time-zone offset arrives as a space; a date never contains one otherwise.
    text = text.replace(" ", "+")
    m = _DATE_RE.match(text)
    if not m:
        raise invalid(
            f"Invalid date '{text[:40]}' for '{expression}' "
            "(use YYYY[-MM[-DD[Thh:mm[:ss[.ffffff]]][Z|±hh:mm]]])",
            expression,
        )
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
            tz = timezone(sign * timedelta(hours=hh, minutes=mm))
        if m["S"] is None:
            lo = datetime(y, mo, d, int(m["H"]), int(m["M"]), tzinfo=tz)
            return DateRange(lo, lo + timedelta(minutes=1))
        frac = m["f"] or ""
        micro = int((frac[1:] + "000000")[:6]) if frac else 0
        lo = datetime(y, mo, d, int(m["H"]), int(m["M"]), int(m["S"]), micro, tzinfo=tz)
        step = timedelta(microseconds=10 ** (6 - (len(frac) - 1))) if frac else timedelta(seconds=1)
        return DateRange(lo, lo + step)
    except (ValueError, OverflowError) as exc:  # e.g. 2021-02-30, or 9999-12 whose end is past year 9999
        raise invalid(f"Invalid date '{text[:40]}' for '{expression}': {exc}", expression) from None


def _out_of_range(text: str, expression: str) -> FhirError:
    return invalid(f"Date '{text[:40]}' is out of the supported range for '{expression}'", expression)


def _approx(rng: DateRange) -> DateRange:
    now = datetime.now(UTC)
    delta = abs(now - rng.lo) * 0.1
    return DateRange(rng.lo - delta, rng.hi + delta)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_us(moment: datetime) -> int:
    """Microseconds since the epoch, in exact integer arithmetic (no float rounding)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def instant_param(name: str, column: Any, doc: str = "",
                  since: Callable[[int], ColumnElement[bool]] | None = None) -> SearchParam:
    """Dates against an integer-microsecond instant column (meta.lastUpdated). `since(lower bound)`: a condition
    added to the range of a prefix with a lower bound, for a column without an index (`common_params`)."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        prefix, text = parse_prefixed(value)
        rng = parse_date_range(text, expression)
        try:
            if prefix == "ap":
                rng = _approx(rng)
        except OverflowError:
            raise _out_of_range(text, expression) from None
        lo, hi = _to_us(rng.lo), _to_us(rng.hi)
        condition = {
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
        lower = {"eq": lo, "ap": lo, "ge": lo, "gt": hi, "sa": hi}.get(prefix)
        return condition if since is None or lower is None else and_(condition, since(lower))

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
        try:
            if prefix == "ap":
                rng = _approx(rng)
            # The target is a whole day [d, d+1); the search range is [lo, hi) (FHIR R4 search §2.1.1.4.5).
            floor_lo, ceil_lo = _floor_day(rng.lo), _ceil_day(rng.lo)
            floor_hi, ceil_hi = _floor_day(rng.hi), _ceil_day(rng.hi)
        except OverflowError:  # a day bound past 9999-12-31 or before 0001-01-01
            raise _out_of_range(text, expression) from None
        eq = and_(column >= ceil_lo, column < floor_hi)
        return {
            "eq": lambda: eq,  # the day lies within the search range
            "ap": lambda: and_(column >= floor_lo, column < ceil_hi),  # overlaps the widened range
            "ne": lambda: not_(eq),
            "gt": lambda: column >= floor_hi,  # the day overlaps [hi, ∞)
            "sa": lambda: column >= ceil_hi,  # the day starts at or after hi
            "ge": lambda: column >= floor_lo,  # the day overlaps [lo, ∞)
            "lt": lambda: column < ceil_lo,  # the day overlaps (-∞, lo)
            "eb": lambda: column < floor_lo,  # the day ends at or before lo
            "le": lambda: column < ceil_hi,  # the day overlaps (-∞, hi)
        }[prefix]()

    return SearchParam(name, "date", clause, frozenset(), doc, _missing_for(column))


# --- helpers for kinds -------------------------------------------------------------------------------


@dataclass(slots=True)
class SortKey:
    expression: Any
    kind: str = "string"  # string | int | date


def since_us(value: str) -> int:
    """`_since` for history: an instant."""
    rng = parse_date_range(value, "_since")
    return _to_us(rng.lo)

