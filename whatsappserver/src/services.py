"""The objects a running server shares (store, embedder, worker, counters), built once in the lifespan."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from src.analysis_pool import AnalysisPool
from src.config import Settings
from src.embedding_processor import Embedder, create_embedder
from src.pipeline import Pipeline, WorkerSettings
from src.stats import RuntimeStats
from src.store import create_store
from src.store.base import Store

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: Store
    embedder: Embedder
    runtime: RuntimeStats
    pipeline: Pipeline
    extras: dict[str, Any] = field(default_factory=dict)

    async def aclose(self) -> None:
        await self.pipeline.stop()
        for extra in self.extras.values():
            closer = getattr(extra, "aclose", None)
            if closer is not None:
                await closer()
        await self.embedder.aclose()
        await self.store.close()


def worker_settings(settings: Settings) -> WorkerSettings:
    return WorkerSettings(
        batch_size=settings.WORKER_BATCH_SIZE,
        poll_seconds=settings.WORKER_POLL_SECONDS,
        lease_seconds=settings.WORKER_LEASE_SECONDS,
        max_attempts=settings.WORKER_MAX_ATTEMPTS,
        retry_base_seconds=settings.WORKER_RETRY_BASE_SECONDS,
        retry_max_seconds=settings.WORKER_RETRY_MAX_SECONDS,
        concurrency=settings.WORKER_CONCURRENCY,
        linger_seconds=settings.WORKER_BATCH_LINGER_SECONDS,
        yield_max_seconds=settings.WORKER_YIELD_MAX_SECONDS,
        busy_concurrency=settings.WORKER_BUSY_CONCURRENCY,
        busy_posts_per_second=settings.WORKER_BUSY_POSTS_PER_SECOND,
        busy_batch_size=settings.WORKER_BUSY_BATCH_SIZE,
    )


async def build_services(
    settings: Settings, *, store: Store | None = None, embedder: Embedder | None = None
) -> Services:
    """Open the store, check that it can hold the embedder's vectors, and wire the worker (not started)."""
    store = store or create_store(settings)
    embedder = embedder or create_embedder(settings)
    await store.open()
    try:
        await store.check_embedding_dimension(embedder.model_name, embedder.dimensions)
    except Exception:
        await store.close()
        raise
    runtime = RuntimeStats.new()
    rates = settings.FX_RATES_EUR or None
    analysis = AnalysisPool(settings.WORKER_PROCESSES, rates, nice=settings.WORKER_NICE)
    pipeline = Pipeline(store, embedder, runtime, worker_settings(settings), rates, analysis)
    return Services(settings=settings, store=store, embedder=embedder, runtime=runtime, pipeline=pipeline)
