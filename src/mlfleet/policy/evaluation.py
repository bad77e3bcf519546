"""The AWS IAM policy language for identity-based policies: parsed once, evaluated per request.

:func:`parse_policy` validates a document and compiles every pattern in it to a regex, so that
:func:`evaluate` — which runs on every control-plane call and every MLflow request through the
gateway — only runs precompiled matches. Patterns holding policy variables (``${aws:username}``)
can only be compiled once the request is known; those compilations are cached.

Semantics are IAM's as documented: an explicit Deny beats any Allow, which beats the implicit
deny; condition operators AND together, as do keys within an operator, while the values listed
for one key OR together (NOR for negated operators).
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any, Literal, TypeVar

from mlfleet.protocol.errors import NamedAwsError

# The code of MalformedPolicyDocument (the console places such errors beside the document).
MALFORMED_POLICY = "MalformedPolicyDocument"
VERSIONS = ("2012-10-17", "2008-10-17")
# IAM treats a document without Version as the 2008 grammar, which predates policy variables.
_LEGACY_VERSION = "2008-10-17"
_VARIABLES_VERSION = "2012-10-17"

_POLICY_ELEMENTS = frozenset({"Version", "Id", "Statement"})
_STATEMENT_ELEMENTS = frozenset(
    {
        "Sid",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
    }
)
_TIME_KEYS = ("aws:currenttime", "aws:epochtime")
_SID = re.compile(r"[0-9A-Za-z]*")
_ACTION = re.compile(r"[A-Za-z0-9-]+:[A-Za-z0-9_*?-]+")
_NO_VENDOR = "Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc."
_SID_RULE = (
    "Statement IDs (SID) must be alpha-numeric. "
    "Check that your input satisfies the regular expression [0-9A-Za-z]*"
)
# arn:partition:service:region:account:resource — wildcards stay within the first five
# segments, while the resource segment is free-form and may itself contain colons.
_ARN_RESOURCE_SEGMENT = 5

ContextScalar = str | bool | int | float | datetime | bytes
ContextValue = ContextScalar | list[ContextScalar] | tuple[ContextScalar, ...]
_PolicyScalar = str | bool | int | float
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")


class _Invalid(Exception):
    """Why a statement is malformed; :func:`parse_policy` adds which statement it is."""


class MalformedPolicyDocument(NamedAwsError):
    """IAM's refusal of a policy document (identity or trust policy), saying what is wrong."""


# --- Request side -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a request asks for, and the condition keys that describe it."""

    action: str
    resource: str
    keys: Mapping[str, ContextValue] = field(default_factory=dict)
    folded_keys: dict[str, ContextValue] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Condition keys are case-insensitive: fold them once per request, not once per lookup.
        object.__setattr__(self, "folded_keys", {k.lower(): v for k, v in self.keys.items()})


class Decision(enum.Enum):
    """The values are IAM's EvalDecision strings, as SimulatePrincipalPolicy reports them."""

    ALLOW = "allowed"
    EXPLICIT_DENY = "explicitDeny"
    IMPLICIT_DENY = "implicitDeny"


class PolicyKind(enum.Enum):
    """The kind of policy a decision came from; the values are how AWS names it in a refusal."""

    IDENTITY = "identity-based policy"
    BOUNDARY = "permissions boundary"


@dataclass(frozen=True, slots=True)
class EvaluationResult:
    decision: Decision
    # The policy and statement that decided; both None for an implicit deny.
    policy_name: str | None = None
    sid: str | None = None
    kind: PolicyKind = PolicyKind.IDENTITY
    # Whether the principal's permissions boundary allows the action; None when it has none.
    allowed_by_boundary: bool | None = None

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW


# --- Patterns: wildcards and policy variables -------------------------------------------------


class _Wild(enum.Enum):
    ANY = "*"
    ONE = "?"


@dataclass(frozen=True, slots=True)
class _Variable:
    key: str  # folded, like the request's keys
    default: str | None


