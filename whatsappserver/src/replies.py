"""Answers on WhatsApp: the top matches for a wanted message or a question, and alerts when a match is offered.

Both run as pipeline hooks, after a message is processed and stored, so a reply never delays the webhook's
200 and a failed send never undoes stored work. At most once: the store's `record_notification` key
(`reply:<message id>`, `alert:<sale message id>:<wanted message id>`) is written *before* sending, so a
restart, a redelivery or a re-processed edit can never send twice; a send that fails is logged, not retried
beyond the client's bounded retry.

Who never gets a reply: statuses (they are not messages), our own number's messages and echoes, chat-export
imports (history, not someone waiting), group messages (the Cloud API reply would go to one member), and
messages older than Meta's 24-hour customer-service window. Logs name message ids and error codes only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from src.query_understanding import understand_query
from src.store.base import ListingHit, SearchFilters, StoredMessage
from src.watch_models import WatchInfo, WatchListing, normalize_reference
from src.whatsapp.client import WhatsAppApiError, WhatsAppNetworkError

log = logging.getLogger(__name__)

# Meta accepts free-form text only within 24 hours of the user's last message.
SERVICE_WINDOW = timedelta(hours=24)
REPLY_TYPES = ("wanted", "question")
ALERT_CANDIDATES = 200
MIN_REFERENCE_LENGTH = 4
_LINE_LIMIT = 3500  # well under the 4096-character text limit, room for the header

_FRENCH = re.compile(
    r"\b(?:cherche|recherche|qui|vend|vends|ach[eè]te|une|des|prix|dispo|bonjour|merci|je|quelqu'un|avez)\b",
    re.IGNORECASE,
)


# "Qui vend une Daytona ?" names a watch and "vend": the extractor may call it a sale. It is a question.
_QUESTION_START = re.compile(
    r"^\s*(?:qui\b|quelqu.un\b|est.ce que\b|avez.vous\b|vous avez\b|y a.t.il\b|anyone\b|any1\b|who\b|"
    r"does anyone\b|has anyone\b|is there\b|do you have\b|where\b)",
    re.IGNORECASE,
)


def effective_type(text: str, message_type: str) -> str:
    """The extractor's type, except that a sentence asking who sells something is a question, not a sale."""
    if message_type in ("sale", "other") and "?" in text and _QUESTION_START.match(text):
        return "question"
    return message_type


class Sender(Protocol):
    """The part of WhatsAppClient replies use (a fake in tests)."""

    async def mark_as_read(self, message_id: str) -> bool: ...

    async def send_text(
        self, to: str, text: str, *, reply_to: str | None = None, preview_url: bool = False
    ) -> Any: ...


# -- who may be answered ------------------------------------------------------------------------------


def _digits(value: str | None) -> str:
    return re.sub(r"\D", "", value or "")


def is_own_message(message: StoredMessage, own_numbers: set[str]) -> bool:
    """An echo of what our number sent (it carries a `to`), or anything `from` our number or phone id."""
    raw = message.raw or {}
    if raw.get("to") or raw.get("echo"):
        return True
    sender = _digits(message.sender_id or (raw.get("from") if isinstance(raw.get("from"), str) else None))
    return bool(sender) and sender in own_numbers


def reply_refusal(message: StoredMessage, own_numbers: set[str], now: datetime) -> str | None:
    """Why this message must not be answered on WhatsApp, or None when it may be."""
    if message.source != "webhook":
        return "not received on the business number"
    if not message.sender_id or not _digits(message.sender_id):
        return "no reachable sender"
    if is_own_message(message, own_numbers):
        return "our own message"
    if (message.raw or {}).get("group_id"):
        return "group message"
    if message.sent_at is not None and now - message.sent_at > SERVICE_WINDOW:
        return "older than the 24-hour service window"
    return None


# -- formatting ---------------------------------------------------------------------------------------


def is_french(text: str) -> bool:
    return len(_FRENCH.findall(text)) >= 1


def format_price(hit: ListingHit, french: bool) -> str:
    """The price as the seller wrote it (currency kept), or 'on request'."""
    if hit.price is None:
        return "prix sur demande" if french else "price on request"
    amount = f"{hit.price:,.0f}"
    amount = amount.replace(",", "\u202f") if french else amount
    symbol = {"EUR": "€", "USD": "$", "GBP": "£", "CHF": "CHF"}.get(hit.currency or "", hit.currency or "")
    if symbol in ("$", "£") and not french:
        return f"{symbol}{amount}"
    return f"{amount} {symbol}".strip()


def format_match(index: int, hit: ListingHit, french: bool) -> str:
    """`1. Rolex GMT-Master II 126710BLRO - 18 500 € - Alice Faux, 12/03/2024`"""
    watch = " ".join(part for part in (hit.brand, hit.model, hit.reference) if part)
    if not watch:
        watch = " ".join(hit.text.split())[:60] or ("montre" if french else "watch")
    seller = hit.sender_name or ("vendeur inconnu" if french else "unknown seller")
    when = ""
    if hit.sent_at is not None:
        when = hit.sent_at.strftime("%d/%m/%Y" if french else "%Y-%m-%d")
    parts = [f"{index}. {watch}", format_price(hit, french), f"{seller}, {when}".rstrip(", ")]
    return " - ".join(parts)


