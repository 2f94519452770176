"""GET /health: liveness for Render and counters for people. Never calls OpenAI or Meta."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from src.api.deps import ServicesDep
from src.stats import health_payload

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

HEALTH_STORE_TIMEOUT_SECONDS = 2.0


@router.get("/health", summary="Server health and counters")
async def read_health(services: ServicesDep) -> JSONResponse:
    """Component status, runtime counters, stored aggregates and queue depth."""
    settings = services.settings
    stored = None
    try:  # Render polls this: answer within seconds even when the database hangs
        store_ok = await asyncio.wait_for(services.store.ping(), HEALTH_STORE_TIMEOUT_SECONDS)
        if store_ok:
            stored = await asyncio.wait_for(services.store.stats(), HEALTH_STORE_TIMEOUT_SECONDS)
    except TimeoutError:
        log.warning("store did not answer /health within %ss", HEALTH_STORE_TIMEOUT_SECONDS)
        store_ok = False
    except Exception:
        log.exception("store stats failed")
        store_ok = False
    worker_alive = services.pipeline.running or not settings.WORKER_ENABLED
    components: dict[str, Any] = {
        "webhook": True,
        "whatsapp_api": bool(settings.WHATSAPP_ACCESS_TOKEN and settings.WHATSAPP_PHONE_NUMBER_ID),
        "embedding_processor": True,
        "rag_searcher": True,
        "supabase": settings.store_backend == "supabase" and store_ok,
        "openai": settings.embedding_backend == "openai",
        "watch_extractor": True,
        "store": store_ok,
        "worker": worker_alive,
    }
    status = "healthy" if store_ok and worker_alive else "degraded"
    payload = health_payload(
        status=status,
        components=components,
        runtime=services.runtime,
        stored=stored,
        store_backend=services.store.backend_name,
        embedding_model=services.embedder.model_name,
    )
    return JSONResponse(payload, status_code=200 if store_ok else 503)