_Token = str | _Wild | _Variable
_Resolved = tuple[str | _Wild, ...]

_WILDCARD = re.compile(r"(?P<wild>[*?])")
_VARIABLE = re.compile(r"\$\{(?P<var>[^}]*)\}")
# What a pattern's text is scanned for, by (wildcards honoured, variables substituted).
_SPECIAL_SYNTAX: dict[tuple[bool, bool], re.Pattern[str] | None] = {
    (True, True): re.compile(f"{_VARIABLE.pattern}|{_WILDCARD.pattern}"),
    (True, False): _WILDCARD,
    (False, True): _VARIABLE,
    (False, False): None,
}
_VARIABLE_BODY = re.compile(r"([^\s,']+)\s*(?:,\s*'([^']*)')?")
# ${*}, ${?} and ${$} let a policy that uses variables spell those characters literally.
_ESCAPES = frozenset({"*", "?", "$"})


def _tokenize(text: str, *, wildcards: bool, variables: bool) -> tuple[_Token, ...]:
    special = _SPECIAL_SYNTAX[wildcards, variables]
    if special is None:
        return (text,)
    tokens: list[_Token] = []
    position = 0
    for match in special.finditer(text):
        tokens += (text[position : match.start()], _special_token(match))
        position = match.end()
    tokens.append(text[position:])
    return _without_empty(tokens)


def _without_empty(parts: list[_T]) -> tuple[_T, ...]:
    # Empty text would hide from a wildcard what follows it (see _ends_segment).
    return tuple(part for part in parts if part != "")


def _special_token(match: re.Match[str]) -> _Token:
    if match.lastgroup == "wild":
        return _Wild(match["wild"])
    body = match["var"].strip()
    if body in _ESCAPES:
        return body
    parsed = _VARIABLE_BODY.fullmatch(body)
    if parsed is None:
        raise _Invalid(f'"{match[0]}" is not a valid policy variable')
    return _Variable(parsed[1].lower(), parsed[2])


def _resolve(tokens: tuple[_Token, ...], keys: Mapping[str, ContextValue]) -> _Resolved | None:
    """The pattern with this request's values substituted; None when a variable has none."""
    resolved: list[str | _Wild] = []
    for token in tokens:
        value = _variable_value(token, keys) if isinstance(token, _Variable) else token
        if value is None:
            return None
        resolved.append(value)
    return _without_empty(resolved)


def _variable_value(variable: _Variable, keys: Mapping[str, ContextValue]) -> str | None:
    raw = keys.get(variable.key)
    if raw is None or (isinstance(raw, list | tuple) and not raw):
        return variable.default
    # A multivalued key cannot stand in for one value, so the entry matches nothing.
    if isinstance(raw, list | tuple):
        return None
    return _as_text(raw)


@lru_cache(maxsize=4096)
def _compile(parts: _Resolved, *, arn: bool = False, ignore_case: bool = False) -> re.Pattern[str]:
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("".join(_translate(parts, arn)), flags)


def _translate(parts: _Resolved, arn: bool) -> Iterator[str]:
    colons = 0
    for index, part in enumerate(parts):
        if isinstance(part, str):
            colons += part.count(":")
            yield re.escape(part)
        elif not arn or colons >= _ARN_RESOURCE_SEGMENT:
            yield ".*" if part is _Wild.ANY else "."
        elif part is _Wild.ONE:
            yield "[^:]"
        else:
            # IAM: a `*` that ends an ARN segment may expand beyond the colons that follow it.
            yield ".*" if _ends_segment(parts, index) else "[^:]*"


def _ends_segment(parts: _Resolved, index: int) -> bool:
    following = parts[index + 1] if index + 1 < len(parts) else ":"
    return isinstance(following, str) and following.startswith(":")


