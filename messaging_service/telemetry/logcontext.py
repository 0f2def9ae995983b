"""The fields every log event of a request carries (its id, record, worker), bound per step.

One context variable holds them all, so binding a request's fields is one ``set`` and merging
them into an event reads one mapping. structlog's ``contextvars`` module keeps a variable per
key and copies the whole context for every event, which costs more than the event itself.
Jobs of the worker pool share their worker's context: ``bound`` restores what was there.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar, Token
from types import MappingProxyType, TracebackType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_FIELDS: ContextVar[Mapping[str, Any]] = ContextVar("log_fields", default=_EMPTY)


def bind(**fields: Any) -> None:
    """Add ``fields`` to the current context (until a surrounding ``bound`` ends)."""
    _FIELDS.set({**_FIELDS.get(), **fields})


def current() -> Mapping[str, Any]:
    """The fields bound in the current context."""
    return _FIELDS.get()


class bound:  # noqa: N801 - used like a function: ``with bound(email_id=...):``
    """Bind ``fields`` for the length of a ``with`` block, then restore the previous ones."""

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: Any) -> None:
        self._fields = fields
        self._token: Token[Mapping[str, Any]] | None = None

    def __enter__(self) -> None:
        self._token = _FIELDS.set({**_FIELDS.get(), **self._fields})

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._token is not None
        _FIELDS.reset(self._token)


def merge_fields(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """structlog processor: the bound fields, where the event does not set them itself."""
    for key, value in _FIELDS.get().items():
        if key not in event:
            event[key] = value
    return event
