"""What one update costs tinbao's database path, in figures that do not depend on the load.

``python -m bench.db_cost [--backend sqlite|postgresql] [--tips N] [--concurrency C]``

Runs the flat-out citizens of ``bench.tip_flow`` (N tips of 10 updates, C citizens in flight,
each update after the previous answer) through the whole service, and counts, per update:

* **thread hops**: results handed back to the event loop from another thread
  (``call_soon_threadsafe``), by thread; on SQLite each is one trip to a connection's thread
  (the driver's unit of cost: a queue put, a thread wake-up and a loop wake-up);
* **statements** run on the database (SQLAlchemy's ``before_cursor_execute``), by kind, and
  the driver's own ``BEGIN``/``COMMIT``/``ROLLBACK`` where the driver can tell;
* the in-process **writer lock** (``storage.db.writer``, SQLite): how often taken, how long held
  on average, and its busy share of the wall time (near 1: every write waits for it);
* **CPU ms per update** of the whole benchmark process, and of its threads by kind.

The wall time and throughput are printed too, with the load average: those do depend on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

import storage.db
from bench.databases import DATABASES
from bench.report import figure
from bench.tip_flow import (
    REPLY_TIMEOUT,
    Answers,
    Driver,
    Run,
    description_for,
    drive,
    new_users,
    tip_steps,
)
from bot.logs import setup_logging
from tests.e2e import running_service, service_settings
from tests.standin import BotAPIStandIn, UpdateFactory

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_kind(name: str) -> str:
    if "_connection_worker_thread" in name or name.startswith("tinbao-sqlite"):
        return "sqlite"
    if name.startswith("asyncio") or name.startswith("ThreadPoolExecutor"):
        return "executor"
    return name


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by kind (``/proc/self/task``)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    seconds: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue
        fields = raw.rsplit(")", 1)[1].split()
        tid = int(task.name)
        kind = "loop" if tid == threading.main_thread().native_id else "other"
        if tid in names and kind != "loop":
            kind = thread_kind(names[tid])
        seconds[kind] = seconds.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return dict(seconds)


class TimedLock(asyncio.Lock):
    """The writer lock, timed: how often it is taken and how long it is held."""

    taken = 0
    held: float = 0.0

    async def acquire(self) -> Literal[True]:
        result = await super().acquire()
        self._since = time.perf_counter()
        TimedLock.taken += 1
        return result

    def release(self) -> None:
        TimedLock.held += time.perf_counter() - self._since
        super().release()


class _TimedLocks(weakref.WeakKeyDictionary[Any, asyncio.Lock]):
    def get(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = TimedLock()
        return super().get(key)


@contextmanager
def counting(loop: asyncio.AbstractEventLoop) -> Iterator[dict[str, Counter[str]]]:
    counts: dict[str, Counter[str]] = {
        "hops": Counter(),
        "statements": Counter(),
        "connections": Counter(),
        "texts": Counter(),
    }
    main = threading.main_thread()
    original: Callable[..., Any] = loop.call_soon_threadsafe

    def call_soon_threadsafe(callback: Any, *args: Any, **kwargs: Any) -> Any:
        thread = threading.current_thread()
        if thread is not main:
            counts["hops"][thread_kind(thread.name)] += 1
        return original(callback, *args, **kwargs)

    def statement(_conn: Any, _cursor: Any, text: str, *_args: Any) -> None:
        words = text.split()
        kind = " ".join(words[:3]) if words and words[0].upper() == "UPDATE" else words[0]
        if words and words[0].upper() in ("INSERT", "DELETE", "SELECT"):
            table = next((w for w in words if w.isidentifier() and w.islower()), "")
            kind = f"{words[0]} {table}".strip()
        counts["statements"][kind] += 1
        counts["texts"][text] += 1

    def opened(*_args: Any) -> None:
        counts["connections"]["opened"] += 1

    loop.call_soon_threadsafe = call_soon_threadsafe  # type: ignore[method-assign,assignment]
    event.listen(Engine, "before_cursor_execute", statement)
    event.listen(Pool, "connect", opened)
    try:
        yield counts
    finally:
        event.remove(Engine, "before_cursor_execute", statement)
        event.remove(Pool, "connect", opened)
        del loop.call_soon_threadsafe


async def measure(backend: str, tips: int, concurrency: int) -> list[str]:
    storage.db._WRITE_LOCKS = _TimedLocks()
    async with BotAPIStandIn() as standin, DATABASES[backend]() as (db_url, data_dir):
        answers = Answers(standin)
        answers.start()
        driver = Driver(standin, answers, UpdateFactory(standin))
        driver.reply_timeout = REPLY_TIMEOUT
        users = new_users(driver.factory, tips)
        steps = {u.id: tip_steps(description_for(n)) for n, u in enumerate(users, 1)}
        settings = service_settings(standin, db_url, data_dir)
        try:
            async with running_service(settings) as service:
                # storage.sqlite_driver's own lock, when the engine has one.
                driver_lock = getattr(service.engine.dialect.dbapi, "writer", None)
                group = getattr(service.engine.dialect.dbapi, "group", None)
                # One tip first, so that start-up work (first connections, caches) is not counted.
                warm = new_users(driver.factory, 1)[0]
                await driver.tinbao_citizen(Run("warm"), warm, tip_steps(description_for(0)))
                run = Run(f"tinbao/{backend}")
                loop = asyncio.get_running_loop()
                TimedLock.taken, TimedLock.held = 0, 0.0
                if driver_lock is not None:
                    taken, held = driver_lock.taken, driver_lock.held
                if group is not None:
                    batches, grouped = group.batches, group.statements
                cpu_before, process_before, wall = thread_cpu(), time.process_time(), 0.0
                with counting(loop) as counts:
                    started = time.perf_counter()
                    await drive(
                        users, concurrency, lambda u: driver.tinbao_citizen(run, u, steps[u.id])
                    )
                    wall = time.perf_counter() - started
                process_cpu = time.process_time() - process_before
                if driver_lock is not None:
                    TimedLock.taken = driver_lock.taken - taken
                    TimedLock.held = driver_lock.held - held
                if group is not None:
                    batches, grouped = group.batches - batches, group.statements - grouped
                workers = getattr(service.engine.dialect.dbapi, "workers", None)
                sqlite_connections = workers.opened + 1 if workers is not None else None
                cpu_after = thread_cpu()
        finally:
            await answers.stop()
    updates = run.updates
    load = os.getloadavg()[0]
    print(f"{backend}: {tips} tips, {updates} updates in {wall:.2f} s", end="")
    print(f" ({updates / wall:.1f} upd/s)")
    print(f"  load average at the end: {load:.2f}")
    hops = sum(counts["hops"].values())
    print(f"  thread hops per update: {hops / updates:.2f}")
    for kind, number in counts["hops"].most_common():
        print(f"    {kind:<40}{number / updates:8.2f}")
    statements = sum(counts["statements"].values())
    print(f"  statements per update: {statements / updates:.2f}")
    for kind, number in counts["statements"].most_common():
        print(f"    {kind:<40}{number / updates:8.2f}")
    print(f"  connections opened (SQLAlchemy's pool): {counts['connections']['opened']}")
    if sqlite_connections is not None:
        print(f"  SQLite connections open (with the group commit's): {sqlite_connections}")
    print(f"  distinct statements: {len(counts['texts'])}")
    if group is not None and batches:
        print(
            f"  group commit: {grouped / updates:.2f} lone writes per update in "
            f"{batches / updates:.2f} transactions per update ({grouped / batches:.2f} in each)"
        )
    if TimedLock.taken:
        print(
            f"  writer lock: taken {TimedLock.taken / updates:.2f} per update, held "
            f"{TimedLock.held / TimedLock.taken * 1000:.2f} ms on average, busy "
            f"{TimedLock.held / wall:.0%} of the wall time"
        )
    print(f"  CPU ms per update, whole process: {process_cpu / updates * 1000:.2f}")
    for kind in sorted(cpu_after, key=lambda k: -(cpu_after[k] - cpu_before.get(k, 0.0))):
        spent = cpu_after[kind] - cpu_before.get(kind, 0.0)
        if spent > 0:
            print(f"    {kind:<40}{spent / updates * 1000:8.2f}")
    print()
    bench = "db_cost"
    lines = [
        figure(backend, "hops_per_update", hops / updates, "", None, bench),
        figure(backend, "statements_per_update", statements / updates, "", None, bench),
        figure(backend, "cpu_ms_per_update", process_cpu / updates * 1000, "ms", None, bench),
    ]
    if TimedLock.taken:
        lines.append(
            figure(backend, "writer_busy_share", TimedLock.held / wall, "", None, bench),
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.db_cost", description=__doc__)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--tips", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    setup_logging("WARNING")
    for line in asyncio.run(measure(args.backend, args.tips, args.concurrency)):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
