"""`forget-sender` and `status` from the command line, on a store filled through the real webhook path."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app import create_app
from src.cli import cli
from src.config import Settings
from tests.conftest import TEST_SECRET
from tests.webhook_payloads import body_and_headers, change, fake_phone, payload, text_message


def _fill(settings: Settings) -> None:
    messages = [
        text_message("Vends Rolex Submariner 116610LN 8200€", sender=fake_phone(1)),
        text_message("WTB Patek 5711/1A", sender=fake_phone(1)),
        text_message("Vends Omega Speedmaster 5000€", sender=fake_phone(2)),
    ]
    body, headers = body_and_headers(payload([change(messages)]), TEST_SECRET)
    with TestClient(create_app(settings)) as client:
        assert client.post("/webhook", content=body, headers=headers).json()["stored"] == 3
        deadline = time.monotonic() + 10
        while client.get("/health").json()["runtime_stats"]["messages_processed"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_forget_sender_deletes_only_that_senders_messages_and_listings(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = make_settings()
    _fill(settings)
    monkeypatch.setenv("SQLITE_PATH", str(settings.SQLITE_PATH))
    monkeypatch.chdir(tmp_path)  # no developer .env
    result = CliRunner().invoke(cli, ["forget-sender", fake_phone(1), "--yes"])
    assert result.exit_code == 0, result.output
    assert "deleted 2 message(s)" in result.output
    conn = sqlite3.connect(settings.SQLITE_PATH)
    senders = {row[0] for row in conn.execute("SELECT sender_id FROM whatsapp_messages")}
    orphan_listings = conn.execute(
        "SELECT count(*) FROM watch_listings WHERE message_id NOT IN (SELECT id FROM whatsapp_messages)"
    ).fetchone()[0]
    listing_texts = [row[0] for row in conn.execute("SELECT text FROM watch_listings")]
    conn.close()
    assert senders == {fake_phone(2)}
    assert orphan_listings == 0
    assert all("Submariner" not in text for text in listing_texts)


def test_forget_sender_asks_before_deleting(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = make_settings()
    _fill(settings)
    monkeypatch.setenv("SQLITE_PATH", str(settings.SQLITE_PATH))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["forget-sender", fake_phone(1)], input="n\n")
    assert result.exit_code != 0
    conn = sqlite3.connect(settings.SQLITE_PATH)
    assert conn.execute("SELECT count(*) FROM whatsapp_messages").fetchone()[0] == 3
    conn.close()


def test_status_reads_counters_from_the_store(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = make_settings()
    _fill(settings)
    monkeypatch.setenv("SQLITE_PATH", str(settings.SQLITE_PATH))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["watch_stats"]["sales_found"] == 2
    assert status["watch_stats"]["wanted_found"] == 1
    assert status["queue"] == {"pending": 0, "failed": 0, "last_error": None}
    assert fake_phone(1) not in result.output


def test_forget_sender_also_deletes_messages_not_processed_yet(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the worker off, the sender's messages are still pending: they go too, others stay."""
    settings = make_settings(WORKER_ENABLED=False)
    messages = [
        text_message("Vends Rolex Submariner 116610LN 8200€", sender=fake_phone(1)),
        text_message("Vends Omega Speedmaster 5000€", sender=fake_phone(2)),
    ]
    body, headers = body_and_headers(payload([change(messages)]), TEST_SECRET)
    with TestClient(create_app(settings)) as client:
        assert client.post("/webhook", content=body, headers=headers).json()["stored"] == 2
    monkeypatch.setenv("SQLITE_PATH", str(settings.SQLITE_PATH))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["forget-sender", fake_phone(1), "--yes"])
    assert result.exit_code == 0, result.output
    assert "deleted 1 message(s)" in result.output
    conn = sqlite3.connect(settings.SQLITE_PATH)
    rows = conn.execute("SELECT sender_id, status FROM whatsapp_messages").fetchall()
    conn.close()
    assert rows == [(fake_phone(2), "pending")]
