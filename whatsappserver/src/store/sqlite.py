"""The embedded default store: stdlib sqlite3 in WAL mode, exact vector search with numpy, FTS5 keywords.

sqlite3 is blocking, so every call runs on one dedicated thread (one connection, serialised writes);
the event loop never waits on disk. Vectors are little-endian float32 blobs; an in-memory column-major
matrix per embedding model keeps search one (sparse or dense) matrix-vector product, refreshed when any
connection writes.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from src import fast_json
from src.store.base import (
    EmbeddingDimensionMismatch,
    InboundMessage,
    ListingHit,
    ListingRecord,
    SearchFilters,
    StoredMessage,
    StoreStats,
    StoreUnavailable,
    as_datetime,
    message_from_row,
    rrf_fuse,
)
from src.store.wal_checkpointer import WalCheckpointer
from src.watch_models import normalize_reference

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS whatsapp_messages (
    id              TEXT PRIMARY KEY,
    source          TEXT NOT NULL CHECK (source IN ('webhook', 'chat_export')),
    chat_id         TEXT,
    sender_id       TEXT,
    sender_name     TEXT,
    sent_at         TEXT,
    received_at     TEXT NOT NULL,
    wa_type         TEXT NOT NULL,
    text            TEXT NOT NULL DEFAULT '',
    raw             TEXT NOT NULL DEFAULT '{}',
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processed', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    processed_at    TEXT,
    next_attempt_at TEXT,
    claimed_until   TEXT
);
-- The claim walks pending messages oldest first and stops at its batch size: with the order in the index
-- a claim costs the same whether 10 or 500,000 messages wait (a sort of every pending row held up intake).
DROP INDEX IF EXISTS whatsapp_messages_queue;
CREATE INDEX IF NOT EXISTS whatsapp_messages_queue_order ON whatsapp_messages (status, received_at, id);
-- Processed messages only: a sender index on every message would cost intake a random b-tree write per
-- message (half its write cost under load); the few pending or failed ones are found through the queue index.
DROP INDEX IF EXISTS whatsapp_messages_sender;
CREATE INDEX IF NOT EXISTS whatsapp_messages_sender_processed ON whatsapp_messages (sender_id)
    WHERE status = 'processed';

CREATE TABLE IF NOT EXISTS watch_listings (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT NOT NULL REFERENCES whatsapp_messages (id) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    message_type    TEXT NOT NULL,
    brand           TEXT,
    model           TEXT,
    reference       TEXT,
    reference_norm  TEXT,
    price           REAL,
    currency        TEXT,
    price_eur       REAL,
    condition       TEXT,
    year            INTEGER,
    size_mm         REAL,
    movement        TEXT,
    box             INTEGER,
    papers          INTEGER,
    confidence      REAL NOT NULL DEFAULT 0,
    text            TEXT NOT NULL DEFAULT '',
    embedding       BLOB,
    embedding_model TEXT,
    created_at      TEXT NOT NULL,
    UNIQUE (message_id, position)
);
CREATE INDEX IF NOT EXISTS watch_listings_brand ON watch_listings (brand COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS watch_listings_model ON watch_listings (model COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS watch_listings_reference ON watch_listings (reference_norm);
CREATE INDEX IF NOT EXISTS watch_listings_type ON watch_listings (message_type);
CREATE INDEX IF NOT EXISTS watch_listings_price ON watch_listings (price_eur);
CREATE INDEX IF NOT EXISTS watch_listings_model_name ON watch_listings (embedding_model);

CREATE VIRTUAL TABLE IF NOT EXISTS watch_listings_fts USING fts5(
    text, brand, model, reference, content='watch_listings', content_rowid='id',
    tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS watch_listings_fts_insert AFTER INSERT ON watch_listings BEGIN
    INSERT INTO watch_listings_fts (rowid, text, brand, model, reference)
    VALUES (new.id, new.text, new.brand, new.model, new.reference);
END;
CREATE TRIGGER IF NOT EXISTS watch_listings_fts_delete AFTER DELETE ON watch_listings BEGIN
    INSERT INTO watch_listings_fts (watch_listings_fts, rowid, text, brand, model, reference)
    VALUES ('delete', old.id, old.text, old.brand, old.model, old.reference);
END;

CREATE TABLE IF NOT EXISTS notifications (
    key        TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS embedding_models (
    model      TEXT PRIMARY KEY,
    dimensions INTEGER NOT NULL
);
"""

