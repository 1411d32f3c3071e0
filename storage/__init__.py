"""Persistence of tinbao: models, engine, migrations.

Public API::

    engine = create_engine(settings.effective_database_url)
    await ensure_schema(engine, auto_upgrade=settings.is_embedded_db)
    sessions = create_session_factory(engine)
"""

from storage.db import check_database, create_engine, create_session_factory
from storage.migrate import (
    SchemaMismatch,
    current_revision,
    ensure_schema,
    head_revision,
    upgrade,
)
from storage.models import Base

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
