"""The AWS JSON (1.0/1.1) protocol, server side, driven by botocore's service models.

Requests are routed by ``X-Amz-Target``, type-checked and validated against the operation's input
shape the way AWS's own front end does it (same error codes, same message wording), and answers
are serialized from the output shape. Nothing here is specific to one service.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import botocore.session
import regex
from botocore.model import OperationModel, ServiceModel, Shape

from mlfleet.protocol import jsontext
from mlfleet.protocol.errors import (
    SerializationException,
    UnknownOperationException,
    ValidationException,
)

log = logging.getLogger(__name__)

_AGGREGATES = frozenset({"structure", "list", "map"})
_INT_RANGES = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
# JSON floats cannot carry these, so botocore's serializer sends them as strings.
_SPECIAL_FLOATS = frozenset({"NaN", "Infinity", "-Infinity"})
# Python's json module pairs escaped surrogates that form a character; these are left over.
_LONE_SURROGATE = regex.compile(r"[\ud800-\udfff]")
# Longer values are cut in error messages, which otherwise echo whatever the client sent.
_MAX_SHOWN = 100

# Wording of SerializationException messages, after AWS's "STRING_VALUE can not be converted to an
# Integer".
_JSON_KINDS: dict[type, str] = {
    str: "STRING_VALUE",
    int: "NUMBER_VALUE",
    float: "NUMBER_VALUE",
    bool: "BOOLEAN_VALUE",
    list: "START_ARRAY",
    dict: "START_OBJECT",
    type(None): "NULL_VALUE",
}
_SHAPE_KINDS = {
    "structure": "a Structure",
    "list": "a List",
    "map": "a Map",
    "string": "a String",
    "integer": "an Integer",
    "long": "a Long",
    "float": "a Float",
    "double": "a Double",
    "boolean": "a Boolean",
    "timestamp": "a Timestamp",
    "blob": "a Blob",
}

# Model patterns are Java regexes. The `regex` module reads most of them as they are; these are
# the exceptions: UTF-16 surrogate pairs (Java matches them as one code point), \x{...}, and
# \p{...} names that are Java-only or that `regex` reads as Unicode where Java means ASCII.
_JAVA_SYNTAX = regex.compile(
    r"\\u(?P<high>[dD][89abAB][0-9a-fA-F]{2})\\u(?P<low>[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|\\x\{(?P<hex>[0-9a-fA-F]+)\}"
    r"|\\p\{(?P<prop>\w+)\}"
    r"|\\.|\[|\]"
)
_JAVA_CLASSES = {
    "Lower": "a-z",
    "Upper": "A-Z",
    "Alpha": "a-zA-Z",
    "Digit": "0-9",
    "Alnum": "a-zA-Z0-9",
    "XDigit": "0-9a-fA-F",
    "Punct": r"!-/:-@\[-`{-~",
    "Graph": "!-~",
    "Print": " -~",
    "Blank": r" \t",
    "Space": r" \t\n\x0B\f\r",
    "Cntrl": r"\x00-\x1F\x7F",
    "LD": r"\p{L}\p{Nd}",
    "all": r"\x00-\U0010FFFF",
}

PatternOverrides = Mapping[str, Callable[[str], bool]]


# mlfleet's own service model (operations SageMaker has no word for: backups, restores), in
# botocore's layout, so that botocore and boto3 load it as they load AWS's: clients find it
# through AWS_DATA_PATH (``with_mlfleet_models``).
MODELS_DIR = Path(__file__).with_name("models")


def with_mlfleet_models(session: botocore.session.Session) -> botocore.session.Session:
    """``session``, its loader also reading mlfleet's service model."""
    loader = session.get_component("data_loader")
    if str(MODELS_DIR) not in loader.search_paths:
        loader.search_paths.insert(0, str(MODELS_DIR))
    return session


@functools.cache
def load_service_model(service_name: str, api_version: str | None = None) -> ServiceModel:
    session = with_mlfleet_models(botocore.session.get_session())
    return session.get_service_model(service_name, api_version)


