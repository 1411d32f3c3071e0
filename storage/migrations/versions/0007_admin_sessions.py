"""A session generation per panel account.

Revision ID: 0007
Revises: 0006

Every panel session cookie carries the account's generation at sign-in and is refused once
``officers.session_generation`` has moved on: signing out, "sign out everywhere", a new password
and revocation bump it, so a copied cookie stops working everywhere at once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("officers") as batch:
        batch.add_column(
            sa.Column("session_generation", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("officers") as batch:
        batch.drop_column("session_generation")
