"""Storage backends behind one protocol; `create_store` picks one from the settings (see DESIGN.md)."""

from __future__ import annotations

import logging

from src.config import Settings
from src.store.base import Store

log = logging.getLogger(__name__)


def create_store(settings: Settings) -> Store:
    """DATABASE_URL -> Postgres + pgvector; SUPABASE_URL + key -> Supabase; otherwise embedded SQLite."""
    backend = settings.store_backend
    if backend == "postgres":
        from src.store.postgres import PostgresStore

        return PostgresStore(settings.DATABASE_URL, dimensions=settings.EMBEDDING_DIMENSIONS)
    if backend == "supabase":
        from src.store.supabase import SupabaseStore

        key = settings.SUPABASE_SERVICE_ROLE_KEY
        if not key:
            log.warning(
                "SUPABASE_ANON_KEY is used as the server key: row level security lets only the service role "
                "read and write, so set SUPABASE_SERVICE_ROLE_KEY instead"
            )
            key = settings.SUPABASE_ANON_KEY
        return SupabaseStore(settings.SUPABASE_URL, key, dimensions=settings.EMBEDDING_DIMENSIONS)
    from src.store.sqlite import SQLiteStore

    return SQLiteStore(settings.SQLITE_PATH, busy_timeout_seconds=settings.SQLITE_BUSY_TIMEOUT_SECONDS)
