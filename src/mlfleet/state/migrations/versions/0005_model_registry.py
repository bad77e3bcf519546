"""model registry: model package groups and model packages

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "model_package_groups",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("arn", sa.String(length=2048), nullable=False),
        sa.Column("description", sa.String(length=1024), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("arn"),
    )
    op.create_table(
        "model_packages",
        sa.Column("arn", sa.String(length=2048), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("group_name", sa.String(length=63), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("description", sa.String(length=1024), nullable=True),
        sa.Column("approval_status", sa.String(length=32), nullable=True),
        sa.Column("approval_description", sa.String(length=1024), nullable=True),
        sa.Column("lifecycle", sa.JSON(), nullable=True),
        sa.Column("inference_specification", sa.JSON(), nullable=True),
        sa.Column("customer_metadata", sa.JSON(), nullable=True),
        sa.Column("source_uri", sa.String(length=1024), nullable=True),
        sa.Column("model_card", sa.JSON(), nullable=True),
        sa.Column("registration_type", sa.String(length=16), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.JSON(), nullable=False),
        sa.Column("last_modified_at", sa.Float(), nullable=False),
        sa.Column("last_modified_by", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("client_token", sa.String(length=36), nullable=True),
        sa.Column("request_digest", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["group_name"], ["model_package_groups.name"]),
        sa.PrimaryKeyConstraint("arn"),
        sa.UniqueConstraint("group_name", "version", name="uq_model_packages_group_version"),
        sa.UniqueConstraint("client_token", name="uq_model_packages_client_token"),
    )


def downgrade() -> None:
    for table in ("model_packages", "model_package_groups"):
        op.drop_table(table)
