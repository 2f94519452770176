"""Postgres + pgvector store (psycopg 3 async, connection pool): Supabase's direct connection or any Postgres.

Every search and queue operation is one of the SQL functions of supabase/migrations/, the same ones
SupabaseStore calls through PostgREST, so the two backends cannot drift apart. Writes that carry many
vectors (complete_messages, update_embeddings) go straight to the tables with binary vectors instead.
Several app instances can share one database: claims use FOR UPDATE SKIP LOCKED with a lease.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psycopg
from pgvector.psycopg.vector import register_vector_info
from psycopg.rows import dict_row
from psycopg.types import TypeInfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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
    as_datetime,
    message_from_row,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10
POOL_TIMEOUT_SECONDS = 10.0
STATEMENT_TIMEOUT_MS = 30_000

# -- shared with SupabaseStore: how records map to the SQL functions' arguments and rows ------------


def utc(value: datetime | None) -> datetime | None:
    """Naive datetimes are taken as UTC, as the SQLite store does."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def filter_args(filters: SearchFilters) -> dict[str, Any]:
    """SearchFilters as the typed filter arguments of the search functions."""
    return {
        "filter_message_type": filters.message_type or None,
        "filter_brand": filters.brand or None,
        "filter_model": filters.model or None,
        "filter_reference": filters.reference or None,
        "min_price_eur": filters.min_price_eur,
        "max_price_eur": filters.max_price_eur,
        "filter_condition": filters.condition or None,
        "since": utc(filters.since),
        "min_year": filters.min_year,
        "max_year": filters.max_year,
        "filter_box": filters.box,
        "filter_papers": filters.papers,
        "filter_sender_id": filters.sender_id or None,
    }


def hit_from_row(row: Mapping[str, Any]) -> ListingHit:
    return ListingHit(
        listing_id=int(row["listing_id"]),
        message_id=row["message_id"],
        position=row["position"],
        message_type=row["message_type"],
        brand=row["brand"],
        model=row["model"],
        reference=row["reference"],
        price=row["price"],
        currency=row["currency"],
        price_eur=row["price_eur"],
        condition=row["condition"],
        year=row["year"],
        box=row["box"],
        papers=row["papers"],
        confidence=row["confidence"],
        text=row["text"],
        created_at=as_datetime(row["created_at"]),
        message_text=row["message_text"],
        sender_id=row["sender_id"],
        sender_name=row["sender_name"],
        chat_id=row["chat_id"],
        sent_at=as_datetime(row["sent_at"]),
        score=float(row["score"] or 0.0),
        vector_score=row.get("vector_score"),
        keyword_score=row.get("keyword_score"),
    )


def stats_from_json(data: Mapping[str, Any]) -> StoreStats:
    by_type = data.get("by_type") or {}
    return StoreStats(
        messages_total=int(data["messages_total"]),
        pending=int(data["pending"]),
        processed=int(data["processed"]),
        failed=int(data["failed"]),
        listings_total=int(data["listings_total"]),
        watch_messages=int(data["watch_messages"]),
        sales=int(by_type.get("sale", 0)),
        wanted=int(by_type.get("wanted", 0)),
        questions=int(by_type.get("question", 0)),
        trades=int(by_type.get("trade", 0)),
        total_value_eur=float(data["total_value_eur"] or 0.0),
        top_brands={str(brand): int(count) for brand, count in data.get("top_brands") or []},
        last_error=data.get("last_error"),
    )


def dimension_error(model: str, dimensions: int, stored: int | None, column: int | None) -> str | None:
    """The mismatch message, or None when vectors of `dimensions` fit."""
    if column is not None and column != dimensions:
        return (
            f"the database column watch_listings.embedding holds vector({column}) but the embedder "
            f"{model} produces {dimensions} dimensions: set EMBEDDING_DIMENSIONS={column} (OpenAI "
            "text-embedding-3 models accept it), or add a migration that changes the column and the "
            "search functions to vector({dimensions}) and run `python -m src.cli reembed`"
        )
    if stored is not None and stored != dimensions:
        return (
            f"the store holds {model} vectors of {stored} dimensions but the embedder produces "
            f"{dimensions}: set EMBEDDING_DIMENSIONS={stored}, or choose another model and run "
            "`python -m src.cli reembed`"
        )
    return None


