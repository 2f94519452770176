"""A fake OpenAI API on loopback, for tests and benchmarks: real HTTP, because openai 3.x rides on httpx2,
which respx does not intercept.

    with FakeOpenAI(latency=0.2) as fake:          # uvicorn in a background thread, free 127.0.0.1 port
        client = AsyncOpenAI(api_key="sk-test", base_url=fake.base_url)   # fake.base_url ends in /v1
        fake.config.rate_limit_rate = 0.1           # settable at any time, from any thread
        fake.start_outage(2.0)                      # every call answers 503 for the next 2 s
        fake.stats.embedding_requests               # counters (see FakeStats)

Standalone (benchmarks run it as its own process): `python -m tests.fake_openai --port 8099 --latency 0.2`.

Endpoints
- `POST /v1/embeddings`: the OpenAI request shape (`input` str or list of str, `model`, optional `dimensions`,
  `encoding_format` float | base64; the SDK asks for base64 by default). Vectors are deterministic (seeded by the
  text) and unit length, of `dimensions` floats (default `config.default_dimensions`). Like the real API it
  refuses more than 2048 inputs, empty strings, an input over 8192 tokens and over 300k tokens a request
  (tokens estimated here as UTF-8 bytes / 4) with a 400.
- `POST /v1/chat/completions`: answers `config.chat_answer` (a fixed string) as a `chat.completion` object,
  whatever the messages; the request bodies are kept in `stats.chat_bodies` so a test can look at the prompt.
  `stream` is not supported.
- `GET /_stats` and `POST /_reset` (counters), `POST /_config` (JSON of FakeConfig fields, e.g.
  `{"latency": 0.2}`), `POST /_outage?seconds=2`: control from another process.

Failure injection, applied to both API endpoints in this order: no `Authorization: Bearer` -> 401; inside an
outage window -> 503; `fail_next` > 0 -> that many calls answer `fail_status` (with
`Retry-After` when it is 429); `fail_after_ok` >= 0 -> every call after that many successful embedding calls
answers `fail_status` (an interrupted long job); then `rate_limit_rate` -> 429 with
`Retry-After: retry_after` (seconds); then `error_rate` -> 500. Latency is slept before answering (also before
an error), without blocking other requests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import random
import socket
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from types import TracebackType
from typing import Any

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000


@dataclass
class FakeConfig:
    """What the fake does; change fields at any time."""

    latency: float = 0.0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after: float = 1.0
    fail_next: int = 0
    fail_status: int = 500
    fail_after_ok: int = -1
    default_dimensions: int = 1536
    chat_answer: str = "This is the fake answer."
    seed: int = 0


@dataclass
class FakeStats:
    """Counters since start (or the last reset). `requests` counts every call, failed ones included."""

    requests: int = 0
    embedding_requests: int = 0
    embedding_ok: int = 0
    embedding_inputs: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    chat_requests: int = 0
    chat_bodies: list[dict[str, Any]] = field(default_factory=list)
    status_counts: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0

    def count(self, status: int) -> None:
        self.status_counts[str(status)] = self.status_counts.get(str(status), 0) + 1


def fake_vector(text: str, dimensions: int) -> np.ndarray:
    """Deterministic unit vector for `text`: the same text always gets the same vector.

    Drawn from a hash of the text (a few µs, not a seeded generator's 20): the fake shares the benchmark
    machine's cores with the server it serves, and the real API's work never runs there.
    """
    digest = hashlib.shake_128(text.encode("utf-8")).digest(2 * dimensions)
    vector = np.frombuffer(digest, dtype="<i2").astype(np.float32) + 0.5  # symmetric around 0, never all zero
    return vector / np.linalg.norm(vector)


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


class FakeOpenAIApp:
    """The ASGI app and its state; `FakeOpenAI` runs it under uvicorn."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.stats = FakeStats()
        self._outage_until = 0.0
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/_stats", self.read_stats, methods=["GET"]),
                Route("/_reset", self.reset_route, methods=["POST"]),
                Route("/_config", self.config_route, methods=["POST"]),
                Route("/_outage", self.outage_route, methods=["POST"]),
            ]
        )

    # -- control ------------------------------------------------------------------------------------

    def start_outage(self, seconds: float) -> None:
        """Every API call answers 503 for the next `seconds`."""
        self._outage_until = time.monotonic() + seconds

    def end_outage(self) -> None:
        self._outage_until = 0.0

    def reset(self) -> None:
        with self._lock:
            self.stats = FakeStats()

    async def read_stats(self, request: Request) -> JSONResponse:
        data = asdict(self.stats)
        data.pop("chat_bodies")
        return JSONResponse(data)

    async def reset_route(self, request: Request) -> JSONResponse:
        self.reset()
        return JSONResponse({"ok": True})

    async def config_route(self, request: Request) -> JSONResponse:
        known = {f.name for f in fields(FakeConfig)}
        for name, value in (await request.json()).items():
            if name not in known:
                return JSONResponse({"error": f"unknown setting {name}"}, status_code=400)
            setattr(self.config, name, value)
        return JSONResponse(asdict(self.config))

    async def outage_route(self, request: Request) -> JSONResponse:
        self.start_outage(float(request.query_params.get("seconds", "1")))
        return JSONResponse({"ok": True})

    # -- failure injection --------------------------------------------------------------------------

    def _injected_failure(self, request: Request) -> JSONResponse | None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            return _error(401, "You didn't provide an API key.", "invalid_request_error")
        if time.monotonic() < self._outage_until:
            return _error(503, "The server is overloaded or not ready yet.", "server_error")
        with self._lock:
            if self.config.fail_next > 0:
                self.config.fail_next -= 1
                status = self.config.fail_status
                headers = {"retry-after": f"{self.config.retry_after:g}"} if status == 429 else None
                return _error(status, "Injected failure.", "server_error", headers=headers)
            if 0 <= self.config.fail_after_ok <= self.stats.embedding_ok:
                return _error(self.config.fail_status, "Injected failure.", "server_error")
            roll = self._rng.random()
        if roll < self.config.rate_limit_rate:
            return _error(
                429,
                "Rate limit reached for requests.",
                "requests",
                headers={"retry-after": f"{self.config.retry_after:g}"},
            )
        if self._rng.random() < self.config.error_rate:
            return _error(500, "The server had an error while processing your request.", "server_error")
        return None

    async def _enter(self) -> FakeStats:
        """Count the call on the current stats (a reset while it sleeps does not skew the new counters)."""
        with self._lock:
            stats = self.stats
            stats.requests += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        if self.config.latency > 0:
            await asyncio.sleep(self.config.latency)
        return stats

    def _leave(self, stats: FakeStats, response: Response) -> Response:
        with self._lock:
            stats.in_flight -= 1
            stats.count(response.status_code)
        return response

    # -- API ----------------------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        stats = await self._enter()
        stats.embedding_requests += 1
        failure = self._injected_failure(request)
        if failure is not None:
            return self._leave(stats, failure)
        return self._leave(stats, self._embed(stats, await request.json()))

    def _embed(self, stats: FakeStats, body: dict[str, Any]) -> Response:
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(item, str) for item in inputs):
            return _error(400, "'input' must be a string or a list of strings.", "invalid_request_error")
        if not inputs or len(inputs) > MAX_INPUTS:
            return _error(400, f"'input' must have 1 to {MAX_INPUTS} items.", "invalid_request_error")
        tokens = [len(item.encode("utf-8")) // 4 + 1 for item in inputs]
        if any(not item for item in inputs):
            return _error(400, "'input' cannot contain an empty string.", "invalid_request_error")
        if max(tokens) > MAX_INPUT_TOKENS:
            return _error(400, "This model's maximum context length is 8192 tokens.", "invalid_request_error")
        if sum(tokens) > MAX_REQUEST_TOKENS:
            return _error(400, "Max 300000 tokens per request.", "invalid_request_error")
        dimensions = int(body.get("dimensions") or self.config.default_dimensions)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = fake_vector(text, dimensions)
            embedding: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                if as_base64
                else vector.tolist()
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        with self._lock:
            stats.embedding_ok += 1
            stats.embedding_inputs += len(inputs)
            stats.batch_sizes.append(len(inputs))
        payload = {
            "object": "list",
            "data": data,
            "model": body.get("model", "text-embedding-3-small"),
            "usage": {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)},
        }
        return Response(orjson.dumps(payload), media_type="application/json")  # 2 MB: orjson, not json

    async def chat(self, request: Request) -> JSONResponse:
        stats = await self._enter()
        body = await request.json()
        with self._lock:
            stats.chat_requests += 1
            stats.chat_bodies.append(body)
        failure = self._injected_failure(request)
        if failure is not None:
            return self._leave(stats, failure)
        return self._leave(
            stats,
            JSONResponse(
                {
                    "id": f"chatcmpl-fake{stats.chat_requests}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "gpt-4o-mini"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.config.chat_answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                }
            ),
        )


class FakeOpenAI:
    """Runs FakeOpenAIApp under uvicorn in a background thread on a free loopback port."""

    def __init__(self, config: FakeConfig | None = None, **overrides: Any) -> None:
        config = config or FakeConfig()
        for name, value in overrides.items():
            setattr(config, name, value)
        self.fake = FakeOpenAIApp(config)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def config(self) -> FakeConfig:
        return self.fake.config

    @property
    def stats(self) -> FakeStats:
        return self.fake.stats

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start_outage(self, seconds: float) -> None:
        self.fake.start_outage(seconds)

    def end_outage(self) -> None:
        self.fake.end_outage()

    def reset(self) -> None:
        self.fake.reset()

    def start(self, timeout: float = 10.0) -> FakeOpenAI:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.fake.app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-openai", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI API on loopback (tests and benchmarks).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds slept per call")
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--rate-limit-rate", type=float, default=0.0)
    parser.add_argument("--retry-after", type=float, default=1.0)
    args = parser.parse_args()
    fake = FakeOpenAIApp(
        FakeConfig(
            latency=args.latency,
            error_rate=args.error_rate,
            rate_limit_rate=args.rate_limit_rate,
            retry_after=args.retry_after,
        )
    )
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
