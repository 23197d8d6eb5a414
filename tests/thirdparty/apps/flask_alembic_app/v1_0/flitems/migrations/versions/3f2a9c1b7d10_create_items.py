"""1.0: create items

Revision ID: 3f2a9c1b7d10
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "3f2a9c1b7d10"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("items")
