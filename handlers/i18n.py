"""The string catalogues: every user-facing string, in Vietnamese first and English.

Each area keeps its own files, ``locales/<area>.<locale>.json`` (``citizen.vi.json``,
``officer.en.json``...). A locale's catalogue is all of its files merged; a key defined twice is
an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from handlers.domain import LOCALES

LOCALE_DIR = Path(__file__).parent / "locales"
DEFAULT_LOCALE = "vi"


@cache
def catalogue(locale: str) -> Mapping[str, str]:
    merged: dict[str, str] = {}
    origin: dict[str, Path] = {}
    for path in sorted(LOCALE_DIR.glob(f"*.{locale}.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"{path}: a catalogue is a flat object of strings")
        for key, value in data.items():
            if key in merged:
                raise ValueError(f"{path}: key {key!r} is already defined in {origin[key]}")
            merged[key] = value
            origin[key] = path
    if not merged:
        raise ValueError(f"no catalogue files for locale {locale!r} in {LOCALE_DIR}")
    return merged


def pick_locale(language_code: str | None, default: str = DEFAULT_LOCALE) -> str:
    """The citizen's locale from a channel's language hint (``en-GB`` → ``en``)."""
    if language_code:
        base = language_code.split("-")[0].lower()
        if base in LOCALES:
            return base
    return default


def t(locale: str | None, key: str, **values: Any) -> str:
    """The string ``key`` in ``locale``; ``{name}`` placeholders are filled from ``values``."""
    strings = catalogue(locale if locale in LOCALES else DEFAULT_LOCALE)
    template = strings[key]
    return template.format(**values) if values else template
