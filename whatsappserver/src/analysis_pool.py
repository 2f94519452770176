"""Extraction and the offline embedder in a worker process, so CPU work never holds up webhook acks.

The server's event loop must answer Meta within milliseconds while the worker extracts and embeds
thousands of messages. Both are pure CPU, so they run in one child process (its own core, a lower
priority than intake); only texts go in and results come out. `WORKER_PROCESSES=0` keeps them in-process.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from src.watch_models import WatchInfo, WatchListing

log = logging.getLogger(__name__)

_rates: dict[str, float] | None = None
_embedders: dict[int, object] = {}


def _exit_with_parent(parent: int) -> None:
    """Exit once the server that started this process is gone (a SIGKILL leaves its pool behind otherwise:
    a pool process waits on its task queue, which its own inherited handle keeps open)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _init_child(rates: dict[str, float] | None, nice: int) -> None:
    global _rates
    _rates = rates
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    if nice:
        try:
            os.nice(nice)
        except OSError:  # not permitted here: run at normal priority
            pass
    import src.watch_info_extractor  # noqa: F401 - load the catalogue once, before the first batch


def extract_many(texts: list[str], rates: Mapping[str, float] | None) -> list[WatchInfo | str]:
    """Each text's WatchInfo, or the error text when extraction raised (a bug, reported per message)."""
    from src.watch_info_extractor import extract_watch_info

    results: list[WatchInfo | str] = []
    for text in texts:
        try:
            results.append(extract_watch_info(text, rates))
        except Exception as exc:
            results.append(f"extraction: {type(exc).__name__}: {exc}")
    return results


# A watch as a plain tuple, in WatchListing's field order: plain tuples unpickle in C, pydantic objects do not
# (512 WatchInfo objects cost ~20 ms of GIL in the parent's result thread, which delays webhook acks).
_LISTING_FIELDS = tuple(WatchListing.model_fields)
CompactInfo = tuple[str, float, tuple[tuple[object, ...], ...]]


def _compact(info: WatchInfo) -> CompactInfo:
    return (
        info.message_type,
        info.confidence,
        tuple(tuple(getattr(w, name) for name in _LISTING_FIELDS) for w in info.watches),
    )


def _expand(compact: CompactInfo) -> WatchInfo:
    """Rebuild without validating again: the child already validated every value."""
    message_type, confidence, watches = compact
    return WatchInfo.model_construct(
        message_type=message_type,
        confidence=confidence,
        watches=[WatchListing.model_construct(**dict(zip(_LISTING_FIELDS, w, strict=True))) for w in watches],
    )


def _extract_in_child(texts: list[str]) -> list[CompactInfo | str]:
    return [r if isinstance(r, str) else _compact(r) for r in extract_many(texts, _rates)]


def _embed_in_child(texts: list[str], dimensions: int) -> bytes:
    from src.embedding_processor import LocalEmbedder

    embedder = _embedders.get(dimensions)
    if embedder is None:
        embedder = _embedders[dimensions] = LocalEmbedder(dimensions)
    assert isinstance(embedder, LocalEmbedder)
    matrix = np.stack([embedder.embed_one(text) for text in texts]) if texts else np.empty((0, dimensions))
    return matrix.astype("<f4").tobytes()


class AnalysisPool:
    """A one-process pool, started on first use and restarted if the child dies."""

    def __init__(self, processes: int = 1, rates: Mapping[str, float] | None = None, nice: int = 5) -> None:
        self.processes = processes
        self.rates = dict(rates) if rates else None
        self.nice = nice
        self._executor: ProcessPoolExecutor | None = None

    @property
    def enabled(self) -> bool:
        return self.processes > 0

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_child,
                initargs=(self.rates, self.nice),
            )
        return self._executor

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool(), fn, *args)
        except BrokenProcessPool:
            log.warning("analysis process died; starting a new one")
            self._executor = None
            return await loop.run_in_executor(self._pool(), fn, *args)

    async def warm_up(self) -> None:
        """Start the child and load the catalogue now, not on the first batch (which may come under load)."""
        if self.enabled:
            await self._run(_extract_in_child, ["warm-up"])

    async def extract(self, texts: list[str]) -> list[WatchInfo | str]:
        if not self.enabled:
            return extract_many(texts, self.rates)
        results = await self._run(_extract_in_child, texts)
        return [r if isinstance(r, str) else _expand(r) for r in results]

    async def embed_local(self, texts: list[str], dimensions: int) -> list[np.ndarray]:
        """LocalEmbedder vectors computed in the child (the same function, so the same vectors).

        Rows stay float32 arrays: every store takes them as they are, with no per-float Python objects.
        """
        raw = await self._run(_embed_in_child, texts, dimensions)
        return list(np.frombuffer(raw, dtype="<f4").reshape(len(texts), dimensions))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
