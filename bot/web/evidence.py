"""Evidence from a web form: each file cleaned as in the chat, kept across a corrected form.

Images are recognised by content and re-encoded without EXIF, GPS or any other metadata; other
files are refused (the web cannot pass a video on uncleaned). Cleaned images are stored at once,
and the form carries a sealed list of them, so a form sent back for a correction loses nothing.
An image whose report is never sent is removed by the maintenance purge of orphaned images.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bot.web.forms import Form
from handlers.citizen.base import IMAGE_REFUSALS
from handlers.i18n import t
from handlers.media import CleanImage, MediaRejected, clean_image
from handlers.security import Keyring
from storage.repositories import Media

#: How long a sealed list of kept images is honoured.
KEPT_TTL = 6 * 3600


def unseal(keyring: Keyring, token: str) -> list[dict[str, Any]]:
    if not token:
        return []
    try:
        data = keyring.decrypt(token)
    except ValueError:
        return []
    if int(data.get("x", 0)) < time.time() or not isinstance(data.get("m"), list):
        return []
    return [item for item in data["m"] if isinstance(item, dict) and "blob_id" in item]


def seal(keyring: Keyring, media: list[dict[str, Any]]) -> str:
    return keyring.encrypt({"m": media, "x": int(time.time()) + KEPT_TTL}) if media else ""


async def take_evidence(
    session_factory: Any,
    keyring: Keyring,
    form: Form,
    *,
    locale: str,
    limit: int,
    errors: dict[str, str],
    field: str = "evidence",
) -> list[dict[str, Any]]:
    """The evidence kept so far plus the cleaned new files; a refusal goes in ``errors``."""
    media = unseal(keyring, form.get("kept"))
    cleaned: list[CleanImage] = []
    for upload in form.uploads:
        if len(media) + len(cleaned) >= limit:
            errors[field] = t(locale, "ev.limit", limit=limit)
            break
        if upload.content is None:
            errors[field] = t(locale, "web.err.file_too_large", name=upload.name)
            continue
        try:
            image = await asyncio.to_thread(clean_image, upload.content)
        except MediaRejected as exc:
            key = IMAGE_REFUSALS.get(exc.reason, "ev.failed")
            errors[field] = t(locale, "web.err.file", name=upload.name, reason=t(locale, key))
            continue
        cleaned.append(image)
    if form.over_total:
        errors[field] = t(locale, "web.err.upload_total")
    if cleaned:
        async with session_factory() as session, session.begin():
            for image in cleaned:
                blob = await Media(session).add_blob(
                    content=image.content, mime=image.mime, sha256=image.sha256
                )
                media.append(
                    {"kind": "photo", "blob_id": blob.id, "mime": image.mime, "size": blob.size}
                )
    return media
