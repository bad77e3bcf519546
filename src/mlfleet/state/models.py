"""Control-plane tables. Schema changes go through Alembic (``migrations/``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class AccessKey(Base):
    """A long-term key of an IAM user, or the temporary key of an assumed-role session."""

    __tablename__ = "access_keys"

    access_key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # SigV4 verification needs the secret itself, so it is kept encrypted, not hashed
    # (mlfleet.auth.secrets); a row written before encryption is encrypted at start-up.
    secret_access_key: Mapped[str] = mapped_column(Text)
    # "user" or "role": whose key it is. For a role session, user_name is the role's name,
    # user_arn the assumed-role ARN and user_id "<role id>:<session name>".
    owner_kind: Mapped[str] = mapped_column(String(8), default="user")
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    user_arn: Mapped[str] = mapped_column(String(2048))
    user_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="Active")
    created_at: Mapped[float] = mapped_column(Float)
    # Role sessions only: a hash of the session token, and when the credentials expire.
    session_token_hash: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[float | None] = mapped_column(Float)


class IamUser(Base):
    __tablename__ = "iam_users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), unique=True)
    path: Mapped[str] = mapped_column(String(512))
    arn: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[float] = mapped_column(Float)
    tags: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # The ARN of the managed policy that caps this user's permissions, if any.
    permissions_boundary: Mapped[str | None] = mapped_column(String(2048))


class IamGroup(Base):
    __tablename__ = "iam_groups"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(32), unique=True)
    path: Mapped[str] = mapped_column(String(512))
    arn: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[float] = mapped_column(Float)


class IamGroupMember(Base):
    __tablename__ = "iam_group_members"

    group_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class IamRole(Base):
    __tablename__ = "iam_roles"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role_id: Mapped[str] = mapped_column(String(32), unique=True)
    path: Mapped[str] = mapped_column(String(512))
    arn: Mapped[str] = mapped_column(String(2048))
    trust_policy: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(1000))
    max_session_duration: Mapped[int] = mapped_column(Integer, default=3600)
    created_at: Mapped[float] = mapped_column(Float)
    tags: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    permissions_boundary: Mapped[str | None] = mapped_column(String(2048))


class IamInlinePolicy(Base):
    """A policy embedded in one user, group or role (Put{User,Group,Role}Policy)."""

    __tablename__ = "iam_inline_policies"

    owner_kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    owner_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    policy_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    document: Mapped[str] = mapped_column(Text)


class IamManagedPolicy(Base):
    """A customer managed policy; AWS managed ones ship with mlfleet and are not stored."""

    __tablename__ = "iam_managed_policies"

    arn: Mapped[str] = mapped_column(String(2048), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    policy_id: Mapped[str] = mapped_column(String(32), unique=True)
    path: Mapped[str] = mapped_column(String(512))
    description: Mapped[str | None] = mapped_column(String(1000))
    document: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    tags: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class IamAttachment(Base):
    """A managed policy attached to a user, group or role."""

    __tablename__ = "iam_attachments"

    owner_kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    owner_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    policy_arn: Mapped[str] = mapped_column(String(2048), primary_key=True, index=True)


class TrackingServer(Base):
    __tablename__ = "tracking_servers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    arn: Mapped[str] = mapped_column(String(2048))
    artifact_store_uri: Mapped[str] = mapped_column(String(1024))
    size: Mapped[str] = mapped_column(String(16))
    mlflow_version: Mapped[str] = mapped_column(String(16))
    role_arn: Mapped[str] = mapped_column(String(2048))
    automatic_model_registration: Mapped[bool] = mapped_column(Boolean, default=False)
    weekly_maintenance_window_start: Mapped[str | None] = mapped_column(String(9))
    s3_bucket_owner_account_id: Mapped[str | None] = mapped_column(String(12))
    s3_bucket_owner_verification: Mapped[bool] = mapped_column(Boolean, default=True)
    tags: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(32))
    # What the reconciler drives towards: Running, Stopped or Deleted.
    desired_state: Mapped[str] = mapped_column(String(16))
    # Bumped on every accepted change so the reconciler can tell new work from work done.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    metadata_db_uri: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[dict[str, Any]] = mapped_column(JSON)
    last_modified_at: Mapped[float] = mapped_column(Float)
    last_modified_by: Mapped[dict[str, Any]] = mapped_column(JSON)
    # A server made by RestoreTrackingServerBackup: the backup (until its data is in place),
    # then what the restore found (artifacts copied, any missing from the backup).
    restored_from: Mapped[str | None] = mapped_column(String(300))
    restore_report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The server whose key encrypts this one's AI-gateway secrets when not its own: a restored
    # server's secrets were encrypted by the server backed up.
    secrets_key_of: Mapped[str | None] = mapped_column(String(32))
    # TrackingServerMaintenanceStatus: the last maintenance's (fleet.maintenance), and when it
    # started.
    maintenance_status: Mapped[str | None] = mapped_column(String(32))
    last_maintenance_at: Mapped[float | None] = mapped_column(Float)
    # While Updating to another MLflow release (fleet.reconciler): that release; mlflow_version
    # stays the old one until the new one serves. After a failed move (UpdateFailed, serving
    # again on mlflow_version): the release it failed to reach, until the next operation.
    upgrading_to: Mapped[str | None] = mapped_column(String(16))
    rolled_back_from: Mapped[str | None] = mapped_column(String(16))
    # Idle past its timeout (fleet.idle): no process runs until its next request wakes it; its
    # status stays what it was.
    asleep: Mapped[bool] = mapped_column(Boolean, default=False)
    # "server", or "app" for an MLflow App (apps): its ``name`` is then its id, the last part
    # of its ARN, and these hold what only an App has. ``declared_store_uri``: the
    # ArtifactStoreUri it was given, when ``artifact_store_uri`` is where its artifacts really
    # go (an s3:// store kept under the data dir when no S3 endpoint is configured).
    kind: Mapped[str] = mapped_column(String(16), default="server")
    display_name: Mapped[str | None] = mapped_column(String(256))
    declared_store_uri: Mapped[str | None] = mapped_column(String(1024))
    kms_key_id: Mapped[str | None] = mapped_column(String(2048))
    account_default: Mapped[bool] = mapped_column(Boolean, default=False)
    default_domain_ids: Mapped[list[str] | None] = mapped_column(JSON)


class TrackingServerBackup(Base):
    """A backup of a tracking server; its files are under ``<data-dir>/backups`` (backups)."""

    __tablename__ = "tracking_server_backups"

    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    server_id: Mapped[str] = mapped_column(String(32))
    # Kept when the server is deleted: its backups can still be listed and restored.
    server_name: Mapped[str] = mapped_column(String(256), index=True)
    server_arn: Mapped[str] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16))  # InProgress, Completed, Failed
    # Manual (asked for), or the daemon's: Daily, Maintenance, Upgrade (backups.schedule).
    origin: Mapped[str] = mapped_column(String(16), default="Manual", server_default="Manual")
    mlflow_version: Mapped[str] = mapped_column(String(16))
    # The server's settings at the backup (size, registration, store), for a restore.
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    artifact_count: Mapped[int] = mapped_column(Integer, default=0)
    artifact_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    metadata_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text)


class PresignedToken(Base):
    __tablename__ = "presigned_tokens"

    # Only a hash is kept: a leaked database must not yield usable UI links.
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    server_id: Mapped[str] = mapped_column(String(32), index=True)
    principal_arn: Mapped[str] = mapped_column(String(2048))
    principal_id: Mapped[str] = mapped_column(String(128), default="")
    expires_at: Mapped[float] = mapped_column(Float)
    session_seconds: Mapped[int] = mapped_column(Integer)
    used: Mapped[bool] = mapped_column(Boolean, default=False)


class UiSession(Base):
    __tablename__ = "ui_sessions"

    session_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    server_id: Mapped[str] = mapped_column(String(32), index=True)
    principal_arn: Mapped[str] = mapped_column(String(2048))
    principal_id: Mapped[str] = mapped_column(String(128), default="")
    expires_at: Mapped[float] = mapped_column(Float)


class AuditRecord(Base):
    """One CloudTrail record. Append-only: each row's hash chains it to the one before."""

    __tablename__ = "audit_records"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    event_time: Mapped[float] = mapped_column(Float, index=True)
    event_source: Mapped[str] = mapped_column(String(64))
    event_name: Mapped[str] = mapped_column(String(128), index=True)
    event_category: Mapped[str] = mapped_column(String(16))
    read_only: Mapped[bool] = mapped_column(Boolean)
    username: Mapped[str | None] = mapped_column(String(128), index=True)
    access_key_id: Mapped[str | None] = mapped_column(String(128), index=True)
    # The first resource's type and name, for LookupEvents' ResourceType / ResourceName.
    resource_type: Mapped[str | None] = mapped_column(String(128))
    resource_name: Mapped[str | None] = mapped_column(String(2048), index=True)
    # The record as CloudTrail delivers it (JSON), exactly the text that was hashed.
    document: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class EventRule(Base):
    """An EventBridge rule on an event bus (mlfleet has the bus "default")."""

    __tablename__ = "event_rules"

    bus: Mapped[str] = mapped_column(String(256), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1600))
    event_pattern: Mapped[str | None] = mapped_column(Text)
    schedule_expression: Mapped[str | None] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(512))
    role_arn: Mapped[str | None] = mapped_column(String(1600))
    created_by: Mapped[str] = mapped_column(String(128))
    tags: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class EventTarget(Base):
    """A target of a rule; ``spec`` is the Target structure as PutTargets received it."""

    __tablename__ = "event_targets"

    bus: Mapped[str] = mapped_column(String(256), primary_key=True)
    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    target_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1600))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)