class _Pattern:
    """Policy text to match request values against, compiled at parse time unless it holds
    policy variables, whose values only the request knows."""

    __slots__ = ("_compile", "_static", "_tokens")

    def __init__(
        self, tokens: tuple[_Token, ...], compile_: Callable[[_Resolved], re.Pattern[str]]
    ) -> None:
        self._tokens = tokens
        self._compile = compile_
        fixed = tuple(t for t in tokens if not isinstance(t, _Variable))
        self._static = compile_(fixed) if len(fixed) == len(tokens) else None

    def matches(self, value: str, keys: Mapping[str, ContextValue]) -> bool:
        pattern = self._static
        if pattern is None:
            resolved = _resolve(self._tokens, keys)
            if resolved is None:
                return False
            pattern = self._compile(resolved)
        return pattern.fullmatch(value) is not None


_ACTION_REGEX = partial(_compile, ignore_case=True)
_ARN_REGEX = partial(_compile, arn=True)


# --- Value conversions, shared by the policy side and the request side ------------------------


def _scalar_text(value: _PolicyScalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _as_text(value: ContextScalar) -> str | None:
    if isinstance(value, datetime):
        return _aware(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, bytes):
        return None
    return _scalar_text(value)


def _to_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _to_epoch(value: Any) -> float | None:
    """Seconds since the epoch, from a datetime, epoch seconds or an ISO 8601 string."""
    if isinstance(value, datetime):
        return _aware(value).timestamp()
    number = _to_number(value)
    if number is None and isinstance(value, str):
        try:
            return _aware(datetime.fromisoformat(value)).timestamp()
        except ValueError:
            return None
    return number


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _to_bytes(value: Any) -> bytes | None:
    """Binary values: bytes as they are, strings as base64 (how policies write them)."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _to_address(value: Any) -> _Address | None:
    try:
        return ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _policy_network(value: _PolicyScalar) -> _Network:
    # Only text: ip_network() would also take a JSON number (or boolean) as an address.
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError:
            pass
    raise _not_valid(value, "IP address or CIDR block")


def _policy_value(converted: _T | None, value: _PolicyScalar, kind: str) -> _T:
    """`converted`, the policy's `value` made usable, which it must be for the policy to parse."""
    if converted is None:
        raise _not_valid(value, kind)
    return converted


def _not_valid(value: _PolicyScalar, kind: str) -> _Invalid:
    return _Invalid(f'"{_scalar_text(value)}" is not a valid {kind}')


# --- Condition operators ----------------------------------------------------------------------

# Whether one request value matches any of an operator's policy values.
_ValueTest = Callable[[ContextScalar, Mapping[str, ContextValue]], bool]
# Builds a _ValueTest from the policy values; the flag says whether variables are substituted.
_ValueCompiler = Callable[[tuple[_PolicyScalar, ...], bool], _ValueTest]


def _strings(*, wildcards: bool, ignore_case: bool = False, arn: bool = False) -> _ValueCompiler:
    translate = partial(_compile, arn=arn, ignore_case=ignore_case)

    def compile_values(values: tuple[_PolicyScalar, ...], variables: bool) -> _ValueTest:
        tokenize = partial(_tokenize, wildcards=wildcards, variables=variables)
        patterns = tuple(_Pattern(tokenize(_scalar_text(v)), translate) for v in values)

        def test(value: ContextScalar, keys: Mapping[str, ContextValue]) -> bool:
            text = _as_text(value)
            return text is not None and any(p.matches(text, keys) for p in patterns)

        return test

    return compile_values


def _ordered(
    convert: Callable[[Any], float | None], compare: Callable[[float, float], bool], kind: str
) -> _ValueCompiler:
    def compile_values(values: tuple[_PolicyScalar, ...], variables: bool) -> _ValueTest:
        bounds = tuple(_policy_value(convert(v), v, kind) for v in values)

        def test(value: ContextScalar, keys: Mapping[str, ContextValue]) -> bool:
            converted = convert(value)
            return converted is not None and any(compare(converted, b) for b in bounds)

        return test

    return compile_values


def _membership(convert: Callable[[Any], object | None], kind: str) -> _ValueCompiler:
    def compile_values(values: tuple[_PolicyScalar, ...], variables: bool) -> _ValueTest:
        accepted = frozenset(_policy_value(convert(v), v, kind) for v in values)

        def test(value: ContextScalar, keys: Mapping[str, ContextValue]) -> bool:
            return convert(value) in accepted

        return test

    return compile_values


def _networks(values: tuple[_PolicyScalar, ...], variables: bool) -> _ValueTest:
    networks = tuple(_policy_network(v) for v in values)

    def test(value: ContextScalar, keys: Mapping[str, ContextValue]) -> bool:
        address = _to_address(value)
        # An address is never `in` a network of the other IP version.
        return address is not None and any(address in n for n in networks)

    return test


_STRING_EQUALS = _strings(wildcards=False)
_STRING_EQUALS_IGNORE_CASE = _strings(wildcards=False, ignore_case=True)
_STRING_LIKE = _strings(wildcards=True)
# ArnEquals and ArnLike are the same operator in IAM: both honour wildcards per ARN segment.
_ARN_LIKE = _strings(wildcards=True, arn=True)
_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "Equals": operator.eq,
    "LessThan": operator.lt,
    "LessThanEquals": operator.le,
    "GreaterThan": operator.gt,
    "GreaterThanEquals": operator.ge,
}
_ORDERED_FAMILIES = (("Numeric", _to_number, "number"), ("Date", _to_epoch, "date"))

