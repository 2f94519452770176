"""Settings: the one place every environment variable is read (pydantic-settings, optional `.env`)."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVER_DIR = Path(__file__).resolve().parents[1]
DEFAULT_SQLITE_PATH = SERVER_DIR / "data" / "whatsapp.sqlite3"

log = logging.getLogger(__name__)


class ConfigurationError(RuntimeError):
    """A setting is missing or unsafe; the message names the variable and how to fix it."""


class Settings(BaseSettings):
    """Every knob of the server. Field names are the environment variables."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    APP_ENV: Literal["development", "production"] = "development"
    LOG_LEVEL: str = "INFO"

    # WhatsApp Cloud API
    WHATSAPP_VERIFY_TOKEN: str = ""
    WHATSAPP_APP_SECRET: str = ""
    WHATSAPP_ACCESS_TOKEN: str = ""
    WHATSAPP_PHONE_NUMBER_ID: str = ""
    WHATSAPP_API_VERSION: str = "v21.0"
    GRAPH_API_BASE_URL: str = "https://graph.facebook.com"
    WEBHOOK_MAX_BODY_BYTES: int = 4 * 1024 * 1024
    # A webhook whose messages are not stored within this time gets 503, so Meta retries (never a hang).
    WEBHOOK_STORE_TIMEOUT_SECONDS: float = 5.0

    # Embeddings and answers
    OPENAI_API_KEY: str = ""
    OPENAI_BASE_URL: str | None = None
    EMBEDDING_MODEL: str = "text-embedding-3-small"
    EMBEDDING_DIMENSIONS: int = 1536
    EMBEDDING_BATCH_SIZE: int = 256
    EMBEDDING_CONCURRENCY: int = 4
    EMBEDDING_TIMEOUT_SECONDS: float = 30.0
    EMBEDDING_MAX_RETRIES: int = 5
    EMBEDDING_RETRY_BASE_SECONDS: float = 0.5  # first backoff of a request; doubles, with jitter
    EMBEDDING_RETRY_MAX_SECONDS: float = 20.0  # longest backoff between two tries of one request
    CHAT_MODEL: str = "gpt-4o-mini"

    # Storage
    DATABASE_URL: str = ""
    SUPABASE_URL: str = ""
    SUPABASE_SERVICE_ROLE_KEY: str = ""
    SUPABASE_ANON_KEY: str = ""
    SQLITE_PATH: Path = DEFAULT_SQLITE_PATH
    SQLITE_BUSY_TIMEOUT_SECONDS: float = 5.0

    # Worker
    WORKER_ENABLED: bool = True
    WORKER_BATCH_SIZE: int = 512
    WORKER_POLL_SECONDS: float = 0.5
    WORKER_LEASE_SECONDS: int = 120
    WORKER_MAX_ATTEMPTS: int = 8
    WORKER_RETRY_BASE_SECONDS: float = 2.0
    WORKER_RETRY_MAX_SECONDS: float = 600.0
    # Child processes for extraction and the offline embedder (0 = on the event loop, for tests and tiny hosts),
    # and how much lower their priority is than intake's.
    WORKER_PROCESSES: int = 1
    WORKER_NICE: int = 5
    WORKER_CONCURRENCY: int = 4  # batches in flight: one extracted, others embedded or written meanwhile
    WORKER_BATCH_LINGER_SECONDS: float = 0.2  # wait this long for a short batch to fill: fewer, fuller calls
    # Acks come first: while intake is heavy, at most WORKER_BUSY_CONCURRENCY batches are in flight (0: none
    # starts for up to WORKER_YIELD_MAX_SECONDS, then a small one does); the same holds while the loop lags.
    WORKER_BUSY_POSTS_PER_SECOND: float = 200.0  # intake is heavy from this many webhook POSTs per second
    WORKER_BUSY_CONCURRENCY: int = 0
    WORKER_YIELD_MAX_SECONDS: float = 2.0
    WORKER_BUSY_BATCH_SIZE: int = 32

    # Search API
    SEARCH_API_KEY: str = ""

    # Replies on WhatsApp
    AUTO_REPLY: bool = False
    ALERTS: bool = False
    # The business number as Meta displays it (digits): a message "from" it is ours and never answered.
    WHATSAPP_BUSINESS_NUMBER: str = ""
    GRAPH_API_TIMEOUT_SECONDS: float = 10.0
    GRAPH_API_MAX_RETRIES: int = 4
    REPLY_MAX_MATCHES: int = 5
    # A wanted listing stays open for alerts this long after it was posted.
    ALERT_WANTED_MAX_AGE_DAYS: int = 30

    # Currency conversion: EUR value of one unit, overriding the dated default table in src/fx.py.
    FX_RATES_EUR: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.APP_ENV == "production":
            missing = [
                name
                for name in ("WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN", "SEARCH_API_KEY")
                if not getattr(self, name)
            ]
            if missing:
                raise ConfigurationError(
                    f"APP_ENV=production requires {', '.join(missing)}: set "
                    f"{'it' if len(missing) == 1 else 'them'} in the environment or in .env "
                    "(see .env.example)."
                )
        return self

    @property
    def store_backend(self) -> Literal["postgres", "supabase", "sqlite"]:
        """DATABASE_URL wins (direct connection), then Supabase's HTTP API, then the embedded SQLite."""
        if self.DATABASE_URL:
            return "postgres"
        if self.SUPABASE_URL and (self.SUPABASE_SERVICE_ROLE_KEY or self.SUPABASE_ANON_KEY):
            return "supabase"
        return "sqlite"

    @property
    def embedding_backend(self) -> Literal["openai", "local"]:
        return "openai" if self.OPENAI_API_KEY else "local"

    @cached_property
    def active_embedding_model(self) -> str:
        """The model name stored beside every vector; vectors of different models never mix."""
        if self.embedding_backend == "openai":
            return self.EMBEDDING_MODEL
        return f"local-hash-v1-{self.EMBEDDING_DIMENSIONS}"


def get_settings() -> Settings:
    return Settings()
