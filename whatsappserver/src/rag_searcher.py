"""Search, answers and market statistics over every listing the server has seen.

    searcher = RagSearcher(store, embedder, settings)            # or RagSearcher.from_services(services)
    results = await searcher.search("qui vend une Daytona 116500LN blanche ?", limit=10)
    results.understanding.stated()   # {"message_type": "sale", "reference": "116500LN", ...}
    for result in results.results:   # SearchResult: .hit (ListingHit), .score, .why, .exact_reference, .reposts
        ...
    answer = await searcher.ask("prix moyen d'une 5711 ?")        # Answer: .text, .citations, .results, .mode
    stats = await searcher.market("126610LN", days=90)            # MarketStats: count, min/median/max, ...

How a search works, and why:
1. `understand_query` (src/query_understanding.py) reads the query with the extractor's own helpers: what it
   states becomes `SearchFilters`; explicit `overrides` win field by field.
2. Within the filters the store ranks by vector similarity (the active embedder's model only) fused with a
   keyword match on the words the filters did not consume (`search_hybrid`; the Postgres function where that
   backend is active). Words the filters already enforce carry no ranking signal, so they are not sent.
3. A listing whose reference equals the query's reference ranks above prefix matches (5711/1A before
   5711/1R-001 for "5711/1A"); several references in one query are searched one by one and merged.
4. Reposts (same sender, same watch and price, near-identical line) collapse to the best-ranked one, and
   the others are listed in `reposts`.

`ask` retrieves, then answers with OpenAI chat (CHAT_MODEL) from the retrieved listings only, citing message
ids that are checked against the results; with no key, or when the call fails after its bounded retries, the
answer is a deterministic summary of the matches. `market` gives asking-price statistics of sale listings of
one reference over a window, reposts counted once.
"""

from __future__ import annotations

import logging
import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from rapidfuzz import fuzz

from src.config import Settings
from src.embedding_processor import Embedder, embedding_text
from src.query_understanding import QueryUnderstanding, fold, merge_filters, understand_query
from src.store.base import ListingHit, SearchFilters, Store
from src.watch_models import normalize_reference

log = logging.getLogger(__name__)

CHAT_TIMEOUT_SECONDS = 30.0
CHAT_MAX_RETRIES = 2
MAX_LIMIT = 50
REPOST_TEXT_SIMILARITY = 90.0


@dataclass(slots=True)
class SearchResult:
    """One listing found, with why it matched; `reposts` are message ids of the same listing reposted."""

    hit: ListingHit
    score: float
    why: list[str]
    exact_reference: bool = False
    reposts: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SearchResults:
    query: str
    understanding: QueryUnderstanding
    filters: SearchFilters
    results: list[SearchResult]


@dataclass(slots=True)
class Answer:
    question: str
    text: str
    citations: list[str]
    results: list[SearchResult]
    mode: Literal["openai", "offline"]
    model: str | None = None
    market: MarketStats | None = None
    error: str | None = None


@dataclass(slots=True)
class PriceStats:
    count: int = 0
    priced: int = 0
    min_eur: float | None = None
    median_eur: float | None = None
    max_eur: float | None = None


@dataclass(slots=True)
class MarketStats:
    """Asking prices (EUR) of sale listings of one reference over the last `days` days."""

    reference: str
    days: int
    since: datetime
    overall: PriceStats
    by_condition: dict[str, PriceStats]
    by_box_papers: dict[str, PriceStats]
    latest: list[ListingHit]


def _price_stats(hits: list[ListingHit]) -> PriceStats:
    prices = sorted(h.price_eur for h in hits if h.price_eur is not None)
    if not prices:
        return PriceStats(count=len(hits))
    return PriceStats(
        count=len(hits),
        priced=len(prices),
        min_eur=prices[0],
        median_eur=round(statistics.median(prices), 2),
        max_eur=prices[-1],
    )


def box_papers_label(box: bool | None, papers: bool | None) -> str:
    """Bucket used by market statistics: full_set, papers_only, box_only, watch_only or unknown."""
    if box and papers:
        return "full_set"
    if papers and not box:
        return "papers_only"
    if box and not papers:
        return "box_only"
    if box is False and papers is False:
        return "watch_only"
    return "unknown"


def format_eur(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} EUR".replace(",", " ")


