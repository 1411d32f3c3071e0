"""The queue map: which officers' chat receives the reports of which units.

A *queue* is an officers' chat: a Telegram group, or one forum topic inside a group
(``message_thread_id``).  Each queue serves one or more units of the catalogue, so a
district-sized cluster of communes can share one queue.  Every unit without a queue of its
own falls through to the provincial duty queue (``TINBAO_DUTY_CHAT_ID`` and optionally
``TINBAO_DUTY_THREAD_ID``), so no report is ever unroutable while a duty queue is set.

The map is data, not code: a TOML file the operator edits (``TINBAO_QUEUES_FILE``); see
``config/data/queues.example.toml`` for every key.  :func:`load_queue_map` validates the file
completely at start-up and names the file and the queue entry in every error.

This module must not import ``telegram``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

DATA_DIR = Path(__file__).parent / "data"
EXAMPLE_QUEUES_PATH = DATA_DIR / "queues.example.toml"

#: The key of the provincial duty queue; reserved, a queue file may not use it.
DUTY_KEY = "duty"
DUTY_NAME = "Trực ban Công an tỉnh"

#: Queue keys are short ids that fit in ``callback_data``: lowercase letters, digits and
#: inner hyphens, at most ``KEY_MAX_LENGTH`` characters.
KEY_MAX_LENGTH = 32
_KEY_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")

_ENTRY_KEYS = frozenset({"key", "name", "chat_id", "thread_id", "units"})
_REQUIRED_KEYS = ("key", "chat_id", "units")


@dataclass(frozen=True, slots=True)
class Queue:
    """One officers' chat (a group, or a forum topic in it) and the units it serves."""

    key: str
    name: str
    chat_id: int
    thread_id: int | None
    units: frozenset[str]

    @property
    def chat_key(self) -> str:
        """``"<chat_id>"`` or ``"<chat_id>/<thread_id>"``: one string per target chat."""
        if self.thread_id is None:
            return str(self.chat_id)
        return f"{self.chat_id}/{self.thread_id}"

    @property
    def is_duty(self) -> bool:
        """True for the provincial duty queue (key ``"duty"``, which files may not use)."""
        return self.key == DUTY_KEY


def duty_queue(chat_id: int, thread_id: int | None = None, *, name: str = DUTY_NAME) -> Queue:
    """The provincial duty queue: serves no unit of its own, receives all fall-through."""
    return Queue(key=DUTY_KEY, name=name, chat_id=chat_id, thread_id=thread_id, units=frozenset())


