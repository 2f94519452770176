"""The worker: claim pending messages, extract, embed the batch in one call, store listings; retry on failure.

It runs as an asyncio task in the server (and in `import-chat`). On Postgres several instances can run
against one queue: claims are leased with FOR UPDATE SKIP LOCKED, so no message is processed twice.

Throughput comes from batching, not from calls: a short batch lingers a moment to fill (a burst of webhooks
becomes one embedding call), and up to `concurrency` batches are in flight, so one is embedded while the next
is claimed and extracted. When embedding fails (an outage, a rate limit that outlasts the retries), the
failed batch's messages get attempts+1 and a backoff, and the worker pauses and then probes with one batch at a
time, so the rest of the queue waits as pending with its attempts untouched instead of burning them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from src.analysis_pool import AnalysisPool
from src.embedding_processor import Embedder, LocalEmbedder, embedding_text, redact
from src.stats import RuntimeStats
from src.store.base import ListingRecord, Store, StoredMessage
from src.watch_models import WatchInfo

log = logging.getLogger(__name__)

ProcessedHook = Callable[[StoredMessage, WatchInfo], Awaitable[None]]


@dataclass(slots=True)
class WorkerSettings:
    batch_size: int = 512
    poll_seconds: float = 0.5
    lease_seconds: int = 120
    max_attempts: int = 8
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0
    concurrency: int = 4
    linger_seconds: float = 0.2
    # Longest pause of the whole worker after failed batches (a message's own backoff can be longer).
    pause_max_seconds: float = 30.0
    # stop() waits this long for batches in flight, then cancels them (their leases expire; nothing is lost).
    stop_timeout_seconds: float = 10.0
    # Hold the next batch back while the event loop runs this late (webhook requests wait for the CPU);
    # never longer than the cap, after which a small batch is taken: progress without long pauses in acks.
    yield_lag_seconds: float = 0.004
    yield_max_seconds: float = 2.0
    busy_batch_size: int = 32
    # While intake is heavy (at least busy_posts_per_second webhook POSTs over the last busy_window_seconds),
    # at most busy_concurrency batches are in flight. 0 (the default): none starts for up to
    # yield_max_seconds, then a busy_batch_size one does. At 800 POST/s, ack p99 14-26 ms with 0 against
    # 110-130 ms with 1; a burst is processed right after it ends. Below the rate the worker runs freely.
    busy_posts_per_second: float = 200.0
    busy_window_seconds: float = 0.5
    # Intake is over once no POST has come for this long: the worker starts on the burst at once, not a
    # whole window later (POSTs of a heavy stream come a few ms apart).
    busy_quiet_seconds: float = 0.1
    busy_concurrency: int = 0


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


class LoopLagMonitor:
    """How late the event loop runs a short timer: lag means webhook requests are waiting for CPU.

    The worker yields while the lag is high, so acknowledging Meta always comes before processing.
    """

    def __init__(self, interval: float = 0.01, on_tick: Callable[[], None] | None = None) -> None:
        self.interval = interval
        self.on_tick = on_tick
        self.lag = 0.0  # seconds, smoothed
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag-monitor")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval)
            late = max(0.0, loop.time() - started - self.interval)
            self.lag = 0.7 * self.lag + 0.3 * late
            if self.on_tick is not None:
                self.on_tick()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class Pipeline:
    """Moves messages from pending to processed. Nothing is dropped: a failure is recorded and retried."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        runtime: RuntimeStats,
        settings: WorkerSettings | None = None,
        rates: Mapping[str, float] | None = None,
        analysis: AnalysisPool | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.runtime = runtime
        self.settings = settings or WorkerSettings()
        self.rates = dict(rates) if rates else None
        # CPU work (extraction, the offline embedder) runs in a child process unless processes=0.
        self.analysis = analysis or AnalysisPool(processes=0, rates=self.rates)
        self.hooks: list[ProcessedHook] = []
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._post_samples: deque[tuple[float, int]] = deque()  # (monotonic time, webhook POSTs so far)
        self.lag_monitor = LoopLagMonitor(on_tick=self._sample_posts)
        # Consecutive batches whose embedding failed: > 0 means pause, then probe one batch at a time.
        self.consecutive_failures = 0

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._stop_event.clear()
        self.lag_monitor.start()
        self._task = asyncio.create_task(self.run_forever(), name="pipeline-worker")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """New messages were queued: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Finish the batches in hand (bounded wait), then return; a batch is never half-written."""
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.lag_monitor.stop()
        self.analysis.close()

    async def run_forever(self) -> None:
        try:
            await self.analysis.warm_up()
        except Exception:  # the batch path restarts the child if needed
            log.exception("analysis process warm-up failed")
        slots = asyncio.Semaphore(max(1, self.settings.concurrency))
        try:
            while not self._stopping:
                if self.consecutive_failures:
                    await self._pause_after_failures()
                    if self._stopping:
                        break
                if not await self._acquire_unless_stopped(slots):
                    break
                held_back = await self._wait_while_intake_busy()
                lagging = await self._yield_to_intake()
                try:
                    size = self.settings.busy_batch_size if held_back or lagging else self.settings.batch_size
                    messages = await self._claim_batch(size) if not self._stopping else []
                except Exception:  # the store is down or a bug: keep the worker alive, retry soon
                    self.runtime.errors += 1
                    log.exception("worker claim failed; retrying")
                    messages = []
                if not messages:
                    slots.release()
                    await self._idle()
                    continue
                task = asyncio.create_task(self._process_in_slot(messages, slots), name="pipeline-batch")
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        finally:
            await self._finish_in_flight()

    async def _process_in_slot(self, messages: list[StoredMessage], slots: asyncio.Semaphore) -> None:
        try:
            await self.process(messages)
        except Exception:  # the store failed mid-batch: the claims expire and the messages come back
            self.runtime.errors += 1
            log.exception("worker batch of %d messages failed; they return after their lease", len(messages))
        finally:
            slots.release()

    async def _finish_in_flight(self) -> None:
        if not self._in_flight:
            return
        pending = set(self._in_flight)
        _, not_done = await asyncio.wait(pending, timeout=self.settings.stop_timeout_seconds)
        for task in not_done:
            task.cancel()
        if not_done:
            log.warning("stopped with %d batch(es) unfinished; their messages stay queued", len(not_done))
            await asyncio.gather(*not_done, return_exceptions=True)

    async def _hold_while(self, slowed: Callable[[], bool]) -> bool:
        """Wait while `slowed()` holds, at most yield_max_seconds; True when the bound ran out."""
        waited = 0.0
        while slowed() and not self._stopping:
            if waited >= self.settings.yield_max_seconds:
                return True
            await asyncio.sleep(0.02)
            waited += 0.02
        return False

    async def _yield_to_intake(self) -> bool:
        """While webhook requests wait for the CPU, hold the next step back (bounded, so work still moves).

        Returns True when the loop still lags after the wait: the caller then takes a small batch.
        """
        return await self._hold_while(lambda: self.lag_monitor.lag > self.settings.yield_lag_seconds)

    def _sample_posts(self) -> None:
        """Every 50 ms, the count of webhook POSTs so far; samples older than the busy window are dropped."""
        now = time.monotonic()
        samples = self._post_samples
        if not samples or now - samples[-1][0] >= 0.05:
            samples.append((now, self.runtime.webhook_posts))
        while len(samples) > 2 and now - samples[1][0] >= self.settings.busy_window_seconds:
            samples.popleft()

    def _intake_busy(self) -> bool:
        """Webhook POSTs per second over the last window at or above the busy rate, and still arriving."""
        now = time.monotonic()
        if not self._post_samples or now - self.runtime.last_webhook_at >= self.settings.busy_quiet_seconds:
            return False
        start_time, start_count = self._post_samples[0]
        elapsed = max(now - start_time, 0.05)
        return (self.runtime.webhook_posts - start_count) / elapsed >= self.settings.busy_posts_per_second

    async def _wait_while_intake_busy(self) -> bool:
        """While intake is heavy, start a batch only when fewer than busy_concurrency are in flight.

        With busy_concurrency 0 no batch starts while they arrive, up to yield_max_seconds; then a small
        one does (returns True), so a burst that never ends still sees its messages processed.
        """
        limit = self.settings.busy_concurrency
        while self._intake_busy() and len(self._in_flight) >= max(limit, 1) and not self._stopping:
            await asyncio.sleep(0.01)
        return limit == 0 and await self._hold_while(self._intake_busy)

    async def _idle(self) -> None:
        """Wait for a wake-up or the next poll."""
        if self._stopping:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _acquire_unless_stopped(self, slots: asyncio.Semaphore) -> bool:
        """Take a batch slot, or give up when stop() is called (a batch in flight may be retrying for long)."""
        acquire = asyncio.ensure_future(slots.acquire())
        stopped = asyncio.ensure_future(self._stop_event.wait())
        done, _ = await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if acquire in done:
            if self._stopping:
                slots.release()
                return False
            return True
        acquire.cancel()
        return False

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop_event.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            pass

    async def _pause_after_failures(self) -> None:
        """After failed batches: let the batches in flight end, back off, then go on one batch at a time."""
        while self._in_flight and not self._stopping:
            stopped = asyncio.ensure_future(self._stop_event.wait())
            await asyncio.wait({*self._in_flight, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
        if not self.consecutive_failures:
            return
        ceiling = min(
            self.settings.pause_max_seconds,
            self.settings.retry_base_seconds * 2 ** (self.consecutive_failures - 1),
        )
        await self._sleep_unless_stopped(ceiling * random.uniform(0.8, 1.0))

    async def _claim_batch(self, size: int) -> list[StoredMessage]:
        """Claim a batch; a short one lingers briefly for the rest of a burst, so one call embeds it all."""
        messages = await self.store.claim_pending(size, self.settings.lease_seconds)
        if messages and len(messages) < size and self.settings.linger_seconds > 0 and not self._stopping:
            await self._sleep_unless_stopped(self.settings.linger_seconds)
            messages += await self.store.claim_pending(size - len(messages), self.settings.lease_seconds)
        return messages

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
        await self._yield_to_intake()
        infos = await self.analysis.extract([message.text for message in messages])
        for message, info in zip(messages, infos, strict=True):
            if isinstance(info, str):  # extraction is pure; a crash is a bug, never a lost message
                log.error("extraction failed for message %s: %s", message.id, info)
                await self._record_failure(message, info)
                continue
            extracted.append((message, info, listings_for(message, info)))

        listings = [listing for _, _, rows in extracted for listing in rows]
        if listings:
            try:
                vectors = await self._embed([listing_embedding_text(x) for x in listings])
                if len(vectors) != len(listings):
                    raise RuntimeError(f"embedder returned {len(vectors)} vectors for {len(listings)} texts")
            except Exception as exc:
                self._count_embedding_calls()
                error = redact(f"embedding: {type(exc).__name__}: {exc}")[:500]
                self.consecutive_failures += 1
                self.runtime.embedding_errors += 1
                self.runtime.last_embedding_error = error
                log.warning("embedding failed for a batch of %d messages: %s", len(extracted), error)
                for message, _, _ in extracted:
                    await self._record_failure(message, error)
                return
            self._count_embedding_calls()
            self.consecutive_failures = 0
            for listing, vector in zip(listings, vectors, strict=True):
                listing.embedding = vector  # type: ignore[assignment] - a float32 row is fine for every store
                listing.embedding_model = self.embedder.model_name

        await self._yield_to_intake()  # writing is main-process work: let waiting webhook requests go first
        await self.store.complete_messages([(message.id, rows) for message, _, rows in extracted])
        self.runtime.batches_processed += 1
        for message, info, _ in extracted:
            for hook in self.hooks:
                try:
                    await hook(message, info)
                except Exception:  # a reply that fails must not undo the stored work
                    self.runtime.errors += 1
                    log.exception("post-processing hook failed for message %s", message.id)

    async def _embed(self, texts: list[str]) -> Sequence[Sequence[float]]:
        """The offline embedder is CPU work: it runs beside extraction, off the event loop."""
        if isinstance(self.embedder, LocalEmbedder) and self.analysis.enabled:
            return await self.analysis.embed_local(texts, self.embedder.dimensions)
        return await self.embedder.embed_batch(texts)

    def _count_embedding_calls(self) -> None:
        """Requests made to the embedding service, as the embedder counts them (one batch may be several)."""
        made = getattr(self.embedder, "requests", None)
        if isinstance(made, int) and made > 0:
            self.runtime.embedding_calls = made
        else:
            self.runtime.embedding_calls += 1

    async def _record_failure(self, message: StoredMessage, error: str) -> None:
        attempts = message.attempts + 1
        if attempts >= self.settings.max_attempts:
            await self.store.fail_message(message.id, error, None)
            return
        delay = min(self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2 ** (attempts - 1))
        await self.store.fail_message(message.id, error, delay * random.uniform(0.8, 1.2))
