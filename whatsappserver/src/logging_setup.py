"""Logging: one line per event. At INFO no phone number, message text or secret is ever logged (tested).

Uvicorn's access log would print query strings (the verify token of GET /webhook, search queries), so a
filter cuts them off.
"""

from __future__ import annotations

import logging


class DropQueryStrings(logging.Filter):
    """Access-log lines keep the path, never the query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_whatsappserver", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._whatsappserver = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, DropQueryStrings) for f in access.filters):
        access.addFilter(DropQueryStrings())
    for noisy in ("httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    if root.level <= logging.DEBUG:
        logging.getLogger(__name__).warning("DEBUG logs may contain phone numbers and message text")
