"""`python -m src.cli migrate`: apply supabase/migrations/*.sql, in order, to the Postgres at DATABASE_URL.

The same files `supabase db push` applies, so a Supabase project and a plain Postgres with pgvector end
up with one schema. Applied versions are recorded in `public.schema_migrations`; versions the Supabase
CLI recorded (`supabase_migrations.schema_migrations`) count as applied too. An advisory lock lets
several app instances start at once without racing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg
import typer

from src.config import SERVER_DIR, Settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = SERVER_DIR / "supabase" / "migrations"
# Any constant shared by every process that migrates: pg_advisory_lock serialises them.
MIGRATION_LOCK_KEY = 0x77617463  # "watc"
CONNECT_TIMEOUT_SECONDS = 10


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    path: Path


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """`<timestamp>_<name>.sql` files, oldest first (the Supabase CLI layout)."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        if not version.isdigit():
            raise ValueError(f"{path.name}: migration files are named <timestamp>_<name>.sql")
        found.append(Migration(version=version, name=name, path=path))
    return found


async def applied_versions(conn: psycopg.AsyncConnection) -> set[str]:
    versions: set[str] = set()
    for table in ("public.schema_migrations", "supabase_migrations.schema_migrations"):
        cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        row = await cursor.fetchone()
        if row and row[0]:
            cursor = await conn.execute(f"SELECT version FROM {table}")  # table is one of two constants
            versions.update(str(r[0]) for r in await cursor.fetchall())
    return versions


async def apply_migrations(conninfo: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not applied yet, each in its own transaction; returns the applied versions."""
    applied: list[str] = []
    async with await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS public.schema_migrations ("
                "version text PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute("ALTER TABLE public.schema_migrations ENABLE ROW LEVEL SECURITY")
            done = await applied_versions(conn)
            for migration in migration_files(directory):
                if migration.version in done:
                    continue
                sql = migration.path.read_text(encoding="utf-8")
                async with conn.transaction():
                    # Simple query protocol: the file is many statements, sent as written.
                    await conn.execute(sql.encode("utf-8"), prepare=False)
                    await conn.execute(
                        "INSERT INTO public.schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                    # A migration's `set search_path` must not leak into the rest of the session.
                    await conn.execute("RESET search_path")
                log.info("applied migration %s_%s", migration.version, migration.name)
                applied.append(migration.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied


def register(cli: typer.Typer) -> None:
    @cli.command("migrate")
    def migrate(
        database_url: str = typer.Option(
            "", "--database-url", help="Postgres connection string; defaults to DATABASE_URL."
        ),
    ) -> None:
        """Apply supabase/migrations/*.sql to DATABASE_URL (idempotent; needs pgvector >= 0.8)."""
        url = database_url or Settings().DATABASE_URL
        if not url:
            raise typer.BadParameter(
                "no database: set DATABASE_URL (Supabase: Project Settings > Database > Connection string, "
                "direct or session pooler) or pass --database-url"
            )
        try:
            applied = asyncio.run(apply_migrations(url))
        except psycopg.Error as exc:
            typer.echo(f"migration failed: {exc}", err=True)
            raise typer.Exit(1) from exc
        if applied:
            typer.echo(f"applied {len(applied)} migration(s): {', '.join(applied)}")
        else:
            typer.echo("schema is up to date")
