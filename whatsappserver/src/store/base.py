"""The Store protocol every backend implements (SQLite, Postgres, Supabase), and the records it trades in.

One shared contract test suite (tests/test_store_contract.py) runs against every backend.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

MessageStatus = Literal["pending", "processed", "failed"]


class StoreError(RuntimeError):
    """The store could not do what was asked (down, read-only, misconfigured)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or written right now: the webhook answers 503 so Meta retries."""


class EmbeddingDimensionMismatch(StoreError):
    """Vectors of the active model do not have the dimension the store was created with."""


@dataclass(slots=True)
class InboundMessage:
    """A message as received (webhook) or imported (chat export), before processing."""

    id: str
    source: Literal["webhook", "chat_export"]
    chat_id: str | None
    sender_id: str | None
    sender_name: str | None
    sent_at: datetime | None
    wa_type: str
    text: str
    raw: dict[str, Any] = field(default_factory=dict)
    raw_json: str | None = None  # `raw` already serialised (webhook intake does it once), or None


@dataclass(slots=True)
class StoredMessage:
    """A row of whatsapp_messages."""

    id: str
    source: str
    chat_id: str | None
    sender_id: str | None
    sender_name: str | None
    sent_at: datetime | None
    received_at: datetime | None
    wa_type: str
    text: str
    status: MessageStatus
    attempts: int = 0
    last_error: str | None = None
    processed_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ListingRecord:
    """A row of watch_listings, ready to write (id and created_at are set by the store)."""

    message_id: str
    position: int
    message_type: str
    brand: str | None
    model: str | None
    reference: str | None
    price: float | None
    currency: str | None
    price_eur: float | None
    condition: str | None
    year: int | None
    size_mm: float | None
    movement: str | None
    box: bool | None
    papers: bool | None
    confidence: float
    text: str
    embedding: list[float] | None
    embedding_model: str | None


@dataclass(slots=True)
class SearchFilters:
    """What a query states; every set field narrows the results. Prices are compared in EUR."""

    message_type: str | None = None
    brand: str | None = None
    model: str | None = None
    reference: str | None = None
    min_price_eur: float | None = None
    max_price_eur: float | None = None
    condition: str | None = None
    since: datetime | None = None
    min_year: int | None = None
    max_year: int | None = None
    box: bool | None = None
    papers: bool | None = None
    sender_id: str | None = None


@dataclass(slots=True)
class ListingHit:
    """A stored listing with its message, as search returns it."""

    listing_id: int
    message_id: str
    position: int
    message_type: str
    brand: str | None
    model: str | None
    reference: str | None
    price: float | None
    currency: str | None
    price_eur: float | None
    condition: str | None
    year: int | None
    box: bool | None
    papers: bool | None
    confidence: float
    text: str
    created_at: datetime | None
    message_text: str
    sender_id: str | None
    sender_name: str | None
    chat_id: str | None
    sent_at: datetime | None
    score: float = 0.0
    vector_score: float | None = None
    keyword_score: float | None = None


@dataclass(slots=True)
class StoreStats:
    """Aggregates computed from stored rows, so they survive a restart."""

    messages_total: int = 0
    pending: int = 0
    processed: int = 0
    failed: int = 0
    listings_total: int = 0
    watch_messages: int = 0
    sales: int = 0
    wanted: int = 0
    questions: int = 0
    trades: int = 0
    total_value_eur: float = 0.0
    top_brands: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None


def as_datetime(value: Any) -> datetime | None:
    """A timestamptz from psycopg (datetime) or from PostgREST JSON (ISO text)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def message_from_row(row: Mapping[str, Any]) -> StoredMessage:
    """A whatsapp_messages row from any backend (timestamps as datetimes or ISO text, raw as JSON or text)."""
    raw = row.get("raw") or {}
    return StoredMessage(
        id=row["id"],
        source=row["source"],
        chat_id=row["chat_id"],
        sender_id=row["sender_id"],
        sender_name=row["sender_name"],
        sent_at=as_datetime(row["sent_at"]),
        received_at=as_datetime(row["received_at"]),
        wa_type=row["wa_type"],
        text=row["text"],
        status=row["status"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        processed_at=as_datetime(row["processed_at"]),
        raw=json.loads(raw) if isinstance(raw, str) else raw,
    )


@runtime_checkable
class Store(Protocol):
    """Durable storage of messages, listings and vectors. All methods are async and safe to call concurrently."""

    backend_name: str

    async def open(self) -> None:
        """Connect and make sure the schema exists."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """Cheap liveness check for /health."""

    async def check_embedding_dimension(self, model: str, dimensions: int) -> None:
        """Raise EmbeddingDimensionMismatch when the store cannot hold vectors of that size."""

    async def insert_messages(self, messages: list[InboundMessage]) -> list[str]:
        """Insert as pending; return the ids that were new (a redelivered id is ignored). Atomic."""

    async def apply_edit(self, message_id: str, new_text: str, raw: dict[str, Any]) -> bool:
        """An edit replaces the text of a known message and queues it again; False if the id is unknown."""

    async def get_message(self, message_id: str) -> StoredMessage | None: ...

    async def claim_pending(self, limit: int, lease_seconds: int) -> list[StoredMessage]:
        """Lease up to `limit` pending messages that are due; a crashed worker's lease expires."""

    async def complete_messages(self, results: list[tuple[str, list[ListingRecord]]]) -> None:
        """Replace each message's listings and mark it processed, atomically."""

    async def fail_message(self, message_id: str, error: str, retry_in_seconds: float | None) -> None:
        """Record a failed attempt: retried after `retry_in_seconds`, or `failed` for good when None."""

    async def requeue_failed(self) -> int:
        """Put failed messages back in the queue with attempts reset; returns how many."""

    async def search_vector(
        self, embedding: list[float], model: str, filters: SearchFilters, limit: int
    ) -> list[ListingHit]:
        """Nearest listings of `model` by cosine similarity, within the filters."""

    async def search_keyword(self, query: str, filters: SearchFilters, limit: int) -> list[ListingHit]:
        """Full-text match on the listing's line and fields, within the filters."""

    async def search_hybrid(
        self, query: str, embedding: list[float], model: str, filters: SearchFilters, limit: int
    ) -> list[ListingHit]:
        """Vector and full-text rankings fused by reciprocal rank (RRF), within the filters."""

    async def list_listings(self, filters: SearchFilters, limit: int) -> list[ListingHit]:
        """Newest listings matching the filters (market statistics, alerts)."""

    async def listings_needing_embedding(self, model: str, limit: int) -> list[tuple[int, str]]:
        """(listing id, text to embed) for listings whose vector is not of `model` (reembed)."""

    async def update_embeddings(self, model: str, vectors: list[tuple[int, list[float]]]) -> None: ...

    async def stats(self) -> StoreStats: ...

    async def forget_sender(self, sender_id: str) -> int:
        """Delete every message and listing of a sender; returns the number of messages deleted."""

    async def record_notification(self, key: str) -> bool:
        """Remember that a reply/alert was sent; False when `key` was already recorded (never send twice)."""


RRF_K = 60


def rrf_fuse(vector_hits: list[ListingHit], keyword_hits: list[ListingHit], limit: int) -> list[ListingHit]:
    """Reciprocal rank fusion: score = sum of 1 / (RRF_K + rank) over the rankings a listing appears in."""
    fused: dict[int, ListingHit] = {}
    scores: dict[int, float] = {}
    for rank, hit in enumerate(vector_hits, start=1):
        fused[hit.listing_id] = hit
        hit.vector_score = hit.score
        scores[hit.listing_id] = scores.get(hit.listing_id, 0.0) + 1.0 / (RRF_K + rank)
    for rank, hit in enumerate(keyword_hits, start=1):
        kept = fused.setdefault(hit.listing_id, hit)
        kept.keyword_score = hit.score
        scores[hit.listing_id] = scores.get(hit.listing_id, 0.0) + 1.0 / (RRF_K + rank)
    ordered = sorted(fused.values(), key=lambda h: (-scores[h.listing_id], h.listing_id))[:limit]
    for hit in ordered:
        hit.score = scores[hit.listing_id]
    return ordered
