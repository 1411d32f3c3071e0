"""Logging set-up: a root filter scrubs secrets (the bot token) from messages and tracebacks.

No tipster identifier is ever passed to a logger; chatty library loggers that would print whole
updates or request URLs are held at WARNING.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

#: Libraries that log whole updates (with the sender's ids) or request URLs at DEBUG/INFO, and
#: Pillow, which logs the EXIF fields (GPS position, camera) of every image it opens at DEBUG.
QUIET_LOGGERS = (
    "httpx",
    "httpcore",
    "telegram",
    "aiosqlite",
    "aiohttp.access",
    "apscheduler",
    "PIL",
)


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


SCRUBBER = SecretScrubber()


def install_scrubber(secret: str | None) -> None:
    """Scrub ``secret`` from every record that reaches the root logger's handlers."""
    SCRUBBER.add(secret)
    root = logging.getLogger()
    for handler in root.handlers:
        if SCRUBBER not in handler.filters:
            handler.addFilter(SCRUBBER)
    if SCRUBBER not in root.filters:
        root.addFilter(SCRUBBER)


def quiet_library_loggers() -> None:
    """Hold the chatty libraries at WARNING whatever the root level: at DEBUG,
    python-telegram-bot logs every update whole, the citizen's ids and name included."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_library_loggers()
    install_scrubber(None)
