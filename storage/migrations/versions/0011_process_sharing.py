"""Several processes on one PostgreSQL: update arrivals and shared send slots.

Revision ID: 0011
Revises: 0010

``update_arrivals`` lists the updates a web process has seen and not yet handled, so that a
later update of the same chat waits for an earlier one handled by another process
(:mod:`bot.ordering`); ``chat`` is derived from the keyed sender hash, and each row goes when
its update is handled. ``send_slots`` holds the Telegram flood budgets every process shares
(:mod:`bot.delivery.shared_budget`): per budget key, the moment it is free again. Both tables
stay small and hold no content.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "update_arrivals",
        sa.Column("chat", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("update_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("arrived_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("chat", "channel", "update_id", name=op.f("pk_update_arrivals")),
    )
    op.create_index(
        op.f("ix_update_arrivals_arrived_at"), "update_arrivals", ["arrived_at"], unique=False
    )
    op.create_table(
        "send_slots",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("free_at", sa.Float(), nullable=False),
        sa.Column("stamped", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_send_slots")),
    )


def downgrade() -> None:
    op.drop_table("send_slots")
    op.drop_index(op.f("ix_update_arrivals_arrived_at"), table_name="update_arrivals")
    op.drop_table("update_arrivals")
