"""Form values to API parameters and back, driven by the service models."""

from __future__ import annotations

import functools
from typing import Any

from mlfleet.protocol.awsjson import load_service_model
from mlfleet.protocol.errors import ValidationException


@functools.cache
def enum_values(service: str, shape: str) -> tuple[str, ...]:
    """The values the API model allows for an enum shape (a select's options)."""
    return tuple(load_service_model(service).shape_for(shape).enum)


def parse_tags(text: str) -> list[dict[str, str]]:
    """``key=value`` lines into the API's Tags list; the API then validates each one."""
    tags = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValidationException(
                f"Value '{line.strip()}' at 'tags' failed to satisfy constraint: "
                f"line {number} must read key=value",
            )
        tags.append({"Key": key.strip(), "Value": value.strip()})
    return tags


def tags_text(tags: list[dict[str, Any]]) -> str:
    return "\n".join(f"{tag['Key']}={tag.get('Value', '')}" for tag in tags)
