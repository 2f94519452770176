"""WhatsApp Cloud API webhooks: the signature check, the payload models, and the walk to InboundMessage.

Pure functions, no I/O: the route reads the body, calls these, and stores what they return. Every entry,
change, message and status of a POST is walked (Meta batches them); nothing is taken from only the first.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from src.store.base import InboundMessage

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
SIGNATURE_PREFIX = "sha256="


class WebhookError(ValueError):
    """The body is not a WhatsApp webhook; the message says why (answered with 400)."""


def sign(body: bytes, app_secret: str) -> str:
    """The X-Hub-Signature-256 value Meta sends for `body`."""
    return SIGNATURE_PREFIX + hmac.digest(app_secret.encode("utf-8"), body, "sha256").hex()


def signature_is_valid(body: bytes, header_value: str, app_secret: str) -> bool:
    """HMAC-SHA256 over the exact raw bytes, compared in constant time."""
    if not header_value.startswith(SIGNATURE_PREFIX):
        return False
    return hmac.compare_digest(sign(body, app_secret), header_value.strip())


# -- payload models (only the fields we use; everything else is kept in `raw`) -----------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class Profile(_Lenient):
    name: str | None = None


class Contact(_Lenient):
    wa_id: str | None = None
    user_id: str | None = None
    profile: Profile | None = None


class ChangeValue(_Lenient):
    messaging_product: str | None = None
    metadata: dict[str, Any] | None = None
    contacts: list[Contact] = Field(default_factory=list)
    messages: list[dict[str, Any]] = Field(default_factory=list)
    statuses: list[dict[str, Any]] = Field(default_factory=list)


class Change(_Lenient):
    field: str | None = None
    value: ChangeValue | None = None


class Entry(_Lenient):
    id: str | None = None
    changes: list[Change] = Field(default_factory=list)


class WebhookPayload(_Lenient):
    object: str
    entry: list[Entry]


# -- the walk ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class MessageEdit:
    """`type: edit`: the original message's text is replaced and extracted again."""

    original_id: str
    text: str
    raw: dict[str, Any]


@dataclass(slots=True)
class ParsedWebhook:
    """What one POST holds, sorted by what the server does with it."""

    messages: list[InboundMessage] = field(default_factory=list)
    edits: list[MessageEdit] = field(default_factory=list)
    statuses: int = 0
    reactions: int = 0
    unsupported: int = 0
    invalid: list[str] = field(default_factory=list)


# Types whose text we read; any other type is still stored (nothing dropped) with empty text.
TEXT_TYPES = {"text", "image", "video", "document", "interactive", "button", "edit", "reaction"}


def _text_of(message: dict[str, Any]) -> str:
    """The human text of a message: body, media caption, button or list reply, template button."""
    kind = message.get("type")
    part = message.get(kind) if isinstance(kind, str) else None
    if not isinstance(part, dict):
        return ""
    if kind == "text":
        body = part.get("body")
        return body if isinstance(body, str) else ""
    if kind in ("image", "video", "document"):
        caption = part.get("caption")
        return caption if isinstance(caption, str) else ""
    if kind == "interactive":
        for reply_kind in ("button_reply", "list_reply", "nfm_reply"):
            reply = part.get(reply_kind)
            if isinstance(reply, dict):
                pieces = [reply.get("title"), reply.get("description")]
                return " - ".join(p for p in pieces if isinstance(p, str) and p)
        return ""
    if kind == "button":
        value = part.get("text") or part.get("payload")
        return value if isinstance(value, str) else ""
    if kind == "location":
        pieces = [part.get("name"), part.get("address")]
        return ", ".join(p for p in pieces if isinstance(p, str) and p)
    return ""


_MAX_RAW_DEPTH = 32


def clean_text(value: str) -> str:
    """Text every store accepts: no NUL (Postgres refuses it), no lone surrogates (not encodable in UTF-8)."""
    if value.isascii():  # the common case, and a flag lookup in CPython: only NUL can be wrong here
        return value.replace("\x00", "") if "\x00" in value else value
    if "\x00" in value:
        value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _clean_json(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with clean strings; nesting beyond any real payload is cut."""
    if depth > _MAX_RAW_DEPTH:
        return "…"
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k if isinstance(k, str) else str(k)): _clean_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v, depth + 1) for v in value]
    return value


def _optional_text(value: Any) -> str | None:
    return clean_text(value) if isinstance(value, str) and value else None


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _sender_name(contacts: list[Contact], sender_id: str | None) -> str | None:
    for contact in contacts:
        if sender_id and sender_id in (contact.wa_id, contact.user_id):
            return contact.profile.name if contact.profile else None
    if len(contacts) == 1 and contacts[0].profile:
        return contacts[0].profile.name
    return None


def parse_payload(data: Any) -> ParsedWebhook:
    """Walk every entry, change, message and status. Raises WebhookError when the shape is not a webhook."""
    if not isinstance(data, dict):
        raise WebhookError("the body must be a JSON object with 'object' and 'entry'")
    try:
        payload = WebhookPayload.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise WebhookError(f"not a WhatsApp webhook: {where}: {first['msg']}") from None

    parsed = ParsedWebhook()
    for entry in payload.entry:
        for change in entry.changes:
            value = change.value
            if value is None:
                continue
            parsed.statuses += len(value.statuses)
            for message in value.messages:
                _walk_message(message, value, parsed)
    return parsed


def _walk_message(message: dict[str, Any], value: ChangeValue, parsed: ParsedWebhook) -> None:
    message_id = message.get("id")
    kind = message.get("type")
    if not isinstance(message_id, str) or not message_id or not isinstance(kind, str):
        parsed.invalid.append("a message without a string 'id' and 'type'")
        return
    if kind == "reaction":
        parsed.reactions += 1
        return
    message_id = clean_text(message_id)
    sender_id = _optional_text(message.get("from")) or _optional_text(message.get("from_user_id"))
    if kind == "edit":
        edit = message.get("edit")
        original = edit.get("original_message_id") if isinstance(edit, dict) else None
        inner = edit.get("message") if isinstance(edit, dict) else None
        if not isinstance(original, str) or not isinstance(inner, dict):
            parsed.invalid.append("an edit without 'original_message_id' and 'message'")
            return
        parsed.edits.append(
            MessageEdit(
                original_id=clean_text(original), text=clean_text(_text_of(inner)), raw=_clean_json(message)
            )
        )
        return
    if kind not in TEXT_TYPES:
        parsed.unsupported += 1
    name = _sender_name(value.contacts, sender_id)
    parsed.messages.append(
        InboundMessage(
            id=message_id,
            source="webhook",
            chat_id=_optional_text(message.get("group_id")) or sender_id,
            sender_id=sender_id,
            sender_name=clean_text(name) if name else None,
            sent_at=_timestamp(message.get("timestamp")),
            wa_type=clean_text(kind),
            text=clean_text(_text_of(message)),
            raw=_clean_json(message),
        )
    )
