"""Typed dependency aliases shared by the routes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from src.services import Services


async def get_services(request: Request) -> Services:
    """Async on purpose: a sync dependency would cost every request a hop through the thread pool."""
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The server's SEARCH_API_KEY")


async def require_api_key(services: ServicesDep, api_key: str | None = Security(_api_key_header)) -> None:
    """Search endpoints answer only with X-API-Key equal to SEARCH_API_KEY (open when unset in development)."""
    expected = services.settings.SEARCH_API_KEY
    if not expected:
        return
    if not api_key or not hmac.compare_digest(api_key.encode(), expected.encode()):
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")


ApiKeyDep = Depends(require_api_key)
