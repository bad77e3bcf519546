"""Server-side verification of AWS Signature Version 4: the ``Authorization`` header form, and
the query-string form of a presigned URL (``parse_query_authorization``).

The canonical request and string to sign are computed by botocore's own ``SigV4Auth`` from a
request rebuilt exactly as received, so the server agrees with botocore-based clients (boto3,
the AWS CLI, the sagemaker-mlflow plugin) byte for byte. Error codes and messages follow AWS.
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from hashlib import sha256

from botocore.auth import EMPTY_SHA256_HASH, SIGV4_TIMESTAMP, UNSIGNED_PAYLOAD, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders

from mlfleet.protocol.errors import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationToken,
)

ALGORITHM = "AWS4-HMAC-SHA256"
_TERMINATOR = "aws4_request"
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
# AWS's limit on a presigned URL's lifetime (seven days).
PRESIGNED_MAX_SECONDS = 7 * 24 * 3600
_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)


@dataclass(frozen=True, slots=True)
class SignedRequestInfo:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str
    security_token: str | None


@dataclass(frozen=True, slots=True)
class ClaimedCredential:
    """What an Authorization header claims before anything is verified: whose key, and the
    region and service it was signed for (which decides which API answers)."""

    access_key_id: str
    region: str
    service: str


def claimed_credential(authorization: str) -> ClaimedCredential | None:
    marker = "Credential="
    start = authorization.find(marker)
    if start < 0:
        return None
    credential = authorization[start + len(marker) :].split(",", 1)[0].strip()
    parts = credential.split("/")
    if len(parts) != 5 or not parts[0]:
        return None
    return ClaimedCredential(parts[0], parts[2], parts[3])


def parse_authorization(headers: Mapping[str, str]) -> SignedRequestInfo:
    # Unlike AWS, no message quotes the header or a parameter that is not key=value: either may
    # be another scheme's secret (HTTP Basic sent here), and messages reach the audit trail.
    # The algorithm and the Credential are quoted only once all SigV4 parameters are present.
    authorization = headers.get("authorization")
    if not authorization:
        raise MissingAuthenticationToken("Missing Authentication Token")
    algorithm, _, rest = authorization.strip().partition(" ")
    params: dict[str, str] = {}
    for part in rest.split(","):
        pair = part.strip()
        key, equals, value = pair.partition("=")
        if not equals:
            raise IncompleteSignatureException(
                "Authorization header has a parameter that is not a valid key=value pair "
                "(missing equal-sign)."
            )
        params[key] = value
    amz_date = headers.get("x-amz-date") or ""
    missing = [
        f"Authorization header requires '{name}' parameter. "
        for name in ("Credential", "Signature", "SignedHeaders")
        if not params.get(name)
    ]
    if not amz_date:
        # Unlike AWS, the Date header is not accepted in its place: botocore never sends it alone.
        missing.append("Authorization header requires existence of a 'X-Amz-Date' header. ")
    if missing:
        raise IncompleteSignatureException("".join(missing).rstrip())
    if algorithm != ALGORITHM:
        raise IncompleteSignatureException(
            f"Unsupported AWS 'algorithm': '{algorithm}' (only {ALGORITHM} for now). "
        )
    credential = params["Credential"]
    scope = credential.rstrip("/").split("/")
    if len(scope) != 5:
        raise IncompleteSignatureException(
            "Credential must have exactly 5 slash-delimited elements, "
            f"e.g. keyid/date/region/service/term, got '{credential}'"
        )
    access_key_id, date, region, service, terminator = scope
    if terminator != _TERMINATOR:
        raise InvalidSignatureException(
            f"Credential should be scoped with a valid terminator: '{_TERMINATOR}', "
            f"not '{terminator}'. "
        )
    _parse_amz_date(amz_date)
    return SignedRequestInfo(
        access_key_id=access_key_id,
        date=date,
        region=region,
        service=service,
        signed_headers=tuple(name.lower() for name in params["SignedHeaders"].split(";")),
        signature=params["Signature"],
        amz_date=amz_date,
        security_token=headers.get("x-amz-security-token"),
    )


def verify(
    info: SignedRequestInfo,
    key: bytes,
    method: str,
    raw_path_qs: str,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    expected_service: str,
    expected_region: str,
    now: datetime | None = None,
    max_skew: timedelta = timedelta(minutes=15),
    payload_hash: str | None = None,
    presigned: bool = False,
) -> None:
    """Raise InvalidSignatureException unless `info` is a valid signature of this request by
    `key`, the signing key of its scope (``signing_key``): what the gateway derives from the
    secret, and what an MLflow worker is given instead of the secret.

    `raw_path_qs` is the request target exactly as received (no decoding or re-encoding): clients
    sign the URL they send. Pass `body=None` with `payload_hash` (the signed X-Amz-Content-SHA256)
    for a body that is streamed; the caller then checks the streamed bytes against that hash.
    A ``presigned`` request (``parse_query_authorization``, which checked its expiry) signs no
    payload and may be used long after it was signed.
    """
    if not presigned:
        _check_clock(info.amz_date, now, max_skew)
    if "host" not in info.signed_headers:
        raise InvalidSignatureException(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
        )
    _check_scope(info, expected_service, expected_region)

    # aiohttp keeps bytes that are not UTF-8 as lone surrogates; no client signs those (SigV4
    # signs UTF-8), and botocore's canonical request cannot even be built from them.
    if not _is_utf8(raw_path_qs):
        raise InvalidSignatureException(_SIGNATURE_MISMATCH)
    request = AWSRequest(method=method, url=f"http://signed-host{raw_path_qs}")
    signed = frozenset(info.signed_headers)
    # Items rather than get(): a header sent more than once is signed as all its values.
    for name, value in headers.items():
        lower = name.lower()
        if lower in signed:
            if not _is_utf8(value):
                raise InvalidSignatureException(_SIGNATURE_MISMATCH)
            request.headers[lower] = value  # HTTPHeaders appends repeated names
    request.context["timestamp"] = info.amz_date
    request.context["payload_hash"] = _payload_hash(request.headers, body, payload_hash)

    if presigned:
        request.context["payload_hash"] = UNSIGNED_PAYLOAD
    signer = _signer(info.service, info.region)
    string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
    expected = hmac.new(key, string_to_sign.encode(), sha256).hexdigest()
    if not hmac.compare_digest(expected, info.signature):
        raise InvalidSignatureException(_SIGNATURE_MISMATCH)


# botocore has no type information, so SigV4Auth is Any to mypy.
class _ReceivedRequestSigner(SigV4Auth):  # type: ignore[misc]
    """botocore's signer, canonicalizing exactly the headers the client says it signed.

    botocore picks the headers to sign itself (all but a blacklist, plus a synthesized Host);
    a server must instead use the client's SignedHeaders, which `verify` already put in the
    request. The payload hash is computed by `verify`, which also handles streamed bodies.
    """

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return request.headers

    def payload(self, request: AWSRequest) -> str:
        payload_hash: str = request.context["payload_hash"]
        return payload_hash

    def _normalize_url_path(self, path: str) -> str:
        # S3 signs the path as sent (no dot-segment removal, no second encoding), as botocore's
        # S3SigV4Auth does; other services sign it normalized.
        if self._service_name == "s3":
            return path
        normalized: str = super()._normalize_url_path(path)
        return normalized


@functools.lru_cache(maxsize=64)
def _signer(service: str, region: str) -> _ReceivedRequestSigner:
    # Signing needs no credentials: the secret only enters through signing_key.
    return _ReceivedRequestSigner(None, service, region)


@functools.lru_cache(maxsize=1024)
def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """The key that signs for one day, region and service (AWS's kSigning)."""
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, service, _TERMINATOR):
        key = hmac.new(key, part.encode(), sha256).digest()
    return key


