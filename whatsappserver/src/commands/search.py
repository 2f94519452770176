"""`search "..."`, `ask "..."`, `market REF`: the search service from the command line, on the configured store.

Readable tables by default, `--json` for scripts (the same shapes as the HTTP API).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from src.api.search import answer_public, market_public, results_public
from src.config import Settings
from src.rag_searcher import MarketStats, RagSearcher, SearchResults, format_eur
from src.services import build_services
from src.store.base import SearchFilters

T = TypeVar("T")


async def _with_searcher(call: Callable[[RagSearcher], Awaitable[T]]) -> T:
    services = await build_services(Settings())
    searcher = RagSearcher.from_services(services)
    try:
        return await call(searcher)
    finally:
        await searcher.aclose()
        await services.aclose()


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, ensure_ascii=False, default=str))


def _results_table(found: SearchResults, console: Console) -> None:
    stated = found.understanding.stated()
    console.print(
        f"[bold]{found.query}[/bold]  filters: {stated or 'none'}  keywords: {found.understanding.keywords}"
    )
    table = Table(show_lines=False)
    for column in ("#", "type", "watch", "price", "cond.", "year", "set", "sender", "sent", "message", "why"):
        table.add_column(column, overflow="fold")
    for rank, result in enumerate(found.results, start=1):
        hit = result.hit
        table.add_row(
            str(rank),
            hit.message_type,
            " ".join(p for p in (hit.brand, hit.model, hit.reference) if p),
            format_eur(hit.price_eur),
            hit.condition or "",
            str(hit.year or ""),
            "full" if hit.box and hit.papers else ("papers" if hit.papers else ""),
            hit.sender_name or "",
            hit.sent_at.date().isoformat() if hit.sent_at else "",
            f"{hit.message_id}: {' '.join(hit.text.split())[:80]}",
            "; ".join(result.why) + (f"; {len(result.reposts)} repost(s)" if result.reposts else ""),
        )
    console.print(table)


def _market_table(stats: MarketStats, console: Console) -> None:
    console.print(f"[bold]{stats.reference}[/bold]: sale listings of the last {stats.days} days")
    table = Table()
    for column in ("group", "listings", "priced", "min", "median", "max"):
        table.add_column(column)
    groups = [("all", stats.overall)]
    groups += [(f"condition: {k}", v) for k, v in stats.by_condition.items()]
    groups += [(f"set: {k}", v) for k, v in stats.by_box_papers.items()]
    for name, s in groups:
        table.add_row(
            name,
            str(s.count),
            str(s.priced),
            format_eur(s.min_eur),
            format_eur(s.median_eur),
            format_eur(s.max_eur),
        )
    console.print(table)
    for hit in stats.latest:
        when = hit.sent_at.date().isoformat() if hit.sent_at else "undated"
        console.print(
            f"  {when} {hit.sender_name or ''} {format_eur(hit.price_eur)}: {' '.join(hit.text.split())[:100]}"
        )


def register(cli: typer.Typer) -> None:
    @cli.command("search")
    def search_command(
        query: Annotated[str, typer.Argument(help='e.g. "Submariner under 10k full set"')],
        limit: Annotated[int, typer.Option(min=1, max=50)] = 10,
        type: Annotated[str | None, typer.Option(help="sale | wanted | question | trade")] = None,
        brand: Annotated[str | None, typer.Option()] = None,
        max_price_eur: Annotated[float | None, typer.Option()] = None,
        as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
    ) -> None:
        """Search listings; what the query states filters, explicit options override it."""
        overrides = SearchFilters(message_type=type, brand=brand, max_price_eur=max_price_eur)
        found = asyncio.run(_with_searcher(lambda s: s.search(query, limit=limit, overrides=overrides)))
        if as_json:
            _print_json(results_public(found).model_dump(mode="json"))
        else:
            _results_table(found, Console())

    @cli.command("ask")
    def ask_command(
        question: Annotated[str, typer.Argument(help='e.g. "prix moyen d\'une 5711 ?"')],
        as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text")] = False,
    ) -> None:
        """Answer a question from the stored listings (OpenAI chat with a key, a plain summary without)."""
        answer = asyncio.run(_with_searcher(lambda s: s.ask(question)))
        if as_json:
            _print_json(answer_public(answer).model_dump(mode="json"))
            return
        console = Console()
        console.print(answer.text, markup=False)
        console.print(
            f"[dim]{answer.mode}{' ' + answer.model if answer.model else ''}; cited: {', '.join(answer.citations) or 'none'}[/dim]"
        )

    @cli.command("market")
    def market_command(
        reference: Annotated[str, typer.Argument(help="e.g. 126610LN (prefix match)")],
        days: Annotated[int, typer.Option(min=1, help="Window in days")] = 90,
        as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
    ) -> None:
        """Asking prices of one reference: count, min / median / max in EUR, by condition and box/papers."""
        stats = asyncio.run(_with_searcher(lambda s: s.market(reference, days=days)))
        if as_json:
            _print_json(market_public(stats).model_dump(mode="json"))
        else:
            _market_table(stats, Console())
