"""S3 request bodies as the endpoint streams them on (s3.endpoint.Body): aws-chunked with a
trailing checksum (what botocore sends over HTTPS) decoded, and every declared digest checked
before the last chunk goes on."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import zlib

import pytest
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request

from mlfleet.s3.endpoint import Body
from mlfleet.s3.responses import S3Error

DATA = bytes(range(256)) * 300


def request_with(body: bytes, headers: dict[str, str]) -> Body:
    # What a StreamReader asks of its connection's protocol: nothing here is paused.
    protocol = type(
        "Protocol",
        (),
        {"_reading_paused": False, "pause_reading": _nothing, "resume_reading": _nothing},
    )()
    reader = streams.StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    reader.feed_data(body)
    reader.feed_eof()
    request = make_mocked_request("PUT", "/bucket/key", headers=headers, payload=reader)
    declared = headers.get("x-amz-content-sha256", "")
    sha = declared if len(declared) == 64 else None
    return Body(request, sha, "aws-chunked" in headers.get("Content-Encoding", ""))


def _nothing(*_: object, **__: object) -> None:
    return None


def chunked(data: bytes, size: int, trailer: str) -> bytes:
    parts = [
        f"{len(data[i : i + size]):x}\r\n".encode() + data[i : i + size] + b"\r\n"
        for i in range(0, len(data), size)
    ]
    return b"".join(parts) + b"0\r\n" + trailer.encode() + b"\r\n\r\n"


def crc32_of(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


async def collect(body: Body) -> bytes:
    return b"".join([chunk async for chunk in body.chunks()])


def test_aws_chunked_with_a_trailing_checksum_is_decoded() -> None:
    async def scenario() -> Body:
        encoded = chunked(DATA, 8192, f"x-amz-checksum-crc32:{crc32_of(DATA)}")
        body = request_with(encoded, {"Content-Encoding": "aws-chunked"})
        assert await collect(body) == DATA
        return body

    assert asyncio.run(scenario()).etag == f'"{hashlib.md5(DATA).hexdigest()}"'


def test_a_wrong_trailing_checksum_stops_before_the_last_chunk() -> None:
    passed: list[bytes] = []

    async def scenario() -> None:
        encoded = chunked(DATA, 8192, f"x-amz-checksum-crc32:{crc32_of(b'other')}")
        body = request_with(encoded, {"Content-Encoding": "aws-chunked"})
        async for chunk in body.chunks():
            passed.append(chunk)

    with pytest.raises(S3Error) as refused:
        asyncio.run(scenario())
    assert refused.value.code == "BadDigest"
    assert len(b"".join(passed)) < len(DATA)


def test_a_body_that_is_not_its_signed_hash_is_refused() -> None:
    async def scenario(declared: bytes) -> bytes:
        sha = hashlib.sha256(declared).hexdigest()
        return await collect(request_with(DATA, {"x-amz-content-sha256": sha}))

    with pytest.raises(S3Error) as refused:
        asyncio.run(scenario(b"other"))
    assert refused.value.code == "XAmzContentSHA256Mismatch"
    assert asyncio.run(scenario(DATA)) == DATA
