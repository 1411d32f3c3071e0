"""Statistics: daily rollups, and the zone the rollups count in.

Revision ID: 0013
Revises: 0012

* ``stats_received_daily`` and ``stats_resolved_daily``: the counts of ``stats_received`` and
  ``stats_resolved`` (without the duration histograms) by local day, ``day = yyyymmdd``; what
  the month-by-day chart reads.
* ``stats_rollup_state``: one row naming the zone the rollups count their days, months and
  years in. This migration builds in Vietnam's time (what 0012's triggers used); the service
  re-creates the triggers and rebuilds when ``TINBAO_TIMEZONE`` names another zone
  (:func:`admin.stats.maintenance.sync_zone`).

0012's triggers are replaced by :mod:`storage.stats_rollup`'s (which keep the daily tables as
well), and the daily tables are filled from the reports, in this transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.stats_rollup_0012 as old
from storage.stats_rollup import (
    DAILY_TABLES,
    DEFAULT_ZONE,
    DIMS,
    MEASURES,
    MONTHLY_TABLES,
    STATE_TABLE,
    drop_trigger_statements,
    fill,
    trigger_statements,
)

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in old.drop_trigger_statements(dialect):
        op.execute(statement)
    for table in DAILY_TABLES:
        op.create_table(
            table,
            sa.Column("day", sa.Integer(), nullable=False),
            sa.Column("unit_code", sa.String(length=16), nullable=False),
            sa.Column("queue_key", sa.String(length=64), nullable=False),
            sa.Column("kind", sa.String(length=16), nullable=False),
            sa.Column("category", sa.String(length=32), nullable=False),
            *(sa.Column(m, sa.Integer(), nullable=False) for m in MEASURES[table]),
            sa.PrimaryKeyConstraint("day", *DIMS, name=op.f(f"pk_{table}")),
        )
    state = op.create_table(
        STATE_TABLE,
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("zone", sa.String(length=64), nullable=False),
        sa.Column("minutes", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{STATE_TABLE}")),
    )
    op.bulk_insert(state, [{"id": 1, "zone": DEFAULT_ZONE.name, "minutes": DEFAULT_ZONE.minutes}])
    for statement in [
        *fill(dialect, DEFAULT_ZONE, DAILY_TABLES),
        *trigger_statements(dialect, DEFAULT_ZONE),
    ]:
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in drop_trigger_statements(dialect):
        op.execute(statement)
    op.drop_table(STATE_TABLE)
    for table in DAILY_TABLES:
        op.drop_table(table)
    # The monthly rows may have been rebuilt in another zone: back to 0012's (Vietnam's).
    for table in MONTHLY_TABLES:
        op.execute(f"DELETE FROM {table}")  # noqa: S608 (no input)
    for statement in [*old.fill(dialect), *old.trigger_statements(dialect)]:
        op.execute(statement)