# Base operator name -> (how its values compile, whether it is negated).
_OPERATORS: dict[str, tuple[_ValueCompiler, bool]] = {
    "StringEquals": (_STRING_EQUALS, False),
    "StringNotEquals": (_STRING_EQUALS, True),
    "StringEqualsIgnoreCase": (_STRING_EQUALS_IGNORE_CASE, False),
    "StringNotEqualsIgnoreCase": (_STRING_EQUALS_IGNORE_CASE, True),
    "StringLike": (_STRING_LIKE, False),
    "StringNotLike": (_STRING_LIKE, True),
    **{
        f"{family}{name}": (_ordered(convert, compare, kind), False)
        for family, convert, kind in _ORDERED_FAMILIES
        for name, compare in _COMPARISONS.items()
    },
    **{
        f"{family}NotEquals": (_ordered(convert, operator.eq, kind), True)
        for family, convert, kind in _ORDERED_FAMILIES
    },
    "Bool": (_membership(_to_bool, "boolean (true or false)"), False),
    "BinaryEquals": (_membership(_to_bytes, "base64 value"), False),
    "IpAddress": (_networks, False),
    "NotIpAddress": (_networks, True),
    "ArnEquals": (_ARN_LIKE, False),
    "ArnLike": (_ARN_LIKE, False),
    "ArnNotEquals": (_ARN_LIKE, True),
    "ArnNotLike": (_ARN_LIKE, True),
}
_SET_QUALIFIERS = ("ForAnyValue", "ForAllValues")


def _values(raw: ContextValue | None) -> tuple[ContextScalar, ...]:
    """A key's values in the request; an empty multivalued key counts as absent."""
    if raw is None:
        return ()
    return tuple(raw) if isinstance(raw, list | tuple) else (raw,)


@dataclass(frozen=True, slots=True)
class _Condition:
    key: str
    test: _ValueTest
    negated: bool
    if_exists: bool
    qualifier: str  # "", or one of _SET_QUALIFIERS

    def holds(self, keys: Mapping[str, ContextValue]) -> bool:
        values = _values(keys.get(self.key))
        if not values:
            return self._holds_when_absent()
        if self.qualifier == "ForAllValues":
            return all(self.test(v, keys) != self.negated for v in values)
        if self.qualifier == "ForAnyValue":
            return any(self.test(v, keys) != self.negated for v in values)
        # Without a set qualifier a multivalued key matches when any of its values does.
        return any(self.test(v, keys) for v in values) != self.negated

    def _holds_when_absent(self) -> bool:
        if self.if_exists:
            return True
        if self.qualifier:
            return self.qualifier == "ForAllValues"
        # Nothing equals an absent key, so only the negated operators hold.
        return self.negated


