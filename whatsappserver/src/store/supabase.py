"""Supabase store over its HTTP API (supabase-py async, PostgREST): the seed's production setup.

PostgREST has no multi-statement transactions, so everything that must be atomic or that touches
vectors is one SQL function of supabase/migrations/ called by RPC (the same functions PostgresStore
calls directly). Plain single-table reads and writes use the table endpoints. Row level security is on
with no policy: only the service role key can read or write (an anon key sees an empty store).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx
from postgrest.exceptions import APIError
from postgrest.types import ReturnMethod
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from src.store.base import (
    EmbeddingDimensionMismatch,
    InboundMessage,
    ListingHit,
    ListingRecord,
    SearchFilters,
    StoredMessage,
    StoreError,
    StoreStats,
    StoreUnavailable,
    message_from_row,
)
from src.store.postgres import (
    dimension_error,
    filter_args,
    hit_from_row,
    stats_from_json,
    usable_query_vector,
    utc,
)

log = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 15.0

# PostgREST and Postgres error codes that mean "down or overloaded, try again", not "wrong request".
_UNAVAILABLE_CODES = ("PGRST000", "PGRST001", "PGRST002", "PGRST003", "57014", "57P01", "57P03", "53300")


def _json_value(value: Any) -> Any:
    """RPC arguments travel as JSON: datetimes as ISO text, vectors as lists of floats."""
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _json_args(args: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _json_value(value) for name, value in args.items()}


def _listing_json(item: ListingRecord) -> dict[str, Any]:
    return {
        "position": item.position,
        "message_type": item.message_type,
        "brand": item.brand,
        "model": item.model,
        "reference": item.reference,
        "price": item.price,
        "currency": item.currency,
        "price_eur": item.price_eur,
        "condition": item.condition,
        "year": item.year,
        "size_mm": item.size_mm,
        "movement": item.movement,
        "box": item.box,
        "papers": item.papers,
        "confidence": item.confidence,
        "text": item.text,
        "embedding": None if item.embedding is None else [float(x) for x in item.embedding],
        "embedding_model": item.embedding_model,
    }


class SupabaseStore:
    """Store on a Supabase project: SUPABASE_URL and the service role key."""

    backend_name = "supabase"

    def __init__(
        self,
        url: str,
        key: str,
        *,
        dimensions: int = 1536,
        timeout: float = HTTP_TIMEOUT_SECONDS,
    ) -> None:
        if not url or not key:
            raise StoreError("SupabaseStore needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")
        self.url = url
        self._key = key
        self.dimensions = dimensions
        self._timeout = timeout
        self._client: AsyncClient | None = None
        self._http: httpx.AsyncClient | None = None
        self.column_dimensions: int | None = None

    # -- plumbing -----------------------------------------------------------------------------------

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise StoreUnavailable("Supabase store is not open")
        return self._client

    async def _execute(self, builder: Any) -> Any:
        """Run one PostgREST request; network trouble and overload become StoreUnavailable."""
        try:
            response = await builder.execute()
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise StoreUnavailable(f"Supabase unreachable: {type(exc).__name__}: {exc}") from exc
        except APIError as exc:
            code = str(exc.code or "")
            if code in _UNAVAILABLE_CODES or code.startswith(("08", "5")):
                raise StoreUnavailable(f"Supabase: {code} {exc.message}") from exc
            raise StoreError(f"Supabase: {code} {exc.message} {exc.details or ''}".strip()) from exc
        return response.data

    async def _rpc(self, function: str, args: Mapping[str, Any]) -> Any:
        return await self._execute(self.client.rpc(function, _json_args(args)))

    async def open(self) -> None:
        # Our own HTTP client: supabase-py's timeout option is deprecated (and truncated to whole seconds).
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 5.0)), follow_redirects=True
        )
        options = AsyncClientOptions(httpx_client=self._http, auto_refresh_token=False, persist_session=False)
        self._client = await acreate_client(self.url, self._key, options=options)
        try:
            await self._execute(self.client.table("whatsapp_messages").select("id").limit(1))
        except StoreUnavailable:
            await self.close()
            raise
        except StoreError as exc:
            await self.close()
            code = str(getattr(exc.__cause__, "code", "") or "")
            if code.startswith("PGRST3") or code in ("401", "403", "42501"):
                hint = "check SUPABASE_SERVICE_ROLE_KEY (Project Settings > API keys: the secret/service_role key)"
            else:
                hint = (
                    "apply whatsappserver/supabase/migrations/ to the project first "
                    "(`supabase db push`, or paste the files into the SQL editor)"
                )
            raise StoreError(f"{exc}: {hint}") from exc

    async def close(self) -> None:
        self._client = None
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def ping(self) -> bool:
        try:
            await self._execute(self.client.table("whatsapp_messages").select("id").limit(1))
            return True
        except Exception:
            return False

    async def check_embedding_dimension(self, model: str, dimensions: int) -> None:
        rows = await self._rpc("register_embedding_model", {"model": model, "dimensions": dimensions})
        row = rows[0]
        self.column_dimensions = row["column_dimensions"]
        problem = dimension_error(model, dimensions, row["stored_dimensions"], row["column_dimensions"])
        if problem:
            raise EmbeddingDimensionMismatch(problem)

    # -- intake and queue ---------------------------------------------------------------------------

    async def insert_messages(self, messages: list[InboundMessage]) -> list[str]:
        if not messages:
            return []
        rows = [
            {
                "id": m.id,
                "source": m.source,
                "chat_id": m.chat_id,
                "sender_id": m.sender_id,
                "sender_name": m.sender_name,
                "sent_at": _json_value(utc(m.sent_at)),
                "wa_type": m.wa_type,
                "text": m.text,
                "raw": m.raw,
            }
            for m in messages
        ]
        # One request is one transaction: INSERT ... ON CONFLICT (id) DO NOTHING RETURNING the new rows.
        inserted = await self._execute(
            self.client.table("whatsapp_messages").upsert(
                rows, on_conflict="id", ignore_duplicates=True, default_to_null=False
            )
        )
        new = {row["id"] for row in inserted or []}
        ordered: list[str] = []
        for message in messages:
            if message.id in new and message.id not in ordered:
                ordered.append(message.id)
        return ordered

    async def apply_edit(self, message_id: str, new_text: str, raw: dict[str, Any]) -> bool:
        updated = await self._execute(
            self.client.table("whatsapp_messages")
            .update(
                {
                    "text": new_text,
                    "raw": raw,
                    "status": "pending",
                    "attempts": 0,
                    "last_error": None,
                    "next_attempt_at": None,
                    "claimed_until": None,
                    "processed_at": None,
                }
            )
            .eq("id", message_id)
        )
        return len(updated or []) == 1

    async def get_message(self, message_id: str) -> StoredMessage | None:
        rows = await self._execute(
            self.client.table("whatsapp_messages").select("*").eq("id", message_id).limit(1)
        )
        return message_from_row(rows[0]) if rows else None

    async def claim_pending(self, limit: int, lease_seconds: int) -> list[StoredMessage]:
        rows = await self._rpc("claim_pending_messages", {"batch": limit, "lease_seconds": lease_seconds})
        return [message_from_row(row) for row in rows or []]

    async def complete_messages(self, results: list[tuple[str, list[ListingRecord]]]) -> None:
        if not results:
            return
        payload = [
            {"message_id": message_id, "listings": [_listing_json(item) for item in listings]}
            for message_id, listings in results
        ]
        await self._rpc("complete_watch_messages", {"results": payload})

    async def fail_message(self, message_id: str, error: str, retry_in_seconds: float | None) -> None:
        await self._rpc(
            "fail_watch_message",
            {"message_id": message_id, "error": error, "retry_in_seconds": retry_in_seconds},
        )

    async def requeue_failed(self) -> int:
        return int(await self._rpc("requeue_failed_messages", {}))

    # -- search -------------------------------------------------------------------------------------

    async def search_vector(
        self, embedding: list[float], model: str, filters: SearchFilters, limit: int
    ) -> list[ListingHit]:
        vector = usable_query_vector(embedding, self.column_dimensions)
        if vector is None or limit <= 0:
            return []
        args = {
            "query_embedding": vector,
            "match_count": limit,
            "filter_embedding_model": model,
            **filter_args(filters),
        }
        return [hit_from_row(row) for row in await self._rpc("match_watch_listings", args) or []]

    async def search_keyword(self, query: str, filters: SearchFilters, limit: int) -> list[ListingHit]:
        if limit <= 0 or not query.strip():
            return []
        args = {"query_text": query, "match_count": limit, **filter_args(filters)}
        return [hit_from_row(row) for row in await self._rpc("keyword_search_watch_listings", args) or []]

    async def search_hybrid(
        self, query: str, embedding: list[float], model: str, filters: SearchFilters, limit: int
    ) -> list[ListingHit]:
        if limit <= 0:
            return []
        args = {
            "query_text": query,
            "query_embedding": usable_query_vector(embedding, self.column_dimensions),
            "match_count": limit,
            "filter_embedding_model": model,
            **filter_args(filters),
        }
        return [hit_from_row(row) for row in await self._rpc("hybrid_search_watch_listings", args) or []]

    async def list_listings(self, filters: SearchFilters, limit: int) -> list[ListingHit]:
        if limit <= 0:
            return []
        args = {"match_count": limit, **filter_args(filters)}
        return [hit_from_row(row) for row in await self._rpc("list_watch_listings", args) or []]

    async def listings_needing_embedding(self, model: str, limit: int) -> list[tuple[int, str]]:
        from src.embedding_processor import embedding_text_from_row

        rows = await self._rpc("listings_needing_embedding", {"target_model": model, "batch": limit})
        return [
            (
                int(row["id"]),
                embedding_text_from_row(row),
            )
            for row in rows or []
        ]

    async def update_embeddings(self, model: str, vectors: list[tuple[int, list[float]]]) -> None:
        if not vectors:
            return
        payload = [
            {"id": listing_id, "embedding": [float(x) for x in vector]} for listing_id, vector in vectors
        ]
        await self._rpc("update_listing_embeddings", {"target_model": model, "vectors": payload})

    # -- aggregates and housekeeping ----------------------------------------------------------------

    async def stats(self) -> StoreStats:
        return stats_from_json(await self._rpc("watch_store_stats", {}))

    async def forget_sender(self, sender_id: str) -> int:
        return int(await self._rpc("forget_sender", {"sender_id": sender_id}))

    async def record_notification(self, key: str) -> bool:
        inserted = await self._execute(
            self.client.table("notifications").upsert(
                {"key": key},
                on_conflict="key",
                ignore_duplicates=True,
                default_to_null=False,
                returning=ReturnMethod.representation,
            )
        )
        return len(inserted or []) == 1
