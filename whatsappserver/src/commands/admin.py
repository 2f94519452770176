"""Operator commands: `status` (what /health shows, without a running server) and `forget-sender`."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from src.config import Settings
from src.stats import RuntimeStats, health_payload
from src.store import create_store


async def _status() -> dict[str, object]:
    settings = Settings()
    store = create_store(settings)
    await store.open()
    try:
        stored = await store.stats()
    finally:
        await store.close()
    payload = health_payload(
        status="offline",
        components={},
        runtime=RuntimeStats.new(),
        stored=stored,
        store_backend=store.backend_name,
        embedding_model=settings.active_embedding_model,
    )
    return {key: payload[key] for key in ("watch_stats", "queue", "store_backend", "embedding_model")}


async def _forget(sender_id: str) -> int:
    store = create_store(Settings())
    await store.open()
    try:
        return await store.forget_sender(sender_id)
    finally:
        await store.close()


def register(cli: typer.Typer) -> None:
    @cli.command()
    def status() -> None:
        """Stored counters and queue depth, read straight from the store."""
        typer.echo(json.dumps(asyncio.run(_status()), indent=2, ensure_ascii=False))

    @cli.command("forget-sender")
    def forget_sender(
        sender_id: Annotated[str, typer.Argument(help="The sender's wa_id (phone digits) or BSUID user id")],
        yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    ) -> None:
        """Delete every message and listing of one sender (a data subject's erasure request)."""
        if not yes:
            typer.confirm(f"Delete every message and listing of sender {sender_id}?", abort=True)
        deleted = asyncio.run(_forget(sender_id))
        typer.echo(f"deleted {deleted} message(s) of that sender and their listings")
