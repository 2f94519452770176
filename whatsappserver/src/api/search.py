"""GET /search, POST /ask, GET /market/{reference}: thin routes over RagSearcher, behind X-API-Key."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from src.api.deps import ApiKeyDep, ServicesDep
from src.rag_searcher import Answer, MarketStats, PriceStats, RagSearcher, SearchResult, SearchResults
from src.services import Services
from src.store.base import ListingHit, SearchFilters, StoreError
from src.watch_models import normalize_reference

log = logging.getLogger(__name__)

router = APIRouter(tags=["search"], dependencies=[ApiKeyDep])

ListingType = Literal["sale", "wanted", "question", "trade"]
ConditionName = Literal["new", "excellent", "good", "used", "vintage"]


async def on_startup(services: Services) -> None:
    """Build the searcher once (it holds the OpenAI chat client when a key is set)."""
    services.extras["searcher"] = RagSearcher.from_services(services)


def _searcher(services: Services) -> RagSearcher:
    searcher = services.extras.get("searcher")
    if searcher is None:  # an app built without the start-up hook (some tests)
        searcher = services.extras["searcher"] = RagSearcher.from_services(services)
    return searcher  # type: ignore[no-any-return]


# -- response models ---------------------------------------------------------------------------------


class MessagePublic(BaseModel):
    """The WhatsApp message a listing came from (the evidence)."""

    id: str
    text: str
    sender_name: str | None
    chat_id: str | None
    sent_at: datetime | None


class ListingPublic(BaseModel):
    """One watch offered or wanted."""

    listing_id: int
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
    line: str = Field(description="The line of the message this listing was read from")
    message: MessagePublic


class SearchResultPublic(ListingPublic):
    """A listing found by a search, with its score and the reasons it matched."""

    score: float
    why: list[str]
    exact_reference: bool
    reposts: list[str] = Field(description="Message ids of reposts of the same listing by the same sender")


class SearchResultsPublic(BaseModel):
    """Results of a search, with the filters that were applied (from the query and the parameters)."""

    query: str
    filters: dict[str, Any]
    keywords: list[str]
    count: int
    results: list[SearchResultPublic]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "query": "qui vend une Daytona 116500LN blanche ?",
                    "filters": {"message_type": "sale", "reference": "116500LN"},
                    "keywords": ["blanche"],
                    "count": 1,
                    "results": [
                        {
                            "listing_id": 42,
                            "message_type": "sale",
                            "brand": "Rolex",
                            "model": "Daytona",
                            "reference": "116500LN",
                            "price": 27500,
                            "currency": "EUR",
                            "price_eur": 27500,
                            "condition": "excellent",
                            "year": 2021,
                            "box": True,
                            "papers": True,
                            "line": "Daytona 116500LN blanc 2021 full set 27.5k€",
                            "message": {
                                "id": "wamid.HBgL...",
                                "text": "Dispo Daytona 116500LN blanc 2021 full set 27.5k€",
                                "sender_name": "Marc",
                                "chat_id": "120363...@g.us",
                                "sent_at": "2025-05-30T10:12:00Z",
                            },
                            "score": 1.03,
                            "why": ["reference 116500LN matches exactly", "for sale", "keywords: blanche"],
                            "exact_reference": True,
                            "reposts": [],
                        }
                    ],
                }
            ]
        }
    )


class AskRequest(BaseModel):
    """A question in French or English."""

    question: str = Field(min_length=1, max_length=1000)

    model_config = ConfigDict(json_schema_extra={"examples": [{"question": "prix moyen d'une 5711 ?"}]})


class PriceStatsPublic(BaseModel):
    """Asking prices in EUR; `priced` of `count` listings stated a price."""

    count: int
    priced: int
    min_eur: float | None
    median_eur: float | None
    max_eur: float | None


class MarketStatsPublic(BaseModel):
    """Asking prices of sale listings of one reference over a window (reposts counted once)."""

    reference: str
    days: int
    since: datetime
    overall: PriceStatsPublic
    by_condition: dict[str, PriceStatsPublic]
    by_box_papers: dict[str, PriceStatsPublic]
    latest: list[ListingPublic]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "reference": "126610LN",
                    "days": 90,
                    "since": "2025-03-01T00:00:00Z",
                    "overall": {
                        "count": 3,
                        "priced": 3,
                        "min_eur": 12600,
                        "median_eur": 13100,
                        "max_eur": 14000,
                    },
                    "by_condition": {
                        "new": {
                            "count": 2,
                            "priced": 2,
                            "min_eur": 12600,
                            "median_eur": 13300,
                            "max_eur": 14000,
                        }
                    },
                    "by_box_papers": {
                        "full_set": {
                            "count": 3,
                            "priced": 3,
                            "min_eur": 12600,
                            "median_eur": 13100,
                            "max_eur": 14000,
                        }
                    },
                    "latest": [],
                }
            ]
        }
    )


class AnswerPublic(BaseModel):
    """An answer built only from the retrieved listings; `citations` are message ids among `results`."""

    question: str
    answer: str
    mode: Literal["openai", "offline"]
    model: str | None
    citations: list[str]
    results: list[SearchResultPublic]
    market: MarketStatsPublic | None = None
    error: str | None = None


# -- shaping -----------------------------------------------------------------------------------------


def _listing(hit: ListingHit) -> dict[str, Any]:
    return {
        "listing_id": hit.listing_id,
        "message_type": hit.message_type,
        "brand": hit.brand,
        "model": hit.model,
        "reference": hit.reference,
        "price": hit.price,
        "currency": hit.currency,
        "price_eur": hit.price_eur,
        "condition": hit.condition,
        "year": hit.year,
        "box": hit.box,
        "papers": hit.papers,
        "line": hit.text,
        "message": MessagePublic(
            id=hit.message_id,
            text=hit.message_text,
            sender_name=hit.sender_name,
            chat_id=hit.chat_id,
            sent_at=hit.sent_at,
        ),
    }


def _result(result: SearchResult) -> SearchResultPublic:
    return SearchResultPublic(
        **_listing(result.hit),
        score=result.score,
        why=result.why,
        exact_reference=result.exact_reference,
        reposts=result.reposts,
    )


def results_public(found: SearchResults) -> SearchResultsPublic:
    stated = {k: v for k, v in found.understanding.stated().items() if k not in _FILTER_NAMES}
    applied = {name: getattr(found.filters, name) for name in _FILTER_NAMES}
    filters = {k: v for k, v in applied.items() if v is not None} | stated
    return SearchResultsPublic(
        query=found.query,
        filters=filters,
        keywords=found.understanding.keywords,
        count=len(found.results),
        results=[_result(r) for r in found.results],
    )


def _price_stats(stats: PriceStats) -> PriceStatsPublic:
    return PriceStatsPublic(
        count=stats.count,
        priced=stats.priced,
        min_eur=stats.min_eur,
        median_eur=stats.median_eur,
        max_eur=stats.max_eur,
    )


def market_public(stats: MarketStats) -> MarketStatsPublic:
    return MarketStatsPublic(
        reference=stats.reference,
        days=stats.days,
        since=stats.since,
        overall=_price_stats(stats.overall),
        by_condition={k: _price_stats(v) for k, v in stats.by_condition.items()},
        by_box_papers={k: _price_stats(v) for k, v in stats.by_box_papers.items()},
        latest=[ListingPublic(**_listing(hit)) for hit in stats.latest],
    )


def answer_public(answer: Answer) -> AnswerPublic:
    return AnswerPublic(
        question=answer.question,
        answer=answer.text,
        mode=answer.mode,
        model=answer.model,
        citations=answer.citations,
        results=[_result(r) for r in answer.results],
        market=market_public(answer.market) if answer.market is not None else None,
        error=answer.error,
    )


_FILTER_NAMES = tuple(SearchFilters.__dataclass_fields__)


def _store_down(exc: StoreError) -> HTTPException:
    log.warning("search store error: %s", type(exc).__name__)
    return HTTPException(status_code=503, detail="the store is unavailable, retry shortly")


# -- routes ------------------------------------------------------------------------------------------


@router.get("/search", response_model=SearchResultsPublic, summary="Search listings")
async def search_listings(
    services: ServicesDep,
    q: Annotated[
        str,
        Query(
            min_length=1,
            max_length=500,
            description="French or English; what it states (reference, model, price bounds, intent...) filters",
            openapi_examples={
                "reference": {"value": "qui vend une Daytona 116500LN blanche ?"},
                "model and budget": {"value": "Submariner under 10k full set"},
                "range": {"value": "Royal Oak between 30k and 45k CHF"},
            },
        ),
    ],
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
    type: Annotated[ListingType | None, Query(description="Overrides the intent read from the query")] = None,
    brand: str | None = None,
    model: str | None = None,
    reference: str | None = None,
    min_price_eur: Annotated[float | None, Query(ge=0)] = None,
    max_price_eur: Annotated[float | None, Query(ge=0)] = None,
    condition: ConditionName | None = None,
    min_year: Annotated[int | None, Query(ge=1900, le=2100)] = None,
    max_year: Annotated[int | None, Query(ge=1900, le=2100)] = None,
    full_set: Annotated[bool | None, Query(description="true: only listings stating box and papers")] = None,
) -> SearchResultsPublic:
    """Listings matching a free-text query; explicit parameters override what the query says."""
    if reference is not None and not normalize_reference(reference):
        raise HTTPException(status_code=422, detail="reference is empty")
    if min_price_eur is not None and max_price_eur is not None and min_price_eur > max_price_eur:
        raise HTTPException(status_code=422, detail="min_price_eur is above max_price_eur")
    overrides = SearchFilters(
        message_type=type,
        brand=brand,
        model=model,
        reference=reference,
        min_price_eur=min_price_eur,
        max_price_eur=max_price_eur,
        condition=condition,
        min_year=min_year,
        max_year=max_year,
        box=full_set if full_set else None,
        papers=full_set if full_set else None,
    )
    try:
        found = await _searcher(services).search(q, limit=limit, overrides=overrides)
    except StoreError as exc:
        raise _store_down(exc) from exc
    return results_public(found)


@router.post("/ask", response_model=AnswerPublic, summary="Answer a question from the listings")
async def ask_question(services: ServicesDep, request: Annotated[AskRequest, Body()]) -> AnswerPublic:
    """Retrieve matching listings, then answer citing their message ids (offline summary without a key)."""
    if not request.question.strip():
        raise HTTPException(status_code=422, detail="question is blank")
    try:
        answer = await _searcher(services).ask(request.question)
    except StoreError as exc:
        raise _store_down(exc) from exc
    return answer_public(answer)


@router.get("/market/{reference}", response_model=MarketStatsPublic, summary="Asking prices of a reference")
async def read_market(
    services: ServicesDep,
    reference: Annotated[
        str,
        Path(
            min_length=2,
            max_length=40,
            description="Prefix match on the normalized reference",
            openapi_examples={"Submariner": {"value": "126610LN"}, "Nautilus": {"value": "5711"}},
        ),
    ],
    days: Annotated[int, Query(ge=1, le=3650, description="Window in days")] = 90,
) -> MarketStatsPublic:
    """Count and min / median / max asking price in EUR, by condition and box/papers, and the latest listings."""
    if len(normalize_reference(reference)) < 2:
        raise HTTPException(status_code=422, detail="reference must have at least 2 letters or digits")
    try:
        stats = await _searcher(services).market(reference, days=days)
    except StoreError as exc:
        raise _store_down(exc) from exc
    return market_public(stats)
