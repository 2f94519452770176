"""`import-chat FILE`: load a WhatsApp "Export chat" file (.txt or .zip) through the same pipeline as the webhook.

Ordinary groups never reach the Cloud API, so a dealer's history only arrives this way. Messages are stored
with source=chat_export and their own timestamps, in chunks; each chunk is processed (extract, embed, store
listings) before the next is read, so memory stays flat on a 100k-line export. Ids are stable: importing
the same file again adds nothing.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from src.chat_export import (
    DateOrder,
    ExportFile,
    ExportFileError,
    ExportMessage,
    LineIssue,
    chat_name_from_path,
    guess_format,
    parse_export,
)
from src.config import Settings
from src.services import Services, build_services
from src.store.base import StoredMessage
from src.watch_models import WatchInfo

CHUNK_SIZE = 1000
EXAMPLE_LINES = 5
# Issues that are not a message header: they do not count towards the progress total.
_NOT_A_HEADER = ("line before the first message", "invalid UTF-8, read as Latin-1")


@dataclass(slots=True)
class IssueCount:
    entries: int = 0
    lines: int = 0
    examples: list[int] = field(default_factory=list)


@dataclass(slots=True)
class ImportSummary:
    """What an import did; printed at the end and returned for tests and the benchmark."""

    chat: str
    date_order: DateOrder
    messages: int = 0
    new: int = 0
    already_imported: int = 0
    processed: int = 0
    failed: int = 0
    listings_by_type: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, IssueCount] = field(default_factory=dict)
    repaired: dict[str, IssueCount] = field(default_factory=dict)

    def note(self, issue: LineIssue) -> None:
        bucket = (self.repaired if issue.kept else self.skipped).setdefault(issue.reason, IssueCount())
        bucket.entries += 1
        bucket.lines += issue.lines
        if len(bucket.examples) < EXAMPLE_LINES:
            bucket.examples.append(issue.line_no)


def _chunks(
    items: Iterator[ExportMessage | LineIssue], size: int
) -> Iterator[list[ExportMessage | LineIssue]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


async def import_export(
    services: Services,
    path: Path,
    *,
    chat: str | None = None,
    tz: tzinfo | None = None,
    date_order: DateOrder | None = None,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    """Parse, store and process one export. `tz` None reads times as this machine's local time.

    `on_progress(done, total)` is called after each chunk, with message headers as the unit.
    """
    export = ExportFile(path)
    guess = guess_format(export.lines())  # first pass: day-first or month-first, and the total
    order = date_order or guess.date_order
    name = chat or chat_name_from_path(path)
    summary = ImportSummary(chat=name, date_order=order)
    new_ids: set[str] = set()

    processed_ids: set[str] = set()

    async def count_listings(message: StoredMessage, info: WatchInfo) -> None:
        if message.id in new_ids and message.id not in processed_ids:
            processed_ids.add(message.id)
            summary.processed += 1
            if info.watches:
                summary.listings_by_type[info.message_type] += len(info.watches)

    services.pipeline.hooks.append(count_listings)
    done = 0
    try:
        for chunk in _chunks(parse_export(export.lines(), name, date_order=order, tz=tz), chunk_size):
            inbound = []
            for item in chunk:
                if isinstance(item, LineIssue):
                    summary.note(item)
                    done += item.reason not in _NOT_A_HEADER
                    continue
                if tz is None:
                    item.sent_at = item.sent_at.astimezone()  # local wall time, DST-aware
                inbound.append(item.to_inbound())
                done += 1
            summary.messages += len(inbound)
            inserted = await services.store.insert_messages(inbound)
            new_ids.update(inserted)
            summary.new += len(inserted)
            summary.already_imported += len(inbound) - len(inserted)
            if inserted:
                await services.pipeline.drain()
            if on_progress is not None:
                on_progress(done, guess.headers)
    finally:
        services.pipeline.hooks.remove(count_listings)
    # Not seen by our hook: failed (recorded with last_error, retried later), or taken by a running server's
    # worker on the same store, which is fine. Only those few are looked up.
    for message_id in new_ids - processed_ids:
        stored = await services.store.get_message(message_id)
        if stored is not None and (stored.status == "failed" or stored.last_error):
            summary.failed += 1
    return summary


def _timezone(name: str) -> tzinfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(
            f"unknown time zone {name!r} (use an IANA name such as Europe/Paris)"
        ) from None


def print_summary(console: Console, summary: ImportSummary, path: Path) -> None:
    console.print(
        f"[bold]{path.name}[/bold] -> chat [bold]{summary.chat}[/bold] (dates read {summary.date_order})"
    )
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("messages", str(summary.messages))
    table.add_row("  new", str(summary.new))
    table.add_row("  already imported", str(summary.already_imported))
    if summary.failed:
        table.add_row(
            "  failed processing", f"[red]{summary.failed}[/red] (see `last_error`; retried by the worker)"
        )
    total_listings = sum(summary.listings_by_type.values())
    table.add_row("listings (new messages)", str(total_listings))
    for kind, count in sorted(summary.listings_by_type.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {kind}", str(count))
    skipped = sum(bucket.entries for bucket in summary.skipped.values())
    table.add_row("skipped", str(skipped))
    for reason, bucket in sorted(summary.skipped.items(), key=lambda kv: -kv[1].entries):
        table.add_row(
            f"  {reason}",
            f"{bucket.entries}  (lines {', '.join(map(str, bucket.examples))}"
            f"{', ...' if bucket.entries > len(bucket.examples) else ''})",
        )
    for reason, bucket in summary.repaired.items():
        table.add_row(
            f"repaired: {reason}", f"{bucket.entries}  (lines {', '.join(map(str, bucket.examples))})"
        )
    console.print(table)


def register(cli: typer.Typer) -> None:
    @cli.command("import-chat")
    def import_chat(
        file: Annotated[Path, typer.Argument(help="The .txt or .zip from WhatsApp's 'Export chat'")],
        chat: Annotated[
            str | None, typer.Option("--chat", help="Chat name to store (default: from the file name)")
        ] = None,
        timezone: Annotated[
            str, typer.Option("--timezone", help="IANA zone the phone was in (default: this machine's)")
        ] = "",
        date_order: Annotated[
            str | None,
            typer.Option("--date-order", help="dmy, mdy or ymd when auto-detection guesses wrong"),
        ] = None,
    ) -> None:
        """Import a WhatsApp chat export (Android or iOS; French, UK or US dates); re-importing adds nothing."""
        if date_order not in (None, "dmy", "mdy", "ymd"):
            raise typer.BadParameter("--date-order must be dmy, mdy or ymd")
        tz = _timezone(timezone)
        console = Console(stderr=True)
        try:
            ExportFile(file)
        except ExportFileError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None

        async def _run() -> ImportSummary:
            services = await build_services(Settings())
            try:
                with Progress(
                    TextColumn("importing"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                    console=console,
                    transient=True,
                ) as progress:
                    task = progress.add_task("import", total=None)
                    return await import_export(
                        services,
                        file,
                        chat=chat,
                        tz=tz,
                        date_order=date_order,  # type: ignore[arg-type]
                        on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                    )
            finally:
                await services.aclose()

        summary = asyncio.run(_run())
        print_summary(Console(), summary, file)
