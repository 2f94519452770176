"""Embedders: the protocol the worker and search use, the offline default, and what text gets embedded.

Shape borrowed from simonw/llm: only `embed_batch` is abstract; `embed` derives from it.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from abc import ABC, abstractmethod
from functools import lru_cache

import numpy as np

from src.config import Settings


class EmbeddingError(RuntimeError):
    """Embedding failed after retries; the messages stay queued and are tried again later."""


class Embedder(ABC):
    """Turns texts into vectors of `dimensions` floats; `model_name` is stored beside every vector."""

    model_name: str
    dimensions: int

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


def create_embedder(settings: Settings) -> Embedder:
    """OpenAI when OPENAI_API_KEY is set, otherwise the offline LocalEmbedder."""
    if settings.embedding_backend == "openai":
        return OpenAIEmbedder.from_settings(settings)  # noqa: F821 - defined by the OpenAI section below
    return LocalEmbedder(settings.EMBEDDING_DIMENSIONS)
