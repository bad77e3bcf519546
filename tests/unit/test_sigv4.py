"""SigV4 verification against requests signed by botocore (directly, via boto3, and via the
sagemaker-mlflow plugin), as the server would receive them."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict
from sagemaker_mlflow.auth import AuthBoto

from mlfleet.auth import sigv4
from mlfleet.protocol.errors import AwsError

AK, SK, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token-xyz"
SIGNED_AT = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
HOST = "localhost:8470"
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)


@dataclasses.dataclass
class Received:
    """A request as the server sees it."""

    method: str
    raw_path_qs: str
    headers: CIMultiDict[str]
    body: bytes


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "botocore.auth.get_current_datetime", lambda **_: SIGNED_AT.replace(tzinfo=None)
    )


def received(method: str, url: str, headers: Any, body: bytes | None) -> Received:
    """What arrives on the wire: the HTTP client adds Host (and unsigned extras)."""
    parts = urlsplit(url)
    # botocore's prepared requests hold some header values as bytes; the wire carries text.
    wire = CIMultiDict((k, v.decode() if isinstance(v, bytes) else v) for k, v in headers.items())
    wire.setdefault("Host", parts.netloc)
    wire.add("Accept-Encoding", "identity")
    raw = parts.path + (f"?{parts.query}" if parts.query else "")
    return Received(method, raw, wire, body or b"")


def sign(
    method: str,
    path_qs: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    token: str | None = None,
    service: str = "sagemaker",
    region: str = "us-east-1",
) -> Received:
    url = f"http://{HOST}{path_qs}"
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials(AK, SK, token), service, region).add_auth(request)
    return received(method, url, request.headers, body)


def check(request: Received, secret: str = SK, **kwargs: Any) -> None:
    kwargs.setdefault("expected_service", "sagemaker")
    kwargs.setdefault("expected_region", "us-east-1")
    kwargs.setdefault("now", SIGNED_AT + timedelta(seconds=3))
    info = sigv4.parse_authorization(request.headers)
    key = sigv4.signing_key(secret, info.date, info.region, info.service)
    sigv4.verify(
        info, key, request.method, request.raw_path_qs, request.headers, request.body, **kwargs
    )


def refused(request: Received, secret: str = SK, **kwargs: Any) -> AwsError:
    with pytest.raises(AwsError) as caught:
        check(request, secret, **kwargs)
    return caught.value


def json_call() -> Received:
    body = json.dumps({"TrackingServerName": "ts"}).encode()
    headers = {
        "X-Amz-Target": "SageMaker.DescribeMlflowTrackingServer",
        "Content-Type": "application/x-amz-json-1.1",
    }
    return sign("POST", "/", body, headers)


def test_signed_post_verifies() -> None:
    check(json_call())


def test_parsed_fields() -> None:
    request = sign("GET", "/x", token=TOKEN)
    info = sigv4.parse_authorization(request.headers)
    assert info == sigv4.SignedRequestInfo(
        access_key_id=AK,
        date="20261126",
        region="us-east-1",
        service="sagemaker",
        signed_headers=("host", "x-amz-date", "x-amz-security-token"),
        signature=info.signature,
        amz_date="20261126T120000Z",
        security_token=TOKEN,
    )
    assert len(info.signature) == 64


def test_session_token_is_signed() -> None:
    request = sign("GET", "/x", token=TOKEN)
    check(request)
    request.headers["X-Amz-Security-Token"] = "other-token"
    assert refused(request).message == MISMATCH


def test_query_string_with_spaces_plus_and_unicode() -> None:
    request = sign(
        "GET", "/api/2.0/mlflow/runs/get%20it?z=%C3%A9t%C3%A9&a=1+2&filter=a%20%3D%20b&a=0"
    )
    check(request)
    request.raw_path_qs = request.raw_path_qs.replace("1+2", "1%202")
    assert refused(request).message == MISMATCH


def test_get_without_body_with_and_without_empty_body() -> None:
    request = sign("GET", "/api/2.0/mlflow/experiments/list")
    check(request)
    request.body = None  # type: ignore[assignment]
    check(request)


def test_repeated_header_is_signed_as_all_its_values() -> None:
    request = AWSRequest(method="GET", url=f"http://{HOST}/r")
    request.headers["X-Custom"] = "one"
    request.headers["X-Custom"] = "two"  # HTTPHeaders appends
    SigV4Auth(Credentials(AK, SK), "sagemaker", "us-east-1").add_auth(request)
    wire = received("GET", f"http://{HOST}/r", request.headers, b"")
    assert wire.headers.getall("X-Custom") == ["one", "two"]
    check(wire)


def test_boto3_client_request_verifies() -> None:
    captured: list[Any] = []

    def capture(request: Any, **_: Any) -> None:
        captured.append(request)
        raise RuntimeError("captured")

    client = boto3.client(
        "sagemaker",
        endpoint_url=f"http://{HOST}",
        region_name="us-east-1",
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        aws_session_token=TOKEN,
    )
    client.meta.events.register("before-send", capture)
    with pytest.raises(RuntimeError, match="captured"):
        client.list_mlflow_tracking_servers(MaxResults=5, CreatedAfter=SIGNED_AT)
    sent = captured[0]
    check(received(sent.method, sent.url, sent.headers, sent.body))


def test_sagemaker_mlflow_plugin_request_verifies() -> None:
    session = boto3.Session(aws_access_key_id=AK, aws_secret_access_key=SK, region_name="us-east-1")
    auth = AuthBoto("us-east-1", "sagemaker-mlflow", boto3_session=session)
    body = json.dumps({"experiment_id": "1", "run_name": "r"}).encode()
    prepared = requests.Request(
        "POST",
        f"http://{HOST}/ts/api/2.0/mlflow/runs/create",
        data=body,
        headers={"Connection": "keep-alive", "Content-Type": "application/json"},
    ).prepare()
    sent = auth(prepared)
    assert "x-amz-content-sha256" in sent.headers["Authorization"]
    request = received(sent.method, sent.url, sent.headers, body)
    check(request, expected_service="sagemaker-mlflow")

    request.body = body.replace(b'"r"', b'"x"')
    assert refused(request, expected_service="sagemaker-mlflow").message == MISMATCH


def test_plugin_style_content_sha256_with_streamed_body() -> None:
    body = b"x" * 4096
    digest = sha256(body).hexdigest()
    request = sign(
        "POST",
        "/ts/api/2.0/mlflow-artifacts/artifacts/a.bin",
        body,
        {"X-Amz-Content-SHA256": digest},
    )
    request.body = None  # type: ignore[assignment]
    check(request, payload_hash=digest)


def test_streamed_body_with_unsigned_content_sha256() -> None:
    body = b'{"k": 1}'
    request = sign("POST", "/upload", body)
    request.body = None  # type: ignore[assignment]
    check(request, payload_hash=sha256(body).hexdigest())
    assert refused(request, payload_hash=sha256(b"other").hexdigest()).message == MISMATCH


def test_tampered_body() -> None:
    request = json_call()
    request.body = request.body.replace(b"ts", b"tt")
    assert refused(request).message == MISMATCH


def test_tampered_body_under_signed_content_sha256() -> None:
    body = b'{"a": 1}'
    request = sign("POST", "/", body, {"X-Amz-Content-SHA256": sha256(body).hexdigest()})
    check(request)
    request.body = b'{"a": 2}'
    assert refused(request).message == MISMATCH


def test_tampered_path() -> None:
    request = sign("GET", "/ts-a/api/2.0/mlflow/runs/get?run_id=1")
    request.raw_path_qs = request.raw_path_qs.replace("ts-a", "ts-b")
    assert refused(request).message == MISMATCH


def test_tampered_signed_header() -> None:
    request = json_call()
    request.headers["X-Amz-Target"] = "SageMaker.DeleteMlflowTrackingServer"
    error = refused(request)
    assert (error.code, error.status, error.message) == ("InvalidSignatureException", 403, MISMATCH)


def test_unsigned_header_may_change() -> None:
    request = json_call()
    request.headers["Accept-Encoding"] = "gzip"
    check(request)


def test_headers_botocore_would_not_sign_are_honoured_when_signed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Other SDKs sign headers botocore leaves out (the AWS SDK for Java v1 signs User-Agent)."""
    with monkeypatch.context() as patched:
        patched.setattr("botocore.auth.SIGNED_HEADERS_BLACKLIST", [])
        request = sign("GET", "/x", headers={"User-Agent": "aws-sdk-java/1.12"})
    assert "user-agent" in sigv4.parse_authorization(request.headers).signed_headers
    check(request)
    request.headers["User-Agent"] = "curl/8"
    assert refused(request).message == MISMATCH


