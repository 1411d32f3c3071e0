"""Delivery: what is known of an officers' chat, and room for a tipster's queued answer.

Revision ID: 0014
Revises: 0013

``chat_marks`` holds, per officers' chat, the highest message id the Bot API gave back for the
bot's own messages there, and the outbox row whose send timed out and may have landed
(:mod:`bot.delivery.landing`): before that row is sent again, the messages above the mark are
probed and the one that landed is adopted, so a card is never posted twice. Officers' groups
only; a tipster's chat is never a key here.

``outbox.destination`` grows to 96 characters: a direct answer that could not be sent at once
waits in the outbox under ``answer:<keyed sender hash>`` (64 hex digits), never a chat id.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_marks",
        sa.Column("chat_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_message_id", sa.BigInteger(), nullable=False),
        sa.Column("unsure_row_id", sa.BigInteger(), nullable=True),
        sa.Column("unsure_after", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("chat_id", name=op.f("pk_chat_marks")),
    )
    # PostgreSQL widens in place; SQLite (which never enforces the length) copies the table.
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column(
            "destination",
            existing_type=sa.String(length=64),
            type_=sa.String(length=96),
            existing_nullable=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column(
            "destination",
            existing_type=sa.String(length=96),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
    op.drop_table("chat_marks")
