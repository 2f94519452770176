"""RagSearcher: query understanding (every query form of issue 6), filters on every backend, ranking,
repost collapsing, market statistics, and answers (offline summary; OpenAI chat against the fake server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from src.config import Settings
from src.embedding_processor import LocalEmbedder, embedding_text
from src.query_understanding import understand_query
from src.rag_searcher import RagSearcher
from src.store.base import InboundMessage, ListingRecord, SearchFilters, Store
from src.store.sqlite import SQLiteStore
from tests.fake_openai import FakeOpenAI
from tests.postgres_server import pg_server, pg_template, pg_url  # noqa: F401 - fixtures

NOW = datetime.now(UTC).replace(microsecond=0)

# -- query understanding -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("sous 10k", {"max_price_eur": 10_000}),
        ("moins de 12 000 €", {"max_price_eur": 12_000}),
        ("under $9k", {"max_price_eur": 7_920}),  # USD at the default table's 0.88
        ("between 8k and 10k", {"min_price_eur": 8_000, "max_price_eur": 10_000}),
        ("entre 8 et 10k", {"min_price_eur": 8_000, "max_price_eur": 10_000}),
        ("max 15k CHF", {"max_price_eur": 16_050}),  # CHF at 1.07
        ("budget 20 000 euros", {"max_price_eur": 20_000}),
        ("plus de 30k€", {"min_price_eur": 30_000}),
        ("8k-10k", {"min_price_eur": 8_000, "max_price_eur": 10_000}),
        ("sous 12.5k", {"max_price_eur": 12_500}),
        ("under 2000", {"max_price_eur": 2_000}),
    ],
)
def test_price_bounds_in_french_and_english_are_converted_to_eur(
    query: str, expected: dict[str, float]
) -> None:
    filters = understand_query(query).filters
    assert {"min_price_eur": filters.min_price_eur, "max_price_eur": filters.max_price_eur} == {
        "min_price_eur": expected.get("min_price_eur"),
        "max_price_eur": expected.get("max_price_eur"),
    }


def test_rates_from_settings_override_the_default_table() -> None:
    assert understand_query("under $10k", {"USD": 0.5}).filters.max_price_eur == 5_000


@pytest.mark.parametrize(
    ("query", "message_type"),
    [
        ("qui vend une Daytona 116500LN blanche ?", "sale"),
        ("who sells a 5711?", "sale"),
        ("Submariner for sale", "sale"),
        ("WTS 126610LN", "sale"),
        ("qui cherche une Pepsi ?", "wanted"),
        ("WTB 126710BLNR", "wanted"),
        ("who is looking for a Nautilus", "wanted"),
        ("échange Royal Oak", "trade"),
        ("je cherche une Submariner", None),  # the user wants one: both sides are shown
        ("Submariner under 10k full set", None),
    ],
)
def test_intent(query: str, message_type: str | None) -> None:
    assert understand_query(query).filters.message_type == message_type


def test_the_daytona_query_states_reference_intent_and_keeps_the_colour_for_ranking() -> None:
    understood = understand_query("qui vend une Daytona 116500LN blanche ?")
    assert understood.filters.reference == "116500LN"
    assert understood.filters.message_type == "sale"
    assert understood.model == "Daytona" and understood.brand == "Rolex"
    # The reference alone filters: a listing whose model the extractor missed is still found.
    assert understood.filters.model is None
    assert understood.keywords == ["blanche"]


def test_model_budget_and_full_set() -> None:
    f = understand_query("Submariner under 10k full set").filters
    assert (f.brand, f.model, f.max_price_eur, f.box, f.papers) == ("Rolex", "Submariner", 10_000, True, True)


def test_price_question_with_a_bare_catalogue_reference() -> None:
    understood = understand_query("prix moyen d'une 5711 ?")
    assert understood.references == ["5711"]
    assert understood.brand == "Patek Philippe"
    assert understood.price_question


@pytest.mark.parametrize(
    ("query", "attrs"),
    [
        ("Datejust neuve", {"condition": "new"}),
        ("Daytona mint", {"condition": "excellent"}),
        ("Explorer TBE", {"condition": "good"}),
        ("Speedmaster occasion", {"condition": "used"}),
        ("Hulk 2018+", {"min_year": 2018, "max_year": None}),
        ("Datejust entre 2019 et 2021", {"min_year": 2019, "max_year": 2021}),
        ("GMT after 2015", {"min_year": 2015}),
        ("Submariner avant 2010", {"max_year": 2010}),
        ("Daytona 2021", {"min_year": 2021, "max_year": 2021}),
        ("Submariner boîte et papiers", {"box": True, "papers": True}),
        ("Sub B&P", {"box": True, "papers": True}),
        ("Royal Oak complet", {"box": True, "papers": True}),
        ("Submariner watch only", {"box": False, "papers": False}),
        ("Explorer sans papiers", {"papers": False}),
    ],
)
def test_condition_years_and_box_papers(query: str, attrs: dict[str, Any]) -> None:
    filters = understand_query(query).filters
    assert {k: getattr(filters, k) for k in attrs} == attrs


def test_nickname_names_the_model_and_stays_a_ranking_word() -> None:
    understood = understand_query("qui cherche une Pepsi ?")
    assert understood.filters.model == "GMT-Master II"
    assert understood.nickname == "pepsi"
    assert "pepsi" in understood.keywords


def test_reference_digits_are_not_read_as_a_price_or_a_year() -> None:
    f = understand_query("126610LN 2021 sous 14k").filters
    assert (f.reference, f.min_year, f.max_year, f.max_price_eur) == ("126610LN", 2021, 2021, 14_000)


# -- a small corpus written straight to the store --------------------------------------------------


@dataclass
class Row:
    message_id: str
    text: str
    message_type: str = "sale"
    brand: str | None = None
    model: str | None = None
    reference: str | None = None
    price: float | None = None
    currency: str | None = "EUR"
    condition: str | None = None
    year: int | None = None
    box: bool | None = None
    papers: bool | None = None
    sender: str = "dealer-a"
    days_ago: float = 1.0
    rate: float = 1.0


CORPUS = [
    Row("m-daytona-white", "Dispo Daytona 116500LN blanche 2021 full set 27.5k€", "sale", "Rolex", "Daytona",
        "116500LN", 27_500, condition="excellent", year=2021, box=True, papers=True, sender="dealer-a"),
    Row("m-daytona-black", "Daytona 116500LN noir 2019 full set 26k€", "sale", "Rolex", "Daytona", "116500LN",
        26_000, year=2019, box=True, papers=True, sender="dealer-b"),
    Row("m-daytona-wtb", "WTB Daytona 116500LN blanc", "wanted", "Rolex", "Daytona", "116500LN", None,
        currency=None, sender="dealer-c"),
    Row("m-daytona-126", "Daytona 126500LN panda 2024 neuve 31k€", "sale", "Rolex", "Daytona", "126500LN",
        31_000, condition="new", year=2024, box=True, papers=True, sender="dealer-d"),
    Row("m-sub-cheap", "Submariner 114060 2016 full set 8 200€", "sale", "Rolex", "Submariner", "114060",
        8_200, condition="excellent", year=2016, box=True, papers=True, sender="dealer-e"),
    Row("m-sub-usd", "Submariner 124060 2021 full set $10,500", "sale", "Rolex", "Submariner", "124060",
        10_500, currency="USD", year=2021, box=True, papers=True, sender="dealer-f", rate=0.88),
    Row("m-sub-naked", "Submariner 16610 watch only 7 500€", "sale", "Rolex", "Submariner", "16610", 7_500,
        condition="used", box=False, papers=False, sender="dealer-g"),
    Row("m-sub-dear", "Submariner 126610LN 2023 full set neuve 12 600€", "sale", "Rolex", "Submariner",
        "126610LN", 12_600, condition="new", year=2023, box=True, papers=True, sender="dealer-h"),
    Row("m-sub-dear-2", "126610LN 2022 carte 13 400€", "sale", "Rolex", "Submariner", "126610LN", 13_400,
        condition="excellent", year=2022, box=False, papers=True, sender="dealer-i", days_ago=3),
    Row("m-sub-old", "126610LN 2020 full set 11 000€", "sale", "Rolex", "Submariner", "126610LN", 11_000,
        year=2020, box=True, papers=True, sender="dealer-j", days_ago=200),
    Row("m-sub-wtb", "Cherche Submariner full set budget 10k", "wanted", "Rolex", "Submariner", None, 10_000,
        box=True, papers=True, sender="dealer-k"),
    Row("m-nautilus", "Patek 5711/1A bleu 2019 complet 118 000€", "sale", "Patek Philippe", "Nautilus",
        "5711/1A", 118_000, condition="excellent", year=2019, box=True, papers=True, sender="dealer-l"),
    Row("m-nautilus-r", "5711/1R 2018 full set 150k€", "sale", "Patek Philippe", "Nautilus", "5711/1R",
        150_000, year=2018, box=True, papers=True, sender="dealer-m"),
    Row("m-pepsi", "Pepsi 126710BLRO jubilé 2022 FS 18 900€", "sale", "Rolex", "GMT-Master II", "126710BLRO",
        18_900, year=2022, box=True, papers=True, sender="dealer-n"),
    Row("m-batman", "Batman 126710BLNR 2021 FS 16 500€", "sale", "Rolex", "GMT-Master II", "126710BLNR",
        16_500, year=2021, box=True, papers=True, sender="dealer-o"),
    Row("m-ap", "AP 15500ST bleu 2020 full set 42 500€", "sale", "Audemars Piguet", "Royal Oak", "15500ST",
        42_500, condition="good", year=2020, box=True, papers=True, sender="dealer-p"),
    Row("m-ap-repost-1", "AP 15500ST bleu 2020 full set 42 500€ !!", "sale", "Audemars Piguet", "Royal Oak",
        "15500ST", 42_500, condition="good", year=2020, box=True, papers=True, sender="dealer-p", days_ago=2),
    Row("m-ap-other", "AP 15500ST noir 2019 full set 41 000€", "sale", "Audemars Piguet", "Royal Oak",
        "15500ST", 41_000, condition="good", year=2019, box=True, papers=True, sender="dealer-q"),
]  # fmt: skip


async def seed(store: Store, embedder: LocalEmbedder, rows: list[Row]) -> None:
    """Write messages and their listings straight to the store (no extractor involved)."""
    await store.insert_messages(
        [
            InboundMessage(
                id=row.message_id,
                source="webhook",
                chat_id="group-1",
                sender_id=row.sender,
                sender_name=row.sender.replace("-", " ").title(),
                sent_at=NOW - timedelta(days=row.days_ago),
                wa_type="text",
                text=row.text,
            )
            for row in rows
        ]
    )
    await store.claim_pending(len(rows), 60)
    results = []
    for row in rows:
        text = embedding_text(
            message_type=row.message_type,
            brand=row.brand,
            model=row.model,
            reference=row.reference,
            price=row.price,
            currency=row.currency,
            condition=row.condition,
            year=row.year,
            text=row.text,
        )
        record = ListingRecord(
            message_id=row.message_id,
            position=0,
            message_type=row.message_type,
            brand=row.brand,
            model=row.model,
            reference=row.reference,
            price=row.price,
            currency=row.currency,
            price_eur=None if row.price is None else round(row.price * row.rate, 2),
            condition=row.condition,
            year=row.year,
            size_mm=None,
            movement=None,
            box=row.box,
            papers=row.papers,
            confidence=0.9,
            text=row.text,
            embedding=embedder.embed_one(text).tolist(),
            embedding_model=embedder.model_name,
        )
        results.append((row.message_id, [record]))
    await store.complete_messages(results)


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "SQLITE_PATH": tmp_path / "search.sqlite3",
        "OPENAI_API_KEY": "",
        "DATABASE_URL": "",
        "SUPABASE_URL": "",
        "EMBEDDING_DIMENSIONS": 1536,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# Every backend passes the same search tests; Postgres is skipped only where pgserver cannot start.
BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if backend == "postgres":
        from src.store.postgres import PostgresStore

        url = request.getfixturevalue("pg_url")
        opened: Store = PostgresStore(url, dimensions=1536)  # type: ignore[call-arg]
    else:
        opened = SQLiteStore(tmp_path / "search.sqlite3")
    await opened.open()
    embedder = LocalEmbedder(1536)
    await opened.check_embedding_dimension(embedder.model_name, embedder.dimensions)
    await seed(opened, embedder, CORPUS)
    yield opened
    await opened.close()


@pytest.fixture
def searcher(store: Store, tmp_path: Path) -> RagSearcher:
    return RagSearcher(store, LocalEmbedder(1536), _settings(tmp_path))


def ids(found: Any) -> list[str]:
    return [r.hit.message_id for r in found.results]


# -- search ------------------------------------------------------------------------------------------


async def test_daytona_query_finds_sale_listings_of_that_reference_exact_and_white_first(
    searcher: RagSearcher,
) -> None:
    found = await searcher.search("qui vend une Daytona 116500LN blanche ?")
    assert ids(found) == ["m-daytona-white", "m-daytona-black"]
    top = found.results[0]
    assert top.exact_reference
    assert any("116500LN" in why for why in top.why) and "for sale" in top.why
    assert top.hit.message_text.startswith("Dispo Daytona") and top.hit.sender_name == "Dealer A"
    assert top.hit.sent_at is not None and top.hit.chat_id == "group-1"


async def test_submariner_under_10k_full_set(searcher: RagSearcher) -> None:
    found = await searcher.search("Submariner under 10k full set")
    # The USD one is 10,500 $ = 9,240 EUR; the watch-only one and the 12.6k one are out.
    assert set(ids(found)) == {"m-sub-cheap", "m-sub-usd", "m-sub-wtb"}


async def test_submariner_under_10k_full_set_for_sale(searcher: RagSearcher) -> None:
    found = await searcher.search("qui vend une Submariner sous 10 000 € full set ?")
    assert set(ids(found)) == {"m-sub-cheap", "m-sub-usd"}
    assert all(r.hit.price_eur is not None and r.hit.price_eur <= 10_000 for r in found.results)


async def test_price_range_and_currency(searcher: RagSearcher) -> None:
    found = await searcher.search("Submariner between 8k and 10k")
    assert set(ids(found)) == {"m-sub-cheap", "m-sub-usd", "m-sub-wtb"}
    found = await searcher.search("Submariner max 9k CHF")  # 9,630 EUR
    assert set(ids(found)) == {"m-sub-cheap", "m-sub-usd", "m-sub-naked"}


async def test_wanted_intent(searcher: RagSearcher) -> None:
    assert ids(await searcher.search("qui cherche une Daytona 116500LN ?")) == ["m-daytona-wtb"]
    assert ids(await searcher.search("WTB Submariner")) == ["m-sub-wtb"]


async def test_condition_year_and_papers_filters(searcher: RagSearcher) -> None:
    assert set(ids(await searcher.search("Submariner neuve"))) == {"m-sub-dear"}
    assert set(ids(await searcher.search("Submariner 2021 à 2023"))) == {
        "m-sub-usd",
        "m-sub-dear",
        "m-sub-dear-2",
    }
    assert set(ids(await searcher.search("Submariner watch only"))) == {"m-sub-naked"}


async def test_nickname_filters_the_model_and_ranks_the_named_one_first(searcher: RagSearcher) -> None:
    found = await searcher.search("Pepsi")
    assert ids(found)[0] == "m-pepsi"
    assert set(ids(found)) == {"m-pepsi", "m-batman"}


async def test_exact_reference_ranks_before_prefix_matches(searcher: RagSearcher) -> None:
    found = await searcher.search("5711/1A")
    assert ids(found) == ["m-nautilus"]
    found = await searcher.search("who sells a 5711?")
    assert set(ids(found)) == {"m-nautilus", "m-nautilus-r"}
    assert not any(r.exact_reference for r in found.results)


async def test_several_references_in_one_query(searcher: RagSearcher) -> None:
    found = await searcher.search("126710BLRO ou 126710BLNR")
    assert set(ids(found)) == {"m-pepsi", "m-batman"}
    assert all(r.exact_reference for r in found.results)


async def test_explicit_overrides_win_over_the_query(searcher: RagSearcher) -> None:
    found = await searcher.search(
        "qui cherche une Submariner ?", overrides=SearchFilters(message_type="sale", max_price_eur=8_000)
    )
    assert ids(found) == ["m-sub-naked"]
    found = await searcher.search("Daytona", overrides=SearchFilters(reference="126500LN"))
    assert ids(found) == ["m-daytona-126"]


async def test_reposts_by_the_same_sender_collapse_to_one(searcher: RagSearcher) -> None:
    found = await searcher.search("AP 15500ST bleu")
    assert ids(found)[0] == "m-ap"
    assert "m-ap-repost-1" not in ids(found)
    assert found.results[0].reposts == ["m-ap-repost-1"]
    assert "m-ap-other" in ids(found)  # another sender's listing is not a repost


async def test_free_text_without_filters_ranks_by_similarity(searcher: RagSearcher) -> None:
    found = await searcher.search("panda", limit=3)
    assert ids(found)[0] == "m-daytona-126"
    assert any(w.startswith("keywords: panda") for w in found.results[0].why)


async def test_limit_and_no_match(searcher: RagSearcher) -> None:
    assert len((await searcher.search("Rolex", limit=2)).results) == 2
    assert ids(await searcher.search("Submariner sous 1000€")) == []


# -- market ------------------------------------------------------------------------------------------


async def test_market_statistics_over_a_window(searcher: RagSearcher) -> None:
    stats = await searcher.market("126610LN", days=90)
    assert stats.overall.count == 2  # the 200-day-old listing is outside the window
    assert (stats.overall.min_eur, stats.overall.median_eur, stats.overall.max_eur) == (
        12_600,
        13_000,
        13_400,
    )
    assert set(stats.by_condition) == {"new", "excellent"}
    assert stats.by_box_papers["full_set"].count == 1 and stats.by_box_papers["papers_only"].count == 1
    assert [h.message_id for h in stats.latest] == ["m-sub-dear", "m-sub-dear-2"]
    assert (await searcher.market("126610LN", days=365)).overall.count == 3


async def test_market_counts_a_repost_once(searcher: RagSearcher) -> None:
    stats = await searcher.market("15500ST")
    assert stats.overall.count == 2


# -- answers -----------------------------------------------------------------------------------------


async def test_offline_answer_is_a_deterministic_summary_citing_the_results(searcher: RagSearcher) -> None:
    answer = await searcher.ask("qui vend une Daytona 116500LN ?")
    assert answer.mode == "offline"
    assert set(answer.citations) == {"m-daytona-white", "m-daytona-black"}
    assert "[m-daytona-white]" in answer.text and "26 000 EUR" in answer.text
    assert answer.text == (await searcher.ask("qui vend une Daytona 116500LN ?")).text


async def test_offline_answer_to_a_price_question_includes_market_stats(searcher: RagSearcher) -> None:
    answer = await searcher.ask("prix moyen d'une 126610LN ?")
    assert answer.market is not None and answer.market.overall.count == 2
    assert "median" in answer.text


async def test_offline_answer_without_matches(searcher: RagSearcher) -> None:
    answer = await searcher.ask("qui vend une Submariner sous 1000 € ?")
    assert answer.citations == [] and answer.text.startswith("No listing matches")


@pytest.fixture
def fake_openai() -> Any:
    with FakeOpenAI() as fake:
        yield fake


async def test_openai_answer_cites_only_ids_that_are_in_the_results(
    store: Store, tmp_path: Path, fake_openai: Any
) -> None:
    fake_openai.config.chat_answer = (
        "Deux Daytona 116500LN sont à vendre : la blanche à 27 500 EUR [m-daytona-white] et la noire "
        "[m-daytona-black]; une autre [m-invented]."
    )
    settings = _settings(tmp_path, OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=fake_openai.base_url)
    searcher = RagSearcher(store, LocalEmbedder(1536), settings)
    try:
        answer = await searcher.ask("qui vend une Daytona 116500LN blanche ?")
    finally:
        await searcher.aclose()
    assert answer.mode == "openai" and answer.model == settings.CHAT_MODEL
    result_ids = {r.hit.message_id for r in answer.results}
    assert set(answer.citations) == {"m-daytona-white", "m-daytona-black"}
    assert set(answer.citations) <= result_ids
    assert "m-invented" not in answer.text
    body = fake_openai.stats.chat_bodies[-1]
    assert body["model"] == settings.CHAT_MODEL
    prompt = body["messages"][-1]["content"]
    assert "[m-daytona-white]" in prompt and "qui vend une Daytona" in prompt


async def test_openai_failure_falls_back_to_the_offline_summary(
    store: Store, tmp_path: Path, fake_openai: Any
) -> None:
    fake_openai.config.fail_next = 10
    settings = _settings(tmp_path, OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=fake_openai.base_url)
    searcher = RagSearcher(store, LocalEmbedder(1536), settings)
    try:
        answer = await searcher.ask("qui vend une Daytona 116500LN ?")
    finally:
        await searcher.aclose()
    assert answer.mode == "offline" and answer.error is not None
    assert set(answer.citations) == {"m-daytona-white", "m-daytona-black"}


def test_query_embedding_matches_listing_embedding_space() -> None:
    """The query is dressed like a listing, so the same reference lands close to its listings."""
    embedder = LocalEmbedder(1536)
    query = embedder.embed_one(embedding_text(message_type="sale", brand="Rolex", model="Daytona",
                                              reference="116500LN", price=None, currency=None, condition=None,
                                              year=None, text="qui vend une Daytona 116500LN"))  # fmt: skip
    same = embedder.embed_one("Rolex | Daytona | 116500LN | sale\nDaytona 116500LN blanche")
    other = embedder.embed_one("Rolex | Submariner | 126610LN | sale\nSub 126610LN")
    assert float(np.dot(query, same)) > float(np.dot(query, other))
