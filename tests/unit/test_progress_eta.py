"""JSON progress lines carry an ETA from this run's rate (a resumed copy's earlier documents do not count)."""

from __future__ import annotations

import logging

import pytest

from mongoferry.infra.progress import JsonReporter


def test_json_progress_lines_say_how_long_is_left(caplog: pytest.LogCaptureFixture) -> None:
    reporter = JsonReporter(interval=3600)
    try:
        reporter.add("app.a", "app.a", total_docs=1000, total_bytes=0)
        reporter.add("app.b", "app.b", total_docs=1000, total_bytes=0, docs=900)  # resumed at 900
        reporter.add("app.c", "app.c", total_docs=500, total_bytes=0)  # queued: not moving yet
        reporter.advance("app.a", 250, 0)
        reporter.advance("app.b", 50, 0)
        for ns in ("app.a", "app.b"):
            moving = reporter.rows[ns].moving_since
            assert moving is not None
            reporter.rows[ns].moving_since = moving - 10.0  # as if moving for ten seconds
        reporter.started -= 10.0
        with caplog.at_level(logging.INFO, logger="mongoferry"):
            reporter.emit()
    finally:
        reporter.close()
    lines = {(r.getMessage(), getattr(r, "ns", None)): r for r in caplog.records}
    assert lines[("copy progress", "app.a")].etaSeconds == pytest.approx(30.0, abs=0.5)  # 750 left at 25/s
    assert lines[("copy progress", "app.b")].etaSeconds == pytest.approx(10.0, abs=0.5)  # 50 left at 5/s
    assert lines[("copy progress", "app.c")].etaSeconds is None  # no rate of its own yet
    total = lines[("copy total", None)]
    assert total.docs == 1200 and total.etaSeconds == pytest.approx(43.3, abs=0.5)  # 1300 left at 30/s
