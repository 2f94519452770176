"""Counters for /health: what happened in this process, plus aggregates the store computes from its rows.

Anything that describes stored data (messages received, processed, listings by type, value) comes from the
store so it survives a restart; only events that leave no row (duplicates, statuses, errors) live here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from src.store.base import StoreStats
from src.watch_info_extractor import IMPLEMENTATION as EXTRACTOR_IMPLEMENTATION


@dataclass(slots=True)
class RuntimeStats:
    """Events seen by this process since it started."""

    started_at: datetime
    webhook_posts: int = 0
    messages_accepted: int = 0
    duplicates_ignored: int = 0
    statuses_received: int = 0
    reactions_received: int = 0
    unsupported_received: int = 0
    invalid_messages: int = 0
    edits_applied: int = 0
    rejected_requests: int = 0
    store_unavailable: int = 0
    errors: int = 0
    batches_processed: int = 0
    embedding_calls: int = 0
    embedding_errors: int = 0
    last_embedding_error: str | None = None
    last_webhook_at: float = 0.0  # time.monotonic() of the latest webhook POST: the worker yields to intake

    @classmethod
    def new(cls) -> RuntimeStats:
        return cls(started_at=datetime.now(UTC))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        return data


def health_payload(
    *,
    status: str,
    components: dict[str, bool],
    runtime: RuntimeStats,
    stored: StoreStats | None,
    store_backend: str,
    embedding_model: str,
) -> dict[str, Any]:
    """The seed's /health JSON, extended with queue depth, duplicates and the active backends."""
    s = stored or StoreStats()
    return {
        "status": status,
        "components": components,
        "runtime_stats": {
            "messages_received": s.messages_total,
            "messages_processed": s.processed,
            "errors": runtime.errors + s.failed,
            "watch_messages_detected": s.watch_messages,
            "sales_detected": s.sales,
            "wanted_detected": s.wanted,
            "questions_detected": s.questions,
            "trades_detected": s.trades,
            "total_value_detected": round(s.total_value_eur, 2),
            "duplicates_ignored": runtime.duplicates_ignored,
            "statuses_received": runtime.statuses_received,
            "reactions_received": runtime.reactions_received,
            "invalid_messages": runtime.invalid_messages,
            "edits_applied": runtime.edits_applied,
            "embedding_calls": runtime.embedding_calls,
            "started_at": runtime.started_at.isoformat(),
        },
        "watch_stats": {
            "messages_analyzed": s.watch_messages,
            "listings": s.listings_total,
            "sales_found": s.sales,
            "wanted_found": s.wanted,
            "questions_found": s.questions,
            "trades_found": s.trades,
            "total_value_eur": f"{s.total_value_eur:.2f}€",
            "top_brands": s.top_brands,
        },
        "queue": {
            "pending": s.pending,
            "failed": s.failed,
            "last_error": runtime.last_embedding_error or s.last_error,
        },
        "store_backend": store_backend,
        "embedding_model": embedding_model,
        "extractor": EXTRACTOR_IMPLEMENTATION,  # "mypyc" when the compiled build serves, else "python"
    }
