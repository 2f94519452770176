"""The Store contract, run against every backend: SQLite, Postgres (real server with pgvector) and Supabase
(supabase-py whose PostgREST calls are answered by the same real Postgres, see tests/supabase_replay.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from src.store.base import (
    EmbeddingDimensionMismatch,
    InboundMessage,
    ListingRecord,
    SearchFilters,
    Store,
    rrf_fuse,
)
from src.store.postgres import PostgresStore
from src.store.sqlite import SQLiteStore
from src.store.supabase import SupabaseStore
from tests.postgres_server import pg_server, pg_template, pg_url  # noqa: F401 - fixtures
from tests.supabase_replay import PostgrestReplay

DIMS = 1536
MODEL = "test-model-1536"
BACKENDS = ["sqlite", "postgres", "supabase"]
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def vec(seed: int) -> list[float]:
    """A deterministic unit vector; different seeds are nearly orthogonal in 1536 dimensions."""
    v = np.random.default_rng(seed).standard_normal(DIMS).astype(np.float32)
    return (v / np.linalg.norm(v)).tolist()


def near(base: list[float], seed: int, noise: float = 0.3) -> list[float]:
    v = np.asarray(base, dtype=np.float32) + noise * np.asarray(vec(seed), dtype=np.float32)
    return (v / np.linalg.norm(v)).tolist()


def msg(
    message_id: str,
    text: str = "",
    sender: str = "15550000001",
    sent_at: datetime | None = None,
    **raw: Any,
) -> InboundMessage:
    return InboundMessage(
        id=message_id,
        source="webhook",
        chat_id="chat-1",
        sender_id=sender,
        sender_name="Test Dealer",
        sent_at=sent_at,
        wa_type="text",
        text=text or f"text of {message_id}",
        raw={"id": message_id, **raw},
    )


def listing(
    message_id: str, position: int = 0, embedding: list[float] | None = None, **fields: Any
) -> ListingRecord:
    values: dict[str, Any] = {
        "message_id": message_id,
        "position": position,
        "message_type": "sale",
        "brand": "Rolex",
        "model": "Submariner",
        "reference": "126610LN",
        "price": 10500.0,
        "currency": "EUR",
        "price_eur": 10500.0,
        "condition": "excellent",
        "year": 2021,
        "size_mm": 41.0,
        "movement": "automatic",
        "box": True,
        "papers": True,
        "confidence": 0.9,
        "text": "Rolex Submariner 126610LN full set 10500 EUR",
        "embedding": embedding,
        "embedding_model": MODEL if embedding is not None else None,
    }
    values.update(fields)
    return ListingRecord(**values)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend: Store
    replay: PostgrestReplay | None = None
    if request.param == "sqlite":
        backend = SQLiteStore(tmp_path / "contract.sqlite3", synchronous="OFF")
    elif request.param == "postgres":
        backend = PostgresStore(request.getfixturevalue("pg_url"), dimensions=DIMS, max_connections=4)
    else:
        replay = PostgrestReplay(request.getfixturevalue("pg_url"))
        await replay.start()
        backend = SupabaseStore(replay.url, replay.service_key, dimensions=DIMS)
    try:
        await backend.open()
        yield backend
        await backend.close()
    finally:
        if replay is not None:
            await replay.stop()


async def seed(store: Store, specs: list[tuple[InboundMessage, list[ListingRecord]]]) -> None:
    """Insert messages and complete them with their listings, the way the worker does."""
    await store.insert_messages([m for m, _ in specs])
    await store.complete_messages([(m.id, rows) for m, rows in specs])


# -- intake --------------------------------------------------------------------------------------


async def test_insert_once(store: Store) -> None:
    assert await store.insert_messages([msg("wamid.a"), msg("wamid.b")]) == ["wamid.a", "wamid.b"]
    assert await store.insert_messages([msg("wamid.b"), msg("wamid.c"), msg("wamid.c")]) == ["wamid.c"]
    assert await store.insert_messages([]) == []
    stats = await store.stats()
    assert (stats.messages_total, stats.pending) == (3, 3)


async def test_message_round_trip(store: Store) -> None:
    sent = T0 + timedelta(seconds=1.5)
    await store.insert_messages(
        [msg("wamid.rt", "Vends Daytona 116500LN", sent_at=sent, extra={"k": [1, "é"]})]
    )
    stored = await store.get_message("wamid.rt")
    assert stored is not None
    assert stored.text == "Vends Daytona 116500LN"
    assert stored.sent_at == sent
    assert stored.received_at is not None and stored.received_at.tzinfo is not None
    assert (stored.status, stored.attempts, stored.last_error, stored.processed_at) == (
        "pending",
        0,
        None,
        None,
    )
    assert stored.raw == {"id": "wamid.rt", "extra": {"k": [1, "é"]}}
    assert (stored.source, stored.chat_id, stored.sender_id, stored.wa_type) == (
        "webhook",
        "chat-1",
        "15550000001",
        "text",
    )
    assert await store.get_message("wamid.unknown") is None


async def test_apply_edit_requeues(store: Store) -> None:
    await seed(store, [(msg("wamid.e", "old text"), [listing("wamid.e")])])
    assert (await store.get_message("wamid.e")).status == "processed"  # type: ignore[union-attr]
    assert await store.apply_edit("wamid.e", "new text", {"edited": True})
    edited = await store.get_message("wamid.e")
    assert edited is not None
    assert (edited.text, edited.status, edited.raw) == ("new text", "pending", {"edited": True})
    assert [m.id for m in await store.claim_pending(10, 60)] == ["wamid.e"]
    assert not await store.apply_edit("wamid.nope", "x", {})


# -- queue ---------------------------------------------------------------------------------------


async def test_claim_in_order_and_lease(store: Store) -> None:
    for name in ("q1", "q2", "q3"):
        await store.insert_messages([msg(name)])
    assert [m.id for m in await store.claim_pending(2, 60)] == ["q1", "q2"]
    assert [m.id for m in await store.claim_pending(10, 60)] == ["q3"]
    assert await store.claim_pending(10, 60) == []


async def test_lease_expiry_reclaims(store: Store) -> None:
    await store.insert_messages([msg("crash-1"), msg("crash-2")])
    claimed = await store.claim_pending(10, 1)  # this worker "crashes" with the lease in hand
    assert [m.id for m in claimed] == ["crash-1", "crash-2"]
    assert await store.claim_pending(10, 1) == []
    await asyncio.sleep(1.2)
    again = await store.claim_pending(10, 60)
    assert [m.id for m in again] == ["crash-1", "crash-2"]
    assert all(m.attempts == 0 and m.status == "pending" for m in again)


async def test_concurrent_claims_are_disjoint(store: Store) -> None:
    await store.insert_messages([msg(f"c{i:03d}") for i in range(60)])
    batches = await asyncio.gather(*(store.claim_pending(8, 60) for _ in range(10)))
    ids = [m.id for batch in batches for m in batch]
    assert len(ids) == len(set(ids)) == 60


async def test_fail_retry_and_requeue(store: Store) -> None:
    await store.insert_messages([msg("f1"), msg("f2")])
    assert len(await store.claim_pending(10, 60)) == 2
    await store.fail_message("f1", "embedding: timeout", 3600)
    await store.fail_message("f2", "extraction: bug", None)
    f1, f2 = await store.get_message("f1"), await store.get_message("f2")
    assert f1 is not None and f2 is not None
    assert (f1.status, f1.attempts, f1.last_error) == ("pending", 1, "embedding: timeout")
    assert (f2.status, f2.attempts, f2.last_error) == ("failed", 1, "extraction: bug")
    assert await store.claim_pending(10, 60) == []  # f1 is not due yet, f2 is failed
    stats = await store.stats()
    assert (stats.pending, stats.failed) == (1, 1)
    assert stats.last_error in {"embedding: timeout", "extraction: bug"}
    assert await store.requeue_failed() == 1
    requeued = await store.claim_pending(10, 60)
    assert [m.id for m in requeued] == ["f2"]
    assert requeued[0].attempts == 0
    assert await store.requeue_failed() == 0


async def test_retry_when_due(store: Store) -> None:
    await store.insert_messages([msg("r1")])
    await store.claim_pending(10, 60)
    await store.fail_message("r1", "transient", 0)
    claimed = await store.claim_pending(10, 60)
    assert [m.id for m in claimed] == ["r1"]
    assert claimed[0].attempts == 1


async def test_complete_replaces_listings_atomically(store: Store) -> None:
    await store.insert_messages([msg("p1"), msg("p2")])
    await store.claim_pending(10, 60)
    await store.complete_messages(
        [("p1", [listing("p1", 0, vec(1)), listing("p1", 1, vec(2), brand="Tudor")]), ("p2", [])]
    )
    p1, p2 = await store.get_message("p1"), await store.get_message("p2")
    assert p1 is not None and p2 is not None
    assert (p1.status, p2.status) == ("processed", "processed")
    assert p1.processed_at is not None
    assert len(await store.list_listings(SearchFilters(), 10)) == 2
    await store.complete_messages([("p1", [listing("p1", 0, vec(3), brand="Omega")])])
    rows = await store.list_listings(SearchFilters(), 10)
    assert [(r.message_id, r.brand) for r in rows] == [("p1", "Omega")]
    assert await store.claim_pending(10, 60) == []


async def test_complete_of_unknown_message_writes_nothing(store: Store) -> None:
    await store.insert_messages([msg("ok1")])
    with pytest.raises(Exception):  # noqa: B017 - each backend raises its own integrity error
        await store.complete_messages([("ok1", [listing("ok1")]), ("ghost", [listing("ghost")])])
    assert (await store.get_message("ok1")).status == "pending"  # type: ignore[union-attr]
    assert await store.list_listings(SearchFilters(), 10) == []


# -- listings and filters ------------------------------------------------------------------------


async def _seed_market(store: Store) -> None:
    await seed(
        store,
        [
            (
                msg("m1", "Sub 126610LN full set 10.5k", sender="15550000001", sent_at=T0),
                [listing("m1", 0, vec(10))],
            ),
            (
                msg("m2", "WTB Patek 5711/1A", sender="15550000002", sent_at=T0 + timedelta(days=1)),
                [
                    listing(
                        "m2",
                        0,
                        vec(20),
                        message_type="wanted",
                        brand="Patek Philippe",
                        model="Nautilus",
                        reference="5711/1A-010",
                        price=None,
                        currency=None,
                        price_eur=None,
                        condition=None,
                        year=None,
                        box=None,
                        papers=None,
                        text="WTB Patek Nautilus 5711/1A",
                    )
                ],
            ),
            (
                msg("m3", "stock list", sender="15550000003", sent_at=T0 + timedelta(days=2)),
                [
                    listing(
                        "m3",
                        0,
                        vec(30),
                        brand="Omega",
                        model="Speedmaster",
                        reference="310.30.42.50.01.001",
                        price=6200.0,
                        price_eur=6200.0,
                        condition="good",
                        year=2019,
                        box=False,
                        papers=True,
                        text="Omega Speedmaster moonwatch 6200",
                    ),
                    listing(
                        "m3",
                        1,
                        vec(31),
                        reference="126610 LV",
                        price=14000.0,
                        price_eur=14000.0,
                        condition="new",
                        year=2024,
                        papers=False,
                        text="Rolex Submariner Kermit 126610LV new 14000",
                    ),
                ],
            ),
            (
                msg("m4", "trade my GMT", sender="15550000001", sent_at=T0 + timedelta(days=3)),
                [
                    listing(
                        "m4",
                        0,
                        vec(40),
                        message_type="trade",
                        model="GMT-Master II",
                        reference="126710BLRO",
                        price=None,
                        price_eur=None,
                        text="trade Rolex GMT Pepsi 126710BLRO",
                    )
                ],
            ),
        ],
    )


def _ids(hits: list[Any]) -> list[tuple[str, int]]:
    return [(h.message_id, h.position) for h in hits]


async def test_list_listings_filters(store: Store) -> None:
    await _seed_market(store)
    newest_first = [("m4", 0), ("m3", 1), ("m3", 0), ("m2", 0), ("m1", 0)]
    assert _ids(await store.list_listings(SearchFilters(), 10)) == newest_first
    assert _ids(await store.list_listings(SearchFilters(), 2)) == newest_first[:2]
    cases: list[tuple[SearchFilters, list[tuple[str, int]]]] = [
        (SearchFilters(brand="rolex"), [("m4", 0), ("m3", 1), ("m1", 0)]),
        (SearchFilters(model="SUBMARINER"), [("m3", 1), ("m1", 0)]),
        (SearchFilters(message_type="wanted"), [("m2", 0)]),
        (SearchFilters(reference="126610"), [("m3", 1), ("m1", 0)]),
        (SearchFilters(reference="126610-ln"), [("m1", 0)]),
        (SearchFilters(reference="5711/1a"), [("m2", 0)]),
        (SearchFilters(reference="12_6%"), []),
        (SearchFilters(min_price_eur=6000, max_price_eur=11000), [("m3", 0), ("m1", 0)]),
        (SearchFilters(max_price_eur=6500), [("m3", 0)]),
        (SearchFilters(condition="new"), [("m3", 1)]),
        (SearchFilters(since=T0 + timedelta(days=2)), [("m4", 0), ("m3", 1), ("m3", 0)]),
        (SearchFilters(since=(T0 + timedelta(days=3)).replace(tzinfo=None)), [("m4", 0)]),
        (SearchFilters(min_year=2020, max_year=2022), [("m4", 0), ("m1", 0)]),
        (SearchFilters(box=False), [("m3", 0)]),
        (SearchFilters(papers=False), [("m3", 1)]),
        (SearchFilters(sender_id="15550000001"), [("m4", 0), ("m1", 0)]),
        (SearchFilters(brand="Rolex", message_type="sale", max_price_eur=12000), [("m1", 0)]),
    ]
    for filters, expected in cases:
        assert _ids(await store.list_listings(filters, 10)) == expected, filters


async def test_hit_fields(store: Store) -> None:
    await _seed_market(store)
    (hit,) = await store.list_listings(SearchFilters(reference="126610LN"), 10)
    assert (hit.brand, hit.model, hit.reference, hit.price, hit.currency, hit.price_eur) == (
        "Rolex",
        "Submariner",
        "126610LN",
        10500.0,
        "EUR",
        10500.0,
    )
    assert (hit.condition, hit.year, hit.box, hit.papers, hit.confidence) == (
        "excellent",
        2021,
        True,
        True,
        0.9,
    )
    assert hit.message_text == "Sub 126610LN full set 10.5k"
    assert (hit.sender_id, hit.sender_name, hit.chat_id, hit.sent_at) == (
        "15550000001",
        "Test Dealer",
        "chat-1",
        T0,
    )
    assert hit.created_at is not None and isinstance(hit.listing_id, int)


# -- search --------------------------------------------------------------------------------------


async def test_vector_search_nearest_first(store: Store) -> None:
    await _seed_market(store)
    hits = await store.search_vector(near(vec(30), 99), MODEL, SearchFilters(), 3)
    assert _ids(hits)[0] == ("m3", 0)
    assert len(hits) == 3
    assert hits[0].score > hits[1].score >= hits[2].score
    assert 0.8 < hits[0].score <= 1.0
    exact = await store.search_vector(vec(40), MODEL, SearchFilters(), 1)
    assert _ids(exact) == [("m4", 0)] and exact[0].score == pytest.approx(1.0, abs=1e-5)


async def test_vector_search_filters_and_models(store: Store) -> None:
    await _seed_market(store)
    query = near(vec(30), 98)  # nearest is the Omega
    rolex = await store.search_vector(query, MODEL, SearchFilters(brand="Rolex"), 10)
    assert sorted(_ids(rolex)) == [("m1", 0), ("m3", 1), ("m4", 0)]
    assert _ids(await store.search_vector(query, MODEL, SearchFilters(reference="126610"), 10)) in (
        [("m1", 0), ("m3", 1)],
        [("m3", 1), ("m1", 0)],
    )
    assert await store.search_vector(query, "another-model", SearchFilters(), 10) == []
    assert await store.search_vector([0.0] * DIMS, MODEL, SearchFilters(), 10) == []
    assert await store.search_vector(query, MODEL, SearchFilters(), 0) == []


async def test_filtered_vector_search_returns_full_count(store: Store) -> None:
    """A filter that keeps few rows must still give `limit` results when that many match."""
    specs = []
    for i in range(120):
        brand = "Tudor" if i % 20 == 0 else "Rolex"
        specs.append((msg(f"n{i:03d}", sent_at=T0), [listing(f"n{i:03d}", 0, vec(1000 + i), brand=brand)]))
    await seed(store, specs)
    query = vec(1001)  # a Rolex: every Tudor is far from it
    hits = await store.search_vector(query, MODEL, SearchFilters(brand="Tudor"), 6)
    assert len(hits) == 6
    assert {h.brand for h in hits} == {"Tudor"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(await store.search_vector(query, MODEL, SearchFilters(brand="Tudor"), 50)) == 6


async def test_keyword_search(store: Store) -> None:
    await _seed_market(store)
    assert _ids(await store.search_keyword("5711", SearchFilters(), 10)) == [("m2", 0)]
    assert _ids(await store.search_keyword("speedmaster", SearchFilters(), 10)) == [("m3", 0)]
    kermit_or_pepsi = await store.search_keyword("Kermit pepsi", SearchFilters(), 10)
    assert sorted(_ids(kermit_or_pepsi)) == [("m3", 1), ("m4", 0)]
    rolex = await store.search_keyword("rolex", SearchFilters(message_type="trade"), 10)
    assert _ids(rolex) == [("m4", 0)]
    assert all(h.score > 0 for h in kermit_or_pepsi)
    assert await store.search_keyword("   ", SearchFilters(), 10) == []
    assert await store.search_keyword("'\" OR 1=1; --", SearchFilters(), 10) == []


async def test_hybrid_search_is_rrf_of_both_rankings(store: Store) -> None:
    await _seed_market(store)
    query, embedding = "pepsi", near(vec(30), 97)  # keyword says GMT, vector says Omega
    hits = await store.search_hybrid(query, embedding, MODEL, SearchFilters(), 3)
    assert {("m4", 0), ("m3", 0)} <= set(_ids(hits))
    depth = 40
    expected = rrf_fuse(
        await store.search_vector(embedding, MODEL, SearchFilters(), depth),
        await store.search_keyword(query, SearchFilters(), depth),
        3,
    )
    assert _ids(hits) == _ids(expected)
    assert [h.score for h in hits] == pytest.approx([h.score for h in expected])
    both = next(h for h in hits if h.message_id == "m4")
    assert both.keyword_score is not None and both.vector_score is not None
    filtered = await store.search_hybrid(query, embedding, MODEL, SearchFilters(brand="Omega"), 3)
    assert _ids(filtered) == [("m3", 0)]
    no_vector = await store.search_hybrid("speedmaster", [0.0] * DIMS, MODEL, SearchFilters(), 3)
    assert _ids(no_vector) == [("m3", 0)]


# -- embeddings ----------------------------------------------------------------------------------


async def test_embedding_dimension_check(store: Store) -> None:
    await store.check_embedding_dimension(MODEL, DIMS)
    await store.check_embedding_dimension(MODEL, DIMS)
    with pytest.raises(EmbeddingDimensionMismatch, match="EMBEDDING_DIMENSIONS=1536"):
        await store.check_embedding_dimension(MODEL, 768)


async def test_reembed(store: Store) -> None:
    await _seed_market(store)
    await seed(store, [(msg("m5", sent_at=T0), [listing("m5", 0, None)])])
    pending = await store.listings_needing_embedding("model-b", 100)
    assert len(pending) == 6
    assert all(isinstance(i, int) and text for i, text in pending)
    assert "Speedmaster" in dict(pending)[next(i for i, t in pending if "Omega" in t)]
    first, rest = pending[:2], pending[2:]
    await store.update_embeddings("model-b", [(i, vec(5000 + i)) for i, _ in first])
    assert [i for i, _ in await store.listings_needing_embedding("model-b", 100)] == [i for i, _ in rest]
    assert len(await store.listings_needing_embedding(MODEL, 100)) == 3  # two moved, one never had one
    hits = await store.search_vector(vec(5000 + first[0][0]), "model-b", SearchFilters(), 10)
    assert [h.listing_id for h in hits][0] == first[0][0] and len(hits) == 2


# -- aggregates and housekeeping -----------------------------------------------------------------


async def test_stats(store: Store) -> None:
    await _seed_market(store)
    await store.insert_messages([msg("s-pending"), msg("s-failed")])
    await store.fail_message("s-failed", "boom", None)
    stats = await store.stats()
    assert (stats.messages_total, stats.pending, stats.processed, stats.failed) == (6, 1, 4, 1)
    assert (stats.listings_total, stats.watch_messages) == (5, 4)
    assert (stats.sales, stats.wanted, stats.questions, stats.trades) == (2, 1, 0, 1)
    assert stats.total_value_eur == pytest.approx(10500 + 6200 + 14000)
    assert stats.top_brands == {"Rolex": 3, "Omega": 1, "Patek Philippe": 1}
    assert list(stats.top_brands) == ["Rolex", "Omega", "Patek Philippe"]
    assert stats.last_error == "boom"


async def test_stats_empty(store: Store) -> None:
    stats = await store.stats()
    assert (stats.messages_total, stats.listings_total, stats.total_value_eur) == (0, 0, 0.0)
    assert stats.top_brands == {} and stats.last_error is None


async def test_forget_sender(store: Store) -> None:
    await _seed_market(store)
    assert await store.forget_sender("15550000001") == 2
    assert await store.get_message("m1") is None
    assert {h.message_id for h in await store.list_listings(SearchFilters(), 10)} == {"m2", "m3"}
    assert await store.forget_sender("15550000001") == 0


async def test_record_notification_once(store: Store) -> None:
    assert await store.record_notification("reply:wamid.x")
    assert not await store.record_notification("reply:wamid.x")
    assert await store.record_notification("alert:wamid.x:15550000009")


async def test_ping(store: Store) -> None:
    assert await store.ping()
    assert isinstance(store.backend_name, str)


# -- Postgres only -------------------------------------------------------------------------------


async def test_postgres_column_dimension_is_enforced(pg_url: str) -> None:  # noqa: F811
    store = PostgresStore(pg_url, dimensions=768)
    await store.open()
    try:
        with pytest.raises(EmbeddingDimensionMismatch, match=r"vector\(1536\).*EMBEDDING_DIMENSIONS=1536"):
            await store.check_embedding_dimension("local-hash-v1-768", 768)
    finally:
        await store.close()


async def test_postgres_unreachable_is_unavailable() -> None:
    from src.store.base import StoreUnavailable

    store = PostgresStore("postgresql://nobody@127.0.0.1:9/none?connect_timeout=1", timeout=2)
    with pytest.raises(StoreUnavailable):
        await store.open()


async def test_row_level_security_hides_everything_from_anon(pg_url: str) -> None:  # noqa: F811
    store = PostgresStore(pg_url)
    await store.open()
    try:
        await _seed_market(store)
    finally:
        await store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        secured = conn.execute(
            "SELECT relname FROM pg_class WHERE relrowsecurity AND relnamespace = 'public'::regnamespace "
            "ORDER BY relname"
        ).fetchall()
        assert [r[0] for r in secured] == [
            "embedding_models",
            "notifications",
            "schema_migrations",
            "watch_listings",
            "whatsapp_messages",
        ]
        conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN "
            "CREATE ROLE anon NOLOGIN; END IF; END $$"
        )
        # What Supabase grants the anon role by default: table access, left to RLS to refuse.
        conn.execute("GRANT USAGE ON SCHEMA public TO anon")
        conn.execute("GRANT SELECT, INSERT ON public.whatsapp_messages, public.watch_listings TO anon")
        with conn.transaction():
            conn.execute("SET LOCAL ROLE anon")
            assert conn.execute("SELECT count(*) FROM public.whatsapp_messages").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM public.watch_listings").fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(
                    "INSERT INTO public.whatsapp_messages (id, source, wa_type) VALUES ('x', 'webhook', 'text')"
                )
        with conn.transaction(), pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET LOCAL ROLE anon")
            conn.execute("SELECT * FROM public.claim_pending_messages(10, 60)")


# -- Supabase only -------------------------------------------------------------------------------


async def test_supabase_vector_queries_go_through_rpc(pg_url: str) -> None:  # noqa: F811
    replay = PostgrestReplay(pg_url)
    await replay.start()
    store = SupabaseStore(replay.url, replay.service_key)
    try:
        await store.open()
        await store.check_embedding_dimension(MODEL, DIMS)
        await _seed_market(store)
        replay.requests.clear()
        await store.search_vector(vec(10), MODEL, SearchFilters(brand="Rolex"), 5)
        await store.search_hybrid("sub", vec(10), MODEL, SearchFilters(), 5)
        assert replay.requests == [
            ("POST", "rpc/match_watch_listings"),
            ("POST", "rpc/hybrid_search_watch_listings"),
        ]
    finally:
        await store.close()
        await replay.stop()


async def test_supabase_down_is_unavailable() -> None:
    import httpx
    import respx

    from src.store.base import StoreError, StoreUnavailable

    store = SupabaseStore("https://down-project.supabase.test", "key")
    with respx.mock(assert_all_called=False) as router:
        route = router.route(host="down-project.supabase.test")
        route.side_effect = httpx.ConnectError("connection refused")
        with pytest.raises(StoreUnavailable):
            await store.open()
        route.side_effect = None
        route.return_value = httpx.Response(504, json={"code": "PGRST003", "message": "pool timeout"})
        with pytest.raises(StoreUnavailable):
            await store.open()
        route.return_value = httpx.Response(401, json={"code": "PGRST301", "message": "JWT invalid"})
        with pytest.raises(StoreError, match="SUPABASE_SERVICE_ROLE_KEY"):
            await store.open()
        route.return_value = httpx.Response(404, json={"code": "PGRST205", "message": "no table"})
        with pytest.raises(StoreError, match="migrations"):
            await store.open()
    await store.close()


async def test_filtered_vector_search_over_many_matching_rows(store: Store) -> None:
    """Filters keeping many or few of 2,400 rows return `limit` matching rows, best first, near the
    exact top. On Postgres these take every path of watch_vector_candidates: 2,200 rows walk the HNSW
    graph with the filter applied as it goes (with and without the messages join), 800 rows are scored
    by their sign bits and the best 400 re-ranked, 200 rows are re-ranked all (exact)."""
    rng = np.random.default_rng(11)
    centers = rng.standard_normal((60, DIMS)).astype(np.float32)
    count = 2400
    noise = rng.standard_normal((count, DIMS)).astype(np.float32) / np.sqrt(DIMS)
    vectors = centers[np.arange(count) % 60] + 4.0 * noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    brand = ["Rolex" if i % 3 == 0 else "Tudor" for i in range(count)]
    sender = ["15550000002" if i % 12 == 1 else "15550000001" for i in range(count)]
    specs = [
        (
            msg(f"h{i:04d}", sender=sender[i], sent_at=T0),
            [listing(f"h{i:04d}", 0, vectors[i].tolist(), brand=brand[i])],
        )
        for i in range(count)
    ]
    for lo in range(0, count, 400):
        await seed(store, specs[lo : lo + 400])
    query = vectors[5] + 0.2 * rng.standard_normal(DIMS).astype(np.float32) / np.sqrt(DIMS)
    query /= np.linalg.norm(query)
    for filters, keep in (
        (SearchFilters(message_type="sale"), [True] * count),
        (SearchFilters(sender_id="15550000001"), [s == "15550000001" for s in sender]),
        (SearchFilters(brand="Rolex"), [b == "Rolex" for b in brand]),
        (
            SearchFilters(brand="Tudor", sender_id="15550000002"),
            [b == "Tudor" and s == "15550000002" for b, s in zip(brand, sender, strict=True)],
        ),
    ):
        rows = np.flatnonzero(keep)
        exact = {f"h{i:04d}" for i in rows[np.argsort(-(vectors[rows] @ query))[:10]]}
        hits = await store.search_vector(query.tolist(), MODEL, filters, 10)
        assert len(hits) == 10
        assert all(keep[int(h.message_id[1:])] for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert len(exact & {h.message_id for h in hits}) >= 9
