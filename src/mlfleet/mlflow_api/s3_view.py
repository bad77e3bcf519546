"""A tracking server's artifacts as S3 names them: its bucket on the S3-compatible endpoint,
and the view of MLflow's answers that callers through the ARN header get.

A server whose name is already a valid bucket name (3-63 characters, lowercase letters,
digits and hyphens) has a bucket of that name; any other gets ``mlfleet.<16 hex>``, from the
SHA-256 of its name. Server names have no dots, so the two kinds never collide.

MLflow stores proxied locations, ``mlflow-artifacts:/<key>``, which MLflow's client resolves
only against an http tracking URI. A caller with an ARN tracking URI (the sagemaker-mlflow
plugin) is shown ``s3://<bucket>/<key>`` instead, the same object on the S3 endpoint, which
the plugin's S3 artifact repository reaches with the caller's own credentials; what it sends
back is turned into MLflow's form again, so MLflow's records never hold the view. Both turns
are done on the JSON text, for every string that starts with the location (a field, a tag or a
param alike), and ``ToS3View`` does it on a stream cut anywhere.
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


MLFLOW_PREFIX = "mlflow-artifacts:/"
MLFLOW_LOCATION = b'"' + MLFLOW_PREFIX.encode()
# The plugin's presigned-upload call, which the gateway answers itself for an ARN caller (MLflow
# refuses it for proxied locations).
PRESIGNED_UPLOAD_PATH = "/api/2.0/mlflow/artifacts/presigned-upload-url"


def s3_location(bucket: str) -> bytes:
    return b'"s3://' + bucket.encode() + b"/"


def to_s3_view(document: bytes, bucket: str) -> bytes:
    return document.replace(MLFLOW_LOCATION, s3_location(bucket))


def from_s3_view(document: bytes, bucket: str) -> bytes:
    return document.replace(s3_location(bucket), MLFLOW_LOCATION)


class ToS3View:
    """``to_s3_view`` over a stream of chunks: a location cut in two by a chunk's end is
    held back until the next chunk completes it."""

    def __init__(self, bucket: str) -> None:
        self._bucket = bucket
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        text = self._held + chunk
        keep = _partial_suffix(text)
        self._held = text[len(text) - keep :] if keep else b""
        return to_s3_view(text[: len(text) - keep], self._bucket)

    def end(self) -> bytes:
        held, self._held = self._held, b""
        return held


def _partial_suffix(text: bytes) -> int:
    """How many bytes at the end of ``text`` could begin a location the next chunk ends."""
    for size in range(min(len(MLFLOW_LOCATION) - 1, len(text)), 0, -1):
        if MLFLOW_LOCATION.startswith(text[-size:]):
            return size
    return 0
