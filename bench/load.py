"""Load: signed webhooks (1 to 20 messages each) at increasing rates against a real uvicorn server on loopback.

For each rate step it prints requests and messages per second achieved, ack latency p50/p99 and errors;
the sustained rate is the highest step whose p99 stays under 100 ms with no error. After the load it checks
that every acknowledged message is stored once and processed once. In the same run, the same load goes to
pywa's FastAPI webhook handler with a no-op handler (bench/pywa_app.py; `pip install -r bench/requirements.txt`),
and the ratio of sustained throughputs is printed. Ours writes every message durably before answering.

    python bench/load.py            # 60 s of load per server
    python bench/load.py --quick    # 12 s per server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "whatsappserver")]

from src.whatsapp.webhook import sign  # noqa: E402
from tests.live_server import LiveServer  # noqa: E402

SECRET = "bench-secret"
TEXTS = [
    "Vends Rolex Submariner 116610LN de 2018, excellent état, 8200€",
    "WTS Patek 5711/1A-010 2019 full set $148,500 + label",
    "WTB Daytona 116500LN white, budget 28k",
    "Dispo Tudor Black Bay 58 79030N neuve 3 300€",
    "Qui a une AP 15500ST bleue ?",
    "FS Omega Speedmaster 310.30.42.50.01.001 BNIB $6,200",
    "Bonjour à tous",
]
P99_TARGET_MS = 100.0
UVICORN_ARGS = ("--log-level", "warning")  # the same for both servers: no access log on either


@dataclass
class Step:
    rate: float
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    requests: int = 0
    messages: int = 0
    errors: int = 0
    elapsed: float = 0.0

    def quantile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def passed(self) -> bool:
        return self.errors == 0 and self.requests > 0 and self.quantile(0.99) < P99_TARGET_MS


class RawHttpPool:
    """Keep-alive HTTP/1.1 over asyncio streams: a client light enough not to be the bottleneck."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.size = size

    async def open(self) -> None:
        for _ in range(self.size):
            self.free.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        reader, writer = await self.free.get()
        try:
            head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            self.free.put_nowait((reader, writer))
            return int(status_line.split()[1])
        except Exception:
            writer.close()
            self.free.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))
            return 0

    async def close(self) -> None:
        while not self.free.empty():
            _, writer = self.free.get_nowait()
            writer.close()


def make_request(counter: list[int], rng: random.Random, tag: str) -> tuple[bytes, list[str]]:
    count = rng.randint(1, 20)
    now = int(time.time())
    messages = []
    for _ in range(count):
        counter[0] += 1
        messages.append(
            {
                "from": f"1555010{rng.randint(0, 9999):04d}",
                "id": f"wamid.LOAD{tag}{counter[0]:09d}",
                "timestamp": str(now),
                "type": "text",
                "text": {"body": rng.choice(TEXTS)},
            }
        )
    data = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "100000000000009",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550100001",
                                "phone_number_id": "100000000000001",
                            },
                            "contacts": [{"profile": {"name": "Load Dealer"}, "wa_id": messages[0]["from"]}],
                            "messages": messages,
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(data).encode(), [m["id"] for m in messages]


async def run_load(
    port: int, rates: list[float], seconds_per_step: float, tag: str
) -> tuple[list[Step], set[str]]:
    """Open-loop load: requests start on schedule whether or not earlier ones have finished."""
    pool = RawHttpPool(port, size=64)
    await pool.open()
    rng = random.Random(7)
    counter = [0]
    acked: set[str] = set()
    steps = [Step(rate, seconds_per_step) for rate in rates]
    in_flight: set[asyncio.Task[None]] = set()

    async def one(step: Step, body: bytes, ids: list[str]) -> None:
        started = time.perf_counter()
        status = await pool.post(
            "/webhook", body, {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, SECRET)}
        )
        step.latencies_ms.append((time.perf_counter() - started) * 1000)
        if status == 200:
            step.requests += 1
            step.messages += len(ids)
            acked.update(ids)
        else:
            step.errors += 1

    for step in steps:
        interval = 1.0 / step.rate
        begin = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) - begin < step.seconds:
            due = int((now - begin) / interval) + 1
            while sent < due:
                body, ids = make_request(counter, rng, tag)
                task = asyncio.create_task(one(step, body, ids))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                sent += 1
            await asyncio.sleep(min(interval, 0.005))
        if in_flight:
            await asyncio.wait(in_flight, timeout=30)
        step.elapsed = time.perf_counter() - begin
        print(
            f"  {tag} rate {step.rate:6.0f} req/s: achieved {step.requests / step.elapsed:7.1f} req/s, "
            f"{step.messages / step.elapsed:8.1f} msg/s, ack p50 {step.quantile(0.5):6.1f} ms "
            f"p99 {step.quantile(0.99):7.1f} ms, errors {step.errors}",
            flush=True,
        )
    await pool.close()
    return steps, acked


