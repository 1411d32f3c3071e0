"""Logging set-up: filters on the root handlers scrub secrets and bound the log's growth.

- :class:`SecretScrubber` replaces the bot token in messages and tracebacks.
- :class:`RateLimitFilter` lets an identical line through once a minute, with the count of the
  repeats it held back, caps each call site at a few lines a second, and truncates oversized
  messages and tracebacks, so that no error path can fill the disk.

- :class:`ClientAddressFilter` takes the client's address (and the traceback) out of aiohttp's
  line for a malformed request.

No tipster identifier is ever passed to a logger; chatty library loggers that would print whole
updates, request URLs or image metadata are held at WARNING.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

#: Libraries that log whole updates (with the sender's ids), request URLs, or (Pillow, at
#: DEBUG) the EXIF fields of evidence images: artist, camera serial, GPS.
QUIET_LOGGERS = (
    "httpx",
    "httpcore",
    "telegram",
    "aiosqlite",
    "aiohttp.access",
    "apscheduler",
    "PIL",
)


#: aiohttp's line for a request it could not parse (an oversized header, a bad method), which
#: carries the client's address and a traceback quoting the offending bytes.
_AIOHTTP_REQUEST_ERROR = "Error handling request from"


class ClientAddressFilter(logging.Filter):
    """Rewrites aiohttp's "Error handling request from <address>" records (on the
    ``aiohttp.server`` logger) to name only the kind of error: no client address, and no
    traceback, whose text can quote the request's own header bytes. Other records pass as
    they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_AIOHTTP_REQUEST_ERROR):
            error = record.exc_info[1] if record.exc_info else None
            kind = type(error).__name__ if error is not None else "unknown error"
            record.msg, record.args = "Error handling a malformed request: %s", (kind,)
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


#: Loggers whose records may name a client's address, and the filter that strips it.
ADDRESS_LOGGERS = ("aiohttp.server",)
ADDRESS_FILTER = ClientAddressFilter()


