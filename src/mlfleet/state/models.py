"""Control-plane tables. Schema changes go through Alembic (``migrations/``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class AccessKey(Base):
    __tablename__ = "access_keys"

    access_key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # SigV4 verification needs the secret itself, not a hash of it.
    secret_access_key: Mapped[str] = mapped_column(String(128))
    user_name: Mapped[str] = mapped_column(String(64))
    user_arn: Mapped[str] = mapped_column(String(2048))
    user_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="Active")
    created_at: Mapped[float] = mapped_column(Float)


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


class PresignedToken(Base):
    __tablename__ = "presigned_tokens"

    # Only a hash is kept: a leaked database must not yield usable UI links.
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    server_id: Mapped[str] = mapped_column(String(32), index=True)
    principal_arn: Mapped[str] = mapped_column(String(2048))
    expires_at: Mapped[float] = mapped_column(Float)
    session_seconds: Mapped[int] = mapped_column(Integer)
    used: Mapped[bool] = mapped_column(Boolean, default=False)


class UiSession(Base):
    __tablename__ = "ui_sessions"

    session_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    server_id: Mapped[str] = mapped_column(String(32), index=True)
    principal_arn: Mapped[str] = mapped_column(String(2048))
    expires_at: Mapped[float] = mapped_column(Float)