class EventConnection(Base):
    """Credentials for HTTP targets; the auth parameters hold secrets, so they are sealed."""

    __tablename__ = "event_connections"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1600))
    authorization_type: Mapped[str] = mapped_column(String(32))
    # JSON of the AuthParameters, encrypted as access-key secrets are (mlfleet.auth.secrets).
    auth_parameters: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(512))
    state: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class ApiDestination(Base):
    """An HTTP endpoint that rules can target, called with a connection's credentials."""

    __tablename__ = "api_destinations"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1600))
    connection_arn: Mapped[str] = mapped_column(String(1600))
    invocation_endpoint: Mapped[str] = mapped_column(String(2048))
    http_method: Mapped[str] = mapped_column(String(8))
    rate_limit_per_second: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(512))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class EventDelivery(Base):
    """One event owed to one target: the outbox the delivery worker drains, in order per rule.

    Written in the transaction that accepts the event, so an acknowledged event survives any
    crash; ``state`` is pending, delivered or dead (in the dead-letter store).
    """

    __tablename__ = "event_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bus: Mapped[str] = mapped_column(String(256))
    rule: Mapped[str] = mapped_column(String(64), index=True)
    target_id: Mapped[str] = mapped_column(String(64))
    target_arn: Mapped[str] = mapped_column(String(1600))
    event_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[float | None] = mapped_column(Float)
    dead_letter_arn: Mapped[str | None] = mapped_column(String(1600))


