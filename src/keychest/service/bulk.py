"""Bulk variants of service calls, for group commit.

A bulk variant takes ``(ctx, items)`` where each item is ``(ip, args)`` of one call of the
single function, and returns one result per item: the single function's value, or the
ServiceError it would have raised. It must mean exactly what calling the single function
once per item, in order, would mean; ``Keychest.call_batch`` uses it for runs of one kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

BULK_VARIANTS: dict[Callable[..., Any], Callable[..., list[Any]]] = {}

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def bulk_of(single: Callable[..., Any]) -> Callable[[F], F]:
    def register(many: F) -> F:
        BULK_VARIANTS[single] = many
        return many

    return register


def chunks(values: Iterable[T], size: int = 500) -> Iterator[list[T]]:
    """Slices for IN (...) lists: SQLite caps the number of bound parameters per statement."""
    chunk: list[T] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def filled(results: Sequence[T | None]) -> list[T]:
    """The results of a bulk call, each slot filled (a None left is a bug, not an answer)."""
    if any(result is None for result in results):
        raise AssertionError("a bulk call left an item without a result")
    return [result for result in results if result is not None]


def only(results: Sequence[Any]) -> Any:
    """The single result of a bulk call made for one item, raised if it is an error."""
    from keychest.service.errors import ServiceError

    (result,) = results
    if isinstance(result, ServiceError):
        raise result
    return result
