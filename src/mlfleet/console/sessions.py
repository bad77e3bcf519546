"""Who is signed in to the web console: one-time links, browser sessions, CSRF tokens.

A session acts with the access key it was opened with, looked up again on every request, so
deactivating or deleting the key (or the expiry of a role session's key) signs the browser out.
Only hashes of links and session cookies are stored: a leaked database opens no console.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.auth.credentials import Credentials
from mlfleet.auth.identity import Principal
from mlfleet.auth.ui_sessions import digest, new_token
from mlfleet.protocol.errors import AccessDeniedException, InvalidSignatureException
from mlfleet.state.models import ConsoleLink, ConsoleSession

COOKIE_NAME = "mlfleet_console"
SESSION_SECONDS = 12 * 3600
LINK_SECONDS = 300


@dataclass(frozen=True)
class SignedIn:
    session_hash: str
    principal: Principal
    csrf_token: str
    expires_at: float

    def csrf_ok(self, submitted: str | None) -> bool:
        return submitted is not None and hmac.compare_digest(self.csrf_token, submitted)


class ConsoleSessions:
    def __init__(self, sessions: sessionmaker[Session], credentials: Credentials) -> None:
        self._sessions = sessions
        self._credentials = credentials

    def sign_in(self, key_id: str, secret: str, session_token: str | None) -> str:
        """Check an access key pair; open a session and return its cookie value."""
        record = self._credentials.usable(key_id, session_token)
        if not hmac.compare_digest(record.secret, secret):
            raise InvalidSignatureException("The secret access key does not match.")
        return self._open(key_id, record.expires_at)

    def create_link(self, principal: Principal) -> tuple[str, float]:
        """A single-use sign-in token for `principal`'s key, and when it expires."""
        if principal.access_key_id is None:
            raise AccessDeniedException("Only an access key can be signed in.")
        token, token_hash = new_token()
        expires_at = time.time() + LINK_SECONDS
        with self._sessions.begin() as session:
            session.add(
                ConsoleLink(
                    token_hash=token_hash,
                    access_key_id=principal.access_key_id,
                    expires_at=expires_at,
                    used=False,
                )
            )
        return token, expires_at

    def redeem_link(self, token: str) -> str | None:
        """Spend a link; the new session's cookie value, or None if it was used or expired."""
        with self._sessions.begin() as session:
            # The conditional UPDATE keeps a link single-use even when opened twice at once.
            key_id = session.execute(
                update(ConsoleLink)
                .where(
                    ConsoleLink.token_hash == digest(token),
                    ConsoleLink.used.is_(False),
                    ConsoleLink.expires_at > time.time(),
                )
                .values(used=True)
                .returning(ConsoleLink.access_key_id)
            ).scalar()
        if key_id is None:
            return None
        record = self._credentials.lookup(key_id)
        if record is None:
            return None
        return self._open(key_id, record.expires_at)

    def current(self, cookie: str | None) -> SignedIn | None:
        if not cookie:
            return None
        key = digest(cookie)
        with self._sessions() as session:
            row = session.get(ConsoleSession, key)
            if row is None:
                return None
            key_id, csrf_token, expires_at = row.access_key_id, row.csrf_token, row.expires_at
        record = self._credentials.lookup(key_id)
        if record is None or expires_at <= time.time():
            return None
        return SignedIn(key, record.principal, csrf_token, expires_at)

    def sign_out(self, signed_in: SignedIn) -> None:
        with self._sessions.begin() as session:
            session.execute(
                delete(ConsoleSession).where(ConsoleSession.session_hash == signed_in.session_hash)
            )

    def _open(self, key_id: str, key_expires_at: float | None) -> str:
        now = time.time()
        expires_at = now + SESSION_SECONDS
        if key_expires_at is not None:
            expires_at = min(expires_at, key_expires_at)
        cookie, cookie_hash = new_token()
        with self._sessions.begin() as session:
            session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
            session.add(
                ConsoleSession(
                    session_hash=cookie_hash,
                    access_key_id=key_id,
                    csrf_token=secrets.token_urlsafe(32),
                    created_at=now,
                    expires_at=expires_at,
                )
            )
        return cookie
