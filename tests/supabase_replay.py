"""Answer supabase-py's PostgREST requests with a real Postgres, so SupabaseStore is tested for real.

A respx route catches every request to a fake project URL and replays it as the SQL PostgREST would run,
in one transaction as `service_role`:

- `POST /rest/v1/rpc/fn` {args}          -> `SELECT ... FROM public.fn(arg => value, ...)`
- `POST /rest/v1/table` (insert/upsert)  -> `INSERT ... ON CONFLICT (...) DO NOTHING | DO UPDATE ... RETURNING *`
- `PATCH /rest/v1/table?col=eq.v`        -> `UPDATE ... WHERE ... RETURNING *`
- `GET /rest/v1/table?select=..&col=eq.v&limit=n` -> `SELECT ...`

Argument values are passed untyped (as PostgREST does from JSON), so a wrong argument name or a value
the function cannot take fails here exactly as it would on Supabase. Results are serialised by Postgres
itself (`json_agg`), like PostgREST's output. Errors come back as PostgREST error bodies.

    replay = PostgrestReplay(database_url)
    await replay.start()
    store = SupabaseStore(replay.url, replay.service_key)
    ...
    await replay.stop()
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

import httpx
import psycopg
import respx
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

REPLAY_URL = "https://replay-project.supabase.test"
SERVICE_KEY = "test-service-role-key"

_FILTER = re.compile(r"^(not\.)?(eq|neq|gt|gte|lt|lte|is|in)\.(.*)$", re.DOTALL)
_OPERATORS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_RESERVED_PARAMS = {"select", "order", "limit", "offset", "on_conflict", "columns"}


def _untyped(value: Any) -> str | None:
    """A JSON value as the text Postgres will cast to the parameter's type (what PostgREST does)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _error(status: int, code: str, message: str, details: str | None = None) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message, "details": details, "hint": None})


