"""SQLite WAL checkpoints happen on the store's own thread, never inside an intake COMMIT.

The database file is read with `immutable=1`, which ignores the WAL: it shows what checkpoints have copied.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from src.store.base import InboundMessage
from src.store.sqlite import SQLiteStore


def _messages(start: int, count: int) -> list[InboundMessage]:
    return [
        InboundMessage(
            id=f"wamid.WAL{i:07d}",
            source="webhook",
            chat_id="chat-1",
            sender_id=f"1555000{i % 1000:04d}",
            sender_name="Test Dealer",
            sent_at=None,
            wa_type="text",
            text=f"WTS Rolex Submariner 126610LN full set {9000 + i}€ " + "x" * 200,
            raw={"id": f"wamid.WAL{i:07d}", "type": "text"},
        )
        for i in range(start, start + count)
    ]


def _rows_in_database_file(path: Path) -> int:
    # immutable=1 trusts the file not to change while it is read; the checkpoint thread may be copying pages
    # into it right then, and a read torn by that copy looks corrupt: read again once the copy is done.
    for _ in range(100):
        conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return int(conn.execute("SELECT count(*) FROM whatsapp_messages").fetchone()[0])
        except sqlite3.OperationalError:  # not even the schema has been copied yet
            return 0
        except sqlite3.DatabaseError:  # "database disk image is malformed": a torn read
            time.sleep(0.01)
        finally:
            conn.close()
    raise AssertionError(f"{path} reads as corrupt even between checkpoints")


async def _insert(store: SQLiteStore, total: int, per_post: int = 10) -> None:
    for start in range(0, total, per_post * 20):
        await asyncio.gather(
            *(
                store.insert_messages(_messages(s, per_post))
                for s in range(start, min(total, start + per_post * 20), per_post)
            )
        )


async def test_intake_commits_never_checkpoint_and_the_thread_does(tmp_path: Path) -> None:
    path = tmp_path / "wal.sqlite3"
    store = SQLiteStore(path)
    assert store._checkpointer is not None
    store._checkpointer.interval = 3600.0  # held back: only commits could checkpoint now
    await store.open()
    try:
        # Far more than SQLite's default autocheckpoint threshold of 1000 pages (about 4 MB).
        await _insert(store, 12_000)
        assert Path(f"{path}-wal").stat().st_size > 4 * 1024 * 1024
        assert _rows_in_database_file(path) == 0  # no COMMIT copied anything into the database file

        conn = sqlite3.connect(path, isolation_level=None)
        store._checkpointer.checkpoint(conn)  # what the thread does each round
        conn.close()
        assert _rows_in_database_file(path) == 12_000
    finally:
        await store.close()
    assert _rows_in_database_file(path) == 12_000


async def test_the_checkpoint_thread_copies_new_writes_within_its_interval(tmp_path: Path) -> None:
    path = tmp_path / "wal.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    try:
        await _insert(store, 2_000)
        deadline = time.monotonic() + 10
        while _rows_in_database_file(path) < 2_000:
            assert time.monotonic() < deadline, "the checkpoint thread did not copy the WAL"
            await asyncio.sleep(0.1)
        assert await store.get_message("wamid.WAL0001999") is not None
    finally:
        await store.close()


async def test_the_wal_stays_bounded_under_writes_that_never_pause(tmp_path: Path) -> None:
    path = tmp_path / "wal.sqlite3"
    store = SQLiteStore(path)
    assert store._checkpointer is not None
    store._checkpointer.interval = 0.05
    store._checkpointer.restart_pages = 1_000  # about 4 MB
    await store.open()
    try:
        for round_ in range(40):  # 40,000 messages, about 40 MB of WAL if nothing were checkpointed
            await store.insert_messages(_messages(round_ * 1_000, 1_000))
        assert _rows_in_database_file(path) > 0
        # journal_size_limit cuts the file back after a reset or restart.
        assert Path(f"{path}-wal").stat().st_size < 16 * 1024 * 1024
    finally:
        await store.close()
