"""The S3-compatible endpoint's requests: who asks (SigV4 for service ``s3``, header or
presigned), which operation, whether IAM allows it, and S3's answer.

Every request is authorized before a bucket's existence is revealed. A write is answered once
its data event is stored (event source ``s3.amazonaws.com``); if it cannot be, the caller gets
503 and retries (every write here may be repeated). A body is checked against its signed
SHA-256, its ``Content-MD5`` and its ``x-amz-checksum-crc32`` as it streams, and its last chunk
held back until all match, so MLflow never stores a body that fails them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import web

from mlfleet.api.operations import Check, Target
from mlfleet.api.pipeline import Pipeline
from mlfleet.audit.trail import AuditTrail, DataEvent
from mlfleet.auth.credentials import Credentials
from mlfleet.auth.identity import Principal
from mlfleet.auth.sigv4 import claimed_credential
from mlfleet.common.storage import storage_full
from mlfleet.gateway.data_events import data_events_on
from mlfleet.gateway.routing import ServerRecord
from mlfleet.mlflow_api.s3_view import HASHED_PREFIX, bucket_arn, bucket_of, object_arn, server_of
from mlfleet.policy.authorizer import RequestFacts, denial_message
from mlfleet.protocol.errors import AwsError
from mlfleet.s3 import responses
from mlfleet.s3.objects import MAX_KEYS, Objects, Store, store_folder
from mlfleet.s3.responses import Listing, S3Error
from mlfleet.state.db import database_unavailable, driver_message

log = logging.getLogger(__name__)

SERVICE = "s3"
EVENT_SOURCE = "s3.amazonaws.com"
OBJECT_TYPE = "AWS::S3::Object"
BUCKET_TYPE = "AWS::S3::Bucket"
UNSIGNED = "UNSIGNED-PAYLOAD"
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
# AWS's word for each failure of authentication, by the code the verifier raised.
_AUTH_CODES = {
    "InvalidSignatureException": (403, "SignatureDoesNotMatch"),
    "IncompleteSignatureException": (400, "AuthorizationHeaderMalformed"),
    "UnrecognizedClientException": (403, "InvalidAccessKeyId"),
    "ExpiredTokenException": (400, "ExpiredToken"),
    "MissingAuthenticationToken": (403, "AccessDenied"),
}


def signed_for_s3(request: web.Request) -> bool:
    """Whether a request is signed for S3: the requests this endpoint serves."""
    claimed = claimed_credential(request.headers.get("Authorization", ""))
    if claimed is not None:
        return claimed.service == SERVICE
    return f"/{SERVICE}/aws4_request" in request.query.get("X-Amz-Credential", "")


@dataclass
class Body:
    """A request body as it streams, checked against what the request declares; ``error`` is
    set (and the stream stopped before its last chunk) when a check fails."""

    request: web.Request
    sha256: str | None
    chunked: bool
    md5: hashlib._Hash = field(default_factory=lambda: hashlib.md5(usedforsecurity=False))
    error: S3Error | None = None

    @property
    def etag(self) -> str:
        return f'"{self.md5.hexdigest()}"'

    async def chunks(self) -> AsyncIterator[bytes]:
        digest = hashlib.sha256() if self.sha256 else None
        crc = 0
        held: bytes | None = None
        trailers: dict[str, str] = {}
        source = self._decoded(trailers) if self.chunked else self._raw()
        async for chunk in source:
            if held is not None:
                yield held
            self.md5.update(chunk)
            if digest is not None:
                digest.update(chunk)
            crc = zlib.crc32(chunk, crc)
            held = chunk
        headers = self.request.headers
        declared_crc = trailers.get("x-amz-checksum-crc32") or headers.get("x-amz-checksum-crc32")
        if digest is not None and digest.hexdigest() != self.sha256:
            self.error = S3Error(
                400,
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
        elif "Content-MD5" in headers and headers["Content-MD5"] != _b64(self.md5.digest()):
            self.error = S3Error(
                400, "BadDigest", "The Content-MD5 you specified did not match what we received."
            )
        elif declared_crc and declared_crc != _b64(crc.to_bytes(4, "big")):
            self.error = S3Error(
                400,
                "BadDigest",
                "The CRC32 you specified did not match the calculated checksum.",
            )
        if self.error is not None:
            raise self.error
        if held is not None:
            yield held

    async def _raw(self) -> AsyncIterator[bytes]:
        async for chunk in self.request.content.iter_any():
            yield chunk

    async def _decoded(self, trailers: dict[str, str]) -> AsyncIterator[bytes]:
        """``aws-chunked`` content: ``<hex size>\\r\\n<bytes>\\r\\n`` ... ``0\\r\\n``, then
        trailing headers and an empty line."""
        content = self.request.content
        while True:
            line = (await content.readline()).decode("latin-1").strip()
            size = int(line.split(";", 1)[0] or "x", 16) if line else -1
            if size < 0:
                raise _incomplete_body()
            if size == 0:
                break
            yield await content.readexactly(size)
            await content.readexactly(2)
        while line := (await content.readline()).decode("latin-1").strip():
            name, _, value = line.partition(":")
            trailers[name.strip().lower()] = value.strip()


class S3Endpoint:
    def __init__(
        self,
        *,
        region: str,
        account_id: str,
        credentials: Credentials,
        pipeline: Pipeline,
        trail: AuditTrail,
        server: Callable[[str], ServerRecord | None],
        servers: Callable[[], Iterable[tuple[str, float]]],
        objects: Objects,
    ) -> None:
        self._region = region
        self._account = account_id
        self._credentials = credentials
        self._pipeline = pipeline
        self._trail = trail
        self._server = server
        # Every server's name and creation time: for a hashed bucket name, and ListBuckets.
        self._servers = servers
        self._objects = objects

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            principal = self._authenticate(request)
            return await self._serve(request, principal)
        except S3Error as error:
            return responses.error_response(error, request.path, request.method == "HEAD")
        except AwsError as error:
            status, code = _AUTH_CODES.get(error.code, (403, "AccessDenied"))
            refused = S3Error(status, code, error.message)
            return responses.error_response(refused, request.path, request.method == "HEAD")
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            log.warning("an S3 request met the database unavailable: %s", driver_message(exc))
            away = S3Error(503, "ServiceUnavailable", "Please reduce your request rate.")
            return responses.error_response(away, request.path, request.method == "HEAD")

    def _authenticate(self, request: web.Request) -> Principal:
        if "Authorization" in request.headers:
            declared = request.headers.get("x-amz-content-sha256")
            if declared is None and request.body_exists:
                raise S3Error(
                    400,
                    "InvalidRequest",
                    "Missing required header for this request: x-amz-content-sha256",
                )
            return self._credentials.verify_sigv4(
                request, None, service=SERVICE, payload_hash=declared, region=self._region
            )
        return self._credentials.verify_presigned(request, service=SERVICE, region=self._region)

    async def _serve(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0].lstrip("/")
        bucket_text, _, key_text = path.partition("/")
        bucket, key = unquote(bucket_text), unquote(key_text)
        method, query = request.method, request.query
        if not bucket:
            if method != "GET":
                raise _not_allowed(method)
            return self._list_buckets(request, principal)
        if not key:
            return await self._bucket_operation(request, principal, bucket)
        if method in ("GET", "HEAD"):
            store = self._allowed(request, principal, "s3:GetObject", bucket, key)
            if method == "HEAD":
                info = await self._objects.head(store, key)
                return web.Response(
                    headers={
                        "Content-Length": str(info.size),
                        "Last-Modified": responses.http_date(info.modified),
                        "Accept-Ranges": "bytes",
                        "Content-Type": "binary/octet-stream",
                    }
                )
            return await self._objects.get(store, key, request)
        if method == "PUT" and "x-amz-copy-source" in request.headers:
            raise S3Error(501, "NotImplemented", "CopyObject is not supported by mlfleet.")
        if method == "PUT":
            if "uploadId" in query:
                return await self._upload_part(request, principal, bucket, key)
            return await self._put(request, principal, bucket, key)
        if method == "POST" and "uploads" in query:
            store = self._allowed(request, principal, "s3:PutObject", bucket, key)
            upload_id = self._objects.create_upload(store, bucket, key)
            await self._record(request, principal, store, "CreateMultipartUpload", bucket, key)
            return responses.multipart_created(bucket, key, upload_id)
        if method == "POST" and "uploadId" in query:
            return await self._complete(request, principal, bucket, key)
        if method == "DELETE" and "uploadId" in query:
            store = self._allowed(request, principal, "s3:AbortMultipartUpload", bucket, key)
            self._objects.abort(query["uploadId"], bucket, key)
            await self._record(request, principal, store, "AbortMultipartUpload", bucket, key)
            return web.Response(status=204)
        if method == "DELETE":
            store = self._allowed(request, principal, "s3:DeleteObject", bucket, key)
            await self._objects.delete(store, key)
            await self._record(request, principal, store, "DeleteObject", bucket, key)
            return web.Response(status=204)
        raise _not_allowed(method)

    # buckets -------------------------------------------------------------------------------

    def _list_buckets(self, request: web.Request, principal: Principal) -> web.Response:
        self._check(request, principal, "s3:ListAllMyBuckets", Target("*"), BUCKET_TYPE)
        found = sorted((bucket_of(name), created) for name, created in self._servers())
        return responses.list_buckets(found, self._account)

    async def _bucket_operation(
        self, request: web.Request, principal: Principal, bucket: str
    ) -> web.StreamResponse:
        method, query = request.method, request.query
        if method == "GET" and "location" in query:
            self._allowed(request, principal, "s3:GetBucketLocation", bucket)
            return responses.bucket_location(self._region)
        if method == "HEAD":
            self._allowed(request, principal, "s3:ListBucket", bucket)
            return web.Response(headers={"x-amz-bucket-region": self._region})
        if method == "GET" and "uploads" not in query and "versions" not in query:
            return await self._list_objects(request, principal, bucket)
        if method == "POST" and "delete" in query:
            return await self._delete_objects(request, principal, bucket)
        raise S3Error(
            501, "NotImplemented", "mlfleet's S3 endpoint does not implement this operation."
        )

    async def _list_objects(
        self, request: web.Request, principal: Principal, bucket: str
    ) -> web.Response:
        store = self._allowed(request, principal, "s3:ListBucket", bucket)
        query = request.query
        version = 2 if query.get("list-type") == "2" else 1
        try:
            limit = min(int(query.get("max-keys", MAX_KEYS)), MAX_KEYS)
        except ValueError as exc:
            raise S3Error(
                400, "InvalidArgument", "Provided max-keys not an integer or within integer range"
            ) from exc
        if version == 2:
            token = query.get("continuation-token", "")
            start = _untoken(token) if token else query.get("start-after", "")
        else:
            token, start = query.get("marker", ""), query.get("marker", "")
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        objects, prefixes, truncated = await self._objects.listing(
            store, prefix, delimiter, start, max(limit, 0)
        )
        last = max([o.key for o in objects] + prefixes, default="")
        return responses.list_objects(
            Listing(
                bucket=bucket,
                prefix=prefix,
                delimiter=delimiter,
                max_keys=limit,
                contents=objects,
                common_prefixes=prefixes,
                truncated=truncated,
                url_encoded=query.get("encoding-type") == "url",
                version=version,
                start=token,
                next_start=_token(last) if version == 2 else last,
                start_after=query.get("start-after", "") if version == 2 else "",
            )
        )

    async def _delete_objects(
        self, request: web.Request, principal: Principal, bucket: str
    ) -> web.Response:
        document = responses.parse(await request.read(), "Delete")
        quiet = (document.findtext("Quiet") or "").lower() == "true"
        keys = [element.findtext("Key") or "" for element in document.findall("Object")]
        if len(keys) > MAX_KEYS:
            raise S3Error(400, "MalformedXML", f"At most {MAX_KEYS} keys may be deleted at once.")
        deleted, errors = [], []
        for key in keys:
            try:
                store = self._allowed(request, principal, "s3:DeleteObject", bucket, key)
                await self._objects.delete(store, key)
                await self._record(request, principal, store, "DeleteObject", bucket, key)
            except S3Error as error:
                errors.append((key, error))
            else:
                deleted.append(key)
        return responses.deleted(deleted, errors, quiet)

    # writes --------------------------------------------------------------------------------

    def _body(self, request: web.Request) -> Body:
        declared = request.headers.get("x-amz-content-sha256", UNSIGNED)
        encodings = request.headers.get("Content-Encoding", "")
        chunked = "aws-chunked" in encodings or declared.startswith("STREAMING-")
        if chunked and declared != UNSIGNED_TRAILER:
            raise S3Error(
                501,
                "NotImplemented",
                f"Signed aws-chunked uploads ({declared}) are not supported by mlfleet: send "
                "the payload whole or with an unsigned trailer.",
            )
        is_hash = len(declared) == 64 and all(c in "0123456789abcdef" for c in declared)
        return Body(request, declared if is_hash else None, chunked)

    async def _put(
        self, request: web.Request, principal: Principal, bucket: str, key: str
    ) -> web.Response:
        store = self._allowed(request, principal, "s3:PutObject", bucket, key)
        body = self._body(request)
        try:
            await self._objects.put(store, key, body.chunks())
        except Exception:
            if body.error is not None:
                raise body.error from None
            raise
        await self._record(request, principal, store, "PutObject", bucket, key)
        return web.Response(headers={"ETag": body.etag})

    async def _upload_part(
        self, request: web.Request, principal: Principal, bucket: str, key: str
    ) -> web.Response:
        store = self._allowed(request, principal, "s3:PutObject", bucket, key)
        try:
            number = int(request.query.get("partNumber", ""))
        except ValueError:
            number = 0
        if not 1 <= number <= 10000:
            raise S3Error(
                400,
                "InvalidArgument",
                "Part number must be an integer between 1 and 10000, inclusive",
                ArgumentName="partNumber",
            )
        body = self._body(request)
        try:
            etag = await self._objects.put_part(
                request.query["uploadId"], bucket, key, number, body.chunks()
            )
        except OSError as exc:
            if storage_full(exc):
                raise S3Error(503, "ServiceUnavailable", "The storage is full.") from exc
            raise
        await self._record(request, principal, store, "UploadPart", bucket, key)
        return web.Response(headers={"ETag": etag})

    async def _complete(
        self, request: web.Request, principal: Principal, bucket: str, key: str
    ) -> web.Response:
        store = self._allowed(request, principal, "s3:PutObject", bucket, key)
        document = responses.parse(await request.read(), "CompleteMultipartUpload")
        parts = []
        for part in document.findall("Part"):
            try:
                parts.append((int(part.findtext("PartNumber") or ""), part.findtext("ETag") or ""))
            except ValueError as exc:
                raise S3Error(400, "MalformedXML", "A PartNumber is not a number.") from exc
        etag = await self._objects.complete(store, request.query["uploadId"], bucket, key, parts)
        await self._record(request, principal, store, "CompleteMultipartUpload", bucket, key)
        location = f"{request.scheme}://{request.host}/{bucket}/{key}"
        return responses.multipart_completed(location, bucket, key, etag)

    # authorization and records -------------------------------------------------------------

    def _allowed(
        self, request: web.Request, principal: Principal, action: str, bucket: str, key: str = ""
    ) -> Store:
        """The bucket's store, once ``action`` on the bucket (or the object) is allowed."""
        hashed = bucket.startswith(HASHED_PREFIX)
        name = server_of(bucket, (n for n, _ in self._servers()) if hashed else ())
        server = self._server(name) if name else None
        arn = object_arn(bucket, key) if key else bucket_arn(bucket)
        target = Target(arn, server.tags if server else ())
        self._check(request, principal, action, target, OBJECT_TYPE if key else BUCKET_TYPE)
        if server is None or name is None:
            raise S3Error(
                404, "NoSuchBucket", "The specified bucket does not exist", BucketName=bucket
            )
        return Store(server.id, name, store_folder(server.artifact_store_uri), server.tags)

    def _check(
        self, request: web.Request, principal: Principal, action: str, target: Target, kind: str
    ) -> None:
        facts = RequestFacts(
            source_ip=request.remote,
            secure_transport=request.secure,
            resource_tags=target.tags,
        )
        result = self._pipeline.decide(principal, Check(action, target, kind), facts)
        if not result.allowed:
            raise S3Error(
                403, "AccessDenied", denial_message(principal, action, target.arn, result)
            )

    async def _record(
        self,
        request: web.Request,
        principal: Principal,
        store: Store,
        operation: str,
        bucket: str,
        key: str,
    ) -> None:
        """The write's data event, stored before it is acknowledged."""
        if not data_events_on(store.tags):
            return
        event = DataEvent(
            principal=principal,
            action=f"s3:{operation}",
            resource=object_arn(bucket, key),
            time=time.time(),
            source_ip=request.remote,
            user_agent=request.headers.get("User-Agent", ""),
            request_id=str(uuid.uuid4()),
            parameters={"bucketName": bucket, "key": key, "Host": request.host},
            status=200,
            source=EVENT_SOURCE,
            resource_type=OBJECT_TYPE,
        )
        try:
            await self._trail.record_data_event(event)
        except Exception as exc:
            if storage_full(exc) or database_unavailable(exc):
                raise S3Error(
                    503,
                    "ServiceUnavailable",
                    "The write was done but its audit record could not be stored: retry.",
                ) from exc
            raise


def _not_allowed(method: str) -> S3Error:
    return S3Error(
        405,
        "MethodNotAllowed",
        "The specified method is not allowed against this resource.",
        Method=method,
    )


def _incomplete_body() -> S3Error:
    return S3Error(400, "IncompleteBody", "The aws-chunked body is malformed.")


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _untoken(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except ValueError as exc:
        raise S3Error(
            400, "InvalidArgument", "The continuation token provided is incorrect"
        ) from exc
