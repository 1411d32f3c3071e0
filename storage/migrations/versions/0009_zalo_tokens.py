"""Zalo: the OA's rotating OAuth tokens, and an inbox for Zalo updates.

Revision ID: 0009
Revises: 0006

``zalo_tokens`` holds the Zalo Official Account's access and refresh tokens, encrypted (the
refresh token is single-use and rotates, so it must survive a restart). ``zalo_inbox`` holds each
Zalo update, encrypted, from the moment it arrives until it is handled: Zalo's ``getUpdates``
hands an update out once with no offset to confirm, and the OA webhook must answer within a
second, so an update is written down before anything else is done with it. The unique
``(channel, msg_key)`` recognises a redelivery.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None

BIGINT_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "zalo_tokens",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("tokens", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_zalo_tokens")),
    )
    op.create_table(
        "zalo_inbox",
        sa.Column("id", BIGINT_KEY, autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("msg_key", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_zalo_inbox")),
        sa.UniqueConstraint("channel", "msg_key", name=op.f("uq_zalo_inbox_channel")),
    )
    op.create_index("ix_zalo_inbox_received_at", "zalo_inbox", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_zalo_inbox_received_at", table_name="zalo_inbox")
    op.drop_table("zalo_inbox")
    op.drop_table("zalo_tokens")
