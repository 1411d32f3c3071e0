"""Cleaning of citizen text: odd Unicode in, plain text out."""

from __future__ import annotations

import re
import unicodedata

_BLANK_LINES = re.compile(r"\n{3,}")
_SPACES = re.compile(r"[ \t\u00a0]+")


def clean_text(text: str) -> str:
    """NFC-normalise, drop control and invisible format characters, trim.

    Bidirectional overrides (U+202E...), zero-width characters and other ``Cf`` code points are
    dropped, except the zero-width joiner that emoji sequences need. Line breaks are kept.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in "\n\t" or ch == "\u200d":
            kept.append(ch)
        elif category in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        else:
            kept.append(ch)
    cleaned = "".join(kept)
    cleaned = "\n".join(_SPACES.sub(" ", line).strip() for line in cleaned.split("\n"))
    return _BLANK_LINES.sub("\n\n", cleaned).strip()


def substance(text: str) -> int:
    """How many letters and digits the text holds (emoji and punctuation do not count)."""
    return sum(1 for ch in text if ch.isalnum())