@dataclass(frozen=True, slots=True)
class _Null:
    key: str
    expect_absent: frozenset[bool]

    def holds(self, keys: Mapping[str, ContextValue]) -> bool:
        return (not _values(keys.get(self.key))) in self.expect_absent


@dataclass(frozen=True, slots=True)
class _Operator:
    qualifier: str
    base: str
    if_exists: bool

    @classmethod
    def parse(cls, name: str) -> _Operator:
        qualifier, _, rest = name.rpartition(":")
        base = rest.removesuffix("IfExists")
        parsed = cls(qualifier, base, if_exists=base != rest)
        if qualifier not in ("", *_SET_QUALIFIERS) or not parsed._known():
            raise _Invalid(f'unknown condition operator "{name}"')
        return parsed

    def _known(self) -> bool:
        if self.base == "Null":
            return not (self.qualifier or self.if_exists)
        return self.base in _OPERATORS

    def condition(
        self, key: str, values: tuple[_PolicyScalar, ...], variables: bool
    ) -> _Condition | _Null:
        if self.base == "Null":
            absent = frozenset(_policy_value(_to_bool(v), v, "Null value") for v in values)
            return _Null(key, absent)
        compile_values, negated = _OPERATORS[self.base]
        test = compile_values(values, variables)
        return _Condition(key, test, negated, self.if_exists, self.qualifier)


