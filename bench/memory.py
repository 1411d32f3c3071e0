"""The service's memory (RSS) at idle, with 10,000 half-finished drafts, and after they expire.

``python -m bench.memory [--citizens N] [--backend sqlite|postgresql|both] [--rounds R]
[--trace] [--no-trim]``

The whole service (``bot.runtime.Service``, as ``tinbao run`` builds it, without the web
server) runs in a child process of its own, so that its RSS (``VmRSS`` from ``/proc``) is the
service's alone; it long-polls the in-repo Bot API stand-in, which runs here with the citizens.
The database is at this code's schema revision before the service starts, on both backends (a
restart, not the embedded database's very first start, which also runs the migrations). N
citizens (10,000, all different people) each start a tip (``/tip``) and pick its category, then
stop: a draft waiting for its place, in the database and in the service's conversation cache.
Then the drafts expire: their ``expires_at`` is moved into the past (the draft lifetime
passing, days in real life) and the service's own maintenance purge runs until none is left
(one run: it clears a backlog batch after batch). With ``--rounds 3`` (the default) a second
and a third crowd of N citizens do the same, so that memory that stays after expiry shows as
growth from one round to the next; the first round also fills what is filled once (the
conversation cache, code paths run for the first time).

Figures: ``rss_idle_mb`` (started, before any citizen), ``rss_10k_drafts_mb`` (the most with
drafts in flight, over the rounds), ``rss_after_expiry_mb`` (after the last round's drafts
expired) and ``rss_growth_per_round_mb`` (after expiry, last round less first, per round).
Target: at most 150 MB with the drafts in flight, and no growth that stays after they expire.
Each reading follows a garbage collection in the service (what it reaches on its own within
seconds), and the child also reports its conversation cache's entries. Each run checks that
every citizen's draft was stored and that the purge ended every one; a failed check exits with
status 1 (after printing the figures of a backend that passed).

``--trace`` runs the service under ``tracemalloc`` (12 frames, from its start on; the RSS is
then not the service's alone: read the growths) and prints, after each round's expiry, the largest
growths of traced memory since the round before, by line and by call stack. ``--no-trim``: the
maintenance does not hand freed heap back to the system (``bot.heap``), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench.databases import DATABASES, Unavailable
from bench.memory_service import SETTINGS_ENV, TRACE_ENV, TRIM_ENV
from bench.report import figure
from bench.tip_flow import (
    DUTY_CHAT_ID,
    LOCALE,
    Answers,
    BenchFailure,
    Driver,
    Run,
    drive,
    find_button,
    new_users,
    says,
    shows_button,
)
from bot.logs import setup_logging
from handlers.i18n import t
from storage.db import create_engine
from storage.migrate import upgrade
from tests.e2e import TEST_SECRET_KEY
from tests.standin import DEFAULT_TOKEN, BotAPIStandIn, UpdateFactory, User

TARGET_DRAFTS_MB = 150.0
#: Citizens in flight at once while the drafts are made.
CONCURRENCY = 100
#: Seconds the service's process may take to answer one command.
CHILD_TIMEOUT = 600.0
#: Frames kept per traced allocation with ``--trace``.
TRACE_FRAMES = 12


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident set size of process ``pid``, in MB (Linux ``/proc``); ``field``: one of its
    parts, ``RssAnon`` (heap and stacks), ``RssFile`` (mapped files: code, libraries) or
    ``RssShmem`` (shared memory: SQLite's WAL index)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


# ------------------------------------------------------------------------------ the service


class Child:
    """The service's process, driven by one command per line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @property
    def rss(self) -> float:
        return rss_mb(self.process.pid)

    @property
    def parts(self) -> str:
        """RSS's parts: anonymous (heap), file-backed, shared."""
        anon, file, shmem = (
            rss_mb(self.process.pid, field) for field in ("RssAnon", "RssFile", "RssShmem")
        )
        return f"anon {anon:.1f} + file {file:.1f} + shmem {shmem:.1f}"

    async def ask(self, command: str | None) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        if command is not None:
            self.process.stdin.write(command.encode() + b"\n")
            await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), CHILD_TIMEOUT)
        if not line:
            raise BenchFailure(f"the service exited (status {await self.process.wait()})")
        return dict(json.loads(line))


