"""The demos run end to end as a user would start them, and prove their own result."""

from __future__ import annotations

from tests.integration.conftest import run_cli


def test_split_demo_splits_commits_prunes_and_proves_it() -> None:
    r = run_cli("demo", "--split", "--docs", "3000", "--log-format", "text", timeout=600)
    assert r.code == 0, r.text[-3000:]
    assert "split exited with 0" in r.err and "COMMITTED" in r.err, r.err[-3000:]
    assert "prune finished: deleted" in r.err and "DIFF" not in r.err
    assert r.err.count("│ ok │") == 3, r.err[-2000:]


def test_backup_demo_restores_to_the_second_before_the_accident() -> None:
    r = run_cli("demo", "--backup", "--docs", "3000", "--log-format", "text", timeout=600)
    assert r.code == 0, r.text[-3000:]
    assert "the accident:" in r.err and "restored" in r.err and "DIFF" not in r.err, r.err[-3000:]
    assert r.err.count("│ ok │") == 2, r.err[-2000:]
