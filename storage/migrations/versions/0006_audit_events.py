"""Audit events beyond reports: who enrolled or revoked whom, panel sign-ins.

Revision ID: 0006
Revises: 0005

``report_events`` audits what happens to a report; ``audit_events`` audits the registry and the
panel: actor (an officer), channel (chat, web, cli), action, subject (an officer) and details.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BIGINT_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", BIGINT_KEY, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", BIGINT_KEY, nullable=True),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("subject_id", BIGINT_KEY, nullable=True),
        sa.Column("data", JSON, nullable=True),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["officers.id"], name=op.f("fk_audit_events_actor_id_officers")
        ),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["officers.id"], name=op.f("fk_audit_events_subject_id_officers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_table("audit_events")
