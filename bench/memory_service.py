"""The service's own process for ``bench.memory``: ``tinbao run``'s service, driven by one
command per line on stdin (``stats``, ``drafts``, ``expire``, ``quit``), one JSON answer per line
on stdout. It imports only what the service imports, so that its RSS is the service's.

Settings: the JSON object in ``TINBAO_BENCH_SETTINGS`` (``Settings`` fields).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from bot.logs import setup_logging
from bot.runtime import Service
from config.settings import Settings
from storage.models import Conversation
from storage.types import utcnow

SETTINGS_ENV = "TINBAO_BENCH_SETTINGS"


async def serve() -> None:
    """The child: run the service from the settings in the environment and obey stdin."""
    config = Settings(**json.loads(os.environ[SETTINGS_ENV]))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    service = await Service.create(config)
    await service.start()
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
                while True:
                    runs += 1
                    await service.run_maintenance()
                    async with service.session_factory() as session:
                        left = await session.scalar(
                            select(func.count()).where(Conversation.expires_at.is_not(None))
                        )
                    if not left:
                        break
                reply({"purge_runs": runs})
            elif line == "drafts":
                async with service.session_factory() as session:
                    count = await session.scalar(
                        select(func.count()).where(Conversation.expires_at.is_not(None))
                    )
                reply({"drafts": int(count or 0)})
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
