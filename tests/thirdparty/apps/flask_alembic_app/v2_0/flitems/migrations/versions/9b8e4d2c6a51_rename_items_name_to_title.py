"""2.0: rename items.name to items.title (forward-only)

Revision ID: 9b8e4d2c6a51
Revises: 3f2a9c1b7d10
"""

from alembic import op

revision = "9b8e4d2c6a51"
down_revision = "3f2a9c1b7d10"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.alter_column("name", new_column_name="title")


def downgrade() -> None:
    raise NotImplementedError("9b8e4d2c6a51 is forward-only: restore the pre-upgrade snapshot instead")
