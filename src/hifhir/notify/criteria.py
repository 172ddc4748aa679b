"""A subscription's `criteria` (`Type?params`): parsed and checked by the search engine when the subscription is
written, and evaluated by it against the resources a write touched (matching.py).

The query part is a FHIR search on the type, with what search allows — parameters, modifiers, prefixes, OR-ed
values, chains and `_has` — but no result parameters (`_count`, `_sort`, `_include`…): a criteria selects
resources, it does not shape a page. Subscription itself cannot be subscribed to (a subscription's own status
changes, made by deliveries, would feed notifications back into deliveries)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import Connection, select
from sqlalchemy.exc import DBAPIError

from hifhir.fhir.errors import FhirError
from hifhir.fhir.kind import ResourceKind
from hifhir.fhir.search import INCLUDE_PARAMS, RESULT_PARAMS, SearchRequest, _criterion, parse_search

CRITERIA_MAX = 2000  # the column's length
UNSUBSCRIBABLE = frozenset({"Subscription"})


class CriteriaError(Exception):
    """The criteria cannot be used (the message says why)."""


@dataclass(frozen=True, slots=True)
class Criteria:
    text: str
    resource_type: str
    request: SearchRequest
    # The kinds chains and `_has` read through (their read right is needed as well as the type's).
    involved_kinds: frozenset[str]

    @property
    def unconditional(self) -> bool:
        """`Type` or `Type?`: every change of the type matches, no query needed."""
        return not self.request.criteria


def parse_criteria(text: object) -> Criteria:
    from hifhir.fhir.registry import kinds_of_type

    if not isinstance(text, str) or not text.strip():
        raise CriteriaError("The criteria must be a FHIR search: Type?parameters")
    text = text.strip()
    if len(text) > CRITERIA_MAX:
        raise CriteriaError(f"The criteria is longer than {CRITERIA_MAX} characters")
    resource_type, _, query = text.partition("?")
    resource_type = resource_type.removeprefix("/")
    if resource_type in UNSUBSCRIBABLE:
        raise CriteriaError(f"Changes of {resource_type} cannot be subscribed to")
    kinds = kinds_of_type(resource_type)
    if not kinds:
        raise CriteriaError(f"'{resource_type[:60]}' is not a resource type this server supports; the criteria "
                            "is Type?parameters")
    try:
        items = parse_qsl(query, keep_blank_values=True, strict_parsing=True, max_num_fields=50) if query else []
    except ValueError:
        raise CriteriaError(f"The criteria's parameters are malformed: '{query[:80]}'") from None
    for key, _value in items:
        name = key.partition(":")[0]
        if name in RESULT_PARAMS or name in INCLUDE_PARAMS:
            raise CriteriaError(f"'{name}' shapes a search result; a criteria only selects resources")
    try:
        request = parse_search(resource_type, kinds, items, strict=True, page_default=1, page_max=1)
        # Values are checked when the clauses are built (a bad date, an unknown code): build them once now.
        if all(criteria_clauses(kind, request) is None for kind in kinds):
            raise CriteriaError(f"No {resource_type} can match these parameters together")
    except FhirError as exc:
        raise CriteriaError(str(exc)) from None
    return Criteria(text, resource_type, request, frozenset(request.involved_kinds))


def criteria_clauses(kind: ResourceKind, request: SearchRequest) -> list[Any] | None:
    """The WHERE clauses of the criteria on one kind, without the 'current' filter (a delete is matched against the
    row as it was: logical deletes keep it); None when this kind cannot match."""
    clauses: list[Any] = []
    for name, occurrences in request.criteria.items():
        for modifier, values in occurrences:
            clause = _criterion(kind, name, modifier, values)
            if clause is None:
                return None
            clauses.append(clause)
    return clauses


def probe(conn: Connection, criteria: Criteria) -> None:
    """Run the criteria once on no row, in a savepoint: a value the database refuses (out of its range) is found
    when the subscription is written, not by every write the criteria would later be matched in."""
    from hifhir.fhir.registry import kinds_of_type

    for kind in kinds_of_type(criteria.resource_type):
        clauses = criteria_clauses(kind, criteria.request)
        if not clauses:
            continue
        try:
            with conn.begin_nested():
                conn.execute(select(kind.table.c.pk).where(kind.table.c.pk == -1, *clauses)).all()
        except DBAPIError:
            # the driver's message names tables and SQL: not for the client
            raise CriteriaError("A value of this criteria is out of range or too long") from None
