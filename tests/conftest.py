"""Shared fixtures: a settings factory on a temporary SQLite file, and an in-process app client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import create_app
from src.config import Settings

TEST_SECRET = "test-app-secret"
TEST_VERIFY_TOKEN = "test-verify-token"


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings that ignore the developer's environment and .env: SQLite in tmp, local embedder."""

    def _make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "SQLITE_PATH": tmp_path / "test.sqlite3",
            "WHATSAPP_APP_SECRET": TEST_SECRET,
            "WHATSAPP_VERIFY_TOKEN": TEST_VERIFY_TOKEN,
            "OPENAI_API_KEY": "",
            "DATABASE_URL": "",
            "SUPABASE_URL": "",
            "SEARCH_API_KEY": "",
            "WORKER_POLL_SECONDS": 0.05,
            # In-process extraction: no child process per test app (the real-server tests keep the default).
            "WORKER_PROCESSES": 0,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return _make


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """The app in-process with its lifespan (store, worker) running."""
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client
