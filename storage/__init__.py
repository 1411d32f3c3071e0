"""Persistence of tinbao: models, engine, migrations.

Public API::

    engine = create_engine(settings.effective_database_url)
    await ensure_schema(engine, auto_upgrade=settings.is_embedded_db)
    sessions = create_session_factory(engine)

The migration names come from :mod:`storage.migrate` on first use (``storage.ensure_schema``
imports it then): importing ``storage`` does not import it.
"""

from typing import TYPE_CHECKING, Any

from storage.db import check_database, create_engine, create_session_factory
from storage.models import Base

if TYPE_CHECKING:
    from storage.migrate import (
        SchemaMismatch,
        current_revision,
        ensure_schema,
        head_revision,
        upgrade,
    )

_FROM_MIGRATE = frozenset(
    {"SchemaMismatch", "current_revision", "ensure_schema", "head_revision", "upgrade"}
)


def __getattr__(name: str) -> Any:
    if name in _FROM_MIGRATE:
        from storage import migrate

        return getattr(migrate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Base",
    "SchemaMismatch",
    "check_database",
    "create_engine",
    "create_session_factory",
    "current_revision",
    "ensure_schema",
    "head_revision",
    "upgrade",
]