def parse_query_authorization(
    query: Mapping[str, str], raw_path_qs: str, now: datetime | None = None
) -> tuple[SignedRequestInfo, str]:
    """A presigned URL's signature (``X-Amz-Algorithm``, ``-Credential``, ``-Date``,
    ``-Expires``, ``-SignedHeaders``, ``-Signature`` in its query) and the request target without
    ``X-Amz-Signature``, which is what was signed. Refused once expired (AWS's words)."""
    missing = [
        name
        for name in (
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Date",
            "X-Amz-Expires",
            "X-Amz-SignedHeaders",
            "X-Amz-Signature",
        )
        if not query.get(name)
    ]
    if missing:
        raise IncompleteSignatureException(
            f"Query-string authentication requires the {', '.join(missing)} parameters."
        )
    if query["X-Amz-Algorithm"] != ALGORITHM:
        raise IncompleteSignatureException(
            f"Unsupported AWS 'algorithm': '{query['X-Amz-Algorithm']}' (only {ALGORITHM})."
        )
    scope = query["X-Amz-Credential"].split("/")
    if len(scope) != 5 or scope[4] != _TERMINATOR:
        raise IncompleteSignatureException(
            "X-Amz-Credential must have exactly 5 slash-delimited elements ending in "
            f"'{_TERMINATOR}'."
        )
    amz_date = query["X-Amz-Date"]
    signed_at = _parse_amz_date(amz_date)
    try:
        expires = int(query["X-Amz-Expires"])
    except ValueError:
        expires = -1
    if not 1 <= expires <= PRESIGNED_MAX_SECONDS:
        raise InvalidSignatureException(
            f"X-Amz-Expires must be between 1 and {PRESIGNED_MAX_SECONDS} seconds."
        )
    current = (now or datetime.now(UTC)).astimezone(UTC)
    if current > signed_at + timedelta(seconds=expires):
        raise InvalidSignatureException("Request has expired")
    path, _, raw_query = raw_path_qs.partition("?")
    kept = [p for p in raw_query.split("&") if p.partition("=")[0] != "X-Amz-Signature"]
    info = SignedRequestInfo(
        access_key_id=scope[0],
        date=scope[1],
        region=scope[2],
        service=scope[3],
        signed_headers=tuple(name.lower() for name in query["X-Amz-SignedHeaders"].split(";")),
        signature=query["X-Amz-Signature"],
        amz_date=amz_date,
        security_token=query.get("X-Amz-Security-Token"),
    )
    return info, f"{path}?{'&'.join(kept)}" if kept else path


