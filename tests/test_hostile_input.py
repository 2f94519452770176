"""Hostile input on the public webhook: generated bodies, tampered signatures, oversized and deep bodies.

Whatever arrives, the answer is 2xx or a clear 4xx, never a 5xx, and the server keeps serving.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from src.config import Settings
from src.whatsapp.webhook import WebhookPayload, _has_model_shape, sign
from tests.conftest import TEST_SECRET
from tests.live_server import LiveServer
from tests.webhook_payloads import body_and_headers, change, payload, text_message

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
)
any_json = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=40,
)
maybe = lambda strategy: st.one_of(strategy, any_json)  # noqa: E731 - a field of the right type, or anything

message_strategy = st.fixed_dictionaries(
    {},
    optional={
        "id": maybe(st.text(min_size=1, max_size=30)),
        "from": maybe(st.text(alphabet="0123456789", min_size=5, max_size=15)),
        "from_user_id": maybe(st.text(max_size=20)),
        "timestamp": maybe(st.integers(min_value=-(2**40), max_value=2**40).map(str)),
        "type": maybe(st.sampled_from(["text", "image", "edit", "reaction", "interactive", "button", "zzz"])),
        "text": maybe(st.fixed_dictionaries({"body": maybe(st.text(max_size=200))})),
        "image": maybe(st.fixed_dictionaries({"caption": maybe(st.text(max_size=50))})),
        "interactive": any_json,
        "edit": maybe(
            st.fixed_dictionaries({"original_message_id": maybe(st.text(max_size=10)), "message": any_json})
        ),
        "group_id": maybe(st.text(max_size=10)),
    },
)
contact_strategy = st.fixed_dictionaries(
    {},
    optional={
        "wa_id": maybe(st.text(alphabet="0123456789", min_size=5, max_size=15)),
        "user_id": maybe(st.text(max_size=10)),
        "profile": maybe(st.fixed_dictionaries({}, optional={"name": maybe(st.text(max_size=20))})),
    },
)
value_strategy = st.fixed_dictionaries(
    {},
    optional={
        "messages": maybe(st.lists(maybe(message_strategy), max_size=8)),
        "statuses": maybe(st.lists(any_json, max_size=3)),
        "contacts": maybe(st.lists(maybe(contact_strategy), max_size=3)),
        "metadata": any_json,
    },
)
webhook_strategy = st.fixed_dictionaries(
    {},
    optional={
        "object": maybe(st.just("whatsapp_business_account")),
        "entry": maybe(
            st.lists(
                maybe(
                    st.fixed_dictionaries(
                        {"id": maybe(st.text(max_size=5))},
                        optional={
                            "changes": maybe(
                                st.lists(
                                    maybe(
                                        st.fixed_dictionaries(
                                            {"field": any_json, "value": maybe(value_strategy)}
                                        )
                                    ),
                                    max_size=4,
                                )
                            )
                        },
                    )
                ),
                max_size=4,
            )
        ),
    },
)


@pytest.fixture(scope="module")
def hostile_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        SQLITE_PATH=tmp_path_factory.mktemp("hostile") / "db.sqlite3",
        WHATSAPP_APP_SECRET=TEST_SECRET,
        OPENAI_API_KEY="",
        DATABASE_URL="",
        SUPABASE_URL="",
        WORKER_POLL_SECONDS=0.05,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _post_signed(client: TestClient, body: bytes) -> httpx.Response:
    return client.post("/webhook", content=body, headers={"X-Hub-Signature-256": sign(body, TEST_SECRET)})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=webhook_strategy)
def test_generated_webhook_bodies_get_2xx_or_clear_4xx(hostile_client: TestClient, data: object) -> None:
    body = json.dumps(data).encode()
    response = _post_signed(hostile_client, body)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]


@settings(max_examples=400, deadline=None)
@given(data=webhook_strategy)
def test_the_fast_shape_check_never_admits_what_the_payload_models_refuse(data: dict) -> None:
    """Intake skips the pydantic models for bodies that already have their exact shape: that check must
    never pass a body the models would answer with a 400."""
    if _has_model_shape(data):
        WebhookPayload.model_validate(data)


def test_every_real_webhook_fixture_takes_the_fast_path() -> None:
    """The shape check is not so strict that Meta's own payloads fall back to the models' copy."""
    fixtures = sorted((Path(__file__).parent / "data" / "webhooks").glob("*.json"))
    shaped = []
    for path in fixtures:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("object") == "whatsapp_business_account":
            shaped.append((path.name, _has_model_shape(data)))
    assert len(shaped) >= 5
    assert all(ok for _, ok in shaped), shaped


def test_a_message_nested_past_the_json_serialiser_limit_is_stored(hostile_client: TestClient) -> None:
    """orjson writes at most 254 levels; such a message (valid JSON, 1,010 levels) is cut, not a 500."""
    template = json.dumps(payload([change([{**text_message("WTS Rolex 126610LN 11k€"), "x": "@@"}])]))
    body = template.replace('"@@"', "[" * 1010 + "]" * 1010).encode()
    response = _post_signed(hostile_client, body)
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=any_json)
def test_arbitrary_json_gets_2xx_or_clear_4xx(hostile_client: TestClient, data: object) -> None:
    response = _post_signed(hostile_client, json.dumps(data).encode())
    assert response.status_code in (200, 400), response.text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_get_a_4xx(hostile_client: TestClient, raw: bytes) -> None:
    response = _post_signed(hostile_client, raw)
    assert response.status_code in (200, 400), response.text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_a_replayed_signature_on_an_altered_body_is_refused(
    hostile_client: TestClient, position: int, flip: int
) -> None:
    body, headers = body_and_headers(
        payload([change([text_message("WTS Rolex 126610LN 11k€")])]), TEST_SECRET
    )
    index = position % len(body)
    altered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    response = hostile_client.post("/webhook", content=altered, headers=headers)
    assert response.status_code == 403


@pytest.mark.parametrize(
    "text",
    ["nul\x00inside", "lone \ud800 surrogate", "emoji 🧪 ok", "‮right-to-left", "x" * 100_000],
)
def test_strange_text_is_stored_not_crashed(hostile_client: TestClient, text: str) -> None:
    body = json.dumps(payload([change([text_message(text)])])).encode()  # ensure_ascii: \ud800 stays escaped
    response = _post_signed(hostile_client, body)
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 1


def test_deeply_nested_json_is_400_not_a_crash(hostile_client: TestClient) -> None:
    body = b'{"object": "x", "entry": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = _post_signed(hostile_client, body)
    assert response.status_code == 400
    assert hostile_client.get("/health").status_code == 200


def test_huge_arrays_within_the_limit_are_acknowledged(hostile_client: TestClient) -> None:
    data = payload([{"field": "messages", "value": {"statuses": [{"id": str(i)} for i in range(50_000)]}}])
    response = _post_signed(hostile_client, json.dumps(data).encode())
    assert response.status_code == 200
    assert response.json()["statuses"] == 50_000


def test_oversized_body_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    """A client announcing 100 MB gets 413 at once, while it has sent only a few bytes."""
    env = {"SQLITE_PATH": str(tmp_path / "db.sqlite3"), "WHATSAPP_APP_SECRET": TEST_SECRET}
    with (
        LiveServer(env=env) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
    ):
        sock.sendall(
            b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'X-Hub-Signature-256: sha256=00\r\nContent-Length: 104857600\r\n\r\n{"object":'
        )
        started = time.monotonic()
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert time.monotonic() - started < 5

        # Chunked, with no length announced: cut off once past the limit, not buffered to the end.
        with httpx.Client(timeout=30) as client:

            def endless() -> Iterator[bytes]:
                for _ in range(10_000):  # up to 640 MB if nobody stopped reading
                    yield b"x" * 65536

            try:
                response = client.post(server.url + "/webhook", content=endless())
                assert response.status_code == 413
            except httpx.HTTPError:
                pass  # the server may close the connection while we still send: also a refusal
        assert httpx.get(server.url + "/health").status_code == 200
