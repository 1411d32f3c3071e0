"""Ogg voice notes lose their comment header (OpusTags / Vorbis comments) and still play.

The fixtures are real Ogg Opus and Ogg Vorbis files, encoded here by libsndfile and tagged with
mutagen (``tests.standin.factory.make_ogg``); "still play" means libsndfile decodes the cleaned
file to exactly the samples of the tagged one.
"""

from __future__ import annotations

import io

import mutagen
import numpy as np
import pytest
import soundfile
from sqlalchemy import select

from handlers.events import Attachment
from handlers.i18n import t
from handlers.media import (
    OGG_OPUS,
    OGG_VORBIS,
    UNCLEANED_OGG,
    CleanFile,
    clean_evidence,
    is_cleaned,
    neutral_name,
)
from storage.models import MediaBlob, ReportMedia
from tests.driver import FileStore, citizen, label, make_flow, sync_units
from tests.standin import BotAPIStandIn
from tests.standin.factory import OGG_TAGS, make_ogg
from tests.test_delivery import UNIT_CHAT, SquareLocator, make_worker

VENDORS = (b"libopus", b"libVorbis", b"libsndfile")


def _decoded(data: bytes) -> np.ndarray:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert rate == 48_000
    return samples


def _leaks(data: bytes) -> list[bytes]:
    needles = [value.encode() for value in OGG_TAGS.values()]
    return [n for n in (*needles, *VENDORS, b"ARTIST", b"LOCATION") if n in data]


@pytest.mark.parametrize(("codec", "mime"), [("opus", OGG_OPUS), ("vorbis", OGG_VORBIS)])
def test_an_ogg_voice_note_comes_out_without_its_tags_and_plays_the_same(
    codec: str, mime: str
) -> None:
    tagged = make_ogg(codec)
    assert mutagen.File(io.BytesIO(tagged)).tags["ARTIST"] == [OGG_TAGS["ARTIST"]]
    assert _leaks(tagged)  # the fixture carries what must go

    result = clean_evidence(tagged)

    assert isinstance(result, CleanFile)
    assert (result.mime, result.cleaned, is_cleaned(result.mime)) == (mime, True, True)
    assert _leaks(result.content) == []
    read_back = mutagen.File(io.BytesIO(result.content))
    assert read_back is not None and len(read_back.tags) == 0 and read_back.tags.vendor == ""
    assert np.array_equal(_decoded(result.content), _decoded(tagged))
    assert neutral_name(0, result.mime) == "evidence-1.ogg"
    # Cleaning a cleaned file changes nothing.
    assert clean_evidence(result.content).content == result.content


def _two_streams() -> bytes:
    """A chained Ogg: two logical streams one after the other (the second keeps its tags)."""
    first, second = make_ogg("opus"), make_ogg("vorbis")
    assert first[14:18] != second[14:18]  # libsndfile picks each stream's serial at random
    return first + second


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(make_ogg("opus") + b"ARTIST=hidden after the last page", id="trailing"),
        pytest.param(make_ogg("opus")[:-20], id="truncated"),
        pytest.param(b"OggS\x00\x02" + bytes(20), id="not-a-page"),
        pytest.param(_two_streams(), id="chained"),
    ],
)
def test_an_ogg_file_that_cannot_be_cleaned_is_passed_on_marked_as_such(data: bytes) -> None:
    result = clean_evidence(data)
    assert isinstance(result, CleanFile)
    assert (result.mime, result.cleaned, result.content) == (UNCLEANED_OGG, False, data)
    assert not is_cleaned(result.mime)


async def test_a_tagged_voice_note_reaches_officers_cleaned_with_no_warning(session_factory):
    """By content, not by name: the voice note comes as a document called ``.bin``."""
    await sync_units(session_factory)
    tagged = make_ogg("opus")
    async with BotAPIStandIn() as standin:
        flow = make_flow()
        flow.locator = SquareLocator()
        c = citizen(session_factory, 5151, flow=flow)
        c.files = FileStore({"VN1": tagged})
        await c.command("start")
        await c.press(label("vi", "menu.tip"))
        await c.press(label("vi", "cat.drugs"))
        await c.location(10.38, 105.42)
        await c.press(label("vi", "when.now"))
        await c.say("Có người bán ma túy ở quán nước đầu hẻm")
        await c.attach(
            Attachment("document", "VN1", len(tagged), "application/octet-stream", "rec.bin")
        )
        await c.press(label("vi", "ev.done"))
        await c.press(label("vi", "contact.none", mark=""))
        await c.press(label("vi", "summary.confirm"))
        async with session_factory() as session:
            media = await session.scalar(select(ReportMedia))
            assert media is not None and media.mime == OGG_OPUS
            stored = await session.scalar(
                select(MediaBlob.content).where(MediaBlob.id == media.blob_id)
            )
        assert stored is not None and _leaks(stored) == []

        worker = make_worker(session_factory, standin)
        assert await worker.run_once() == 1
        await worker.bot.shutdown()
        card, _pin, document = standin.sent_to(UNIT_CHAT)
        assert card.text is not None
        warning = t("vi", "evidence.not_cleaned", files="1").split(":")[0]
        assert warning not in card.text
        assert {n: (u.filename, u.content) for n, u in document.uploads.items()} == {
            "document": ("evidence-1.ogg", stored)
        }
        assert np.array_equal(_decoded(stored), _decoded(tagged))
