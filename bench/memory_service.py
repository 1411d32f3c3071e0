"""The service's own process for ``bench.memory``: ``tinbao run``'s service, driven by one
command per line on stdin (``stats``, ``drafts``, ``expire``, ``snapshot``, ``quit``), one JSON
answer per line on stdout. It imports only what the service imports, so that its RSS is the
service's.

Settings: the JSON object in ``TINBAO_BENCH_SETTINGS`` (``Settings`` fields).
``TINBAO_BENCH_TRIM=0``: the maintenance does not give freed heap back (``bot.heap.trim`` off),
to measure what the trim does. ``TINBAO_BENCH_TRACE=N`` (``--trace``): ``tracemalloc`` traces
(N frames) from the service's start on (not its imports), and ``snapshot`` compares the traced
allocations with the previous snapshot and answers the largest growths.
"""

from __future__ import annotations

import asyncio
import gc
import json
import linecache
import os
import sys
import time
import tracemalloc
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from bot.logs import setup_logging
from bot.runtime import Service
from config.settings import Settings
from storage.models import Conversation
from storage.types import utcnow

SETTINGS_ENV = "TINBAO_BENCH_SETTINGS"
TRIM_ENV = "TINBAO_BENCH_TRIM"
TRACE_ENV = "TINBAO_BENCH_TRACE"
#: Growths answered by ``snapshot``, by line and by call stack.
TOP = 12


class Snapshots:
    """tracemalloc snapshots, each compared with the one before."""

    def __init__(self) -> None:
        self.previous: tracemalloc.Snapshot | None = None

    def take(self) -> dict[str, Any]:
        if not tracemalloc.is_tracing():
            return {"tracing": False}
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(
            (  # the snapshots' own work: formatting them reads the sources into linecache
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, linecache.__file__),
            )
        )
        answer: dict[str, Any] = {
            "tracing": True,
            "traced_mb": sum(s.size for s in snapshot.statistics("filename")) / 2**20,
        }
        if self.previous is not None:
            answer["by_line"] = [
                f"{d.size_diff / 1024:+.1f} KiB {d.count_diff:+d} blocks {d.traceback}"
                for d in snapshot.compare_to(self.previous, "lineno")[:TOP]
            ]
            answer["by_stack"] = [
                f"{d.size_diff / 1024:+.1f} KiB {d.count_diff:+d} blocks\n    "
                + "\n    ".join(d.traceback.format(limit=8, most_recent_first=True))
                for d in snapshot.compare_to(self.previous, "traceback")[:3]
            ]
        self.previous = snapshot
        return answer


async def serve() -> None:
    """The child: run the service from the settings in the environment and obey stdin."""
    config = Settings(**json.loads(os.environ[SETTINGS_ENV]))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    if os.environ.get(TRIM_ENV) == "0":
        from bot import heap

        heap.trim = lambda: False
    if os.environ.get(TRACE_ENV):
        tracemalloc.start(int(os.environ[TRACE_ENV]))
    service = await Service.create(config)
    await service.start()
    snapshots = Snapshots()
    try:
        assert service.telegram is not None
        await asyncio.wait_for(service.telegram.ready.wait(), 60)
        reply({"ready": True})
        while line := (await reader.readline()).decode().strip():
            if line == "stats":
                gc.collect()
                cache = service.flow.conversation_cache
                reply({"cache_entries": len(cache) if cache is not None else 0})
            elif line == "expire":
                # The draft lifetime passes: every draft is due, and the purge runs until done.
                async with service.session_factory() as session, session.begin():
                    await session.execute(
                        update(Conversation)
                        .where(Conversation.expires_at.is_not(None))
                        .values(expires_at=utcnow() - timedelta(seconds=1))
                    )
                runs = 0
                started = time.perf_counter()
                while True:
                    runs += 1
                    await service.run_maintenance()
                    async with service.session_factory() as session:
                        left = await session.scalar(
                            select(func.count()).where(Conversation.expires_at.is_not(None))
                        )
                    if not left:
                        break
                reply({"purge_runs": runs, "purge_s": time.perf_counter() - started})
            elif line == "drafts":
                async with service.session_factory() as session:
                    count = await session.scalar(
                        select(func.count()).where(Conversation.expires_at.is_not(None))
                    )
                reply({"drafts": int(count or 0)})
            elif line == "snapshot":
                reply(snapshots.take())
            elif line == "quit":
                break
    finally:
        await service.stop()


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    setup_logging("WARNING")
    asyncio.run(serve())