def format_reply(query: str, hits: list[ListingHit], *, alerts_on: bool) -> str:
    french = is_french(query)
    if not hits:
        text = "Aucune annonce correspondante pour le moment." if french else "No matching listing yet."
        if alerts_on:
            text += (
                " Vous serez prévenu dès qu'une montre correspondante sera proposée."
                if french
                else " You will be told as soon as a matching watch is offered."
            )
        return text
    header = "Annonces correspondantes :" if french else "Matching listings:"
    lines = [header]
    size = len(header)
    for index, hit in enumerate(hits, start=1):
        line = format_match(index, hit, french)
        if size + len(line) > _LINE_LIMIT:
            break
        lines.append(line)
        size += len(line) + 1
    if alerts_on:
        lines.append(
            "Vous serez prévenu des nouvelles annonces." if french else "You will be told of new listings."
        )
    return "\n".join(lines)


def format_alert(wanted: ListingHit, sale: ListingHit) -> str:
    french = is_french(wanted.message_text or wanted.text)
    asked = " ".join((wanted.message_text or wanted.text).split())
    if len(asked) > 80:
        asked = asked[:77] + "..."
    match = format_match(1, sale, french)[3:]  # no "1. "
    if french:
        return f"Nouvelle annonce pour votre recherche « {asked} » :\n{match}"
    return f'New listing for your request "{asked}":\n{match}'


# -- matching a sale against open wanted listings -----------------------------------------------------


def wanted_budget_eur(wanted: ListingHit) -> float | None:
    """The budget stated: the listing's own price, else what the message says ('budget 17k', 'sous 20k')."""
    if wanted.price_eur is not None:
        return wanted.price_eur
    return understand_query(wanted.message_text or wanted.text).filters.max_price_eur


def sale_matches_wanted(sale: WatchListing, wanted: ListingHit, budget_eur: float | None) -> bool:
    """Same reference (the sale's at least as precise as the one wanted), or same brand and model; and
    within the stated budget when one is stated (a trader who says 'budget 17k' does not want the 25k one)."""
    sale_ref = normalize_reference(sale.reference or "")
    wanted_ref = normalize_reference(wanted.reference or "")
    if sale_ref and wanted_ref:
        same = len(wanted_ref) >= MIN_REFERENCE_LENGTH and sale_ref.startswith(wanted_ref)
    else:
        same = bool(
            sale.brand
            and sale.model
            and wanted.brand
            and wanted.model
            and sale.brand.casefold() == wanted.brand.casefold()
            and sale.model.casefold() == wanted.model.casefold()
        )
    if not same:
        return False
    if budget_eur is None:
        return True
    return sale.price_eur is not None and sale.price_eur <= budget_eur


def _sale_hit(message: StoredMessage, watch: WatchListing, position: int) -> ListingHit:
    """The sale as search results show it, for the alert text."""
    return ListingHit(
        listing_id=0,
        message_id=message.id,
        position=position,
        message_type="sale",
        brand=watch.brand,
        model=watch.model,
        reference=watch.reference,
        price=watch.price,
        currency=watch.currency,
        price_eur=watch.price_eur,
        condition=watch.condition,
        year=watch.year,
        box=watch.box,
        papers=watch.papers,
        confidence=0.0,
        text=watch.text or message.text,
        created_at=None,
        message_text=message.text,
        sender_id=message.sender_id,
        sender_name=message.sender_name,
        chat_id=message.chat_id,
        sent_at=message.sent_at or message.received_at,
    )


# -- the hook -----------------------------------------------------------------------------------------


@dataclass
class ReplyOptions:
    auto_reply: bool
    alerts: bool
    own_numbers: set[str]
    max_matches: int = 5
    wanted_max_age: timedelta = timedelta(days=30)