def sustained(steps: list[Step]) -> tuple[float, float]:
    """Requests and messages per second at the highest step that met the p99 target with no error."""
    best = (0.0, 0.0)
    for step in steps:
        if step.passed:
            best = max(best, (step.requests / step.elapsed, step.messages / step.elapsed))
    return best


def check_store(db: Path, acked: set[str], timeout: float) -> tuple[int, int, int, float]:
    """(lost, stored twice, still pending) after the worker drains; and how long draining took."""
    started = time.monotonic()
    conn = sqlite3.connect(db)
    try:
        while time.monotonic() - started < timeout:
            pending = conn.execute(
                "SELECT count(*) FROM whatsapp_messages WHERE status != 'processed'"
            ).fetchone()[0]
            if pending == 0:
                break
            time.sleep(0.5)
        stored = {row[0] for row in conn.execute("SELECT id FROM whatsapp_messages")}
        duplicate_listings = conn.execute(
            "SELECT count(*) FROM (SELECT message_id, position FROM watch_listings GROUP BY 1, 2 HAVING count(*) > 1)"
        ).fetchone()[0]
        pending = conn.execute(
            "SELECT count(*) FROM whatsapp_messages WHERE status != 'processed'"
        ).fetchone()[0]
    finally:
        conn.close()
    return len(acked - stored), duplicate_listings, pending, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="12 s of load per server instead of 60 s")
    parser.add_argument(
        "--rates", default="100,200,400,600,800,1000,1200,1400,1600,1800,2000,2200,2400", help="request rates of the steps, per second"
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    total = 12.0 if args.quick else 60.0
    per_step = total / len(rates)

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "load.sqlite3"
        env = {"SQLITE_PATH": str(db), "WHATSAPP_APP_SECRET": SECRET, "LOG_LEVEL": "WARNING"}
        print(
            f"ours: uvicorn app:app on SQLite (synchronous=FULL), worker on, {total:.0f} s of load",
            flush=True,
        )
        with LiveServer(env=env, extra_args=UVICORN_ARGS) as server:
            ours_steps, acked = asyncio.run(run_load(server.port, rates, per_step, "ours"))
            lost, twice, pending, drain_seconds = check_store(db, acked, timeout=600)

        pywa_rps = pywa_mps = float("nan")
        try:
            import pywa_async  # noqa: F401
        except ImportError:
            print("pywa is not installed: pip install -r bench/requirements.txt (skipping the comparison)")
        else:
            print(f"pywa: FastAPI webhook handler, no-op message handler, {total:.0f} s of load", flush=True)
            reference = LiveServer(
                env={"PYWA_APP_SECRET": SECRET},
                app="pywa_app:app",
                cwd=Path(__file__).parent,
                ready_path="/webhook",
                extra_args=UVICORN_ARGS,
            )
            with reference:
                pywa_steps, _ = asyncio.run(run_load(reference.port, rates, per_step, "pywa"))
            pywa_rps, pywa_mps = sustained(pywa_steps)

    ours_rps, ours_mps = sustained(ours_steps)
    all_latencies = [x for step in ours_steps for x in step.latencies_ms]
    print()
    print(f"sustained_requests_per_second: {ours_rps:.1f}")
    print(f"sustained_messages_per_second: {ours_mps:.1f}")
    print(f"ack_p99_ms_overall: {Step(0, 0, all_latencies).quantile(0.99):.1f}")
    print(f"messages_acknowledged: {len(acked)}")
    print(f"messages_lost: {lost}")
    print(f"messages_stored_twice: {twice}")
    print(f"messages_unprocessed_after_drain: {pending}")
    print(f"drain_seconds_after_load: {drain_seconds:.1f}")
    print(f"pywa_sustained_requests_per_second: {pywa_rps:.1f}")
    print(f"pywa_sustained_messages_per_second: {pywa_mps:.1f}")
    print(f"throughput_ratio_ours_over_pywa: {ours_rps / pywa_rps if pywa_rps else float('nan'):.2f}")


if __name__ == "__main__":
    main()
