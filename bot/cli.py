"""The ``tinbao`` command line (also ``python -m bot``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import ValidationError

from config.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from bot.runtime import Service

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
  tinbao retention run
                   apply the retention policy (TINBAO_RETENTION_*) now; the worker also
                   runs it daily. Every deletion is an audit event with counts.
  tinbao keys rotate
                   re-encrypt what is stored under TINBAO_PREVIOUS_SECRET_KEYS with
                   TINBAO_SECRET_KEY; resumable. See docs/operations.md first.
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
    run = commands.add_parser(
        "run", help="start the service (web server, and Telegram when configured)"
    )
    run.add_argument(
        "--role",
        choices=("all", "web", "worker"),
        default="all",
        help="all (default): everything in one process; web: webhooks, polling, the panel; "
        "worker: delivery, timers, maintenance. Several of each may share one PostgreSQL.",
    )
    commands.add_parser("migrate", help="upgrade the database schema to this version")
    units = commands.add_parser("units", help="the unit catalogue")
    units_commands = units.add_subparsers(dest="units_command", metavar="ACTION")
    generate = units_commands.add_parser(
        "generate", help="regenerate a province's unit catalogue from vietnam-provinces"
    )
    generate.add_argument("--province", type=int, default=91, help="province code (default 91)")
    generate.add_argument("--out", type=Path, default=None, help="output file")
    retention = commands.add_parser("retention", help="the retention policy")
    retention.add_subparsers(dest="retention_command", metavar="ACTION").add_parser(
        "run", help="apply the retention policy now"
    )
    keys = commands.add_parser("keys", help="the secret key")
    keys.add_subparsers(dest="keys_command", metavar="ACTION").add_parser(
        "rotate", help="re-encrypt stored secrets under TINBAO_SECRET_KEY"
    )
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
    from handlers import localtime
    from storage.db import create_engine
    from storage.migrate import ensure_schema

    settings.check()
    localtime.configure(settings.timezone)
    zone = settings.timezone
    engine = create_engine(settings.effective_database_url)
    try:
        await ensure_schema(engine, auto_upgrade=settings.is_embedded_db)
        if action == "check":
            stored, wrong = await maintenance.check(engine, zone)
            return maintenance.report_check(stored, zone, wrong, print)
        try:
            rows = await maintenance.rebuild(engine, zone)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        for table, count in rows.items():
            print(f"{table}: {count} rows")
        print(f"(days and months in {zone})")
        return 0
    finally:
        await engine.dispose()


def build_app(service: Service) -> web.Application:
    """The server's application: health, webhooks and the panel, and the citizens' page at ``/``
    (``TINBAO_WEB_ENABLED``) in a process that takes citizens' updates (not a worker)."""
    from admin.web import build_web_app
    from bot.web import add_citizen_routes

    app = build_web_app(service)
    if service.keyring is not None and service.settings.web_enabled and service.serves_panel:
        add_citizen_routes(app, service)
    return app


async def _serve(settings: Settings, role: str = "all") -> None:
    from admin.server import serve
    from admin.web import server_limits
    from bot.roles import Role
    from bot.runtime import Service, attach

    service = await Service.create(settings, Role(role))
    app = build_app(service)
    attach(app, service)
    # No access log at all (admin.server.serve): no client address is ever logged.
    served = await serve(app, settings.http_host, settings.http_port, server_limits(settings))
    log.info(
        "serving on http://%s:%d (role %s; health: /healthz)",
        settings.http_host,
        settings.http_port,
        role,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await served.stop()


async def _migrate(settings: Settings) -> str:
    from admin.stats.maintenance import sync_zone
    from storage.db import create_engine
    from storage.migrate import current_revision, upgrade

    engine = create_engine(settings.effective_database_url)
    try:
        await upgrade(engine)
        try:  # the statistics count in TINBAO_TIMEZONE (rebuilt if they counted in another)
            await sync_zone(engine, settings.timezone)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        return str(await current_revision(engine))
    finally:
        await engine.dispose()


async def _retention(settings: Settings) -> str:
    from bot.housekeeping import retention_policy, run_retention
    from storage.db import create_engine, create_session_factory
    from storage.migrate import ensure_schema

    engine = create_engine(settings.effective_database_url)
    try:
        await ensure_schema(engine, auto_upgrade=settings.is_embedded_db)
        result = await run_retention(
            create_session_factory(engine), retention_policy(settings), via="cli"
        )
    finally:
        await engine.dispose()
    return "retention: " + ", ".join(f"{k} {v}" for k, v in result.as_dict().items())


async def _rotate(settings: Settings) -> str:
    from bot.housekeeping import rotate_keys
    from config.settings import resolve_previous_keys, resolve_secret_key
    from handlers.security import Keyring
    from storage.db import create_engine, create_session_factory
    from storage.migrate import ensure_schema

    master = resolve_secret_key(settings)
    previous = resolve_previous_keys(settings, master)
    if not previous:
        raise ConfigError(
            "TINBAO_PREVIOUS_SECRET_KEYS is empty: set TINBAO_SECRET_KEY to the new key and "
            "TINBAO_PREVIOUS_SECRET_KEYS to the old one (see docs/operations.md)."
        )
    engine = create_engine(settings.effective_database_url)
    try:
        await ensure_schema(engine, auto_upgrade=settings.is_embedded_db)
        report = await rotate_keys(create_session_factory(engine), Keyring(master, previous))
    finally:
        await engine.dispose()
    lines = [f"  {name}: {count} re-encrypted" for name, count in report.reencrypted.items()]
    lines.append(f"  routes re-hashed: {report.routes_rehashed}")
    lines.append(f"  PIN hashes wrapped: {report.pins_rewrapped}")
    return "keys rotated under TINBAO_SECRET_KEY:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bot.logs import setup_logging
    from handlers.key_rotation import UnreadableValue
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
    if args.command in ("retention", "keys") and getattr(args, f"{args.command}_command") is None:
        parser.parse_args([args.command, "--help"])
    if args.command == "stats" and args.stats_command not in ("check", "rebuild"):
        parser.parse_args(["stats", "--help"])
        return 2
    try:
        settings = load_settings()
    except (ConfigError, ValidationError) as exc:
        print(f"tinbao: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "migrate":
            revision = asyncio.run(_migrate(settings))
            print(f"database is at schema revision {revision}")
            return 0
        if args.command == "retention":
            print(asyncio.run(_retention(settings)))
            return 0
        if args.command == "keys":
            print(asyncio.run(_rotate(settings)))
            return 0
        if args.command == "stats":
            return asyncio.run(_stats(settings, args.stats_command))
        asyncio.run(_serve(settings, args.role))
        return 0
    except (ConfigError, SchemaMismatch, UnreadableValue) as exc:
        print(f"tinbao: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def app_runner(app: web.Application) -> web.AppRunner:
    """The server's runner: no access log at all, so no client address is ever logged (the
    citizen page promises it; a reverse proxy in front must not log them either)."""
    return web.AppRunner(app, access_log=None)
