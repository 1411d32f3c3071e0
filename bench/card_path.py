"""Round trips to PostgreSQL per confirmation and per card, and where the time goes (P6).

``python -m bench.card_path [--cards N] [--trace K]``

The whole service runs in process on a temporary PostgreSQL database, as in ``bench.tip_flow``.
``--cards`` citizens (10) fill a tip up to the summary together, then confirm one at a time,
each after the previous card was sent and the worker settled (an idle queue, as P6 times it).
Every round trip the service makes to PostgreSQL in the window from a confirmation's push to
its card's ``sendMessage`` and ``--settle`` seconds more (1.2) is recorded (asyncpg's calls,
client side: a
statement, a ``BEGIN``, ``COMMIT`` or ``ROLLBACK``, a prepare of a statement not yet cached,
a ping) with the asyncio task that made it. The counts do not depend on the machine's load, so
they show whether a change cut the card path's work even when the timings are noisy.

Groups: ``confirm`` (the citizen's update, its transaction and answer), ``card before send``
and ``card after send`` (the officers' delivery worker and its lanes, split at the card's
``sendMessage``), ``timers``, ``messenger`` (citizen delivery), ``other``, and ``prepares`` (a
statement prepared on a connection for the first time: few once the connections are warm).
Also the CPU time of the benchmark's process from the push to the card (the service, the
stand-in and the citizens), less dependent on the load than the latency. ``--trace K``
prints the timeline of the K-th card (ms from the push). Below the table, one JSON object per
figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from bench.databases import DATABASES, Unavailable
from bench.report import figure, ms
from bench.tip_flow import (
    CARD_PLACES,
    DUTY_CHAT_ID,
    Answers,
    Driver,
    Run,
    card_queues,
    card_sent,
    description_for,
    new_users,
    tip_steps,
)
from bot.logs import setup_logging
from tests.e2e import running_service, service_settings
from tests.standin import BotAPIStandIn, UpdateFactory

BENCH = "card_path"
GROUPS = (
    "confirm",
    "card before send",
    "card after send",
    "timers",
    "messenger",
    "other",
    "prepares",
)


@dataclass(frozen=True)
class Trip:
    """One round trip: when it started and ended (``time.monotonic``), who made it, what."""

    start: float
    end: float
    task: str
    what: str


_OWNER: ContextVar[str | None] = ContextVar("card_path_owner", default=None)


def trip_owner() -> str:
    """The named task a round trip belongs to: a task the service named itself, or the task
    that started an unnamed one (a shielded write, the session's closing ``ROLLBACK``)."""
    task = asyncio.current_task()
    name = task.get_name() if task is not None else "?"
    if not name.startswith("Task-"):
        _OWNER.set(name)
        return name
    return _OWNER.get() or name


class Recorder:
    """Wraps asyncpg's calls that each make one round trip, and records them while on."""

    def __init__(self) -> None:
        self.trips: list[Trip] = []
        self.on = False

    def _wrap(self, owner: Any, name: str, what: Callable[..., str]) -> Callable[[], None]:
        original = getattr(owner, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                trip_owner()  # so that tasks started from here know whose they are
                return await original(*args, **kwargs)
            start = time.monotonic()
            try:
                return await original(*args, **kwargs)
            finally:
                self.trips.append(
                    Trip(start, time.monotonic(), trip_owner(), what(*args, **kwargs))
                )

        setattr(owner, name, wrapper)
        return lambda: setattr(owner, name, original)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from asyncpg.connection import Connection
        from asyncpg.prepared_stmt import PreparedStatement

        def head(text: object) -> str:
            return " ".join(str(text).split())[:90]

        undo = [
            self._wrap(Connection, "execute", lambda _c, query, *a, **k: head(query)),
            self._wrap(Connection, "executemany", lambda _c, query, *a, **k: head(query)),
            self._wrap(Connection, "fetchrow", lambda _c, query, *a, **k: head(query)),
            self._wrap(Connection, "fetchval", lambda _c, query, *a, **k: head(query)),
            self._wrap(Connection, "prepare", lambda _c, query, *a, **k: "prepare " + head(query)),
            self._wrap(PreparedStatement, "fetch", lambda s, *a, **k: head(s.get_query())),
        ]
        try:
            yield
        finally:
            for restore in undo:
                restore()


def group_of(trip: Trip, card_at: float) -> str:
    if trip.what.startswith("prepare "):
        return "prepares"
    name = trip.task
    if name.startswith("delivery"):
        return "card before send" if trip.start < card_at else "card after send"
    if name.startswith("timer"):
        return "timers"
    if name.startswith("citizen-delivery"):
        return "messenger"
    if name.startswith(("Task-", "telegram", "Application")) or "process_update" in name:
        return "confirm"
    return "other"


@dataclass
class Sample:
    to_card: float
    groups: Counter[str]
    trips: list[Trip]
    pushed: float
    card_at: float
    #: CPU seconds of this process (service, stand-in, citizens) from the push to the card.
    cpu: float


async def measure(
    cards: int, settle: float, warmup: int, profile: cProfile.Profile | None = None
) -> list[Sample]:
    recorder = Recorder()
    samples: list[Sample] = []
    async with DATABASES["postgresql"]() as (db_url, data_dir), BotAPIStandIn() as standin:
        answers = Answers(standin)
        answers.start()
        driver = Driver(standin, answers, UpdateFactory(standin))
        settings = service_settings(
            standin,
            db_url,
            data_dir,
            duty_chat_id=DUTY_CHAT_ID,
            queues_file=card_queues(data_dir),
        )
        run = Run("card path")
        users = new_users(driver.factory, warmup + cards)
        turn = asyncio.Lock()
        start = len(standin.calls)

        cpu = [0.0]

        async def confirm_alone() -> None:
            await turn.acquire()
            await asyncio.sleep(settle)  # the previous card's worker has settled
            recorder.trips.clear()
            recorder.on = True
            cpu[0] = time.process_time()
            if profile is not None and len(samples) >= warmup:
                profile.enable()

        async def citizen(number: int) -> None:
            user = users[number]
            query, commune, *_ = CARD_PLACES[number % len(CARD_PLACES)]
            steps = tip_steps(description_for(20_000 + number), place=(query, commune))
            code = await driver.tinbao_citizen(run, user, steps, before_confirm=confirm_alone)
            try:
                shown = f"{code[:5]}-{code[5:]}"
                sent = await card_sent(standin, shown, "card path", start)
                used = time.process_time() - cpu[0]
                if profile is not None:
                    profile.disable()
                await asyncio.sleep(settle)
                recorder.on = False
                pushed = run.confirmed_at[shown]
                trips = [t for t in recorder.trips if t.start >= pushed - 0.001]
                groups = Counter(group_of(t, sent) for t in trips)  # (Bot API calls left out)
                calls = [
                    Trip(c.at, c.at, "bot api", f"{c.method} (answered)")
                    for c in standin.calls
                    if pushed <= c.at and c.method != "getUpdates"
                ]
                samples.append(Sample(sent - pushed, groups, trips + calls, pushed, sent, used))
            finally:
                turn.release()

        with recorder.installed():
            async with running_service(settings):
                await asyncio.gather(*(citizen(i) for i in range(warmup + cards)))
        del samples[:warmup]
        await answers.stop()
    return samples


def print_trace(sample: Sample) -> None:
    print(f"timeline, ms from the confirm's push (card sent at {ms(sample.to_card):.1f}):")
    for trip in sorted(sample.trips, key=lambda t: t.start):
        print(
            f"  {ms(trip.start - sample.pushed):>7.1f} {ms(trip.end - trip.start):>6.1f}  "
            f"{trip.task[:22]:<22} {trip.what}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--cards", type=int, default=10)
    parser.add_argument(
        "--trace", type=int, default=0, help="print the K-th card's timeline (-K: the K slowest)"
    )
    parser.add_argument("--settle", type=float, default=1.2)
    parser.add_argument(
        "--profile", type=int, default=0, help="print the N top functions (cProfile)"
    )
    parser.add_argument("--sort", default="tottime", help="the profile's order (tottime)")
    parser.add_argument(
        "--warmup", type=int, default=5, help="cards first, not counted (statements prepared)"
    )
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    try:
        profile = cProfile.Profile() if args.profile else None
        samples = asyncio.run(measure(args.cards, args.settle, args.warmup, profile))
    except Unavailable as exc:
        print(f"postgresql: skipped ({exc})")
        return 0
    print(f"{len(samples)} cards, each confirmed alone; round trips to PostgreSQL per card:")
    print(f"  {'group':<18}{'median':>8}{'min':>6}{'max':>6}")
    medians: dict[str, float] = {}
    for group in GROUPS:
        counts = [s.groups.get(group, 0) for s in samples]
        medians[group] = statistics.median(counts)
        print(f"  {group:<18}{medians[group]:>8g}{min(counts):>6}{max(counts):>6}")
    to_card = [s.to_card for s in samples]
    p50, p95 = Run("").percentile(0.5, to_card), Run("").percentile(0.95, to_card)
    print(f"confirm to card: p50 {ms(p50):.1f} ms, p95 {ms(p95):.1f} ms")
    cpu = statistics.median(s.cpu for s in samples)
    print(f"CPU of this process from the push to the card, median: {ms(cpu):.1f} ms")
    if profile is not None:
        pstats.Stats(profile).sort_stats(args.sort).print_stats(args.profile)
    if 0 < args.trace <= len(samples):
        print_trace(samples[args.trace - 1])
    elif args.trace < 0:  # the slowest cards
        for sample in sorted(samples, key=lambda s: s.to_card)[args.trace :]:
            print_trace(sample)
    print()
    for group in GROUPS:
        metric = group.replace(" ", "_") + "_round_trips"
        print(figure("postgresql", metric, medians[group], "", None, BENCH))
    print(figure("postgresql", "cpu_to_card_ms", ms(cpu), "ms", None, BENCH))
    print(figure("postgresql", "confirm_to_card_p50_ms", ms(p50), "ms", None, BENCH))
    print(figure("postgresql", "confirm_to_card_p95_ms", ms(p95), "ms", 100.0, BENCH))
    return 0


if __name__ == "__main__":
    sys.exit(main())
