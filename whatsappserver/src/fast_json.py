"""JSON on the hot paths with orjson (several times faster than the standard library), falling back to
`json` for what orjson refuses and the standard library accepts (lone surrogate escapes, which the webhook
cleans afterwards), so a body is never rejected for the parser's sake. One difference stays: orjson reads
an integer beyond 64 bits as a float; no WhatsApp payload carries one.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises json.JSONDecodeError (or UnicodeDecodeError, RecursionError) as `json.loads` does."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def loads_checked(data: bytes | str) -> tuple[Any, bool]:
    """Parse JSON as `loads` does; the flag is True when the standard library had to (its strings may then
    hold lone surrogates, which orjson refuses to produce)."""
    try:
        return orjson.loads(data), False
    except orjson.JSONDecodeError:
        return json.loads(data), True


def dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII kept as is (what `json.dumps(ensure_ascii=False)` keeps)."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError: big integers, lone surrogates, keys that are not str
        return json.dumps(value, ensure_ascii=False)
