"""``tinbao admin create-user``: a web-panel account (the first admin, or any other).

The password is read with ``getpass`` (twice), or from ``TINBAO_ADMIN_PASSWORD`` for scripts.
Nothing secret is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys

from pydantic import ValidationError
from sqlalchemy import select

from admin.auth import PASSWORD_MIN, hash_password, password_problem
from config.catalogue import load_catalogue
from config.queues import load_queue_map
from config.settings import ConfigError, Settings, load_settings
from handlers.officers import ALL_QUEUES, ROLES
from storage.models import Officer, OfficerScope

PASSWORD_ENV = "TINBAO_ADMIN_PASSWORD"  # noqa: S105 (the name of a variable)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinbao admin create-user",
        description=(
            "Create a web-panel account, or with --reset give an existing one a new password, "
            f"role and queue. The password is asked for, or read from {PASSWORD_ENV}."
        ),
    )
    parser.add_argument("--username", required=True)
    parser.add_argument("--role", required=True, choices=ROLES)
    parser.add_argument(
        "--queue",
        default=None,
        metavar="QUEUE",
        help=(
            "queue key the account serves: required with --role officer; admins and "
            "commanders default to every queue ('*')"
        ),
    )
    parser.add_argument("--name", default=None, help="display name (default: the username)")
    parser.add_argument("--reset", action="store_true", help="update an existing account")
    return parser


class PasswordNotRead(Exception):
    """No password could be read; the message says why, once, for the person at the prompt."""


def _read_password() -> str:
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        return from_env
    if not sys.stdin.isatty():
        raise PasswordNotRead(f"no password given (set {PASSWORD_ENV} or use a terminal)")
    try:
        first = getpass.getpass("Password: ")
        again = getpass.getpass("Password again: ")
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)  # end the prompt's line
        raise PasswordNotRead("cancelled; no account was changed") from None
    if first != again:
        raise PasswordNotRead("the two passwords differ; no account was changed, try again")
    return first


def _valid_username(name: str) -> bool:
    return 3 <= len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)


async def _create(settings: Settings, args: argparse.Namespace, password: str) -> tuple[int, str]:
    from storage.db import create_engine, create_session_factory
    from storage.migrate import ensure_schema

    catalogue = load_catalogue(settings.units_file)
    queues = load_queue_map(
        settings.queues_file,
        duty_chat_id=settings.duty_chat_id,
        duty_thread_id=settings.duty_thread_id,
        known_units=catalogue.by_code.keys(),
    )
    queue_key = args.queue or (ALL_QUEUES if args.role in ("admin", "commander") else None)
    if queue_key is None:
        return 2, "an officer needs --queue (one of: " + _keys(queues) + ")"
    if queue_key != ALL_QUEUES and queues.by_key(queue_key) is None:
        return 2, f"unknown queue {queue_key!r} (one of: {_keys(queues)}, or '*')"
    engine = create_engine(settings.effective_database_url)
    try:
        await ensure_schema(engine, auto_upgrade=settings.is_embedded_db)
        factory = create_session_factory(engine)
        async with factory() as session, session.begin():
            officer = await session.scalar(
                select(Officer).where(Officer.username == args.username)
            )
            if officer is not None and not args.reset:
                return 1, f"user {args.username!r} exists; add --reset to change it"
            if officer is None:
                officer = Officer(display_name=args.username, username=args.username, scopes=[])
                session.add(officer)
            officer.display_name = (args.name or officer.display_name or args.username)[:200]
            officer.role = args.role
            officer.password_hash = hash_password(password)
            # A new password ends every panel session of the account.
            officer.session_generation = (officer.session_generation or 0) + 1
            officer.active = True
            officer.revoked_at = None
            if [scope.queue_key for scope in officer.scopes] != [queue_key]:
                officer.scopes.clear()
                await session.flush()  # the old scopes go before the new one is inserted
                officer.scopes.append(OfficerScope(queue_key=queue_key))
            await session.flush()
            return 0, f"{'updated' if args.reset else 'created'} {args.role} {args.username!r}"
    finally:
        await engine.dispose()


def _keys(queues: object) -> str:
    from config.queues import QueueMap

    assert isinstance(queues, QueueMap)
    return ", ".join(q.key for q in queues.all_queues) or "none configured"


def create_user(argv: list[str] | None = None) -> int:
    """Entry point: returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.role == "officer" and not args.queue:
        parser.error("--queue is required with --role officer")
    if not _valid_username(args.username):
        print(
            "tinbao: a username is 3-64 characters of a-z, 0-9, '.', '_' and '-'", file=sys.stderr
        )
        return 2
    try:
        password = _read_password()
    except PasswordNotRead as exc:
        print(f"tinbao: {exc}", file=sys.stderr)
        return 2
    if password_problem(password) is not None:
        print(f"tinbao: the password needs at least {PASSWORD_MIN} characters", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
        code, message = asyncio.run(_create(settings, args, password))
    except (ConfigError, ValidationError, ValueError) as exc:
        print(f"tinbao: configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"tinbao: {message}", file=sys.stderr if code else sys.stdout)
    return code
