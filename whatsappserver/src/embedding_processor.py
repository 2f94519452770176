"""Embedders: the protocol the worker and search use, the offline default, and what text gets embedded.

Shape borrowed from simonw/llm: only `embed_batch` is abstract; `embed` derives from it.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import re
import time
import unicodedata
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import openai
import pybase64
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from src import fast_json
from src.config import Settings

log = logging.getLogger(__name__)


class EmbeddingError(RuntimeError):
    """Embedding failed after retries; the messages stay queued and are tried again later."""


class Embedder(ABC):
    """Turns texts into vectors of `dimensions` floats; `model_name` is stored beside every vector."""

    model_name: str
    dimensions: int
    # Requests made to the embedding service (HTTP attempts, retries included): /health and benchmarks.
    requests: int = 0

    @abstractmethod
    async def embed_batch(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""

    async def embed(self, text: str) -> list[float]:
        return (await self.embed_batch([text]))[0]

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most embedders hold nothing
        """Release network clients."""


_WORD = re.compile(r"[a-z0-9]+")


def _fold(text: str) -> str:
    """Lower-case without accents, so 'état' and 'etat' embed alike."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@lru_cache(maxsize=200_000)
def _feature_hash(feature: str, dimensions: int) -> tuple[int, float]:
    value = zlib.crc32(feature.encode("utf-8"))
    return value % dimensions, (1.0 if (value >> 31) & 1 else -1.0)


class LocalEmbedder(Embedder):
    """Offline, deterministic embedder: signed feature hashing of words, word pairs and character trigrams.

    Not semantic like a trained model, but it makes references, brands and spelling variants
    ("submariner" / "sub-mariner") land near each other, so the whole pipeline works with no key.
    """

    def __init__(self, dimensions: int = 1536) -> None:
        self.dimensions = dimensions
        self.model_name = f"local-hash-v1-{dimensions}"

    def embed_one(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dimensions, dtype=np.float32)
        words = _WORD.findall(_fold(text))
        features: list[tuple[str, float]] = []
        for i, word in enumerate(words):
            features.append(("w:" + word, 1.0))
            if i:
                features.append(("b:" + words[i - 1] + " " + word, 0.5))
            padded = f"<{word}>"
            if len(padded) > 4:
                for j in range(len(padded) - 2):
                    features.append(("c:" + padded[j : j + 3], 0.25))
        for feature, weight in features:
            index, sign = _feature_hash(feature, self.dimensions)
            vector[index] += sign * weight
        norm = float(np.linalg.norm(vector))
        if norm:
            vector /= norm
        return vector

    async def embed_batch(self, texts: list[str]) -> list[list[float]]:
        self.requests += 1
        return [self.embed_one(text).tolist() for text in texts]


def embedding_text(
    *,
    message_type: str | None,
    brand: str | None,
    model: str | None,
    reference: str | None,
    price: float | None,
    currency: str | None,
    condition: str | None,
    year: int | None,
    text: str,
) -> str:
    """The listing's canonical fields, then its line: clean signals for any embedder."""
    parts = [
        brand,
        model,
        reference,
        message_type,
        f"{price:g} {currency or ''}".strip() if price is not None else None,
        condition,
        str(year) if year else None,
    ]
    head = " | ".join(part for part in parts if part)
    return f"{head}\n{text}" if head else text


def embedding_text_from_row(row: Any) -> str:
    """`embedding_text` of a stored listing row (any backend's row that can be indexed by column name)."""
    return embedding_text(
        message_type=row["message_type"],
        brand=row["brand"],
        model=row["model"],
        reference=row["reference"],
        price=row["price"],
        currency=row["currency"],
        condition=row["condition"],
        year=row["year"],
        text=row["text"],
    )


def _decode_vector(value: str | list[float]) -> list[float]:
    """A float32 row from the API's base64 (or, from servers that ignore encoding_format, a float list)."""
    if isinstance(value, str):
        # pybase64 (SIMD): 1 µs for a 1536-dimension vector where the standard library takes 20-30 µs.
        return np.frombuffer(pybase64.b64decode(value, validate=True), dtype="<f4")  # type: ignore[return-value]
    return value


