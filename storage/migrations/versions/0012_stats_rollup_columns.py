"""Statistics: the rollups as one row per month and key, with the counts as columns.

Revision ID: 0011
Revises: 0010

Migration 0010 kept a row per status, per outcome and per duration bucket: about 190,000 rows
a year in the largest table, and a year's page took over a second at 1,000,000 reports on
PostgreSQL. Here the statuses, outcomes and duration buckets become columns of two tables
(``stats_received`` by arrival month, ``stats_resolved`` by resolution month; see
:mod:`storage.stats_rollup`), about 10,000 rows a year each whatever the number of reports.
The triggers are re-created and the tables filled from the reports, in this transaction.

Commendations: ``rewards.commendation`` (0010's flag, which nothing set yet) becomes the kind of
commendation decided with the reward, ``individual`` or ``collective`` (NULL: none), as the
notice counts them ("44 collectives and 336 individuals").
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.stats_rollup_0010 as old
from storage.stats_rollup_0012 import MEASURES, drop_trigger_statements, fill, trigger_statements

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _key() -> list[sa.Column]:
    return [
        sa.Column("month", sa.Integer(), nullable=False),
        sa.Column("unit_code", sa.String(length=16), nullable=False),
        sa.Column("queue_key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
    ]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in old.drop_trigger_statements(dialect):
        op.execute(statement)
    for table in ("stats_durations", "stats_resolved", "stats_received"):
        op.drop_table(table)
    for table, measures in MEASURES.items():
        op.create_table(
            table,
            *_key(),
            *(sa.Column(m, sa.Integer(), nullable=False) for m in measures),
            sa.PrimaryKeyConstraint(
                "month", "unit_code", "queue_key", "kind", "category", name=op.f(f"pk_{table}")
            ),
        )
    for statement in [*fill(dialect), *trigger_statements(dialect)]:
        op.execute(statement)
    with op.batch_alter_table("rewards") as batch:
        batch.drop_column("commendation")
    with op.batch_alter_table("rewards") as batch:
        batch.add_column(sa.Column("commendation", sa.String(length=16), nullable=True))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("rewards") as batch:
        batch.drop_column("commendation")
    with op.batch_alter_table("rewards") as batch:
        batch.add_column(
            sa.Column("commendation", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    for statement in drop_trigger_statements(dialect):
        op.execute(statement)
    op.drop_table("stats_resolved")
    op.drop_table("stats_received")
    op.create_table(
        "stats_received",
        *_key(),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "month", "unit_code", "queue_key", "kind", "category", "status",
            name=op.f("pk_stats_received"),
        ),
    )  # fmt: skip
    op.create_table(
        "stats_resolved",
        *_key(),
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
        *_key(),
        sa.Column("measure", sa.String(length=8), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "month", "unit_code", "queue_key", "kind", "category", "measure", "bucket",
            name=op.f("pk_stats_durations"),
        ),
    )  # fmt: skip
    for statement in [*old.fill(dialect), *old.trigger_statements(dialect)]:
        op.execute(statement)
