"""Paging for List* operations: one way to cut a page, each API's spelling of it on the wire.

A page is the items from a position on, at most a page size of them; its answer carries a token
naming the next page's position when there is a next page. The position is an offset (SageMaker:
rows of a query whose order ends on a unique column), a cursor (CloudTrail: the record number
a page ends before) or a key (EventBridge and IAM: a page starts at the first item whose sort
key is at least the token's, so it stays right when items before it come and go).

Each API reads its own request members, has its own default page size, spells its tokens its own
way and refuses, in its own words, a token it could not have issued: :data:`SAGEMAKER`
(NextToken, MaxResults), :data:`EVENTBRIDGE` (NextToken, Limit), :data:`IAM` (Marker,
MaxItems); CloudTrail's lives with the trail, whose refusal it words. The functions answer
``(page, token)``, the token None on the last page; the caller puts them in its answer under its
API's member names (IAM's answer also says IsTruncated).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.protocol import jsontext
from mlfleet.protocol.errors import ValidationException

P = TypeVar("P")
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Paging(Generic[P]):
    """How one API pages: the request members it reads, its default page size, its tokens."""

    token_member: str
    size_member: str
    default_size: int
    encode: Callable[[P], str]
    # The position a token names; raises the API's refusal for a token it could not have issued.
    decode: Callable[[str], P]

    def size(self, req: Mapping[str, Any]) -> int:
        size: int = req.get(self.size_member, self.default_size)
        return size

    def position(self, req: Mapping[str, Any]) -> P | None:
        """The position the request's token names; None for a request without a token."""
        token: str | None = req.get(self.token_member)
        return None if token is None else self.decode(token)


def page_by_offset(
    items: Sequence[T], req: Mapping[str, Any], paging: Paging[int]
) -> tuple[list[T], str | None]:
    """The page of `items` at the offset the request's token carries (0 without a token)."""
    start = paging.position(req) or 0
    end = start + paging.size(req)
    return list(items[start:end]), paging.encode(end) if end < len(items) else None


def page_by_key(
    items: Sequence[T], req: Mapping[str, Any], paging: Paging[str], key: Callable[[T], str]
) -> tuple[list[T], str | None]:
    """The page of `items` (sorted by `key`) from the first whose key is at least the one the
    request's token names; the next page's token names the key of the item after the page."""
    after = paging.position(req)
    start = 0
    if after is not None:
        start = next((i for i, item in enumerate(items) if key(item) >= after), len(items))
    end = start + paging.size(req)
    return list(items[start:end]), paging.encode(key(items[end])) if end < len(items) else None


def page_of_query(
    sessions: sessionmaker[Session],
    query: Select[Any],
    req: Mapping[str, Any],
    paging: Paging[int],
    summarize: Callable[[Any], R],
) -> tuple[list[R], str | None]:
    """The page of an ordered `query`'s rows at the offset the request's token carries, each
    row summarized (in the session that loaded it)."""
    start = paging.position(req) or 0
    size = paging.size(req)
    with sessions() as session:
        # One row more than the page tells whether there is a next page.
        rows = session.scalars(query.offset(start).limit(size + 1)).all()
        page = [summarize(row) for row in rows[:size]]
    return page, paging.encode(start + size) if len(rows) > size else None


def page_before(
    sessions: sessionmaker[Session],
    query: Select[Any],
    req: Mapping[str, Any],
    paging: Paging[int],
    column: Any,
    summarize: Callable[[Any], R],
) -> tuple[list[R], str | None]:
    """The page of a `query` ordered newest first on the unique integer `column`, from the row
    before the one the request's token names: a cursor, so rows added meanwhile shift no page."""
    before = paging.position(req)
    if before is not None:
        query = query.where(column < before)
    size = paging.size(req)
    with sessions() as session:
        rows = session.scalars(query.limit(size + 1)).all()
        page = [summarize(row) for row in rows[:size]]
        last: int | None = getattr(rows[size - 1], column.key) if len(rows) > size else None
    return page, None if last is None else paging.encode(last)


# --- SageMaker: NextToken carries {"offset": n}, as JSON in URL-safe base64 -----------------------


def _offset_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _offset(token: str) -> int:
    if not token:
        return 0
    try:
        offset = jsontext.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
    except (ValueError, KeyError, TypeError):
        offset = None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValidationException(
            f"Invalid NextToken '{token[:64]}': pass a token from a previous call."
        )
    return offset


SAGEMAKER: Paging[int] = Paging("NextToken", "MaxResults", 100, _offset_token, _offset)


# --- EventBridge: NextToken is the next page's first key, in URL-safe base64 ----------------------


def _key_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _key(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValidationException("The NextToken is not valid.") from None


EVENTBRIDGE: Paging[str] = Paging("NextToken", "Limit", 100, _key_token, _key)


# --- IAM: Marker is the next page's first key itself ----------------------------------------------

IAM: Paging[str] = Paging("Marker", "MaxItems", 100, str, str)