class ModelPackageGroup(Base):
    """A model group of SageMaker's model registry: a named series of model package versions."""

    __tablename__ = "model_package_groups"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    # The ARN holds the name lowercased, as SageMaker writes it; being unique, it also keeps
    # names unique regardless of case (package ARNs could not tell "A" from "a").
    arn: Mapped[str] = mapped_column(String(2048), unique=True)
    description: Mapped[str | None] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16))
    # The last version number handed out: incrementing it locks the group's row, so concurrent
    # CreateModelPackage calls get 1, 2, 3, ... and a DeleteModelPackageGroup waits for them.
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[dict[str, Any]] = mapped_column(JSON)
    tags: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class ModelPackage(Base):
    """A model package: a version in a group (``version`` set) or an unversioned package."""

    __tablename__ = "model_packages"
    __table_args__ = (
        UniqueConstraint("group_name", "version", name="uq_model_packages_group_version"),
        UniqueConstraint("client_token", name="uq_model_packages_client_token"),
    )

    arn: Mapped[str] = mapped_column(String(2048), primary_key=True)
    # The group's name for a versioned package, the package's own name for an unversioned one.
    name: Mapped[str] = mapped_column(String(63))
    group_name: Mapped[str | None] = mapped_column(ForeignKey("model_package_groups.name"))
    version: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(1024))
    approval_status: Mapped[str | None] = mapped_column(String(32))
    approval_description: Mapped[str | None] = mapped_column(String(1024))
    lifecycle: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    inference_specification: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    customer_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON)
    source_uri: Mapped[str | None] = mapped_column(String(1024))
    model_card: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    registration_type: Mapped[str | None] = mapped_column(String(16))
    # The other members of CreateModelPackage (ModelMetrics, MetadataProperties, Domain, ...),
    # kept as given and shown back by DescribeModelPackage.
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[dict[str, Any]] = mapped_column(JSON)
    last_modified_at: Mapped[float] = mapped_column(Float)
    last_modified_by: Mapped[dict[str, Any]] = mapped_column(JSON)
    tags: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # CreateModelPackage's idempotency: the token and a digest of the request it came with.
    client_token: Mapped[str | None] = mapped_column(String(36))
    request_digest: Mapped[str | None] = mapped_column(String(64))


