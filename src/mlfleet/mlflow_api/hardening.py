"""Input checks the gateway makes before MLflow sees a request (spec mlflow-server.md section 8).

Most of MLflow's advisories are one class: a path or URI that a client supplies (an artifact
path, a model version's ``source``, an experiment's ``artifact_location``) and that leads the
server out of its artifact store, through ``..``, an encoding MLflow decodes once more than its
check did (``%252e%252e``), a backslash, an absolute path, or a scheme the server then reads
from (``file:``, ``http:``). Each MLflow release fixed the form reported; the gateway refuses
the whole class, as "what a gateway in front can block" (items 1 and 4) describes:

* artifact paths (in the URL of the artifact proxy, in ``path``-like query parameters, in the
  body of the presigned-URL calls): refused when any percent-decoding of them, repeated until
  nothing changes, holds ``..``, a backslash, NUL, ``#`` or ``?``, or is absolute; answered as
  MLflow answers a path its own check refuses (400 ``INVALID_PARAMETER_VALUE`` "Invalid path"),
  with the reason added where that check would have let the path through;
* ``experiments/create``: an ``artifact_location`` must lie in the server's own artifact store,
  as ``mlflow-artifacts:/<path>`` or under its ArtifactStoreUri (same scheme and bucket, a local
  folder's symbolic links followed), with no ``..`` in any decoding; anything else is refused;
* ``model-versions/create``: ``source`` must be ``runs:/``, ``models:/`` or ``mlflow-artifacts:``
  (what MLflow's clients send, see ``SOURCE_SCHEMES``) without traversal, or a prompt's
  placeholder;
* API request bodies are capped; artifact transfers (``/mlflow-artifacts/`` routes) are not,
  since they are streamed and never held whole;
* a request line or header line is read up to ``MAX_REQUEST_LINE`` bytes, as far beyond what
  MLflow's clients send as the gateway lets MLflow answer a long list itself; the workers read
  heads of ``MAX_REQUEST_HEAD``;
* identity headers a client sends never reach MLflow (``HeaderNames``).

All but ``screen``, which reads the body of the few JSON calls it inspects, and the check of a
local folder's ``artifact_location`` (which follows its symbolic links), are pure functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from urllib.parse import unquote, unquote_plus, urlsplit

from aiohttp import web

from mlfleet.mlflow_api.actions import api_relative, path_segments

INVALID = "INVALID_PARAMETER_VALUE"
# MLflow's answer to an artifact path its check (mlflow.utils.uri.validate_path_is_safe) refuses.
INVALID_PATH = "Invalid path"
TOO_LARGE = "RESOURCE_LIMIT_EXCEEDED"

# MLflow's GET routes take lists in the query string (get-history-bulk-interval's run_ids, which
# MLflow caps at 100 and answers more with INVALID_PARAMETER_VALUE itself): a list a few hundred
# ids long exceeds aiohttp's default of 8190 bytes, and MLflow, not the parser, should answer it.
# Bounded, since a head is held whole. Beyond it aiohttp refuses the request before mlfleet sees
# it (daemon.app).
MAX_REQUEST_LINE = 64 * 1024
# A whole request head (its line and headers) that a worker reads: the longest line with room
# for the headers that come with it.
MAX_REQUEST_HEAD = MAX_REQUEST_LINE + 32 * 1024

# A value still changing after this many decodings is refused: nobody encodes a path that often,
# and the bound keeps a long run of %25 from costing the gateway quadratic time.
MAX_DECODINGS = 8

# Query parameters that MLflow's handlers treat as paths under an artifact root (ListArtifacts,
# get-artifact, model-versions/get-artifact, upload-artifact, get-trace-artifact, logged-model
# artifacts). Checked on every route, so a route that a new MLflow adds is covered too.
ARTIFACT_PATH_PARAMETERS = frozenset(
    {"path", "artifact_path", "artifact_file_path", "artifact_directory_path"}
)

# What MLflow 3.17's clients send as a model version's source: mlflow.register_model and
# log_model(registered_model_name=...) send models:/<model id>; MlflowClient.create_model_version
# passes the caller's runs:/ or mlflow-artifacts:/ URI through; a registered model version
# as source is models:/<name>/<version>. A tracking server of mlfleet always serves its artifacts
# (its runs' artifact URIs are mlflow-artifacts:/...), so no client needs s3:// or file: here.
SOURCE_SCHEMES = frozenset({"runs", "models", "mlflow-artifacts"})
# The sources of prompt versions: MLflow itself refuses a prompt with any other source.
PROMPT_SOURCES = frozenset({"dummy-source", "prompt-template"})

_API_ROOTS = frozenset({"api", "ajax-api"})
# "/etc/passwd" is caught by its leading slash; these catch "C:", "file:///etc" and "s3://b/k".
_DRIVE_OR_URI = re.compile(r"[A-Za-z]:|[A-Za-z][A-Za-z0-9+.-]*:/")


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer in MLflow's error shape, given instead of forwarding the request."""

    status: int
    code: str
    message: str