@dataclass(frozen=True, slots=True)
class QueueMap:
    """All unit queues plus the optional duty queue, with lookup indexes.

    Build it with :func:`load_queue_map`, which validates a file and names it in errors.
    Direct construction still refuses the inconsistencies the indexes cannot hold (a unit in
    two queues, a repeated key, a repeated chat+topic) with a ``ValueError``.
    """

    queues: tuple[Queue, ...] = ()
    duty: Queue | None = None
    _by_unit: Mapping[str, Queue] = field(init=False, repr=False, compare=False)
    _by_key: Mapping[str, Queue] = field(init=False, repr=False, compare=False)
    _by_target: Mapping[tuple[int, int | None], Queue] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_unit: dict[str, Queue] = {}
        by_key: dict[str, Queue] = {}
        by_target: dict[tuple[int, int | None], Queue] = {}
        for queue in self.all_queues:
            if queue.key in by_key:
                raise ValueError(f"queue key {queue.key!r} is used twice")
            by_key[queue.key] = queue
            target = (queue.chat_id, queue.thread_id)
            if target in by_target:
                raise ValueError(
                    f"queues {by_target[target].key!r} and {queue.key!r} share chat "
                    f"{queue.chat_key}"
                )
            by_target[target] = queue
            for code in queue.units:
                if code in by_unit:
                    raise ValueError(
                        f"unit {code} is in two queues: {by_unit[code].key!r} and {queue.key!r}"
                    )
                by_unit[code] = queue
        object.__setattr__(self, "_by_unit", MappingProxyType(by_unit))
        object.__setattr__(self, "_by_key", MappingProxyType(by_key))
        object.__setattr__(self, "_by_target", MappingProxyType(by_target))

    @property
    def all_queues(self) -> tuple[Queue, ...]:
        """The unit queues, then the duty queue if there is one."""
        return (*self.queues, self.duty) if self.duty is not None else self.queues

    def for_unit(self, code: str | None) -> Queue | None:
        """The unit's own queue, or None (no unit, or the unit has no queue)."""
        if code is None:
            return None
        return self._by_unit.get(code)

    def resolve(self, unit_code: str | None) -> Queue | None:
        """Where a report for ``unit_code`` goes: its own queue, else the duty queue.

        None only when the unit has no queue and no duty queue is configured.
        """
        own = self.for_unit(unit_code)
        return own if own is not None else self.duty

    def by_key(self, key: str) -> Queue | None:
        """The queue with this key; ``"duty"`` is the duty queue."""
        return self._by_key.get(key)

    def by_chat(self, chat_id: int, thread_id: int | None) -> Queue | None:
        """The queue a message or button press in ``chat_id`` / ``thread_id`` belongs to.

        An exact chat+topic match wins, so a forum group holding several topic queues picks
        the right one.  Otherwise a queue that takes the whole group (no ``thread_id``)
        matches any topic or reply thread in it.  A message outside every queue's topic
        (e.g. the General topic of a group whose queues are all topics) matches nothing.
        """
        queue = self._by_target.get((chat_id, thread_id))
        if queue is None and thread_id is not None:
            queue = self._by_target.get((chat_id, None))
        return queue

    def units_without_queue(self, all_codes: Iterable[str]) -> list[str]:
        """The codes in ``all_codes`` (order kept) that have no queue of their own."""
        return [code for code in all_codes if code not in self._by_unit]

    @property
    def unit_queue_count(self) -> int:
        """How many queues serve units of their own (the duty queue not counted)."""
        return len(self.queues)

    def __bool__(self) -> bool:
        # A map is never judged by its truthiness: a map holding only the duty queue is a
        # working map (the README's default set-up), not an empty one. Ask what you mean:
        # ``queues.duty``, ``queues.all_queues`` or ``queues.unit_queue_count``.
        raise TypeError("a QueueMap has no truth value; test `is None`, `.duty` or `.all_queues`")


# --------------------------------------------------------------------------- loading


def load_queue_map(
    path: Path | None,
    *,
    duty_chat_id: int | None,
    duty_thread_id: int | None,
    known_units: Collection[str],
) -> QueueMap:
    """Read and validate the operator's queue file.

    ``path`` None means no file: no unit has a queue and every report goes to the duty
    queue.  The duty queue exists when ``duty_chat_id`` is set.

    Raises ``ValueError`` naming the file (and the queue entry where there is one) for a
    missing or unreadable file, invalid TOML, unknown keys, a bad key syntax, a repeated
    key, a chat id that is not a (negative) integer group id, a bad topic id, a queue with no
    units, a unit code not in ``known_units``, a unit in two queues, two queues on the same
    chat+topic, and a queue reusing the duty chat+topic.
    """
    duty = _duty_from_settings(duty_chat_id, duty_thread_id)
    if path is None:
        return QueueMap(queues=(), duty=duty)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"Queue map {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"Queue map {path}: cannot be read ({exc})") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"Queue map {path}: not valid TOML ({exc})") from exc
    queues = _parse_queues(raw, path, known_units=frozenset(known_units), duty=duty)
    return QueueMap(queues=queues, duty=duty)


def _duty_from_settings(chat_id: int | None, thread_id: int | None) -> Queue | None:
    if chat_id is None:
        if thread_id is not None:
            raise ValueError("TINBAO_DUTY_THREAD_ID is set but TINBAO_DUTY_CHAT_ID is not")
        return None
    if _is_bad_int(chat_id) or chat_id == 0:
        raise ValueError(f"TINBAO_DUTY_CHAT_ID must be a non-zero integer, got {chat_id!r}")
    if thread_id is not None and (_is_bad_int(thread_id) or thread_id <= 0):
        raise ValueError(f"TINBAO_DUTY_THREAD_ID must be a positive integer, got {thread_id!r}")
    return duty_queue(chat_id, thread_id)


