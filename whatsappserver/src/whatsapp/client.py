"""WhatsApp Cloud API (Graph API) client: mark a message read, send a text. httpx, async.

Every call has a timeout and a bounded retry: throughput and pair rate limits (130429, 131056, and the
account-level 4 / 80007) and 5xx answers are retried with exponential backoff and jitter, honouring
Retry-After; anything else raises at once. Errors are frozen dataclasses picked from a registry keyed by
Graph error code (the pywa model), so callers catch `AuthenticationError` or `ReEngagementRequired`
instead of parsing JSON. Nothing logged here at INFO holds a phone number or message text.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

log = logging.getLogger(__name__)

MAX_TEXT_LENGTH = 4096  # Cloud API limit for a text body


# -- errors ------------------------------------------------------------------------------------------

_REGISTRY: dict[int, type[WhatsAppApiError]] = {}


@dataclass(frozen=True, eq=False)
class WhatsAppApiError(Exception):
    """The Graph API refused a request. Subclasses are chosen by `code`; unknown codes give this class."""

    codes: ClassVar[tuple[int, ...]] = ()
    retryable: ClassVar[bool] = False
    hint: ClassVar[str] = ""

    status_code: int
    code: int
    message: str
    details: str | None = None
    error_subcode: int | None = None
    error_type: str | None = None
    fbtrace_id: str | None = None
    retry_after: float | None = field(default=None, compare=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for code in cls.__dict__.get("codes", ()):
            _REGISTRY[code] = cls

    def __str__(self) -> str:
        text = f"Graph API error {self.code} (HTTP {self.status_code}): {self.message}"
        if self.details and self.details != self.message:
            text += f" - {self.details}"
        if self.hint:
            text = f"{text.rstrip('.')}. {self.hint}"
        return text

    @classmethod
    def from_response(cls, response: httpx.Response) -> WhatsAppApiError:
        """Pick the subclass for the body's `error.code`; a body that is not Graph JSON still gives an error."""
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        retry_after = _retry_after(response)
        if not isinstance(error, dict):
            kind = ServerError if response.status_code >= 500 else WhatsAppApiError
            if response.status_code == 429:
                kind = RateLimitError
            return kind(
                status_code=response.status_code,
                code=-1,
                message=response.reason_phrase or "no Graph error body",
                retry_after=retry_after,
            )
        code = error.get("code")
        code = code if isinstance(code, int) else -1
        data = error.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        kind = _REGISTRY.get(code) or (ServerError if response.status_code >= 500 else WhatsAppApiError)
        if kind is WhatsAppApiError and 200 <= code <= 299:
            kind = PermissionDenied
        return kind(
            status_code=response.status_code,
            code=code,
            message=str(error.get("message") or ""),
            details=details if isinstance(details, str) else None,
            error_subcode=error.get("error_subcode") if isinstance(error.get("error_subcode"), int) else None,
            error_type=error.get("type") if isinstance(error.get("type"), str) else None,
            fbtrace_id=error.get("fbtrace_id") if isinstance(error.get("fbtrace_id"), str) else None,
            retry_after=retry_after,
        )


@dataclass(frozen=True, eq=False)
class AuthenticationError(WhatsAppApiError):
    """The access token is missing, malformed, expired or revoked."""

    codes: ClassVar[tuple[int, ...]] = (0, 190)
    hint: ClassVar[str] = (
        "Check WHATSAPP_ACCESS_TOKEN: generate a new token (a System User token does not expire) "
        "in Meta's WhatsApp Manager and restart the server"
    )


@dataclass(frozen=True, eq=False)
class PermissionDenied(WhatsAppApiError):
    """The token lacks the whatsapp_business_messaging permission, or the number belongs to another app."""

    codes: ClassVar[tuple[int, ...]] = (3, 10)
    hint: ClassVar[str] = (
        "The token needs the whatsapp_business_messaging permission on the WABA that owns "
        "WHATSAPP_PHONE_NUMBER_ID"
    )


@dataclass(frozen=True, eq=False)
class RateLimitError(WhatsAppApiError):
    """Too many calls or messages right now; retried with backoff."""

    codes: ClassVar[tuple[int, ...]] = (4, 80007, 130429, 131056)
    retryable: ClassVar[bool] = True


@dataclass(frozen=True, eq=False)
class SpamRateLimited(WhatsAppApiError):
    """Meta limits this number for quality reasons; retrying soon does not help."""

    codes: ClassVar[tuple[int, ...]] = (131048, 368)


@dataclass(frozen=True, eq=False)
class ServerError(WhatsAppApiError):
    """Meta's side failed (5xx, 'something went wrong', service unavailable); retried with backoff."""

    codes: ClassVar[tuple[int, ...]] = (1, 2, 131000, 131016, 133004)
    retryable: ClassVar[bool] = True