# paths and URIs ------------------------------------------------------------------------------


def decodings(value: str) -> list[str] | None:
    """``value`` and each percent-decoding of it, until one changes nothing; None if none does.

    MLflow and the libraries under it decode a path once or more (CVE-2023-6831 hid ``..`` as
    ``%252e%252e``), so every form is checked, not only the one the gateway routes on.
    """
    forms = [value]
    for _ in range(MAX_DECODINGS):
        decoded = unquote(forms[-1])
        if decoded == forms[-1]:
            return forms
        forms.append(decoded)
    return None


def _traversal(form: str) -> str | None:
    if "\x00" in form:
        return "holds a NUL byte"
    if "\\" in form:
        return "holds a backslash"  # a separator to Windows and to some of MLflow's path code
    if "#" in form or "?" in form:
        return "holds a '#' or '?'"  # cut off by URI parsing: what is checked is not what is used
    if ".." in form.split("/"):
        return "holds a '..' segment"
    return None


def _too_encoded() -> str:
    return f"is still percent-encoded after {MAX_DECODINGS} decodings"


def uri_problem(value: str) -> str | None:
    """Why a path or URI could escape its directory once decoded, or None."""
    forms = decodings(value)
    if forms is None:
        return _too_encoded()
    for form in forms:
        problem = _traversal(form)
        if problem is not None:
            return problem
    return None


def _mlflow_refuses(decoded: str) -> bool:
    """Whether MLflow's own check refuses a path, given decoded until stable as MLflow decodes
    it: a '#', a '..' segment, or absolute, also as a file: URI or to Windows."""
    if "#" in decoded:
        return True
    if urlsplit(decoded).scheme.lower() == "file":
        decoded = urlsplit(decoded).path
    return (
        ".." in decoded.split("/")
        or PurePosixPath(decoded).is_absolute()
        or PureWindowsPath(decoded).is_absolute()
    )


def artifact_path_problem(path: str) -> str | None:
    """The message refusing a path meant to be relative to an artifact root, or None if it is
    safe: MLflow's own "Invalid path" where its check refuses the path too, so that a client
    reads what MLflow would answer; with the reason where only the gateway refuses it."""
    forms = decodings(path)
    if forms is None:
        return f"{INVALID_PATH}: the path {_too_encoded()}"
    if _mlflow_refuses(forms[-1]):
        return INVALID_PATH
    for form in forms:
        problem = _traversal(form)
        if problem is None and _DRIVE_OR_URI.match(form):
            problem = "is a drive or a URI, not a path relative to the artifact root"
        if problem is not None:
            return f"{INVALID_PATH}: the path {problem}"
    return None


