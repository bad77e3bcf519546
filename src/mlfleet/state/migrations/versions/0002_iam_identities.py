"""IAM identities: users, groups, roles, policies; role-session keys; encrypted secrets

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

ADMINISTRATOR_ACCESS = "arn:aws:iam::aws:policy/AdministratorAccess"


def upgrade() -> None:
    op.create_table(
        "iam_users",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("arn", sa.String(length=2048), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("user_id"),
    )
    op.create_table(
        "iam_groups",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("group_id", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("arn", sa.String(length=2048), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("group_id"),
    )
    op.create_table(
        "iam_group_members",
        sa.Column("group_name", sa.String(length=128), nullable=False),
        sa.Column("user_name", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("group_name", "user_name"),
    )
    op.create_index("ix_iam_group_members_user_name", "iam_group_members", ["user_name"])
    op.create_table(
        "iam_roles",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role_id", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("arn", sa.String(length=2048), nullable=False),
        sa.Column("trust_policy", sa.Text(), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=True),
        sa.Column("max_session_duration", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("role_id"),
    )
    op.create_table(
        "iam_inline_policies",
        sa.Column("owner_kind", sa.String(length=8), nullable=False),
        sa.Column("owner_name", sa.String(length=128), nullable=False),
        sa.Column("policy_name", sa.String(length=128), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("owner_kind", "owner_name", "policy_name"),
    )
    op.create_table(
        "iam_managed_policies",
        sa.Column("arn", sa.String(length=2048), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("policy_id", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=True),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("arn"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("policy_id"),
    )
    op.create_table(
        "iam_attachments",
        sa.Column("owner_kind", sa.String(length=8), nullable=False),
        sa.Column("owner_name", sa.String(length=128), nullable=False),
        sa.Column("policy_arn", sa.String(length=2048), nullable=False),
        sa.PrimaryKeyConstraint("owner_kind", "owner_name", "policy_arn"),
    )
    op.create_index("ix_iam_attachments_policy_arn", "iam_attachments", ["policy_arn"])

    with op.batch_alter_table("access_keys") as batch_op:
        batch_op.alter_column(
            "secret_access_key", type_=sa.Text(), existing_type=sa.String(length=128)
        )
        batch_op.add_column(
            sa.Column("owner_kind", sa.String(length=8), nullable=False, server_default="user")
        )
        batch_op.add_column(sa.Column("session_token_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.Float(), nullable=True))
        batch_op.create_index("ix_access_keys_user_name", ["user_name"])
    # UI links and sessions act as the principal who asked for them: record its id too.
    for table in ("presigned_tokens", "ui_sessions"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(
                sa.Column("principal_id", sa.String(length=128), nullable=False, server_default="")
            )

    # Before IAM, a key's owner existed only on the key (the admin): give each owner a user
    # record, and the admin the administrator policy it implicitly had.
    conn = op.get_bind()
    owners = conn.execute(
        sa.text(
            "SELECT user_name, MIN(user_id), MIN(user_arn), MIN(created_at) "
            "FROM access_keys GROUP BY user_name"
        )
    ).all()
    for name, user_id, arn, created_at in owners:
        conn.execute(
            sa.text(
                "INSERT INTO iam_users (name, user_id, path, arn, created_at, tags) "
                "VALUES (:name, :user_id, '/', :arn, :created_at, '[]')"
            ),
            {"name": name, "user_id": user_id, "arn": arn, "created_at": created_at},
        )
        if name == "admin":
            conn.execute(
                sa.text(
                    "INSERT INTO iam_attachments (owner_kind, owner_name, policy_arn) "
                    "VALUES ('user', :name, :arn)"
                ),
                {"name": name, "arn": ADMINISTRATOR_ACCESS},
            )


def downgrade() -> None:
    for table in ("presigned_tokens", "ui_sessions"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("principal_id")
    with op.batch_alter_table("access_keys") as batch_op:
        batch_op.drop_index("ix_access_keys_user_name")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("session_token_hash")
        batch_op.drop_column("owner_kind")
    for table in (
        "iam_attachments",
        "iam_managed_policies",
        "iam_inline_policies",
        "iam_roles",
        "iam_group_members",
        "iam_groups",
        "iam_users",
    ):
        op.drop_table(table)
