"""MLflow Apps: tracking servers of another kind, with an App's own members

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"


def upgrade() -> None:
    with op.batch_alter_table("tracking_servers") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="server")
        )
        batch.add_column(sa.Column("display_name", sa.String(length=256), nullable=True))
        batch.add_column(sa.Column("declared_store_uri", sa.String(length=1024), nullable=True))
        batch.add_column(sa.Column("kms_key_id", sa.String(length=2048), nullable=True))
        batch.add_column(
            sa.Column("account_default", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("default_domain_ids", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tracking_servers") as batch:
        for column in (
            "default_domain_ids",
            "account_default",
            "kms_key_id",
            "declared_store_uri",
            "display_name",
            "kind",
        ):
            batch.drop_column(column)