def _conditions(raw: Any, variables: bool) -> tuple[_Condition | _Null, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise _Invalid("Condition must be a JSON object mapping operators to condition keys")
    return tuple(
        condition
        for name, block in raw.items()
        for condition in _operator_block(str(name), block, variables)
    )


def _operator_block(name: str, block: Any, variables: bool) -> list[_Condition | _Null]:
    parsed = _Operator.parse(name)
    if not isinstance(block, Mapping) or not block:
        raise _Invalid(f"Condition {name} must be a JSON object mapping condition keys to values")
    conditions = []
    for key, values in block.items():
        if not isinstance(key, str) or ":" not in key:
            raise _Invalid(_NO_VENDOR)
        try:
            conditions.append(parsed.condition(key.lower(), _condition_values(values), variables))
        except _Invalid as reason:
            raise _Invalid(f"{name} condition on {key}: {reason}") from None
    return conditions


def _condition_values(raw: Any) -> tuple[_PolicyScalar, ...]:
    values = tuple(raw) if isinstance(raw, list | tuple) else (raw,)
    if not values:
        raise _Invalid("at least one value is required")
    if not all(isinstance(v, str | bool | int | float) for v in values):
        raise _Invalid("values must be strings, numbers or booleans")
    return values


# --- Statements and policies ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Element:
    """Action/NotAction or Resource/NotResource: its patterns, and whether it is the Not form."""

    patterns: tuple[_Pattern, ...]
    negated: bool

    def matches(self, value: str, keys: Mapping[str, ContextValue]) -> bool:
        return any(p.matches(value, keys) for p in self.patterns) != self.negated


@dataclass(frozen=True, slots=True)
class Statement:
    """One compiled statement of a policy; built by :func:`parse_policy`."""

    sid: str | None
    effect: Literal["Allow", "Deny"]
    action: _Element
    resource: _Element
    conditions: tuple[_Condition | _Null, ...]

    def applies_to(self, ctx: RequestContext) -> bool:
        keys = ctx.folded_keys
        return (
            self.action.matches(ctx.action, keys)
            and self.resource.matches(ctx.resource, keys)
            and all(c.holds(keys) for c in self.conditions)
        )


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    statements: tuple[Statement, ...]
    policy_id: str | None = None
    # Whether the outcome can change with the clock alone (a condition on, or a variable of,
    # aws:CurrentTime or aws:EpochTime): such decisions must not be cached.
    time_dependent: bool = False


def _parse_statement(raw: Any, variables: bool) -> Statement:
    if not isinstance(raw, Mapping):
        raise _Invalid("a statement must be a JSON object")
    if "Principal" in raw or "NotPrincipal" in raw:
        raise _Invalid("Policy document should not specify a principal")
    unknown = [key for key in raw if key not in _STATEMENT_ELEMENTS]
    if unknown:
        raise _Invalid(f'unknown element "{unknown[0]}"')
    return Statement(
        sid=_sid(raw.get("Sid")),
        effect=_effect(raw.get("Effect")),
        action=_element(raw, "Action", _action_pattern),
        resource=_element(raw, "Resource", partial(_resource_pattern, variables=variables)),
        conditions=_conditions(raw.get("Condition"), variables),
    )


def _sid(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SID.fullmatch(value):
        raise _Invalid(_SID_RULE)
    return value


def _effect(value: Any) -> Literal["Allow", "Deny"]:
    if value == "Allow":
        return "Allow"
    if value == "Deny":
        return "Deny"
    raise _Invalid("Effect must be Allow or Deny")


def _element(raw: Mapping[str, Any], name: str, pattern: Callable[[str], _Pattern]) -> _Element:
    present = [key for key in (name, f"Not{name}") if key in raw]
    if len(present) == 2:
        raise _Invalid(f"{name} and Not{name} cannot both be specified")
    values = _string_list(present[0], raw[present[0]]) if present else []
    if not values:
        raise _Invalid(f"Policy statement must contain {name.lower()}s")
    return _Element(tuple(pattern(v) for v in values), negated=present[0] != name)


def _string_list(element: str, value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise _Invalid(f"{element} must be a string or a list of strings")
    return list(values)


def _action_pattern(text: str) -> _Pattern:
    if text != "*" and ":" not in text:
        raise _Invalid(_NO_VENDOR)
    if text != "*" and not _ACTION.fullmatch(text):
        raise _Invalid(f'Action "{text}" is not a valid service:action pattern')
    return _Pattern(_tokenize(text, wildcards=True, variables=False), _ACTION_REGEX)


def _resource_pattern(text: str, *, variables: bool) -> _Pattern:
    # Fewer than six segments is still an ARN pattern when a trailing `*` spans the rest.
    is_arn = text.startswith("arn:") and (text.count(":") >= 5 or text.endswith("*"))
    if text != "*" and not is_arn:
        raise _Invalid(f'Resource {text} must be in ARN format or "*"')
    return _Pattern(_tokenize(text, wildcards=True, variables=variables), _ARN_REGEX)


def _load(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        raise MalformedPolicyDocument(
            f"Syntax errors in policy: invalid JSON at {where}."
        ) from None
    except RecursionError:
        raise MalformedPolicyDocument(
            "Syntax errors in policy: the document is nested too deeply."
        ) from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key (two "Condition" blocks, say) would otherwise silently drop one of them.
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise MalformedPolicyDocument(f'Syntax errors in policy: duplicate key "{key}".')
        seen[key] = value
    return seen


def _statement_list(value: Any) -> list[Any]:
    if value is None:
        raise MalformedPolicyDocument("Syntax errors in policy: Statement is required.")
    if isinstance(value, Mapping):
        return [value]
    if not isinstance(value, list | tuple) or not value:
        raise MalformedPolicyDocument(
            "Syntax errors in policy: Statement must be an object or a non-empty list of objects."
        )
    return list(value)


def _numbered_statement(number: int, raw: Any, variables: bool) -> Statement:
    try:
        return _parse_statement(raw, variables)
    except _Invalid as reason:
        raise MalformedPolicyDocument(f"Statement {number}: {reason}.") from None


def parse_new_policy(document: str) -> Policy:
    """:func:`parse_policy` for an identity-based policy IAM is being given (CreatePolicy,
    Put{User,Group,Role}Policy), which must be written in the current language version.

    The IAM User Guide says an omitted Version means 2008-10-17, yet IAM refuses both for these
    operations: "Policy document must be version 2012-10-17 or greater." is what CreatePolicy
    answers for a document without Version and for one with 2008-10-17 (the behaviour moto's IAM
    tests record, and users report). Documents stored before this check, and trust policies, for
    which no such refusal is on record, are still read with the 2008 grammar by parse_policy.
    """
    raw = _load(document)
    if isinstance(raw, Mapping) and raw.get("Version", _LEGACY_VERSION) == _LEGACY_VERSION:
        raise MalformedPolicyDocument(
            f"Policy document must be version {_VARIABLES_VERSION} or greater."
        )
    return parse_policy(raw)


def parse_policy(document: str | Mapping[str, Any]) -> Policy:
    """Validate and compile an identity-based policy document (JSON text or already decoded).

    Raises MalformedPolicyDocument saying what is wrong, as IAM would.
    """
    raw = _load(document) if isinstance(document, str) else document
    if not isinstance(raw, Mapping):
        raise MalformedPolicyDocument(
            "Syntax errors in policy: the document must be a JSON object."
        )
    unknown = [key for key in raw if key not in _POLICY_ELEMENTS]
    if unknown:
        raise MalformedPolicyDocument(f'Syntax errors in policy: unknown element "{unknown[0]}".')
    version = raw.get("Version", _LEGACY_VERSION)
    if version not in VERSIONS:
        raise MalformedPolicyDocument(
            'The policy failed legacy parsing: Version must be "2012-10-17" or "2008-10-17".'
        )
    policy_id = raw.get("Id")
    if policy_id is not None and not isinstance(policy_id, str):
        raise MalformedPolicyDocument("Syntax errors in policy: Id must be a string.")
    variables = version == _VARIABLES_VERSION
    statements = tuple(
        _numbered_statement(number, statement, variables)
        for number, statement in enumerate(_statement_list(raw.get("Statement")), start=1)
    )
    sids = [s.sid for s in statements if s.sid]
    if len(sids) != len(set(sids)):
        raise MalformedPolicyDocument("Statement IDs (SID) in a single policy must be unique.")
    text = json.dumps(raw, default=str).lower()
    time_dependent = any(key in text for key in _TIME_KEYS)
    return Policy(version, statements, policy_id, time_dependent)


def evaluate(policies: Iterable[tuple[str, Policy]], ctx: RequestContext) -> EvaluationResult:
    """Identity-based evaluation: an explicit Deny wins, then any Allow, else an implicit deny."""
    allowed: EvaluationResult | None = None
    for name, policy in policies:
        for statement in policy.statements:
            # Once allowed, only a Deny can still change the outcome.
            if allowed is not None and statement.effect == "Allow":
                continue
            if not statement.applies_to(ctx):
                continue
            if statement.effect == "Deny":
                return EvaluationResult(Decision.EXPLICIT_DENY, name, statement.sid)
            allowed = EvaluationResult(Decision.ALLOW, name, statement.sid)
    return allowed or EvaluationResult(Decision.IMPLICIT_DENY)


def evaluate_bounded(
    policies: Iterable[tuple[str, Policy]],
    boundary: Sequence[tuple[str, Policy]],
    ctx: RequestContext,
) -> EvaluationResult:
    """Identity policies capped by a permissions boundary (none when empty): allowed only where
    both allow, and an explicit deny in either denies."""
    identity = evaluate(policies, ctx)
    if not boundary:
        return identity
    capped = evaluate(boundary, ctx)
    denied = Decision.EXPLICIT_DENY
    if capped.decision is denied and identity.decision is not denied:
        return replace(capped, kind=PolicyKind.BOUNDARY, allowed_by_boundary=False)
    if identity.allowed and not capped.allowed:
        return EvaluationResult(
            Decision.IMPLICIT_DENY, kind=PolicyKind.BOUNDARY, allowed_by_boundary=False
        )
    return replace(identity, allowed_by_boundary=capped.allowed)
