"""A burst of tips to one unit, delivered against the rate-limiting Bot API stand-in.

``python -m bench.burst_delivery [--tips N] [--spread S] [--emergencies E]
[--backend sqlite|postgresql|both]``

N tips (default 200) for one unit (Phường Long Xuyên, 30307, whose queue is one supergroup) are
committed as the intake writes them (report + ``report_card`` outbox row), spread evenly over S
seconds (default 10; 0 = all before the worker starts), each commit followed by ``kick()``.
E emergencies (default 0) are mixed in. One :class:`bot.delivery.DeliveryWorker` with
Telegram's real limits (30 msg/s, ~1 msg/s per chat, 20 msg/min per group) sends them to
``BotAPIStandIn(enforce_flood_limits=True)``, which answers 429 exactly as configured.

A report is *visible* once a message in the officers' chat shows its code: its own card or a
line of a digest. Printed per backend: seconds from the first commit until every report is
visible, the slowest and median report (commit → visible), messages sent, digests, 429s
received, and, with emergencies, their slowest commit → card. Target: all visible within 60 s
and zero 429s. Exit status 1 when a report never shows up or one shows up twice.

PostgreSQL: a temporary database on ``TINBAO_BENCH_POSTGRES_URL`` (as ``bench.tip_flow``).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.tip_flow import DATABASES, Unavailable
from bot.delivery import DeliveryWorker, FloodLimits
from bot.logs import setup_logging
from config.queues import Queue, QueueMap, duty_queue
from handlers.domain import REPORT_KIND_EMERGENCY, REPORT_KIND_TIP
from handlers.intake import PRIORITY_EMERGENCY
from handlers.security import format_code, new_tracking_code
from storage.db import create_engine, create_session_factory
from storage.migrate import upgrade
from storage.models import Report
from storage.repositories import Outbox, Reports
from tests.driver import sync_units
from tests.standin import BotAPIStandIn

UNIT = "30307"
UNIT_CHAT = -1_001_777_000_001
DUTY_CHAT = -1_001_777_000_099
TARGET_SECONDS = 60.0
CODE_RE = re.compile(r"[2-9A-Z]{5}-[2-9A-Z]{5}")
#: Commits per second while the burst arrives.
COMMITS_PER_SECOND = 20


class BenchFailure(Exception):
    pass


@dataclass
class Result:
    backend: str
    tips: int
    emergencies: int
    spread: float
    all_visible: float
    slowest: float
    median: float
    messages: int
    digests: int
    cards: int
    rate_limited: int
    emergency_slowest: float | None
    committed: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        return self.all_visible <= TARGET_SECONDS and self.rate_limited == 0


async def seed(session_factory, kinds: Sequence[str]) -> list[str]:
    codes: list[str] = []
    async with session_factory() as session, session.begin():
        for kind in kinds:
            emergency = kind == REPORT_KIND_EMERGENCY
            report = Report(
                code=new_tracking_code(),
                kind=kind,
                category=None if emergency else "drugs",
                unit_code=UNIT,
                description="Có người bán ma túy ở quán cà phê đầu hẻm, tối nào cũng có",
                occurred="now" if emergency else "today",
                injured="unknown" if emergency else None,
                contact_mode="none",
                pin_hash="bench",
                locale="vi",
                channel="telegram",
            )
            await Reports(session).add(report, [])
            row = Outbox(session).enqueue(
                kind="report_card",
                destination=f"unit:{UNIT}",
                payload={"report_id": report.id},
                report_id=report.id,
                dedupe_key=f"card:{report.id}",
            )
            row.priority = PRIORITY_EMERGENCY if emergency else 0
            codes.append(format_code(report.code))
    return codes


def plan_arrivals(tips: int, emergencies: int, spread: float) -> list[list[str]]:
    """The kinds committed in each batch; emergencies evenly among the tips."""
    kinds = [REPORT_KIND_TIP] * tips
    for index in range(emergencies):
        kinds.insert((index + 1) * len(kinds) // (emergencies + 1), REPORT_KIND_EMERGENCY)
    batches = max(1, round(spread * COMMITS_PER_SECOND))
    size = -(-len(kinds) // batches)
    return [kinds[i : i + size] for i in range(0, len(kinds), size)]


async def run_backend(
    backend: str, db_url: str, tips: int, emergencies: int, spread: float
) -> Result:
    engine = create_engine(db_url)
    try:
        await upgrade(engine)
        session_factory = create_session_factory(engine)
        await sync_units(session_factory)
        queues = QueueMap(
            queues=(Queue("long-xuyen", "Long Xuyên", UNIT_CHAT, None, frozenset({UNIT})),),
            duty=duty_queue(DUTY_CHAT),
        )
        async with BotAPIStandIn(enforce_flood_limits=True) as standin:
            bot = standin.bot()
            worker = DeliveryWorker(session_factory, bot, queues, limits=FloodLimits())
            committed: dict[str, float] = {}
            kinds: dict[str, str] = {}
            batches = plan_arrivals(tips, emergencies, spread)
            interval = spread / len(batches) if spread > 0 else 0.0
            if spread <= 0:
                for batch in batches:
                    for code, kind in zip(await seed(session_factory, batch), batch, strict=True):
                        committed[code], kinds[code] = time.monotonic(), kind
            await worker.start()
            try:
                start = time.monotonic()
                if spread > 0:
                    for number, batch in enumerate(batches):
                        await asyncio.sleep(max(0.0, start + number * interval - time.monotonic()))
                        codes = await seed(session_factory, batch)
                        now = time.monotonic()
                        for code, kind in zip(codes, batch, strict=True):
                            committed[code], kinds[code] = now, kind
                        worker.kick()
                visible = await wait_visible(standin, set(committed), timeout=180.0)
            finally:
                await worker.stop()
                await bot.shutdown()
            sent = standin.sent_to(UNIT_CHAT)
            counts: Counter[str] = Counter()
            for call in sent:
                if call.method == "sendMessage" and call.text:
                    counts.update(CODE_RE.findall(call.text))
            twice = [code for code, n in counts.items() if n > 1]
            if twice:
                raise BenchFailure(f"{backend}: {len(twice)} report(s) shown twice")
            digests = sum(1 for call in sent if "r:open:" in str(call.params.get("reply_markup")))
            first = min(committed.values())
            latencies = [visible[code] - committed[code] for code in committed]
            urgent = [visible[c] - committed[c] for c in committed if kinds[c] != "tip"]
            return Result(
                backend=backend,
                tips=tips,
                emergencies=emergencies,
                spread=spread,
                all_visible=max(visible.values()) - first,
                slowest=max(latencies),
                median=statistics.median(latencies),
                messages=standin.stats.sent,
                digests=digests,
                cards=sum(1 for call in sent if call.method == "sendMessage") - digests,
                rate_limited=standin.stats.rate_limited,
                emergency_slowest=max(urgent) if urgent else None,
            )
    finally:
        await engine.dispose()


async def wait_visible(
    standin: BotAPIStandIn,
    codes: set[str],
    timeout: float,  # noqa: ASYNC109
) -> dict[str, float]:
    """When each code first appeared in the officers' chat (the stand-in's clock, monotonic)."""
    seen: dict[str, float] = {}
    index = 0
    deadline = time.monotonic() + timeout
    while True:
        calls = standin.calls
        for call in calls[index:]:
            if call.ok and call.method == "sendMessage" and call.chat_id == UNIT_CHAT:
                for code in CODE_RE.findall(call.text or ""):
                    seen.setdefault(code, call.at)
        index = len(calls)
        if codes <= seen.keys():
            return seen
        if time.monotonic() > deadline:
            raise BenchFailure(f"{len(codes - seen.keys())} report(s) never reached the officers")
        await asyncio.sleep(0.02)


def print_table(results: Sequence[Result]) -> None:
    header = (
        f"{'backend':<11}{'reports':>8}{'spread s':>9}{'all visible s':>14}"
        f"{'slowest s':>10}{'median s':>9}{'messages':>9}{'digests':>8}{'cards':>6}"
        f"{'429s':>6}  verdict"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        verdict = "PASS" if r.passed else "BELOW TARGET"
        print(
            f"{r.backend:<11}{r.tips + r.emergencies:>8}{r.spread:>9.1f}{r.all_visible:>14.2f}"
            f"{r.slowest:>10.2f}{r.median:>9.2f}{r.messages:>9}{r.digests:>8}{r.cards:>6}"
            f"{r.rate_limited:>6}  {verdict} (all visible <= {TARGET_SECONDS:.0f} s, no 429)"
        )
    for r in results:
        if r.emergency_slowest is not None:
            print(
                f"{r.backend}: {r.emergencies} emergencies, slowest commit -> own card "
                f"{r.emergency_slowest:.2f} s"
            )


async def main_async(tips: int, emergencies: int, spread: float, backends: Sequence[str]) -> int:
    results: list[Result] = []
    print(
        f"{tips} tips (+{emergencies} emergencies) to unit {UNIT} over {spread:g} s; "
        "real Telegram limits on the worker and the stand-in"
    )
    for backend in backends:
        try:
            async with DATABASES[backend]() as (db_url, _data_dir):
                results.append(await run_backend(backend, db_url, tips, emergencies, spread))
        except Unavailable as exc:
            print(f"{backend}: SKIPPED: {exc}", flush=True)
        except BenchFailure as exc:
            print(f"FAILED: {exc}", file=sys.stderr, flush=True)
            return 1
    print()
    if results:
        print_table(results)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.burst_delivery",
        description=__doc__.split("\n\n")[0] if __doc__ else "",
    )
    parser.add_argument("--tips", type=int, default=200, help="tips in the burst (200)")
    parser.add_argument(
        "--spread",
        type=float,
        default=10.0,
        help="seconds over which it arrives (10; 0: at once)",
    )
    parser.add_argument(
        "--emergencies", type=int, default=0, help="emergencies mixed into the burst (0)"
    )
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql", "both"), default="sqlite", help="(sqlite)"
    )
    args = parser.parse_args(argv)
    if args.tips < 1 or args.emergencies < 0 or args.spread < 0:
        parser.error("--tips must be at least 1; --emergencies and --spread at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("WARNING")
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    return asyncio.run(main_async(args.tips, args.emergencies, args.spread, backends))


if __name__ == "__main__":
    raise SystemExit(main())