def test_wrong_secret() -> None:
    assert refused(json_call(), secret=SK + "x").message == MISMATCH


def test_wrong_service() -> None:
    error = refused(sign("GET", "/", service="s3"))
    assert (error.code, error.status) == ("InvalidSignatureException", 403)
    assert error.message == "Credential should be scoped to correct service: 'sagemaker'. "


def test_wrong_region() -> None:
    error = refused(sign("GET", "/", region="eu-west-1"))
    assert error.message == "Credential should be scoped to a valid region. "


def test_scope_date_must_match_request_date() -> None:
    request = sign("GET", "/")
    request.headers["Authorization"] = request.headers["Authorization"].replace(
        "/20261126/", "/20261125/"
    )
    error = refused(request)
    assert error.message == (
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
        "HTTP: '20261125' != '20261126', from '20261126T120000Z'."
    )


def test_expired() -> None:
    error = refused(json_call(), now=SIGNED_AT + timedelta(minutes=15, seconds=1))
    assert (error.code, error.status) == ("InvalidSignatureException", 403)
    assert error.message == (
        "Signature expired: 20261126T120000Z is now earlier than 20261126T120001Z "
        "(20261126T121501Z - 15 min.)"
    )
    check(json_call(), now=SIGNED_AT + timedelta(minutes=15))