@contextlib.asynccontextmanager
async def child_service(
    standin: BotAPIStandIn, db_url: str, data_dir: Path, *, trace: bool, trim: bool
) -> Any:
    env = dict(os.environ)
    if not trim:
        env[TRIM_ENV] = "0"
    if trace:
        env[TRACE_ENV] = str(TRACE_FRAMES)
    env[SETTINGS_ENV] = json.dumps(
        {
            "telegram_token": DEFAULT_TOKEN,
            "telegram_api_url": standin.base_url,
            "telegram_file_url": standin.base_file_url,
            "database_url": db_url,
            "secret_key": TEST_SECRET_KEY,
            "data_dir": str(data_dir),
            "polling_timeout": 10,
            "duty_chat_id": DUTY_CHAT_ID,
        }
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.memory_service",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    child = Child(process)
    try:
        await child.ask(None)  # ready
        yield child
    finally:
        if process.returncode is None:
            with contextlib.suppress(Exception):
                assert process.stdin is not None
                process.stdin.write(b"quit\n")
                await process.stdin.drain()
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()


# ------------------------------------------------------------------------------ citizens


async def half_a_tip(driver: Driver, run: Run, user: User) -> None:
    """``/tip`` and a category: a draft that waits for its place."""
    category = t(LOCALE, "cat.theft")
    menu = await driver.exchange(
        run, driver.factory.command(user, "tip"), user.id, shows_button(category), "/tip"
    )
    data = find_button(menu, category)
    press = driver.factory.callback(user, data, message=menu.result)
    await driver.exchange(run, press, user.id, says(t(LOCALE, "place.ask")), "the category")


def print_growth(label: str, snapshot: dict[str, Any]) -> None:
    if not snapshot.get("tracing") or "by_line" not in snapshot:
        return
    print(f"{label}: traced {snapshot['traced_mb']:.1f} MB; largest growths since before:")
    for line in snapshot["by_line"]:
        print(f"    {line}")
    print(f"{label}: largest growths by call stack:")
    for stack in snapshot["by_stack"]:
        print(f"    {stack}")


async def measure(
    backend: str, citizens: int, rounds: int, *, trace: bool = False, trim: bool = True
) -> dict[str, float]:
    async with BotAPIStandIn() as standin, DATABASES[backend]() as (db_url, data_dir):
        if backend == "sqlite":  # at this code's revision before the start, as PostgreSQL is
            engine = create_engine(db_url)
            try:
                await upgrade(engine)
            finally:
                await engine.dispose()
        answers = Answers(standin)
        answers.start()
        driver = Driver(standin, answers, UpdateFactory(standin))
        try:
            async with child_service(standin, db_url, data_dir, trace=trace, trim=trim) as child:
                await asyncio.sleep(1.0)
                await child.ask("stats")
                idle = child.rss
                print(f"{backend}: idle {idle:.1f} MB ({child.parts})", flush=True)
                if trace:
                    await child.ask("snapshot")
                peak = 0.0
                after: list[float] = []
                for number in range(1, rounds + 1):
                    run = Run(f"{backend} round {number}")
                    users = new_users(driver.factory, citizens)
                    started = time.perf_counter()
                    await drive(users, CONCURRENCY, partial(half_a_tip, driver, run))
                    drafts = (await child.ask("drafts"))["drafts"]
                    if drafts != citizens:
                        raise BenchFailure(f"{run.label}: {drafts} drafts stored, not {citizens}")
                    stats = await child.ask("stats")
                    with_drafts, with_parts = child.rss, child.parts
                    peak = max(peak, with_drafts)
                    purge = await child.ask("expire")
                    if (await child.ask("drafts"))["drafts"]:
                        raise BenchFailure(f"{run.label}: drafts left after the purge")
                    after_stats = await child.ask("stats")
                    after.append(child.rss)
                    after_parts = child.parts
                    print(
                        f"{backend}: round {number}: {citizens} drafts in "
                        f"{time.perf_counter() - started:.0f} s: {with_drafts:.1f} MB "
                        f"({with_parts}; cache {stats['cache_entries']} entries); after expiry "
                        f"({purge['purge_runs']} purge run(s), {purge['purge_s']:.1f} s) "
                        f"{after[-1]:.1f} MB ({after_parts}; cache "
                        f"{after_stats['cache_entries']} entries)",
                        flush=True,
                    )
                    if trace:
                        print_growth(f"{backend} round {number}", await child.ask("snapshot"))
        finally:
            await answers.stop()
    growth = (after[-1] - after[0]) / (rounds - 1) if rounds > 1 else 0.0
    return {
        "rss_idle_mb": idle,
        "rss_10k_drafts_mb": peak,
        "rss_after_expiry_mb": after[-1],
        "rss_growth_per_round_mb": growth,
    }


async def main_async(
    citizens: int,
    backends: Sequence[str],
    rounds: int,
    *,
    trace: bool = False,
    trim: bool = True,
) -> int:
    results: list[tuple[str, dict[str, float]]] = []
    status = 0
    for backend in backends:
        try:
            figures = await measure(backend, citizens, rounds, trace=trace, trim=trim)
            results.append((backend, figures))
        except Unavailable as exc:
            print(f"{backend}: SKIPPED: {exc}", flush=True)
        except BenchFailure as exc:  # the other backend's figures are still printed
            print(f"FAILED: {exc}", file=sys.stderr, flush=True)
            status = 1
    if results:
        print()
        print(
            f"{'backend':<11}{'idle MB':>9}{'drafts MB':>11}{'expired MB':>12}"
            f"{'growth/round':>14}  verdict"
        )
        for backend, figures in results:
            drafts = figures["rss_10k_drafts_mb"]
            verdict = "PASS" if drafts <= TARGET_DRAFTS_MB else "ABOVE TARGET"
            print(
                f"{backend:<11}{figures['rss_idle_mb']:>9.1f}{drafts:>11.1f}"
                f"{figures['rss_after_expiry_mb']:>12.1f}"
                f"{figures['rss_growth_per_round_mb']:>+14.1f}  {verdict} "
                f"(target <= {TARGET_DRAFTS_MB:.0f} MB with drafts)"
            )
        print()
        for backend, figures in results:
            for metric, value in figures.items():
                target = TARGET_DRAFTS_MB if metric == "rss_10k_drafts_mb" else None
                print(figure(backend, metric, value, "MB", target, "memory"))
    return status


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument("--citizens", type=int, default=10_000, help="drafts per round (10000)")
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql", "both"), default="both", help="(both)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of drafts (3)")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="tracemalloc in the service: the largest growths after each round",
    )
    parser.add_argument(
        "--no-trim",
        action="store_true",
        help="no malloc_trim after the purge (to measure what it does)",
    )
    args = parser.parse_args(argv)
    if args.citizens < 1 or args.rounds < 1:
        parser.error("--citizens and --rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("WARNING")
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    return asyncio.run(
        main_async(args.citizens, backends, args.rounds, trace=args.trace, trim=not args.no_trim)
    )


if __name__ == "__main__":
    raise SystemExit(main())
