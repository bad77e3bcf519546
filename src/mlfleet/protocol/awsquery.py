"""The AWS query protocol (IAM, STS), server side, driven by botocore's service models.

A request is a form, ``Action=CreateUser&Version=2010-05-08&Tags.member.1.Key=...``: it is put
back together into the document the JSON protocol would have received and checked by the same
:class:`~mlfleet.protocol.awsjson.InputValidator`, so both protocols word their errors alike.
Answers and errors are XML, laid out the way botocore's ``QueryParser`` reads them.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl
from xml.etree import ElementTree

from botocore.model import OperationModel, ServiceModel, Shape

from mlfleet.protocol.awsjson import InputValidator, iso8601
from mlfleet.protocol.errors import AwsError, InvalidAction, ValidationError, ValidationException

# The version AWS names in InvalidAction messages for a request that gives none.
_NO_VERSION = "NO_VERSION_SPECIFIED"
_INTEGERS = frozenset({"integer", "long"})
_FLOATS = frozenset({"float", "double"})
_BOOLEANS = {"true": True, "false": False}
# Characters XML 1.0 cannot carry even escaped; error messages echo whatever the client sent, and
# one of these would make the whole answer unreadable.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def parse_form(body: bytes) -> dict[str, str]:
    """The parameters of a form-encoded request body."""
    form: dict[str, str] = {}
    for name, value in parse_qsl(body.decode(errors="replace"), keep_blank_values=True):
        # Of a repeated parameter AWS takes the first value, Action and Version included.
        form.setdefault(name, value)
    return form


class QueryProtocol:
    """One service's side of the protocol."""

    def __init__(
        self, service_model: ServiceModel, minimum_overrides: Mapping[str, int] | None = None
    ) -> None:
        metadata = service_model.metadata
        if "query" not in metadata.get("protocols", [metadata["protocol"]]):
            raise ValueError(f"{service_model.service_name} does not speak the AWS query protocol")
        self.service_model = service_model
        self._version = metadata["apiVersion"]
        self._namespace = metadata["xmlNamespace"]
        self._operation_names = frozenset(service_model.operation_names)
        self._validator = InputValidator(minimum_overrides=minimum_overrides)
        self._error_statuses: dict[str, int] = {
            shape.error_code: shape.metadata["error"]["httpStatusCode"]
            for shape in service_model.error_shapes
            if "httpStatusCode" in shape.metadata.get("error", {})
        }

    def operation_for(self, form: Mapping[str, str]) -> OperationModel:
        action = form.get("Action", "")
        version = form.get("Version", _NO_VERSION)
        if version != self._version or action not in self._operation_names:
            raise InvalidAction(f"Could not find operation {action} for version {version}")
        return self.service_model.operation_model(action)

    def operation_named(self, name: str) -> OperationModel:
        return self.operation_for({"Action": name, "Version": self._version})

    def parse_input(self, operation: OperationModel, form: Mapping[str, str]) -> dict[str, Any]:
        shape = operation.input_shape
        if shape is None:
            return {}
        return self.validate_input(operation, _FormReader(form).read(shape, "") or {})

    def validate_input(self, operation: OperationModel, document: dict[str, Any]) -> dict[str, Any]:
        shape = operation.input_shape
        if shape is None:
            return {}
        try:
            return self._validator.validate(shape, document)
        except ValidationException as exc:
            # Same check, same message; query services name the error ValidationError.
            raise ValidationError(exc.message) from None

    def serialize_output(
        self, operation: OperationModel, data: Mapping[str, Any], request_id: str
    ) -> bytes:
        root = ElementTree.Element(f"{operation.name}Response", xmlns=self._namespace)
        shape = operation.output_shape
        if shape is not None:
            result = ElementTree.SubElement(root, shape.serialization["resultWrapper"])
            _write_members(result, shape, data)
        _leaf(ElementTree.SubElement(root, "ResponseMetadata"), "RequestId", request_id)
        return ElementTree.tostring(root, encoding="unicode").encode()

    def error_status(self, error: AwsError) -> int:
        """The HTTP status of `error`: the service model's when the code is one of its errors."""
        return self._error_statuses.get(error.code, error.status)

    def error_body(self, error: AwsError, request_id: str) -> bytes:
        root = ElementTree.Element("ErrorResponse", xmlns=self._namespace)
        detail = ElementTree.SubElement(root, "Error")
        # IAM and STS mark exactly their 4xx errors as the sender's fault (senderFault).
        _leaf(detail, "Type", "Sender" if self.error_status(error) < 500 else "Receiver")
        _leaf(detail, "Code", error.code)
        _leaf(detail, "Message", error.message)
        _leaf(root, "RequestId", request_id)
        return ElementTree.tostring(root, encoding="unicode").encode()


