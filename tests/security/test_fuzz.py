"""Hostile input never gets a 5xx: every operation mlfleet implements, fuzzed member by member.

Driven by botocore's service models. The operations fuzzed are those the daemon implements (it
names the others ``... is not implemented by mlfleet``). For each, a baseline input is built from
its input shape with values that satisfy the model's constraints; then, one member at a time
(down to STRUCTURE_DEPTH nested structures), invalid values replace it: the wrong JSON type, too
long, too short, out of range, outside the enum, against the pattern, unicode, control
characters, a lone surrogate, JSON nested far too deep, and valid values at the model's limits;
each operation also gets malformed, deeply nested, oversized and mistyped bodies and headers that
are not UTF-8. Bodies are crafted here and SigV4-signed with the admin's key (boto3 would refuse
them client-side), so they reach the handlers.

Every answer must be below 500 and, if an error, in its protocol's AWS shape: JSON with
``__type`` and ``Message`` (AWS JSON), an XML ``ErrorResponse`` (query), ``x-amzn-ErrorType`` and
a JSON ``message`` (REST-JSON). No answer may take longer than SLOW_SECONDS; afterwards the daemon
still serves and its log holds no traceback.

Mutations are sampled with a seed, printed by the test (``MLFLEET_FUZZ_SEED=<n>`` replays a run;
``MLFLEET_FUZZ_PER_OPERATION`` samples more), to keep the run well under a minute on two cores.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from xml.etree import ElementTree

import botocore.session
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.model import OperationModel, ServiceModel, Shape

from mlfleet.protocol.awsjson import InputValidator
from support.daemon import Daemon

REGION = "us-east-1"
ACCOUNT = "123456789012"
# The fuzzed daemon's max_api_body_bytes: small, so oversized bodies are cheap to send.
BODY_CAP = 256 * 1024
SEED = int(os.environ.get("MLFLEET_FUZZ_SEED", "15"))
PER_OPERATION = int(os.environ.get("MLFLEET_FUZZ_PER_OPERATION", "32"))
# How far into nested structures members are fuzzed: Targets.1.InputTransformer.InputTemplate,
# AuthParameters.BasicAuthParameters.Password.
STRUCTURE_DEPTH = 2
# An answer slower than this to one small request is a denial of service.
SLOW_SECONDS = 5.0
JSON_SERVICES = ("sagemaker", "cloudtrail", "events")
QUERY_SERVICES = ("iam", "sts")
NOT_IMPLEMENTED = "is not implemented by mlfleet"

ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/fuzz-role"
POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)
TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "sts:AssumeRole"}
        ],
    }
)
EVENT = json.dumps(
    {
        "id": "1",
        "source": "fuzz",
        "detail-type": "fuzz",
        "account": ACCOUNT,
        "time": "2024-01-01T00:00:00Z",
        "region": REGION,
        "resources": [],
        "detail": {},
    }
)
# Values a string member is tried with, first the one its name suggests; the first that passes
# the model's constraints is the baseline.
BY_NAME: list[tuple[str, str]] = [
    ("assumerolepolicydocument", TRUST),
    ("policydocument", POLICY),
    ("eventpattern", '{"source": ["fuzz"]}'),
    ("event", EVENT),
    ("detail", '{"fuzz": 1}'),
    ("input", "{}"),
    ("rolearn", ROLE_ARN),
    ("policyarn", f"arn:aws:iam::{ACCOUNT}:policy/fuzz-policy"),
    ("endpoint", "https://fuzz.invalid/fuzz"),
    ("url", "https://fuzz.invalid/fuzz"),
]
GENERIC = [
    "fuzz-a1",
    "Fuzz",
    "f",
    "1",
    "/",
    "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/fuzz-a1",
    ROLE_ARN,
    "2024-01-01T00:00:00Z",
    "s3://fuzz-bucket/fuzz",
    "fuzz@example.com",
    "a" * 64,
]
# Operations whose valid input would start something slow; they keep one member invalid in a
# way only the handler sees (the first guard that is not the member being fuzzed).
GUARDS: dict[str, list[tuple[str, Any]]] = {
    "CreateMlflowTrackingServer": [
        ("MlflowVersion", "0.0.1"),
        ("ArtifactStoreUri", "ftp://fuzz/not-a-store"),
    ],
}


@dataclass(frozen=True)
class Raw:
    """JSON text put in the body as is: what json.dumps will not write (a lone surrogate,
    NaN, a number past any float, nesting deeper than Python's recursion limit)."""

    text: str


@dataclass(frozen=True)
class Answer:
    what: str
    status: int
    headers: Mapping[str, str]
    body: bytes
    seconds: float


# --- the wire ------------------------------------------------------------------------------------


class Wire:
    """Signed requests with bodies crafted here."""

    def __init__(self, daemon: Daemon) -> None:
        self._url = daemon.url
        self._credentials = Credentials(*daemon.credentials)
        self._http = requests.Session()

    def post(
        self, what: str, service: str, body: bytes, headers: dict[str, str], path: str = "/"
    ) -> Answer:
        request = AWSRequest(method="POST", url=self._url + path, data=body, headers=headers)
        SigV4Auth(self._credentials, service, REGION).add_auth(request)
        response = self._http.post(
            request.url, data=body, headers=dict(request.headers.items()), timeout=120
        )
        return Answer(
            what,
            response.status_code,
            response.headers,
            response.content,
            response.elapsed.total_seconds(),
        )


def json_problem(answer: Answer) -> str | None:
    try:
        document = json.loads(answer.body)
    except ValueError:
        return "error body is not JSON"
    if not (isinstance(document.get("__type"), str) and isinstance(document.get("Message"), str)):
        return "error body lacks __type or Message"
    return None


def query_problem(answer: Answer) -> str | None:
    try:
        root = ElementTree.fromstring(answer.body)
    except ElementTree.ParseError:
        return "error body is not XML"
    namespace = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
    if root.tag != f"{namespace}ErrorResponse":
        return f"error root is {root.tag}"
    code = root.findtext(f"{namespace}Error/{namespace}Code")
    if not code or root.find(f"{namespace}Error/{namespace}Message") is None:
        return "ErrorResponse lacks Code or Message"
    return None


def rest_json_problem(answer: Answer) -> str | None:
    if not answer.headers.get("x-amzn-ErrorType"):
        return "no x-amzn-ErrorType header"
    try:
        document = json.loads(answer.body)
    except ValueError:
        return "error body is not JSON"
    return None if isinstance(document.get("message"), str) else "error body lacks message"


SHAPE_CHECKS: dict[str, Callable[[Answer], str | None]] = {
    "json": json_problem,
    "query": query_problem,
    "rest-json": rest_json_problem,
}


def problem(protocol: str, answer: Answer) -> str | None:
    """What is wrong with an answer to hostile input, or None."""
    if answer.status >= 500:
        found: str | None = f"status {answer.status}"
    elif answer.status >= 400:
        found = SHAPE_CHECKS[protocol](answer)
    else:
        found = None
    if found is None and answer.seconds > SLOW_SECONDS:
        found = f"took {answer.seconds:.1f} s"
    if found is None:
        return None
    return f"{answer.what}: {found}: {answer.body[:300]!r}"


def not_implemented(answer: Answer) -> bool:
    """Whether the answer is mlfleet's refusal of an operation it does not implement."""
    if answer.status != 400:
        return False
    text = answer.body.decode(errors="replace")
    codes = ("UnknownOperationException", "InvalidAction")
    return NOT_IMPLEMENTED in text and any(code in text for code in codes)


# --- values ------------------------------------------------------------------------------------


class Baseline:
    """Values that satisfy the model's constraints, for the members not being fuzzed."""

    def __init__(self) -> None:
        self._validator = InputValidator()

    def valid(self, shape: Shape, value: Any) -> bool:
        try:
            self._validator.validate(shape, value)
        except Exception:
            return False
        return True

    def value(self, shape: Shape, name: str, depth: int = 0) -> Any:
        kind = shape.type_name
        meta = shape.metadata
        if kind == "structure":
            # The depth cap ends recursive shapes.
            return {
                member: self.value(member_shape, member, depth + 1)
                for member, member_shape in shape.members.items()
                if member in shape.required_members and depth < 6
            }
        if kind == "list":
            return [self.value(shape.member, name, depth + 1)] * max(meta.get("min", 1), 1)
        if kind == "map":
            key = self.value(shape.key, "key", depth + 1)
            return {key: self.value(shape.value, name, depth + 1)}
        if kind in ("integer", "long", "float", "double"):
            low = max(1, meta.get("min", 1))
            return min(low, meta.get("max", low))
        if kind == "boolean":
            return False
        if kind == "timestamp":
            return 1700000000
        if kind == "blob":
            return "ZnV6eg=="
        if meta.get("enum"):
            return meta["enum"][0]
        lowered = name.lower()
        named = [value for key, value in BY_NAME if key in lowered]
        for candidate in [*named, *GENERIC]:
            if self.valid(shape, candidate):
                return candidate
        return "a" * max(meta.get("min", 1), 1)

    def edges(self, shape: Shape, good: Any) -> list[tuple[str, Any]]:
        """Valid values at the model's limits: the largest input a handler must take."""
        meta = shape.metadata
        kind = shape.type_name
        low, high = meta.get("min"), meta.get("max")
        found: list[tuple[str, Any]] = []
        if kind == "string" and high is not None and high <= BODY_CAP // 4:
            longest = [("a" * high), ("1" * high), (str(good) * high)[:high]]
            found += [("edge:longest", text) for text in longest]
            found += [("edge:longest-unicode", "é" * high), ("edge:shortest", "a" * (low or 0))]
        elif kind in ("integer", "long", "float", "double"):
            found += [("edge:min", low), ("edge:max", high)]
        elif kind == "list" and high is not None and high <= 1000:
            found.append(("edge:most-items", good * high))
        valid = [(label, v) for label, v in found if v is not None and self.valid(shape, v)]
        # One value per edge: the first that the model takes.
        return list(dict(reversed(valid)).items())


WRONG_TYPES: dict[str, list[Any]] = {
    "string": [7, True, [], {}],
    "integer": ["7", True, 1.5, []],
    "long": ["7", True, 1.5, {}],
    "float": ["x", True, {}],
    "double": ["x", False, []],
    "boolean": ["true", 1, []],
    "timestamp": [True, [], "yesterday"],
    "blob": [7, "not base64!"],
    "list": ["x", {}, 7],
    "map": ["x", [], 7],
    "structure": ["x", [], 7],
}
UNICODE = "fuzz-ünï-名前-🙂"
CONTROL = "fuzz\x00\x01\x1b\x7f\n\t"
BAD_PATTERN = "  bad pattern !#%&*?/\\ "
# Long runs of what patterns repeat, ending in what they refuse: backtracking bait.
HUGE = "a-" * (BODY_CAP // 8) + "!"


# Sent as latin-1, so not UTF-8: signed (X-Fuzz), and only recorded (User-Agent).
HOSTILE_HEADERS = {
    "signed-header-latin-1": {"X-Fuzz": "caf\xe9"},
    "user-agent-latin-1": {"User-Agent": "caf\xe9"},
}


def nested_arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def mutations(shape: Shape, good: Any) -> list[tuple[str, Any]]:
    """Invalid (or merely hostile) values for a member of AWS JSON input."""
    kind = shape.type_name
    meta = shape.metadata
    found = [(f"type:{type(v).__name__}", v) for v in WRONG_TYPES[kind]]
    low, high = meta.get("min"), meta.get("max")
    if kind == "string":
        found += [
            ("unicode", UNICODE),
            ("control", CONTROL),
            ("pattern", BAD_PATTERN),
            ("huge", HUGE),
            ("surrogate", Raw('"fuzz\\ud800"')),
            ("json-text-nested", nested_arrays(min(high or BODY_CAP, BODY_CAP // 2) // 2)),
        ]
        if high is not None and high < BODY_CAP:
            found.append(("too-long", "a" * (high + 1)))
        if low:
            found.append(("too-short", "a" * (low - 1)))
        if meta.get("enum"):
            found.append(("enum", "NOT_AN_ENUM_VALUE"))
    elif kind in ("integer", "long", "float", "double"):
        found += [
            ("int32-overflow", 2**31),
            ("int64-overflow", 2**63),
            ("int64-underflow", -(2**63) - 1),
            ("bignum", Raw("1" + "0" * 400)),
            ("nan", Raw("NaN")),
            ("infinity", Raw("1e999")),
            ("negative", -1),
            ("fraction", 0.5),
        ]
        if low is not None:
            found.append(("below-min", low - 1))
        if high is not None:
            found.append(("above-max", high + 1))
    elif kind == "timestamp":
        found += [
            ("far-future", 1e300),
            ("far-past", -1e15),
            ("bad-date", "2024-13-45T25:61:61Z"),
            ("year-zero", "0000-01-01T00:00:00Z"),
            ("nan", Raw("NaN")),
        ]
    elif kind == "blob":
        found += [("empty", ""), ("huge", "QUFB" * (BODY_CAP // 8))]
    elif kind == "list":
        item = good[0] if good else None
        count = high + 1 if high is not None and high < 1000 else 1000
        found += [
            ("empty", []),
            ("too-many", [item] * count),
            ("null-item", [None]),
            ("wrong-item", [{"x": [1]}] if shape.member.type_name != "structure" else ["x"]),
            ("nested", Raw(nested_arrays(1000))),
        ]
    elif kind == "map":
        value = next(iter(good.values()), None) if good else None
        count = high + 1 if high is not None and high < 1000 else 1000
        found += [
            ("empty", {}),
            ("bad-keys", {"": value, CONTROL: value, "k" * 2000: value}),
            ("too-many", {f"k{i}": value for i in range(count)}),
            ("wrong-value", {"k": {"x": [1]}}),
            ("nested", Raw(nested_objects(1000))),
        ]
    elif kind == "structure":
        found += [
            ("empty", {}),
            ("unknown-member", {**(good or {}), "NotAMember": {"a": [1]}}),
            ("nested", Raw(nested_objects(1000))),
        ]
    return found


def query_mutations(shape: Shape, good: Any) -> list[tuple[str, Any]]:
    """Invalid values for a member of query input, where every value is text."""
    kind = shape.type_name
    if kind in ("structure", "list", "map"):
        # A value where a structure or list belongs, and the JSON protocol's aggregate cases.
        json_cases = mutations(shape, good)
        return [("scalar", "x"), *[(label, v) for label, v in json_cases if not isinstance(v, Raw)]]
    texts = [
        ("unicode", UNICODE),
        ("control", CONTROL),
        ("pattern", BAD_PATTERN),
        ("huge", HUGE),
        ("empty", ""),
        ("not-a-number", "1e999"),
        ("bignum", "9" * 400),
        ("nan", "NaN"),
        ("bool-ish", "TRUE"),
        (
            "json-text-nested",
            nested_arrays(min(shape.metadata.get("max") or BODY_CAP, BODY_CAP // 6) // 2),
        ),
    ]
    high = shape.metadata.get("max")
    if kind == "string" and high is not None and high < BODY_CAP:
        texts.append(("too-long", "a" * (high + 1)))
    return texts


def to_json(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


def to_form(value: Any, prefix: str, into: list[tuple[str, str]]) -> None:
    """`value` as the query protocol's parameters, laid out by its own JSON type (so a list
    where a string belongs is sent as a list)."""
    if isinstance(value, dict):
        for key, item in value.items():
            to_form(item, f"{prefix}.{key}" if prefix else key, into)
    elif isinstance(value, list):
        if not value:
            into.append((prefix, ""))
        for index, item in enumerate(value, 1):
            to_form(item, f"{prefix}.member.{index}", into)
    elif isinstance(value, bool):
        into.append((prefix, "true" if value else "false"))
    elif value is not None:
        into.append((prefix, str(value)))


def member_paths(shape: Shape, depth: int = 0) -> Iterator[tuple[tuple[str | int, ...], Shape]]:
    """Every member to fuzz: the input's own, and those up to STRUCTURE_DEPTH structures (or
    list items) down."""
    for name, member in shape.members.items():
        yield (name,), member
        inner = member.member if member.type_name == "list" else member
        if depth < STRUCTURE_DEPTH and inner.type_name == "structure":
            at: tuple[str | int, ...] = (name, 0) if member.type_name == "list" else (name,)
            for sub, sub_shape in member_paths(inner, depth + 1):
                yield (*at, *sub), sub_shape


def with_value(
    baseline: Baseline,
    shape: Shape,
    document: dict[str, Any],
    path: tuple[str | int, ...],
    value: Any,
) -> dict[str, Any]:
    """A copy of `document` with `value` at `path`, valid parents made where there were none."""
    result = copy.deepcopy(document)
    node: Any = result
    current = shape
    for step in path[:-1]:
        if isinstance(step, int):
            current = current.member
            if not node:
                node.append(baseline.value(current, "item"))
            node = node[step]
        else:
            current = current.members[step]
            if step not in node:
                node[step] = baseline.value(current, step)
            node = node[step]
    node[path[-1]] = value
    return result


# --- the cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    service: str
    protocol: str
    model: OperationModel


class Fuzzer:
    def __init__(self, daemon: Daemon, rng: random.Random) -> None:
        self.wire = Wire(daemon)
        self.baseline = Baseline()
        self.rng = rng
        self.sent = 0
        self.problems: list[str] = []
        self.session = botocore.session.get_session()

    def check(self, protocol: str, answer: Answer) -> Answer:
        self.sent += 1
        found = problem(protocol, answer)
        if found is not None:
            self.problems.append(found)
        return answer

    # AWS JSON

    def send_json(
        self,
        model: ServiceModel,
        operation: str,
        body: bytes,
        what: str,
        content_type: str | None = "application/x-amz-json-1.1",
        extra: dict[str, str] | None = None,
    ) -> Answer:
        headers = {"X-Amz-Target": f"{model.metadata['targetPrefix']}.{operation}", **(extra or {})}
        if content_type is not None:
            headers["Content-Type"] = content_type
        answer = self.wire.post(what, model.service_name, body, headers)
        return self.check("json", answer)

    # query

    def send_query(
        self,
        model: ServiceModel,
        params: list[tuple[str, str]] | bytes,
        what: str,
        content_type: str = "application/x-www-form-urlencoded; charset=utf-8",
        extra: dict[str, str] | None = None,
    ) -> Answer:
        body = params if isinstance(params, bytes) else urlencode(params).encode()
        headers = {"Content-Type": content_type, **(extra or {})}
        answer = self.wire.post(what, model.service_name, body, headers)
        return self.check("query", answer)

    def query_form(
        self, model: ServiceModel, operation: str, document: Any
    ) -> list[tuple[str, str]]:
        form = [("Action", operation), ("Version", model.metadata["apiVersion"])]
        to_form(document, "", form)
        return form

    # implemented operations

    def implemented(self) -> list[Operation]:
        found = []
        for service in JSON_SERVICES:
            model = self.session.get_service_model(service)
            for name in model.operation_names:
                answer = self.send_json(model, name, b"{}", f"{service}.{name} probe")
                if not not_implemented(answer):
                    found.append(Operation(service, "json", model.operation_model(name)))
        for service in QUERY_SERVICES:
            model = self.session.get_service_model(service)
            for name in model.operation_names:
                form = self.query_form(model, name, {})
                answer = self.send_query(model, form, f"{service}.{name} probe")
                if not not_implemented(answer):
                    found.append(Operation(service, "query", model.operation_model(name)))
        return found

    def guarded(self, operation: OperationModel, document: dict[str, Any], fuzzed: str) -> None:
        for member, value in GUARDS.get(operation.name, []):
            if member != fuzzed:
                document[member] = value
                return

    def fuzz_members(self, operation: Operation) -> None:
        model = operation.model
        shape = model.input_shape
        if shape is None:
            return
        base = self.baseline.value(shape, model.name)
        cases = []
        for path, member in member_paths(shape):
            good = self.baseline.value(member, str(path[-1]))
            made = (
                mutations(member, good)
                if operation.protocol == "json"
                else query_mutations(member, good)
            ) + self.baseline.edges(member, good)
            cases += [(path, label, value) for label, value in made]
        for path, label, value in self.rng.sample(cases, min(PER_OPERATION, len(cases))):
            document = with_value(self.baseline, shape, base, path, value)
            self.guarded(model, document, str(path[0]))
            what = f"{operation.service}.{model.name} {'.'.join(map(str, path))} {label}"
            service_model = model.service_model
            if operation.protocol == "json":
                self.send_json(service_model, model.name, to_json(document).encode(), what)
            else:
                self.send_query(
                    service_model, self.query_form(service_model, model.name, document), what
                )

    def fuzz_bodies(self, operation: Operation) -> None:
        """Whole bodies that are not what the protocol reads."""
        model = operation.model
        service_model = model.service_model
        name = f"{operation.service}.{model.name}"
        over_cap = b"{" + b" " * BODY_CAP + b"}"
        if operation.protocol == "json":
            bodies = {
                "malformed": b'{"a": ',
                "array": b"[]",
                "string": b'"x"',
                "nested-100000": ('{"a":' + nested_arrays(100_000) + "}").encode(),
                "invalid-utf8": b'{"a": "\xff\xfe"}',
                "over-cap": over_cap,
                "utf16": '{"a": 1}'.encode("utf-16"),
            }
            for label, body in bodies.items():
                self.send_json(service_model, model.name, body, f"{name} body {label}")
            for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
                self.send_json(
                    service_model,
                    model.name,
                    b"{}",
                    f"{name} content-type {content_type}",
                    content_type=content_type,
                )
            for label, extra in HOSTILE_HEADERS.items():
                self.send_json(service_model, model.name, b"{}", f"{name} {label}", extra=extra)
        else:
            version = service_model.metadata["apiVersion"]
            head = f"Action={model.name}&Version={version}".encode()
            bodies = {
                "bad-percent": head + b"&UserName=%ZZ%&%",
                "invalid-utf8": head + b"&UserName=%FF%FE",
                "dots": head + b"&" + b"." * (BODY_CAP // 2) + b"=1",
                "many-params": head + b"".join(b"&P%d=1" % i for i in range(20_000)),
                "huge-index": head + b"&Tags.member.99999999999999999999.Key=k",
                "over-cap": head + b"&X=" + b"x" * BODY_CAP,
                "json": b'{"Action": "%s"}' % model.name.encode(),
            }
            for label, body in bodies.items():
                self.send_query(service_model, body, f"{name} body {label}")
            for content_type in ("application/json", "text/plain"):
                self.send_query(
                    service_model, head, f"{name} content-type {content_type}", content_type
                )
            for label, extra in HOSTILE_HEADERS.items():
                self.send_query(service_model, head, f"{name} {label}", extra=extra)


def invoke_endpoint_cases(fuzzer: Fuzzer) -> None:
    """sagemaker-runtime's InvokeEndpoint (REST-JSON): the name in the path, the headers, the
    body. No endpoint is deployed (that would start a model server), so each call is refused
    after authentication, authorization and the lookup."""
    model = fuzzer.session.get_service_model("sagemaker-runtime").operation_model("InvokeEndpoint")
    members = model.input_shape.members

    def invoke(what: str, name: str, body: bytes, headers: dict[str, str]) -> None:
        path = f"/endpoints/{quote(name, safe='')}/invocations"
        answer = fuzzer.wire.post(f"InvokeEndpoint {what}", "sagemaker", body, headers, path)
        fuzzer.check("rest-json", answer)

    json_type = {"Content-Type": "application/json"}
    for label, value in mutations(members["EndpointName"], "fuzz"):
        if isinstance(value, str):
            invoke(f"EndpointName {label}", value[:2000], b"{}", json_type)
    for member in members.values():
        header = member.serialization.get("name")
        if member.serialization.get("location") != "header":
            continue
        high = member.metadata.get("max", 64)
        for label, value in [
            ("too-long", "a" * (high + 1)),
            ("pattern", BAD_PATTERN.strip()),
            ("latin-1", "caf\xe9"),
            ("empty", ""),
        ]:
            invoke(f"{header} {label}", "fuzz", b"{}", {**json_type, header: value})
    for label, body in {
        "nested-100000": nested_arrays(100_000).encode(),
        "invalid-utf8": b"\xff\xfe",
        "over-cap": b"x" * (BODY_CAP + 1),
        "empty": b"",
    }.items():
        invoke(f"body {label}", "fuzz", body, json_type)


# --- the tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon of its own: hostile traffic, and its log read for tracebacks, stay here."""
    data_dir = tmp_path_factory.mktemp("fuzzed")
    (data_dir / "mlfleet.toml").write_text(f"max_api_body_bytes = {BODY_CAP}\n")
    daemon = Daemon(data_dir).start()
    yield daemon
    daemon.stop()


def logs(daemon: Daemon) -> dict[Path, str]:
    names = ("mlfleet.log", "daemon.out")
    return {daemon.data_dir / n: (daemon.data_dir / n).read_text(errors="replace") for n in names}


def assert_still_serving(daemon: Daemon) -> None:
    assert requests.get(f"{daemon.url}/health", timeout=5).status_code == 200
    for path, text in logs(daemon).items():
        assert "Traceback" not in text, f"{path}:\n{text[text.index('Traceback') - 300 :][:4000]}"


def test_every_implemented_operation_answers_hostile_input_with_an_aws_shaped_4xx(
    fuzzed: Daemon,
) -> None:
    print(f"fuzz seed {SEED} (MLFLEET_FUZZ_SEED), {PER_OPERATION} member mutations per operation")
    fuzzer = Fuzzer(fuzzed, random.Random(SEED))
    started = time.monotonic()
    operations = fuzzer.implemented()
    names = {f"{o.service}.{o.model.name}" for o in operations}
    # The probe found what the README says is served (a probe that found nothing fuzzes nothing).
    assert {"sagemaker.CreateMlflowTrackingServer", "iam.CreateUser", "sts.AssumeRole"} <= names
    assert {"events.PutRule", "cloudtrail.LookupEvents", "sagemaker.CreateEndpoint"} <= names
    for operation in operations:
        fuzzer.fuzz_members(operation)
        fuzzer.fuzz_bodies(operation)
    invoke_endpoint_cases(fuzzer)
    print(
        f"{fuzzer.sent} requests to {len(operations)} operations in "
        f"{time.monotonic() - started:.1f} s"
    )
    assert not fuzzer.problems, f"{len(fuzzer.problems)} bad answers:\n" + "\n".join(
        fuzzer.problems[:40]
    )
    # Nothing slow was started by a fuzzed create (see GUARDS).
    servers = fuzzed.client().list_mlflow_tracking_servers()["TrackingServerSummaries"]
    assert servers == []
    assert_still_serving(fuzzed)


def test_json_nested_100000_deep_is_a_serialization_exception(fuzzed: Daemon) -> None:
    wire = Wire(fuzzed)
    body = ('{"TrackingServerName": ' + nested_arrays(100_000) + "}").encode()
    answer = wire.post(
        "nested",
        "sagemaker",
        body,
        {
            "X-Amz-Target": "SageMaker.DescribeMlflowTrackingServer",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    assert answer.status == 400
    assert json.loads(answer.body)["__type"] == "SerializationException"
    assert "nested too deeply" in json.loads(answer.body)["Message"]
    assert_still_serving(fuzzed)


def test_a_body_over_the_cap_is_refused_in_each_protocols_shape(fuzzed: Daemon) -> None:
    wire = Wire(fuzzed)
    too_big = b"x" * (BODY_CAP + 1)
    json_answer = wire.post(
        "json", "sagemaker", too_big, {"X-Amz-Target": "SageMaker.ListMlflowTrackingServers"}
    )
    assert json_answer.status == 413
    assert json_answer.headers["Content-Type"].startswith("application/x-amz-json-1.1")
    assert json.loads(json_answer.body) == {
        "__type": "RequestEntityTooLargeException",
        "Message": f"Request body exceeds the limit of {BODY_CAP} bytes.",
    }

    query_answer = wire.post(
        "query", "iam", too_big, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert query_answer.status == 413
    assert query_answer.headers["Content-Type"].startswith("text/xml")
    root = ElementTree.fromstring(query_answer.body)
    ns = {"iam": "https://iam.amazonaws.com/doc/2010-05-08/"}
    assert root.findtext("iam:Error/iam:Code", namespaces=ns) == "RequestEntityTooLarge"
    assert root.findtext("iam:Error/iam:Type", namespaces=ns) == "Sender"

    rest_answer = wire.post("rest-json", "sagemaker", too_big, {}, "/endpoints/x/invocations")
    assert rest_answer.status == 413
    assert rest_answer.headers["x-amzn-ErrorType"] == "RequestEntityTooLargeException"
    assert "exceeds the limit" in json.loads(rest_answer.body)["message"]
    assert_still_serving(fuzzed)
