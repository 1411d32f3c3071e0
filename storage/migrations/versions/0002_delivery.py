"""Delivery: outbox priority, chat budget accounting and leases; where cards were posted.

Revision ID: 0002
Revises: 0001

- ``outbox.priority``: emergencies are delivered first.
- ``outbox.chat_key`` / ``outbox.message_count``: the chat a row was sent to and what it cost,
  so every worker process sees the same per-group flood budget (index on chat and time).
- ``outbox.claimed_until``: a worker's lease; a crashed worker's rows return to the queue.
- ``card_posts``: the chat and message id of every card and digest (one row per report listed),
  to edit them in place and to check that a press belongs to the report it names.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIGINT_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("chat_key", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("message_count", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("claimed_until", TIMESTAMP, nullable=True))
        batch.create_index("ix_outbox_chat_sent", ["chat_key", "sent_at"])
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("priority", server_default=None)
        batch.alter_column("message_count", server_default=None)

    op.create_table(
        "card_posts",
        sa.Column("id", BIGINT_KEY, autoincrement=True, nullable=False),
        sa.Column("report_id", BIGINT_KEY, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("thread_id", sa.BigInteger(), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["report_id"],
            ["reports.id"],
            name=op.f("fk_card_posts_report_id_reports"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_posts")),
        sa.UniqueConstraint(
            "chat_id", "message_id", "report_id", name=op.f("uq_card_posts_chat_id")
        ),
    )
    op.create_index(op.f("ix_card_posts_report_id"), "card_posts", ["report_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_card_posts_report_id"), table_name="card_posts")
    op.drop_table("card_posts")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_chat_sent")
        batch.drop_column("claimed_until")
        batch.drop_column("message_count")
        batch.drop_column("chat_key")
        batch.drop_column("priority")
