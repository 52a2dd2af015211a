"""The end-of-copy summary: whole namespace names in every format, no box in text logs."""

from __future__ import annotations

import pytest

from mongoferry.infra.progress import plain_columns, print_summary

LONG = "averyveryverylongdatabasename.acollectionwithalongname"
ROWS = [{"source": LONG, "destination": LONG, "sourceCount": 1234, "destinationCount": 1234},
        {"source": "a.b", "destination": "x.y", "sourceCount": 5, "destinationCount": 4}]


def test_text_summary_is_plain_aligned_columns(capsys: pytest.CaptureFixture[str]) -> None:
    print_summary(ROWS, "text")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "copy summary"
    assert not any(ch in "".join(lines) for ch in "┏┃└─│")
    assert lines[2].startswith(f"{LONG}  {LONG}") and lines[2].endswith("1,234  ok")
    assert lines[3].endswith("5                  4  differs")
    column = len(LONG) + 2  # the second column starts at the same place on every line
    assert [line[column:].split()[0] for line in lines[1:]] == ["destination", LONG, "x.y"]


def test_rich_summary_off_a_terminal_never_cuts_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    print_summary(ROWS, "rich")
    out = capsys.readouterr().out
    assert out.count(LONG) == 2 and "…" not in out
    assert out.endswith("┘\n")  # the closing border ends its own line


def test_plain_columns_align_right_where_asked() -> None:
    assert plain_columns([["a", "1"], ["bbb", "100"]], right=frozenset({1})) == ["a      1", "bbb  100"]
