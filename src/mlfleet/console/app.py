"""The web console at ``/console``: server-rendered pages over the same API boto3 uses.

Every action a page offers is an API operation run for the signed-in principal through
:meth:`mlfleet.api.endpoint.Endpoint.invoke`, so it is validated, authorized and audited exactly
as the same call from boto3 would be; a refusal is shown with AWS's own code and message.
Pages live in ``console/pages`` (one module per area), templates in ``console/templates``.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web
from multidict import MultiDictProxy

from mlfleet.api.endpoint import Endpoint
from mlfleet.auth.credentials import Credentials
from mlfleet.auth.sigv4 import claimed_credential
from mlfleet.console.fields import field_errors
from mlfleet.console.sessions import COOKIE_NAME, ConsoleSessions, SignedIn
from mlfleet.protocol.errors import AwsError

log = logging.getLogger(__name__)

PREFIX = "/console"
_STATIC = Path(__file__).parent / "static"
_SIGN_IN_CSRF_COOKIE = "mlfleet_console_signin"
# No inline script or style anywhere, so the policy can forbid both.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_CONSOLE_AGENT = "mlfleet-console"


@dataclass
class Visit:
    """One request of a signed-in browser: what a page handler works with."""

    request: web.Request
    signed_in: SignedIn
    console: Console
    form: MultiDictProxy[str | bytes | bytearray | web.FileField] | None = None

    @property
    def principal(self) -> Any:
        return self.signed_in.principal

    def call(self, service: str, operation: str, params: Mapping[str, Any] | None = None) -> Any:
        """Run an API operation as the signed-in principal; raises the AwsError boto3 would."""
        return self.console.services[service].invoke(
            self.signed_in.principal,
            operation,
            dict(params or {}),
            source_ip=self.request.remote,
            user_agent=f"{_CONSOLE_AGENT} ({self.request.headers.get('User-Agent', '')})",
            secure_transport=self.request.secure,
        )

    def field(self, name: str, default: str = "") -> str:
        value = self.form.get(name) if self.form is not None else None
        return value.strip() if isinstance(value, str) else default

    def render(self, template: str, status: int = 200, **context: Any) -> web.Response:
        flashes = self.console.take_flashes(self.signed_in.session_hash)
        return self.console.render(
            template,
            status=status,
            signed_in=self.signed_in,
            flashes=flashes,
            path=self.request.path,
            **context,
        )

    def flash(self, message: str, kind: str = "info") -> None:
        self.console.flashes.setdefault(self.signed_in.session_hash, []).append((kind, message))

    def refused(self, error: AwsError) -> None:
        self.flash(f"{error.code}: {error.message}", "error")

    def back(self, path: str, message: str | None = None) -> web.HTTPSeeOther:
        if message:
            self.flash(message, "success")
        return web.HTTPSeeOther(path)


Page = Callable[[Visit], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class PageRoute:
    method: str
    path: str
    handler: Page


@dataclass
class Console:
    sessions: ConsoleSessions
    credentials: Credentials
    services: Mapping[str, Endpoint]
    # Whatever pages need beyond the API (tracking-server URLs, metrics, the event store …).
    context: Mapping[str, Any] = field(default_factory=dict)
    flashes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader("mlfleet.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.globals["prefix"] = PREFIX
        self._templates.filters["urlpart"] = lambda value: quote(str(value), safe="")
        self._templates.globals["field_errors"] = field_errors

    def render(self, template: str, status: int = 200, **context: Any) -> web.Response:
        body = self._templates.get_template(template).render(**context)
        return web.Response(text=body, status=status, content_type="text/html")

    def take_flashes(self, session_hash: str) -> list[tuple[str, str]]:
        return self.flashes.pop(session_hash, [])

    def build(self, pages: Sequence[PageRoute]) -> web.Application:
        app = web.Application(middlewares=[_security_headers])
        app.router.add_get("/sign-in", self._sign_in_form)
        app.router.add_post("/sign-in", self._sign_in)
        app.router.add_get("/sign-in/{token}", self._redeem_link)
        app.router.add_post("/links", self._create_link)
        app.router.add_post("/sign-out", self._signed(self._sign_out))
        app.router.add_get("", self._to_home)
        app.router.add_get("/", self._to_home)
        app.router.add_static("/static", _STATIC, append_version=True)
        for page in pages:
            app.router.add_route(page.method, page.path, self._signed(page.handler))
        return app

    def _signed(self, page: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Require a session; on a POST, also the session's CSRF token from the form."""

        async def handler(request: web.Request) -> web.StreamResponse:
            signed_in = self.sessions.current(request.cookies.get(COOKIE_NAME))
            if signed_in is None:
                if request.method != "GET":
                    raise web.HTTPUnauthorized(text="Signed out: sign in again.")
                raise web.HTTPSeeOther(f"{PREFIX}/sign-in?next={quote(request.path_qs)}")
            form = None
            if request.method == "POST":
                form = await request.post()
                token = form.get("csrf")
                if not _same_origin(request) or not signed_in.csrf_ok(
                    token if isinstance(token, str) else None
                ):
                    raise web.HTTPForbidden(
                        text="This form is stale or came from another site (CSRF check failed)."
                        " Reload the page and try again."
                    )
            return await page(Visit(request, signed_in, self, form))

        return handler

    async def _to_home(self, _request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther(f"{PREFIX}/servers")

    async def _sign_in_form(self, request: web.Request) -> web.StreamResponse:
        return self._sign_in_page(request, error=None, status=200)

    def _sign_in_page(self, request: web.Request, error: str | None, status: int) -> web.Response:
        # No session yet, so the form's CSRF token is a cookie it must match (double submit).
        token = secrets.token_urlsafe(32)
        response = self.render(
            "sign_in.html",
            status=status,
            csrf=token,
            error=error,
            next=_local_path(request.query.get("next")),
        )
        response.set_cookie(
            _SIGN_IN_CSRF_COOKIE,
            token,
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def _sign_in(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        expected = request.cookies.get(_SIGN_IN_CSRF_COOKIE, "")
        submitted = form.get("csrf")
        if (
            not _same_origin(request)
            or not expected
            or not isinstance(submitted, str)
            or not secrets.compare_digest(expected, submitted)
        ):
            raise web.HTTPForbidden(text="The sign-in form is stale (CSRF check failed).")
        key_id, secret, token = (
            str(form.get(name) or "").strip()
            for name in ("access_key_id", "secret_access_key", "session_token")
        )
        if not key_id or not secret:
            return self._sign_in_page(request, "Enter an access key ID and its secret.", 400)
        try:
            cookie = self.sessions.sign_in(key_id, secret, token or None)
        except AwsError:
            # One message for every failure: which part was wrong is not the browser's business.
            return self._sign_in_page(
                request, "Sign-in failed: unknown, inactive or expired key, or wrong secret.", 401
            )
        return self._signed_in(request, cookie, _local_path(str(form.get("next") or "")))

    async def _redeem_link(self, request: web.Request) -> web.StreamResponse:
        cookie = self.sessions.redeem_link(request.match_info["token"])
        if cookie is None:
            return self._sign_in_page(
                request, "This sign-in link was already used or has expired.", 403
            )
        return self._signed_in(request, cookie, None)

    def _signed_in(self, request: web.Request, cookie: str, next_path: str | None) -> web.Response:
        response = web.HTTPSeeOther(next_path or f"{PREFIX}/servers")
        response.set_cookie(
            COOKIE_NAME,
            cookie,
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        response.del_cookie(_SIGN_IN_CSRF_COOKIE, path=PREFIX)
        return response

    async def _sign_out(self, visit: Visit) -> web.StreamResponse:
        self.sessions.sign_out(visit.signed_in)
        response = web.HTTPSeeOther(f"{PREFIX}/sign-in")
        response.del_cookie(COOKIE_NAME, path=PREFIX)
        return response

    async def _create_link(self, request: web.Request) -> web.StreamResponse:
        """``mlfleet console``: a SigV4-signed request gets a one-time link for its own key."""
        body = await request.read()
        claimed = claimed_credential(request.headers.get("Authorization", ""))
        try:
            principal = self.credentials.verify_sigv4(
                request,
                body,
                service="sagemaker",
                region=claimed.region if claimed else None,
            )
            token, expires_at = self.sessions.create_link(principal)
        except AwsError as exc:
            return web.Response(
                status=exc.status, body=exc.body(), content_type="application/x-amz-json-1.1"
            )
        return web.json_response(
            {"SignInUrl": f"{PREFIX}/sign-in/{token}", "ExpiresAt": expires_at}
        )


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(_SECURITY_HEADERS)
        raise
    except Exception:
        # A browser gets a short apology with a reference; the traceback goes to the log only.
        reference = uuid.uuid4().hex[:12]
        log.exception("console request %s (%s %s) failed", reference, request.method, request.path)
        response = web.Response(
            status=500,
            text=f"Something went wrong on the mlfleet side (reference {reference}). "
            "The daemon's log has the details.",
        )
    response.headers.update(_SECURITY_HEADERS)
    return response


def _same_origin(request: web.Request) -> bool:
    """A browser names the page a form came from; it must be this console's host."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


def _local_path(candidate: str | None) -> str | None:
    """Only console paths may be redirect targets after sign-in (no open redirect)."""
    if candidate and candidate.startswith(PREFIX + "/") and not candidate.startswith("//"):
        return candidate
    return None
