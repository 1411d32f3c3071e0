"""``python -m bench.tip_flow --processes 1 2 3``: the tip flow in webhook mode, with N ``web``
processes and one ``worker`` on one PostgreSQL behind one URL, each N in turn in one run.

For each N a fresh PostgreSQL database is made (as for ``--backend postgresql``), and N real
``tinbao run --role web`` subprocesses and ``--workers`` (1) ``tinbao run --role worker`` start
on it (:mod:`tests.cluster`). The Bot API stand-in's webhook points at a small balancer standing
where nginx would, which hands each delivery to one web process at random (no repeats here). The
stand-in delivers like Telegram: up to 40 updates in flight, one chat's one after the other. The
citizens are the flat-out mode's (``--tips``, ``--concurrency``): each files one complete tip
(10 updates), sending the next update once the answer to the previous one arrived, and the same
checks apply (one report per tip, with the code its citizen was shown).

The baseline, per N: the same updates to N processes of a bare python-telegram-bot echo bot
behind the same balancer (:mod:`bench.echo_webhook`; no database, no spool). Its throughput is
the most this harness (the stand-in, the balancer and the citizens share the benchmark's own
process) and this machine let any bot reach.

While tinbao runs, the CPU time of each process is read from ``/proc`` (:mod:`bench.cpu`): the
benchmark process, the web processes, the worker, and the PostgreSQL backends of the run's
database, each as a share of one core, with the machine's busy share of all its cores and the
load average: where the time goes, and whether the cores were the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import pool, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.cpu import CpuMeter
from bench.databases import Unavailable, postgres_database
from bench.report import figure, ms
from bench.tip_flow import (
    Answers,
    BenchFailure,
    Driver,
    Run,
    check_calls,
    description_for,
    drive,
    new_users,
    tip_steps,
    wait_confirmed,
)
from storage.models import Report
from tests.cluster import cluster
from tests.standin import BotAPIStandIn, UpdateFactory

#: Telegram's default ``max_connections`` for a webhook.
WEBHOOK_CONNECTIONS = 40
DUTY_CHAT_ID = -1009000000001
BENCH = "tip_flow"
BACKEND = "postgresql"
ECHO_PROGRAM = ("-m", "bench.echo_webhook")
#: Seconds between two looks at what the PostgreSQL backends do.
WAIT_SAMPLE = 0.1


@dataclass
class Measured:
    run: Run
    cpu: dict[str, float]
    #: CPU share of each web process (one core = 1.0).
    per_web: list[float]
    machine_busy: float
    load: float
    #: Wall seconds of the measured stretch per update answered.
    wall_per_update: float
    #: PostgreSQL transactions per update, from the processes' start to their stop.
    xacts_per_update: float
    #: Statements per update and their mean time in ms, most first (only when the server has
    #: pg_stat_statements).
    statements: list[tuple[str, float, float]]
    #: Backends running a statement, on average, by what they wait for (``CPU``: nothing).
    waits: dict[str, float]


@dataclass
class ProcessesRow:
    processes: int
    tinbao: Measured
    echo: Measured


async def transactions(db_url: str) -> int:
    """Transactions committed and rolled back in ``db_url``'s database so far (the server's
    statistics: a backend reports its own at the latest when it exits)."""
    engine = create_async_engine(db_url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            found = await connection.scalar(
                text(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                    "WHERE datname = current_database()"
                )
            )
            return int(found or 0)
    finally:
        await engine.dispose()


async def reset_statements(db_url: str) -> bool:
    """Start counting statements in ``db_url``'s database, when the server has
    ``pg_stat_statements`` loaded (``shared_preload_libraries``); ``False`` otherwise."""
    engine = create_async_engine(db_url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
            await connection.execute(
                text(
                    "SELECT pg_stat_statements_reset(0, "
                    "(SELECT oid FROM pg_database WHERE datname = current_database()), 0)"
                )
            )
    except Exception:  # not loaded, or not allowed: the figures go without it
        return False
    finally:
        await engine.dispose()
    return True


async def read_statements(db_url: str) -> list[tuple[str, int, float]]:
    """Each statement run in ``db_url``'s database since the reset, how often, and its mean
    time in ms (lock waits included), most first."""
    engine = create_async_engine(db_url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT query, sum(calls), sum(total_exec_time) / greatest(sum(calls), 1) "
                    "FROM pg_stat_statements WHERE dbid = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND query NOT LIKE '%pg_stat_activity%' GROUP BY query ORDER BY 2 DESC"
                )
            )
            return [(str(query), int(calls), float(mean)) for query, calls, mean in rows]
    finally:
        await engine.dispose()


class Waits:
    """Samples, every :data:`WAIT_SAMPLE` s, what the PostgreSQL backends of the run's database
    are doing: on average how many run a statement, and how many of those wait for a lock
    (a row another transaction holds: ``transactionid``/``tuple``; a chat's turn: ``advisory``)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.samples = 0
        self.counts: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bench-waits")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        engine = create_async_engine(self.db_url, poolclass=pool.NullPool)
        query = text(
            "SELECT coalesce(wait_event_type, 'CPU'), coalesce(wait_event, ''), count(*) "
            "FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
            "AND pid <> pg_backend_pid() GROUP BY 1, 2"
        )
        try:
            async with engine.connect() as connection:
                while True:
                    rows = (await connection.execute(query)).all()
                    await connection.rollback()
                    self.samples += 1
                    for kind, event, count in rows:
                        name = f"{kind}:{event}" if kind == "Lock" else kind
                        self.counts[name] = self.counts.get(name, 0) + int(count)
                    await asyncio.sleep(WAIT_SAMPLE)
        finally:
            await engine.dispose()

    def average(self) -> dict[str, float]:
        return {k: v / max(self.samples, 1) for k, v in sorted(self.counts.items())}


async def backend_pids(db_url: str) -> list[int]:
    """The PostgreSQL server processes serving ``db_url``'s database (not this query's own)."""
    engine = create_async_engine(db_url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            return [int(row[0]) for row in rows]
    finally:
        await engine.dispose()


async def measure(
    driver: Driver,
    db_url: str,
    data_dir: Path,
    processes: int,
    workers: int,
    tips: int,
    concurrency: int,
    echo: bool,
) -> Measured:
    """One run: ``processes`` web processes (tinbao's, or the echo bot's) and their citizens."""
    standin = driver.standin
    label = f"{'echo' if echo else 'tinbao'}/{processes}p"
    run = Run(label)
    users = new_users(driver.factory, tips)
    steps_of = {
        user.id: tip_steps(description_for(number)) for number, user in enumerate(users, 1)
    }
    start = len(standin.calls)
    env = {"TINBAO_DUTY_CHAT_ID": str(DUTY_CHAT_ID)}
    program = ECHO_PROGRAM if echo else ("-m", "bot", "run")
    before = 0 if echo else await transactions(db_url)
    counting = not echo and await reset_statements(db_url)
    async with cluster(
        standin,
        db_url,
        data_dir / label.replace("/", "-"),
        webs=processes,
        workers=0 if echo else workers,
        duplicate_rate=0.0,
        extra_env=env,
        program=program,
    ) as (_balancer, members):
        web = [p.proc.pid for p in members if p.role == "web"]
        groups = {
            "bench": [os.getpid()],
            "web": web,
            "worker": [p.proc.pid for p in members if p.role == "worker"],
            "postgres": [] if echo else await backend_pids(db_url),
        }
        meter = CpuMeter(groups)
        waits = Waits(db_url)
        if not echo:
            waits.start()
        meter.start()
        if echo:
            await drive(
                users, concurrency, lambda user: driver.echo_citizen(run, user, steps_of[user.id])
            )
        else:
            codes = await drive(
                users,
                concurrency,
                lambda user: driver.tinbao_citizen(run, user, steps_of[user.id]),
            )
        late = {} if echo else {"postgres": await backend_pids(db_url)}
        meter.stop(late)
        await waits.stop()
        per_web = [meter.seconds_of(pid) / max(meter.wall, 1e-9) for pid in web]
    check_calls(standin, start, label)
    await wait_confirmed(standin, label)
    if run.updates != tips * len(next(iter(steps_of.values()))):
        raise BenchFailure(f"{label}: {run.updates} updates answered")
    xacts = 0
    statements: list[tuple[str, int, float]] = []
    if not echo:
        await check_reports(db_url, codes, label)
        xacts = await transactions(db_url) - before
        if counting:
            statements = await read_statements(db_url)
    return Measured(
        run,
        meter.shares(),
        per_web,
        meter.machine_busy,
        meter.load,
        meter.wall / max(run.updates, 1),
        xacts / max(run.updates, 1),
        [(query, calls / max(run.updates, 1), mean) for query, calls, mean in statements],
        waits.average(),
    )


async def check_reports(db_url: str, codes: Sequence[str], label: str) -> None:
    engine = create_async_engine(db_url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            stored = list(await connection.scalars(select(Report.code)))
    finally:
        await engine.dispose()
    if sorted(stored) != sorted(codes):
        raise BenchFailure(
            f"{label}: {len(codes)} tips filed but {len(stored)} reports stored, or other codes"
        )
    if len(set(codes)) != len(codes):
        raise BenchFailure(f"{label}: tracking codes are not unique")


def print_rows(rows: Sequence[ProcessesRow], workers: int) -> None:
    header = (
        f"{'web':>4}{'tinbao upd/s':>14}{'vs 1':>7}{'p50 / p95 ms':>16}"
        f"{'echo upd/s':>12}{'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    first = rows[0].tinbao.run.per_second if rows else 1.0
    for row in rows:
        tinbao, echo = row.tinbao.run, row.echo.run
        print(
            f"{row.processes:>4}{tinbao.per_second:>14.1f}{tinbao.per_second / first:>7.2f}"
            f"{ms(tinbao.percentile(0.5)):>8.1f} /{ms(tinbao.percentile(0.95)):>6.1f}"
            f"{echo.per_second:>12.1f}{tinbao.per_second / echo.per_second:>7.2f}"
        )
    print()
    cores = os.cpu_count() or 1
    print(
        "CPU per update, ms: the benchmark's own process (stand-in, balancer, citizens), the web "
        "processes (all, and each one's share of a core), the worker, the PostgreSQL backends of "
        f"the run's database; the machine's busy share of its {cores} cores, the load average, "
        f"and the throughput the tinbao processes and PostgreSQL alone would allow on {cores} "
        "idle cores (cores / their CPU per update)"
    )
    print(
        f"{'web':>4}{'bench':>8}{'web':>8}{'(cores each)':>20}{'worker':>8}{'postgres':>10}"
        f"{'busy':>7}{'load':>6}{'ceiling upd/s':>15}{'PG transactions/update':>24}"
    )
    for label, pick in (("tinbao", lambda r: r.tinbao), ("echo (no database)", lambda r: r.echo)):
        print(f"  {label}:")
        for row in rows:
            m: Measured = pick(row)
            per = {name: share * m.wall_per_update * 1000 for name, share in m.cpu.items()}
            each = " ".join(f"{share:.2f}" for share in m.per_web)
            service = per["web"] + per["worker"] + per["postgres"]
            ceiling = cores * 1000 / service if service else 0.0
            print(
                f"{row.processes:>4}{per['bench']:>8.1f}{per['web']:>8.1f}{each:>20}"
                f"{per['worker']:>8.1f}{per['postgres']:>10.1f}"
                f"{m.machine_busy * 100:>6.0f}%{m.load:>6.1f}{ceiling:>15.0f}"
                f"{m.xacts_per_update:>24.1f}"
            )


def print_statements(rows: Sequence[ProcessesRow], top: int = 14) -> None:
    for row in rows:
        counted = row.tinbao.statements
        if not counted:
            continue
        total = sum(calls for _, calls, _ in counted)
        print(
            f"PostgreSQL statements per update with {row.processes} web (pg_stat_statements, "
            f"from start to stop, BEGIN and COMMIT included): {total:.1f}; per update, "
            "mean ms, statement:"
        )
        for query, calls, mean in counted[:top]:
            shown = " ".join(query.split())
            print(f"  {calls:6.2f} {mean:8.2f}  {shown[:100]}")
        print("  ... and the statements that took the most time per update, ms:")
        slowest = sorted(counted, key=lambda item: item[1] * item[2], reverse=True)
        for query, calls, mean in slowest[:5]:
            shown = " ".join(query.split())
            print(f"  {calls * mean:6.2f} {mean:8.2f}  {shown[:100]}")


def print_waits(rows: Sequence[ProcessesRow]) -> None:
    print(
        "PostgreSQL backends running a statement, on average while tinbao ran, by what they "
        "wait for (CPU: nothing; Lock:transactionid: a row another transaction holds; "
        "Lock:advisory: a chat's turn; Client/IO/LWLock: the rest):"
    )
    for row in rows:
        waits = row.tinbao.waits
        shown = ", ".join(f"{name} {value:.2f}" for name, value in waits.items())
        print(f"  {row.processes} web: {sum(waits.values()):.2f} in all: {shown}")


def figures(rows: Sequence[ProcessesRow]) -> list[str]:
    lines: list[str] = []
    for row in rows:
        n = row.processes
        tinbao, echo = row.tinbao.run, row.echo.run
        lines += [
            figure(BACKEND, f"webhook_{n}p_ups", tinbao.per_second, "updates/s", None, BENCH),
            figure(
                BACKEND, f"webhook_{n}p_p95_ms", ms(tinbao.percentile(0.95)), "ms", None, BENCH
            ),
            figure(BACKEND, f"echo_webhook_{n}p_ups", echo.per_second, "updates/s", None, BENCH),
        ]
    return lines


async def main_async(counts: Sequence[int], tips: int, concurrency: int, workers: int = 1) -> int:
    print(
        f"webhook mode on PostgreSQL: N web processes and {workers} worker"
        f"{'s' if workers > 1 else ''} behind one URL; {tips} tips of "
        f"{len(tip_steps(''))} updates each, {concurrency} citizens at once"
    )
    rows: list[ProcessesRow] = []
    async with BotAPIStandIn(webhook_connections=WEBHOOK_CONNECTIONS) as standin:
        answers = Answers(standin)
        answers.start()
        driver = Driver(standin, answers, UpdateFactory(standin))
        try:
            for processes in counts:
                async with postgres_database() as (db_url, data_dir):
                    tinbao = await measure(
                        driver, db_url, data_dir, processes, workers, tips, concurrency, False
                    )
                    echo = await measure(
                        driver, db_url, data_dir, processes, workers, tips, concurrency, True
                    )
                rows.append(ProcessesRow(processes, tinbao, echo))
                print(
                    f"  {processes} web: tinbao {tinbao.run.per_second:.1f} upd/s, "
                    f"echo {echo.run.per_second:.1f} upd/s",
                    flush=True,
                )
        except Unavailable as exc:
            print(f"{BACKEND}: SKIPPED: {exc}", flush=True)
            return 0
        except BenchFailure as exc:
            print(f"FAILED: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            with contextlib.suppress(Exception):
                await answers.stop()
    print()
    print_rows(rows, workers)
    print()
    print_waits(rows)
    print_statements(rows)
    print()
    for line in figures(rows):
        print(line)
    return 0


def run(counts: Sequence[int], tips: int, concurrency: int, workers: int) -> int:
    return asyncio.run(main_async(counts, tips, concurrency, workers))
