"""Invariant 3 as a function: the position to resume from is the lowest every sink has applied."""

from __future__ import annotations

from collections.abc import Iterable

from mongoferry.core.events import Position


def lowest(positions: Iterable[Position | None], start: Position) -> Position:
    """The lowest of the sinks' positions; a sink with none has applied nothing after `start`."""
    return min((p if p is not None else start for p in positions), default=start)
