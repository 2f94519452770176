"""WhatsApp Cloud API webhooks: the signature check, the payload models, and the walk to InboundMessage.

Pure functions, no I/O: the route reads the body, calls these, and stores what they return. Every entry,
change, message and status of a POST is walked (Meta batches them); nothing is taken from only the first.
"""

from __future__ import annotations

import functools
import hmac
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from src import fast_json
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


@functools.lru_cache(maxsize=1024)
def _timestamp_of_text(value: str) -> datetime | None:
    """Memoised: the messages of one POST (and of one second) share a timestamp."""
    return _timestamp_uncached(value)


def _timestamp_uncached(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _timestamp(value: Any) -> datetime | None:
    return _timestamp_of_text(value) if isinstance(value, str) else _timestamp_uncached(value)


def _sender_name(contacts: list[dict[str, Any]], sender_id: str | None) -> str | None:
    for contact in contacts:
        if sender_id and sender_id in (contact.get("wa_id"), contact.get("user_id")):
            profile = contact.get("profile")
            return profile.get("name") if profile else None
    if len(contacts) == 1 and contacts[0].get("profile"):
        return contacts[0]["profile"].get("name")
    return None


def _optional(value: Any, kind: type) -> bool:
    return value is None or type(value) is kind


# The default of a list field that is absent (never mutated): iterating it walks nothing.
_ABSENT: list[Any] = []


def _list_of_dicts(container: dict[str, Any], key: str) -> bool:
    """The key is absent, or a list of objects (what the models' `list[...] = []` fields accept)."""
    value = container.get(key, _ABSENT)
    return value is _ABSENT or (type(value) is list and all(type(item) is dict for item in value))


def _contact_ok(contact: dict[str, Any]) -> bool:
    profile = contact.get("profile")
    return (
        _optional(contact.get("wa_id"), str)
        and _optional(contact.get("user_id"), str)
        and (profile is None or (type(profile) is dict and _optional(profile.get("name"), str)))
    )


def _has_model_shape(data: dict[str, Any]) -> bool:
    """True when `data` holds exactly the JSON types the payload models accept, as every real webhook does.

    Then the models would accept it unchanged, so validating it through them (a copy of every message) is
    skipped; anything else goes through the models, which accept it or say precisely what is wrong.
    """
    if type(data.get("object")) is not str or not _list_of_dicts(data, "entry") or "entry" not in data:
        return False
    for entry in data["entry"]:
        if not _optional(entry.get("id"), str) or not _list_of_dicts(entry, "changes"):
            return False
        for change in entry.get("changes", _ABSENT):
            value = change.get("value")
            if not _optional(change.get("field"), str) or not _optional(value, dict):
                return False
            if value is None:
                continue
            if not (
                _optional(value.get("messaging_product"), str)
                and _optional(value.get("metadata"), dict)
                and _list_of_dicts(value, "contacts")
                and _list_of_dicts(value, "messages")
                and _list_of_dicts(value, "statuses")
                and all(_contact_ok(contact) for contact in value.get("contacts", _ABSENT))
            ):
                return False
    return True


def parse_payload(data: Any, *, clean: bool = True) -> ParsedWebhook:
    """Walk every entry, change, message and status. Raises WebhookError when the shape is not a webhook.

    `clean=False` is for bodies known to hold no NUL and no lone surrogate (orjson parsed them and no
    `\\u0000` escape occurs): each message's dict is then kept as its raw record without a cleaned copy.
    """
    if not isinstance(data, dict):
        raise WebhookError("the body must be a JSON object with 'object' and 'entry'")
    if not _has_model_shape(data):
        try:
            WebhookPayload.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise WebhookError(f"not a WhatsApp webhook: {where}: {first['msg']}") from None

    parsed = ParsedWebhook()
    for entry in data["entry"]:
        for change in entry.get("changes", _ABSENT):
            value = change.get("value")
            if value is None:
                continue
            parsed.statuses += len(value.get("statuses", _ABSENT))
            contacts = value.get("contacts", _ABSENT)
            for message in value.get("messages", _ABSENT):
                _walk_message(message, contacts, parsed, clean)
    return parsed


def _raw_record(message: dict[str, Any], clean: bool) -> tuple[dict[str, Any], str]:
    """The message as stored, and its JSON text (serialised once, here).

    Without `clean`, the parsed dict itself (no copy); a dict nested past orjson's 254 levels can only be
    hostile, and is cut to the cleaned copy's depth like any unclean one.
    """
    if not clean:
        try:
            return message, orjson.dumps(message).decode("utf-8")
        except orjson.JSONEncodeError:
            pass
    raw = _clean_json(message)
    return raw, fast_json.dumps(raw)


def _walk_message(message: dict[str, Any], contacts: list[dict[str, Any]], parsed: ParsedWebhook, clean: bool) -> None:
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
    raw, raw_json = _raw_record(message, clean)
    if kind == "edit":
        edit = message.get("edit")
        original = edit.get("original_message_id") if isinstance(edit, dict) else None
        inner = edit.get("message") if isinstance(edit, dict) else None
        if not isinstance(original, str) or not isinstance(inner, dict):
            parsed.invalid.append("an edit without 'original_message_id' and 'message'")
            return
        parsed.edits.append(
            MessageEdit(original_id=clean_text(original), text=clean_text(_text_of(inner)), raw=raw)
        )
        return
    if kind not in TEXT_TYPES:
        parsed.unsupported += 1
    name = _sender_name(contacts, sender_id)
    parsed.messages.append(
        InboundMessage(
            id=message_id,
            source="webhook",
            chat_id=_optional_text(message.get("group_id")) or sender_id,
            sender_id=sender_id,
            sender_name=clean_text(name) if isinstance(name, str) and name else None,
            sent_at=_timestamp(message.get("timestamp")),
            wa_type=clean_text(kind),
            text=clean_text(_text_of(message)),
            raw=raw,
            raw_json=raw_json,
        )
    )
