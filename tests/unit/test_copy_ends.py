"""The meeting of two readers of one collection, and the measured choice of a second reader."""

from __future__ import annotations

from typing import Any

from bson import Int64, MaxKey, MinKey, ObjectId

from mongoferry.pipeline.copy_ends import WINDOW_BATCHES, Meeting, keep_second_reader, worth_a_second_reader


def docs(*ids: Any) -> list[dict[str, Any]]:
    return [{"_id": i} for i in ids]


def test_a_side_writes_everything_until_the_other_has_written_something() -> None:
    m = Meeting(batch_size=3)
    assert m.cut(False, docs(1, 2, 3)) == (docs(1, 2, 3), False)


def test_a_side_stops_at_the_first_id_the_other_side_wrote() -> None:
    m = Meeting(batch_size=3)
    m.wrote(True, docs(MaxKey(), "z", ObjectId(b"\x00" * 12)))  # the down side, from the end
    kept, met = m.cut(False, docs(7, "a", ObjectId(b"\x00" * 12), "z"))
    assert met and kept == docs(7, "a")


def test_ids_are_compared_as_bson_so_equal_numbers_of_other_types_are_not_the_same_id() -> None:
    m = Meeting(batch_size=3)
    m.wrote(False, docs(1))
    assert m.cut(True, docs(Int64(2), 1.5, "1")) == (docs(Int64(2), 1.5, "1"), False)
    assert m.cut(True, docs(MinKey(), 1)) == (docs(MinKey()), True)


def test_the_window_forgets_the_oldest_batches() -> None:
    m = Meeting(batch_size=2)
    size = WINDOW_BATCHES * 2
    m.wrote(False, docs(*range(size + 3)))
    assert m.cut(True, docs(0))[1] is False  # forgotten: read again, never lost
    assert m.cut(True, docs(size + 2))[1] is True


def test_a_second_reader_is_tried_only_where_opening_a_cursor_is_cheap_and_enough_is_left() -> None:
    assert worth_a_second_reader(open_s=0.005, docs_left=1_000_000, rate=10_000, open_share=0.05, min_docs=20_000)[0]
    ok, why = worth_a_second_reader(open_s=2.0, docs_left=100_000, rate=10_000, open_share=0.05, min_docs=20_000)
    assert not ok and "opening a cursor took 2.00 s" in why and "20%" in why
    assert not worth_a_second_reader(0.001, 10_000, 10_000, 0.05, 20_000)[0]
    assert not worth_a_second_reader(0.001, 100_000, 0.0, 0.05, 20_000)[0]


def test_the_second_reader_is_kept_only_when_throughput_rose_by_the_gain() -> None:
    assert keep_second_reader(1000, 1100, 1.1)
    assert not keep_second_reader(1000, 1099, 1.1)
    assert keep_second_reader(1000, 0, 0.0)
