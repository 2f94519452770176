"""Faults on a real server: SIGKILL mid-batch, the database going away mid-load, OpenAI failing for a minute.

After each, every acknowledged message is processed exactly once: stored once, marked processed, with exactly
the listings its text gives (no listing missing, none doubled).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from src.watch_info_extractor import extract_watch_info
from tests.conftest import TEST_SECRET
from tests.fake_openai import FakeOpenAI
from tests.live_server import LiveServer
from tests.postgres_server import PgServer, pg_server, pg_template, pg_url  # noqa: F401 - fixtures
from tests.webhook_payloads import body_and_headers, change, fake_phone, payload, text_message

pytestmark = pytest.mark.slow

TEXTS = [
    "Vends Rolex Submariner 116610LN de 2018, excellent état, 8200€",
    "WTS Patek 5711/1A-010 2019 full set $148,500 + label",
    "WTB Daytona 116500LN white, budget 28k",
    "Dispo Tudor Black Bay 58 79030N neuve 3 300€",
    "FS Omega Speedmaster 310.30.42.50.01.001 BNIB $6,200",
    "Bonjour à tous",
]
# Seconds of OpenAI failure in the third test: the issue asks for a minute; set lower to iterate locally.
OPENAI_FAULT_SECONDS = float(os.environ.get("FAULT_OPENAI_SECONDS", "60"))


def make_batches(tag: str, posts: int, per_post: int) -> list[tuple[bytes, dict[str, str], list[str]]]:
    batches = []
    for p in range(posts):
        messages = [
            text_message(
                TEXTS[(p + i) % len(TEXTS)] + f" #{p}-{i}",
                sender=fake_phone(i),
                message_id=f"wamid.{tag}{p:04d}{i:03d}",
            )
            for i in range(per_post)
        ]
        body, headers = body_and_headers(payload([change(messages)]), TEST_SECRET)
        batches.append((body, headers, [m["id"] for m in messages]))
    return batches


def post_like_meta(
    url: str, batches: list[tuple[bytes, dict[str, str], list[str]]], pause: float = 0.0
) -> tuple[set[str], int]:
    """Post every batch; retry a non-200 (Meta retries for days) until it is acknowledged. Returns (acked, refusals)."""
    acked: set[str] = set()
    refusals = 0
    with httpx.Client(timeout=10) as client:
        for body, headers, ids in batches:
            for attempt in range(600):
                try:
                    response = client.post(url + "/webhook", content=body, headers=headers)
                    if response.status_code == 200:
                        acked.update(ids)
                        break
                    assert response.status_code == 503, response.text  # never a 500: "come back later"
                except httpx.TransportError:
                    pass
                refusals += 1
                time.sleep(min(0.05 * 2**attempt, 0.5))
            else:
                raise AssertionError("a batch was never acknowledged")
            if pause:
                time.sleep(pause)
    return acked, refusals


def expected_listings(text: str) -> int:
    return len(extract_watch_info(text).watches)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def check_sqlite_exactly_once(db: Path, acked: set[str]) -> None:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT id, status, text FROM whatsapp_messages").fetchall()
        listings = dict(
            conn.execute("SELECT message_id, count(*) FROM watch_listings GROUP BY message_id").fetchall()
        )
        doubled = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM watch_listings GROUP BY message_id, position HAVING count(*) > 1)"
        ).fetchone()[0]
    finally:
        conn.close()
    assert {row[0] for row in rows} == acked
    assert {row[1] for row in rows} == {"processed"}
    assert doubled == 0
    for message_id, _, text in rows:
        assert listings.get(message_id, 0) == expected_listings(text), message_id


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[1]) == pid
    ]


def _running(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has exited


def test_sigkill_during_a_batch_then_restart_processes_everything_once(tmp_path: Path) -> None:
    db = tmp_path / "kill.sqlite3"
    env = {
        "SQLITE_PATH": str(db),
        "WHATSAPP_APP_SECRET": TEST_SECRET,
        "WORKER_BATCH_SIZE": "16",
        "WORKER_BATCH_LINGER_SECONDS": "0",
        "WORKER_LEASE_SECONDS": "3",  # the killed worker's claim expires quickly
        "WORKER_POLL_SECONDS": "0.05",
        "WORKER_ENABLED": "false",
    }
    server = LiveServer(env=env, log_path=tmp_path / "server.log")
    with server:
        acked, _ = post_like_meta(server.url, make_batches("KILL", posts=40, per_post=20))
    assert len(acked) == 800

    def processed() -> int:
        conn = sqlite3.connect(db)
        try:
            return int(
                conn.execute("SELECT count(*) FROM whatsapp_messages WHERE status='processed'").fetchone()[0]
            )
        finally:
            conn.close()

    server.env["WORKER_ENABLED"] = "true"
    pool: list[int] = []  # the server's child processes, noted while waiting (not between the wait and the kill)

    def started() -> bool:
        if not pool and server.process is not None:
            pool.extend(_children(server.process.pid))
        return processed() > 0

    with server:
        wait_until(started, 30, "the worker to start")
        server.kill()  # mid-way through the queue, with batches in flight
    killed_at = processed()
    assert 0 < killed_at < 800, killed_at
    # The analysis process does not outlive its server (it would wait on its task queue forever).
    assert pool, "the server extracts in a child process"
    wait_until(lambda: not any(_running(pid) for pid in pool), 15, "the pool process to exit with its server")
    with server:
        wait_until(lambda: processed() == 800, 90, "every message processed after the restart")
    check_sqlite_exactly_once(db, acked)


def test_database_going_away_mid_load_loses_nothing(pg_server: PgServer, pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    env = {
        "DATABASE_URL": pg_url,
        "WHATSAPP_APP_SECRET": TEST_SECRET,
        "WORKER_LEASE_SECONDS": "5",
        "WORKER_POLL_SECONDS": "0.05",
        "WEBHOOK_STORE_TIMEOUT_SECONDS": "2",
    }
    database = urlsplit(pg_url).path.lstrip("/")
    admin_url = pg_server.admin_url
    batches = make_batches("PGDOWN", posts=60, per_post=10)
    result: dict[str, object] = {}
    with LiveServer(env=env, log_path=tmp_path / "server.log") as server:
        poster = threading.Thread(
            target=lambda: result.update(
                zip(("acked", "refusals"), post_like_meta(server.url, batches, pause=0.05), strict=True)
            )
        )
        poster.start()
        time.sleep(1.0)
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            outage_end = time.monotonic() + 8.0  # longer than WEBHOOK_STORE_TIMEOUT_SECONDS
            saw_503_health = False
            while time.monotonic() < outage_end:  # keep it down: kill whatever reconnects
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                )
                try:
                    saw_503_health |= httpx.get(server.url + "/health", timeout=5).status_code == 503
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        poster.join(120)
        assert not poster.is_alive()
        acked = result["acked"]
        assert isinstance(acked, set) and len(acked) == 600
        assert (
            isinstance(result["refusals"], int) and result["refusals"] > 0
        )  # the outage was seen by clients
        assert saw_503_health

        with psycopg.connect(pg_url) as conn:

            def all_processed() -> bool:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'processed'), count(*) FROM whatsapp_messages"
                ).fetchone()
                conn.commit()
                return row is not None and row[0] == row[1] == 600

            wait_until(all_processed, 90, "every message processed after the outage")
            rows = conn.execute("SELECT id, text FROM whatsapp_messages").fetchall()
            listings = dict(
                conn.execute("SELECT message_id, count(*) FROM watch_listings GROUP BY message_id").fetchall()
            )
            doubled = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM watch_listings GROUP BY message_id, position HAVING count(*) > 1) x"
            ).fetchone()
        assert {row[0] for row in rows} == acked
        assert doubled == (0,)
        for message_id, text in rows:
            assert listings.get(message_id, 0) == expected_listings(text), message_id
        assert httpx.get(server.url + "/health").json()["status"] == "healthy"


def test_openai_500s_and_timeouts_for_a_minute_then_everything_is_embedded_once(tmp_path: Path) -> None:
    db = tmp_path / "openai.sqlite3"
    with FakeOpenAI(default_dimensions=1536) as fake:
        env = {
            "SQLITE_PATH": str(db),
            "WHATSAPP_APP_SECRET": TEST_SECRET,
            "OPENAI_API_KEY": "sk-test-not-real",
            "OPENAI_BASE_URL": fake.base_url,
            "EMBEDDING_TIMEOUT_SECONDS": "1",
            "EMBEDDING_MAX_RETRIES": "1",
            "EMBEDDING_RETRY_BASE_SECONDS": "0.2",
            "EMBEDDING_RETRY_MAX_SECONDS": "1",
            "WORKER_RETRY_BASE_SECONDS": "0.5",
            "WORKER_RETRY_MAX_SECONDS": "4",
            "WORKER_MAX_ATTEMPTS": "1000",  # a minute of failure must not use up a message's tries
            "WORKER_POLL_SECONDS": "0.05",
            "WORKER_BATCH_LINGER_SECONDS": "0.05",
        }
        with LiveServer(env=env, log_path=tmp_path / "server.log") as server:
            before, _ = post_like_meta(server.url, make_batches("OAIA", posts=5, per_post=10))
            half = OPENAI_FAULT_SECONDS / 2
            fake.config.error_rate = 1.0  # first half: every call answers 500
            during, _ = post_like_meta(
                server.url, make_batches("OAIB", posts=10, per_post=10), pause=half / 10
            )
            fake.config.error_rate = 0.0
            fake.config.latency = 5.0  # second half: every call outlives the 1 s timeout
            during2, _ = post_like_meta(
                server.url, make_batches("OAIC", posts=10, per_post=10), pause=half / 10
            )
            health = httpx.get(server.url + "/health").json()
            assert health["queue"]["pending"] > 0
            assert health["queue"]["failed"] == 0
            assert health["queue"]["last_error"]
            assert "sk-test-not-real" not in str(health)
            fake.config.latency = 0.0
            after, _ = post_like_meta(server.url, make_batches("OAID", posts=5, per_post=10))
            acked = before | during | during2 | after

            def done() -> bool:
                queue = httpx.get(server.url + "/health").json()["queue"]
                return queue["pending"] == 0 and queue["failed"] == 0

            wait_until(done, 120, "the queue to drain after the outage")
    assert len(acked) == 300
    check_sqlite_exactly_once(db, acked)
    conn = sqlite3.connect(db)
    models = {row[0] for row in conn.execute("SELECT DISTINCT embedding_model FROM watch_listings")}
    conn.close()
    assert models == {"text-embedding-3-small"}
