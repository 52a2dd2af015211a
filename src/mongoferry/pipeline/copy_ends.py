"""A second reader for one collection, measured before it is kept (`--ranges auto`).

A collection is copied by one reader in `_id` order. Once that reader has run a while, a second
one may start from the collection's other end, reading down (`Partition.descending`). The two stop
where they meet, and neither needs a boundary planned in advance: no `_id` read, no comparison of
BSON values in Python (which would have to get MongoDB's cross-type order exactly right).

How they meet: each side remembers the `_id`s of the last batches it has *written*. A side stops at
the first document of a batch whose `_id` the other side has written (byte-equal BSON: one document
has one `_id`). Each side writes a contiguous run of `_id`s from its end, so the run below that
document and the run from it up are both written: the collection is covered. If the document the
other side wrote has been deleted since, the side reads on into the other's run and writes it again
(an insert that meets a copied `_id` replaces it): extra work, never a gap. When either side reaches
its end of the collection, or stops at a meeting, the other stops too (`met`).

Whether it is tried and kept is measured: the opening of the first cursor (time to its first
batch) says what a second one costs, and the copy's throughput before and after says what it gave.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import bson

WINDOW_BATCHES = 4  # batches of `_id`s each side remembers: the meeting is looked for in these
MEASURE_S = 3.0  # seconds of throughput measured before a second reader, and again after it


def id_key(doc: Any) -> bytes:
    """The `_id` as BSON bytes: equal for one document read by both sides."""
    return bson.encode({"_id": doc["_id"]})


class Meeting:
    """The two readers of one collection: the ascending one ("up") and the descending one ("down")."""

    def __init__(self, batch_size: int) -> None:
        self.lock = threading.Lock()
        size = WINDOW_BATCHES * max(1, batch_size)
        self.written: dict[bool, deque[bytes]] = {False: deque(maxlen=size), True: deque(maxlen=size)}
        self.seen: dict[bool, set[bytes]] = {False: set(), True: set()}
        self.met = threading.Event()  # the collection is covered: both sides stop
        self.retired = threading.Event()  # the down side stops (it was not worth it); up reads on

    def cut(self, descending: bool, docs: Sequence[Any]) -> tuple[list[Any], bool]:
        """The documents of a batch to write before the first one the other side has written, and
        whether the sides met in it."""
        with self.lock:
            other = self.seen[not descending]
            if not other:
                return list(docs), False
            for i, d in enumerate(docs):
                if id_key(d) in other:
                    return list(docs[:i]), True
        return list(docs), False

    def wrote(self, descending: bool, docs: Sequence[Any]) -> None:
        """Remember the `_id`s of a batch this side has written (the oldest are forgotten)."""
        window, seen = self.written[descending], self.seen[descending]
        with self.lock:
            for d in docs:
                if len(window) == window.maxlen:
                    seen.discard(window[0])
                key = id_key(d)
                window.append(key)
                seen.add(key)


def worth_a_second_reader(open_s: float, docs_left: int, rate: float, open_share: float,
                          min_docs: int) -> tuple[bool, str]:
    """Try a second reader? Only where the collection has enough left and opening a cursor (what the
    first one took) costs at most `open_share` of the time the copy has left at its current rate.
    Some compatible servers read the whole collection to open any cursor: there a second reader
    costs a scan, and one reader is the fastest copy."""
    if docs_left < min_docs:
        return False, f"{docs_left} documents left"
    if rate <= 0:
        return False, "no throughput measured"
    time_left = docs_left / rate
    if open_s > open_share * time_left:
        return False, (f"opening a cursor took {open_s:.2f} s here, {open_s / time_left:.0%} of the "
                       f"{time_left:.0f} s left")
    return True, f"opening a cursor took {open_s:.3f} s, {time_left:.0f} s left"


def keep_second_reader(base_rate: float, trial_rate: float, gain: float) -> bool:
    """Keep the second reader only when the copy's throughput rose by `gain` with it."""
    return trial_rate >= gain * base_rate
