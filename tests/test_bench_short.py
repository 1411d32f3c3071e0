"""The tip-flow benchmark in a short mode: correctness only (every tip makes exactly one report
with the code its citizen was shown), never a timing."""

from __future__ import annotations

import json
import os

import pytest

from bench import memory, tip_flow, tip_flow_processes
from bench.databases import POSTGRES_URL_ENV


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("rate", [None, 20.0])
async def test_the_tip_flow_benchmark_runs_short(backend, rate, capsys, monkeypatch):
    if backend == "postgresql":
        url = os.environ.get("TINBAO_TEST_POSTGRES_URL", "").strip()
        if not url:
            pytest.skip("TINBAO_TEST_POSTGRES_URL is not set")
        monkeypatch.setenv(POSTGRES_URL_ENV, url)
    status = await tip_flow.main_async(3, (backend,), 2, rate, cards=2)
    out = capsys.readouterr()
    assert status == 0, out.err
    assert "SKIPPED" not in out.out
    lines = [line for line in out.out.splitlines() if line.startswith('{"bench"')]
    metrics = {line.split('"metric": "')[1].split('"')[0] for line in lines}
    expected = (
        {"ratio", "tinbao_ups", "echo_ups"}
        if rate is None
        else {"p50_ms", "p95_ms", "p99_ms", "echo_p95_ms"}
    )
    cpu = {"cpu_ms_per_update", "echo_cpu_ms_per_update"}
    assert metrics == expected | {"confirm_to_card_p95_ms"} | cpu


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_the_memory_benchmark_runs_short(backend, capsys, monkeypatch):
    """A few drafts in two rounds, in the service's own process: every draft is stored, the
    purge ends every one, and the three figures are printed (never a size checked here)."""
    if backend == "postgresql":
        url = os.environ.get("TINBAO_TEST_POSTGRES_URL", "").strip()
        if not url:
            pytest.skip("TINBAO_TEST_POSTGRES_URL is not set")
        monkeypatch.setenv(POSTGRES_URL_ENV, url)
    status = await memory.main_async(5, (backend,), 2)
    out = capsys.readouterr()
    assert status == 0, out.err
    assert "SKIPPED" not in out.out
    assert "round 2: 5 drafts" in out.out
    lines = [json.loads(line) for line in out.out.splitlines() if line.startswith('{"bench"')]
    assert {line["metric"] for line in lines} == {
        "rss_idle_mb",
        "rss_10k_drafts_mb",
        "rss_after_expiry_mb",
        "rss_growth_per_round_mb",
    }
    assert all(
        line["bench"] == "memory"
        and (line["value"] > 0 or line["metric"].startswith("rss_growth"))
        for line in lines
    )


async def test_the_processes_benchmark_runs_short(capsys, monkeypatch):
    """``--processes 1`` with 2 tips: one web process and a worker on PostgreSQL, then the echo
    bot, behind the balancer; every tip makes one report with its code, and the figures are
    printed (never a speed checked here)."""
    url = os.environ.get("TINBAO_TEST_POSTGRES_URL", "").strip()
    if not url:
        pytest.skip("TINBAO_TEST_POSTGRES_URL is not set")
    monkeypatch.setenv(POSTGRES_URL_ENV, url)
    status = await tip_flow_processes.main_async([1], 2, 2)
    out = capsys.readouterr()
    assert status == 0, out.err
    assert "SKIPPED" not in out.out
    lines = [json.loads(line) for line in out.out.splitlines() if line.startswith('{"bench"')]
    assert {line["metric"] for line in lines} == {
        "webhook_1p_ups",
        "webhook_1p_p95_ms",
        "echo_webhook_1p_ups",
    }
    assert all(line["backend"] == "postgresql" and line["value"] > 0 for line in lines)


async def test_the_retention_benchmark_runs_short(capsys):
    """A few thousand outbox rows: every statement's plan is printed, the backlog goes, and the
    figures are printed (never a time checked here)."""
    import argparse
    import secrets

    from bench import retention

    url = os.environ.get("TINBAO_TEST_POSTGRES_URL", "").strip()
    if not url:
        pytest.skip("TINBAO_TEST_POSTGRES_URL is not set")
    args = argparse.Namespace(
        url=url,
        rows=3000,
        days=400,
        database=f"tinbao_bench_retention_{secrets.token_hex(4)}",
        keep=False,
        skip_seed=False,
    )
    await retention.main(args)
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"bench"')]
    plans = [line for line in lines if "plan" in line]
    assert plans and all(line["scans"] for line in plans)
    assert {line["metric"] for line in lines if "metric" in line} == {
        "backlog_run_s",
        "backlog_rows_per_s",
        "nothing_left_run_ms",
        "a_day_later_run_ms",
    }
    first = next(line for line in out.splitlines() if line.startswith("first run: "))
    assert "'outbox': 0" not in first