class Replier:
    """Pipeline hook: `services.pipeline.hooks.append(replier.on_processed)`."""

    def __init__(self, services: Any, sender: Sender, options: ReplyOptions) -> None:
        self.services = services
        self.sender = sender
        self.options = options
        self.replies_sent = 0
        self.alerts_sent = 0

    def _searcher(self) -> Any:
        """The shared RagSearcher, built at start-up by src/api/search.py (after us: looked up lazily)."""
        searcher = self.services.extras.get("searcher")
        if searcher is None:
            from src.rag_searcher import RagSearcher

            searcher = self.services.extras["searcher"] = RagSearcher.from_services(self.services)
        return searcher

    async def on_processed(self, message: StoredMessage, info: WatchInfo) -> None:
        kind = effective_type(message.text, info.message_type)
        if self.options.auto_reply and kind in REPLY_TYPES:
            await self.auto_reply(message, info)
        if self.options.alerts and kind == "sale" and info.watches:
            await self.send_alerts(message, info)

    async def find_matches(self, message: StoredMessage, info: WatchInfo) -> list[ListingHit]:
        """Sale listings for a wanted message; for a question, what it asks (sale unless it says otherwise)."""
        searcher = self._searcher()
        understood = searcher.understand(message.text)
        kind = "sale" if info.message_type == "wanted" else (understood.filters.message_type or "sale")
        results = await searcher.search(
            message.text, limit=self.options.max_matches + 5, overrides=SearchFilters(message_type=kind)
        )
        hits = [
            r.hit
            for r in results.results
            if r.hit.message_id != message.id
            and not (message.sender_id and r.hit.sender_id == message.sender_id)
        ]
        return hits[: self.options.max_matches]

    async def auto_reply(self, message: StoredMessage, info: WatchInfo) -> bool:
        refusal = reply_refusal(message, self.options.own_numbers, datetime.now(UTC))
        if refusal is not None:
            log.debug("no reply to %s: %s", message.id, refusal)
            return False
        if not await self.services.store.record_notification(f"reply:{message.id}"):
            return False  # already answered (redelivery, edit, restart)
        hits = await self.find_matches(message, info)
        text = format_reply(message.text, hits, alerts_on=self.options.alerts)
        try:
            await self._mark_read(message.id)
            await self.sender.send_text(message.sender_id or "", text, reply_to=message.id)
        except (WhatsAppApiError, WhatsAppNetworkError) as exc:
            log.warning("reply to %s not sent: %s", message.id, _error_label(exc))
            return False
        self.replies_sent += 1
        log.info("replied to %s with %d matches", message.id, len(hits))
        return True

    async def _mark_read(self, message_id: str) -> None:
        try:
            await self.sender.mark_as_read(message_id)
        except (WhatsAppApiError, WhatsAppNetworkError) as exc:  # blue ticks are a courtesy
            log.info("could not mark %s read: %s", message_id, _error_label(exc))

    async def open_wanted(self, watch: WatchListing, since: datetime) -> list[ListingHit]:
        """Wanted listings that could match this watch (narrowed by brand, or by the reference's stem)."""
        store = self.services.store
        if watch.brand:
            filters = SearchFilters(message_type="wanted", brand=watch.brand, since=since)
        elif watch.reference and len(normalize_reference(watch.reference)) >= MIN_REFERENCE_LENGTH:
            stem = normalize_reference(watch.reference)[:MIN_REFERENCE_LENGTH]
            filters = SearchFilters(message_type="wanted", reference=stem, since=since)
        else:
            return []
        hits: list[ListingHit] = await store.list_listings(filters, ALERT_CANDIDATES)
        return hits

    async def send_alerts(self, message: StoredMessage, info: WatchInfo) -> int:
        """Tell each open wanted listing's author once about this sale; returns how many were sent."""
        if is_own_message(message, self.options.own_numbers):
            return 0
        posted = message.sent_at or message.received_at or datetime.now(UTC)
        since = datetime.now(UTC) - self.options.wanted_max_age
        told: set[str] = set()
        sent = 0
        for position, watch in enumerate(info.watches):
            for wanted in await self.open_wanted(watch, since):
                recipient = wanted.sender_id
                if not recipient or recipient in told or recipient == message.sender_id:
                    continue
                if wanted.sent_at is not None and wanted.sent_at > posted:
                    continue  # the sale came first: the wanted message got it in its own reply
                if not sale_matches_wanted(watch, wanted, wanted_budget_eur(wanted)):
                    continue
                origin = await self.services.store.get_message(wanted.message_id)
                if origin is None or reply_refusal(
                    replace(origin, sent_at=None), self.options.own_numbers, posted
                ):
                    continue  # history from an export, a group, our own: nobody to tell on WhatsApp
                if not await self.services.store.record_notification(
                    f"alert:{message.id}:{wanted.message_id}"
                ):
                    told.add(recipient)
                    continue
                told.add(recipient)
                try:
                    await self.sender.send_text(
                        recipient, format_alert(wanted, _sale_hit(message, watch, position))
                    )
                except (WhatsAppApiError, WhatsAppNetworkError) as exc:
                    log.warning(
                        "alert for %s about %s not sent: %s", wanted.message_id, message.id, _error_label(exc)
                    )
                    continue
                sent += 1
        self.alerts_sent += sent
        if sent:
            log.info("sale %s: %d alerts sent", message.id, sent)
        return sent


def _error_label(exc: Exception) -> str:
    if isinstance(exc, WhatsAppApiError):
        return f"{type(exc).__name__} (Graph error {exc.code}, HTTP {exc.status_code})"
    return type(exc).__name__


def options_from_settings(settings: Any) -> ReplyOptions:
    own = {_digits(settings.WHATSAPP_BUSINESS_NUMBER), _digits(settings.WHATSAPP_PHONE_NUMBER_ID)} - {""}
    return ReplyOptions(
        auto_reply=settings.AUTO_REPLY,
        alerts=settings.ALERTS,
        own_numbers=own,
        max_matches=max(1, settings.REPLY_MAX_MATCHES),
        wanted_max_age=timedelta(days=max(1, settings.ALERT_WANTED_MAX_AGE_DAYS)),
    )