class _FormReader:
    """Puts values back together the way botocore's QuerySerializer took them apart."""

    def __init__(self, form: Mapping[str, str]) -> None:
        self._form = form
        # Sorted, the names nested under a key follow `key + "."` at once. (A set of every
        # prefix would cost the square of a name's length: a name of 30,000 dots took 1 s.)
        self._names = sorted(form)

    def _has_members(self, key: str) -> bool:
        """Whether some parameter is nested under `key`, as Tags.member.1.Key is under Tags.

        Absent structures are skipped this way, recursive shapes included.
        """
        prefix = key + "."
        at = bisect.bisect_left(self._names, prefix)
        return at < len(self._names) and self._names[at].startswith(prefix)

    def read(self, shape: Shape, key: str) -> Any:
        """The value under `key`, or None when there is none.

        Values come back as the JSON types InputValidator checks; a string that does not read as
        its shape's type stays a string, for the validator to reject in AWS's words.
        """
        kind = shape.type_name
        if kind == "structure":
            return self._read_structure(shape, key)
        if kind == "list":
            return self._read_list(shape, key)
        if kind == "map":
            return self._read_map(shape, key)
        text = self._form.get(key)
        if text is None:
            return None
        try:
            if kind in _INTEGERS:
                return int(text)
            if kind in _FLOATS:
                return float(text)
        except ValueError:
            return text
        if kind == "boolean":
            return _BOOLEANS.get(text, text)
        # Timestamps (ISO-8601) and blobs (base64) are strings in JSON too.
        return text

    def _read_structure(self, shape: Shape, key: str) -> dict[str, Any] | None:
        if key and not self._has_members(key):
            return None
        members = {}
        for name, member in shape.members.items():
            wire_name = member.serialization.get("name", name)
            value = self.read(member, f"{key}.{wire_name}" if key else wire_name)
            if value is not None:
                # InputValidator, reading JSON, looks members up by their wire names.
                members[wire_name] = value
        return members or None

    def _read_list(self, shape: Shape, key: str) -> list[Any] | None:
        member = shape.member
        if shape.serialization.get("flattened"):
            item_name = member.serialization.get("name")
            # Items named by the member shape replace the list's name: Foo.Bar.1, not Foo.List.1.
            prefix = key if item_name is None else ".".join([*key.split(".")[:-1], item_name])
        else:
            prefix = f"{key}.{member.serialization.get('name', 'member')}"
        items = []
        for index in itertools.count(1):
            item = self.read(member, f"{prefix}.{index}")
            if item is None:
                break
            items.append(item)
        # An empty list is sent as the list's name with an empty value.
        return items if items or self._form.get(key) == "" else None

    def _read_map(self, shape: Shape, key: str) -> dict[str, Any] | None:
        prefix = key if shape.serialization.get("flattened") else f"{key}.entry"
        key_name = shape.key.serialization.get("name", "key")
        value_name = shape.value.serialization.get("name", "value")
        entries = {}
        for index in itertools.count(1):
            entry_key = self._form.get(f"{prefix}.{index}.{key_name}")
            if entry_key is None:
                break
            entries[entry_key] = self.read(shape.value, f"{prefix}.{index}.{value_name}")
        return entries or None


def _write_members(element: ElementTree.Element, shape: Shape, data: Mapping[str, Any]) -> None:
    for name, member in shape.members.items():
        value = data.get(name)
        if value is not None:
            _write(element, member.serialization.get("name", name), member, value)


def _write(parent: ElementTree.Element, tag: str, shape: Shape, value: Any) -> None:
    kind = shape.type_name
    flattened = shape.serialization.get("flattened")
    if kind == "list":
        member = shape.member
        if flattened:
            container, item_tag = parent, member.serialization.get("name", tag)
        else:
            container = ElementTree.SubElement(parent, tag)
            item_tag = member.serialization.get("name", "member")
        for item in value:
            _write(container, item_tag, member, item)
    elif kind == "map":
        key_tag = shape.key.serialization.get("name", "key")
        value_tag = shape.value.serialization.get("name", "value")
        # Flattened, each entry is an element named after the map; otherwise an <entry> in it.
        container = parent if flattened else ElementTree.SubElement(parent, tag)
        for key, item in value.items():
            entry = ElementTree.SubElement(container, tag if flattened else "entry")
            _write(entry, key_tag, shape.key, key)
            _write(entry, value_tag, shape.value, item)
    elif kind == "structure":
        _write_members(ElementTree.SubElement(parent, tag), shape, value)
    elif kind == "boolean":
        _leaf(parent, tag, "true" if value else "false")
    elif kind == "timestamp":
        _leaf(parent, tag, iso8601(value))
    elif kind == "blob":
        _leaf(parent, tag, base64.b64encode(value).decode())
    else:
        _leaf(parent, tag, str(value))


def _leaf(parent: ElementTree.Element, tag: str, text: str) -> None:
    ElementTree.SubElement(parent, tag).text = _NOT_XML.sub("\ufffd", text)