def source_problem(source: object) -> str | None:
    """Why a ``model-versions/create`` source is refused, or None (CVE-2023-1177 and kin)."""
    if not isinstance(source, str):
        return "must be a string"
    if source in PROMPT_SOURCES:
        return None
    problem = uri_problem(source)
    if problem is not None:
        return problem
    for form in decodings(source) or ():
        parts = urlsplit(form)
        scheme = parts.scheme.lower()
        if scheme not in SOURCE_SCHEMES:
            given = f"a URI of scheme {scheme}:" if scheme else "a plain path"
            return (
                f"must be a runs:/, models:/ or mlflow-artifacts:/ URI, not {given} "
                "(the tracking server reads model artifacts only from its own store)"
            )
        if parts.netloc:
            return "must not name a host: the tracking server reads only its own artifacts"
    return None


def _within_store(location: str, store: str) -> bool:
    """Whether ``location`` names the folder ``store`` or one in it: same scheme and bucket (or
    host), its path under the store's as written and, for a local folder, as links lead."""
    place, home = urlsplit(location), urlsplit(store)
    # The scheme as written (urlsplit lowers it; MLflow's artifact code may not).
    if not home.scheme or not location.startswith(f"{home.scheme}:"):
        return False
    if place.netloc != home.netloc:
        return False
    if not _under(place.path, home.path):
        return False
    if home.scheme != "file":
        return True
    if not place.path.startswith("/"):
        return False  # file:x is relative to whichever directory reads it
    # file:/x and file:///x alike; a link in the store may point anywhere, so the folder must be
    # in the store both as written and as the links lead.
    return _under(os.path.realpath(place.path), os.path.realpath(home.path))


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return path.rstrip("/") == root or path.startswith(root + "/")


def artifact_location_problem(location: object, store: str | None) -> str | None:
    """Why an ``experiments/create`` artifact_location is refused, or None (absent, empty, or in
    the server's own artifact store).

    A location of the client's choosing is how file:, dbfs:/ and http(s):// locations reached
    the server's artifact code (CVE-2023-6977, CVE-2024-8859, the HTTP SSRF), and would be how a
    tenant reached another's store or the data dir: only the server's own store is accepted, as
    ``mlflow-artifacts:/<path>`` (its artifact proxy's root) or under ``store``, its
    ArtifactStoreUri. ``store`` is None where the server is not known (the fast lane): every
    location but ``mlflow-artifacts:/`` ones is refused there, and the gateway decides.
    """
    if location is None or location == "":
        return None
    allowed = (
        "must lie in this tracking server's artifact store: mlflow-artifacts:/<path>"
        + (f" or a URI under its ArtifactStoreUri {store}" if store else "")
        + ", or leave it out for the server to choose"
    )
    if not isinstance(location, str):
        return f"is not a string, and {allowed}"
    problem = uri_problem(location)
    if problem is not None:
        return f"{problem}, and {allowed}"
    if location.startswith("mlflow-artifacts:/") and not urlsplit(location).netloc:
        return None
    if store is not None and _within_store(location, store):
        return None
    return allowed


# requests ------------------------------------------------------------------------------------


def is_artifact_transfer(segments: list[str]) -> bool:
    """The artifact proxy's routes (/api/<v>/mlflow-artifacts/...): bodies streamed, uncapped."""
    return len(segments) > 2 and segments[0] in _API_ROOTS and segments[2] == "mlflow-artifacts"


def _url_artifact_path(segments: list[str]) -> str | None:
    """The artifact path in the URL of an artifact proxy route, as sent (still encoded)."""
    if not is_artifact_transfer(segments):
        return None
    relative = api_relative(segments)  # ("mlflow-artifacts", "artifacts", <path>...)
    skip = 3 if relative[1:2] == ("mpu",) else 2  # mpu/<create|complete|abort>/<path>
    return "/".join(relative[skip:])


def _parameter_name(raw: str) -> str:
    forms = decodings(unquote_plus(raw))
    return forms[-1] if forms else raw


def url_problem(path: str) -> Refusal | None:
    """Check the artifact paths in a request's URL: its path, then its query parameters."""
    target, _, query = path.partition("?")
    artifact = _url_artifact_path(path_segments(target))
    if artifact:
        problem = artifact_path_problem(artifact)
        if problem is not None:
            return invalid(problem)
    # Every occurrence: MLflow reads the first, another layer might read the last.
    for pair in query.split("&"):
        raw_name, _, value = pair.partition("=")
        name = _parameter_name(raw_name)
        if name in ARTIFACT_PATH_PARAMETERS:
            problem = artifact_path_problem(value.replace("+", " "))
            if problem is not None:
                return invalid(problem)
    return None


