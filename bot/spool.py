"""The local spool: every update a channel pushed or handed out once, on disk before anything
else, replayed in order when the database can take it.

A webhook (Telegram, Zalo Bot, Zalo OA) and Zalo Bot's polling (which hands each update out
once) give an update to :meth:`SpoolIntake.submit`. It is appended to today's spool file and
fsync'd before ``submit`` returns, so the 200 (or the next poll) goes out only for an update that
survives a crash or a database outage. Then :class:`SpoolIntake` hands it to its channel's
handler: one chat's updates strictly in spool order, different chats concurrently. A handled
update is acknowledged in the file; an update met by a database outage stays, and is handed
again, in order, when the database is back (:class:`~bot.outage.DatabaseWatch`).

Files: ``<data_dir>/spool/spool-YYYYMMDD.log`` (UTC day), directory 0700, files 0600. Each line
is ``R <seq> <channel> <token>`` (an update, encrypted with the keyring since it holds the
citizen's ids) or ``A <seq>`` (handled). A file whose every update is handled is deleted. A
torn last line (a crash mid-write, never acknowledged to the sender) is skipped. Acknowledgements
are not fsync'd: one lost in a crash makes the update handled twice, which the update ids
stored with each conversation (and Zalo's message keys) recognise as a duplicate.

Counters for ``/metrics``: :meth:`SpoolIntake.size` (updates waiting),
:attr:`Spool.appended`, :attr:`Spool.failures`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.outage import DatabaseDown, DatabaseWatch
from handlers.security import Keyring
from storage.types import utcnow

log = logging.getLogger(__name__)

#: Handles one update: ``True`` once it is handled (or can never be), ``False`` to keep it.
Handler = Callable[[dict[str, Any]], Awaitable[bool]]
#: The key that orders an update: updates with the same key are handled one after another.
ChatKey = Callable[[dict[str, Any]], str | None]


class SpoolError(Exception):
    """The update could not be written down: the sender must deliver it again."""


@dataclass(frozen=True)
class Record:
    seq: int
    channel: str
    data: dict[str, Any]
    file: str


class Spool:
    """Append-only, fsync'd, encrypted files of updates not handled yet."""

    def __init__(self, directory: Path, keyring: Keyring) -> None:
        self.directory = directory
        self.keyring = keyring
        self._pending: dict[int, Record] = {}
        self._per_file: dict[str, int] = {}
        self._last = 0
        self._lock = asyncio.Lock()
        self._loaded = False
        #: Updates written since the start, and writes that failed.
        self.appended = 0
        self.failures = 0

    def _path(self, name: str) -> Path:
        return self.directory / name

    def load(self) -> None:
        """Read what a previous run left; idempotent."""
        if self._loaded:
            return
        self._loaded = True
        if not self.directory.exists():
            self.directory.mkdir(parents=True, mode=0o700)
        for path in sorted(self.directory.glob("spool-*.log")):
            records: dict[int, Record] = {}
            with path.open("rb") as handle:
                for number, raw in enumerate(handle, 1):
                    self._read_line(path.name, number, raw, records)
            self._pending.update(records)
            if records:
                self._per_file[path.name] = len(records)
            else:
                path.unlink(missing_ok=True)
        if self._pending:
            log.warning("the spool holds %d updates from before; replaying", len(self._pending))

    def _read_line(self, name: str, number: int, raw: bytes, records: dict[int, Record]) -> None:
        try:
            kind, rest = raw.decode("ascii").rstrip("\n").split(" ", 1)
            if kind == "A":
                seq = int(rest)
                records.pop(seq, None)
                self._last = max(self._last, seq)
                return
            seq_text, channel, token = rest.split(" ", 2)
            seq = int(seq_text)
            data = self.keyring.decrypt(token)
        except (ValueError, UnicodeDecodeError):
            log.warning("spool %s: line %d cannot be read; skipped", name, number)
            return
        self._last = max(self._last, seq)
        records[seq] = Record(seq, channel, data.get("u", {}), name)

    def pending(self) -> list[Record]:
        return [self._pending[seq] for seq in sorted(self._pending)]

    def __len__(self) -> int:
        return len(self._pending)

    async def append(self, channel: str, data: dict[str, Any]) -> Record:
        """Write ``data`` down (fsync'd); raise :class:`SpoolError` when that fails."""
        self.load()
        token = self.keyring.encrypt({"u": data})
        async with self._lock:
            seq = self._last + 1
            name = f"spool-{utcnow():%Y%m%d}.log"
            line = f"R {seq} {channel} {token}\n".encode("ascii")
            try:
                await asyncio.to_thread(self._write, name, line, True)
            except OSError as exc:
                self.failures += 1
                log.error("the spool cannot be written (%s)", type(exc).__name__)
                raise SpoolError(type(exc).__name__) from exc
            self._last = seq
            record = Record(seq, channel, data, name)
            self._pending[seq] = record
            self._per_file[name] = self._per_file.get(name, 0) + 1
            self.appended += 1
            return record

    def _write(self, name: str, line: bytes, sync: bool) -> None:
        fd = os.open(self._path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def ack(self, seq: int) -> None:
        """The update is handled; its file goes when nothing in it waits any more."""
        record = self._pending.pop(seq, None)
        if record is None:
            return
        left = self._per_file.get(record.file, 1) - 1
        try:
            if left <= 0:
                self._per_file.pop(record.file, None)
                self._path(record.file).unlink(missing_ok=True)
            else:
                self._per_file[record.file] = left
                self._write(record.file, f"A {seq}\n".encode("ascii"), False)
        except OSError as exc:  # handled twice after a restart at worst (recognised then)
            log.warning("spool acknowledgement not written (%s)", type(exc).__name__)


class SpoolIntake:
    """Hands spooled updates to their channel's handler, in order per chat."""

    def __init__(self, spool: Spool, watch: DatabaseWatch) -> None:
        self.spool = spool
        self.watch = watch
        self._handlers: dict[str, tuple[Handler, ChatKey]] = {}
        self._wake = asyncio.Event()
        self._inflight: set[int] = set()
        self._tails: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._blocked: set[tuple[str, str]] = set()
        self._resume: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        #: Updates handled from the spool since the start.
        self.handled = 0

    def size(self) -> int:
        """Updates in the spool that are not handled yet (``/healthz``, ``/metrics``)."""
        return len(self.spool)

    def register(self, channel: str, handler: Handler, chat_key: ChatKey) -> None:
        self._handlers[channel] = (handler, chat_key)
        self._wake.set()

    async def submit(self, channel: str, data: dict[str, Any]) -> None:
        """Write ``data`` down, then queue it; raise :class:`SpoolError` if it is not written."""
        await self.spool.append(channel, data)
        self._wake.set()

    async def drained(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait until the spool is empty (tests, a graceful stop)."""
        async with asyncio.timeout(timeout):
            while len(self.spool):  # noqa: ASYNC110 - tests only
                await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.spool.load()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="spool-intake")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._resume, *self._tails.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = self._resume = None
        self._tails.clear()
        self._inflight.clear()

    async def _run(self) -> None:
        self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._dispatch()

    def _dispatch(self) -> None:
        for record in self.spool.pending():
            if record.seq in self._inflight or record.channel not in self._handlers:
                continue
            handler, chat_key = self._handlers[record.channel]
            try:
                chat = chat_key(record.data) or ""
            except Exception:  # an update no chat can be read from: handled on its own
                chat = f"#{record.seq}"
            key = (record.channel, chat)
            if key in self._blocked:
                continue
            self._inflight.add(record.seq)
            previous = self._tails.get(key)
            task = asyncio.create_task(self._one(record, key, handler, previous))
            self._tails[key] = task
            task.add_done_callback(functools.partial(self._forget_tail, key))

    def _forget_tail(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._tails.get(key) is task:
            del self._tails[key]

    async def _one(
        self,
        record: Record,
        key: tuple[str, str],
        handler: Handler,
        previous: asyncio.Task[None] | None,
    ) -> None:
        try:
            if previous is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(previous)
            if key in self._blocked:  # an earlier update of this chat waits: keep the order
                return
            try:
                done = await handler(record.data)
            except DatabaseDown:
                done = False
            except Exception as exc:  # never retried forever: logged (no content) and dropped
                log.error(
                    "a %s update from the spool failed (%s); dropped",
                    record.channel,
                    type(exc).__name__,
                )
                done = True
            if done:
                self.spool.ack(record.seq)
                self.handled += 1
            else:
                self._blocked.add(key)
                if self._resume is None or self._resume.done():
                    self._resume = asyncio.create_task(self._resume_after_outage())
        finally:
            self._inflight.discard(record.seq)

    async def _resume_after_outage(self) -> None:
        """When the database is back, and every update of a held chat has stopped, replay."""
        await asyncio.sleep(0.2)
        await self.watch.wait_up()
        while True:
            waiting = [self._tails[key] for key in self._blocked if key in self._tails]
            if not waiting:
                break
            await asyncio.wait(waiting)
        if self.watch.down:  # down again meanwhile
            self._resume = asyncio.create_task(self._resume_after_outage())
            return
        self._blocked.clear()
        self._wake.set()
