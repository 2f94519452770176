"""`simulate`: post a realistic, signed webhook to a running server, so the whole flow runs without Meta."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated

import httpx
import typer

from src.config import Settings
from src.whatsapp.webhook import SIGNATURE_HEADER, sign


def simulated_payload(texts: list[str], sender: str, name: str, group: str | None) -> dict[str, object]:
    """A webhook body shaped like Meta's: one entry, one change, one message per text."""
    now = int(time.time())
    messages: list[dict[str, object]] = []
    for text in texts:
        message: dict[str, object] = {
            "from": sender,
            "id": f"wamid.SIM{uuid.uuid4().hex.upper()}",
            "timestamp": str(now),
            "type": "text",
            "text": {"body": text},
        }
        if group:
            message["group_id"] = group
        messages.append(message)
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "0",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550100000", "phone_number_id": "0"},
                            "contacts": [{"profile": {"name": name}, "wa_id": sender}],
                            "messages": messages,
                        },
                    }
                ],
            }
        ],
    }


def register(cli: typer.Typer) -> None:
    @cli.command()
    def simulate(
        texts: Annotated[list[str], typer.Argument(help="Message text(s); each becomes one message")],
        url: Annotated[str, typer.Option(help="Base URL of the running server")] = "http://127.0.0.1:8000",
        sender: Annotated[str, typer.Option(help="Sender wa_id (a fake number)")] = "15550100099",
        name: Annotated[str, typer.Option(help="Sender profile name")] = "Demo Dealer",
        group: Annotated[str | None, typer.Option(help="Group id, to simulate a group message")] = None,
        wait: Annotated[float, typer.Option(help="Seconds to wait for processing, then show /health")] = 3.0,
    ) -> None:
        """Sign (with WHATSAPP_APP_SECRET when set) and POST a webhook, as Meta would."""
        settings = Settings()
        body = json.dumps(simulated_payload(texts, sender, name, group), ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if settings.WHATSAPP_APP_SECRET:
            headers[SIGNATURE_HEADER] = sign(body, settings.WHATSAPP_APP_SECRET)
        try:
            response = httpx.post(url.rstrip("/") + "/webhook", content=body, headers=headers, timeout=10)
        except httpx.HTTPError as exc:
            typer.echo(
                f"could not reach {url}: {exc}. Is the server running (python3 dev.py serve)?", err=True
            )
            raise typer.Exit(1) from exc
        typer.echo(f"POST /webhook -> {response.status_code} {response.text}")
        if response.status_code != 200:
            raise typer.Exit(1)
        if wait > 0:
            time.sleep(wait)
            health = httpx.get(url.rstrip("/") + "/health", timeout=10).json()
            typer.echo(
                json.dumps(
                    {"runtime_stats": health.get("runtime_stats"), "queue": health.get("queue")}, indent=2
                )
            )
