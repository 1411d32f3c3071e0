"""Reading and checking the citizen page's forms: the same limits as the chat, errors by field.

A form is read as a stream (multipart or urlencoded) with a cap per file (the chat's image limit)
and for the whole upload. Text fields are cut to a bound; files stay in memory only until they are
cleaned (:func:`handlers.media.clean_image`), after which nothing of the original remains.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web

from handlers.citizen.draft import check_short_text
from handlers.media import MAX_DOWNLOAD_BYTES
from handlers.text import clean_text

FIELD_MAX = 12_000
CHUNK = 64 * 1024
_PHONE_SEPARATORS = re.compile(r"[\s.\-()]")
_PHONE = re.compile(r"(?:\+84|0)\d{8,10}")


class FormTooLarge(Exception):
    """The upload goes beyond every limit: it is not read any further."""


@dataclass
class Upload:
    name: str
    mime: str
    content: bytes | None  # None: over the per-file limit


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)
    over_total: bool = False

    def get(self, name: str) -> str:
        return self.fields.get(name, "")


async def read_form(request: web.Request, *, max_total: int, max_files: int) -> Form:
    """The submitted form; files beyond a limit are marked, never kept whole in memory."""
    form = Form()
    if not request.content_type.startswith("multipart/"):
        data = await request.post()
        for name, value in data.items():
            if isinstance(value, str):
                form.fields.setdefault(name, value[:FIELD_MAX])
                form.lists.setdefault(name, []).append(value[:FIELD_MAX])
        return form
    reader = await request.multipart()
    total = 0
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.filename is not None:
            kept: list[bytes] | None = []
            size = 0
            while chunk := await part.read_chunk(CHUNK):
                size += len(chunk)
                total += len(chunk)
                if total > max_total * 2:
                    raise FormTooLarge()
                if size > MAX_DOWNLOAD_BYTES or total > max_total:
                    kept = None
                    form.over_total = form.over_total or total > max_total
                elif kept is not None:
                    kept.append(chunk)
            if size == 0 and not part.filename:
                continue  # an empty file input
            if len(form.uploads) < max_files + 1:
                content = b"".join(kept) if kept is not None else None
                mime = part.headers.get("Content-Type", "application/octet-stream")
                form.uploads.append(Upload(part.filename[:200], mime[:100], content))
            continue
        raw = bytearray()
        while chunk := await part.read_chunk(CHUNK):
            if len(raw) <= FIELD_MAX * 4:
                raw += chunk
        value = raw.decode("utf-8", "replace")[:FIELD_MAX]
        form.fields.setdefault(part.name, value)
        form.lists.setdefault(part.name, []).append(value)
    return form


def text(form: Form, name: str, limit: int) -> str:
    return clean_text(form.get(name))[:limit]


def short_text_error(value: str) -> str | None:
    return check_short_text(value) if value else None


def phone_number(value: str) -> str | None:
    """A Vietnamese phone number in a plain form, or ``None``."""
    digits = _PHONE_SEPARATORS.sub("", value)
    return digits if _PHONE.fullmatch(digits) else None


def coordinates(form: Form) -> tuple[float, float] | None:
    """The location the page's script filled in, if it is a real point."""
    try:
        latitude, longitude = float(form.get("lat")), float(form.get("lon"))
    except ValueError:
        return None
    if not (math.isfinite(latitude) and math.isfinite(longitude)):
        return None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return None
    return latitude, longitude
