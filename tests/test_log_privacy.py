"""At INFO, the server's log never holds a phone number, a message text or a secret (a real server's output)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx

from tests.conftest import TEST_SECRET, TEST_VERIFY_TOKEN
from tests.live_server import LiveServer
from tests.webhook_payloads import body_and_headers, change, payload, text_message

PHONE = "15550107777"
TEXT = "Vends Rolex Daytona 116500LN blanche 2023 full set 27500€ appelez le 06 00 00 00 00"


def test_info_logs_hold_no_phone_number_message_or_secret(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    env = {
        "SQLITE_PATH": str(tmp_path / "db.sqlite3"),
        "WHATSAPP_APP_SECRET": TEST_SECRET,
        "WHATSAPP_VERIFY_TOKEN": TEST_VERIFY_TOKEN,
        "SEARCH_API_KEY": "search-key-for-test",
        "LOG_LEVEL": "INFO",
        "WORKER_POLL_SECONDS": "0.05",
    }
    good = payload([change([text_message(TEXT, sender=PHONE, message_id="wamid.PRIV1")])])
    bad_message = payload([change([{"from": PHONE, "type": "text", "text": {"body": TEXT}}])])
    with LiveServer(env=env, log_path=log_path) as server:
        body, headers = body_and_headers(good, TEST_SECRET)
        assert httpx.post(server.url + "/webhook", content=body, headers=headers).status_code == 200
        httpx.post(server.url + "/webhook", content=body, headers=headers)  # duplicate
        httpx.post(
            server.url + "/webhook", content=body, headers={**headers, "X-Hub-Signature-256": "sha256=00"}
        )
        httpx.post(server.url + "/webhook", content=body)  # unsigned
        httpx.post(
            server.url + "/webhook",
            content=b"{" + TEXT.encode(),
            headers=body_and_headers(b"{" + TEXT.encode(), TEST_SECRET)[1],
        )
        body2, headers2 = body_and_headers(bad_message, TEST_SECRET)
        httpx.post(server.url + "/webhook", content=body2, headers=headers2)
        httpx.get(
            server.url + "/webhook",
            params={"hub.mode": "subscribe", "hub.verify_token": TEST_VERIFY_TOKEN, "hub.challenge": "42"},
        )
        httpx.get(server.url + "/search", params={"q": TEXT}, headers={"X-API-Key": "search-key-for-test"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if httpx.get(server.url + "/health").json()["runtime_stats"]["messages_processed"] == 1:
                break
            time.sleep(0.1)
    log = log_path.read_text(encoding="utf-8")
    assert "POST /webhook" in log  # the access log is there, so the check below means something
    assert PHONE not in log
    assert "Daytona" not in log and "27500" not in log and "appelez" not in log
    assert TEST_SECRET not in log and TEST_VERIFY_TOKEN not in log and "search-key-for-test" not in log
    assert not re.search(r"\b\d{10,15}\b", log.replace(json.dumps(""), "")), "a phone-like number in the log"
