"""Webhook ingest, end to end, against a fake OpenAI at 200 ms a call: the worker design vs the seed's inline one.

    python bench/ingest.py [--messages 5000] [--connections 16] [--latency 0.2] [--quick]

Starts the fake OpenAI (`tests/fake_openai.py`) and then, one after the other, two real uvicorn servers on
127.0.0.1, each on a fresh SQLite file, with the same flags:
- worker: `uvicorn app:app` (the server as shipped: store pending, ack, worker embeds batches in the background);
- inline: the seed's design, rebuilt here with the same parser, extractor, embedder and store: the webhook
  handler extracts, makes one embedding call for the message and stores its listings before answering.
A client with `--connections` keep-alive connections posts the same `--messages` signed webhook messages
(one message a POST, as Meta sends them) to each. Printed per design: ack latency p50/p99 (POST sent to
response read), messages per second from the first POST to the last listing stored, and embedding calls
(counted by the fake), after 64 unmeasured warm-up messages. `--quick` does the same on 1,000 messages. Figures depend on --connections: the inline
design's throughput is about connections / latency, the worker's does not depend on the latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_DIR = REPO_ROOT / "whatsappserver"
sys.path[:0] = [str(SERVER_DIR), str(REPO_ROOT)]

SECRET = "bench-app-secret"
WARMUP = 64
API_KEY = "sk-bench-not-a-real-key"
WATCHES = [
    "Rolex Submariner 126610LN",
    "Rolex Daytona 116500LN",
    "Patek Nautilus 5711/1A",
    "AP Royal Oak 15500ST",
    "Tudor Black Bay M79030N",
    "Rolex GMT-Master II 126710BLRO",
    "Omega Speedmaster 310.30.42.50.01.001",
    "Cartier Santos WSSA0018",
]


# -- the seed's design, for comparison ------------------------------------------------------------------


def inline_app() -> Any:
    """The seed's design: embed inline, one call per message, inside the webhook request."""
    from contextlib import asynccontextmanager

    from src.config import Settings
    from src.embedding_processor import create_embedder
    from src.pipeline import listing_embedding_text, listings_for
    from src.store import create_store
    from src.store.base import StoredMessage
    from src.watch_info_extractor import extract_watch_info
    from src.whatsapp.webhook import SIGNATURE_HEADER, parse_payload, signature_is_valid

    settings = Settings()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        state["store"] = create_store(settings)
        state["embedder"] = create_embedder(settings)
        await state["store"].open()
        yield
        await state["embedder"].aclose()
        await state["store"].close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:
        body = await request.body()
        if not signature_is_valid(
            body, request.headers.get(SIGNATURE_HEADER, ""), settings.WHATSAPP_APP_SECRET
        ):
            return JSONResponse({"error": "bad signature"}, status_code=403)
        parsed = parse_payload(json.loads(body))
        store, embedder = state["store"], state["embedder"]
        await store.insert_messages(parsed.messages)
        for message in parsed.messages:
            stored = StoredMessage(
                id=message.id,
                source=message.source,
                chat_id=message.chat_id,
                sender_id=message.sender_id,
                sender_name=message.sender_name,
                sent_at=message.sent_at,
                received_at=None,
                wa_type=message.wa_type,
                text=message.text,
                status="pending",
            )
            rows = listings_for(stored, extract_watch_info(message.text, None))
            if rows:
                vectors = await embedder.embed_batch([listing_embedding_text(r) for r in rows])
                for row, vector in zip(rows, vectors, strict=True):
                    row.embedding, row.embedding_model = vector, embedder.model_name
            await store.complete_messages([(message.id, rows)])
        return JSONResponse({"status": "ok"})

    return app


# -- processes ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except Exception:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def fake_call(port: int, path: str, method: str = "GET") -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None
    )
    with urllib.request.urlopen(request, timeout=5.0) as response:
        return json.loads(response.read())


def start_server(target: list[str], port: int, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", *target, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--no-access-log", "--log-level", "warning"]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# -- the client --------------------------------------------------------------------------------------------


def webhook_bodies(count: int, prefix: str = "BENCH") -> list[bytes]:
    from tests.webhook_payloads import body_and_headers, change, payload, text_message

    bodies = []
    for i in range(count):
        text = f"WTS {WATCHES[i % len(WATCHES)]} 20{10 + i % 14} full set {9000 + i}€"
        message = text_message(text, sender=f"1555010{i % 97:04d}", message_id=f"wamid.{prefix}{i:07d}")
        body, _ = body_and_headers(payload([change([message])]), None)
        bodies.append(body)
    return bodies


