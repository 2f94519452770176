"""POST/GET /webhook in-process: handshake, signatures, body limits, every fixture, edits, durability."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import create_app
from src.config import Settings
from src.whatsapp.webhook import sign
from tests.conftest import TEST_SECRET, TEST_VERIFY_TOKEN
from tests.webhook_payloads import body_and_headers, change, fake_phone, payload, text_message

FIXTURES = Path(__file__).parent / "data" / "webhooks"


def post(client: TestClient, data: dict | bytes, secret: str | None = TEST_SECRET, **headers: str):
    body, base_headers = body_and_headers(data, secret)
    return client.post("/webhook", content=body, headers={**base_headers, **headers})


def stored_rows(settings: Settings) -> list[sqlite3.Row]:
    conn = sqlite3.connect(settings.SQLITE_PATH)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM whatsapp_messages ORDER BY id").fetchall()
    finally:
        conn.close()


def wait_processed(settings: Settings, count: int, timeout: float = 10.0) -> list[sqlite3.Row]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = stored_rows(settings)
        if len(rows) >= count and all(row["status"] == "processed" for row in rows):
            return rows
        time.sleep(0.05)
    raise AssertionError(f"not processed in {timeout}s: {[dict(r) for r in stored_rows(settings)]}")


# -- GET handshake ------------------------------------------------------------------------------------


def test_verification_echoes_the_bare_challenge(client: TestClient) -> None:
    response = client.get(
        "/webhook",
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": TEST_VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert response.status_code == 200
    assert response.text == "1158201444"
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"}, "verify_token"),
        (
            {"hub.mode": "unsubscribe", "hub.verify_token": TEST_VERIFY_TOKEN, "hub.challenge": "1"},
            "hub.mode",
        ),
        ({"hub.challenge": "1"}, "hub.mode"),
    ],
)
def test_verification_refuses_with_a_reason(client: TestClient, params: dict, reason: str) -> None:
    response = client.get("/webhook", params=params)
    assert response.status_code == 403
    assert reason in response.text


# -- signatures ---------------------------------------------------------------------------------------


def test_missing_signature_is_401(client: TestClient) -> None:
    response = post(client, payload([change([text_message("WTS Rolex 116610LN 9k€")])]), secret=None)
    assert response.status_code == 401
    assert "X-Hub-Signature-256" in response.json()["error"]


def test_wrong_signature_is_403(client: TestClient) -> None:
    response = post(client, payload([change([text_message("hello")])]), secret="another-secret")
    assert response.status_code == 403


def test_sha1_only_signature_is_refused(client: TestClient) -> None:
    body, _ = body_and_headers(payload([change([text_message("hello")])]), None)
    response = client.post(
        "/webhook", content=body, headers={"Content-Type": "application/json", "X-Hub-Signature": "sha1=abc"}
    )
    assert response.status_code == 401


def test_sha1_value_in_the_sha256_header_is_refused(client: TestClient) -> None:
    body, _ = body_and_headers(payload([change([text_message("hello")])]), None)
    response = client.post("/webhook", content=body, headers={"X-Hub-Signature-256": "sha1=" + "0" * 40})
    assert response.status_code == 403


def test_body_altered_after_signing_is_refused_and_not_stored(
    client: TestClient, make_settings: Callable[..., Settings]
) -> None:
    body, headers = body_and_headers(
        payload([change([text_message("Vends Omega Speedmaster 5000€")])]), TEST_SECRET
    )
    altered = body.replace(b"5000", b"5900")
    assert client.post("/webhook", content=altered, headers=headers).status_code == 403
    assert stored_rows(make_settings()) == []


def test_non_ascii_body_signed_right_is_accepted(
    client: TestClient, make_settings: Callable[..., Settings]
) -> None:
    text = "Vends Rolex Daytona 116500LN, très bon état, boîte et papiers, 24 500 € — dispo à Genève ✅"
    data = payload([change([text_message(text, message_id="wamid.NONASCII1")])])
    body = json.dumps(data, ensure_ascii=False).encode("utf-8")
    assert b"\xc3\xa8" in body  # raw UTF-8 bytes, not \u escapes: the HMAC is over exactly these bytes
    response = client.post("/webhook", content=body, headers={"X-Hub-Signature-256": sign(body, TEST_SECRET)})
    assert response.status_code == 200
    rows = wait_processed(make_settings(), 1)
    assert rows[0]["text"] == text


def test_unsigned_bodies_accepted_in_development_without_secret(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(WHATSAPP_APP_SECRET="")
    with TestClient(create_app(settings)) as client:
        response = post(client, payload([change([text_message("hello")])]), secret=None)
    assert response.status_code == 200


def test_production_without_app_secret_refuses_to_start(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(Exception, match="WHATSAPP_APP_SECRET"):
        make_settings(APP_ENV="production", WHATSAPP_APP_SECRET="", SEARCH_API_KEY="k")


# -- malformed and oversized bodies ---------------------------------------------------------------------


def test_not_json_is_400_with_the_reason(client: TestClient) -> None:
    response = post(client, b"{not json", secret=TEST_SECRET)
    assert response.status_code == 400
    assert "not JSON" in response.json()["error"]


def test_json_that_is_not_a_webhook_is_400(client: TestClient) -> None:
    response = post(client, {"object": "whatsapp_business_account", "entry": "nope"})
    assert response.status_code == 400
    assert "entry" in response.json()["error"]


def test_nul_characters_are_removed_from_the_stored_text_and_raw_record(
    make_settings: Callable[..., Settings],
) -> None:
    """JSON escapes a NUL as \\u0000; Postgres refuses NUL in text, so no store keeps one."""
    settings = make_settings(WORKER_ENABLED=False)
    message = {**text_message("WTS Rolex\x00 126610LN 11k€"), "extra": {"k\x00ey": "v\x00"}}
    body = json.dumps(payload([change([message])])).encode()
    assert b"\\u0000" in body
    with TestClient(create_app(settings)) as client:
        response = post(client, body)
    assert response.status_code == 200, response.text
    (row,) = stored_rows(settings)
    assert row["text"] == "WTS Rolex 126610LN 11k€"
    assert "\x00" not in row["raw"] and "\\u0000" not in row["raw"]
    assert json.loads(row["raw"])["extra"] == {"key": "v"}


def test_body_over_4_mb_is_413(client: TestClient) -> None:
    big = b'{"object": "whatsapp_business_account", "entry": [], "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    response = post(client, big)
    assert response.status_code == 413


# -- every fixture -------------------------------------------------------------------------------------


def _fixture_message_ids(data: dict) -> list[str]:
    return [
        m["id"]
        for e in data["entry"]
        for c in e["changes"]
        for m in c["value"].get("messages", [])
        if m.get("type") != "reaction"
    ]


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_every_fixture_is_acknowledged_and_stores_exactly_its_messages(
    name: str, make_settings: Callable[..., Settings]
) -> None:
    raw = (FIXTURES / name).read_bytes()
    settings = make_settings()
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/webhook", content=raw, headers={"X-Hub-Signature-256": sign(raw, TEST_SECRET)}
        )
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            assert response.status_code == 400, name
            assert stored_rows(settings) == []
            return
        assert response.status_code == 200, (name, response.text)
        expected = _fixture_message_ids(data)
        rows = wait_processed(settings, len(expected)) if expected else stored_rows(settings)
        assert sorted(row["id"] for row in rows) == sorted(expected)
        health = client.get("/health").json()
        statuses = sum(len(c["value"].get("statuses", [])) for e in data["entry"] for c in e["changes"])
        assert health["runtime_stats"]["statuses_received"] == statuses


def test_group_message_keeps_group_as_chat_and_contact_name(make_settings: Callable[..., Settings]) -> None:
    raw = (FIXTURES / "group_text_message_example.json").read_bytes()
    settings = make_settings()
    with TestClient(create_app(settings)) as client:
        client.post("/webhook", content=raw, headers={"X-Hub-Signature-256": sign(raw, TEST_SECRET)})
        (row,) = wait_processed(settings, 1)
    assert row["chat_id"].startswith("HBgL")
    assert row["sender_name"] == "Tiago Mingo"
    assert row["text"] == "What does everyone think about this?"


def test_image_caption_is_the_text(make_settings: Callable[..., Settings]) -> None:
    raw = (FIXTURES / "image_with_caption_and_url_example.json").read_bytes()
    settings = make_settings()
    with TestClient(create_app(settings)) as client:
        client.post("/webhook", content=raw, headers={"X-Hub-Signature-256": sign(raw, TEST_SECRET)})
        (row,) = wait_processed(settings, 1)
    assert row["text"] == "Taj Mahal"
    assert row["wa_type"] == "image"


# -- batching, dedupe, BSUID, interactive, edits ------------------------------------------------------


def test_many_entries_changes_and_messages_are_all_stored_once(
    client: TestClient, make_settings: Callable[..., Settings]
) -> None:
    messages = [text_message(f"WTS Rolex 12661{i}LN {9000 + i}€", sender=fake_phone(i)) for i in range(6)]
    data = payload([change(messages[:2]), change(messages[2:3])], [change(messages[3:])])
    first = post(client, data)
    assert first.status_code == 200
    assert first.json()["stored"] == 6
    again = post(client, data)
    assert again.status_code == 200
    assert again.json() == {**again.json(), "stored": 0, "duplicates": 6}
    rows = wait_processed(make_settings(), 6)
    assert len(rows) == 6
    assert client.get("/health").json()["runtime_stats"]["duplicates_ignored"] == 6


def test_bsuid_sender_without_phone(client: TestClient, make_settings: Callable[..., Settings]) -> None:
    message = text_message("cherche Patek 5711", message_id="wamid.BSUID1")
    del message["from"]
    message["from_user_id"] = "US.13491208655302741918"
    value = change([message])
    value["value"]["contacts"] = [{"profile": {"name": "Anon Dealer"}, "user_id": "US.13491208655302741918"}]
    assert post(client, payload([value])).status_code == 200
    (row,) = wait_processed(make_settings(), 1)
    assert row["sender_id"] == "US.13491208655302741918"
    assert row["sender_name"] == "Anon Dealer"


def test_interactive_replies_and_template_buttons_give_text(
    client: TestClient, make_settings: Callable[..., Settings]
) -> None:
    button = {
        "from": fake_phone(3),
        "id": "wamid.INTER1",
        "timestamp": "1700000000",
        "type": "interactive",
        "interactive": {"type": "button_reply", "button_reply": {"id": "b1", "title": "Rolex Submariner"}},
    }
    listing = {
        "from": fake_phone(3),
        "id": "wamid.INTER2",
        "timestamp": "1700000001",
        "type": "interactive",
        "interactive": {
            "type": "list_reply",
            "list_reply": {"id": "l1", "title": "Daytona", "description": "116500LN"},
        },
    }
    template = {
        "from": fake_phone(3),
        "id": "wamid.INTER3",
        "timestamp": "1700000002",
        "type": "button",
        "button": {"payload": "STOP", "text": "Stop alerts"},
    }
    assert post(client, payload([change([button, listing, template])])).status_code == 200
    texts = {row["id"]: row["text"] for row in wait_processed(make_settings(), 3)}
    assert texts == {
        "wamid.INTER1": "Rolex Submariner",
        "wamid.INTER2": "Daytona - 116500LN",
        "wamid.INTER3": "Stop alerts",
    }


def test_edit_updates_the_original_text_and_re_extracts(
    client: TestClient, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    original = text_message("Vends Rolex Submariner 116610LN 9000€", message_id="wamid.ORIG1")
    post(client, payload([change([original])]))
    wait_processed(settings, 1)
    edit = {
        "from": original["from"],
        "id": "wamid.EDIT1",
        "timestamp": str(int(time.time())),
        "type": "edit",
        "edit": {
            "original_message_id": "wamid.ORIG1",
            "message": {"type": "text", "text": {"body": "Vends Rolex Submariner 116610LN 8500€"}},
        },
    }
    assert post(client, payload([change([edit])])).status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conn = sqlite3.connect(settings.SQLITE_PATH)
        prices = [
            r[0] for r in conn.execute("SELECT price FROM watch_listings WHERE message_id='wamid.ORIG1'")
        ]
        conn.close()
        if prices == [8500]:
            break
        time.sleep(0.05)
    assert prices == [8500]
    rows = stored_rows(settings)
    assert [row["id"] for row in rows] == ["wamid.ORIG1"]
    assert rows[0]["text"].endswith("8500€")


def test_reactions_and_statuses_are_counted_not_stored(
    client: TestClient, make_settings: Callable[..., Settings]
) -> None:
    reaction = {
        "from": fake_phone(4),
        "id": "wamid.REACT1",
        "timestamp": "1700000000",
        "type": "reaction",
        "reaction": {"message_id": "wamid.X", "emoji": "👍"},
    }
    data = payload([change([reaction])])
    data["entry"][0]["changes"][0]["value"]["statuses"] = [
        {"id": "wamid.S1", "status": "delivered", "timestamp": "1700000000", "recipient_id": fake_phone(4)}
    ]
    assert post(client, data).status_code == 200
    runtime = client.get("/health").json()["runtime_stats"]
    assert runtime["reactions_received"] == 1
    assert runtime["statuses_received"] == 1
    assert stored_rows(make_settings()) == []


def test_a_message_without_id_is_reported_and_the_rest_stored(
    client: TestClient, make_settings: Callable[..., Settings]
) -> None:
    good = text_message("WTB Tudor BB58", message_id="wamid.GOOD1")
    bad = {"from": fake_phone(5), "type": "text", "text": {"body": "no id"}}
    response = post(client, payload([change([bad, good])]))
    assert response.status_code == 200
    assert response.json()["skipped"] == 1
    assert [row["id"] for row in wait_processed(make_settings(), 1)] == ["wamid.GOOD1"]


# -- the store cannot write ----------------------------------------------------------------------------


def test_store_that_cannot_write_answers_503_and_keeps_nothing_half_written(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(SQLITE_BUSY_TIMEOUT_SECONDS=0.2)
    data = payload([change([text_message(f"WTS Omega {i}", message_id=f"wamid.LOCK{i}") for i in range(3)])])
    with TestClient(create_app(settings)) as client:
        blocker = sqlite3.connect(settings.SQLITE_PATH, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database
        try:
            response = post(client, data)
            assert response.status_code == 503
            assert "retry" in response.json()["error"]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert stored_rows(settings) == []
        retried = post(client, data)  # Meta retries: now everything is stored, once
        assert retried.status_code == 200
        assert retried.json()["stored"] == 3
        assert len(wait_processed(settings, 3)) == 3
