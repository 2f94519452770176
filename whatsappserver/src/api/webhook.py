"""GET and POST /webhook: Meta's verification handshake and message intake (kept out of the OpenAPI page).

GET is a FastAPI route; POST is a bare ASGI handler that the app calls before its router (see app.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response

from src import fast_json
from src.api.deps import ServicesDep
from src.services import Services
from src.store.base import StoreError
from src.whatsapp.webhook import (
    SIGNATURE_HEADER,
    ParsedWebhook,
    WebhookError,
    parse_payload,
    signature_is_valid,
)

log = logging.getLogger(__name__)

router = APIRouter()


class BodyTooLarge(Exception):
    pass


@router.get("/webhook", include_in_schema=False)
async def verify_webhook(
    services: ServicesDep,
    mode: str | None = Query(default=None, alias="hub.mode"),
    token: str | None = Query(default=None, alias="hub.verify_token"),
    challenge: str | None = Query(default=None, alias="hub.challenge"),
) -> Response:
    """Meta's subscription handshake: echo the challenge when the verify token matches."""
    expected = services.settings.WHATSAPP_VERIFY_TOKEN
    if mode != "subscribe":
        return PlainTextResponse("hub.mode must be 'subscribe'", status_code=403)
    if not expected:
        return PlainTextResponse("WHATSAPP_VERIFY_TOKEN is not configured on this server", status_code=403)
    if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
        return PlainTextResponse("hub.verify_token does not match", status_code=403)
    return PlainTextResponse(challenge or "", status_code=200)


ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SIGNATURE_KEY = SIGNATURE_HEADER.lower().encode("latin-1")
_NUL_ESCAPE = b"\\u0000"


class ClientDisconnected(Exception):
    pass


async def _read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """Read at most `limit` bytes; refuse larger bodies before reading them whole."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _store(services: Services, parsed: ParsedWebhook) -> tuple[list[str], int]:
    """Insert the messages (pending) and apply the edits; returns (new ids, edits applied)."""
    inserted = await services.store.insert_messages(parsed.messages)
    edited = 0
    for edit in parsed.edits:
        if await services.store.apply_edit(edit.original_id, edit.text, edit.raw):
            edited += 1
    return inserted, edited


async def handle_webhook_post(
    services: Services, receive: Receive, headers: Mapping[bytes, bytes]
) -> tuple[int, dict[str, Any]]:
    """Store every message of the POST durably (pending), then answer 200; the worker does the rest.

    Returns (status, JSON body). A rejection names what is wrong; nothing already stored is undone.
    """
    settings = services.settings
    runtime = services.runtime
    runtime.webhook_posts += 1
    runtime.last_webhook_at = time.monotonic()
    declared = headers.get(b"content-length")
    try:
        body = await _read_body(
            receive, declared.decode("latin-1") if declared else None, settings.WEBHOOK_MAX_BODY_BYTES
        )
    except BodyTooLarge:
        runtime.rejected_requests += 1
        return 413, {"error": f"body larger than {settings.WEBHOOK_MAX_BODY_BYTES} bytes"}

    secret = settings.WHATSAPP_APP_SECRET
    if secret:
        header = headers.get(_SIGNATURE_KEY)
        if not header:
            runtime.rejected_requests += 1
            return 401, {"error": f"missing {SIGNATURE_HEADER} header"}
        if not signature_is_valid(body, header.decode("latin-1"), secret):
            runtime.rejected_requests += 1
            return 403, {"error": f"{SIGNATURE_HEADER} does not match the body"}
    try:
        data, lenient_parse = fast_json.loads_checked(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        runtime.rejected_requests += 1
        return 400, {"error": f"body is not JSON: {exc}"}
    except RecursionError:
        runtime.rejected_requests += 1
        return 400, {"error": "body is nested too deeply"}
    try:
        # A NUL or a lone surrogate can only come from an escape (or the lenient parser): clean copies then.
        parsed = parse_payload(data, clean=lenient_parse or _NUL_ESCAPE in body)
    except WebhookError as exc:
        runtime.rejected_requests += 1
        return 400, {"error": str(exc)}

    try:
        async with asyncio.timeout(settings.WEBHOOK_STORE_TIMEOUT_SECONDS):  # no extra task, unlike wait_for
            inserted, edited = await _store(services, parsed)
    except TimeoutError:
        # A write that lands after this is harmless: Meta's retry of the same ids is a duplicate.
        runtime.store_unavailable += 1
        log.error(
            "store did not answer within %ss, asking Meta to retry", settings.WEBHOOK_STORE_TIMEOUT_SECONDS
        )
        return 503, {"error": "storage too slow, retry later"}
    except StoreError as exc:
        runtime.store_unavailable += 1
        log.error("store unavailable, asking Meta to retry: %s", exc)
        return 503, {"error": "storage unavailable, retry later"}

    runtime.messages_accepted += len(inserted)
    runtime.duplicates_ignored += len(parsed.messages) - len(inserted)
    runtime.statuses_received += parsed.statuses
    runtime.reactions_received += parsed.reactions
    runtime.unsupported_received += parsed.unsupported
    runtime.invalid_messages += len(parsed.invalid)
    runtime.edits_applied += edited
    for reason in parsed.invalid:
        log.warning("skipped %s in a webhook POST", reason)
    if inserted or edited:
        services.pipeline.wake()
    return 200, {
        "status": "ok",
        "stored": len(inserted),
        "duplicates": len(parsed.messages) - len(inserted),
        "edits": edited,
        "statuses": parsed.statuses,
        "skipped": len(parsed.invalid),
    }


async def webhook_post_asgi(services: Services | None, scope: ASGIMessage, receive: Receive, send: Send) -> None:
    """POST /webhook as a bare ASGI handler: Meta's one hot path skips the framework's routing, dependency
    injection and middleware layers, which cost more CPU per request than storing ten messages durably.
    """
    if services is None:
        status, content = 503, {"error": "the server is starting, retry later"}
    else:
        headers = dict(scope["headers"])
        try:
            status, content = await handle_webhook_post(services, receive, headers)
        except ClientDisconnected:
            return
        except Exception:  # the same last resort as the framework's: log it, answer 500, keep serving
            log.exception("webhook POST failed")
            status, content = 500, {"error": "internal error"}
    body = orjson.dumps(content)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode("latin-1"))],
        }
    )
    await send({"type": "http.response.body", "body": body})