def _payload_hash(signed_headers: HTTPHeaders, body: bytes | None, streamed: str | None) -> str:
    """The body hash for the canonical request, used when X-Amz-Content-SHA256 is not signed.

    When it is signed, botocore takes its value as is; a server must also check that it really
    is the hash of the body, or the body could be swapped under a valid signature.
    """
    if body is None:
        return streamed or EMPTY_SHA256_HASH
    actual = sha256(body).hexdigest() if body else EMPTY_SHA256_HASH
    declared = signed_headers.get("x-amz-content-sha256")
    if declared not in (None, UNSIGNED_PAYLOAD, actual):
        raise InvalidSignatureException(_SIGNATURE_MISMATCH)
    return actual


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_clock(amz_date: str, now: datetime | None, max_skew: timedelta) -> None:
    signed_at = _parse_amz_date(amz_date)
    current = (now or datetime.now(UTC)).astimezone(UTC)
    minutes = int(max_skew.total_seconds() // 60)
    if signed_at < current - max_skew:
        raise InvalidSignatureException(
            f"Signature expired: {amz_date} is now earlier than "
            f"{_format(current - max_skew)} ({_format(current)} - {minutes} min.)"
        )
    if signed_at > current + max_skew:
        raise InvalidSignatureException(
            f"Signature not yet current: {amz_date} is still later than "
            f"{_format(current + max_skew)} ({_format(current)} + {minutes} min.)"
        )


def _check_scope(info: SignedRequestInfo, service: str, region: str) -> None:
    # AWS reports every scope problem at once, each sentence ending in ". ".
    problems = []
    if info.region != region:
        problems.append("Credential should be scoped to a valid region. ")
    if info.service != service:
        problems.append(f"Credential should be scoped to correct service: '{service}'. ")
    if info.date != info.amz_date[:8]:
        problems.append(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{info.date}' != '{info.amz_date[:8]}', from '{info.amz_date}'."
        )
    if problems:
        raise InvalidSignatureException("".join(problems))


def _parse_amz_date(value: str) -> datetime:
    try:
        if _AMZ_DATE.fullmatch(value):
            return datetime.fromisoformat(value)
    except ValueError:
        pass
    raise IncompleteSignatureException(
        f"Date must be in ISO-8601 'basic format'. Got '{value}'. "
        "See http://en.wikipedia.org/wiki/ISO_8601"
    )


def _format(moment: datetime) -> str:
    return moment.strftime(SIGV4_TIMESTAMP)
