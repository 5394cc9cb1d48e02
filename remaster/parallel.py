"""How a stage spreads its per-image work: in this process, or over a cluster.

A stage that decodes or resizes many images independently takes a ``Mapper``: it hands over a
picklable function and a list of items and gets the results back in order. ``SerialMapper`` is
the default (the DVC stage, the tests); ``flows.runners.DaskMapper`` sends the items to the Dask
cluster of the running Prefect flow. The stage's own logic does not change with the mapper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Mapper(Protocol):
    width: int  # how many items run at once; a stage asks for a few times this many per call

    def __call__(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]: ...


class SerialMapper:
    """One item after another in this process."""

    width = 1

    def __call__(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return [fn(item) for item in items]


def windows(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of ``size``, so that a caller holds a bounded number of
    results at once."""
    if size < 1:
        raise ValueError(f"window size must be at least 1, got {size}")
    for i in range(0, len(items), size):
        yield items[i : i + size]