def _timestamp(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def _sender_key(hit: ListingHit) -> str | None:
    return hit.sender_id or hit.sender_name


def _same_listing(a: ListingHit, b: ListingHit) -> bool:
    """A repost: same sender, same watch and price, near-identical line (another message)."""
    if a.message_id == b.message_id:
        return False
    key = _sender_key(a)
    if key is None or key != _sender_key(b):
        return False
    ref_a = normalize_reference(a.reference) if a.reference else None
    ref_b = normalize_reference(b.reference) if b.reference else None
    if ref_a != ref_b or (a.model or "").lower() != (b.model or "").lower():
        return False
    if (a.price_eur is None) != (b.price_eur is None):
        return False
    if (
        a.price_eur is not None
        and b.price_eur is not None
        and abs(a.price_eur - b.price_eur) > 0.01 * a.price_eur
    ):
        return False
    return fuzz.ratio(fold(a.text), fold(b.text)) >= REPOST_TEXT_SIMILARITY


def collapse_reposts(results: list[SearchResult]) -> list[SearchResult]:
    """Keep the first (best-ranked) of each group of reposts; the others' message ids go in `reposts`."""
    kept: list[SearchResult] = []
    for result in results:
        for original in kept:
            if _same_listing(original.hit, result.hit):
                original.reposts.append(result.hit.message_id)
                break
        else:
            kept.append(result)
    return kept


def _why(
    hit: ListingHit, understanding: QueryUnderstanding, filters: SearchFilters, exact: bool
) -> list[str]:
    """Human-readable reasons, most decisive first."""
    reasons: list[str] = []
    if filters.reference:
        reasons.append(
            f"reference {hit.reference} {'matches exactly' if exact else 'starts with ' + filters.reference}"
        )
    if filters.brand:
        reasons.append(f"brand {hit.brand}")
    if filters.model:
        label = f"model {hit.model}"
        reasons.append(label + (f" ({understanding.nickname})" if understanding.nickname else ""))
    if filters.message_type:
        reasons.append(
            {"sale": "for sale", "wanted": "wanted", "trade": "for trade"}.get(
                filters.message_type, filters.message_type
            )
        )
    if filters.min_price_eur is not None or filters.max_price_eur is not None:
        low = format_eur(filters.min_price_eur) if filters.min_price_eur is not None else ""
        high = format_eur(filters.max_price_eur) if filters.max_price_eur is not None else ""
        bound = f"{low} - {high}" if low and high else (f">= {low}" if low else f"<= {high}")
        reasons.append(f"price {format_eur(hit.price_eur)} within {bound}")
    if filters.condition:
        reasons.append(f"condition {hit.condition}")
    if filters.min_year is not None or filters.max_year is not None:
        reasons.append(f"year {hit.year}")
    if filters.box and filters.papers:
        reasons.append("full set")
    else:
        if filters.box is not None:
            reasons.append("with box" if filters.box else "no box")
        if filters.papers is not None:
            reasons.append("with papers" if filters.papers else "no papers")
    if hit.keyword_score is not None and understanding.keywords:
        line = fold(hit.text + " " + hit.message_text)
        found = [w for w in understanding.keywords if w in line]
        if found:
            reasons.append("keywords: " + ", ".join(found))
    if hit.vector_score is not None:
        reasons.append(f"text similarity {hit.vector_score:.2f}")
    return reasons


class RagSearcher:
    """The one search service: the HTTP routes, the CLI and WhatsApp auto-replies all call it."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        settings: Settings,
        *,
        chat_client: Any | None = None,
        rates: Mapping[str, float] | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self.rates = dict(rates) if rates is not None else (dict(settings.FX_RATES_EUR) or None)
        self._chat = chat_client
        self._owns_chat = False
        if chat_client is None and settings.OPENAI_API_KEY:
            from openai import AsyncOpenAI

            self._chat = AsyncOpenAI(
                api_key=settings.OPENAI_API_KEY,
                base_url=settings.OPENAI_BASE_URL or None,
                timeout=CHAT_TIMEOUT_SECONDS,
                max_retries=CHAT_MAX_RETRIES,
            )
            self._owns_chat = True

    @classmethod
    def from_services(cls, services: Any) -> RagSearcher:
        """Built once at start-up from the shared store, embedder and settings."""
        return cls(services.store, services.embedder, services.settings)

    async def aclose(self) -> None:
        if self._owns_chat and self._chat is not None:
            await self._chat.close()

    # -- search -------------------------------------------------------------------------------------

    def understand(self, query: str) -> QueryUnderstanding:
        return understand_query(query, self.rates)

    async def search(
        self, query: str, *, limit: int = 10, overrides: SearchFilters | None = None
    ) -> SearchResults:
        """Listings matching what `query` states, best first; `overrides` fields win over the query's."""
        limit = max(1, min(limit, MAX_LIMIT))
        understanding = self.understand(query)
        filters = merge_filters(understanding.filters, overrides)
        references: list[str | None]
        if overrides is not None and overrides.reference:
            references = [normalize_reference(overrides.reference)]
        elif understanding.references:
            references = list(dict.fromkeys(understanding.references))
        else:
            references = [None]

        embedding = await self.embedder.embed(self._query_embedding_text(understanding, filters))
        keyword_text = " ".join(understanding.keywords)
        depth = max(limit * 4, 40)
        found: dict[int, tuple[ListingHit, SearchFilters]] = {}
        for reference in references:
            scoped = replace(filters, reference=reference) if reference else filters
            if keyword_text:
                hits = await self.store.search_hybrid(
                    keyword_text, embedding, self.embedder.model_name, scoped, depth
                )
            else:
                hits = await self.store.search_vector(embedding, self.embedder.model_name, scoped, depth)
                for hit in hits:
                    hit.vector_score = hit.score
            for hit in hits:
                if hit.listing_id not in found or found[hit.listing_id][0].score < hit.score:
                    found[hit.listing_id] = (hit, scoped)

        wanted_refs = {r for r in references if r}
        ranked: list[SearchResult] = []
        for hit, scoped in found.values():
            exact = bool(hit.reference) and normalize_reference(hit.reference or "") in wanted_refs
            ranked.append(
                SearchResult(
                    hit=hit,
                    # An exact reference match outranks any prefix match, whatever the text similarity.
                    score=round(hit.score + (1.0 if exact else 0.0), 6),
                    why=_why(hit, understanding, scoped, exact),
                    exact_reference=exact,
                )
            )
        ranked.sort(key=lambda r: (-r.score, -_timestamp(r.hit.sent_at), r.hit.listing_id))
        return SearchResults(
            query=query,
            understanding=understanding,
            filters=filters,
            results=collapse_reposts(ranked)[:limit],
        )

    def _query_embedding_text(self, understanding: QueryUnderstanding, filters: SearchFilters) -> str:
        """The query dressed like a listing (canonical fields, then the words), as listings were embedded."""
        return embedding_text(
            message_type=filters.message_type,
            brand=filters.brand or understanding.brand,
            model=filters.model or understanding.model,
            reference=filters.reference,
            price=None,
            currency=None,
            condition=filters.condition,
            year=None,
            text=understanding.text,
        )

    # -- market -------------------------------------------------------------------------------------

    async def market(self, reference: str, *, days: int = 90, latest: int = 5) -> MarketStats:
        """Asking prices of sale listings of `reference` (prefix) over the last `days` days, reposts once."""
        normalized = normalize_reference(reference)
        if not normalized:
            raise ValueError("reference is empty")
        since = datetime.now(UTC) - timedelta(days=days)
        hits = await self.store.list_listings(
            SearchFilters(message_type="sale", reference=normalized, since=since), MARKET_MAX_LISTINGS
        )
        unique = [r.hit for r in collapse_reposts([SearchResult(hit=h, score=0.0, why=[]) for h in hits])]
        by_condition: dict[str, list[ListingHit]] = {}
        by_box_papers: dict[str, list[ListingHit]] = {}
        for hit in unique:
            by_condition.setdefault(hit.condition or "unknown", []).append(hit)
            by_box_papers.setdefault(box_papers_label(hit.box, hit.papers), []).append(hit)
        return MarketStats(
            reference=normalized,
            days=days,
            since=since,
            overall=_price_stats(unique),
            by_condition={k: _price_stats(v) for k, v in sorted(by_condition.items())},
            by_box_papers={k: _price_stats(v) for k, v in sorted(by_box_papers.items())},
            latest=unique[:latest],
        )

    # -- answers ------------------------------------------------------------------------------------

    async def ask(self, question: str, *, limit: int = 8) -> Answer:
        """Retrieve, then answer from the retrieved listings only (OpenAI chat, or an offline summary)."""
        results = await self.search(question, limit=limit)
        market = None
        if results.understanding.price_question and results.understanding.references:
            market = await self.market(results.understanding.references[0], days=MARKET_ASK_DAYS)
        if self._chat is not None and results.results:
            try:
                text = await self._chat_answer(question, results, market)
            except Exception as exc:  # the answer degrades to the summary; search itself succeeded
                log.warning("chat answer failed, falling back to the offline summary: %s", type(exc).__name__)
                offline = self._offline_answer(question, results, market)
                offline.error = f"chat failed: {type(exc).__name__}"
                return offline
            known = {r.hit.message_id for r in results.results}
            text, citations = _keep_known_citations(text, known)
            return Answer(
                question=question,
                text=text,
                citations=citations,
                results=results.results,
                mode="openai",
                model=self.settings.CHAT_MODEL,
                market=market,
            )
        return self._offline_answer(question, results, market)

    async def _chat_answer(self, question: str, results: SearchResults, market: MarketStats | None) -> str:
        context = "\n".join(_listing_line(r) for r in results.results)
        if market is not None:
            context += "\n\n" + _market_line(market)
        response = await self._chat.chat.completions.create(  # type: ignore[union-attr]
            model=self.settings.CHAT_MODEL,
            temperature=0,
            max_completion_tokens=500,
            messages=[
                {"role": "system", "content": ANSWER_SYSTEM_PROMPT},
                {"role": "user", "content": f"Listings:\n{context}\n\nQuestion: {question}"},
            ],
        )
        return (response.choices[0].message.content or "").strip()

    def _offline_answer(self, question: str, results: SearchResults, market: MarketStats | None) -> Answer:
        """A deterministic summary: how many matched, the price range, the top listings with their ids."""
        hits = results.results
        stated = _describe_filters(results.filters)
        lines: list[str] = []
        if not hits:
            lines.append(f"No listing matches{' (' + stated + ')' if stated else ''}.")
        else:
            lines.append(
                f"{len(hits)} listing{'s' if len(hits) > 1 else ''} match{'' if len(hits) > 1 else 'es'}"
                f"{' (' + stated + ')' if stated else ''}:"
            )
            lines.extend(f"- {_listing_line(r)}" for r in hits)
            prices = sorted(r.hit.price_eur for r in hits if r.hit.price_eur is not None)
            if prices:
                lines.append(
                    f"Asking prices: {format_eur(prices[0])} to {format_eur(prices[-1])}, "
                    f"median {format_eur(statistics.median(prices))} ({len(prices)} priced)."
                )
        if market is not None:
            lines.append(_market_line(market))
        return Answer(
            question=question,
            text="\n".join(lines),
            citations=[r.hit.message_id for r in hits],
            results=hits,
            mode="offline",
            market=market,
        )


MARKET_MAX_LISTINGS = 5_000
MARKET_ASK_DAYS = 180

ANSWER_SYSTEM_PROMPT = (
    "You answer questions from watch traders using ONLY the WhatsApp listings given to you. Each listing "
    "starts with its message id in square brackets. Cite every listing you use by its id in square brackets, "
    "exactly as given, e.g. [wamid.ABC]. Never invent listings, prices or ids; if the listings do not answer "
    "the question, say so. Prices are asking prices in EUR unless stated. Answer in the language of the "
    "question, briefly."
)

_CITATION = re.compile(r"\[([^\[\]\s,;]+)\]")


def _keep_known_citations(text: str, known: set[str]) -> tuple[str, list[str]]:
    """Drop bracketed ids that are not in the results, so every citation points at real evidence."""
    citations: list[str] = []

    def _check(match: re.Match[str]) -> str:
        cited = match.group(1)
        if cited in known:
            if cited not in citations:
                citations.append(cited)
            return match.group(0)
        return ""

    cleaned = _CITATION.sub(_check, text)
    return re.sub(r"[ \t]{2,}", " ", cleaned).strip(), citations


def _listing_line(result: SearchResult) -> str:
    hit = result.hit
    watch = " ".join(part for part in (hit.brand, hit.model, hit.reference) if part) or "watch"
    details = [
        hit.message_type,
        format_eur(hit.price_eur) if hit.price_eur is not None else None,
        hit.condition,
        str(hit.year) if hit.year else None,
        "full set" if hit.box and hit.papers else None,
    ]
    when = hit.sent_at.date().isoformat() if hit.sent_at else "undated"
    who = hit.sender_name or "unknown sender"
    line = " ".join(hit.text.split())
    if len(line) > 160:
        line = line[:157] + "..."
    return f'[{hit.message_id}] {watch}, {", ".join(d for d in details if d)} - {who}, {when}: "{line}"'


def _market_line(market: MarketStats) -> str:
    o = market.overall
    if not o.priced:
        return f"Market {market.reference} (last {market.days} days): {o.count} sale listings, none priced."
    return (
        f"Market {market.reference} (last {market.days} days): {o.count} sale listings, asking "
        f"{format_eur(o.min_eur)} min, {format_eur(o.median_eur)} median, {format_eur(o.max_eur)} max."
    )


def _describe_filters(filters: SearchFilters) -> str:
    parts: list[str] = []
    if filters.message_type:
        parts.append(filters.message_type)
    for name in ("brand", "model", "reference", "condition"):
        value = getattr(filters, name)
        if value:
            parts.append(f"{name} {value}")
    if filters.min_price_eur is not None:
        parts.append(f">= {format_eur(filters.min_price_eur)}")
    if filters.max_price_eur is not None:
        parts.append(f"<= {format_eur(filters.max_price_eur)}")
    if filters.min_year is not None or filters.max_year is not None:
        parts.append(f"year {filters.min_year or ''}-{filters.max_year or ''}")
    if filters.box and filters.papers:
        parts.append("full set")
    elif filters.papers is not None:
        parts.append("papers" if filters.papers else "no papers")
    return ", ".join(parts)