def _json_object(body: bytes) -> dict[str, object] | None:
    # As MLflow reads it (_get_normalized_request_json): old clients post JSON encoded twice.
    try:
        document = json.loads(body)
        if isinstance(document, str):
            document = json.loads(document)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _fields(document: dict[str, object], name: str) -> list[object]:
    """Every value the request gives ``name``: protobuf's parser also takes its camelCase."""
    head, *rest = name.split("_")
    camel = head + "".join(word.title() for word in rest)
    return [document[key] for key in dict.fromkeys((name, camel)) if key in document]


def _experiment_problem(document: dict[str, object], store: str | None) -> str | None:
    for location in _fields(document, "artifact_location"):
        problem = artifact_location_problem(location, store)
        if problem is not None:
            given = repr(str(location)[:200])
            return f"Invalid value for parameter 'artifact_location' ({given}): it {problem}."
    return None


def _model_version_problem(document: dict[str, object], store: str | None) -> str | None:
    for source in _fields(document, "source"):
        if source is None:
            continue  # absent to protobuf; MLflow answers that source is required
        problem = source_problem(source)
        if problem is not None:
            return f"Invalid value for parameter 'source' ({str(source)[:200]!r}): {problem}."
    return None


def _presigned_problem(document: dict[str, object], store: str | None) -> str | None:
    for path in _fields(document, "path"):
        if path is None:
            continue
        if not isinstance(path, str):
            return "Invalid value for parameter 'path': must be a string."
        problem = artifact_path_problem(path)
        if problem is not None:
            return problem
    return None


# Calls whose JSON body holds a path or URI, by the segments after /api/<version>/; each is given
# the server's ArtifactStoreUri, or None where it is not known.
BodyCheck = Callable[[dict[str, object], str | None], str | None]
_BODY_CHECKS: dict[tuple[str, ...], BodyCheck] = {
    ("mlflow", "experiments", "create"): _experiment_problem,
    ("mlflow", "model-versions", "create"): _model_version_problem,
    ("mlflow", "artifacts", "presigned-upload-url"): _presigned_problem,
    ("mlflow", "artifacts", "presigned-download-url"): _presigned_problem,
}


def body_problem(segments: list[str], body: bytes, store: str | None = None) -> Refusal | None:
    """Check the JSON body of the calls in ``_BODY_CHECKS``; others pass. ``store``: the
    server's ArtifactStoreUri, None where it is not known."""
    check = _body_check(segments)
    if check is None:
        return None
    document = _json_object(body)
    if document is None:
        return invalid("The request body must be a JSON object.")
    message = check(document, store)
    return invalid(message) if message is not None else None


def _body_check(segments: list[str]) -> BodyCheck | None:
    if not segments or segments[0] not in _API_ROOTS:
        return None
    return _BODY_CHECKS.get(api_relative(segments))


def invalid(message: str) -> Refusal:
    return Refusal(400, INVALID, message)


def too_large(limit: int) -> Refusal:
    return Refusal(
        413,
        TOO_LARGE,
        f"The request body is larger than {limit} bytes, the limit for API calls "
        "(setting max_api_body_bytes). Uploads through the artifact proxy "
        "(mlflow-artifacts routes) are streamed and not limited.",
    )


