"""pywa's FastAPI webhook handler with a no-op message handler: the reference bench/load.py compares against.

Run by the bench as `uvicorn pywa_app:app` with PYWA_APP_SECRET and PYWA_VERIFY_TOKEN in the environment.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from pywa_async import WhatsApp, types

app = FastAPI()
wa = WhatsApp(
    phone_id="100000000000001",
    token="bench-token-not-used",
    server=app,
    verify_token=os.environ.get("PYWA_VERIFY_TOKEN", "bench-verify"),
    app_secret=os.environ.get("PYWA_APP_SECRET", "bench-secret"),
    webhook_endpoint="/webhook",
)


@wa.on_message()
async def ignore(_: WhatsApp, __: types.Message) -> None:
    """No-op: the bench measures intake alone."""
