"""Embedding operations: `reembed` (move every listing to the active model) and `retry-failed` (requeue).

`reembed` is resumable by construction: each round selects listings whose vector is not of the active model,
embeds them in one batched call and writes them back, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from src.config import Settings
from src.embedding_processor import EmbeddingError, create_embedder
from src.store import create_store

console = Console(stderr=True)


async def _reembed(batch_size: int | None, quiet: bool) -> tuple[int, str]:
    settings = Settings()
    store = create_store(settings)
    embedder = create_embedder(settings)
    model = embedder.model_name
    # One read fills every request the embedder may run at once.
    size = batch_size or settings.EMBEDDING_BATCH_SIZE * max(1, settings.EMBEDDING_CONCURRENCY)
    done = 0
    try:
        await store.open()
        await store.check_embedding_dimension(model, embedder.dimensions)
        total = (await store.stats()).listings_total
        with Progress(
            TextColumn("[bold]re-embedding[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
            transient=False,
        ) as progress:
            task = progress.add_task(model, total=total)
            previous: list[int] = []
            # Bounded: each round moves `size` rows off the list, so this many rounds cover them all.
            for _ in range(total // size + 2):
                rows = await store.listings_needing_embedding(model, size)
                if not rows:
                    break
                ids = [listing_id for listing_id, _ in rows]
                if ids == previous:
                    raise RuntimeError(f"listings {ids[:5]}... are not updated by the store; stopping")
                previous = ids
                vectors = await embedder.embed_batch([text for _, text in rows])
                await store.update_embeddings(model, list(zip(ids, vectors, strict=True)))
                done += len(rows)
                progress.update(task, advance=len(rows), total=max(total, done))
    finally:
        await embedder.aclose()
        await store.close()
    return done, model


async def _retry_failed(process: bool) -> tuple[int, int]:
    from src.services import build_services

    settings = Settings()
    services = await build_services(settings)
    try:
        requeued = await services.store.requeue_failed()
        if process and requeued:
            await services.pipeline.drain()
        failed = (await services.store.stats()).failed
    finally:
        await services.aclose()
    return requeued, failed


def register(cli: typer.Typer) -> None:
    @cli.command()
    def reembed(
        batch_size: Annotated[
            int | None,
            typer.Option(help="Listings read and embedded per round (default: batch size x concurrency)"),
        ] = None,
        quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar")] = False,
    ) -> None:
        """Embed every listing whose vector is not of the active model (resumable: run it again after a stop)."""
        try:
            done, model = asyncio.run(_reembed(batch_size, quiet))
        except EmbeddingError as exc:
            typer.echo(f"embedding failed, progress so far is saved; run reembed again: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"{done} listing(s) re-embedded with {model}; every listing is now on {model}")

    @cli.command("retry-failed")
    def retry_failed(
        process: Annotated[
            bool, typer.Option("--process", help="Process them now here instead of by the running server")
        ] = False,
    ) -> None:
        """Put messages that failed every try back in the queue, with their attempts reset."""
        requeued, failed = asyncio.run(_retry_failed(process))
        typer.echo(f"{requeued} failed message(s) requeued")
        if process:
            typer.echo(f"processed now; {failed} failed again" if failed else "processed now")
        elif requeued:
            typer.echo("the running server's worker picks them up (or run again with --process)")
