"""The ``tinbao`` command line (also ``python -m bot``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web
from pydantic import ValidationError

from config.settings import ConfigError, Settings, load_settings

log = logging.getLogger("tinbao")

DESCRIPTION = """\
tinbao: anonymous crime tip-offs and traffic-accident emergency reports.

  tinbao run       start the service: the web server (/healthz), and Telegram once
                   TINBAO_TELEGRAM_TOKEN is set. On the embedded SQLite default the
                   database is created and migrated by itself.
  tinbao migrate   upgrade the database (TINBAO_DATABASE_URL) to this version's schema.
                   Run it before 'tinbao run' against PostgreSQL.
  tinbao units generate --province 91
                   regenerate the unit catalogue from the vietnam-provinces package.
  tinbao admin create-user --username U --role admin|commander|officer [--queue KEY]
                   create a web panel account (the password is asked for, or read from
                   TINBAO_ADMIN_PASSWORD); prints nothing secret.
  tinbao stats check
                   recount the statistics from the reports and compare with the rollups
                   (exit status 1 when they disagree).
  tinbao stats rebuild
                   empty the statistics rollups and fill them again from the reports.

Settings come from TINBAO_* environment variables or a .env file; see README.md.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinbao",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="start the service (web server, and Telegram when configured)")
    commands.add_parser("migrate", help="upgrade the database schema to this version")
    units = commands.add_parser("units", help="the unit catalogue")
    units_commands = units.add_subparsers(dest="units_command", metavar="ACTION")
    generate = units_commands.add_parser(
        "generate", help="regenerate a province's unit catalogue from vietnam-provinces"
    )
    generate.add_argument("--province", type=int, default=91, help="province code (default 91)")
    generate.add_argument("--out", type=Path, default=None, help="output file")
    admin = commands.add_parser("admin", help="web panel accounts")
    admin_commands = admin.add_subparsers(dest="admin_command", metavar="ACTION")
    admin_commands.add_parser(
        "create-user", help="create a web panel account (see: tinbao admin create-user --help)"
    )
    stats = commands.add_parser("stats", help="the statistics rollups")
    stats_commands = stats.add_subparsers(dest="stats_command", metavar="ACTION")
    stats_commands.add_parser("check", help="compare the rollups with a recount of the reports")
    stats_commands.add_parser("rebuild", help="fill the rollups again from the reports")
    return parser


async def _stats(settings: Settings, action: str) -> int:
    from admin.stats import maintenance
    from storage.db import create_engine
    from storage.migrate import ensure_schema

    engine = create_engine(settings.effective_database_url)
    try:
        await ensure_schema(engine, auto_upgrade=settings.is_embedded_db)
        if action == "check":
            return maintenance.report_check(await maintenance.check(engine), print)
        for table, rows in (await maintenance.rebuild(engine)).items():
            print(f"{table}: {rows} rows")
        return 0
    finally:
        await engine.dispose()


async def _serve(settings: Settings) -> None:
    from admin.web import build_web_app
    from bot.runtime import Service, attach

    service = await Service.create(settings)
    app = build_web_app(service)
    attach(app, service)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    log.info("serving on http://%s:%d (health: /healthz)", settings.http_host, settings.http_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await runner.cleanup()


async def _migrate(settings: Settings) -> str:
    from storage.db import create_engine
    from storage.migrate import current_revision, upgrade

    engine = create_engine(settings.effective_database_url)
    try:
        await upgrade(engine)
        return str(await current_revision(engine))
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    from bot.logs import setup_logging
    from storage.migrate import SchemaMismatch

    argv_list = sys.argv[1:] if argv is None else list(argv)
    if argv_list[:2] == ["admin", "create-user"]:
        from admin.cli import create_user

        return create_user(argv_list[2:])
    parser = _parser()
    args = parser.parse_args(argv_list)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "admin":
        parser.parse_args(["admin", "--help"])
        return 2
    if args.command == "units":
        from config.catalogue import main as catalogue_main

        if args.units_command != "generate":
            parser.parse_args(["units", "--help"])
            return 2
        forwarded = ["--province", str(args.province)]
        if args.out is not None:
            forwarded += ["--out", str(args.out)]
        return catalogue_main(forwarded)
    if args.command == "stats" and args.stats_command not in ("check", "rebuild"):
        parser.parse_args(["stats", "--help"])
        return 2
    try:
        settings = load_settings()
    except (ConfigError, ValidationError) as exc:
        print(f"tinbao: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        if args.command == "migrate":
            revision = asyncio.run(_migrate(settings))
            print(f"database is at schema revision {revision}")
            return 0
        if args.command == "stats":
            return asyncio.run(_stats(settings, args.stats_command))
        asyncio.run(_serve(settings))
        return 0
    except (ConfigError, SchemaMismatch) as exc:
        print(f"tinbao: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
