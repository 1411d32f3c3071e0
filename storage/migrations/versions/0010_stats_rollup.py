"""Statistics: monthly rollups kept by triggers in the same transaction as each report change.

Revision ID: 0010
Revises: 0006

Three small tables hold counts by local calendar month (Vietnam's time, UTC+7):

* ``stats_received``: reports by the month they arrived (``created_at``), unit, queue, kind,
  category and status;
* ``stats_resolved``: resolved reports by the month they were resolved, unit, queue, kind,
  category, outcome and whether citizens took part in an arrest, with the subjects handled;
* ``stats_durations``: times to claim and to acknowledge (emergencies), by arrival month and the
  same dimensions, in fixed buckets of seconds (medians are read from these histograms).

Absent values are stored as ``''`` so that every key is unique. Triggers on ``reports`` add a
row's contribution on INSERT, take it away on DELETE, and move it on an UPDATE of a counted
column, so every writer (the chat, the panel, retention, a hand-written statement) keeps them
right, in its own transaction. The tables are filled from the existing reports on upgrade. The
statements live in :mod:`storage.stats_rollup` (shared with the rebuild); changing them later
needs a new migration that re-creates the triggers.

Commendations: ``rewards.commendation`` marks a reward that comes with a letter of commendation.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.stats_rollup_0010 import drop_trigger_statements, fill, trigger_statements

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _dims() -> list[sa.Column]:
    return [
        sa.Column("month", sa.Integer(), nullable=False),
        sa.Column("unit_code", sa.String(length=16), nullable=False),
        sa.Column("queue_key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
    ]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "stats_received",
        *_dims(),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "month", "unit_code", "queue_key", "kind", "category", "status",
            name=op.f("pk_stats_received"),
        ),
    )  # fmt: skip
    op.create_table(
        "stats_resolved",
        *_dims(),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("assisted", sa.Integer(), nullable=False),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.Column("subjects", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "month", "unit_code", "queue_key", "kind", "category", "outcome", "assisted",
            name=op.f("pk_stats_resolved"),
        ),
    )  # fmt: skip
    op.create_table(
        "stats_durations",
        *_dims(),
        sa.Column("measure", sa.String(length=8), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "month", "unit_code", "queue_key", "kind", "category", "measure", "bucket",
            name=op.f("pk_stats_durations"),
        ),
    )  # fmt: skip
    with op.batch_alter_table("rewards") as batch:
        batch.add_column(
            sa.Column("commendation", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # Fill from the reports already there, with the same expressions as the triggers.
    for statement in [*fill(dialect), *trigger_statements(dialect)]:
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in drop_trigger_statements(dialect):
        op.execute(statement)
    with op.batch_alter_table("rewards") as batch:
        batch.drop_column("commendation")
    op.drop_table("stats_durations")
    op.drop_table("stats_resolved")
    op.drop_table("stats_received")