class PostgrestReplay:
    """A fake Supabase project whose REST API is a real database."""

    def __init__(self, database_url: str, url: str = REPLAY_URL, service_key: str = SERVICE_KEY) -> None:
        self.database_url = database_url
        self.url = url
        self.service_key = service_key
        self.requests: list[tuple[str, str]] = []
        self._pool: AsyncConnectionPool | None = None
        self._router = respx.mock(assert_all_called=False, assert_all_mocked=False)
        self._router.route(url__startswith=url).mock(side_effect=self.handle)
        self._router.route().pass_through()

    async def start(self) -> None:
        self._pool = AsyncConnectionPool(self.database_url, min_size=1, max_size=6, open=False)
        await self._pool.open(wait=True, timeout=10)
        self._router.start()

    async def stop(self) -> None:
        self._router.stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- request handling ---------------------------------------------------------------------------

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("apikey") != self.service_key or request.headers.get("authorization") != (
            f"Bearer {self.service_key}"
        ):
            return _error(401, "PGRST301", "missing or wrong service role key")
        path = request.url.path.removeprefix("/rest/v1/")
        params = parse_qsl(request.url.query.decode(), keep_blank_values=True)
        self.requests.append((request.method, path))
        try:
            if path.startswith("rpc/") and request.method == "POST":
                return await self._rpc(path.removeprefix("rpc/"), json.loads(request.content or b"{}"))
            if request.method == "POST":
                return await self._insert(path, params, request)
            if request.method == "PATCH":
                return await self._update(path, params, json.loads(request.content))
            if request.method == "GET":
                return await self._select(path, params)
        except psycopg.Error as exc:
            return self._sql_error(exc)
        return _error(405, "PGRST117", f"unsupported by the replay: {request.method} {path}")

    async def _run(self, query: sql.Composable, args: list[Any]) -> Any:
        """One PostgREST request: one transaction, as service_role, returning one JSON value."""
        assert self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SET LOCAL ROLE service_role")
            await conn.execute("SET LOCAL search_path = public, extensions")
            cursor = await conn.execute(query, args)
            row = await cursor.fetchone()
            return row[0] if row else None

    @staticmethod
    def _sql_error(exc: psycopg.Error) -> httpx.Response:
        code = exc.sqlstate or "XX000"
        message = exc.diag.message_primary or str(exc)
        status = 400
        if code == "42883":  # the function or those argument names do not exist
            return _error(404, "PGRST202", f"Could not find the function: {message}")
        if code.startswith("23"):
            status = 409
        elif code == "42501":
            status = 403
        elif code.startswith(("08", "53", "57")):
            status = 503
        return _error(status, code, message, exc.diag.message_detail)

    async def _rpc(self, function: str, args: dict[str, Any]) -> httpx.Response:
        assert self._pool is not None
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT p.proretset, t.typtype = 'c' OR p.proargmodes IS NOT NULL AND 't' = ANY(p.proargmodes), "
                "p.prorettype = 'void'::regtype "
                "FROM pg_proc p JOIN pg_type t ON t.oid = p.prorettype "
                "WHERE p.pronamespace = 'public'::regnamespace AND p.proname = %s",
                (function,),
            )
            found = await cursor.fetchone()
            await conn.rollback()
        if found is None:
            return _error(404, "PGRST202", f"Could not find the function public.{function}")
        returns_rows = found[0] or found[1]
        call = sql.SQL("public.{}({})").format(
            sql.Identifier(function),
            sql.SQL(", ").join(sql.SQL("{} => %s").format(sql.Identifier(name)) for name in args),
        )
        values = [_untyped(value) for value in args.values()]
        if returns_rows:
            query = sql.SQL("SELECT coalesce(json_agg(_r), '[]'::json) FROM {} AS _r").format(call)
            return httpx.Response(200, json=await self._run(query, values))
        if found[2]:  # void: PostgREST answers null
            await self._run(sql.SQL("SELECT {}::text").format(call), values)
            return httpx.Response(200, json=None)
        result = await self._run(sql.SQL("SELECT to_json({})").format(call), values)
        return httpx.Response(200, json=result)

    async def _insert(
        self, table: str, params: list[tuple[str, str]], request: httpx.Request
    ) -> httpx.Response:
        body = json.loads(request.content)
        rows = body if isinstance(body, list) else [body]
        prefer = {
            key.strip(): value.strip()
            for part in request.headers.get("prefer", "").split(",")
            if "=" in part
            for key, value in [part.split("=", 1)]
        }
        query_params = dict(params)
        columns: list[str] = []
        for row in rows:
            columns.extend(key for key in row if key not in columns)
        missing = sql.SQL("DEFAULT") if prefer.get("missing") == "default" else sql.SQL("NULL")
        values_sql: list[sql.Composable] = []
        args: list[Any] = []
        for row in rows:
            cells: list[sql.Composable] = []
            for column in columns:
                if column in row:
                    cells.append(sql.Placeholder())
                    args.append(_untyped(row[column]))
                else:
                    cells.append(missing)
            values_sql.append(sql.SQL("({})").format(sql.SQL(", ").join(cells)))
        conflict: sql.Composable = sql.SQL("")
        resolution = prefer.get("resolution")
        if resolution:
            targets = [c for c in query_params.get("on_conflict", "").split(",") if c]
            target = sql.SQL(", ").join(map(sql.Identifier, targets))
            if resolution == "ignore-duplicates":
                conflict = sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(target)
            else:
                updates = sql.SQL(", ").join(
                    sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in columns
                )
                conflict = sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(target, updates)
        query = sql.SQL(
            "WITH _w AS (INSERT INTO public.{} ({}) VALUES {}{} RETURNING *) "
            "SELECT coalesce(json_agg(_w), '[]'::json) FROM _w"
        ).format(
            sql.Identifier(table),
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(values_sql),
            conflict,
        )
        result = await self._run(query, args)
        if prefer.get("return") == "representation":
            return httpx.Response(201, json=result)
        return httpx.Response(201, json=[])

    @staticmethod
    def _where(params: list[tuple[str, str]]) -> tuple[sql.Composable, list[Any]]:
        clauses: list[sql.Composable] = [sql.SQL("true")]
        args: list[Any] = []
        for column, expression in params:
            if column in _RESERVED_PARAMS:
                continue
            match = _FILTER.match(expression)
            if match is None:
                raise ValueError(f"unsupported filter {column}={expression}")
            negate, operator, value = match.groups()
            ident = sql.Identifier(column)
            if operator == "is":
                clause: sql.Composable = sql.SQL("{} IS {}").format(
                    ident, sql.SQL({"null": "NULL", "true": "TRUE", "false": "FALSE"}[value.lower()])
                )
            elif operator == "in":
                items = [item.strip('"') for item in value.strip("()").split(",") if item]
                clause = sql.SQL("{}::text = ANY(%s)").format(ident)
                args.append(items)
            else:
                clause = sql.SQL("{} {} %s").format(ident, sql.SQL(_OPERATORS[operator]))
                args.append(value)
            clauses.append(sql.SQL("NOT ({})").format(clause) if negate else clause)
        return sql.SQL(" AND ").join(clauses), args

    async def _update(
        self, table: str, params: list[tuple[str, str]], body: dict[str, Any]
    ) -> httpx.Response:
        where, where_args = self._where(params)
        sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(column)) for column in body)
        query = sql.SQL(
            "WITH _w AS (UPDATE public.{} SET {} WHERE {} RETURNING *) "
            "SELECT coalesce(json_agg(_w), '[]'::json) FROM _w"
        ).format(sql.Identifier(table), sets, where)
        return httpx.Response(200, json=await self._run(query, [*map(_untyped, body.values()), *where_args]))

    async def _select(self, table: str, params: list[tuple[str, str]]) -> httpx.Response:
        query_params = dict(params)
        selected = query_params.get("select", "*")
        columns = (
            sql.SQL("*")
            if selected == "*"
            else sql.SQL(", ").join(sql.Identifier(c.strip()) for c in selected.split(","))
        )
        where, args = self._where(params)
        limit = (
            sql.SQL(" LIMIT {}").format(int(query_params["limit"]))
            if "limit" in query_params
            else sql.SQL("")
        )
        query = sql.SQL(
            "SELECT coalesce(json_agg(_s), '[]'::json) FROM (SELECT {} FROM public.{} WHERE {}{}) AS _s"
        ).format(columns, sql.Identifier(table), where, limit)
        return httpx.Response(200, json=await self._run(query, args))