def usable_query_vector(embedding: list[float] | None, dimensions: int | None) -> np.ndarray | None:
    """float32 query vector, or None when it cannot match anything (zero, or the wrong size)."""
    if embedding is None:
        return None
    vector = np.asarray(embedding, dtype=np.float32)
    if vector.ndim != 1 or (dimensions is not None and vector.shape[0] != dimensions):
        return None
    if not np.isfinite(vector).all() or float(np.linalg.norm(vector)) == 0.0:
        return None
    return vector


def _named_args(args: Mapping[str, Any], binary: tuple[str, ...] = ()) -> str:
    """`name => %(name)s, ...` for a function call; vectors travel in binary."""
    return ", ".join(f"{name} => %({name}){'b' if name in binary else 's'}" for name in args)


MESSAGE_INSERT = (
    "INSERT INTO public.whatsapp_messages "
    "(id, source, chat_id, sender_id, sender_name, sent_at, wa_type, text, raw) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], "
    "%s::text[], %s::text[], %s::jsonb[]) "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)

LISTING_INSERT = (
    "INSERT INTO public.watch_listings (message_id, position, message_type, brand, model, reference, price, "
    "currency, price_eur, condition, year, size_mm, movement, box, papers, confidence, text, embedding, "
    "embedding_model) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %b, %s)"
)


def _is_transaction_pooler(url: str) -> bool:
    """Supabase's transaction pooler (port 6543) cannot keep prepared statements between transactions."""
    try:
        return urlsplit(url).port == 6543
    except ValueError:
        return False


