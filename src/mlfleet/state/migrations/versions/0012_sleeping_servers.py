"""a tracking server that sleeps: no process until its next request

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    with op.batch_alter_table("tracking_servers") as batch:
        batch.add_column(
            sa.Column("asleep", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("tracking_servers") as batch:
        batch.drop_column("asleep")
