"""The log cannot be flooded, and nothing quietened leaks evidence metadata."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from PIL import Image

from bot.logs import QUIET_LOGGERS, RateLimitFilter, quiet_library_loggers
from tests.standin.factory import make_jpeg


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sink(clock: Clock) -> Iterator[tuple[logging.Logger, io.StringIO, RateLimitFilter]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    limiter = RateLimitFilter(clock=clock)
    handler.addFilter(limiter)
    logger = logging.getLogger("tests.flood")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, stream, limiter
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.startswith(("INFO", "ERR"))]


def test_a_thousand_identical_errors_write_one_line_then_a_count(sink, clock):
    logger, stream, limiter = sink
    for _ in range(1000):
        try:
            raise RuntimeError("database unreachable")
        except RuntimeError:
            logger.exception("delivery failed: %s", "OperationalError")
    assert len(lines(stream)) == 1
    assert len(stream.getvalue()) < 2_000  # one line and one short traceback
    assert limiter.suppressed_total == 999
    clock.now += 61
    logger.error("delivery failed: %s", "OperationalError")
    assert len(lines(stream)) == 2
    assert "[999 similar lines held back in the last 60s]" in lines(stream)[1]


def test_errors_that_differ_are_capped_per_call_site(sink, clock):
    logger, stream, limiter = sink
    for update_id in range(1000):
        logger.error("skipped update %d", update_id)
    assert len(lines(stream)) == 10
    assert limiter.suppressed_total == 990


def test_informational_lines_that_differ_all_pass(sink):
    logger, stream, _ = sink
    for number in range(100):
        logger.info("report %d delivered", number)
    assert len(lines(stream)) == 100


def test_a_huge_message_and_traceback_are_truncated(sink):
    logger, stream, _ = sink
    try:
        raise ValueError("x" * 100_000)
    except ValueError:
        logger.exception("bad input %s", "y" * 100_000)
    assert len(stream.getvalue()) < 12_000
    assert "characters cut" in stream.getvalue()


def test_one_decision_per_record_on_several_handlers(clock):
    limiter = RateLimitFilter(clock=clock)
    streams = [io.StringIO(), io.StringIO()]
    logger = logging.getLogger("tests.two_handlers")
    logger.propagate = False
    handlers = [logging.StreamHandler(s) for s in streams]
    for handler in handlers:
        handler.addFilter(limiter)
        logger.addHandler(handler)
    try:
        logger.warning("same")
        logger.warning("same")
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.propagate = True
    assert [s.getvalue() for s in streams] == ["same\n", "same\n"]
    assert limiter.suppressed_total == 1


def test_pillow_never_logs_exif_fields(caplog):
    assert "PIL" in QUIET_LOGGERS
    jpeg = make_jpeg(16, 16, gps=(10.3759, 105.4185), make="TinbaoPhoneMaker")
    previous = logging.getLogger("PIL").level
    try:
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("PIL").setLevel(logging.NOTSET)
            quiet_library_loggers()
            image = Image.open(io.BytesIO(jpeg))
            image.getexif().get_ifd(0x8825)
            image.load()
    finally:
        logging.getLogger("PIL").setLevel(previous)
    assert "TinbaoPhoneMaker" not in caplog.text
    assert "105" not in caplog.text


def test_quiet_library_loggers_strips_the_client_address_from_aiohttp_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_library_loggers()
    caplog.set_level(logging.DEBUG)
    try:
        raise ValueError("header bytes from 203.0.113.9")
    except ValueError as exc:
        logging.getLogger("aiohttp.server").exception(
            "Error handling request from %s", "203.0.113.9", exc_info=exc
        )
    (record,) = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert record.getMessage() == "Error handling a malformed request: ValueError"
    assert record.exc_info is None and not record.exc_text
    assert "203.0.113.9" not in caplog.text
