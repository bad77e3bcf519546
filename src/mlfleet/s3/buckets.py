"""A tracking server's bucket on the S3-compatible endpoint.

A server whose name is already a valid bucket name (3-63 characters, lowercase letters,
digits and hyphens) has a bucket of that name; any other gets ``mlfleet.<16 hex>``, from the
SHA-256 of its name. Server names have no dots, so the two kinds never collide.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

_PLAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]{1,61})[a-z0-9]")
HASHED_PREFIX = "mlfleet."


def bucket_of(server_name: str) -> str:
    if _PLAIN.fullmatch(server_name):
        return server_name
    return HASHED_PREFIX + hashlib.sha256(server_name.encode()).hexdigest()[:16]


def server_of(bucket: str, names: Iterable[str]) -> str | None:
    """The name of the server whose bucket is ``bucket`` (``names``: every server's, read
    only for a hashed bucket name), or None."""
    if not bucket.startswith(HASHED_PREFIX):
        return bucket if _PLAIN.fullmatch(bucket) else None
    return next((name for name in names if bucket_of(name) == bucket), None)


def bucket_arn(bucket: str) -> str:
    return f"arn:aws:s3:::{bucket}"


def object_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"