def _is_bad_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _parse_queues(
    raw: Mapping[str, Any], path: Path, *, known_units: frozenset[str], duty: Queue | None
) -> tuple[Queue, ...]:
    def fail(message: str) -> ValueError:
        return ValueError(f"Queue map {path}: {message}")

    extra = sorted(set(raw) - {"queue"})
    if extra:
        raise fail(
            f"unknown top-level key(s) {', '.join(map(repr, extra))}; "
            "each queue is a [[queue]] table"
        )
    entries = raw.get("queue", [])
    if not isinstance(entries, list):
        raise fail("'queue' must be an array of tables: write each queue as [[queue]]")

    queues: list[Queue] = []
    by_key: dict[str, str] = {}
    by_target: dict[tuple[int, int | None], str] = {}
    unit_owner: dict[str, str] = {}
    for index, entry in enumerate(entries):
        queue = _parse_entry(entry, index, fail, known_units)
        where = _where(index, queue.key)
        if queue.key in by_key:
            raise fail(f"{where}: key {queue.key!r} is already used by {by_key[queue.key]}")
        by_key[queue.key] = where
        target = (queue.chat_id, queue.thread_id)
        if duty is not None and target == (duty.chat_id, duty.thread_id):
            raise fail(
                f"{where}: chat {queue.chat_key} is the duty queue "
                "(TINBAO_DUTY_CHAT_ID/TINBAO_DUTY_THREAD_ID); give it its own group or topic"
            )
        if target in by_target:
            raise fail(f"{where}: chat {queue.chat_key} is already used by {by_target[target]}")
        by_target[target] = where
        for code in sorted(queue.units):
            if code in unit_owner:
                raise fail(f"{where}: unit {code} is already in {unit_owner[code]}")
            unit_owner[code] = where
        queues.append(queue)
    return tuple(queues)


def _where(index: int, key: object) -> str:
    if isinstance(key, str) and key:
        return f"queue[{index}] ({key!r})"
    return f"queue[{index}]"


def _parse_entry(
    entry: object, index: int, fail: Callable[[str], ValueError], known_units: frozenset[str]
) -> Queue:
    if not isinstance(entry, dict):
        raise fail(f"queue[{index}] must be a table ([[queue]])")
    where = _where(index, entry.get("key"))
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise fail(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(sorted(_ENTRY_KEYS))})"
        )
    for name in _REQUIRED_KEYS:
        if name not in entry:
            raise fail(f"{where}: missing key {name!r}")

    key = entry["key"]
    if not isinstance(key, str) or len(key) > KEY_MAX_LENGTH or not _KEY_RE.fullmatch(key):
        raise fail(
            f"{where}: key must be 1-{KEY_MAX_LENGTH} characters of a-z, 0-9 and inner "
            f"hyphens (e.g. 'long-xuyen'), got {key!r}"
        )
    if key == DUTY_KEY:
        raise fail(f"{where}: key {DUTY_KEY!r} is reserved for the provincial duty queue")

    name = entry.get("name", key)
    if not isinstance(name, str) or not name.strip():
        raise fail(f"{where}: name must be a non-empty string, got {name!r}")

    chat_id = entry["chat_id"]
    if _is_bad_int(chat_id):
        raise fail(
            f"{where}: chat_id must be an integer without quotes "
            f"(e.g. -1001234567890), got {chat_id!r}"
        )
    if chat_id >= 0:
        raise fail(
            f"{where}: chat_id must be a group id, which is negative "
            f"(supergroups start with -100), got {chat_id}"
        )

    thread_id = entry.get("thread_id")
    if thread_id is not None and (_is_bad_int(thread_id) or thread_id <= 0):
        raise fail(
            f"{where}: thread_id must be a positive integer (a forum topic id), "
            f"got {thread_id!r}; leave it out to use the whole group"
        )

    raw_units = entry["units"]
    if not isinstance(raw_units, list):
        raise fail(f"{where}: units must be a list of unit codes, got {raw_units!r}")
    if not raw_units:
        raise fail(f"{where}: units is empty; a queue must serve at least one unit")
    units: set[str] = set()
    for code in raw_units:
        if not isinstance(code, str):
            raise fail(f'{where}: unit codes are quoted strings (e.g. "30307"), got {code!r}')
        code = code.strip()
        if code not in known_units:
            raise fail(f"{where}: unknown unit code {code!r} (not in the unit catalogue)")
        if code in units:
            raise fail(f"{where}: unit {code} is listed twice")
        units.add(code)

    return Queue(
        key=key,
        name=name.strip(),
        chat_id=chat_id,
        thread_id=thread_id,
        units=frozenset(units),
    )