class SecretScrubber(logging.Filter):
    """Replaces every configured secret in a record's final text with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def add(self, secret: str | None) -> None:
        if secret and secret not in self.secrets:
            self.secrets.append(secret)

    def _scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = self._scrub(record.getMessage())
        record.msg, record.args = message, None
        if record.exc_info and record.exc_info[1] is not None:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self._scrub(formatted)
            record.exc_info = None
        return True


@dataclass
class _Seen:
    window_start: float
    passed: int = 0
    suppressed: int = 0


_DECISION = "_tinbao_rate_decision"
_MAX_KEYS = 4096


class RateLimitFilter(logging.Filter):
    """Bounds what repeated log lines can write.

    - An identical line (same logger, level and final text) passes ``identical_burst`` times per
      ``window`` seconds; the first one let through after that carries the number held back.
    - One call site (logger, file, line) passes at most ``site_burst`` warnings or errors per
      ``window``, whatever their text: a loop of different errors from one place is bounded
      too. (Informational lines that differ, one per report or delivery, are not capped.)
    - A message longer than ``max_message`` characters, or a traceback longer than
      ``max_traceback``, is truncated.

    The decision is made once per record, so the filter may sit on several handlers.
    """

    def __init__(
        self,
        *,
        window: float = 60.0,
        identical_burst: int = 1,
        site_burst: int = 10,
        max_message: int = 2000,
        max_traceback: int = 8000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window = window
        self.identical_burst = identical_burst
        self.site_burst = site_burst
        self.max_message = max_message
        self.max_traceback = max_traceback
        self.clock = clock
        #: Lines held back since the process started (shown by /healthz).
        self.suppressed_total = 0
        self._lines: dict[tuple[object, ...], _Seen] = {}
        self._sites: dict[tuple[object, ...], _Seen] = {}

    def _prune(self, now: float) -> None:
        """Forget lines whose window has ended once there are many; all of them if a flood of
        distinct lines keeps the table full (memory stays bounded, a count may be lost)."""
        for table in (self._lines, self._sites):
            if len(table) > _MAX_KEYS:
                for key in [k for k, v in table.items() if now - v.window_start >= self.window]:
                    del table[key]
                if len(table) > _MAX_KEYS // 2:
                    table.clear()

    def _admit(self, seen: _Seen, burst: int, now: float) -> tuple[bool, int]:
        """Whether a line passes, and how many were held back before it (reported once)."""
        if now - seen.window_start >= self.window:
            held = seen.suppressed
            seen.window_start, seen.passed, seen.suppressed = now, 1, 0
            return True, held
        if seen.passed < burst:
            seen.passed += 1
            held, seen.suppressed = seen.suppressed, 0
            return True, held
        seen.suppressed += 1
        return False, 0

    def _truncate(self, record: logging.LogRecord, message: str) -> str:
        if len(message) > self.max_message:
            cut = len(message) - self.max_message
            message = f"{message[: self.max_message]}… [{cut} characters cut]"
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and len(record.exc_text) > self.max_traceback:
            text = record.exc_text
            half = self.max_traceback // 2
            record.exc_text = (
                f"{text[:half]}\n… [{len(text) - 2 * half} characters cut] …\n{text[-half:]}"
            )
        return message

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, _DECISION, None)
        if decided is not None:
            return bool(decided)
        now = self.clock()
        self._prune(now)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is logging's to report
            setattr(record, _DECISION, True)
            return True
        site_key = (record.name, record.pathname, record.lineno)
        site = self._sites.setdefault(site_key, _Seen(now))
        line = self._lines.setdefault((record.name, record.levelno, message), _Seen(now))
        line_ok, line_held = self._admit(line, self.identical_burst, now)
        site_ok, site_held = True, 0
        if line_ok and record.levelno >= logging.WARNING:
            site_ok, site_held = self._admit(site, self.site_burst, now)
        if not (line_ok and site_ok):
            if line_ok:  # counted as passed for the line, but held back by the site cap
                line.passed -= 1
                line.suppressed += 1
            self.suppressed_total += 1
            setattr(record, _DECISION, False)
            return False
        message = self._truncate(record, message)
        held = max(line_held, site_held)
        if held:
            message = f"{message} [{held} similar lines held back in the last {self.window:.0f}s]"
        record.msg, record.args = message, None
        setattr(record, _DECISION, True)
        return True


SCRUBBER = SecretScrubber()
RATE_LIMIT = RateLimitFilter()


def _install(log_filter: logging.Filter) -> None:
    root = logging.getLogger()
    for handler in root.handlers:
        if log_filter not in handler.filters:
            handler.addFilter(log_filter)
    if log_filter not in root.filters:
        root.addFilter(log_filter)


def install_scrubber(secret: str | None) -> None:
    """Scrub ``secret`` from every record that reaches the root logger's handlers (and client
    addresses from aiohttp's error lines)."""
    install_address_filter()
    SCRUBBER.add(secret)
    _install(SCRUBBER)


def install_rate_limit() -> None:
    """Bound repeated lines on the root logger's handlers (after the scrubber: it keys on the
    scrubbed text)."""
    _install(SCRUBBER)
    _install(RATE_LIMIT)


def install_address_filter() -> None:
    """Strip the client's address from aiohttp's malformed-request lines. The filter sits on
    the logger itself, so it applies before any handler (a test's capture included)."""
    for name in ADDRESS_LOGGERS:
        logger = logging.getLogger(name)
        if ADDRESS_FILTER not in logger.filters:
            logger.addFilter(ADDRESS_FILTER)


def quiet_library_loggers() -> None:
    """Hold the chatty libraries at WARNING whatever the root level: at DEBUG,
    python-telegram-bot logs every update whole, the citizen's ids and name included. Also
    strips client addresses from aiohttp's error lines (:func:`install_address_filter`)."""
    install_address_filter()
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``TINBAO_LOG_FORMAT=json``): time (UTC, ISO 8601), level,
    logger, message and, when there is one, the traceback. It formats what the filters left:
    the scrubbed, rate-limited text, never a record's raw arguments."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["traceback"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    quiet_library_loggers()
    install_scrubber(None)
    install_rate_limit()
