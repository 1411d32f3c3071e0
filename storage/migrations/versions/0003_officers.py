"""Officers and triage: the registry, transfers, and the anonymous relay thread.

Revision ID: 0003
Revises: 0002

- ``officers``: display name, role (officer, commander, admin), Telegram user id, web username
  and password hash, active flag and revocation time, and who enrolled them.
- ``officer_scopes``: the queues (by key from the queue map, ``*`` for all) an officer serves.
- ``reports.queue_key``: the queue a report was transferred to, overriding its unit's queue.
- ``relay_messages``: the thread between officers and a tipster (text, media, location).
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

    with op.batch_alter_table("reports") as batch:
        batch.add_column(sa.Column("queue_key", sa.String(length=64), nullable=True))

    op.create_table(
        "relay_messages",
        sa.Column("id", BIGINT_KEY, autoincrement=True, nullable=False),
        sa.Column("report_id", BIGINT_KEY, nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("officer_id", BIGINT_KEY, nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("media_kind", sa.String(length=16), nullable=True),
        sa.Column("blob_id", BIGINT_KEY, nullable=True),
        sa.Column("file_ref", sa.String(length=256), nullable=True),
        sa.Column("latitude", sa.Double(), nullable=True),
        sa.Column("longitude", sa.Double(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["blob_id"], ["media_blobs.id"], name=op.f("fk_relay_messages_blob_id_media_blobs")
        ),
        sa.ForeignKeyConstraint(
            ["officer_id"], ["officers.id"], name=op.f("fk_relay_messages_officer_id_officers")
        ),
        sa.ForeignKeyConstraint(
            ["report_id"],
            ["reports.id"],
            name=op.f("fk_relay_messages_report_id_reports"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relay_messages")),
    )
    op.create_index("ix_relay_messages_report_at", "relay_messages", ["report_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_relay_messages_report_at", table_name="relay_messages")
    op.drop_table("relay_messages")
    with op.batch_alter_table("reports") as batch:
        batch.drop_column("queue_key")
    op.drop_index(op.f("ix_officer_scopes_queue_key"), table_name="officer_scopes")
    op.drop_table("officer_scopes")
    op.drop_table("officers")
