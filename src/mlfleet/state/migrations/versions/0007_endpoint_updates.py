"""endpoint updates: the config an endpoint is switching to

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("pending_config_name", sa.String(length=63), nullable=True))
        batch.add_column(sa.Column("pending_variants", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("pending_variants")
        batch.drop_column("pending_config_name")