class PostgresStore:
    """Store on Postgres with pgvector >= 0.8. `open()` applies pending migrations (advisory-locked)."""

    backend_name = "postgres"

    def __init__(
        self,
        url: str,
        *,
        dimensions: int = 1536,
        min_connections: int = 1,
        max_connections: int = 10,
        migrate: bool = True,
        timeout: float = POOL_TIMEOUT_SECONDS,
    ) -> None:
        if not url:
            raise StoreError("DATABASE_URL is empty: set it to a postgresql:// connection string")
        self.url = url
        self.dimensions = dimensions
        self._migrate = migrate
        self._timeout = timeout
        self._min = min_connections
        self._max = max_connections
        self._pool: AsyncConnectionPool | None = None
        self._vector_info: TypeInfo | None = None
        self.column_dimensions: int | None = None

    # -- plumbing -----------------------------------------------------------------------------------

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Per new connection: the pgvector adapter (wherever the extension lives) and a statement timeout."""
        if self._vector_info is None:
            cursor = await conn.execute(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                "WHERE e.extname = 'vector'"
            )
            row = await cursor.fetchone()
            if row is None:
                raise StoreError(
                    "the pgvector extension is not installed in this database: run "
                    "`python -m src.cli migrate` (or the Supabase migrations) first"
                )
            schema = row["nspname"] if isinstance(row, Mapping) else row[0]
            self._vector_info = await TypeInfo.fetch(conn, f'"{schema}".vector')
        register_vector_info(conn, self._vector_info)
        await conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        await conn.commit()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        """A pooled connection in one transaction; lost connections and timeouts become StoreUnavailable."""
        if self._pool is None:
            raise StoreUnavailable("Postgres store is not open")
        try:
            async with self._pool.connection(timeout=self._timeout) as conn:
                yield conn  # type: ignore[misc]
        except PoolTimeout as exc:
            raise StoreUnavailable(f"Postgres: no connection within {self._timeout:g}s ({exc})") from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"Postgres: {exc}") from exc

    async def _rows(self, sql: str, params: Mapping[str, Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall() if cursor.description else []

    async def _call(self, function: str, args: Mapping[str, Any], binary: tuple[str, ...] = ()) -> list[Any]:
        """`SELECT * FROM function(name => value, ...)`: the same call PostgREST makes for an RPC."""
        return await self._rows(f"SELECT * FROM public.{function}({_named_args(args, binary)})", args)

    async def open(self) -> None:
        if self._migrate:
            from src.commands.migrate import apply_migrations

            try:
                await apply_migrations(self.url)
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"cannot reach Postgres to migrate: {exc}") from exc
        kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, "row_factory": dict_row}
        if _is_transaction_pooler(self.url):
            kwargs["prepare_threshold"] = None
        pool: AsyncConnectionPool = AsyncConnectionPool(
            self.url,
            min_size=self._min,
            max_size=self._max,
            kwargs=kwargs,
            configure=self._configure,
            check=AsyncConnectionPool.check_connection,
            open=False,
            name="whatsappserver",
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except PoolTimeout as exc:
            await pool.close()
            raise StoreUnavailable(f"cannot connect to Postgres within {self._timeout:g}s: {exc}") from exc
        self._pool = pool
        rows = await self._rows(
            "SELECT nullif(atttypmod, -1) AS dims FROM pg_attribute "
            "WHERE attrelid = to_regclass('public.watch_listings') AND attname = 'embedding'"
        )
        if not rows:
            await self.close()
            raise StoreError(
                "table public.watch_listings is missing: run `python -m src.cli migrate` "
                "(or apply whatsappserver/supabase/migrations/ on Supabase)"
            )
        self.column_dimensions = rows[0]["dims"]

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def ping(self) -> bool:
        try:
            await self._rows("SELECT 1 AS ok")
            return True
        except Exception:
            return False

    async def check_embedding_dimension(self, model: str, dimensions: int) -> None:
        rows = await self._call("register_embedding_model", {"model": model, "dimensions": dimensions})
        row = rows[0]
        problem = dimension_error(model, dimensions, row["stored_dimensions"], row["column_dimensions"])
        if problem:
            raise EmbeddingDimensionMismatch(problem)

    # -- intake and queue ---------------------------------------------------------------------------

    async def insert_messages(self, messages: list[InboundMessage]) -> list[str]:
        if not messages:
            return []
        columns = (
            [m.id for m in messages],
            [m.source for m in messages],
            [m.chat_id for m in messages],
            [m.sender_id for m in messages],
            [m.sender_name for m in messages],
            [utc(m.sent_at) for m in messages],
            [m.wa_type for m in messages],
            [m.text for m in messages],
            [m.raw_json or json.dumps(m.raw, ensure_ascii=False) for m in messages],
        )
        new = {row["id"] for row in await self._rows(MESSAGE_INSERT, columns)}
        ordered: list[str] = []
        for message in messages:
            if message.id in new and message.id not in ordered:
                ordered.append(message.id)
        return ordered

    async def apply_edit(self, message_id: str, new_text: str, raw: dict[str, Any]) -> bool:
        rows = await self._rows(
            "UPDATE public.whatsapp_messages SET text = %s, raw = %s::jsonb, status = 'pending', attempts = 0, "
            "last_error = NULL, next_attempt_at = NULL, claimed_until = NULL, processed_at = NULL "
            "WHERE id = %s RETURNING id",
            (new_text, json.dumps(raw, ensure_ascii=False), message_id),
        )
        return len(rows) == 1

    async def get_message(self, message_id: str) -> StoredMessage | None:
        rows = await self._rows("SELECT * FROM public.whatsapp_messages WHERE id = %s", (message_id,))
        return message_from_row(rows[0]) if rows else None

    async def claim_pending(self, limit: int, lease_seconds: int) -> list[StoredMessage]:
        rows = await self._call("claim_pending_messages", {"batch": limit, "lease_seconds": lease_seconds})
        return [message_from_row(row) for row in rows]

    async def complete_messages(self, results: list[tuple[str, list[ListingRecord]]]) -> None:
        if not results:
            return
        ids = [message_id for message_id, _ in results]
        rows = [
            (
                item.message_id,
                item.position,
                item.message_type,
                item.brand,
                item.model,
                item.reference,
                item.price,
                item.currency,
                item.price_eur,
                item.condition,
                item.year,
                item.size_mm,
                item.movement,
                item.box,
                item.papers,
                item.confidence,
                item.text,
                None if item.embedding is None else np.asarray(item.embedding, dtype=np.float32),
                item.embedding_model,
            )
            for _, listings in results
            for item in listings
        ]
        async with self._connection() as conn:
            await conn.execute("DELETE FROM public.watch_listings WHERE message_id = ANY(%s)", (ids,))
            if rows:
                async with conn.cursor() as cursor:
                    await cursor.executemany(LISTING_INSERT, rows)
            await conn.execute(
                "UPDATE public.whatsapp_messages SET status = 'processed', processed_at = now(), "
                "last_error = NULL, claimed_until = NULL, next_attempt_at = NULL WHERE id = ANY(%s)",
                (ids,),
            )

    async def fail_message(self, message_id: str, error: str, retry_in_seconds: float | None) -> None:
        await self._call(
            "fail_watch_message",
            {"message_id": message_id, "error": error, "retry_in_seconds": retry_in_seconds},
        )

    async def requeue_failed(self) -> int:
        rows = await self._call("requeue_failed_messages", {})
        return int(rows[0]["requeue_failed_messages"])

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
        rows = await self._call("match_watch_listings", args, binary=("query_embedding",))
        return [hit_from_row(row) for row in rows]

    async def search_keyword(self, query: str, filters: SearchFilters, limit: int) -> list[ListingHit]:
        if limit <= 0 or not query.strip():
            return []
        args = {"query_text": query, "match_count": limit, **filter_args(filters)}
        rows = await self._call("keyword_search_watch_listings", args)
        return [hit_from_row(row) for row in rows]

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
        rows = await self._call("hybrid_search_watch_listings", args, binary=("query_embedding",))
        return [hit_from_row(row) for row in rows]

    async def list_listings(self, filters: SearchFilters, limit: int) -> list[ListingHit]:
        if limit <= 0:
            return []
        rows = await self._call("list_watch_listings", {"match_count": limit, **filter_args(filters)})
        return [hit_from_row(row) for row in rows]

    async def listings_needing_embedding(self, model: str, limit: int) -> list[tuple[int, str]]:
        from src.embedding_processor import embedding_text_from_row

        rows = await self._call("listings_needing_embedding", {"target_model": model, "batch": limit})
        return [
            (
                int(row["id"]),
                embedding_text_from_row(row),
            )
            for row in rows
        ]

    async def update_embeddings(self, model: str, vectors: list[tuple[int, list[float]]]) -> None:
        if not vectors:
            return
        async with self._connection() as conn, conn.cursor() as cursor:
            await cursor.executemany(
                "UPDATE public.watch_listings SET embedding = %b, embedding_model = %s WHERE id = %s",
                [(np.asarray(vector, dtype=np.float32), model, listing_id) for listing_id, vector in vectors],
            )

    # -- aggregates and housekeeping ----------------------------------------------------------------

    async def stats(self) -> StoreStats:
        rows = await self._call("watch_store_stats", {})
        return stats_from_json(rows[0]["watch_store_stats"])

    async def forget_sender(self, sender_id: str) -> int:
        rows = await self._call("forget_sender", {"sender_id": sender_id})
        return int(rows[0]["forget_sender"])

    async def record_notification(self, key: str) -> bool:
        rows = await self._rows(
            "INSERT INTO public.notifications (key) VALUES (%s) ON CONFLICT (key) DO NOTHING RETURNING key",
            (key,),
        )
        return len(rows) == 1
