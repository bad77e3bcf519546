"""JSON text from clients, read with a bound on how deeply it nests.

Python's parser recurses once per level, and so does every later walk over what it returns
(validation messages, the audit trail's serializer, event patterns): a body nested 100,000 deep
ends in RecursionError, and one nested 900 deep parses but breaks whichever walk comes next.
AWS's parsers refuse deep nesting as malformed input; so does :func:`loads`, with a
``JSONDecodeError`` that every caller already answers as the client's error.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Far deeper than any document AWS's APIs take (policies, event patterns and events nest a few
# levels), far below Python's recursion limit of 1000 for the walks over it.
MAX_DEPTH = 100
# Strings are skipped whole (possessively: no backtracking on an unterminated one); brackets in
# them do not nest.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*+"|[\[\]{}]', re.DOTALL)


def loads(text: str | bytes, **options: Any) -> Any:
    """``json.loads`` for client input; nesting deeper than MAX_DEPTH is a JSONDecodeError.

    Bytes must be UTF-8, as every AWS JSON protocol requires (UnicodeDecodeError otherwise,
    a ValueError like JSONDecodeError).
    """
    if isinstance(text, bytes):
        text = text.decode()
    # Fewer opening brackets than the bound cannot nest past it; most documents stop here.
    if text.count("[") + text.count("{") > MAX_DEPTH:
        _check_depth(text)
    return json.loads(text, **options)


def _check_depth(text: str) -> None:
    depth = 0
    for token in _TOKEN.finditer(text):
        bracket = token[0]
        if bracket in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise json.JSONDecodeError(
                    f"JSON nested too deeply (more than {MAX_DEPTH} levels)", text, token.start()
                )
        elif bracket in ("]", "}"):
            depth -= 1