# Rows per multi-row INSERT (10 parameters each, well under SQLite's 32,766-variable limit).
INSERT_ROWS_PER_STATEMENT = 500
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024  # the WAL file is cut back to this when it restarts

# Intake commits start at least this far apart. A POST that finds the store idle commits at once; under load
# the POSTs of the interval share one transaction, one fsync and one wake-up of the event loop. At 800 POST/s
# (bench/load.py's client) server CPU per POST fell from 0.64-0.67 ms to 0.45-0.50 ms, acks p99 under 25 ms.
GROUP_COMMIT_INTERVAL_SECONDS = 0.004

# Messages per worker transaction: short enough that a webhook insert never waits long behind one.
COMPLETE_CHUNK = 16

LISTING_COLUMNS = (
    "l.id, l.message_id, l.position, l.message_type, l.brand, l.model, l.reference, l.price, l.currency, "
    "l.price_eur, l.condition, l.year, l.box, l.papers, l.confidence, l.text, l.created_at, "
    "m.text, m.sender_id, m.sender_name, m.chat_id, m.sent_at"
)


@functools.lru_cache(maxsize=4096)
def _ts(value: datetime | None) -> str | None:
    """One fixed text format in UTC, so that string order is time order (memoised: intake formats the same
    few send times over and over)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _now() -> str:
    return _ts(datetime.now(UTC)) or ""


def _bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _vector_blob(vector: list[float] | None) -> bytes | None:
    if vector is None:
        return None
    return np.asarray(vector, dtype="<f4").tobytes()


def _hit_from_row(row: tuple[Any, ...], score: float = 0.0) -> ListingHit:
    return ListingHit(
        listing_id=row[0],
        message_id=row[1],
        position=row[2],
        message_type=row[3],
        brand=row[4],
        model=row[5],
        reference=row[6],
        price=row[7],
        currency=row[8],
        price_eur=row[9],
        condition=row[10],
        year=row[11],
        box=_bool(row[12]),
        papers=_bool(row[13]),
        confidence=row[14],
        text=row[15],
        created_at=as_datetime(row[16]),
        message_text=row[17],
        sender_id=row[18],
        sender_name=row[19],
        chat_id=row[20],
        sent_at=as_datetime(row[21]),
        score=score,
    )


def _filter_sql(filters: SearchFilters) -> tuple[str, list[Any]]:
    """WHERE clause (over `l` listings joined to `m` messages) for every filter that is set."""
    clauses: list[str] = []
    params: list[Any] = []
    if filters.message_type:
        clauses.append("l.message_type = ?")
        params.append(filters.message_type)
    if filters.brand:
        clauses.append("l.brand = ? COLLATE NOCASE")
        params.append(filters.brand)
    if filters.model:
        clauses.append("l.model = ? COLLATE NOCASE")
        params.append(filters.model)
    if filters.reference:
        clauses.append("l.reference_norm LIKE ? ESCAPE '\\'")
        escaped = normalize_reference(filters.reference).replace("\\", "\\\\").replace("%", "\\%")
        params.append(escaped.replace("_", "\\_") + "%")
    if filters.min_price_eur is not None:
        clauses.append("l.price_eur >= ?")
        params.append(filters.min_price_eur)
    if filters.max_price_eur is not None:
        clauses.append("l.price_eur <= ?")
        params.append(filters.max_price_eur)
    if filters.condition:
        clauses.append("l.condition = ?")
        params.append(filters.condition)
    if filters.since is not None:
        clauses.append("COALESCE(m.sent_at, m.received_at) >= ?")
        params.append(_ts(filters.since))
    if filters.min_year is not None:
        clauses.append("l.year >= ?")
        params.append(filters.min_year)
    if filters.max_year is not None:
        clauses.append("l.year <= ?")
        params.append(filters.max_year)
    if filters.box is not None:
        clauses.append("l.box = ?")
        params.append(int(filters.box))
    if filters.papers is not None:
        clauses.append("l.papers = ?")
        params.append(int(filters.papers))
    if filters.sender_id:
        clauses.append("m.sender_id = ? AND m.status = 'processed'")  # the partial sender index
        params.append(filters.sender_id)
    return (" AND ".join(clauses) if clauses else "1"), params


def _has_filters(filters: SearchFilters) -> bool:
    return any(value is not None and value != "" for value in _filter_values(filters))


def _filter_values(filters: SearchFilters) -> list[Any]:
    return [getattr(filters, name) for name in SearchFilters.__slots__]  # type: ignore[attr-defined]


class _VectorIndex:
    """Every vector of one embedding model, rows in listing-id order, stored column-major.

    Column-major (dimensions x listings) because the offline embedder's vectors are sparse: a query touches
    only its non-zero dimensions, each one contiguous row here, so 100k listings score in a few ms. A dense
    query (OpenAI) is one matrix-vector product either way. Capacity grows by doubling so appends are cheap.
    """

    def __init__(self, dimensions: int) -> None:
        self.dims = dimensions
        self.ids = np.empty(0, dtype=np.int64)
        self.columns = np.empty((dimensions, 0), dtype=np.float32)
        self.size = 0
        self.max_id = 0
        self.version: tuple[int, int] | None = None

    def append(self, ids: np.ndarray, rows: np.ndarray) -> None:
        needed = self.size + len(ids)
        if needed > self.columns.shape[1]:
            grown = np.empty((self.dims, max(needed, 2 * self.columns.shape[1], 1024)), dtype=np.float32)
            grown[:, : self.size] = self.columns[:, : self.size]
            self.columns = grown
        self.columns[:, self.size : needed] = rows.T
        self.ids = np.concatenate([self.ids, ids])
        self.size = needed
        self.max_id = int(self.ids[-1]) if needed else 0

    def scores(self, query: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
        """Cosine scores (vectors are unit length) of every row, or of `positions` only."""
        used = self.columns[:, : self.size]
        nonzero = np.flatnonzero(query)
        if len(nonzero) <= self.dims // 4:
            if positions is not None and len(positions) < 4096:
                return query[nonzero] @ used[np.ix_(nonzero, positions)]
            total = np.zeros(self.size, dtype=np.float32)
            for dim in nonzero:
                total += query[dim] * used[dim]
            return total if positions is None else total[positions]
        if positions is not None and len(positions) < self.size // 8:
            return query @ used[:, positions]
        total = query @ used
        return total if positions is None else total[positions]


class SQLiteStore:
    """Store on one SQLite file. Safe for one process writing and others reading (CLI beside the server)."""

    backend_name = "sqlite"

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "FULL",
        busy_timeout_seconds: float = 5.0,
        group_commit_interval_seconds: float = GROUP_COMMIT_INTERVAL_SECONDS,
    ) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout_seconds
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._indexes: dict[str, _VectorIndex] = {}
        self._lock = threading.Lock()
        self._insert_queue: list[tuple[list[tuple[Any, ...]], asyncio.Future[list[str]]]] = []
        self._insert_flush_scheduled = False
        self._group_commit_interval = group_commit_interval_seconds
        self._last_intake_commit = 0.0  # monotonic time the last intake transaction began
        in_memory = self.path == Path(":memory:")
        self._checkpointer = (
            None if in_memory else WalCheckpointer(self.path, busy_timeout_seconds=busy_timeout_seconds)
        )

    # -- plumbing -----------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise StoreUnavailable("SQLite store is not open")
        try:
            return fn(self._conn)
        except sqlite3.OperationalError as exc:
            if self._conn.in_transaction:
                self._conn.rollback()
            raise StoreUnavailable(f"SQLite at {self.path}: {exc}") from exc
        except BaseException:
            if self._conn.in_transaction:
                self._conn.rollback()
            raise

    def _connect(self) -> None:
        if self.path != Path(":memory:"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=self._busy_timeout
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # Intake commits are made durable one by one (see _insert_batch); everything else is re-derivable
        # from stored messages, so it commits without waiting for the disk (a later durable commit syncs it).
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        if self._checkpointer is not None:
            # Checkpoints run on their own thread (wal_checkpointer.py), never inside an intake COMMIT.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        conn.executescript(SCHEMA)
        self._conn = conn

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._connect)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database at {self.path}: {exc}") from exc
        if self._checkpointer is not None:
            self._checkpointer.start()

    async def close(self) -> None:
        def _close(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is not None:
            await self._run(_close)
            self._conn = None
        self._executor.shutdown(wait=True)
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.stop)

    async def ping(self) -> bool:
        try:
            await self._run(lambda conn: conn.execute("SELECT 1").fetchone())
            return True
        except Exception:
            return False

    async def check_embedding_dimension(self, model: str, dimensions: int) -> None:
        def _check(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT dimensions FROM embedding_models WHERE model = ?", (model,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO embedding_models (model, dimensions) VALUES (?, ?)", (model, dimensions)
                )
                return
            if row["dimensions"] != dimensions:
                raise EmbeddingDimensionMismatch(
                    f"the store holds {model} vectors of {row['dimensions']} dimensions but the embedder "
                    f"produces {dimensions}: set EMBEDDING_DIMENSIONS={row['dimensions']}, or choose another "
                    "model and run `python -m src.cli reembed`"
                )

        await self._run(_check)

    # -- intake and queue ---------------------------------------------------------------------------

    async def insert_messages(self, messages: list[InboundMessage]) -> list[str]:
        """Group commit: concurrent calls share one transaction (one fsync), each gets its own answer;
        transactions start GROUP_COMMIT_INTERVAL_SECONDS apart at most, so a busy stream forms real groups.

        Rows are built here, on the event loop, so the SQLite thread holds the GIL only to bind and step:
        less time for the request handlers to wait for it.
        """
        if not messages:
            return []
        now = _now()
        rows = [
            (
                m.id,
                m.source,
                m.chat_id,
                m.sender_id,
                m.sender_name,
                _ts(m.sent_at),
                now,
                m.wa_type,
                m.text,
                m.raw_json or fast_json.dumps(m.raw),
            )
            for m in messages
        ]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[str]] = loop.create_future()
        with self._lock:
            self._insert_queue.append((rows, future))
            schedule = not self._insert_flush_scheduled
            self._insert_flush_scheduled = True
        if schedule:
            loop.run_in_executor(self._executor, self._flush_inserts, loop)
        return await future

    def _flush_inserts(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the SQLite thread: write every queued insert in one transaction, then answer each caller."""
        while True:
            wait = self._last_intake_commit + self._group_commit_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self._lock:
                batch, self._insert_queue = self._insert_queue, []
                if not batch:
                    self._insert_flush_scheduled = False
                    return
            self._last_intake_commit = time.monotonic()
            futures = [future for _, future in batch]
            try:
                results = self._call(
                    functools.partial(
                        self._insert_batch, groups=[rows for rows, _ in batch], durability=self._synchronous
                    )
                )
            except BaseException as exc:  # every caller of the group gets the error: all or nothing
                loop.call_soon_threadsafe(_fail_all, futures, exc)
                continue
            loop.call_soon_threadsafe(_answer_all, futures, results)  # one wake-up of the loop per group

    @staticmethod
    def _insert_batch(
        conn: sqlite3.Connection, groups: list[list[tuple[Any, ...]]], durability: str = "FULL"
    ) -> list[list[str]]:
        results: list[list[str]] = []
        conn.execute(f"PRAGMA synchronous={durability}")
        conn.execute("BEGIN IMMEDIATE")
        rows = [row for group in groups for row in group]
        # Which ids are stored already (Meta's redeliveries), then multi-row INSERTs (one statement per 500
        # rows costs a fraction of one per message) that skip them. Not INSERT ... RETURNING:
        # each returned row is one more step, and Python's sqlite3 gives the GIL back and waits to retake it
        # around every step, up to a switch interval each while the event loop is busy with requests.
        new_ids = {row[0] for row in rows}
        for start in range(0, len(rows), INSERT_ROWS_PER_STATEMENT):
            ids = [row[0] for row in rows[start : start + INSERT_ROWS_PER_STATEMENT]]
            sql = "SELECT id FROM whatsapp_messages WHERE id IN (" + ",".join("?" * len(ids)) + ")"
            new_ids.difference_update(row[0] for row in conn.execute(sql, ids).fetchall())
        for start in range(0, len(rows), INSERT_ROWS_PER_STATEMENT):
            chunk = rows[start : start + INSERT_ROWS_PER_STATEMENT]
            sql = (
                "INSERT INTO whatsapp_messages (id, source, chat_id, sender_id, sender_name, sent_at, received_at, "
                "wa_type, text, raw, status) VALUES "
                + ",".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')"] * len(chunk))
                + " ON CONFLICT (id) DO NOTHING"
            )
            conn.execute(sql, [value for row in chunk for value in row])
        for group in groups:
            inserted: list[str] = []
            for row in group:
                if row[0] in new_ids:
                    new_ids.discard(row[0])  # the same id twice in one POST is stored once
                    inserted.append(row[0])
            results.append(inserted)
        try:
            conn.execute("COMMIT")
        finally:
            conn.execute("PRAGMA synchronous=NORMAL")
        return results

    async def apply_edit(self, message_id: str, new_text: str, raw: dict[str, Any]) -> bool:
        def _edit(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE whatsapp_messages SET text = ?, raw = ?, status = 'pending', attempts = 0, "
                "last_error = NULL, next_attempt_at = NULL, claimed_until = NULL, processed_at = NULL "
                "WHERE id = ?",
                (new_text, fast_json.dumps(raw), message_id),
            )
            return cursor.rowcount == 1

        return await self._run(_edit)

    async def get_message(self, message_id: str) -> StoredMessage | None:
        def _get(conn: sqlite3.Connection) -> StoredMessage | None:
            row = conn.execute("SELECT * FROM whatsapp_messages WHERE id = ?", (message_id,)).fetchone()
            return message_from_row(dict(row)) if row else None

        return await self._run(_get)

    async def claim_pending(self, limit: int, lease_seconds: int) -> list[StoredMessage]:
        def _claim(conn: sqlite3.Connection) -> list[StoredMessage]:
            now_dt = datetime.now(UTC)
            now = _ts(now_dt)
            until = _ts(now_dt + timedelta(seconds=lease_seconds))
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(
                "SELECT * FROM whatsapp_messages WHERE status = 'pending' "
                "AND (next_attempt_at IS NULL OR next_attempt_at <= ?) "
                "AND (claimed_until IS NULL OR claimed_until <= ?) "
                "ORDER BY received_at, id LIMIT ?",
                (now, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE whatsapp_messages SET claimed_until = ? WHERE id = ?",
                [(until, row["id"]) for row in rows],
            )
            conn.execute("COMMIT")
            return [message_from_row(dict(row)) for row in rows]

        return await self._run(_claim)

    async def complete_messages(self, results: list[tuple[str, list[ListingRecord]]]) -> None:
        """Small transactions, awaited one by one, so webhook inserts queued meanwhile are not held up."""
        for start in range(0, len(results), COMPLETE_CHUNK):
            chunk = results[start : start + COMPLETE_CHUNK]
            await self._run(functools.partial(self._complete_chunk, results=chunk))

    @staticmethod
    def _complete_chunk(conn: sqlite3.Connection, results: list[tuple[str, list[ListingRecord]]]) -> None:
        """Re-derivable work: committed without its own fsync (a lost commit leaves the message pending)."""
        now = _now()
        conn.execute("BEGIN IMMEDIATE")
        for message_id, listings in results:
            conn.execute("DELETE FROM watch_listings WHERE message_id = ?", (message_id,))
            conn.executemany(
                "INSERT INTO watch_listings (message_id, position, message_type, brand, model, reference, "
                "reference_norm, price, currency, price_eur, condition, year, size_mm, movement, box, papers, "
                "confidence, text, embedding, embedding_model, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        item.message_id,
                        item.position,
                        item.message_type,
                        item.brand,
                        item.model,
                        item.reference,
                        normalize_reference(item.reference) if item.reference else None,
                        item.price,
                        item.currency,
                        item.price_eur,
                        item.condition,
                        item.year,
                        item.size_mm,
                        item.movement,
                        None if item.box is None else int(item.box),
                        None if item.papers is None else int(item.papers),
                        item.confidence,
                        item.text,
                        _vector_blob(item.embedding),
                        item.embedding_model,
                        now,
                    )
                    for item in listings
                ],
            )
            conn.execute(
                "UPDATE whatsapp_messages SET status = 'processed', processed_at = ?, last_error = NULL, "
                "claimed_until = NULL, next_attempt_at = NULL WHERE id = ?",
                (now, message_id),
            )
        conn.execute("COMMIT")

    async def fail_message(self, message_id: str, error: str, retry_in_seconds: float | None) -> None:
        def _fail(conn: sqlite3.Connection) -> None:
            if retry_in_seconds is None:
                conn.execute(
                    "UPDATE whatsapp_messages SET status = 'failed', attempts = attempts + 1, last_error = ?, "
                    "claimed_until = NULL WHERE id = ?",
                    (error[:2000], message_id),
                )
            else:
                due = _ts(datetime.now(UTC) + timedelta(seconds=retry_in_seconds))
                conn.execute(
                    "UPDATE whatsapp_messages SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, "
                    "claimed_until = NULL WHERE id = ?",
                    (error[:2000], due, message_id),
                )

        await self._run(_fail)

    async def requeue_failed(self) -> int:
        def _requeue(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE whatsapp_messages SET status = 'pending', attempts = 0, next_attempt_at = NULL, "
                "claimed_until = NULL WHERE status = 'failed'"
            )
            return cursor.rowcount

        return await self._run(_requeue)

    # -- search -------------------------------------------------------------------------------------

    def _refresh_index(self, conn: sqlite3.Connection, model: str) -> _VectorIndex | None:
        """Bring the model's vectors up to date: append new rows, or reload when rows changed otherwise."""
        # Nothing was written by anyone since the last refresh: skip the count (a scan at 100k rows).
        version = (conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes)
        index = self._indexes.get(model)
        if index is not None and index.version == version:
            return index
        count = conn.execute(
            "SELECT count(*), max(id) FROM watch_listings WHERE embedding_model = ? AND embedding IS NOT NULL",
            (model,),
        ).fetchone()
        total, max_id = count[0], count[1] or 0
        if total == 0:
            self._indexes.pop(model, None)
            return None
        if index is not None and index.size == total and index.max_id == max_id:
            index.version = version
            return index
        rows_after = 0 if index is None else index.max_id
        rows = conn.execute(
            "SELECT id, embedding FROM watch_listings WHERE embedding_model = ? AND embedding IS NOT NULL "
            "AND id > ? ORDER BY id",
            (model, rows_after),
        ).fetchall()
        if index is not None and index.size + len(rows) != total:
            # Rows were deleted or re-embedded: rebuild from scratch.
            index = None
            rows = conn.execute(
                "SELECT id, embedding FROM watch_listings WHERE embedding_model = ? AND embedding IS NOT NULL "
                "ORDER BY id",
                (model,),
            ).fetchall()
        if rows:
            dims = len(rows[0][1]) // 4
            if index is None or index.dims != dims:
                index = _VectorIndex(dims)
            new_ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
            new_rows = np.frombuffer(b"".join(row[1] for row in rows), dtype="<f4").reshape(len(rows), dims)
            index.append(new_ids, new_rows)
        if index is None:
            return None
        index.version = version
        self._indexes[model] = index
        return index

    def _fetch_hits(self, conn: sqlite3.Connection, scored: list[tuple[int, float]]) -> list[ListingHit]:
        if not scored:
            return []
        placeholders = ",".join("?" * len(scored))
        rows = conn.execute(
            f"SELECT {LISTING_COLUMNS} FROM watch_listings l JOIN whatsapp_messages m ON m.id = l.message_id "
            f"WHERE l.id IN ({placeholders})",
            [listing_id for listing_id, _ in scored],
        ).fetchall()
        by_id = {row[0]: row for row in rows}
        return [_hit_from_row(by_id[i], score) for i, score in scored if i in by_id]

    async def search_vector(
        self, embedding: list[float], model: str, filters: SearchFilters, limit: int
    ) -> list[ListingHit]:
        query = np.asarray(embedding, dtype=np.float32)
        norm = float(np.linalg.norm(query))
        if norm == 0.0 or limit <= 0:
            return []
        query /= norm

        def _search(conn: sqlite3.Connection) -> list[ListingHit]:
            index = self._refresh_index(conn, model)
            if index is None or index.dims != query.shape[0]:
                return []
            positions: np.ndarray | None = None
            if _has_filters(filters):
                where, params = _filter_sql(filters)
                # The messages table is joined only when a filter needs it (since, sender). No condition on
                # embedding_model: that column sits after the vector blob, so reading it walks the blob's
                # overflow pages for every row; rows of other models simply are not in the index.
                join = (
                    "JOIN whatsapp_messages m ON m.id = l.message_id "
                    if filters.since is not None or filters.sender_id
                    else ""
                )
                if filters.reference:
                    # LIKE cannot use the reference index; a range on the same prefix can. The type index
                    # ("sale" is half the rows) is disabled with unary + so the planner takes a selective one.
                    prefix = normalize_reference(filters.reference)
                    where = "l.reference_norm >= ? AND l.reference_norm < ? AND " + where
                    params = [prefix, prefix + "\uffff", *params]
                where = where.replace("l.message_type = ?", "+l.message_type = ?")
                candidate_ids = np.array(
                    conn.execute(f"SELECT l.id FROM watch_listings l {join}WHERE {where}", params).fetchall(),
                    dtype=np.int64,
                ).reshape(-1)
                found = np.searchsorted(index.ids, candidate_ids)
                inside = found < index.size
                found, candidate_ids = found[inside], candidate_ids[inside]
                positions = np.sort(found[index.ids[found] == candidate_ids])
                if len(positions) == 0:
                    return []
            scores = index.scores(query, positions)
            ids = index.ids if positions is None else index.ids[positions]
            k = min(limit, len(scores))
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            return self._fetch_hits(conn, [(int(ids[i]), float(scores[i])) for i in top])

        return await self._run(_search)

    async def search_keyword(self, query: str, filters: SearchFilters, limit: int) -> list[ListingHit]:
        terms = _fts_terms(query)
        if not terms or limit <= 0:
            return []
        match = " OR ".join(terms)

        def _search(conn: sqlite3.Connection) -> list[ListingHit]:
            where, params = _filter_sql(filters)
            rows = conn.execute(
                f"SELECT {LISTING_COLUMNS}, bm25(watch_listings_fts) AS rank FROM watch_listings_fts "
                "JOIN watch_listings l ON l.id = watch_listings_fts.rowid "
                "JOIN whatsapp_messages m ON m.id = l.message_id "
                f"WHERE watch_listings_fts MATCH ? AND {where} ORDER BY rank LIMIT ?",
                [match, *params, limit],
            ).fetchall()
            # bm25 is lower-is-better and negative; expose a positive score.
            return [_hit_from_row(tuple(row), -float(row[-1])) for row in rows]

        return await self._run(_search)

    async def search_hybrid(
        self, query: str, embedding: list[float], model: str, filters: SearchFilters, limit: int
    ) -> list[ListingHit]:
        depth = max(limit * 4, 40)
        vector_hits = await self.search_vector(embedding, model, filters, depth)
        keyword_hits = await self.search_keyword(query, filters, depth)
        return rrf_fuse(vector_hits, keyword_hits, limit)

    async def list_listings(self, filters: SearchFilters, limit: int) -> list[ListingHit]:
        def _list(conn: sqlite3.Connection) -> list[ListingHit]:
            where, params = _filter_sql(filters)
            rows = conn.execute(
                f"SELECT {LISTING_COLUMNS} FROM watch_listings l JOIN whatsapp_messages m ON m.id = l.message_id "
                f"WHERE {where} ORDER BY COALESCE(m.sent_at, m.received_at) DESC, l.id DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
            return [_hit_from_row(tuple(row)) for row in rows]

        return await self._run(_list)

    async def listings_needing_embedding(self, model: str, limit: int) -> list[tuple[int, str]]:
        def _pending(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            rows = conn.execute(
                "SELECT id, message_type, brand, model, reference, price, currency, condition, year, text "
                "FROM watch_listings WHERE embedding_model IS NOT ? OR embedding IS NULL ORDER BY id LIMIT ?",
                (model, limit),
            ).fetchall()
            return [(row["id"], _embedding_text_from_row(row)) for row in rows]

        return await self._run(_pending)

    async def update_embeddings(self, model: str, vectors: list[tuple[int, list[float]]]) -> None:
        def _update(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "UPDATE watch_listings SET embedding = ?, embedding_model = ? WHERE id = ?",
                [(_vector_blob(vector), model, listing_id) for listing_id, vector in vectors],
            )
            conn.execute("COMMIT")

        if vectors:
            await self._run(_update)

    # -- aggregates and housekeeping ----------------------------------------------------------------

    async def stats(self) -> StoreStats:
        def _stats(conn: sqlite3.Connection) -> StoreStats:
            stats = StoreStats()
            for status, count in conn.execute(
                "SELECT status, count(*) FROM whatsapp_messages GROUP BY status"
            ):
                setattr(stats, status, count)
                stats.messages_total += count
            row = conn.execute(
                "SELECT count(*), count(DISTINCT message_id), COALESCE(sum(price_eur), 0) FROM watch_listings"
            ).fetchone()
            stats.listings_total, stats.watch_messages, stats.total_value_eur = row[0], row[1], float(row[2])
            by_type = dict(
                conn.execute(
                    "SELECT message_type, count(DISTINCT message_id) FROM watch_listings GROUP BY message_type"
                ).fetchall()
            )
            stats.sales = by_type.get("sale", 0)
            stats.wanted = by_type.get("wanted", 0)
            stats.questions = by_type.get("question", 0)
            stats.trades = by_type.get("trade", 0)
            stats.top_brands = dict(
                conn.execute(
                    "SELECT brand, count(*) AS n FROM watch_listings WHERE brand IS NOT NULL "
                    "GROUP BY brand ORDER BY n DESC, brand LIMIT 10"
                ).fetchall()
            )
            last = conn.execute(
                "SELECT last_error FROM whatsapp_messages WHERE last_error IS NOT NULL "
                "ORDER BY COALESCE(next_attempt_at, received_at) DESC LIMIT 1"
            ).fetchone()
            stats.last_error = last[0] if last else None
            return stats

        return await self._run(_stats)

    async def forget_sender(self, sender_id: str) -> int:
        def _forget(conn: sqlite3.Connection) -> int:
            # Both halves use an index: the partial sender index, and the queue index for the rest.
            ids = (
                "SELECT id FROM whatsapp_messages WHERE sender_id = ? AND status = 'processed' UNION ALL "
                "SELECT id FROM whatsapp_messages WHERE status IN ('pending', 'failed') AND sender_id = ?"
            )
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"DELETE FROM watch_listings WHERE message_id IN ({ids})", (sender_id, sender_id))
            cursor = conn.execute(f"DELETE FROM whatsapp_messages WHERE id IN ({ids})", (sender_id, sender_id))
            conn.execute("COMMIT")
            return cursor.rowcount

        return await self._run(_forget)

    async def record_notification(self, key: str) -> bool:
        def _record(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO notifications (key, created_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (key, _now()),
            )
            return cursor.rowcount == 1

        return await self._run(_record)


def _answer_all(futures: list[asyncio.Future[list[str]]], results: list[list[str]]) -> None:
    for future, value in zip(futures, results, strict=True):
        if not future.done():  # a caller that timed out has cancelled its future
            future.set_result(value)


def _fail_all(futures: list[asyncio.Future[list[str]]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


def _fts_terms(query: str) -> list[str]:
    """Quote each word so FTS5 syntax characters in user text are literal."""
    words = [w for w in "".join(ch if ch.isalnum() else " " for ch in query).split() if len(w) > 1]
    return [f'"{w}"' for w in words[:32]]


def _embedding_text_from_row(row: sqlite3.Row) -> str:
    from src.embedding_processor import embedding_text_from_row

    return embedding_text_from_row(row)
