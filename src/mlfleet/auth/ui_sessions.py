"""Browser sessions opened by presigned URLs: a single-use link becomes an HttpOnly cookie."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.auth.identity import Principal, principal_from_arn
from mlfleet.state.models import PresignedToken, UiSession

COOKIE_NAME = "mlfleet_session"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh secret and the hash under which it is stored."""
    token = secrets.token_urlsafe(32)
    return token, digest(token)


@dataclass(frozen=True)
class OpenSession:
    server_id: str
    principal: Principal
    expires_at: float


class UiSessions:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._cache: dict[str, OpenSession] = {}

    def redeem(self, server_id: str, token: str) -> tuple[str, int] | None:
        """Spend a presigned token; return (session cookie value, lifetime) or None if invalid."""
        now = time.time()
        with self._sessions.begin() as session:
            # The conditional UPDATE makes the link single-use even under concurrent clicks.
            spent = session.execute(
                update(PresignedToken)
                .where(
                    PresignedToken.token_hash == digest(token),
                    PresignedToken.server_id == server_id,
                    PresignedToken.used.is_(False),
                    PresignedToken.expires_at > now,
                )
                .values(used=True)
                .returning(
                    PresignedToken.principal_arn,
                    PresignedToken.principal_id,
                    PresignedToken.session_seconds,
                )
            ).first()
            if spent is None:
                return None
            principal_arn, principal_id, lifetime = spent
            cookie, cookie_hash = new_token()
            session.add(
                UiSession(
                    session_hash=cookie_hash,
                    server_id=server_id,
                    principal_arn=principal_arn,
                    principal_id=principal_id,
                    expires_at=now + lifetime,
                )
            )
        return cookie, int(lifetime)

    def lookup(self, cookie: str) -> OpenSession | None:
        key = digest(cookie)
        found = self._cache.get(key)
        if found is None:
            with self._sessions() as session:
                row = session.get(UiSession, key)
                if row is None:
                    return None
                found = OpenSession(
                    row.server_id,
                    principal_from_arn(row.principal_arn, row.principal_id),
                    row.expires_at,
                )
            self._cache[key] = found
        if found.expires_at <= time.time():
            self._cache.pop(key, None)
            return None
        return found