async def screen(
    request: web.Request,
    path: str,
    body: bytes | None,
    payload_hash: str | None,
    limit: int,
    store: str,
) -> tuple[Refusal | None, bytes | None]:
    """Refuse the request, or pass it with its body (read here if it had to be looked at).

    ``path`` is the one MLflow will see; ``body`` is None unless authentication read it, and
    ``payload_hash`` the signed SHA-256 of a body it left unread; ``store`` is the server's
    ArtifactStoreUri.
    """
    refusal = url_problem(path)
    if refusal is not None:
        return refusal, body
    segments = path_segments(path.partition("?")[0])
    capped = not is_artifact_transfer(segments)
    length = request.content_length
    if capped and length is not None and length > limit:
        return too_large(limit), body  # refused unread; aiohttp discards what follows
    inspect = _body_check(segments) is not None
    # A chunked API body has no length to check: read it here, within aiohttp's client_max_size.
    if body is None and request.body_exists and (inspect or (capped and length is None)):
        try:
            body = await request.read()  # kept by aiohttp: later reads get the same bytes
        except web.HTTPRequestEntityTooLarge:
            return too_large(min(limit, request.client_max_size)), None
        if payload_hash is not None and hashlib.sha256(body).hexdigest() != payload_hash:
            return invalid("The request body does not match its signed X-Amz-Content-SHA256."), None
    return body_refusal(segments, body or b"", limit, store), body


def request_problem(path: str, body: bytes, limit: int) -> Refusal | None:
    """What ``screen`` refuses in an API request whose body is at hand, or None; not knowing
    the server's store, it refuses an artifact_location that is not mlflow-artifacts:/."""
    return url_problem(path) or body_refusal(path_segments(path.partition("?")[0]), body, limit)


def body_refusal(
    segments: list[str], body: bytes, limit: int, store: str | None = None
) -> Refusal | None:
    """What ``screen`` refuses in a body, once the URL has passed."""
    if not is_artifact_transfer(segments) and len(body) > limit:
        return too_large(limit)
    return body_problem(segments, body, store) if _body_check(segments) is not None else None


# headers -------------------------------------------------------------------------------------

# '-'-separated words that name who the caller is, in the headers of identity-aware proxies:
# X-Forwarded-User, X-Remote-User, Remote-User, X-Auth-Request-Email, X-Amzn-Oidc-Identity,
# X-Goog-Authenticated-User-Email, X-MS-Client-Principal, Cf-Access-Jwt-Assertion, ...
_IDENTITY_WORDS = frozenset(
    {
        "user",
        "username",
        "userid",
        "principal",
        "identity",
        "email",
        "group",
        "groups",
        "role",
        "roles",
        "auth",
        "authorization",
        "authenticated",
        "token",
        "jwt",
        "assertion",
        "workspace",
        "oidc",
        "saml",
    }
)
_KEPT = frozenset({"user-agent"})


class HeaderNames(frozenset[str]):
    """Lower-case header names to drop, plus any header that carries an identity.

    MLflow must act only on who the gateway authenticated (spec section 8, item 1), and a
    future MLflow or plugin could trust any of these. A header with ``_`` is dropped too: the
    WSGI layer under MLflow's Flask app reads ``X_MLflow_Workspace`` as ``X-MLflow-Workspace``.
    """

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        name = name.lower()
        if "_" in name or frozenset.__contains__(self, name):
            return True
        if name in _KEPT:
            return False
        words = name.split("-")
        return name.startswith(("x-forwarded-", "forwarded")) or any(
            word in _IDENTITY_WORDS for word in words
        )


ARN_HEADER = "x-mlflow-sm-tracking-server-arn"
# The sagemaker-mlflow plugin's routing header for an MLflow App's ARN.
APP_ARN_HEADER = "x-sm-mlflow-app-arn"
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
# Credentials and routing meant for the gateway never reach MLflow, nor does any identity a
# client claims (HeaderNames also drops X-Forwarded-User, Remote-User and their kin).
STRIPPED_REQUEST = HeaderNames(
    HOP_BY_HOP
    | {
        "host",
        "authorization",
        "cookie",
        "origin",
        "x-amz-date",
        "x-amz-content-sha256",
        "x-amz-security-token",
        ARN_HEADER,
        APP_ARN_HEADER,
        "x-mlflow-authorization",
        "x-mlflow-workspace",
        "x-real-ip",
    }
)
STRIPPED_RESPONSE = HOP_BY_HOP | {"content-length", "set-cookie"}
