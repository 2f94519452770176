"""GET and POST /webhook: Meta's verification handshake and message intake (kept out of the OpenAPI page)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

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


def _problem(status: int, reason: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": reason})


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


async def _read_body(request: Request, limit: int) -> bytes:
    """Read at most `limit` bytes; refuse larger bodies before reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _store(services: Services, parsed: ParsedWebhook) -> tuple[list[str], int]:
    """Insert the messages (pending) and apply the edits; returns (new ids, edits applied)."""
    inserted = await services.store.insert_messages(parsed.messages)
    edited = 0
    for edit in parsed.edits:
        if await services.store.apply_edit(edit.original_id, edit.text, edit.raw):
            edited += 1
    return inserted, edited


@router.post("/webhook", include_in_schema=False)
async def receive_webhook(request: Request, services: ServicesDep) -> Response:
    """Store every message of the POST durably (pending), then answer 200; the worker does the rest."""
    settings = services.settings
    runtime = services.runtime
    runtime.webhook_posts += 1
    runtime.last_webhook_at = time.monotonic()
    try:
        body = await _read_body(request, settings.WEBHOOK_MAX_BODY_BYTES)
    except BodyTooLarge:
        runtime.rejected_requests += 1
        return _problem(413, f"body larger than {settings.WEBHOOK_MAX_BODY_BYTES} bytes")

    secret = settings.WHATSAPP_APP_SECRET
    if secret:
        header = request.headers.get(SIGNATURE_HEADER)
        if not header:
            runtime.rejected_requests += 1
            return _problem(401, f"missing {SIGNATURE_HEADER} header")
        if not signature_is_valid(body, header, secret):
            runtime.rejected_requests += 1
            return _problem(403, f"{SIGNATURE_HEADER} does not match the body")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        runtime.rejected_requests += 1
        return _problem(400, f"body is not JSON: {exc}")
    except RecursionError:
        runtime.rejected_requests += 1
        return _problem(400, "body is nested too deeply")
    try:
        parsed = parse_payload(data)
    except WebhookError as exc:
        runtime.rejected_requests += 1
        return _problem(400, str(exc))

    try:
        inserted, edited = await asyncio.wait_for(
            _store(services, parsed), timeout=settings.WEBHOOK_STORE_TIMEOUT_SECONDS
        )
    except TimeoutError:
        # A write that lands after this is harmless: Meta's retry of the same ids is a duplicate.
        runtime.store_unavailable += 1
        log.error(
            "store did not answer within %ss, asking Meta to retry", settings.WEBHOOK_STORE_TIMEOUT_SECONDS
        )
        return _problem(503, "storage too slow, retry later")
    except StoreError as exc:
        runtime.store_unavailable += 1
        log.error("store unavailable, asking Meta to retry: %s", exc)
        return _problem(503, "storage unavailable, retry later")

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
    return JSONResponse(
        {
            "status": "ok",
            "stored": len(inserted),
            "duplicates": len(parsed.messages) - len(inserted),
            "edits": edited,
            "statuses": parsed.statuses,
            "skipped": len(parsed.invalid),
        }
    )
