"""S3's XML answers (restXml), and its error document.

Only the elements botocore and the AWS CLI read are written; names and order follow the S3 API
reference.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote
from xml.etree import ElementTree

from aiohttp import web

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"


class S3Error(Exception):
    """A refusal, answered as S3's ``<Error>`` document with ``status``."""

    def __init__(self, status: int, code: str, message: str, **details: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # seconds since the epoch


def error_response(error: S3Error, resource: str, head: bool = False) -> web.Response:
    root = ElementTree.Element("Error")
    _text(root, "Code", error.code)
    _text(root, "Message", error.message)
    for name, value in error.details.items():
        _text(root, name, value)
    _text(root, "Resource", resource)
    request_id = uuid.uuid4().hex[:16].upper()
    _text(root, "RequestId", request_id)
    headers = {"x-amz-request-id": request_id}
    if error.status == 503:
        headers["Retry-After"] = "1"
    # A HEAD answer has no body: botocore then reads the code from the status alone.
    return web.Response(
        status=error.status,
        headers=headers,
        body=None if head else _document(root),
        content_type="application/xml",
    )


def xml_response(root: ElementTree.Element, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_document(root), content_type="application/xml")


def list_buckets(buckets: Sequence[tuple[str, float]], owner: str) -> web.Response:
    root = _root("ListAllMyBucketsResult")
    owner_element = ElementTree.SubElement(root, "Owner")
    _text(owner_element, "ID", owner)
    listed = ElementTree.SubElement(root, "Buckets")
    for name, created in buckets:
        bucket = ElementTree.SubElement(listed, "Bucket")
        _text(bucket, "Name", name)
        _text(bucket, "CreationDate", iso(created))
    return xml_response(root)


def bucket_location(region: str) -> web.Response:
    root = _root("LocationConstraint")
    # us-east-1 is written as an empty constraint, as S3 does.
    root.text = None if region == "us-east-1" else region
    return xml_response(root)


@dataclass(frozen=True)
class Listing:
    bucket: str
    prefix: str
    delimiter: str
    max_keys: int
    contents: Sequence[ObjectInfo]
    common_prefixes: Sequence[str]
    truncated: bool
    url_encoded: bool
    # V2: the token asked with and the one to go on with; V1: the marker and the next one.
    version: int
    start: str
    next_start: str
    start_after: str = ""


def list_objects(listing: Listing) -> web.Response:
    encode = (lambda text: quote(text, safe="/")) if listing.url_encoded else (lambda t: t)
    root = _root("ListBucketResult")
    _text(root, "Name", listing.bucket)
    _text(root, "Prefix", encode(listing.prefix))
    if listing.version == 2:
        if listing.start:
            _text(root, "ContinuationToken", listing.start)
        if listing.start_after:
            _text(root, "StartAfter", encode(listing.start_after))
        _text(root, "KeyCount", str(len(listing.contents) + len(listing.common_prefixes)))
    else:
        _text(root, "Marker", encode(listing.start))
    _text(root, "MaxKeys", str(listing.max_keys))
    if listing.delimiter:
        _text(root, "Delimiter", encode(listing.delimiter))
    if listing.url_encoded:
        _text(root, "EncodingType", "url")
    _text(root, "IsTruncated", "true" if listing.truncated else "false")
    if listing.truncated:
        _text(
            root,
            "NextContinuationToken" if listing.version == 2 else "NextMarker",
            listing.next_start if listing.version == 2 else encode(listing.next_start),
        )
    for item in listing.contents:
        contents = ElementTree.SubElement(root, "Contents")
        _text(contents, "Key", encode(item.key))
        _text(contents, "LastModified", iso(item.modified))
        _text(contents, "Size", str(item.size))
        _text(contents, "StorageClass", "STANDARD")
    for prefix in listing.common_prefixes:
        common = ElementTree.SubElement(root, "CommonPrefixes")
        _text(common, "Prefix", encode(prefix))
    return xml_response(root)


def multipart_created(bucket: str, key: str, upload_id: str) -> web.Response:
    root = _root("InitiateMultipartUploadResult")
    _text(root, "Bucket", bucket)
    _text(root, "Key", key)
    _text(root, "UploadId", upload_id)
    return xml_response(root)


def multipart_completed(location: str, bucket: str, key: str, etag: str) -> web.Response:
    root = _root("CompleteMultipartUploadResult")
    _text(root, "Location", location)
    _text(root, "Bucket", bucket)
    _text(root, "Key", key)
    _text(root, "ETag", etag)
    return xml_response(root)


def deleted(
    keys: Iterable[str], errors: Iterable[tuple[str, S3Error]], quiet: bool
) -> web.Response:
    root = _root("DeleteResult")
    if not quiet:
        for key in keys:
            _text(ElementTree.SubElement(root, "Deleted"), "Key", key)
    for key, error in errors:
        element = ElementTree.SubElement(root, "Error")
        _text(element, "Key", key)
        _text(element, "Code", error.code)
        _text(element, "Message", error.message)
    return xml_response(root)


def parse(body: bytes, root_name: str) -> ElementTree.Element:
    """A request's XML document (namespace dropped), or MalformedXML."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise S3Error(400, "MalformedXML", "The XML you provided was not well-formed.") from exc
    for element in root.iter():
        element.tag = element.tag.rpartition("}")[2]
    if root.tag != root_name:
        raise S3Error(400, "MalformedXML", f"Expected a {root_name} document.")
    return root


def http_date(moment: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(moment))


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _root(name: str) -> ElementTree.Element:
    return ElementTree.Element(name, xmlns=NAMESPACE)


def _text(parent: ElementTree.Element, name: str, value: str) -> None:
    ElementTree.SubElement(parent, name).text = value


def _document(root: ElementTree.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root)
