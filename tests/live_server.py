"""Run the real server: `uvicorn app:app` in a subprocess on a free loopback port, with its own environment.

    with LiveServer(env={"SQLITE_PATH": str(tmp_path / "db.sqlite3")}) as server:
        httpx.get(server.url + "/health")

`server.kill()` sends SIGKILL (crash tests); `server.start()` again restarts on the same port and env.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

SERVER_DIR = Path(__file__).resolve().parents[1] / "whatsappserver"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    def __init__(
        self,
        env: dict[str, str] | None = None,
        port: int | None = None,
        log_path: Path | None = None,
        *,
        app: str = "app:app",
        cwd: Path = SERVER_DIR,
        ready_path: str = "/health",
        extra_args: tuple[str, ...] = (),
    ):
        self.port = port or free_port()
        self.app, self.cwd, self.ready_path, self.extra_args = app, cwd, ready_path, extra_args
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{
                k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SUPABASE_", "WHATSAPP_"))
            },
            "DATABASE_URL": "",
            "LOG_LEVEL": "INFO",
            **(env or {}),
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> LiveServer:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                self.app,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *self.extra_args,
            ],
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT if self.log_path else subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log_path}")
            try:
                httpx.get(self.url + self.ready_path, timeout=1.0)
                return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"server did not answer {self.ready_path} within {timeout}s")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
