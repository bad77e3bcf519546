"""Access keys: the admin identity created on first start, and lookups for every request."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.auth import sigv4
from mlfleet.auth.identity import Principal
from mlfleet.auth.secrets import SecretBox, is_sealed
from mlfleet.protocol.errors import ExpiredTokenException, UnrecognizedClientException
from mlfleet.settings import Settings
from mlfleet.state.models import AccessKey, IamRole

if TYPE_CHECKING:
    from aiohttp import web

ADMIN_USER = "admin"
_INVALID_TOKEN = "The security token included in the request is invalid."


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    secret: str
    principal: Principal
    # Temporary (role-session) keys only: the hash of their session token, and their expiry.
    session_token_hash: str | None = None
    expires_at: float | None = None


class AuthenticationError(Exception):
    """A data-plane credential was missing or wrong (answered 401/403, never forwarded)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class Credentials:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], box: SecretBox) -> None:
        self._settings = settings
        self._sessions = sessions
        self._box = box
        self._keys: dict[str, KeyRecord] = {}

    def forget(self) -> None:
        """Drop cached keys: called on every IAM change (a key deactivated, a role deleted)."""
        self._keys.clear()

    def seal_plaintext_secrets(self) -> int:
        """Encrypt secrets stored before encryption at rest existed; return how many."""
        with self._sessions.begin() as session:
            rows = [
                row
                for row in session.scalars(select(AccessKey))
                if not is_sealed(row.secret_access_key)
            ]
            for row in rows:
                row.secret_access_key = self._box.seal(row.secret_access_key)
        return len(rows)

    def write_client_files(self, key_id: str, secret: str) -> tuple[Path, Path]:
        """Write ``credentials`` and ``config`` in the AWS CLI's formats, owner-readable only."""
        data_dir = self._settings.data_dir
        creds = data_dir / "credentials"
        config = data_dir / "config"
        # The AWS CLI and boto3 trust the CA of a certificate the daemon made through this line.
        own = self._settings.makes_own_certificate
        ca_bundle = f"ca_bundle = {self._settings.ca_file}\n" if own else ""
        for path, text in (
            (
                creds,
                f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n",
            ),
            (
                config,
                f"[default]\nregion = {self._settings.region}\n"
                f"endpoint_url = {self._settings.endpoint_url}\n{ca_bundle}",
            ),
        ):
            tmp = path.with_suffix(".tmp")
            tmp.touch(mode=0o600)
            tmp.write_text(text)
            tmp.replace(path)
        return creds, config

    def admin_key(self) -> tuple[str, str] | None:
        """The admin's first active key, if it still has one."""
        with self._sessions() as session:
            row = session.scalars(
                select(AccessKey)
                .where(AccessKey.user_name == ADMIN_USER, AccessKey.owner_kind == "user")
                .where(AccessKey.status == "Active")
                .order_by(AccessKey.created_at)
            ).first()
            if row is None:
                return None
            return row.access_key_id, self._box.open(row.secret_access_key)

    def lookup(self, key_id: str) -> KeyRecord | None:
        record = self._keys.get(key_id)
        if record is None:
            record = self._load(key_id)
            if record is None:
                return None
            self._keys[key_id] = record
        return record

    def _load(self, key_id: str) -> KeyRecord | None:
        with self._sessions() as session:
            row = session.get(AccessKey, key_id)
            if row is None or row.status != "Active":
                return None
            identity_arn = ""
            if row.owner_kind == "role":
                role = session.get(IamRole, row.user_name)
                if role is None:
                    return None
                identity_arn = role.arn
            return KeyRecord(
                self._box.open(row.secret_access_key),
                Principal(
                    row.user_arn,
                    row.user_id,
                    row.user_name,
                    row.access_key_id,
                    kind=row.owner_kind,
                    identity_arn=identity_arn,
                ),
                row.session_token_hash,
                row.expires_at,
            )

    def usable(self, key_id: str, token: str | None) -> KeyRecord:
        """The key's record if it is usable with this session token (AWS's checks and words)."""
        record = self.lookup(key_id)
        if record is None:
            raise UnrecognizedClientException(_INVALID_TOKEN)
        if record.session_token_hash is not None:
            if token is None or not hmac.compare_digest(
                record.session_token_hash, token_hash(token)
            ):
                raise UnrecognizedClientException(_INVALID_TOKEN)
            if record.expires_at is not None and record.expires_at <= time.time():
                raise ExpiredTokenException("The security token included in the request is expired")
        return record

    def verify_sigv4(
        self,
        request: web.Request,
        body: bytes | None,
        *,
        service: str,
        payload_hash: str | None = None,
        region: str | None = None,
    ) -> Principal:
        """Who signed `request` (its method, raw path and headers as sent) with `body`."""
        info = sigv4.parse_authorization(request.headers)
        return self._signer_of(
            info, request, request.raw_path, body, service, region, payload_hash=payload_hash
        )

    def verify_presigned(
        self, request: web.Request, *, service: str, region: str | None = None
    ) -> Principal:
        """Who presigned `request` (SigV4 in its query string; its payload is not signed)."""
        info, signed_target = sigv4.parse_query_authorization(request.query, request.raw_path)
        return self._signer_of(info, request, signed_target, None, service, region, presigned=True)

    def _signer_of(
        self,
        info: sigv4.SignedRequestInfo,
        request: web.Request,
        signed_target: str,
        body: bytes | None,
        service: str,
        region: str | None,
        *,
        payload_hash: str | None = None,
        presigned: bool = False,
    ) -> Principal:
        record = self.usable(info.access_key_id, info.security_token)
        sigv4.verify(
            info,
            sigv4.signing_key(record.secret, info.date, info.region, info.service),
            request.method,
            signed_target,
            request.headers,
            body,
            expected_service=service,
            expected_region=region or self._settings.region,
            payload_hash=payload_hash,
            presigned=presigned,
        )
        return record.principal

    def verify_basic(self, header: str) -> Principal:
        key_id, secret = _basic_pair(header)
        record = self.lookup(key_id)
        # Temporary credentials need their session token, which Basic cannot carry.
        if (
            record is None
            or record.session_token_hash is not None
            or not hmac.compare_digest(record.secret, secret)
        ):
            raise AuthenticationError(
                "Invalid credentials: use an mlfleet access key id as user name and its secret "
                "access key as password."
            )
        return record.principal


def _basic_pair(header: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(header.split(" ", 1)[1], validate=True).decode()
        key_id, secret = decoded.split(":", 1)
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise AuthenticationError("Malformed HTTP Basic credentials.") from exc
    return key_id, secret


def basic_key_id(header: str) -> str:
    """The access key id an HTTP Basic ``Authorization`` header names."""
    return _basic_pair(header)[0]
