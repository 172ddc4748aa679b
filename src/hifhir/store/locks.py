"""Transaction-scoped locks on a key that no table row stands for.

`turn(namespace, key)` is a column expression to select: on PostgreSQL it waits, while the statement runs, until no
other transaction holds (namespace, key), then holds it until this transaction ends (`pg_advisory_xact_lock`); the
transaction's later statements see what the previous holder committed. On SQLite it is NULL: its writer lock already
lets one write transaction in at a time.

An advisory lock, not a row lock, where the writes that take it also take row locks that other writes take in another
order: it joins no cycle with them (no deadlock), since nothing else ever waits for it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, Integer, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

# Namespaces (the first key of PostgreSQL's two-key advisory locks), one per kind of turn.
CLAIM_CHECKS = 1  # the checks of an insuree's claims, keyed by the insuree's pk


class _Turn(FunctionElement[Any]):
    """The column holds nothing of use (false on PostgreSQL, NULL on SQLite): selecting it is what waits."""

    inherit_cache = True
    name = "turn"
    type = Boolean()


@compiles(_Turn)
def _turn_pg(element: _Turn, compiler: Any, **kw: Any) -> str:
    namespace, key = (compiler.process(c, **kw) for c in element.clauses)
    return f"pg_advisory_xact_lock(CAST({namespace} AS INTEGER), CAST({key} AS INTEGER)) IS NULL"


@compiles(_Turn, "sqlite")
def _turn_sqlite(element: _Turn, compiler: Any, **kw: Any) -> str:
    return "NULL"


def turn(namespace: int, key: Any) -> Any:
    """Wait for, then hold until the transaction ends, the turn on (`namespace`, `key`) (see the module docstring)."""
    return _Turn(literal(namespace, Integer), key)
