"""Library loggers that would print what a tipster sent are held at WARNING."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from bot.logs import QUIET_LOGGERS, quiet_library_loggers
from handlers import media
from tests.standin.factory import make_jpeg

MAKER = "TinbaoPhoneMaker"


@pytest.fixture
def restore_levels() -> Iterator[None]:
    names = [*QUIET_LOGGERS, "PIL.TiffImagePlugin", "PIL.Image"]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _clean_a_photo_with_exif() -> None:
    photo = make_jpeg(gps=(10.3759, 105.4185), make=MAKER)
    assert isinstance(media.clean_evidence(photo), media.CleanImage)


def test_pillow_logs_exif_at_debug_unless_quietened(caplog, restore_levels):
    for name in ("PIL", "PIL.TiffImagePlugin", "PIL.Image"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    with caplog.at_level(logging.DEBUG):
        _clean_a_photo_with_exif()
    # The hazard is real: left alone, Pillow writes the photo's EXIF fields into the log.
    pil = [r for r in caplog.records if r.name.startswith("PIL")]
    assert pil and any(MAKER in r.getMessage() for r in pil)


def test_a_debug_root_level_lets_no_pillow_line_through(caplog, restore_levels):
    assert "PIL" in QUIET_LOGGERS
    with caplog.at_level(logging.DEBUG):
        quiet_library_loggers()
        _clean_a_photo_with_exif()
        logging.getLogger("tinbao.test").debug("the root still logs at DEBUG")
    assert not [r for r in caplog.records if r.name.startswith("PIL")]
    assert MAKER not in caplog.text
    assert "the root still logs at DEBUG" in caplog.text
    assert logging.getLogger("PIL.TiffImagePlugin").getEffectiveLevel() == logging.WARNING
