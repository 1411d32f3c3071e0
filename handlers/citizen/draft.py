"""A report being written: its fields, typed, and the limits each one keeps.

The conversation stores the draft as a JSON object (saved on every step); :class:`Draft` is the
typed view over that object, and :class:`DraftInput` is the same content handed over without a
conversation (the web form).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from handlers.domain import DEFAULT_CONTACT_MODE
from handlers.text import clean_text, substance

DESCRIPTION_MIN = 10
DESCRIPTION_MAX = 4000
SHORT_TEXT_MAX = 300
PLACE_QUERY_MAX = 100
CAPTION_MAX = 1000
SUMMARY_PREVIEW = 800


def check_description(text: str) -> str | None:
    """The catalogue key that says why ``text`` is no description, or ``None`` if it is one."""
    if len(text) > DESCRIPTION_MAX:
        return "desc.too_long"
    if len(text) < DESCRIPTION_MIN or substance(text) < 3:
        return "desc.too_short"
    return None


def check_short_text(text: str) -> str | None:
    """The catalogue key that says why ``text`` cannot be a short answer (a time, a place)."""
    if len(text) > SHORT_TEXT_MAX:
        return "err.too_long"
    if substance(text) < 1:
        return "err.no_words"
    return None


class Draft:
    """The typed view of a stored draft (changes write through to the stored object)."""

    __slots__ = ("raw",)

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    @property
    def kind(self) -> str:
        return "emergency" if self.raw.get("kind") == "emergency" else "tip"

    @property
    def category(self) -> str | None:
        value = self.raw.get("category")
        return value if isinstance(value, str) else None

    @property
    def description(self) -> str:
        return str(self.raw.get("description") or "")

    @property
    def media(self) -> list[dict[str, Any]]:
        media = self.raw.setdefault("media", [])
        return media if isinstance(media, list) else []

    @property
    def contact_mode(self) -> str:
        return str(self.raw.get("contact_mode") or DEFAULT_CONTACT_MODE)

    def missing(self) -> list[str]:
        """The fields a tip cannot be sent without, in the order they are asked."""
        return [name for name in ("category", "description") if not self.raw.get(name)]


@dataclass(frozen=True)
class DraftInput:
    """A whole report handed over at once (the web form): the same fields as a draft."""

    kind: str = "tip"
    category: str | None = None
    unit_code: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    place_text: str | None = None
    occurred: str = "unknown"
    occurred_text: str | None = None
    description: str | None = None
    injured: str | None = None
    injured_count: int | None = None
    media: list[dict[str, Any]] = field(default_factory=list)

    def as_draft(self, contact_mode: str) -> dict[str, Any]:
        draft: dict[str, Any] = {
            "kind": self.kind,
            "media": list(self.media),
            "contact_mode": contact_mode,
            "occurred": self.occurred,
        }
        for name in (
            "category",
            "unit_code",
            "latitude",
            "longitude",
            "injured",
            "injured_count",
        ):
            value = getattr(self, name)
            if value is not None:
                draft[name] = value
        for name in ("place_text", "occurred_text", "description"):
            value = getattr(self, name)
            if value is not None:
                draft[name] = clean_text(value)
        return draft
