"""the MLflow release a tracking server is being moved to, or failed to reach; who took a backup

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    with op.batch_alter_table("tracking_servers") as batch:
        batch.add_column(sa.Column("upgrading_to", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("rolled_back_from", sa.String(length=16), nullable=True))
    with op.batch_alter_table("tracking_server_backups") as batch:
        batch.add_column(
            sa.Column("origin", sa.String(length=16), nullable=False, server_default="Manual")
        )


def downgrade() -> None:
    with op.batch_alter_table("tracking_server_backups") as batch:
        batch.drop_column("origin")
    with op.batch_alter_table("tracking_servers") as batch:
        batch.drop_column("rolled_back_from")
        batch.drop_column("upgrading_to")
