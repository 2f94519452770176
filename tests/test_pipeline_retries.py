"""The worker against the fake OpenAI server: one call per batch, outages, retries, failed and requeued."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import create_app
from src.config import Settings
from src.embedding_processor import OpenAIEmbedder
from src.pipeline import Pipeline, WorkerSettings
from src.stats import RuntimeStats
from src.store.base import EmbeddingDimensionMismatch, InboundMessage
from src.store.sqlite import SQLiteStore
from src.watch_info_extractor import extract_watch_info
from tests.fake_openai import FakeOpenAI
from tests.webhook_payloads import body_and_headers, change, payload, text_message

API_KEY = "sk-test-PIPELINE-SECRET-0123456789"
# How long the fake OpenAI is down in the outage test (seconds); longer runs show the same thing slower.
OUTAGE_SECONDS = float(os.environ.get("FAKE_OPENAI_OUTAGE_SECONDS", "2"))
DIMENSIONS = 32

WATCHES = [
    "Rolex Submariner 126610LN",
    "Rolex Daytona 116500LN",
    "Patek Nautilus 5711/1A",
    "AP Royal Oak 15500ST",
    "Tudor Black Bay M79030N",
    "Rolex GMT-Master II 126710BLRO",
]


def listing_text(i: int) -> str:
    """One watch for sale per message, varied so the texts (and their vectors) differ."""
    return f"WTS {WATCHES[i % len(WATCHES)]} 20{10 + i % 14} full set {9000 + i}€"


def inbound(i: int) -> InboundMessage:
    return InboundMessage(
        id=f"wamid.PIPE{i:06d}",
        source="webhook",
        chat_id="15550100001",
        sender_id="15550100042",
        sender_name="Dealer 42",
        sent_at=None,
        wa_type="text",
        text=listing_text(i),
    )


def expected_listings(messages: list[InboundMessage]) -> int:
    return sum(len(extract_watch_info(m.text, None).watches) for m in messages)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default_dimensions=DIMENSIONS) as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeOpenAI) -> FakeOpenAI:
    fake_server.reset()
    fake_server.end_outage()
    config = fake_server.config
    config.latency = 0.0
    config.error_rate = 0.0
    config.rate_limit_rate = 0.0
    config.fail_next = 0
    return fake_server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    sqlite = SQLiteStore(tmp_path / "pipeline.sqlite3", synchronous="NORMAL")
    await sqlite.open()
    yield sqlite
    await sqlite.close()


@pytest.fixture
async def embedder(fake: FakeOpenAI) -> AsyncIterator[OpenAIEmbedder]:
    openai_embedder = OpenAIEmbedder(
        api_key=API_KEY,
        base_url=fake.base_url,
        dimensions=DIMENSIONS,
        max_retries=1,
        retry_base_seconds=0.02,
        retry_max_seconds=0.05,
        timeout_seconds=5.0,
    )
    yield openai_embedder
    await openai_embedder.aclose()


def fast_worker(**overrides: Any) -> WorkerSettings:
    options: dict[str, Any] = {
        "batch_size": 10,
        "poll_seconds": 0.05,
        "lease_seconds": 30,
        "max_attempts": 50,
        "retry_base_seconds": 0.1,
        "retry_max_seconds": 0.4,
        "pause_max_seconds": 0.3,
        "linger_seconds": 0.02,
        "concurrency": 2,
    }
    options.update(overrides)
    return WorkerSettings(**options)


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_one_embedding_call_per_batch(
    fake: FakeOpenAI, store: SQLiteStore, embedder: OpenAIEmbedder
) -> None:
    messages = [inbound(i) for i in range(45)]
    expected = expected_listings(messages)
    assert expected == len(messages), "every test message is one listing"
    await store.insert_messages(messages)
    runtime = RuntimeStats.new()
    pipeline = Pipeline(store, embedder, runtime, fast_worker(batch_size=20))

    await pipeline.drain(timeout=20)

    stats = await store.stats()
    assert (stats.processed, stats.pending, stats.listings_total) == (45, 0, 45)
    assert fake.stats.embedding_requests == math.ceil(45 / 20) == runtime.embedding_calls
    assert fake.stats.batch_sizes == [20, 20, 5]
    assert await store.listings_needing_embedding(embedder.model_name, 10) == []


async def test_the_running_worker_lingers_so_a_burst_is_one_call(
    fake: FakeOpenAI, store: SQLiteStore, embedder: OpenAIEmbedder
) -> None:
    pipeline = Pipeline(store, embedder, RuntimeStats.new(), fast_worker(batch_size=100, linger_seconds=0.3))
    pipeline.start()
    try:
        for i in range(30):  # a burst of webhooks, each waking the worker
            await store.insert_messages([inbound(i)])
            pipeline.wake()
            await asyncio.sleep(0.005)

        async def done() -> bool:
            return (await store.stats()).processed == 30

        await wait_for(done, 10, "30 processed")
    finally:
        await pipeline.stop()
    assert fake.stats.embedding_requests <= 2


async def test_outage_messages_stay_pending_then_all_are_embedded_once(
    fake: FakeOpenAI, store: SQLiteStore, embedder: OpenAIEmbedder
) -> None:
    first = [inbound(i) for i in range(40)]
    second = [inbound(i) for i in range(40, 80)]
    runtime = RuntimeStats.new()
    pipeline = Pipeline(store, embedder, runtime, fast_worker())
    fake.start_outage(OUTAGE_SECONDS)
    outage_ends = time.monotonic() + OUTAGE_SECONDS
    await store.insert_messages(first)
    pipeline.start()
    try:
        await asyncio.sleep(min(0.5, OUTAGE_SECONDS / 3))
        during = await store.stats()
        assert (during.pending, during.processed, during.failed) == (40, 0, 0)
        assert runtime.last_embedding_error is not None and "503" in runtime.last_embedding_error
        assert API_KEY not in runtime.last_embedding_error

        await store.insert_messages(second)  # more arrive while OpenAI is down: they queue
        pipeline.wake()
        assert time.monotonic() < outage_ends, "the outage must outlast the checks above"
        assert (await store.stats()).pending == 80

        async def all_processed() -> bool:
            return (await store.stats()).processed == 80

        await wait_for(all_processed, OUTAGE_SECONDS + 15, "every message processed after the outage")
    finally:
        await pipeline.stop()

    stats = await store.stats()
    assert (stats.pending, stats.failed, stats.listings_total) == (0, 0, 80)
    # Nothing embedded twice: the successful calls carried exactly one input per listing.
    assert sum(fake.stats.batch_sizes) == 80
    assert fake.stats.status_counts.get("503", 0) >= 1
    # A redelivery of the same messages stores nothing new.
    assert await store.insert_messages(first + second) == []
    # The pause kept the queue's attempts low: only probe batches were charged an attempt.
    tried = [await store.get_message(m.id) for m in first + second]
    assert sum(1 for m in tried if m and m.attempts) <= 40


async def test_failed_after_max_attempts_then_retry_failed_requeues(
    fake: FakeOpenAI, store: SQLiteStore, embedder: OpenAIEmbedder, tmp_path: Path
) -> None:
    messages = [inbound(i) for i in range(5)]
    await store.insert_messages(messages)
    pipeline = Pipeline(
        store, embedder, RuntimeStats.new(), fast_worker(max_attempts=3, retry_base_seconds=0.01)
    )
    fake.config.error_rate = 1.0

    async def all_failed() -> bool:
        await pipeline.drain(timeout=10)
        return (await store.stats()).failed == 5

    await wait_for(all_failed, 10, "every message failed")
    stored = await store.get_message(messages[0].id)
    assert stored is not None and stored.status == "failed" and stored.attempts == 3
    assert stored.last_error and "HTTP 500" in stored.last_error and API_KEY not in stored.last_error

    fake.config.error_rate = 0.0
    assert await store.requeue_failed() == 5
    await pipeline.drain(timeout=10)
    stats = await store.stats()
    assert (stats.processed, stats.failed, stats.listings_total) == (5, 0, 5)


async def test_stop_is_bounded_while_a_batch_retries(fake: FakeOpenAI, store: SQLiteStore) -> None:
    fake.config.latency = 3.0
    slow = OpenAIEmbedder(api_key=API_KEY, base_url=fake.base_url, dimensions=DIMENSIONS, timeout_seconds=10)
    await store.insert_messages([inbound(0)])
    pipeline = Pipeline(store, slow, RuntimeStats.new(), fast_worker(stop_timeout_seconds=0.3))
    pipeline.start()
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await pipeline.stop()
    await slow.aclose()
    assert time.monotonic() - started < 2.0
    assert (await store.stats()).pending == 1  # still queued; its lease expires and it is tried again


# -- through the app: /health, start-up checks, CLI ----------------------------------------------------


@pytest.fixture
def openai_settings(make_settings: Callable[..., Settings], fake: FakeOpenAI) -> Callable[..., Settings]:
    def _make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_BASE_URL": fake.base_url,
            "EMBEDDING_DIMENSIONS": DIMENSIONS,
            "EMBEDDING_MAX_RETRIES": 0,
            "WORKER_RETRY_BASE_SECONDS": 0.2,
            "WORKER_BATCH_LINGER_SECONDS": 0.0,
        }
        values.update(overrides)
        return make_settings(**values)

    return _make


def test_health_shows_pending_failed_and_the_last_error_without_the_key(
    fake: FakeOpenAI, openai_settings: Callable[..., Settings]
) -> None:
    settings = openai_settings()
    fake.start_outage(30)
    with TestClient(create_app(settings)) as client:
        body, headers = body_and_headers(
            payload([change([text_message(listing_text(1)), text_message(listing_text(2))])]),
            settings.WHATSAPP_APP_SECRET,
        )
        assert client.post("/webhook", content=body, headers=headers).status_code == 200
        deadline = time.monotonic() + 10
        queue: dict[str, Any] = {}
        while time.monotonic() < deadline:
            queue = client.get("/health").json()["queue"]
            if queue["last_error"]:
                break
            time.sleep(0.05)
        fake.end_outage()
    assert queue["pending"] == 2 and queue["failed"] == 0
    assert "503" in queue["last_error"] and API_KEY not in queue["last_error"]


def test_startup_refuses_a_store_of_another_dimension(openai_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(openai_settings(EMBEDDING_DIMENSIONS=DIMENSIONS))):
        pass
    with pytest.raises(EmbeddingDimensionMismatch, match=f"EMBEDDING_DIMENSIONS={DIMENSIONS}"):
        with TestClient(create_app(openai_settings(EMBEDDING_DIMENSIONS=DIMENSIONS * 2))):
            pass
