"""The facts a watch trader cares about, as pydantic models shared by the extractor, the store and search."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

MessageType = Literal["sale", "wanted", "question", "trade", "other"]
Condition = Literal["new", "excellent", "good", "used", "vintage"]
Movement = Literal["automatic", "manual", "quartz"]


class WatchListing(BaseModel):
    """One watch offered, wanted or asked about in a message (a stock list gives one per line)."""

    brand: str | None = None
    model: str | None = None
    reference: str | None = None
    price: float | None = None
    currency: str | None = None
    price_eur: float | None = None
    condition: Condition | None = None
    year: int | None = None
    size_mm: float | None = None
    movement: Movement | None = None
    box: bool | None = None
    papers: bool | None = None
    text: str = ""


class WatchInfo(BaseModel):
    """Everything extracted from one message."""

    message_type: MessageType = "other"
    confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    watches: list[WatchListing] = Field(default_factory=list)


_REFERENCE_NOISE = str.maketrans("", "", " .-/\u00a0\u202f")


def normalize_reference(reference: str) -> str:
    """Compare references the way dealers mean them: upper-case, no spaces, dots, dashes or slashes."""
    return reference.upper().translate(_REFERENCE_NOISE)