def http_request(port: int, body: bytes) -> bytes:
    from src.whatsapp.webhook import SIGNATURE_HEADER, sign

    head = (
        f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"{SIGNATURE_HEADER}: {sign(body, SECRET)}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


async def post_all(port: int, requests: list[bytes], connections: int) -> tuple[list[float], float]:
    """Keep-alive HTTP/1.1 on raw sockets (a light client, so the figures are the server's); latencies in s."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    latencies: list[float] = []
    first_post = time.perf_counter()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                request = queue.get_nowait()
                sent = time.perf_counter()
                writer.write(request)
                status_line = await asyncio.wait_for(reader.readline(), 60)
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - sent)
                if b" 200 " not in status_line:
                    raise RuntimeError(f"webhook answered {status_line!r}")
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return latencies, first_post


def processed_count(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(
            conn.execute("SELECT count(*) FROM whatsapp_messages WHERE status = 'processed'").fetchone()[0]
        )
    finally:
        conn.close()


async def run_design(
    name: str,
    target: list[str],
    cwd: Path,
    env: dict[str, str],
    bodies: list[bytes],
    args: argparse.Namespace,
) -> dict[str, float]:
    port = free_port()
    db = Path(env["SQLITE_PATH"])
    server = start_server(target, port, env, cwd)
    try:
        wait_http(f"http://127.0.0.1:{port}/docs")
        # Warm-up (not measured): first-request costs (imports, catalogue, connections) are not ingest.
        warm = webhook_bodies(WARMUP, prefix="WARM")
        await post_all(port, [http_request(port, body) for body in warm], args.connections)
        while processed_count(db) < WARMUP:
            await asyncio.sleep(0.05)
        fake_call(args.fake_port, "/_reset", "POST")
        requests = [http_request(port, body) for body in bodies]
        latencies, first_post = await post_all(port, requests, args.connections)
        posted = time.perf_counter()
        deadline = posted + args.drain_timeout
        while processed_count(db) < len(bodies) + WARMUP:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{name}: only {processed_count(db) - WARMUP} of {len(bodies)} processed")
            await asyncio.sleep(0.01)
        stored = time.perf_counter()
        calls = fake_call(args.fake_port, "/_stats")["embedding_requests"]
    finally:
        stop(server)
    latencies.sort()
    return {
        "ack_p50_ms": statistics.median(latencies) * 1000,
        "ack_p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "msgs_per_s": len(bodies) / (stored - first_post),
        "post_s": posted - first_post,
        "total_s": stored - first_post,
        "embedding_calls": calls,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=16, help="concurrent client connections")
    parser.add_argument("--latency", type=float, default=0.2, help="fake OpenAI seconds per call")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--quick", action="store_true", help="1,000 messages")
    parser.add_argument("--only", choices=["worker", "inline"], help="run one design (no ratio)")
    parser.add_argument("--env", action="append", default=[], help="K=V for the worker server (experiments)")
    args = parser.parse_args()
    if args.quick:
        args.messages = 1000
    n = args.messages
    bodies = webhook_bodies(n)
    args.fake_port = free_port()
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fake_openai",
            "--port",
            str(args.fake_port),
            "--latency",
            str(args.latency),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, dict[str, float]] = {}
    try:
        wait_http(f"http://127.0.0.1:{args.fake_port}/_stats")
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            base_env = {
                **{
                    k: v
                    for k, v in os.environ.items()
                    if not k.startswith(("OPENAI_", "SUPABASE_", "WHATSAPP_"))
                },
                "APP_ENV": "development",
                "DATABASE_URL": "",
                "WHATSAPP_APP_SECRET": SECRET,
                "OPENAI_API_KEY": API_KEY,
                "OPENAI_BASE_URL": f"http://127.0.0.1:{args.fake_port}/v1",
                "LOG_LEVEL": "WARNING",
                "PYTHONPATH": os.pathsep.join([str(SERVER_DIR), str(REPO_ROOT)]),
            }
            designs = {
                # The server as shipped, on its default settings.
                "worker": (["app:app"], SERVER_DIR, dict(item.split("=", 1) for item in args.env)),
                # The seed made one call per message with no cap on concurrent calls.
                "inline": (
                    ["bench.ingest:inline_app", "--factory"],
                    REPO_ROOT,
                    {"EMBEDDING_CONCURRENCY": str(args.connections)},
                ),
            }
            for name, (target, cwd, extra) in designs.items():
                if args.only and name != args.only:
                    continue
                env = {**base_env, **extra, "SQLITE_PATH": str(Path(tmp) / f"{name}.sqlite3")}
                print(f"{name}: posting {n} messages over {args.connections} connections ...", flush=True)
                results[name] = await run_design(name, target, cwd, env, bodies, args)
    finally:
        stop(fake)

    print(f"messages: {n}")
    print(f"connections: {args.connections}")
    print(f"fake_openai_latency_ms: {args.latency * 1000:.0f}")
    for name, figures in results.items():
        print(f"{name}_ack_p50_ms: {figures['ack_p50_ms']:.1f}")
        print(f"{name}_ack_p99_ms: {figures['ack_p99_ms']:.1f}")
        print(f"{name}_posting_s: {figures['post_s']:.2f}")
        print(f"{name}_end_to_end_s: {figures['total_s']:.2f}")
        print(f"{name}_msgs_per_s: {figures['msgs_per_s']:.1f}")
        print(f"{name}_embedding_calls: {figures['embedding_calls']}")
    if args.only:
        return
    worker, inline = results["worker"], results["inline"]
    print(f"throughput_ratio_worker_over_inline: {worker['msgs_per_s'] / inline['msgs_per_s']:.1f}")
    print(f"worker_calls_per_message: {worker['embedding_calls'] / n:.4f}")
    print(f"target_ack_p99_under_50ms: {'yes' if worker['ack_p99_ms'] < 50 else 'no'}")
    print(f"target_ratio_at_least_20: {'yes' if worker['msgs_per_s'] >= 20 * inline['msgs_per_s'] else 'no'}")
    print(f"target_calls_at_most_n_over_50: {'yes' if worker['embedding_calls'] <= n / 50 else 'no'}")


if __name__ == "__main__":
    asyncio.run(main())
