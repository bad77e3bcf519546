"""deployment: models, endpoint configs and endpoints

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "sagemaker_models",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("arn", sa.String(length=2048), nullable=False),
        sa.Column("primary_container", sa.JSON(), nullable=False),
        sa.Column("execution_role_arn", sa.String(length=2048), nullable=True),
        sa.Column("model_uri", sa.String(length=1024), nullable=False),
        sa.Column("tracking_server_name", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("arn"),
    )
    op.create_table(
        "endpoint_configs",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("arn", sa.String(length=2048), nullable=False),
        sa.Column("production_variants", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("arn"),
    )
    op.create_table(
        "endpoints",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("arn", sa.String(length=2048), nullable=False),
        sa.Column("config_name", sa.String(length=63), nullable=False),
        sa.Column("variants", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_modified_at", sa.Float(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("arn"),
    )


def downgrade() -> None:
    op.drop_table("endpoints")
    op.drop_table("endpoint_configs")
    op.drop_table("sagemaker_models")