def test_not_yet_current() -> None:
    error = refused(
        json_call(), now=SIGNED_AT - timedelta(minutes=20), max_skew=timedelta(minutes=5)
    )
    assert error.message == (
        "Signature not yet current: 20261126T120000Z is still later than 20261126T114500Z "
        "(20261126T114000Z + 5 min.)"
    )


def test_host_must_be_signed() -> None:
    request = json_call()
    info = sigv4.parse_authorization(request.headers)
    unsigned_host = dataclasses.replace(
        info, signed_headers=tuple(h for h in info.signed_headers if h != "host")
    )
    with pytest.raises(AwsError) as caught:
        sigv4.verify(
            unsigned_host,
            sigv4.signing_key(SK, info.date, info.region, info.service),
            request.method,
            request.raw_path_qs,
            request.headers,
            request.body,
            expected_service="sagemaker",
            expected_region="us-east-1",
            now=SIGNED_AT,
        )
    assert caught.value.code == "InvalidSignatureException"
    assert "'Host'" in caught.value.message


def test_signing_key_is_cached() -> None:
    check(json_call())
    hits = sigv4.signing_key.cache_info().hits
    check(json_call())
    assert sigv4.signing_key.cache_info().hits == hits + 1


def test_missing_authorization() -> None:
    with pytest.raises(AwsError) as caught:
        sigv4.parse_authorization(CIMultiDict({"X-Amz-Date": "20261126T120000Z"}))
    error = caught.value
    assert (error.code, error.status, error.message) == (
        "MissingAuthenticationToken",
        403,
        "Missing Authentication Token",
    )


GOOD_AUTH = (
    "AWS4-HMAC-SHA256 Credential=AKID/20261126/us-east-1/sagemaker/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=abc"
)


@pytest.mark.parametrize(
    ("authorization", "amz_date", "code", "message"),
    [
        (
            "Bearer abc",
            "20261126T120000Z",
            "IncompleteSignatureException",
            "Authorization header has a parameter that is not a valid key=value pair "
            "(missing equal-sign).",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20261126/us-east-1/sagemaker/aws4_request",
            "20261126T120000Z",
            "IncompleteSignatureException",
            "Authorization header requires 'Signature' parameter. Authorization header requires "
            "'SignedHeaders' parameter.",
        ),
        (
            GOOD_AUTH,
            None,
            "IncompleteSignatureException",
            "Authorization header requires existence of a 'X-Amz-Date' header.",
        ),
        (
            GOOD_AUTH,
            "2026-11-26T12:00:00Z",
            "IncompleteSignatureException",
            "Date must be in ISO-8601 'basic format'. Got '2026-11-26T12:00:00Z'. "
            "See http://en.wikipedia.org/wiki/ISO_8601",
        ),
        (
            GOOD_AUTH.replace("SHA256", "SHA1"),
            "20261126T120000Z",
            "IncompleteSignatureException",
            "Unsupported AWS 'algorithm': 'AWS4-HMAC-SHA1' (only AWS4-HMAC-SHA256 for now). ",
        ),
        (
            GOOD_AUTH.replace("us-east-1/", ""),
            "20261126T120000Z",
            "IncompleteSignatureException",
            "Credential must have exactly 5 slash-delimited elements, e.g. "
            "keyid/date/region/service/term, got 'AKID/20261126/sagemaker/aws4_request'",
        ),
        (
            GOOD_AUTH.replace("aws4_request", "aws5_request"),
            "20261126T120000Z",
            "InvalidSignatureException",
            "Credential should be scoped with a valid terminator: 'aws4_request', "
            "not 'aws5_request'. ",
        ),
    ],
)
def test_malformed_authorization(
    authorization: str, amz_date: str | None, code: str, message: str
) -> None:
    headers = CIMultiDict({"Authorization": authorization})
    if amz_date:
        headers["X-Amz-Date"] = amz_date
    with pytest.raises(AwsError) as caught:
        sigv4.parse_authorization(headers)
    assert (caught.value.code, caught.value.message) == (code, message)


def test_plain_dict_headers_work() -> None:
    request = json_call()
    request.headers = {k.lower(): v for k, v in request.headers.items()}  # type: ignore[assignment]
    check(request)
