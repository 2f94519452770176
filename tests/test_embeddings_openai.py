"""OpenAIEmbedder against the fake OpenAI server on loopback: batching, limits, retries, timeouts, secrets."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest

from src.config import Settings
from src.embedding_processor import (
    MAX_TOKENS_PER_INPUT,
    EmbeddingError,
    OpenAIEmbedder,
    create_embedder,
    estimate_tokens,
    fit_input,
    plan_requests,
    redact,
)
from src.store.base import EmbeddingDimensionMismatch, InboundMessage
from src.store.sqlite import SQLiteStore
from tests.fake_openai import FakeOpenAI, fake_vector

API_KEY = "sk-test-SECRET0123456789"


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeOpenAI) -> FakeOpenAI:
    """The shared server, with default behaviour and zeroed counters for each test."""
    fake_server.reset()
    fake_server.end_outage()
    config = fake_server.config
    config.latency = 0.0
    config.error_rate = 0.0
    config.rate_limit_rate = 0.0
    config.retry_after = 1.0
    config.fail_next = 0
    config.fail_status = 500
    config.fail_after_ok = -1
    return fake_server


@pytest.fixture
async def make_embedder(fake: FakeOpenAI) -> AsyncIterator[Any]:
    made: list[OpenAIEmbedder] = []

    def _make(**overrides: Any) -> OpenAIEmbedder:
        options: dict[str, Any] = {
            "api_key": API_KEY,
            "base_url": fake.base_url,
            "dimensions": 64,
            "retry_base_seconds": 0.01,
            "retry_max_seconds": 0.05,
            "timeout_seconds": 5.0,
        }
        options.update(overrides)
        embedder = OpenAIEmbedder(**options)
        made.append(embedder)
        return embedder

    yield _make
    for embedder in made:
        await embedder.aclose()


async def test_one_request_per_batch_of_inputs(fake: FakeOpenAI, make_embedder: Any) -> None:
    embedder = make_embedder(batch_size=100)
    texts = [f"Rolex Submariner 12661{i} full set {i}" for i in range(250)]

    vectors = await embedder.embed_batch(texts)

    assert len(vectors) == 250
    assert fake.stats.embedding_requests == math.ceil(250 / 100) == embedder.requests
    assert sorted(fake.stats.batch_sizes) == [50, 100, 100]  # requests run concurrently: any order
    # Order is kept across requests: each vector is the one of its own text.
    assert vectors[0] == pytest.approx(fake_vector(texts[0], 64).tolist(), abs=1e-6)
    assert vectors[249] == pytest.approx(fake_vector(texts[249], 64).tolist(), abs=1e-6)


async def test_batch_size_is_capped_at_the_api_limit(fake: FakeOpenAI, make_embedder: Any) -> None:
    embedder = make_embedder(batch_size=10_000, dimensions=8)
    await embedder.embed_batch(["x"] * 3000)
    assert sorted(fake.stats.batch_sizes) == [952, 2048]


def test_requests_are_planned_under_the_token_cap() -> None:
    texts = ["a" * 1000] * 700  # 700k estimated tokens: three requests of at most 300k
    ranges = plan_requests(texts, max_inputs=2048)
    assert ranges == [(0, 300), (300, 600), (600, 700)]
    assert all(sum(estimate_tokens(t) for t in texts[a:b]) <= 300_000 for a, b in ranges)
    assert plan_requests([], 10) == []


def test_token_estimate_is_an_upper_bound_and_long_inputs_are_truncated() -> None:
    assert estimate_tokens("Rolex") == 5  # a BPE token is at least one byte
    long = "é" * 10_000  # 20k bytes
    fitted = fit_input(long)
    assert estimate_tokens(fitted) <= MAX_TOKENS_PER_INPUT
    assert fitted == "é" * (MAX_TOKENS_PER_INPUT // 2)  # cut on a character boundary
    assert fit_input("") == " "


async def test_an_input_over_the_token_limit_is_truncated_not_fatal(
    fake: FakeOpenAI, make_embedder: Any
) -> None:
    embedder = make_embedder()
    vectors = await embedder.embed_batch(["x" * 200_000, "short"])
    assert len(vectors) == 2
    assert fake.stats.status_counts == {"200": 1}


async def test_retry_after_429_honours_retry_after(fake: FakeOpenAI, make_embedder: Any) -> None:
    fake.config.fail_next = 1
    fake.config.fail_status = 429
    fake.config.retry_after = 1.0
    embedder = make_embedder()

    started = time.monotonic()
    vectors = await embedder.embed_batch(["Patek 5711"])
    elapsed = time.monotonic() - started

    assert len(vectors) == 1
    assert fake.stats.status_counts == {"429": 1, "200": 1}
    assert embedder.retries == 1
    # retry_max_seconds is 0.05 here, so only Retry-After explains a one-second wait.
    assert 1.0 <= elapsed < 3.0


async def test_5xx_is_retried_with_backoff(fake: FakeOpenAI, make_embedder: Any) -> None:
    fake.config.fail_next = 3
    fake.config.fail_status = 502
    embedder = make_embedder(max_retries=5)
    assert len(await embedder.embed_batch(["AP 15500"])) == 1
    assert fake.stats.status_counts == {"502": 3, "200": 1}
    assert embedder.requests == 4


async def test_retries_are_bounded(fake: FakeOpenAI, make_embedder: Any) -> None:
    fake.config.error_rate = 1.0
    embedder = make_embedder(max_retries=2)
    with pytest.raises(EmbeddingError, match="HTTP 500"):
        await embedder.embed_batch(["AP 15500"])
    assert fake.stats.embedding_requests == 3


async def test_client_errors_are_not_retried_and_never_show_the_key(
    fake: FakeOpenAI, make_embedder: Any
) -> None:
    fake.config.fail_next = 1
    fake.config.fail_status = 401
    embedder = make_embedder()
    with pytest.raises(EmbeddingError) as caught:
        await embedder.embed_batch(["Omega Speedmaster"])
    assert fake.stats.embedding_requests == 1
    assert "401" in str(caught.value)
    assert API_KEY not in str(caught.value)


def test_redact_masks_keys_and_bearer_tokens() -> None:
    text = f"Incorrect API key provided: {API_KEY}. Authorization: Bearer abc.def api_key=zzz"
    cleaned = redact(text, API_KEY)
    assert API_KEY not in cleaned
    assert "abc.def" not in cleaned and "zzz" not in cleaned
    assert redact("sk-proj-AbCd1234efgh") == "***"


async def test_every_request_has_a_timeout(fake: FakeOpenAI, make_embedder: Any) -> None:
    fake.config.latency = 2.0
    embedder = make_embedder(timeout_seconds=0.2, max_retries=1)
    started = time.monotonic()
    with pytest.raises(EmbeddingError, match="timeout"):
        await embedder.embed_batch(["Tudor BB58"])
    assert time.monotonic() - started < 1.5
    assert embedder.requests == 2


async def test_concurrency_is_bounded(fake: FakeOpenAI, make_embedder: Any) -> None:
    fake.config.latency = 0.1
    embedder = make_embedder(batch_size=1, concurrency=3, dimensions=8)
    started = time.monotonic()
    await embedder.embed_batch([f"watch {i}" for i in range(9)])
    assert fake.stats.max_in_flight == 3
    assert time.monotonic() - started >= 0.3  # three waves of three


async def test_base_url_and_model_come_from_settings(fake: FakeOpenAI) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        OPENAI_API_KEY=API_KEY,
        OPENAI_BASE_URL=fake.base_url,
        EMBEDDING_DIMENSIONS=32,
    )
    embedder = create_embedder(settings)
    try:
        assert isinstance(embedder, OpenAIEmbedder)
        assert (embedder.model_name, embedder.dimensions) == ("text-embedding-3-small", 32)
        vector = await embedder.embed("Cartier Santos")
        assert len(vector) == 32
        assert fake.stats.embedding_requests == 1
    finally:
        await embedder.aclose()


async def test_a_server_of_another_dimension_is_a_clear_error(fake: FakeOpenAI, make_embedder: Any) -> None:
    # An OpenAI-compatible server that ignores `dimensions` (older models have a fixed size).
    embedder = make_embedder(model="text-embedding-ada-002", dimensions=64)
    with pytest.raises(EmbeddingError, match="1536 dimensions, expected 64"):
        await embedder.embed_batch(["IWC Portugieser"])


async def test_injected_http_client_is_used() -> None:
    calls: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        return httpx2.Response(
            200,
            json={
                "object": "list",
                "model": "text-embedding-3-small",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.5]}],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            },
        )

    embedder = OpenAIEmbedder(
        api_key=API_KEY,
        dimensions=2,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )
    try:
        assert await embedder.embed("Breitling Navitimer") == [0.5, 0.5]
    finally:
        await embedder.aclose()
    assert len(calls) == 1


async def test_the_store_refuses_vectors_of_another_dimension(tmp_path: Any) -> None:
    store = SQLiteStore(tmp_path / "dims.sqlite3")
    await store.open()
    try:
        await store.check_embedding_dimension("text-embedding-3-small", 1536)
        with pytest.raises(EmbeddingDimensionMismatch, match="EMBEDDING_DIMENSIONS=1536"):
            await store.check_embedding_dimension("text-embedding-3-small", 512)
    finally:
        await store.close()


# -- CLI: reembed and retry-failed ------------------------------------------------------------------------


def _seed_local_listings(path: Any, count: int, dimensions: int) -> None:
    """A store whose listings were embedded by the local model, as on a server that ran without a key."""
    from src.embedding_processor import LocalEmbedder
    from src.pipeline import Pipeline, WorkerSettings
    from src.stats import RuntimeStats

    async def _seed() -> None:
        store = SQLiteStore(path)
        await store.open()
        embedder = LocalEmbedder(dimensions)
        await store.check_embedding_dimension(embedder.model_name, dimensions)
        await store.insert_messages(
            [
                InboundMessage(
                    id=f"wamid.RE{i:04d}",
                    source="webhook",
                    chat_id=None,
                    sender_id="15550100007",
                    sender_name=None,
                    sent_at=None,
                    wa_type="text",
                    text=f"WTS Rolex Submariner 126610LN 20{10 + i % 14} full set {9000 + i}€",
                )
                for i in range(count)
            ]
        )
        await Pipeline(store, embedder, RuntimeStats.new(), WorkerSettings(batch_size=100)).drain(20)
        assert (await store.stats()).listings_total == count
        await store.close()

    asyncio.run(_seed())


def _needing(path: Any, model: str) -> int:
    async def _count() -> int:
        store = SQLiteStore(path)
        await store.open()
        try:
            return len(await store.listings_needing_embedding(model, 10_000))
        finally:
            await store.close()

    return asyncio.run(_count())


@pytest.fixture
def cli_env(fake: FakeOpenAI, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    db = tmp_path / "cli.sqlite3"
    for name, value in {
        "SQLITE_PATH": str(db),
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": fake.base_url,
        "EMBEDDING_DIMENSIONS": "32",
        "EMBEDDING_MAX_RETRIES": "0",
        "DATABASE_URL": "",
        "SUPABASE_URL": "",
    }.items():
        monkeypatch.setenv(name, value)
    return db


def test_reembed_moves_every_listing_in_batches_and_resumes(fake: FakeOpenAI, cli_env: Any) -> None:
    from typer.testing import CliRunner

    from src.cli import cli

    _seed_local_listings(cli_env, 30, 32)
    runner = CliRunner()

    fake.config.fail_after_ok = 2  # interrupted after two rounds
    interrupted = runner.invoke(cli, ["reembed", "--batch-size", "10", "--quiet"])
    assert interrupted.exit_code == 1, interrupted.output
    assert "run reembed again" in interrupted.output and API_KEY not in interrupted.output
    assert _needing(cli_env, "text-embedding-3-small") == 10

    fake.config.fail_after_ok = -1
    resumed = runner.invoke(cli, ["reembed", "--batch-size", "10"])
    assert resumed.exit_code == 0, resumed.output
    assert "10 listing(s) re-embedded" in resumed.output
    assert _needing(cli_env, "text-embedding-3-small") == 0
    # Nothing was embedded twice: 30 inputs in 3 successful calls of 10.
    assert fake.stats.batch_sizes == [10, 10, 10]

    again = runner.invoke(cli, ["reembed", "--quiet"])
    assert again.exit_code == 0 and "0 listing(s) re-embedded" in again.output


def test_retry_failed_requeues_and_processes(fake: FakeOpenAI, cli_env: Any) -> None:
    from typer.testing import CliRunner

    from src.cli import cli

    async def _fail_all() -> None:
        store = SQLiteStore(cli_env)
        await store.open()
        await store.check_embedding_dimension("text-embedding-3-small", 32)
        await store.insert_messages(
            [
                InboundMessage(
                    id=f"wamid.RF{i}",
                    source="webhook",
                    chat_id=None,
                    sender_id="15550100008",
                    sender_name=None,
                    sent_at=None,
                    wa_type="text",
                    text=f"WTS Patek Nautilus 5711/1A 2019 full set {90000 + i}€",
                )
                for i in range(3)
            ]
        )
        for i in range(3):
            await store.fail_message(f"wamid.RF{i}", "embedding: outage", None)
        assert (await store.stats()).failed == 3
        await store.close()

    asyncio.run(_fail_all())
    result = CliRunner().invoke(cli, ["retry-failed", "--process"])
    assert result.exit_code == 0, result.output
    assert "3 failed message(s) requeued" in result.output
    assert fake.stats.embedding_ok == 1
