"""Start-up wiring of WhatsApp replies and alerts (AUTO_REPLY, ALERTS); the logic lives in src/replies.py.

No routes: this module only builds the Graph API client and hooks the replier into the worker. A missing
WHATSAPP_ACCESS_TOKEN or WHATSAPP_PHONE_NUMBER_ID with either flag on stops the start-up with a message
naming the variable, rather than failing on the first reply.
"""

from __future__ import annotations

import logging

from src.replies import Replier, options_from_settings
from src.services import Services
from src.whatsapp.client import WhatsAppClient

log = logging.getLogger(__name__)


async def on_startup(services: Services) -> None:
    """Build the Graph client and append the replier to the pipeline's hooks when a flag is on."""
    settings = services.settings
    if not (settings.AUTO_REPLY or settings.ALERTS):
        return
    client = WhatsAppClient(
        settings.WHATSAPP_ACCESS_TOKEN,
        settings.WHATSAPP_PHONE_NUMBER_ID,
        base_url=settings.GRAPH_API_BASE_URL,
        api_version=settings.WHATSAPP_API_VERSION,
        timeout=settings.GRAPH_API_TIMEOUT_SECONDS,
        max_retries=settings.GRAPH_API_MAX_RETRIES,
    )
    services.extras["whatsapp_client"] = client
    replier = Replier(services, client, options_from_settings(settings))
    services.extras["replier"] = replier
    services.pipeline.hooks.append(replier.on_processed)
    if not settings.WHATSAPP_BUSINESS_NUMBER:
        log.warning(
            "WHATSAPP_BUSINESS_NUMBER is not set: only echoes and our phone number id are recognised as ours"
        )
    log.info("replies on: auto_reply=%s alerts=%s", settings.AUTO_REPLY, settings.ALERTS)
