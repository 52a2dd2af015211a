"""Invariant 3 as a function: the position to resume from is the lowest every sink has applied."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from mongoferry.core.events import Position
from mongoferry.state.meta import SavedPosition


class PositionStore(Protocol):
    """Where each sink's position is kept: a job's metadata store (state.meta.MetaStore), or one
    store per destination for a split (each destination's job keeps its own)."""

    def load_position(self, sink: str) -> SavedPosition | None: ...
    def save_position(self, sink: str, position: Position, last_event: dict[str, Any] | None = None) -> None: ...


def lowest(positions: Iterable[Position | None], start: Position) -> Position:
    """The lowest of the sinks' positions; a sink with none has applied nothing after `start`."""
    return min((p if p is not None else start for p in positions), default=start)