def create_embedder(settings: Settings) -> Embedder:
    """OpenAI when OPENAI_API_KEY is set, otherwise the offline LocalEmbedder."""
    if settings.embedding_backend == "openai":
        return OpenAIEmbedder.from_settings(settings)
    return LocalEmbedder(settings.EMBEDDING_DIMENSIONS)


# -- OpenAI --------------------------------------------------------------------------------------------

# OpenAI's documented limits for every embedding model.
MAX_INPUTS_PER_REQUEST = 2048
MAX_TOKENS_PER_REQUEST = 300_000
MAX_TOKENS_PER_INPUT = 8192
# Retry-After beyond this is not waited in-process: the worker's own backoff takes over.
MAX_RETRY_AFTER_SECONDS = 60.0
RETRYABLE_STATUS = frozenset({408, 409, 429})

_SECRET_PATTERNS = (
    re.compile(r"sk-[A-Za-z0-9_\-*]{4,}"),
    re.compile(r"(?i)(bearer\s+)[^\s\"']+"),
    re.compile(r"(?i)(api[_-]?key[\"'=:\s]+)[^\s\"',}]+"),
)


def redact(text: str, *secrets: str) -> str:
    """Error text safe for logs, the store and /health: API keys and bearer tokens masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text


def estimate_tokens(text: str) -> int:
    """Upper bound on the BPE token count without a tokenizer download: every token is at least one byte."""
    return len(text.encode("utf-8"))


def fit_input(text: str) -> str:
    """Truncate to MAX_TOKENS_PER_INPUT by the estimate (an over-long input would fail the whole request);
    an empty input is refused by the API, so it becomes a single space."""
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_TOKENS_PER_INPUT:
        text = encoded[:MAX_TOKENS_PER_INPUT].decode("utf-8", errors="ignore")
    return text if text.strip() else " "


def plan_requests(
    texts: Sequence[str], max_inputs: int, max_tokens: int = MAX_TOKENS_PER_REQUEST
) -> list[tuple[int, int]]:
    """Split `texts` into [start, end) ranges of at most `max_inputs` items and `max_tokens` estimated tokens."""
    ranges: list[tuple[int, int]] = []
    start, tokens = 0, 0
    for index, text in enumerate(texts):
        cost = estimate_tokens(text)
        if index > start and (index - start >= max_inputs or tokens + cost > max_tokens):
            ranges.append((start, index))
            start, tokens = index, 0
        tokens += cost
    if start < len(texts):
        ranges.append((start, len(texts)))
    return ranges


def _retry_after_seconds(exc: BaseException) -> float | None:
    """The server's Retry-After (retry-after-ms, seconds, or an HTTP date), when it sent one."""
    if not isinstance(exc, openai.APIStatusError):
        return None
    headers = exc.response.headers
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return float(raw_ms) / 1000.0
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        return None if parsed is None else parsed.timestamp() - time.time()


