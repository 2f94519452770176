"""Builders for WhatsApp Cloud API webhook bodies, in the shape Meta sends (numbers are obviously fake)."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from src.whatsapp.webhook import SIGNATURE_HEADER, sign

BUSINESS_NUMBER = "15550100001"
PHONE_NUMBER_ID = "100000000000001"
_counter = itertools.count(1)


def fake_phone(n: int) -> str:
    """A number in the 555-01xx range reserved for fiction."""
    return f"1555010{n:04d}"


def text_message(
    body: str, *, sender: str | None = None, message_id: str | None = None, timestamp: int | None = None
) -> dict[str, Any]:
    return {
        "from": sender or fake_phone(1),
        "id": message_id or f"wamid.TEST{next(_counter):08d}{int(time.time() * 1000)}",
        "timestamp": str(timestamp or int(time.time())),
        "type": "text",
        "text": {"body": body},
    }


def change(messages: list[dict[str, Any]], *, names: dict[str, str] | None = None) -> dict[str, Any]:
    senders = {m.get("from") for m in messages if m.get("from")}
    return {
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": BUSINESS_NUMBER, "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [
                {"profile": {"name": (names or {}).get(s, f"Dealer {s[-2:]}")}, "wa_id": s}
                for s in sorted(senders)
            ],
            "messages": messages,
        },
    }


def payload(*changes_per_entry: list[dict[str, Any]]) -> dict[str, Any]:
    """One entry per argument, each a list of changes."""
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "100000000000009", "changes": changes} for changes in changes_per_entry],
    }


def body_and_headers(data: dict[str, Any] | bytes, secret: str | None) -> tuple[bytes, dict[str, str]]:
    body = data if isinstance(data, bytes) else json.dumps(data, ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    return body, headers
