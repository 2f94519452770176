"""Logging: one line per event. At INFO no phone number or message text is ever logged (tested)."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_whatsappserver", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._whatsappserver = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    if root.level <= logging.DEBUG:
        logging.getLogger(__name__).warning("DEBUG logs may contain phone numbers and message text")