class SageMakerModel(Base):
    """A deployable model (CreateModel): an MLflow model URI on one tracking server."""

    __tablename__ = "sagemaker_models"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    arn: Mapped[str] = mapped_column(String(2048), unique=True)
    # The container as given, shown back by DescribeModel.
    primary_container: Mapped[dict[str, Any]] = mapped_column(JSON)
    execution_role_arn: Mapped[str | None] = mapped_column(String(2048))
    # What was resolved at CreateModel: "models:/<name>/<version>" and the server serving it.
    model_uri: Mapped[str] = mapped_column(String(1024))
    tracking_server_name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[float] = mapped_column(Float)
    tags: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class EndpointConfig(Base):
    __tablename__ = "endpoint_configs"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    arn: Mapped[str] = mapped_column(String(2048), unique=True)
    production_variants: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    tags: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class Endpoint(Base):
    """An endpoint and its desired state; the deployer makes its instances match it."""

    __tablename__ = "endpoints"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    arn: Mapped[str] = mapped_column(String(2048), unique=True)
    config_name: Mapped[str] = mapped_column(String(63))
    # The variants being served, resolved from the config and its models when the endpoint was
    # created: a config or model deleted afterwards does not take a running endpoint down.
    variants: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    last_modified_at: Mapped[float] = mapped_column(Float)
    tags: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # While Updating: the config being switched to and its resolved variants. They replace
    # config_name and variants once all their instances serve.
    pending_config_name: Mapped[str | None] = mapped_column(String(63))
    pending_variants: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)


class ConsoleLink(Base):
    """A one-time web-console sign-in link (``mlfleet console``); only its hash is kept."""

    __tablename__ = "console_links"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    access_key_id: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[float] = mapped_column(Float)
    used: Mapped[bool] = mapped_column(Boolean, default=False)


class ConsoleSession(Base):
    """A signed-in web-console browser. It acts with the access key it signed in with."""

    __tablename__ = "console_sessions"

    session_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    access_key_id: Mapped[str] = mapped_column(String(128), index=True)
    # Compared with every form's hidden field; kept in the clear because it is no credential.
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
