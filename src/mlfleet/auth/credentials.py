"""Access keys: the admin identity created on first start, and lookups for every request."""

from __future__ import annotations

import base64
import hmac
import secrets
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.auth import sigv4
from mlfleet.auth.identity import Principal
from mlfleet.protocol.errors import AwsError
from mlfleet.settings import Settings
from mlfleet.state.models import AccessKey

_KEY_ALPHABET = string.ascii_uppercase + "234567"


def new_access_key_id() -> str:
    return "AKIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))


def new_secret_access_key() -> str:
    return base64.b64encode(secrets.token_bytes(30)).decode()


@dataclass(frozen=True)
class KeyRecord:
    secret: str
    principal: Principal


class AuthenticationError(Exception):
    """A data-plane credential was missing or wrong (answered 401/403, never forwarded)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class Credentials:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self._settings = settings
        self._sessions = sessions
        self._keys: dict[str, KeyRecord] = {}

    def bootstrap_admin(self) -> tuple[str, str] | None:
        """Create the admin user's key on first start; return (id, secret) when created."""
        with self._sessions.begin() as session:
            if session.scalars(select(AccessKey.access_key_id)).first() is not None:
                return None
            key_id, secret = new_access_key_id(), new_secret_access_key()
            session.add(
                AccessKey(
                    access_key_id=key_id,
                    secret_access_key=secret,
                    user_name="admin",
                    user_arn=f"arn:aws:iam::{self._settings.account_id}:user/admin",
                    user_id="AIDA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(17)),
                    status="Active",
                    created_at=time.time(),
                )
            )
        return key_id, secret

    def write_client_files(self, key_id: str, secret: str) -> tuple[Path, Path]:
        """Write ``credentials`` and ``config`` in the AWS CLI's formats, owner-readable only."""
        data_dir = self._settings.data_dir
        creds = data_dir / "credentials"
        config = data_dir / "config"
        for path, text in (
            (
                creds,
                f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n",
            ),
            (
                config,
                f"[default]\nregion = {self._settings.region}\n"
                f"endpoint_url = {self._settings.endpoint_url}\n",
            ),
        ):
            tmp = path.with_suffix(".tmp")
            tmp.touch(mode=0o600)
            tmp.write_text(text)
            tmp.replace(path)
        return creds, config

    def admin_key(self) -> tuple[str, str]:
        with self._sessions() as session:
            row = session.scalars(
                select(AccessKey)
                .where(AccessKey.user_name == "admin")
                .order_by(AccessKey.created_at)
            ).first()
            assert row is not None, "bootstrap_admin() runs before admin_key()"
            return row.access_key_id, row.secret_access_key

    def lookup(self, key_id: str) -> KeyRecord | None:
        record = self._keys.get(key_id)
        if record is not None:
            return record
        with self._sessions() as session:
            row = session.get(AccessKey, key_id)
            if row is None or row.status != "Active":
                return None
            record = KeyRecord(
                row.secret_access_key,
                Principal(row.user_arn, row.user_id, row.user_name, row.access_key_id),
            )
        self._keys[key_id] = record
        return record

    def verify_sigv4(
        self,
        *,
        method: str,
        raw_path_qs: str,
        headers: Mapping[str, str],
        body: bytes | None,
        service: str,
        payload_hash: str | None = None,
    ) -> Principal:
        info = sigv4.parse_authorization(headers)
        record = self.lookup(info.access_key_id)
        if record is None:
            raise AwsError(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
                403,
            )
        sigv4.verify(
            info,
            record.secret,
            method,
            raw_path_qs,
            headers,
            body,
            expected_service=service,
            expected_region=self._settings.region,
            payload_hash=payload_hash,
        )
        return record.principal

    def verify_basic(self, header: str) -> Principal:
        try:
            decoded = base64.b64decode(header.split(" ", 1)[1], validate=True).decode()
            key_id, secret = decoded.split(":", 1)
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise AuthenticationError("Malformed HTTP Basic credentials.") from exc
        record = self.lookup(key_id)
        if record is None or not hmac.compare_digest(record.secret, secret):
            raise AuthenticationError(
                "Invalid credentials: use an mlfleet access key id as user name and its secret "
                "access key as password."
            )
        return record.principal
