"""Two uvicorn processes on one Postgres share the queue: 2,000 messages posted across both, each
processed exactly once, none left behind.

A trigger in the test database records every transition to `processed` with the Postgres
application_name of the process that made it (PGAPPNAME differs per server), so a message completed
twice, or by nobody, is caught, and we can see that both instances did work.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.live_server import LiveServer
from tests.postgres_server import pg_server, pg_template, pg_url  # noqa: F401 - fixtures
from tests.webhook_payloads import body_and_headers, change, fake_phone, payload, text_message

pytestmark = pytest.mark.slow

SECRET = "multi-instance-secret"
MESSAGES = 2000
PER_REQUEST = 10
REDELIVERED = 200
MODELS = [
    ("Rolex Submariner 126610LN", 10500),
    ("Patek Philippe Nautilus 5711/1A", 98000),
    ("Omega Speedmaster 310.30.42.50.01.001", 6200),
    ("Tudor Black Bay 79230N", 3100),
    ("Audemars Piguet Royal Oak 15500ST", 41000),
]

AUDIT_SQL = """
CREATE TABLE processed_audit (message_id text NOT NULL, instance text NOT NULL, at timestamptz DEFAULT now());
CREATE FUNCTION audit_processed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO processed_audit (message_id, instance) VALUES (NEW.id, current_setting('application_name'));
    RETURN NEW;
END $$;
CREATE TRIGGER audit_processed AFTER UPDATE OF status ON whatsapp_messages
    FOR EACH ROW WHEN (NEW.status = 'processed') EXECUTE FUNCTION audit_processed();
"""


def _messages() -> list[dict[str, object]]:
    out = []
    for i in range(MESSAGES):
        name, price = MODELS[i % len(MODELS)]
        out.append(
            text_message(
                f"Vends {name} {price + i}€ full set",
                sender=fake_phone(i % 50),
                message_id=f"wamid.MULTI{i:06d}",
                timestamp=1_750_000_000 + i,
            )
        )
    return out


async def _post_all(urls: list[str], messages: list[dict[str, object]]) -> list[int]:
    """Webhook deliveries of PER_REQUEST messages, alternating servers, 16 in flight."""
    chunks = [messages[i : i + PER_REQUEST] for i in range(0, len(messages), PER_REQUEST)]
    # Meta redelivers: send the first chunks again, to the other server.
    redeliveries = chunks[: REDELIVERED // PER_REQUEST]
    jobs = [(urls[n % 2], chunk) for n, chunk in enumerate(chunks)]
    jobs += [(urls[(n + 1) % 2], chunk) for n, chunk in enumerate(redeliveries)]
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=30) as client:

        async def post(url: str, chunk: list[dict[str, object]]) -> int:
            body, headers = body_and_headers(payload([change(chunk)]), SECRET)
            async with limit:
                response = await client.post(url + "/webhook", content=body, headers=headers)
            return response.status_code

        return await asyncio.gather(*(post(url, chunk) for url, chunk in jobs))


async def test_two_instances_process_each_message_once(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(AUDIT_SQL)
    env = {
        "DATABASE_URL": pg_url,
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": "verify",
        "WORKER_BATCH_SIZE": "25",
        "WORKER_POLL_SECONDS": "0.1",
        "LOG_LEVEL": "WARNING",
    }
    servers = [
        LiveServer(env={**env, "PGAPPNAME": name}, log_path=tmp_path / f"{name}.log") for name in ("a", "b")
    ]
    await asyncio.gather(*(asyncio.to_thread(server.start, 60.0) for server in servers))
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            health = (await client.get(servers[0].url + "/health")).json()
        assert health["store_backend"] == "postgres"

        statuses = await _post_all([s.url for s in servers], _messages())
        assert set(statuses) == {200}

        deadline = time.monotonic() + 90
        with psycopg.connect(pg_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE status = 'processed') FROM whatsapp_messages"
                ).fetchone()
                if row == (MESSAGES, MESSAGES):
                    break
                await asyncio.sleep(0.25)
            await asyncio.sleep(1.0)  # anything still running would show up in the audit now
            total, processed = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE status = 'processed') FROM whatsapp_messages"
            ).fetchone()
            assert (total, processed) == (MESSAGES, MESSAGES)
            audited, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT message_id) FROM processed_audit"
            ).fetchone()
            assert (audited, distinct) == (MESSAGES, MESSAGES), "a message was processed twice"
            per_instance = dict(
                conn.execute("SELECT instance, count(*) FROM processed_audit GROUP BY instance").fetchall()
            )
            assert set(per_instance) == {"a", "b"} and min(per_instance.values()) > 0, per_instance
            listings = conn.execute("SELECT count(DISTINCT message_id) FROM watch_listings").fetchone()[0]
            assert listings == MESSAGES
            failed = conn.execute("SELECT count(*) FROM whatsapp_messages WHERE attempts > 0").fetchone()[0]
            assert failed == 0
    finally:
        for server in servers:
            server.stop()
