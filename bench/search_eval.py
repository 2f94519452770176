"""Search quality and speed: `python bench/search_eval.py [--quick] [--verbose]`.

Quality: the dev messages (shared/data/labelled) go through the real pipeline (extractor, local embedder,
SQLite store); the labelled queries in bench/data/search_queries.jsonl run through RagSearcher. Relevance is
derived from the gold labels by the query's `relevant` rule, never from hand-picked ids: a message is relevant
when its gold type matches `type` (if given) and one of its gold watches matches every other field (brand,
model: equal; reference: normalized prefix; price bounds: gold price converted to EUR; condition; year
bounds; box; papers). Results are counted per message (a stock list is one message).
- precision@5: relevant / shown among the first 5 results (a filtered search may show fewer than 5; a query
  that shows nothing while something is relevant counts 0).
- recall@10: relevant found in the first 10 / min(10, relevant).
- MRR: 1 / rank of the first relevant result.
Targets (issue 6): precision@5 >= 0.9 and recall@10 >= 0.9 on queries that name a reference or a model.

Speed: a synthetic corpus of 100k listings (perturbed copies of the dev listings: price, year, sender, words)
written straight to a SQLite store with local-embedder vectors; the same queries timed end to end through
RagSearcher.search (query understanding, embedding, filtered hybrid search, fetch). `--quick`: 20k listings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "whatsappserver"), str(ROOT)]

from src.config import Settings  # noqa: E402
from src.embedding_processor import LocalEmbedder, embedding_text  # noqa: E402
from src.fx import to_eur  # noqa: E402
from src.pipeline import Pipeline, WorkerSettings  # noqa: E402
from src.rag_searcher import RagSearcher  # noqa: E402
from src.stats import RuntimeStats  # noqa: E402
from src.store.base import InboundMessage, ListingRecord  # noqa: E402
from src.store.sqlite import SQLiteStore  # noqa: E402
from src.watch_models import normalize_reference  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LABELLED = SHARED / "data" / "labelled"
QUERIES = Path(__file__).resolve().parent / "data" / "search_queries.jsonl"
TARGET_KINDS = ("reference", "model")


def load_messages() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in ("usa_dev.jsonl", "fr_dev.jsonl"):
        with (LABELLED / name).open(encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows


def load_queries() -> list[dict[str, Any]]:
    with QUERIES.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def watch_matches(watch: dict[str, Any], rule: dict[str, Any]) -> bool:
    """Does one gold watch satisfy every watch field of a relevance rule?"""
    for key in ("brand", "model", "condition", "box", "papers"):
        if key in rule and watch.get(key) != rule[key]:
            return False
    if "reference" in rule:
        ref = watch.get("reference")
        if not ref or not normalize_reference(ref).startswith(normalize_reference(rule["reference"])):
            return False
    if "min_price_eur" in rule or "max_price_eur" in rule:
        eur = to_eur(watch.get("price"), watch.get("currency"))
        if eur is None:
            return False
        if eur < rule.get("min_price_eur", float("-inf")) or eur > rule.get("max_price_eur", float("inf")):
            return False
    year = watch.get("year")
    if "min_year" in rule and (year is None or year < rule["min_year"]):
        return False
    return not ("max_year" in rule and (year is None or year > rule["max_year"]))


def relevant_ids(messages: list[dict[str, Any]], rule: dict[str, Any]) -> set[str]:
    return {
        m["id"]
        for m in messages
        if ("type" not in rule or m["type"] == rule["type"])
        and any(watch_matches(w, rule) for w in m["watches"])
    }


def settings_for(path: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, SQLITE_PATH=path, OPENAI_API_KEY="", DATABASE_URL="", SUPABASE_URL=""
    )


async def quality(verbose: bool) -> dict[str, float]:
    messages = load_messages()
    queries = load_queries()
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "eval.sqlite3", synchronous="OFF")
        await store.open()
        embedder = LocalEmbedder(1536)
        start = datetime(2025, 6, 1, tzinfo=UTC)
        await store.insert_messages(
            [
                InboundMessage(
                    id=m["id"],
                    source="chat_export",
                    chat_id=m["source"],
                    sender_id=f"sender-{m['id']}",
                    sender_name=f"Dealer {m['id']}",
                    sent_at=start + timedelta(minutes=i),
                    wa_type="text",
                    text=m["text"],
                )
                for i, m in enumerate(messages)
            ]
        )
        await Pipeline(store, embedder, RuntimeStats.new(), WorkerSettings(batch_size=256)).drain(120)
        searcher = RagSearcher(store, embedder, settings_for(Path(tmp) / "unused.sqlite3"))

        per_query: list[dict[str, Any]] = []
        for q in queries:
            relevant = relevant_ids(messages, q["relevant"])
            if not relevant:
                print(f"warning: no relevant message for {q['query']!r}; skipped", file=sys.stderr)
                continue
            found = await searcher.search(q["query"], limit=10)
            ranked = list(dict.fromkeys(r.hit.message_id for r in found.results))
            top5 = ranked[:5]
            precision = (len([i for i in top5 if i in relevant]) / len(top5)) if top5 else 0.0
            recall = len([i for i in ranked[:10] if i in relevant]) / min(10, len(relevant))
            rr = next((1.0 / rank for rank, i in enumerate(ranked, start=1) if i in relevant), 0.0)
            per_query.append({**q, "p5": precision, "r10": recall, "rr": rr})
            if verbose and (precision < 1 or recall < 1):
                print(
                    f"  {q['query']!r}: p@5={precision:.2f} r@10={recall:.2f} rr={rr:.2f} "
                    f"filters={found.understanding.stated()} got={ranked[:10]} relevant={sorted(relevant)}",
                    file=sys.stderr,
                )
        await store.close()

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return round(statistics.fmean(r[key] for r in rows), 3) if rows else 0.0

    target = [r for r in per_query if r["names"] in TARGET_KINDS]
    figures = {
        "queries": len(per_query),
        "queries_naming_reference_or_model": len(target),
        "precision_at_5_ref_or_model": mean(target, "p5"),
        "recall_at_10_ref_or_model": mean(target, "r10"),
        "mrr_ref_or_model": mean(target, "rr"),
        "precision_at_5_all": mean(per_query, "p5"),
        "recall_at_10_all": mean(per_query, "r10"),
        "mrr_all": mean(per_query, "rr"),
    }
    for kind in ("reference", "model", "nickname", "brand", "other"):
        rows = [r for r in per_query if r["names"] == kind]
        if rows:
            figures[f"precision_at_5_{kind}"] = mean(rows, "p5")
            figures[f"recall_at_10_{kind}"] = mean(rows, "r10")
    for lang in ("fr", "en"):
        rows = [r for r in per_query if r["lang"] == lang]
        figures[f"precision_at_5_{lang}"] = mean(rows, "p5")
        figures[f"recall_at_10_{lang}"] = mean(rows, "r10")
    return figures


_DIALS = ["blue", "black", "white", "bleu", "noir", "blanc", "green", "vert", "grey", "champagne", "panda"]
_EXTRAS = [
    "full set",
    "watch only",
    "w/c",
    "boîte et papiers",
    "BNIB",
    "mint",
    "TBE",
    "new",
    "used",
    "2 links",
]


async def speed(listings: int, runs: int) -> dict[str, float]:
    """p50 / p95 of RagSearcher.search over a synthetic corpus of `listings` listings on SQLite."""
    rng = random.Random(6)
    messages = load_messages()
    watches = [(m, w) for m in messages for w in m["watches"]]
    queries = [q["query"] for q in load_queries()]
    embedder = LocalEmbedder(1536)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "speed.sqlite3", synchronous="OFF")
        await store.open()
        await store.check_embedding_dimension(embedder.model_name, embedder.dimensions)
        build_start = time.perf_counter()
        now = datetime.now(UTC)
        chunk = 2_000
        for base in range(0, listings, chunk):
            count = min(chunk, listings - base)
            inbound: list[InboundMessage] = []
            records: list[tuple[str, list[ListingRecord]]] = []
            for i in range(base, base + count):
                message, watch = watches[rng.randrange(len(watches))]
                factor = rng.uniform(0.85, 1.15)
                price = round(watch["price"] * factor, -1) if watch.get("price") else None
                year = watch.get("year") or rng.choice([None, rng.randint(2005, 2025)])
                line = " ".join(
                    part
                    for part in (
                        watch.get("reference") or "",
                        watch.get("model") or "",
                        rng.choice(_DIALS),
                        str(year or ""),
                        rng.choice(_EXTRAS),
                        f"{price:,.0f}" if price else "",
                    )
                    if part
                )
                message_id = f"syn-{i}"
                inbound.append(
                    InboundMessage(
                        id=message_id,
                        source="chat_export",
                        chat_id="synthetic",
                        sender_id=f"s{rng.randrange(2_000)}",
                        sender_name="Dealer",
                        sent_at=now - timedelta(minutes=i),
                        wa_type="text",
                        text=line,
                    )
                )
                currency = watch.get("currency") or "EUR"
                vector_text = embedding_text(
                    message_type=message["type"],
                    brand=watch.get("brand"),
                    model=watch.get("model"),
                    reference=watch.get("reference"),
                    price=price,
                    currency=currency if price else None,
                    condition=watch.get("condition"),
                    year=year,
                    text=line,
                )
                records.append(
                    (
                        message_id,
                        [
                            ListingRecord(
                                message_id=message_id,
                                position=0,
                                message_type=message["type"],
                                brand=watch.get("brand"),
                                model=watch.get("model"),
                                reference=watch.get("reference"),
                                price=price,
                                currency=currency if price else None,
                                price_eur=to_eur(price, currency) if price else None,
                                condition=watch.get("condition"),
                                year=year,
                                size_mm=None,
                                movement=None,
                                box=watch.get("box"),
                                papers=watch.get("papers"),
                                confidence=0.9,
                                text=line,
                                embedding=embedder.embed_one(vector_text).tolist(),
                                embedding_model=embedder.model_name,
                            )
                        ],
                    )
                )
            await store.insert_messages(inbound)
            await store.complete_messages(records)
        build_seconds = time.perf_counter() - build_start

        searcher = RagSearcher(store, embedder, settings_for(Path(tmp) / "unused.sqlite3"))
        await searcher.search("warm up the index", limit=10)
        timings: list[float] = []
        for _ in range(runs):
            for query in queries:
                started = time.perf_counter()
                await searcher.search(query, limit=10)
                timings.append((time.perf_counter() - started) * 1000)
        await store.close()
    timings.sort()
    return {
        "speed_listings": listings,
        "speed_corpus_build_s": round(build_seconds, 1),
        "search_calls": len(timings),
        "search_p50_ms": round(statistics.median(timings), 2),
        "search_p95_ms": round(timings[int(0.95 * (len(timings) - 1))], 2),
        "search_max_ms": round(timings[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k listings for the speed part (< 1 minute)")
    parser.add_argument("--listings", type=int, default=None, help="speed corpus size (default 100000)")
    parser.add_argument("--verbose", action="store_true", help="print every query below 1.0")
    args = parser.parse_args()
    listings = args.listings or (20_000 if args.quick else 100_000)
    figures: dict[str, float] = {}
    figures.update(asyncio.run(quality(args.verbose)))
    figures.update(asyncio.run(speed(listings, runs=1 if args.quick else 3)))
    for name, value in figures.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
