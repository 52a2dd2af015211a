"""Replay the hand-derived oplog fixtures in tests/fixtures/oplog through apply_oplog_update.

Each fixture is canonical extended JSON: {"description", "pre", "entry", "post"}, where "entry" is a
whole oplog entry as a 4.4-8.0 server writes it and "post" was derived by hand from the rules.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import json_util
from bson.binary import Binary
from bson.int64 import Int64
from bson.json_util import CANONICAL_JSON_OPTIONS
from bson.timestamp import Timestamp

from mongoferry.core.diff_apply import apply_oplog_update, classify_update

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "oplog"
FIXTURES = sorted(FIXTURE_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json_util.loads(
        path.read_text(encoding="utf-8"), json_options=CANONICAL_JSON_OPTIONS
    )
    return case


def test_fixture_set_covers_every_kind() -> None:
    assert len(FIXTURES) >= 12
    entries = [load(path)["entry"]["o"] for path in FIXTURES]
    kinds = [classify_update(o) for o in entries]
    assert {"v1", "v2", "replacement"} <= set(kinds)
    assert any("$v" not in o for o, kind in zip(entries, kinds, strict=True) if kind == "v1")
    assert any('"l":' in path.read_text(encoding="utf-8") for path in FIXTURES)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_post_image(path: Path) -> None:
    case = load(path)
    result = apply_oplog_update(case["pre"], case["entry"]["o"])
    assert bson.encode(result) == bson.encode(case["post"]), case["description"]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_reapplication_is_stable(path: Path) -> None:
    # Oplog entries are idempotent: replaying one onto its own result changes nothing.
    case = load(path)
    once = apply_oplog_update(case["pre"], case["entry"]["o"])
    assert bson.encode(apply_oplog_update(once, case["entry"]["o"])) == bson.encode(once)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_entry_is_a_complete_update_entry(path: Path) -> None:
    case = load(path)
    entry = case["entry"]
    assert isinstance(case["description"], str) and case["description"]
    assert list(entry) == ["op", "ns", "ui", "o", "o2", "ts", "t", "v", "wall"]
    assert entry["op"] == "u"
    assert isinstance(entry["ns"], str) and "." in entry["ns"]
    assert isinstance(entry["ui"], Binary) and entry["ui"].subtype == 4 and len(entry["ui"]) == 16
    assert bson.encode(entry["o2"]) == bson.encode({"_id": case["pre"]["_id"]})
    assert isinstance(entry["ts"], Timestamp)
    assert isinstance(entry["t"], Int64)
    assert isinstance(entry["v"], Int64) and entry["v"] == 2
    assert isinstance(entry["wall"], dt.datetime)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_is_canonical_extended_json(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert_no_bare_numbers(json.loads(text))
    assert json.loads(json_util.dumps(load(path), json_options=CANONICAL_JSON_OPTIONS)) == json.loads(text)


def assert_no_bare_numbers(value: Any) -> None:
    """Canonical mode wraps every number so int32, int64 and double stay distinct."""
    if isinstance(value, dict):
        if "$timestamp" in value:
            return  # {"$timestamp": {"t": <uint32>, "i": <uint32>}} is canonical with bare numbers
        for item in value.values():
            assert_no_bare_numbers(item)
    elif isinstance(value, list):
        for item in value:
            assert_no_bare_numbers(item)
    else:
        assert isinstance(value, str | bool) or value is None, f"bare JSON number {value!r}"
