"""NextToken for List* operations: an opaque token that carries the offset of the next page."""

from __future__ import annotations

import base64
import json

from mlfleet.protocol.errors import ValidationException


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def decode_token(token: str | None) -> int:
    """The offset in `token`; 0 for no token; ValidationException for one we did not issue."""
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
    except (ValueError, KeyError, TypeError):
        offset = None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValidationException(
            f"Invalid NextToken '{token[:64]}': pass a token from a previous call."
        )
    return offset
