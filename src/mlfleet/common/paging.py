"""NextToken for List* operations: an opaque token that carries the offset of the next page."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.protocol import jsontext
from mlfleet.protocol.errors import ValidationException


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def decode_token(token: str | None) -> int:
    """The offset in `token`; 0 for no token; ValidationException for one we did not issue."""
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


def fetch_page(
    sessions: sessionmaker[Session],
    query: Select[Any],
    req: Mapping[str, Any],
    key: str,
    summarize: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """One page of an ordered `query` as a List* answer: ``{key: [...], "NextToken": ...}``,
    MaxResults (default 100) rows from the offset NextToken carries."""
    limit = req.get("MaxResults", 100)
    offset = decode_token(req.get("NextToken"))
    with sessions() as session:
        # One row more than the page tells whether there is a next page.
        rows = session.scalars(query.offset(offset).limit(limit + 1)).all()
        result: dict[str, Any] = {key: [summarize(row) for row in rows[:limit]]}
    if len(rows) > limit:
        result["NextToken"] = encode_token(offset + limit)
    return result
