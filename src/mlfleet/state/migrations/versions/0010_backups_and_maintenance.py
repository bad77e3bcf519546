"""tracking-server backups, what a restored server came from, and maintenance

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.create_table(
        "tracking_server_backups",
        sa.Column("id", sa.String(length=300), nullable=False),
        sa.Column("server_id", sa.String(length=32), nullable=False),
        sa.Column("server_name", sa.String(length=256), nullable=False),
        sa.Column("server_arn", sa.String(length=2048), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("mlflow_version", sa.String(length=16), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("artifact_count", sa.Integer(), nullable=False),
        sa.Column("artifact_bytes", sa.BigInteger(), nullable=False),
        sa.Column("metadata_bytes", sa.BigInteger(), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_tracking_server_backups_server_name", "tracking_server_backups", ["server_name"]
    )
    with op.batch_alter_table("tracking_servers") as batch:
        batch.add_column(sa.Column("restored_from", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("restore_report", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("secrets_key_of", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("maintenance_status", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("last_maintenance_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tracking_servers") as batch:
        batch.drop_column("last_maintenance_at")
        batch.drop_column("maintenance_status")
        batch.drop_column("secrets_key_of")
        batch.drop_column("restore_report")
        batch.drop_column("restored_from")
    op.drop_index("ix_tracking_server_backups_server_name", table_name="tracking_server_backups")
    op.drop_table("tracking_server_backups")
