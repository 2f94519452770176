"""Acks come first: while webhooks keep arriving the worker starts no batch, up to a bound, then small ones."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from src.embedding_processor import LocalEmbedder
from src.pipeline import Pipeline, WorkerSettings
from src.stats import RuntimeStats
from src.store.sqlite import SQLiteStore
from src.watch_info_extractor import extract_watch_info
from tests.test_pipeline_retries import inbound


async def _processed(store: SQLiteStore) -> int:
    return (await store.stats()).processed


async def test_a_burst_holds_the_worker_back_then_small_batches_move_and_the_rest_follows(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "busy.sqlite3")
    await store.open()
    runtime = RuntimeStats.new()
    settings = WorkerSettings(
        busy_concurrency=0, yield_max_seconds=0.6, busy_batch_size=5, batch_size=512, linger_seconds=0.0
    )
    embedder = LocalEmbedder(32)
    # Extraction runs on the event loop here (no child process): load its catalogue before the burst, as
    # the server's warm-up does, so a first batch does not stall the loop.
    extract_watch_info("Vends Rolex Submariner 116610LN 8200€")
    await embedder.embed_batch(["warm-up"])
    pipeline = Pipeline(store, embedder, runtime, settings)

    async def webhooks_arriving(seconds: float) -> None:
        """What the webhook handler records, at about 500 POSTs a second."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(5):
                runtime.webhook_posts += 1
            runtime.last_webhook_at = time.monotonic()
            await asyncio.sleep(0.01)

    pipeline.start()  # as in the server: running before the burst
    burst = asyncio.create_task(webhooks_arriving(2.3))
    await asyncio.sleep(0.3)
    await store.insert_messages([inbound(i) for i in range(40)])  # what the burst stored
    pipeline.wake()
    try:
        await asyncio.sleep(0.4)
        assert await _processed(store) == 0  # held back: no batch starts while webhooks arrive
        await asyncio.sleep(1.2)
        during = await _processed(store)
        assert 5 <= during < 40  # after the bound, small batches still make progress
        await burst
        deadline = time.monotonic() + 5
        while await _processed(store) < 40:  # the burst is over: full batches take the rest
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await pipeline.stop()
        await store.close()
