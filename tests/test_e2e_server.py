"""End to end on a real uvicorn server on loopback: intake, processing, redelivery, and a SIGKILL crash."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from src import watch_info_extractor
from tests.conftest import TEST_SECRET
from tests.live_server import LiveServer
from tests.webhook_payloads import body_and_headers, change, fake_phone, payload, text_message

pytestmark = pytest.mark.slow


def _rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _wait(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_three_messages_in_two_changes_are_processed_and_redelivery_adds_nothing(tmp_path: Path) -> None:
    db = tmp_path / "e2e.sqlite3"
    env = {"SQLITE_PATH": str(db), "WHATSAPP_APP_SECRET": TEST_SECRET, "WORKER_POLL_SECONDS": "0.05"}
    data = payload(
        [
            change(
                [
                    text_message(
                        "Vends Rolex Submariner 116610LN de 2018, excellent état, 8200€", sender=fake_phone(1)
                    ),
                    text_message("WTB Patek Philippe 5711/1A full set", sender=fake_phone(2)),
                ]
            ),
            change(
                [
                    text_message(
                        "FS Omega Speedmaster 310.30.42.50.01.001 $6,200 + label", sender=fake_phone(3)
                    )
                ]
            ),
        ]
    )
    body, headers = body_and_headers(data, TEST_SECRET)
    with LiveServer(env=env, log_path=tmp_path / "server.log") as server:
        response = httpx.post(server.url + "/webhook", content=body, headers=headers)
        assert response.status_code == 200
        _wait(lambda: _rows(db, "SELECT count(*) FROM whatsapp_messages WHERE status='processed'")[0][0] == 3)
        listings = _rows(
            db, "SELECT brand, reference, price, currency, message_type FROM watch_listings ORDER BY id"
        )
        assert ("Rolex", "116610LN", 8200.0, "EUR", "sale") in listings
        assert any(row[0] == "Patek Philippe" and row[4] == "wanted" for row in listings)
        assert any(row[0] == "Omega" and row[2] == 6200.0 and row[3] == "USD" for row in listings)

        again = httpx.post(server.url + "/webhook", content=body, headers=headers)
        assert again.status_code == 200
        time.sleep(0.5)
        assert _rows(db, "SELECT count(*) FROM whatsapp_messages")[0][0] == 3
        assert _rows(db, "SELECT count(*) FROM watch_listings")[0][0] == len(listings)

        health = httpx.get(server.url + "/health").json()
        assert health["status"] == "healthy"
        assert health["runtime_stats"]["messages_received"] == 3
        assert health["runtime_stats"]["messages_processed"] == 3
        assert health["runtime_stats"]["duplicates_ignored"] == 3
        assert health["runtime_stats"]["sales_detected"] == 2
        assert health["runtime_stats"]["wanted_detected"] == 1
        assert health["store_backend"] == "sqlite"
        assert health["embedding_model"].startswith("local-")
        # The server loads the same build the tests see: compiled when `dev.py` could compile it.
        assert health["extractor"] == watch_info_extractor.IMPLEMENTATION
        assert fake_phone(1) not in str(health)


def test_sigkill_after_ack_before_processing_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "crash.sqlite3"
    env = {"SQLITE_PATH": str(db), "WHATSAPP_APP_SECRET": TEST_SECRET, "WORKER_ENABLED": "false"}
    data = payload(
        [
            change(
                [
                    text_message(
                        "Vends Tudor Black Bay 58 79030N 2021 full set 3100€", message_id="wamid.CRASH1"
                    )
                ]
            )
        ]
    )
    body, headers = body_and_headers(data, TEST_SECRET)
    server = LiveServer(env=env, log_path=tmp_path / "server.log")
    with server:
        assert httpx.post(server.url + "/webhook", content=body, headers=headers).status_code == 200
        server.kill()  # acknowledged, never processed (the worker was off): a crash at the worst moment
    assert _rows(db, "SELECT status FROM whatsapp_messages") == [("pending",)]

    server.env["WORKER_ENABLED"] = "true"
    server.env["WORKER_POLL_SECONDS"] = "0.05"
    with server:
        _wait(lambda: _rows(db, "SELECT status FROM whatsapp_messages") == [("processed",)])
        # Meta redelivers what it may think was lost: still one message, one listing.
        assert httpx.post(server.url + "/webhook", content=body, headers=headers).json()["stored"] == 0
        time.sleep(0.3)
    assert _rows(db, "SELECT count(*) FROM watch_listings WHERE message_id='wamid.CRASH1'") == [(1,)]


def test_health_counters_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "restart.sqlite3"
    env = {"SQLITE_PATH": str(db), "WHATSAPP_APP_SECRET": TEST_SECRET, "WORKER_POLL_SECONDS": "0.05"}
    body, headers = body_and_headers(
        payload([change([text_message("WTS AP 15500ST 2020 full set 32k€")])]), TEST_SECRET
    )
    server = LiveServer(env=env, log_path=tmp_path / "server.log")
    with server:
        httpx.post(server.url + "/webhook", content=body, headers=headers)
        _wait(lambda: _rows(db, "SELECT count(*) FROM whatsapp_messages WHERE status='processed'")[0][0] == 1)
    with server:
        stats = httpx.get(server.url + "/health").json()["runtime_stats"]
    assert stats["messages_received"] == 1
    assert stats["sales_detected"] == 1
    assert stats["total_value_detected"] == 32000