@dataclass(frozen=True, eq=False)
class InvalidParameter(WhatsAppApiError):
    """The request was malformed (a bug on our side, or an id that does not exist)."""

    codes: ClassVar[tuple[int, ...]] = (100, 131008, 131009)


@dataclass(frozen=True, eq=False)
class ReEngagementRequired(WhatsAppApiError):
    """More than 24 hours since the user last wrote: only a template message may be sent."""

    codes: ClassVar[tuple[int, ...]] = (131047,)


@dataclass(frozen=True, eq=False)
class RecipientUnavailable(WhatsAppApiError):
    """The message cannot reach this recipient (not on WhatsApp, not allowed in test mode, undeliverable)."""

    codes: ClassVar[tuple[int, ...]] = (131026, 131030, 131021, 133010, 131049, 131050)


@dataclass(frozen=True, eq=False)
class AccountProblem(WhatsAppApiError):
    """The business account is locked, unverified or has a payment problem."""

    codes: ClassVar[tuple[int, ...]] = (131031, 131042, 131045, 133005)


class WhatsAppConfigError(RuntimeError):
    """A setting the client needs is missing; the message names it."""


class WhatsAppNetworkError(RuntimeError):
    """Meta could not be reached after the retries (timeouts, connection errors)."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


# -- client ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SentMessage:
    """What Meta answers to a send: the new message id (wamid) and the recipient's wa_id."""

    message_id: str
    wa_id: str | None


class WhatsAppClient:
    """One phone number's messages endpoint. Build once (it holds a connection pool); `aclose()` at shutdown."""

    def __init__(
        self,
        access_token: str,
        phone_number_id: str,
        *,
        base_url: str = "https://graph.facebook.com",
        api_version: str = "v21.0",
        timeout: float = 10.0,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        missing = [
            name
            for name, value in (
                ("WHATSAPP_ACCESS_TOKEN", access_token),
                ("WHATSAPP_PHONE_NUMBER_ID", phone_number_id),
            )
            if not value
        ]
        if missing:
            raise WhatsAppConfigError(
                f"replies need {' and '.join(missing)}: set {'it' if len(missing) == 1 else 'them'} in the "
                "environment or .env (Meta App Dashboard > WhatsApp > API Setup), or turn AUTO_REPLY/ALERTS off"
            )
        self.phone_number_id = phone_number_id
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._http = httpx.AsyncClient(
            base_url=f"{base_url.rstrip('/')}/{api_version.strip('/')}/",
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def mark_as_read(self, message_id: str) -> bool:
        """Blue ticks on a received message (it must be one Meta delivered to this number)."""
        body = await self._post({"messaging_product": "whatsapp", "status": "read", "message_id": message_id})
        return bool(body.get("success", False))

    async def send_text(
        self, to: str, text: str, *, reply_to: str | None = None, preview_url: bool = False
    ) -> SentMessage:
        """Send a text message to a wa_id; `reply_to` quotes the message it answers."""
        if not text.strip():
            raise ValueError("a WhatsApp text message cannot be empty")
        if len(text) > MAX_TEXT_LENGTH:
            text = text[: MAX_TEXT_LENGTH - 1] + "\u2026"
        payload: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": {"preview_url": preview_url, "body": text},
        }
        if reply_to:
            payload["context"] = {"message_id": reply_to}
        body = await self._post(payload)
        messages = body.get("messages")
        contacts = body.get("contacts")
        message_id = messages[0].get("id") if isinstance(messages, list) and messages else None
        wa_id = contacts[0].get("wa_id") if isinstance(contacts, list) and contacts else None
        if not isinstance(message_id, str):
            raise WhatsAppApiError(status_code=200, code=-1, message="send answered without a message id")
        return SentMessage(message_id=message_id, wa_id=wa_id if isinstance(wa_id, str) else None)

    async def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        path = f"{self.phone_number_id}/messages"
        attempt = 0
        while True:
            try:
                response = await self._http.post(path, json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt >= self.max_retries:
                    raise WhatsAppNetworkError(
                        f"Graph API unreachable after {attempt + 1} attempts: {type(exc).__name__}"
                    ) from exc
                delay = self._backoff(attempt, None)
                log.warning("Graph API %s, retry %d in %.1fs", type(exc).__name__, attempt + 1, delay)
            else:
                if response.is_success:
                    try:
                        body = response.json()
                    except ValueError:
                        body = {}
                    return body if isinstance(body, dict) else {}
                error = WhatsAppApiError.from_response(response)
                if not error.retryable or attempt >= self.max_retries:
                    raise error
                delay = self._backoff(attempt, error.retry_after)
                log.warning(
                    "Graph API error %s (HTTP %s), retry %d in %.1fs",
                    error.code,
                    error.status_code,
                    attempt + 1,
                    delay,
                )
            attempt += 1
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        return min(self.backoff_max, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)
