"""Rewards: proposal, four-eyes decision, one-time claim code, payout.

Revision ID: 0004
Revises: 0003

- ``rewards``: amount in whole VND, reason, status (proposed, approved, rejected, paid), who
  proposed, decided and paid, when, why; the keyed hash of the claim code (never the code);
  the payout reference.
- A partial unique index keeps at most one active (not rejected) reward per report.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BIGINT_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rewards",
        sa.Column("id", BIGINT_KEY, autoincrement=True, nullable=False),
        sa.Column("report_id", BIGINT_KEY, nullable=False),
        sa.Column("amount_vnd", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("proposed_by_id", BIGINT_KEY, nullable=True),
        sa.Column("proposed_at", TIMESTAMP, nullable=False),
        sa.Column("decided_by_id", BIGINT_KEY, nullable=True),
        sa.Column("decided_at", TIMESTAMP, nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("claim_hash", sa.String(length=64), nullable=True),
        sa.Column("paid_by_id", BIGINT_KEY, nullable=True),
        sa.Column("paid_at", TIMESTAMP, nullable=True),
        sa.Column("payout_reference", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["decided_by_id"], ["officers.id"], name=op.f("fk_rewards_decided_by_id_officers")
        ),
        sa.ForeignKeyConstraint(
            ["paid_by_id"], ["officers.id"], name=op.f("fk_rewards_paid_by_id_officers")
        ),
        sa.ForeignKeyConstraint(
            ["proposed_by_id"], ["officers.id"], name=op.f("fk_rewards_proposed_by_id_officers")
        ),
        sa.ForeignKeyConstraint(
            ["report_id"],
            ["reports.id"],
            name=op.f("fk_rewards_report_id_reports"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rewards")),
        sa.UniqueConstraint("claim_hash", name=op.f("uq_rewards_claim_hash")),
    )
    op.create_index(
        "uq_rewards_active_report",
        "rewards",
        ["report_id"],
        unique=True,
        postgresql_where=sa.text("status <> 'rejected'"),
        sqlite_where=sa.text("status <> 'rejected'"),
    )


def downgrade() -> None:
    op.drop_index("uq_rewards_active_report", table_name="rewards")
    op.drop_table("rewards")
