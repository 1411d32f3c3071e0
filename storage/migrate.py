"""Schema migrations (Alembic), run from code: there is no ``alembic.ini``.

* :func:`upgrade` brings a database to the newest revision (``tinbao migrate``);
* :func:`ensure_schema` is called at start-up: the embedded SQLite database is upgraded on the
  spot, an external database must already be at this code's revision.

On a SQLite file the migrations run on a dedicated connection where SQLAlchemy, not the
``sqlite3`` driver, emits ``BEGIN IMMEDIATE`` (so DDL is transactional and each revision is all
or nothing) and where ``PRAGMA foreign_keys`` is OFF: a "batch" table rebuild drops and
re-creates a table, which with foreign keys ON would fail, or worse, run ``ON DELETE CASCADE``
on the rows that point at it. ``PRAGMA foreign_key_check`` must come back empty before each
revision commits. (An in-memory SQLite database, for tests, is migrated on its own engine's
single connection.) On PostgreSQL, a session advisory lock keeps two ``tinbao migrate`` from
running at once.

Alembic (with Mako and Pygments, ~10 MB) is imported only when a migration or a comparison
runs: a start-up whose database is already at this code's revision reads ``alembic_version``
with one plain query and the head from the revision files (:func:`head_in_files`), and never
imports it.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import JSON, Connection, event, inspect, pool, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from storage.db import SQLITE_PRAGMAS, install_sqlite_pragmas, sqlite_file
from storage.models import Base
from storage.types import UTCDateTime

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext, MigrationInfo
    from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: Key of the PostgreSQL advisory lock held while migrating (the bytes of "tinbao").
_PG_MIGRATION_LOCK = int.from_bytes(b"tinbao", "big")

#: Pragmas of the migration connection on SQLite (see the module docstring).
_SQLITE_MIGRATION_PRAGMAS: tuple[tuple[str, str], ...] = tuple(
    (name, "OFF" if name == "foreign_keys" else value) for name, value in SQLITE_PRAGMAS
)


class SchemaMismatch(RuntimeError):
    """The database schema is not the one this code was written for."""


# --- configuration shared with migrations/env.py -------------------------------------------------


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic :class:`Config` built in code; ``connection`` is handed to ``env.py``."""
    from alembic.config import Config

    config = Config()
    # The value goes through ConfigParser interpolation: a literal "%" must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if importlib.util.find_spec("ruff") is not None:
        # New revision files come out linted and formatted like the rest of the code.
        hooks = {"ruff_format": "format --quiet", "ruff_fix": "check --fix --quiet"}
        config.set_section_option("post_write_hooks", "hooks", " ".join(hooks))
        for name, options in hooks.items():
            config.set_section_option("post_write_hooks", f"{name}.type", "module")
            config.set_section_option("post_write_hooks", f"{name}.module", "ruff")
            config.set_section_option(
                "post_write_hooks", f"{name}.options", f"{options} REVISION_SCRIPT_FILENAME"
            )
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write our own column types as plain SQLAlchemy types in generated migrations.

    A migration must not import application code that may change after it is written.
    """
    if type_ != "type":
        return False
    if isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    variants = getattr(obj, "_variant_mapping", {})
    if isinstance(obj, JSON) and isinstance(variants.get("postgresql"), JSONB):
        # Rendered by hand: autogenerate run against SQLite would write a bare "Text()".
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return 'sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")'
    return False


def _check_foreign_keys(
    *, ctx: MigrationContext, step: MigrationInfo, heads: set[str], run_args: dict[str, Any]
) -> None:
    """``on_version_apply`` hook for SQLite: refuse to commit a revision that breaks a FK."""
    if ctx.as_sql or ctx.connection is None:
        return
    broken = ctx.connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(
            f"migration {step.up_revision_id} leaves {len(broken)} rows with a broken foreign "
            f"key (table, rowid, parent, fk): {[tuple(row) for row in broken[:5]]}"
        )


def context_options(dialect_name: str) -> dict[str, Any]:
    """Arguments of ``EnvironmentContext.configure``, for ``env.py`` and :func:`schema_diff`."""
    sqlite = dialect_name == "sqlite"
    return {
        "target_metadata": Base.metadata,
        "compare_type": True,
        "render_as_batch": sqlite,
        "transaction_per_migration": True,
        "render_item": _render_item,
        "on_version_apply": [_check_foreign_keys] if sqlite else [],
    }


# --- engines and connections ---------------------------------------------------------------------


def migration_engine(url: str | URL) -> AsyncEngine:
    """An engine for running migrations against ``url`` (see the module docstring)."""
    parsed = make_url(url)
    engine = create_async_engine(parsed, poolclass=pool.NullPool)
    if parsed.get_backend_name() == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _driver_autocommit(dbapi_connection: Any, _record: Any) -> None:
            # sqlite3 must not issue BEGIN itself (it skips it before DDL); _begin() below does.
            dbapi_connection.isolation_level = None

        install_sqlite_pragmas(engine, _SQLITE_MIGRATION_PRAGMAS)

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def _with_lock(connection: AsyncConnection, fn: Callable[[Connection], Any]) -> Any:
    """Run ``fn`` on the sync side of ``connection``, under the migration lock on PostgreSQL."""
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        await connection.execute(
            text("SELECT pg_advisory_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
        )
        # Leave no transaction open: Alembic must begin its own, one per revision.
        await connection.commit()
    try:
        result = await connection.run_sync(fn)
        await connection.commit()
        return result
    finally:
        if postgres:
            try:
                await connection.rollback()
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
                await connection.commit()
            except Exception:
                # Closing the server session releases the lock too; never pool it locked.
                await connection.invalidate()


async def run_alembic(engine: AsyncEngine, fn: Callable[[Config], None]) -> None:
    """Call ``fn(config)`` (e.g. an ``alembic.command``) on a migration connection to ``engine``.

    The connection is in ``config.attributes["connection"]``, where ``env.py`` picks it up.
    """

    def invoke(sync_connection: Connection) -> None:
        fn(alembic_config(sync_connection))

    own_engine = engine.dialect.name == "sqlite" and sqlite_file(engine.url) is not None
    target = migration_engine(engine.url) if own_engine else engine
    try:
        async with target.connect() as connection:
            await _with_lock(connection, invoke)
    finally:
        if own_engine:
            await target.dispose()


# --- public API ----------------------------------------------------------------------------------


@functools.cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_in_files(directory: Path | None = None) -> str | None:
    """The newest revision, read from the revision files without Alembic: the one revision
    that no other names as its ``down_revision``. ``None`` when the files do not say it
    plainly (a merge, a branch, a value that is not a literal): then ask Alembic."""
    revisions: set[str] = set()
    parents: set[str] = set()
    versions = (directory or MIGRATIONS_DIR) / "versions"
    for path in versions.glob("*.py"):
        values: dict[str, Any] = {}
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            return None
        for node in tree.body:
            target: ast.expr | None = None
            if isinstance(node, ast.AnnAssign):
                target = node.target
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            value = getattr(node, "value", None)
            if isinstance(target, ast.Name) and value is not None:
                try:
                    values[target.id] = ast.literal_eval(value)
                except ValueError:
                    values[target.id] = ...
        revision, down = values.get("revision"), values.get("down_revision")
        if not isinstance(revision, str) or not (down is None or isinstance(down, str)):
            return None
        if values.get("branch_labels") is not None or values.get("depends_on") is not None:
            return None
        revisions.add(revision)
        if down is not None:
            parents.add(down)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _script().get_current_head()
    if head is None:
        raise RuntimeError(f"no migration found in {MIGRATIONS_DIR}")
    return head


def known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _script().walk_revisions())


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (the newest by default), one transaction each."""
    from alembic import command

    await run_alembic(engine, lambda config: command.upgrade(config, revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Downgrade the database to ``revision`` (``"base"`` drops everything)."""
    from alembic import command

    await run_alembic(engine, lambda config: command.downgrade(config, revision))


def _recorded_heads(sync: Connection) -> tuple[str, ...]:
    """``alembic_version``'s rows, read as Alembic does (no table: no revision)."""
    if not inspect(sync).has_table("alembic_version"):
        return ()
    rows = sync.execute(text("SELECT version_num FROM alembic_version"))
    return tuple(str(row[0]) for row in rows)


async def current_heads(engine: AsyncEngine) -> tuple[str, ...]:
    """The revisions recorded in ``alembic_version`` (empty on an empty database)."""
    async with engine.connect() as connection:
        return await connection.run_sync(_recorded_heads)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision of the database, ``None`` when it has none yet."""
    heads = await current_heads(engine)
    if len(heads) > 1:
        raise SchemaMismatch(f"the database has several schema revisions: {', '.join(heads)}")
    return heads[0] if heads else None


async def schema_diff(engine: AsyncEngine) -> list[Any]:
    """What ``alembic check`` would report: the models compared with the database (``[]``)."""

    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    def diff(sync: Connection) -> list[Any]:
        context = MigrationContext.configure(sync, opts=context_options(sync.dialect.name))
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        return await connection.run_sync(diff)


async def _table_names(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: inspect(sync).get_table_names())


def _revs(heads: Iterable[str]) -> str:
    return ", ".join(heads)


async def ensure_schema(engine: AsyncEngine, *, auto_upgrade: bool) -> None:
    """Make sure the database schema is this code's; raise :class:`SchemaMismatch` if not.

    With ``auto_upgrade`` (the embedded SQLite) an empty or older database is upgraded here.
    A database newer than this code is never touched.
    """
    heads = await current_heads(engine)
    if len(heads) == 1 and heads[0] == head_in_files():
        return  # the usual start-up: no Alembic
    head = head_revision()
    if heads == (head,):
        return
    unknown = [rev for rev in heads if rev not in known_revisions()]
    if unknown:
        raise SchemaMismatch(
            f"the database schema (rev {_revs(heads)}) is newer than this code (rev {head}); "
            "upgrade tinbao"
        )
    if len(heads) > 1:
        raise SchemaMismatch(
            f"the database has several schema revisions ({_revs(heads)}); run `tinbao migrate`"
        )
    if not heads:
        ours = sorted(set(await _table_names(engine)) & set(Base.metadata.tables))
        if ours:
            raise SchemaMismatch(
                f"the database has tinbao tables ({', '.join(ours)}) but no schema revision: "
                "it was not created by `tinbao migrate`; restore a backup or start from an "
                "empty database"
            )
    if auto_upgrade:
        await upgrade(engine)
        heads = await current_heads(engine)
        if heads != (head,):  # pragma: no cover - upgrade() raises first
            raise SchemaMismatch(f"upgrade left the database at rev {_revs(heads) or 'none'}")
        return
    if not heads:
        raise SchemaMismatch(
            f"the database is empty (no schema); run `tinbao migrate` to create it (rev {head})"
        )
    raise SchemaMismatch(
        f"the database schema (rev {_revs(heads)}) is older than this code (rev {head}); "
        "run `tinbao migrate`"
    )