def _is_retryable(exc: BaseException) -> bool:
    """429, 408, 409, 5xx and connection errors or timeouts are transient; other 4xx will fail again."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)


# Requests made through the client's generic `post` ask for its API-key header explicitly.
_AUTHENTICATED: Any = {"security": {"bearer_auth": True}}


class OpenAIEmbedder(Embedder):
    """OpenAI (or any OpenAI-compatible server) embeddings, batched, bounded and retried.

    One `embed_batch` call is cut into as few requests as the API allows (2048 inputs, 300k tokens), which
    run at most `concurrency` at a time across every caller of this embedder. 429, 5xx and network errors
    are retried with exponential backoff and jitter, waiting at least the server's Retry-After; each
    request has a timeout. When retries run out it raises EmbeddingError, whose text never holds the key.
    """

    def __init__(
        self,
        *,
        api_key: str,
        model: str = "text-embedding-3-small",
        dimensions: int = 1536,
        base_url: str | None = None,
        batch_size: int = 256,
        concurrency: int = 4,
        timeout_seconds: float = 30.0,
        max_retries: int = 5,
        retry_base_seconds: float = 0.5,
        retry_max_seconds: float = 20.0,
        http_client: Any = None,
    ) -> None:
        if not api_key:
            raise ValueError("OpenAIEmbedder needs an API key: set OPENAI_API_KEY (or unset it for local)")
        self.model_name = model
        self.dimensions = dimensions
        self.batch_size = max(1, min(batch_size, MAX_INPUTS_PER_REQUEST))
        self.timeout_seconds = timeout_seconds
        self.max_retries = max(0, max_retries)
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.requests = 0
        self.retries = 0
        self._api_key = api_key
        self._semaphore = asyncio.Semaphore(max(1, concurrency))
        # `dimensions` is only accepted by text-embedding-3 and later; older models have a fixed size.
        self._send_dimensions = "text-embedding-3" in model
        # The SDK's own retries are off: ours honour Retry-After, count attempts and are tested.
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url or None,
            timeout=timeout_seconds,
            max_retries=0,
            http_client=http_client,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIEmbedder:
        return cls(
            api_key=settings.OPENAI_API_KEY,
            model=settings.EMBEDDING_MODEL,
            dimensions=settings.EMBEDDING_DIMENSIONS,
            base_url=settings.OPENAI_BASE_URL,
            batch_size=settings.EMBEDDING_BATCH_SIZE,
            concurrency=settings.EMBEDDING_CONCURRENCY,
            timeout_seconds=settings.EMBEDDING_TIMEOUT_SECONDS,
            max_retries=settings.EMBEDDING_MAX_RETRIES,
            retry_base_seconds=settings.EMBEDDING_RETRY_BASE_SECONDS,
            retry_max_seconds=settings.EMBEDDING_RETRY_MAX_SECONDS,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def embed_batch(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        inputs = [fit_input(text) for text in texts]
        ranges = plan_requests(inputs, self.batch_size)
        tasks = [asyncio.ensure_future(self._embed_range(inputs[start:end])) for start, end in ranges]
        try:
            # The first failure cancels the other requests of the batch: the batch is retried as a whole.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
        vectors: list[list[float]] = []
        for task in tasks:
            vectors.extend(task.result())
        return vectors

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, never shorter than the server's Retry-After."""
        attempt = state.attempt_number
        ceiling = min(self.retry_max_seconds, self.retry_base_seconds * 2 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = _retry_after_seconds(exc) if exc else None
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            delay = min(MAX_RETRY_AFTER_SECONDS, retry_after) + random.uniform(0, 0.1)
        return delay

    def _before_sleep(self, state: RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.info(
            "embedding request failed (%s), retry %d/%d in %.2fs",
            self._describe(exc) if exc else "?",
            state.attempt_number,
            self.max_retries,
            state.next_action.sleep if state.next_action else 0.0,
        )

    async def _embed_range(self, inputs: list[str]) -> list[list[float]]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_is_retryable),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._request(inputs)
        except openai.OpenAIError as exc:
            raise EmbeddingError(self._describe(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover - tenacity either returns or raises

    async def _request(self, inputs: list[str]) -> list[list[float]]:
        body: dict[str, Any] = {"input": inputs, "model": self.model_name, "encoding_format": "base64"}
        if self._send_dimensions:
            body["dimensions"] = self.dimensions
        async with self._semaphore:
            self.requests += 1
            # The client's generic post with a plain body, read raw: `embeddings.create` would walk every
            # input through its typed-params transform, and its parsed response would build a Python float
            # per value (hundreds of thousands per batch), both on the event loop, holding up webhook acks.
            content = await self._client.post("/embeddings", cast_to=str, body=body, options=_AUTHENTICATED)
        data = sorted(fast_json.loads(content)["data"], key=lambda item: item["index"])
        if len(data) != len(inputs):
            raise EmbeddingError(f"{self.model_name} returned {len(data)} vectors for {len(inputs)} inputs")
        vectors = [_decode_vector(item["embedding"]) for item in data]
        if any(len(vector) != self.dimensions for vector in vectors):
            raise EmbeddingError(
                f"{self.model_name} returned vectors of {len(vectors[0])} dimensions, expected "
                f"{self.dimensions}: set EMBEDDING_DIMENSIONS to the model's size"
            )
        return vectors

    def _describe(self, exc: BaseException) -> str:
        """One line for logs, last_error and /health; status and message, never the key."""
        if isinstance(exc, openai.APIStatusError):
            text = f"{type(exc).__name__} (HTTP {exc.status_code}): {exc.message}"
        elif isinstance(exc, openai.APITimeoutError):
            text = f"timeout after {self.timeout_seconds:g}s"
        else:
            text = f"{type(exc).__name__}: {exc}"
        return redact(text, self._api_key)[:500]
