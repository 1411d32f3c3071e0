"""Confirm to card across processes: a ``web`` process stores the card, a ``worker`` sends it.

``python -m bench.wakeup [--cards N] [--poll S]``

One ``tinbao run --role web`` and one ``--role worker`` (real subprocesses, ``tests/cluster.py``)
share a temporary PostgreSQL database; the Bot API stand-in posts webhook updates to the web
process. ``--cards`` citizens (20) fill a tip up to the summary together, then confirm one at a
time, each after the previous card was sent and 0.5 s more, from five communes routed to five
groups in turn, as ``bench.tip_flow`` times P6: from the push of the confirm press to the
``sendMessage`` of the card in its group, p50 and p95.

The worker's fallback poll is ``--poll`` seconds (600 by default): only the notification the web
process's commit sends (LISTEN/NOTIFY, ``bot/wakeup.py``) can wake it in time, so the figure is
that of the wake-up (before it, a card from a web process waited for the worker's next poll,
up to 2-5 s). Below the table, one JSON object per figure: ``{"bench", "backend", "metric",
"value", "unit", "target"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from bench.databases import DATABASES, Unavailable
from bench.report import figure, ms
from bench.tip_flow import (
    CARD_SAMPLES,
    DUTY_CHAT_ID,
    TARGET_CONFIRM_TO_CARD_MS,
    Answers,
    Driver,
    Run,
    card_queues,
    time_cards,
)
from tests.cluster import cluster
from tests.standin import BotAPIStandIn, UpdateFactory

BENCH = "wakeup"


async def measure(cards: int, poll: float) -> Run:
    """The cards timed (their ``to_card``, seconds)."""
    async with (
        DATABASES["postgresql"]() as (db_url, _),
        BotAPIStandIn() as standin,
    ):
        with tempfile.TemporaryDirectory(prefix="tinbao-wakeup-") as tmp:
            env = {
                "TINBAO_DUTY_CHAT_ID": str(DUTY_CHAT_ID),
                "TINBAO_OUTBOX_POLL_SECONDS": str(poll),
                "TINBAO_QUEUES_FILE": str(card_queues(Path(tmp))),
            }
            async with cluster(
                standin, db_url, Path(tmp), webs=1, workers=1, duplicate_rate=0, extra_env=env
            ):
                answers = Answers(standin)
                answers.start()
                try:
                    driver = Driver(standin, answers, UpdateFactory(standin))
                    run, codes = await time_cards(driver, cards, "web+worker")
                finally:
                    await answers.stop()
    if len(set(codes)) != cards:
        raise SystemExit(f"{cards} tips gave {len(set(codes))} codes")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=CARD_SAMPLES)
    parser.add_argument("--poll", type=float, default=600.0)
    args = parser.parse_args()
    try:
        run = asyncio.run(measure(args.cards, args.poll))
    except Unavailable as exc:
        print(f"postgresql: skipped ({exc})")
        sys.exit(0)
    print(f"confirm to card, web process -> worker process, worker poll {args.poll:.0f} s")
    p50, p95 = run.percentile(0.5, run.to_card), run.percentile(0.95, run.to_card)
    print(
        f"  {len(run.to_card)} cards   p50 {ms(p50):.1f} ms   p95 {ms(p95):.1f} ms   "
        f"max {ms(max(run.to_card)):.1f} ms"
    )
    print("  " + " ".join(f"{ms(c):.0f}" for c in sorted(run.to_card)))
    print(figure("postgresql", "web_to_worker_card_p50_ms", ms(p50), "ms", None, BENCH))
    print(
        figure(
            "postgresql",
            "web_to_worker_card_p95_ms",
            ms(p95),
            "ms",
            TARGET_CONFIRM_TO_CARD_MS,
            BENCH,
        )
    )


if __name__ == "__main__":
    main()
