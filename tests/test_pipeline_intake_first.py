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


async def test_during_a_burst_batches_are_extracted_ahead_and_written_once_it_ends(tmp_path: Path) -> None:
    """The child's core is idle while the event loop acknowledges: extraction starts during the burst,
    nothing is written before it ends (within the bound), and everything is written right after."""
    store = SQLiteStore(tmp_path / "ahead.sqlite3")
    await store.open()
    runtime = RuntimeStats.new()
    settings = WorkerSettings(yield_max_seconds=5.0, batch_size=512, linger_seconds=0.0)
    embedder = LocalEmbedder(32)
    extract_watch_info("Vends Rolex Submariner 116610LN 8200€")
    await embedder.embed_batch(["warm-up"])
    pipeline = Pipeline(store, embedder, runtime, settings)
    extracted_at: list[float] = []
    extract = pipeline.analysis.extract

    async def recording_extract(texts: list[str]) -> list:  # type: ignore[type-arg]
        extracted_at.append(time.monotonic())
        return await extract(texts)

    pipeline.analysis.extract = recording_extract  # type: ignore[method-assign]

    async def webhooks_arriving(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            runtime.webhook_posts += 5
            runtime.last_webhook_at = time.monotonic()
            await asyncio.sleep(0.01)

    pipeline.start()
    burst = asyncio.create_task(webhooks_arriving(1.5))
    await asyncio.sleep(0.3)
    await store.insert_messages([inbound(i) for i in range(60)])
    pipeline.wake()
    try:
        await burst
        burst_ended = time.monotonic()
        assert extracted_at and extracted_at[0] < burst_ended  # extracted while the burst went on
        assert await _processed(store) == 0  # but nothing written during it
        while await _processed(store) < 60:
            assert time.monotonic() - burst_ended < 2.0
            await asyncio.sleep(0.02)
    finally:
        await pipeline.stop()
        await store.close()
