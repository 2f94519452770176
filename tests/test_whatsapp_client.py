"""Graph API client against respx: request shape, retries with backoff, and the error registry."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from src.whatsapp.client import (
    AuthenticationError,
    InvalidParameter,
    PermissionDenied,
    RateLimitError,
    ReEngagementRequired,
    ServerError,
    WhatsAppApiError,
    WhatsAppClient,
    WhatsAppConfigError,
    WhatsAppNetworkError,
)

BASE = "https://graph.test"
PHONE_ID = "100000000000001"
URL = f"{BASE}/v21.0/{PHONE_ID}/messages"
TOKEN = "EAAtest-token"


def graph_error(code: int, message: str = "boom", status: int = 400, **extra: object) -> httpx.Response:
    error = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "Atrace", **extra}
    return httpx.Response(status, json={"error": error})


SENT = httpx.Response(
    200,
    json={
        "messaging_product": "whatsapp",
        "contacts": [{"input": "15550100002", "wa_id": "15550100002"}],
        "messages": [{"id": "wamid.SENT1"}],
    },
)


@pytest.fixture
async def client() -> AsyncIterator[WhatsAppClient]:
    wa = WhatsAppClient(
        TOKEN, PHONE_ID, base_url=BASE, api_version="v21.0", backoff_base=0.001, max_retries=3
    )
    yield wa
    await wa.aclose()


@respx.mock
async def test_send_text_request_shape(client: WhatsAppClient) -> None:
    route = respx.post(URL).mock(return_value=SENT)
    sent = await client.send_text("15550100002", "Bonjour", reply_to="wamid.IN1")
    assert sent.message_id == "wamid.SENT1" and sent.wa_id == "15550100002"
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15550100002",
        "type": "text",
        "text": {"preview_url": False, "body": "Bonjour"},
        "context": {"message_id": "wamid.IN1"},
    }


@respx.mock
async def test_mark_as_read_request_shape(client: WhatsAppClient) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(200, json={"success": True}))
    assert await client.mark_as_read("wamid.IN1") is True
    assert json.loads(route.calls.last.request.content) == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.IN1",
    }


@respx.mock
async def test_long_texts_are_cut_to_the_api_limit(client: WhatsAppClient) -> None:
    route = respx.post(URL).mock(return_value=SENT)
    await client.send_text("15550100002", "x" * 5000)
    assert len(json.loads(route.calls.last.request.content)["text"]["body"]) == 4096
    with pytest.raises(ValueError):
        await client.send_text("15550100002", "  ")


@pytest.mark.parametrize("code", [130429, 131056, 80007, 4])
@respx.mock
async def test_rate_limits_are_retried_then_succeed(client: WhatsAppClient, code: int) -> None:
    route = respx.post(URL).mock(side_effect=[graph_error(code, "Rate limit hit"), graph_error(code), SENT])
    sent = await client.send_text("15550100002", "hi")
    assert sent.message_id == "wamid.SENT1"
    assert route.call_count == 3


@respx.mock
async def test_5xx_without_a_graph_body_is_retried(client: WhatsAppClient) -> None:
    route = respx.post(URL).mock(
        side_effect=[
            httpx.Response(502, text="<html>bad gateway</html>"),
            graph_error(131000, status=500),
            SENT,
        ]
    )
    assert (await client.send_text("15550100002", "hi")).message_id == "wamid.SENT1"
    assert route.call_count == 3


@respx.mock
async def test_retries_are_bounded(client: WhatsAppClient) -> None:
    route = respx.post(URL).mock(return_value=graph_error(130429, "Rate limit hit", status=400))
    with pytest.raises(RateLimitError) as info:
        await client.send_text("15550100002", "hi")
    assert route.call_count == 4  # first try + max_retries
    assert info.value.code == 130429 and info.value.retryable


@respx.mock
async def test_retry_after_is_honoured(client: WhatsAppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr("src.whatsapp.client.asyncio.sleep", fake_sleep)
    limited = httpx.Response(
        429, headers={"Retry-After": "7"}, json={"error": {"code": 4, "message": "slow"}}
    )
    respx.post(URL).mock(side_effect=[limited, SENT])
    await client.send_text("15550100002", "hi")
    assert delays == [7.0]


@respx.mock
async def test_backoff_grows_exponentially(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr("src.whatsapp.client.asyncio.sleep", fake_sleep)
    monkeypatch.setattr("src.whatsapp.client.random.uniform", lambda a, b: 1.0)
    wa = WhatsAppClient(TOKEN, PHONE_ID, base_url=BASE, backoff_base=1.0, backoff_max=5.0, max_retries=4)
    respx.post(URL).mock(return_value=graph_error(131056, status=400))
    with pytest.raises(RateLimitError):
        await wa.send_text("15550100002", "hi")
    await wa.aclose()
    assert delays == [1.0, 2.0, 4.0, 5.0]


@respx.mock
async def test_bad_token_is_a_clear_error_and_not_retried(client: WhatsAppClient) -> None:
    route = respx.post(URL).mock(
        return_value=graph_error(190, "Error validating access token: Session has expired.", status=401)
    )
    with pytest.raises(AuthenticationError) as info:
        await client.mark_as_read("wamid.IN1")
    assert route.call_count == 1
    text = str(info.value)
    assert "190" in text and "WHATSAPP_ACCESS_TOKEN" in text
    assert info.value.fbtrace_id == "Atrace"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (10, PermissionDenied),
        (200, PermissionDenied),
        (100, InvalidParameter),
        (131047, ReEngagementRequired),
        (131016, ServerError),
        (987654, WhatsAppApiError),
    ],
)
def test_error_registry(code: int, kind: type[WhatsAppApiError]) -> None:
    error = WhatsAppApiError.from_response(graph_error(code, error_data={"details": "more"}))
    assert type(error) is kind
    assert error.details == "more"
    with pytest.raises(kind):
        raise error


def test_errors_are_frozen() -> None:
    error = WhatsAppApiError.from_response(graph_error(190, status=401))
    with pytest.raises(AttributeError):
        error.code = 1  # type: ignore[misc]


@respx.mock
async def test_network_errors_are_retried_then_reported(client: WhatsAppClient) -> None:
    route = respx.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(WhatsAppNetworkError, match="4 attempts"):
        await client.send_text("15550100002", "hi")
    assert route.call_count == 4


@respx.mock
async def test_non_retryable_errors_raise_at_once(client: WhatsAppClient) -> None:
    route = respx.post(URL).mock(return_value=graph_error(131047, "Re-engagement message", status=400))
    with pytest.raises(ReEngagementRequired):
        await client.send_text("15550100002", "hi")
    assert route.call_count == 1


def test_missing_settings_are_named() -> None:
    with pytest.raises(WhatsAppConfigError, match="WHATSAPP_ACCESS_TOKEN and WHATSAPP_PHONE_NUMBER_ID"):
        WhatsAppClient("", "")
    with pytest.raises(WhatsAppConfigError, match="WHATSAPP_PHONE_NUMBER_ID"):
        WhatsAppClient(TOKEN, "")
