"""Officers: the registry of who may act on reports, in chat and on the web.

Revision ID: 0003
Revises: 0002

- ``officers``: display name, role (officer, commander, admin), Telegram user id, web username
  and password hash, active flag and revocation time, and who enrolled them.
- ``officer_scopes``: the queues (by key from the queue map, ``*`` for all) an officer serves.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BIGINT_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "officers",
        sa.Column("id", BIGINT_KEY, autoincrement=True, nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("telegram_user_id", sa.BigInteger(), nullable=True),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("password_hash", sa.String(length=200), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.Column("created_by_id", BIGINT_KEY, nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["officers.id"], name=op.f("fk_officers_created_by_id_officers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_officers")),
        sa.UniqueConstraint("telegram_user_id", name=op.f("uq_officers_telegram_user_id")),
        sa.UniqueConstraint("username", name=op.f("uq_officers_username")),
    )
    op.create_table(
        "officer_scopes",
        sa.Column("id", BIGINT_KEY, autoincrement=True, nullable=False),
        sa.Column("officer_id", BIGINT_KEY, nullable=False),
        sa.Column("queue_key", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["officer_id"],
            ["officers.id"],
            name=op.f("fk_officer_scopes_officer_id_officers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_officer_scopes")),
        sa.UniqueConstraint("officer_id", "queue_key", name=op.f("uq_officer_scopes_officer_id")),
    )
    op.create_index(op.f("ix_officer_scopes_queue_key"), "officer_scopes", ["queue_key"])


def downgrade() -> None:
    op.drop_index(op.f("ix_officer_scopes_queue_key"), table_name="officer_scopes")
    op.drop_table("officer_scopes")
    op.drop_table("officers")
