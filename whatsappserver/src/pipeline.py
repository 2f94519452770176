"""The worker: claim pending messages, extract, embed the batch in one call, store listings; retry on failure.

It runs as an asyncio task in the server (and in `import-chat`). On Postgres several instances can run
against one queue: claims are leased with FOR UPDATE SKIP LOCKED, so no message is processed twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from src.embedding_processor import Embedder, embedding_text
from src.stats import RuntimeStats
from src.store.base import ListingRecord, Store, StoredMessage
from src.watch_info_extractor import extract_watch_info
from src.watch_models import WatchInfo

log = logging.getLogger(__name__)

ProcessedHook = Callable[[StoredMessage, WatchInfo], Awaitable[None]]


@dataclass(slots=True)
class WorkerSettings:
    batch_size: int = 128
    poll_seconds: float = 0.5
    lease_seconds: int = 120
    max_attempts: int = 8
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0


def listings_for(message: StoredMessage, info: WatchInfo) -> list[ListingRecord]:
    """One row per watch; embeddings are filled in by the caller."""
    return [
        ListingRecord(
            message_id=message.id,
            position=position,
            message_type=info.message_type,
            brand=watch.brand,
            model=watch.model,
            reference=watch.reference,
            price=watch.price,
            currency=watch.currency,
            price_eur=watch.price_eur,
            condition=watch.condition,
            year=watch.year,
            size_mm=watch.size_mm,
            movement=watch.movement,
            box=watch.box,
            papers=watch.papers,
            confidence=info.confidence,
            text=watch.text or message.text,
            embedding=None,
            embedding_model=None,
        )
        for position, watch in enumerate(info.watches)
    ]


def listing_embedding_text(listing: ListingRecord) -> str:
    return embedding_text(
        message_type=listing.message_type,
        brand=listing.brand,
        model=listing.model,
        reference=listing.reference,
        price=listing.price,
        currency=listing.currency,
        condition=listing.condition,
        year=listing.year,
        text=listing.text,
    )


class Pipeline:
    """Moves messages from pending to processed. Nothing is dropped: a failure is recorded and retried."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        runtime: RuntimeStats,
        settings: WorkerSettings | None = None,
        rates: Mapping[str, float] | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.runtime = runtime
        self.settings = settings or WorkerSettings()
        self.rates = dict(rates) if rates else None
        self.hooks: list[ProcessedHook] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self.run_forever(), name="pipeline-worker")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """New messages were queued: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Finish the batch in hand, then return (its messages are never half-written)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def run_forever(self) -> None:
        while not self._stopping:
            try:
                done = await self.run_once()
            except Exception:  # the store is down or a bug: keep the worker alive, retry soon
                self.runtime.errors += 1
                log.exception("worker batch failed; retrying")
                done = 0
            if done == 0 and not self._stopping:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_seconds)
                except TimeoutError:
                    pass
                self._wake.clear()

    async def drain(self, timeout: float | None = None) -> None:
        """Process until nothing is due (CLI import, tests)."""

        async def _loop() -> None:
            while await self.run_once():
                pass

        await asyncio.wait_for(_loop(), timeout)

    # -- one batch ----------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim and process one batch; returns how many messages it took."""
        messages = await self.store.claim_pending(self.settings.batch_size, self.settings.lease_seconds)
        if messages:
            await self.process(messages)
        return len(messages)

    async def process(self, messages: list[StoredMessage]) -> None:
        extracted: list[tuple[StoredMessage, WatchInfo, list[ListingRecord]]] = []
        for message in messages:
            try:
                info = extract_watch_info(message.text, self.rates)
            except Exception as exc:  # extraction is pure; a crash is a bug, never a lost message
                log.exception("extraction failed for message %s", message.id)
                await self._record_failure(message, f"extraction: {type(exc).__name__}: {exc}")
                continue
            extracted.append((message, info, listings_for(message, info)))

        listings = [listing for _, _, rows in extracted for listing in rows]
        if listings:
            try:
                vectors = await self.embedder.embed_batch([listing_embedding_text(x) for x in listings])
                self.runtime.embedding_calls += 1
            except Exception as exc:
                error = f"embedding: {type(exc).__name__}: {exc}"
                self.runtime.embedding_errors += 1
                self.runtime.last_embedding_error = error[:500]
                log.warning("embedding failed for a batch of %d messages: %s", len(extracted), error)
                for message, _, _ in extracted:
                    await self._record_failure(message, error)
                return
            for listing, vector in zip(listings, vectors, strict=True):
                listing.embedding = vector
                listing.embedding_model = self.embedder.model_name

        await self.store.complete_messages([(message.id, rows) for message, _, rows in extracted])
        self.runtime.batches_processed += 1
        for message, info, _ in extracted:
            for hook in self.hooks:
                try:
                    await hook(message, info)
                except Exception:  # a reply that fails must not undo the stored work
                    self.runtime.errors += 1
                    log.exception("post-processing hook failed for message %s", message.id)

    async def _record_failure(self, message: StoredMessage, error: str) -> None:
        attempts = message.attempts + 1
        if attempts >= self.settings.max_attempts:
            await self.store.fail_message(message.id, error, None)
            return
        delay = min(self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2 ** (attempts - 1))
        await self.store.fail_message(message.id, error, delay * random.uniform(0.8, 1.2))
