"""The oplog tail against a real server: an entry the tail did not return before an idle spell is
read again before the capture's position moves to the quiet time (a lost entry there was a hole
in a backup's archive that restore could not see)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mongoferry.core.events import Position
from mongoferry.dev.embedded import EmbeddedServer
from mongoferry.source.capture import OplogCapture, newest_oplog_time, open_oplog


def inserted_ids(entries: list[dict[str, Any]]) -> list[Any]:
    return [e["o"]["_id"] for e in entries if e["op"] == "i" and e["ns"] == "app.t"]


def test_an_entry_the_tail_missed_before_a_quiet_spell_is_read_again_once(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "src").start()
    try:
        with server.client() as client:
            client.app.t.insert_one({"_id": 0})
            capture = OplogCapture(client, Position(newest_oplog_time(client)), await_ms=100)
            client.app.t.insert_one({"_id": 1})
            missed = newest_oplog_time(client)
            # a tail already past the entry, as a server's tail can be when it misses one
            capture.cursor.close()
            capture.cursor = open_oplog(client, missed, await_ms=100)
            entries: list[dict[str, Any]] = []

            def read_until(done: Any) -> None:
                deadline = time.monotonic() + 30
                while not done():
                    assert time.monotonic() < deadline, entries
                    batch = capture.next_batch(100)
                    entries.extend(batch.entries)
                    if batch.position is not None:
                        positions.append(batch.position.ts)

            positions: list[Any] = []
            read_until(lambda: positions and positions[-1] > missed)  # the quiet time passed the entry
            assert inserted_ids(entries) == [1]
            client.app.t.insert_one({"_id": 2})  # the tail, reopened after the re-read, goes on
            read_until(lambda: 2 in inserted_ids(entries))
            time.sleep(0.5)
            read_until(lambda: True)
            assert inserted_ids(entries) == [1, 2]
            assert positions == sorted(positions)
            capture.close()
    finally:
        server.stop()
