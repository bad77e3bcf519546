"""Authentication of data-plane requests: who the caller is.

A caller signs with SigV4 (the sagemaker-mlflow plugin), sends HTTP Basic with an access key id
and secret (MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD), or holds a browser's MLflow UI
session, a cookie bound to one server and taken for writes only from the UI's own origin.
``open_ui_session`` exchanges a presigned URL's one-time token for that cookie. A request
that fails authentication gets the ``unauthenticated`` answer and goes no further.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from mlfleet.auth.credentials import AuthenticationError, Credentials, basic_key_id
from mlfleet.auth.identity import Principal
from mlfleet.auth.sigv4 import claimed_credential
from mlfleet.auth.ui_sessions import COOKIE_NAME, UiSessions
from mlfleet.gateway.errors import mlflow_error
from mlfleet.gateway.forwarding import BUFFER_LIMIT
from mlfleet.gateway.routing import ServerRecord
from mlfleet.protocol.errors import AwsError
from mlfleet.settings import Settings

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass(frozen=True)
class CallerKey:
    """The access key a request was authenticated with (to sign on the caller's behalf)."""

    key_id: str
    secret: str
    session_token: str | None


class Authentication:
    def __init__(self, settings: Settings, credentials: Credentials, ui_sessions: UiSessions):
        self._settings = settings
        self._credentials = credentials
        self._ui = ui_sessions

    async def authenticate(
        self, request: web.Request, server_id: str, signing_service: str = "sagemaker-mlflow"
    ) -> tuple[Principal, bytes | None, str | None]:
        """Return the caller, the body if it was read, and the SigV4 payload hash to enforce
        (signed for ``signing_service``); raise AuthenticationError or AwsError."""
        header = request.headers.get("Authorization", "")
        if header.startswith("AWS4-HMAC-SHA256"):
            length = request.content_length or 0
            claimed = request.headers.get("x-amz-content-sha256")
            # A large body with a signed hash is streamed and checked on the way; others are
            # read here and verified whole.
            streamed = length > BUFFER_LIMIT and bool(claimed) and claimed != "UNSIGNED-PAYLOAD"
            body = None if streamed else await request.read()
            payload_hash = claimed if streamed else None
            principal = self._credentials.verify_sigv4(
                request,
                body,
                service=signing_service,
                payload_hash=payload_hash,
            )
            return principal, body, payload_hash
        if header.startswith("Basic "):
            return self._credentials.verify_basic(header), None, None
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie:
            session = self._ui.lookup(cookie)
            if session is not None and session.server_id == server_id:
                self._check_origin(request)
                return session.principal, None, None
            raise AuthenticationError(
                "Your MLflow UI session has expired: open the UI again through "
                "CreatePresignedMlflowTrackingServerUrl."
            )
        raise AuthenticationError(
            "Authentication required: sign requests with SigV4 (sagemaker-mlflow plugin), use "
            "HTTP Basic with an access key id and secret (MLFLOW_TRACKING_USERNAME/PASSWORD), "
            "or open the UI through a presigned URL."
        )

    def caller_key(self, request: web.Request) -> CallerKey | None:
        """The key of a request ``authenticate`` accepted with SigV4 or HTTP Basic; None for
        a UI session."""
        header = request.headers.get("Authorization", "")
        if header.startswith("AWS4-HMAC-SHA256"):
            claimed = claimed_credential(header)
            key_id = claimed.access_key_id if claimed else ""
            token = request.headers.get("x-amz-security-token")
        elif header.startswith("Basic "):
            key_id = basic_key_id(header)
            token = None
        else:
            return None
        record = self._credentials.lookup(key_id)
        return CallerKey(key_id, record.secret, token) if record else None

    def _check_origin(self, request: web.Request) -> None:
        # Cookie-authenticated writes must come from the UI itself, not from another site.
        origin = request.headers.get("Origin")
        if request.method in SAFE_METHODS or origin is None:
            return
        if origin not in (f"{request.scheme}://{request.host}", self._settings.endpoint_url):
            raise AuthenticationError(f"Cross-origin request from {origin} refused.", 403)

    async def open_ui_session(
        self, request: web.Request, name: str, server: ServerRecord | None
    ) -> web.StreamResponse:
        """Redeem ``/mlflow/<name>/auth?authToken=...``: the UI, with a session cookie."""
        token = request.query.get("authToken", "")
        redeemed = self._ui.redeem(server.id, token) if server and token else None
        if redeemed is None:
            return web.Response(
                status=403,
                text="This sign-in link is invalid, expired or already used. Ask for a new one "
                "with CreatePresignedMlflowTrackingServerUrl.\n",
            )
        cookie, lifetime = redeemed
        response = web.HTTPFound(f"/mlflow/{name}/")
        response.set_cookie(
            COOKIE_NAME,
            cookie,
            max_age=lifetime,
            path=f"/mlflow/{name}/",
            httponly=True,
            samesite="Lax",
            secure=request.secure,
        )
        return response


def unauthenticated(exc: AuthenticationError | AwsError) -> web.Response:
    """The answer to a request whose caller could not be authenticated."""
    if isinstance(exc, AuthenticationError):
        response = mlflow_error(
            exc.status,
            "UNAUTHENTICATED" if exc.status == 401 else "PERMISSION_DENIED",
            str(exc),
        )
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="mlfleet"'
        return response
    return mlflow_error(exc.status, "UNAUTHENTICATED", f"{exc.code}: {exc.message}")
