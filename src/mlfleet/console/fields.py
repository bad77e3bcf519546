"""Which form field an API validation message is about, so the page can show it there."""

from __future__ import annotations

import re

from mlfleet.protocol.errors import AwsError

# The protocol's wording: "Value '<v>' at '<member path>' failed to satisfy constraint: <rule>".
_VIOLATION = re.compile(
    r"Value '.*?' at '(?P<path>[^']+)' failed to satisfy constraint: (?P<rule>.*?)"
    r"(?=; Value '|$)",
    re.S,
)


def field_errors(error: AwsError | None) -> dict[str, str]:
    """Violations by top-level member name (``TrackingServerName``), in the API's own words."""
    if error is None:
        return {}
    found: dict[str, str] = {}
    for match in _VIOLATION.finditer(error.message):
        member = re.split(r"[.\[]", match["path"], maxsplit=1)[0]
        name = member[:1].upper() + member[1:]
        rule = match["rule"].strip()
        found[name] = f"{found[name]}; {rule}" if name in found else rule
    return found