class JsonProtocol:
    """One service's side of the protocol; `pattern_overrides` as for :class:`InputValidator`."""

    def __init__(
        self, service_model: ServiceModel, pattern_overrides: PatternOverrides | None = None
    ) -> None:
        metadata = service_model.metadata
        if "json" not in metadata.get("protocols", [metadata["protocol"]]):
            raise ValueError(f"{service_model.service_name} does not speak the AWS JSON protocol")
        self.service_model = service_model
        self._target_prefix = metadata["targetPrefix"]
        self._operation_names = frozenset(service_model.operation_names)
        self._validator = InputValidator(pattern_overrides)

    def operation_for_target(self, target: str | None) -> OperationModel:
        prefix, _, name = (target or "").rpartition(".")
        if prefix != self._target_prefix or name not in self._operation_names:
            raise UnknownOperationException(
                f"Unknown operation: {target}" if target else "Missing X-Amz-Target header"
            )
        return self.service_model.operation_model(name)

    def parse_input(self, operation: OperationModel, body: bytes) -> dict[str, Any]:
        try:
            document = jsontext.loads(body) if body.strip() else {}
        except ValueError as exc:
            raise SerializationException(f"Request body is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise SerializationException("Request body must be a JSON object")
        return self.validate_input(operation, document)

    def operation_named(self, name: str) -> OperationModel:
        return self.operation_for_target(f"{self._target_prefix}.{name}")

    def validate_input(self, operation: OperationModel, document: dict[str, Any]) -> dict[str, Any]:
        shape = operation.input_shape
        if shape is None:
            return {}
        return self._validator.validate(shape, document)

    def serialize_output(self, operation: OperationModel, data: Mapping[str, Any]) -> bytes:
        return json.dumps(_dump(operation.output_shape, data), separators=(",", ":")).encode()


class InputValidator:
    """Type-checks and validates a request decoded into JSON types against an input shape.

    `pattern_overrides` maps a shape name to a predicate that accepts values the model's pattern
    rejects: mlfleet takes file:///... wherever SageMaker wants an S3Uri. `minimum_overrides`
    maps a number shape's name to the minimum that replaces the model's (a documented setting
    can lower STS's 900-second floor on session durations).
    """

    def __init__(
        self,
        pattern_overrides: PatternOverrides | None = None,
        minimum_overrides: Mapping[str, int] | None = None,
    ) -> None:
        self._pattern_overrides = dict(pattern_overrides or {})
        self._minimums = dict(minimum_overrides or {})

    def validate(self, shape: Shape, document: Any) -> dict[str, Any]:
        """The parameters of `document`, converted; every violated constraint in one error."""
        errors: list[str] = []
        params: dict[str, Any] = self._read(shape, document, "", errors)
        if errors:
            count = len(errors)
            plural = "s" if count > 1 else ""
            raise ValidationException(
                f"{count} validation error{plural} detected: " + "; ".join(errors)
            )
        return params

    def _read(self, shape: Shape, value: Any, path: str, errors: list[str]) -> Any:
        """Type-check and convert `value`, adding constraint violations to `errors`."""
        if shape.metadata.get("document"):
            return value
        kind = shape.type_name
        if kind == "structure":
            return self._read_structure(shape, value, path, errors)
        if kind == "list":
            return self._read_list(shape, value, path, errors)
        if kind == "map":
            return self._read_map(shape, value, path, errors)
        converted, violations = self._read_scalar(shape, value, path)
        errors.extend(_violation(value, path, v) for v in violations)
        return converted

    def _read_structure(
        self, shape: Shape, value: Any, path: str, errors: list[str]
    ) -> dict[str, Any]:
        _expect(value, dict, shape, path)
        params: dict[str, Any] = {}
        for name, member in shape.members.items():
            member_path = f"{path}.{_lower_first(name)}" if path else _lower_first(name)
            raw = value.get(member.serialization.get("name", name))
            if raw is None:
                if name in shape.required_members:
                    errors.append(
                        f"Value null at '{member_path}' failed to satisfy constraint: "
                        "Member must not be null"
                    )
                continue
            params[name] = self._read(member, raw, member_path, errors)
        return params

    def _read_list(self, shape: Shape, value: Any, path: str, errors: list[str]) -> list[Any]:
        _expect(value, list, shape, path)
        errors.extend(_violation(value, path, v) for v in _bounds(shape, len(value), "length"))
        member = shape.member
        if member.type_name in _AGGREGATES:
            return [
                self._read(member, item, f"{path}.{i}.member", errors)
                for i, item in enumerate(value, 1)
            ]
        # AWS reports bad scalar items once, against the whole list.
        items: list[Any] = []
        violations: list[str] = []
        for i, item in enumerate(value, 1):
            converted, item_violations = self._read_scalar(member, item, f"{path}.{i}.member")
            items.append(converted)
            violations += item_violations
        if violations:
            errors.append(_violation(value, path, _nested("Member", violations)))
        return items

    def _read_map(self, shape: Shape, value: Any, path: str, errors: list[str]) -> dict[str, Any]:
        _expect(value, dict, shape, path)
        errors.extend(_violation(value, path, v) for v in _bounds(shape, len(value), "length"))
        scalar_values = shape.value.type_name not in _AGGREGATES
        entries: dict[str, Any] = {}
        key_violations: list[str] = []
        value_violations: list[str] = []
        for key, item in value.items():
            key_violations += self._read_scalar(shape.key, key, path)[1]
            if scalar_values:
                entries[key], item_violations = self._read_scalar(
                    shape.value, item, f"{path}.{key}"
                )
                value_violations += item_violations
            else:
                entries[key] = self._read(shape.value, item, f"{path}.{key}", errors)
        # Like lists of scalars, AWS reports bad keys and values once, against the whole map.
        if key_violations:
            errors.append(_violation(value, path, _nested("Map keys", key_violations)))
        if value_violations:
            errors.append(_violation(value, path, _nested("Map value", value_violations)))
        return entries

    def _read_scalar(self, shape: Shape, value: Any, path: str) -> tuple[Any, list[str]]:
        """The converted value and the constraints it violates ("Member must ...")."""
        kind = shape.type_name
        metadata = shape.metadata
        match kind:
            case "string":
                _expect(value, str, shape, path)
                # JSON's "\ud800" reads as a code point that no UTF-8 store or log can keep.
                if not value.isascii() and _LONE_SURROGATE.search(value):
                    raise SerializationException(
                        "STRING_VALUE with an unpaired surrogate can not be converted to a String "
                        f"at '{path}'"
                    )
                violations = _bounds(shape, len(value), "length")
                pattern = metadata.get("pattern")
                if pattern is not None and not self._matches(shape, pattern, value):
                    violations.append(f"Member must satisfy regular expression pattern: {pattern}")
                enum = metadata.get("enum")
                if enum and value not in enum:
                    violations.append(f"Member must satisfy enum value set: [{', '.join(enum)}]")
                return value, violations
            case "integer" | "long":
                low, high = _INT_RANGES[kind]
                if type(value) is not int or not low <= value <= high:
                    raise _mistyped(value, shape, path)
                return value, _bounds(shape, value, "value", self._minimums.get(shape.name))
            case "float" | "double":
                if type(value) in (int, float) or (type(value) is str and value in _SPECIAL_FLOATS):
                    try:
                        number = float(value)
                    except OverflowError:  # an integer of 309 digits or more
                        raise _mistyped(value, shape, path) from None
                    return number, _bounds(shape, number, "value")
                raise _mistyped(value, shape, path)
            case "boolean":
                _expect(value, bool, shape, path)
                return value, []
            case "timestamp":
                return _to_datetime(value, shape, path), []
            case "blob":
                _expect(value, str, shape, path)
                try:
                    data = base64.b64decode(value, validate=True)
                except binascii.Error:
                    raise _mistyped(value, shape, path) from None
                return data, _bounds(shape, len(data), "length")
        raise ValueError(f"shape {shape.name} has unsupported type {kind}")

    def _matches(self, shape: Shape, pattern: str, value: str) -> bool:
        compiled = _compile_java_pattern(pattern)
        if compiled is None or compiled.fullmatch(value):
            return True
        accept = self._pattern_overrides.get(shape.name)
        return accept is not None and accept(value)


def _expect(value: Any, python_type: type, shape: Shape, path: str) -> None:
    # type() rather than isinstance(): bool is an int subclass, but true is not a number.
    if type(value) is not python_type:
        raise _mistyped(value, shape, path)


def _mistyped(value: Any, shape: Shape, path: str) -> SerializationException:
    kind = _JSON_KINDS.get(type(value), type(value).__name__)
    return SerializationException(
        f"{kind} can not be converted to {_SHAPE_KINDS[shape.type_name]} at '{path}'"
    )


def _to_datetime(value: Any, shape: Shape, path: str) -> datetime:
    try:
        if type(value) in (int, float):
            return datetime.fromtimestamp(value, UTC)
        if type(value) is str:
            parsed = datetime.fromisoformat(value)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise _mistyped(value, shape, path)


def _bounds(shape: Shape, amount: float, what: str, minimum: float | None = None) -> list[str]:
    metadata = shape.metadata
    violations = []
    low = metadata.get("min") if minimum is None else minimum
    if low is not None and amount < low:
        violations.append(f"Member must have {what} greater than or equal to {low}")
    if "max" in metadata and amount > metadata["max"]:
        violations.append(f"Member must have {what} less than or equal to {metadata['max']}")
    return violations


def _nested(subject: str, violations: list[str]) -> str:
    unique = dict.fromkeys(violations)
    return f"{subject} must satisfy constraint: [{', '.join(unique)}]"


def _violation(value: Any, path: str, constraint: str) -> str:
    return f"Value '{_show(value)}' at '{path}' failed to satisfy constraint: {constraint}"


def _show(value: Any) -> str:
    """`value` as AWS's Java front end prints it, cut to a readable length."""
    text = _java_str(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _java_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_java_str(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_java_str(v)}" for k, v in value.items()) + "}"
    return str(value)


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


@functools.cache
def _compile_java_pattern(pattern: str) -> regex.Pattern[str] | None:
    try:
        return regex.compile(_java_to_python(pattern))
    except regex.error:
        # Rejecting valid requests would be worse than not enforcing one pattern.
        log.warning("Model pattern %r has no Python equivalent; not enforcing it", pattern)
        return None


def _java_to_python(pattern: str) -> str:
    class_depth = 0

    def translate(match: regex.Match[str]) -> str:
        nonlocal class_depth
        if match["high"]:
            high, low = int(match["high"], 16), int(match["low"], 16)
            return f"\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08X}"
        if match["hex"]:
            return f"\\U{int(match['hex'], 16):08X}"
        ranges = _JAVA_CLASSES.get(match["prop"] or "")
        if ranges is not None:
            return ranges if class_depth else f"[{ranges}]"
        if match[0] == "[":
            class_depth += 1
        elif match[0] == "]" and class_depth:
            class_depth -= 1
        return match[0]

    return _JAVA_SYNTAX.sub(translate, pattern)


def _dump(shape: Shape | None, value: Any) -> Any:
    """`value` as JSON types, following `shape` where it knows the members."""
    if isinstance(value, Mapping):
        members = shape.members if shape is not None and shape.type_name == "structure" else {}
        entries = shape.value if shape is not None and shape.type_name == "map" else None
        out = {}
        for key, item in value.items():
            if item is None:
                continue
            member = members.get(key)
            if member is None:
                out[key] = _dump(entries, item)
            else:
                out[member.serialization.get("name", key)] = _dump(member, item)
        return out
    if isinstance(value, list | tuple):
        items = shape.member if shape is not None and shape.type_name == "list" else None
        return [_dump(items, item) for item in value]
    if isinstance(value, datetime):
        if shape is not None and shape.serialization.get("timestampFormat") == "iso8601":
            return iso8601(value)
        return _as_utc(value).timestamp()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def iso8601(value: datetime) -> str:
    """`value` in UTC as ISO-8601 with a Z, the way AWS writes timestamps."""
    return _as_utc(value).isoformat().replace("+00:00", "Z")


def _as_utc(value: datetime) -> datetime:
    # A naive datetime means UTC here, never the server's local time.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
