"""Topic → handler. A module that delivers something registers its handler at import and is listed in
HANDLER_MODULES, which every worker imports before it claims rows (a worker only claims the topics it can run:
a row of a topic this code does not know waits for a worker that does)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

# The modules that register handlers: claim-AI deliveries and subscription notifications.
HANDLER_MODULES: tuple[str, ...] = ("hifhir.domain.claims.ai", "hifhir.notify.delivery")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt at an outbox row, as its handler sees it. `id` is the row's id, the same at every attempt: send
    it along (e.g. as an idempotency header) so that the receiver can drop a repeat. The handler runs outside any
    transaction; it opens its own on `engine` to apply a result."""

    id: str
    topic: str
    subject: str | None
    payload: Any
    attempt: int  # 1 for the first
    created: int  # µs since the epoch
    engine: Engine


class RetryLater(Exception):
    """Raised by a handler for an expected failure (receiver down, refusing for now, answering nonsense): retried
    with backoff, logged without a traceback. Any other exception is retried too, but logged with its traceback."""


class PermanentFailure(Exception):
    """Raised by a handler when retrying cannot help (the subject is gone, the receiver refuses for good): the row
    is failed at once."""


Handler = Callable[[Delivery], None]
_HANDLERS: dict[str, Handler] = {}


def register(topic: str, handler: Handler) -> None:
    _HANDLERS[topic] = handler


def handler_for(topic: str) -> Handler | None:
    return _HANDLERS.get(topic)


def topics() -> list[str]:
    return sorted(_HANDLERS)


def load_handlers() -> list[str]:
    """Import every handler module (idempotent); returns the registered topics."""
    for name in HANDLER_MODULES:
        importlib.import_module(name)
    return topics()
