"""EventBridge event patterns: validated and compiled once, then matched against events.

Amazon EventBridge matches with the open-source ``aws/event-ruler`` library ("Ruler"), so this
module follows Ruler's compiler for what it refuses (in Ruler's words, after EventBridge's own
``Event pattern is not valid. Reason: `` prefix, with our ``at [path: ...]`` where EventBridge
quotes the source and a column) and Ruler's matcher for what matches. In short:

* A pattern is a JSON object whose leaves are arrays of alternatives; an event matches when every
  field named in the pattern matches (``$or`` groups need one alternative each).
* A leaf matches when any of the field's values matches any alternative. An event array gives one
  value per element (nested arrays flattened); an event object is not a value at all.
* An object pattern meeting an event array must match within one element, so fields of different
  elements never combine (Ruler's "array consistency").
* Operators only apply to the JSON types they name: ``prefix``/``suffix``/``wildcard``/
  ``equals-ignore-case``/``cidr`` to strings, ``numeric`` to numbers, ``exists`` to any value,
  ``null`` included. ``anything-but`` only fails on values of its own kind: anything-but "x"
  matches 5, null and true.

Where Ruler's behaviour is an artefact of its flattening rather than a rule, this module keeps
the rule: a key with dots ({"a.b": ...}) is one field, not the path a -> b; a field repeated
inside an ``$or`` alternative must match as well as the one outside, not instead of it; and
``exists: false`` below an array is judged over every element when nothing else in that object
pattern is positive, within the chosen element otherwise (Ruler's result depends on the order of
the field names there). Wildcard complexity ("Rule is too complex") is not limited: EventBridge's
threshold is not documented.

Matching is a walk of the pattern, not of the event: a handful of dict lookups per pattern field,
with every operand parsed up front (frozensets for exact values, tuples for prefix/suffix so one
``str.startswith`` call tests them all, pre-split wildcards, integer ranges for CIDR blocks).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, NoReturn, Protocol, TypeGuard

from mlfleet.protocol import jsontext
from mlfleet.protocol.errors import NamedAwsError

__all__ = [
    "INVALID_PATTERN",
    "MAX_PATTERN_LENGTH",
    "EventPattern",
    "InvalidEventPatternException",
    "parse_pattern",
]

INVALID_PATTERN: Final = "InvalidEventPatternException"
# The "Event pattern" quota: 2048 characters by default (adjustable on AWS, hence the parameter).
MAX_PATTERN_LENGTH: Final = 2048
_REASON: Final = "Event pattern is not valid. Reason: "


class InvalidEventPatternException(NamedAwsError):
    """EventBridge's refusal of an event pattern (its code is INVALID_PATTERN)."""


# Ruler keeps numbers as fixed-point strings: operands must lie within +/-5e9 with at most six
# decimals, and an event number outside the bounds is not numeric to it at all.
_NUMERIC_BOUND: Final = 5_000_000_000
_NUMERIC_DECIMALS: Final = 6

_OR: Final = "$or"
# Field names Ruler refuses anywhere inside a "$or" alternative (Constants.java).
_RESERVED_IN_OR: Final = frozenset(
    {
        "exactly", "equals-ignore-case", "prefix", "suffix", "anything-but", "exists",
        "wildcard", "numeric", "cidr", "html", "=", "<", "<=", ">", ">=", "regex",
        "not-wildcard", "not-equals-ignore-case", "date-after", "date-on-or-after",
        "date-before", "date-on-or-before", "in-date-range", "ip-address-in-range",
        "ip-address-not-in-range",
    }
)  # fmt: skip

# Ruler recognises an IP literal by shape first (so hostnames never reach the resolver).
_IPV4_SHAPE: Final = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_IPV6_SHAPE: Final = re.compile(r"[0-9a-fA-F:]*:[0-9a-fA-F:]*")
_JAVA_INT: Final = re.compile(r"[+-]?[0-9]+")

_MISSING: Final[Any] = object()
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})

_Path = tuple[str | int, ...]


# --- public API -----------------------------------------------------------------------------------


class EventPattern:
    """A compiled event pattern: immutable, cheap to match, safe to share between threads."""

    __slots__ = ("_root", "source")

    def __init__(self, root: _Object, source: str) -> None:
        self._root = root
        self.source = source

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether `event` (a decoded JSON object, the full envelope) matches the pattern."""
        return self._root.matches_mapping(event)

    def __repr__(self) -> str:
        return f"EventPattern({self.source!r})"


def parse_pattern(text: str, *, max_length: int = MAX_PATTERN_LENGTH) -> EventPattern:
    """Validate `text` as EventBridge does and compile it.

    Raises ``InvalidEventPatternException("Event pattern is not valid. Reason: ...")``
    naming what is wrong and, for a problem inside the pattern, where (``at [path: detail.x]``).
    """
    try:
        return EventPattern(_compile_pattern(text, max_length), text)
    except _Invalid as problem:
        raise InvalidEventPatternException(_REASON + problem.reason + problem.location) from None


# --- refusals -------------------------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, reason: str, path: _Path = (), location: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.location = location if location is not None else _render_location(path)


def _fail(reason: str, path: _Path) -> NoReturn:
    raise _Invalid(reason, path)


def _render_location(path: _Path) -> str:
    """`` at [path: detail.$or[1].state[0]]``: where in the pattern, since we have no columns."""
    if not path:
        return ""
    rendered = ""
    for part in path:
        if isinstance(part, int):
            rendered += f"[{part}]"
        else:
            rendered += f".{part}" if rendered else part
    return f" at [path: {rendered}]"


def _token(value: Any) -> str:
    """A JSON value as Jackson's ``getText()`` shows it in Ruler's messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, _JsonObject):
        return "{"
    if isinstance(value, list):
        return "["
    return str(value)


# --- JSON reading ---------------------------------------------------------------------------------


class _JsonObject:
    """A JSON object as its (key, value) pairs: order and duplicate keys matter to Ruler.

    Deliberately not a list subclass, so that ``isinstance(value, list)`` means a JSON array.
    """

    __slots__ = ("pairs",)

    def __init__(self, pairs: Iterable[tuple[str, Any]]) -> None:
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.pairs)

    def __getitem__(self, index: int) -> tuple[str, Any]:
        return self.pairs[index]


def _reject_constant(name: str) -> NoReturn:
    # Python's json reads NaN and Infinity; Jackson (and so EventBridge) does not.
    raise _Invalid(f"Non-standard token '{name}'")


def _read_json(text: str) -> Any:
    try:
        # Decimal keeps a number's written digits, which the six-decimal check needs.
        return jsontext.loads(
            text,
            object_pairs_hook=_JsonObject,
            parse_float=Decimal,
            parse_constant=_reject_constant,
        )
    except json.JSONDecodeError as error:
        where = f" at [line: {error.lineno}, column: {error.colno}]"
        raise _Invalid(error.msg, location=where) from None


def _is_number(value: Any) -> TypeGuard[int | Decimal]:
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


# --- compiling: objects and $or -------------------------------------------------------------------


def _compile_pattern(text: str, max_length: int) -> _Object:
    if len(text) > max_length:
        raise _Invalid(f"Event pattern is {len(text)} characters long; the maximum is {max_length}")
    tree = _read_json(text)
    if not isinstance(tree, _JsonObject):
        raise _Invalid("Filter is not an object")
    return _compile_object(tree, (), inside_or=False)


def _compile_object(pairs: _JsonObject, path: _Path, *, inside_or: bool) -> _Object:
    if not pairs:
        _fail("Empty objects are not allowed", path)
    leaves: dict[str, _Leaf] = {}
    objects: dict[str, _JsonObject] = {}
    groups: list[tuple[_Object, ...]] = []
    for key, value in pairs:
        if key == _OR:
            groups.append(_compile_or(value, (*path, key)))
            continue
        where = (*path, key)
        if inside_or and key in _RESERVED_IN_OR:
            _fail(f"{key} is Ruler reserved fieldName which cannot be used inside $or.", where)
        if isinstance(value, _JsonObject):
            if not value:
                _fail("Empty objects are not allowed", where)
            # A repeated object key adds its fields to the first one's, as Ruler's flattening does.
            objects[key] = _JsonObject([*objects.get(key, ()), *value])
        elif isinstance(value, list):
            leaves[key] = _compile_leaf(value, where)  # a repeated leaf: the last one counts
        else:
            _fail(f'"{key}" must be an object or an array', where)
    fields: list[tuple[str, _Node]] = list(leaves.items())
    fields += [
        (key, _compile_object(value, (*path, key), inside_or=inside_or))
        for key, value in objects.items()
    ]
    return _Object(tuple(fields), tuple(groups))


def _compile_or(value: Any, path: _Path) -> tuple[_Object, ...]:
    if not isinstance(value, list):
        _fail("It must be an Array followed with $or.", path)
    alternatives = []
    for index, alternative in enumerate(value):
        if not isinstance(alternative, _JsonObject):
            _fail("Only JSON object is allowed in array of $or relationship.", (*path, index))
        alternatives.append(_compile_object(alternative, (*path, index), inside_or=True))
    if len(alternatives) < 2:
        _fail("There must have at least 2 Objects in $or relationship.", path)
    return tuple(alternatives)


# --- compiling: leaves and their operators --------------------------------------------------------


@dataclass
class _LeafParts:
    """A leaf's alternatives, sorted by kind while its array is read."""

    strings: set[str] = field(default_factory=set)
    numbers: set[int | float] = field(default_factory=set)
    literals: set[bool | None] = field(default_factory=set)
    ips: set[tuple[int, int]] = field(default_factory=set)
    prefixes: list[str] = field(default_factory=list)
    suffixes: list[str] = field(default_factory=list)
    folded_prefixes: list[str] = field(default_factory=list)
    folded_suffixes: list[str] = field(default_factory=list)
    folded: set[str] = field(default_factory=set)
    wildcards: list[_Wildcard] = field(default_factory=list)
    ranges: list[_Range] = field(default_factory=list)
    cidrs: list[_IpRange] = field(default_factory=list)
    anything_buts: list[_AnythingBut] = field(default_factory=list)
    present: bool = False
    absent: bool = False


def _compile_leaf(values: list[Any], path: _Path) -> _Leaf:
    if not values:
        _fail("Empty arrays are not allowed", path)
    parts = _LeafParts()
    for index, value in enumerate(values):
        where = (*path, index)
        if isinstance(value, _JsonObject):
            _compile_expression(value, where, parts)
        elif isinstance(value, str):
            parts.strings.add(value)
            ip = _parse_ip(value)
            if ip is not None:  # Ruler matches an IP literal as an address: "::1" is "0::1"
                parts.ips.add(ip)
        elif isinstance(value, bool) or value is None:
            parts.literals.add(value)
        elif _is_number(value):
            parts.numbers.add(value if isinstance(value, int) else float(value))
        else:
            _fail("Match value must be String, number, true, false, or null", where)
    return _Leaf(parts)


def _compile_expression(expression: _JsonObject, path: _Path, parts: _LeafParts) -> None:
    """One ``{"operator": operand}`` alternative."""
    if not expression:
        _fail("Match expression name not found", path)
    name, operand = expression[0]
    compile_operand = _OPERATORS.get(name)
    if compile_operand is None:
        _fail(f"Unrecognized match type {name}", path)
    where = (*path, name)
    compile_operand(operand, where, parts)
    if len(expression) > 1:
        # Ruler's wording, even for anything-but: it shares the numeric parser's check.
        extra = (
            "Too many elements in numeric expression"
            if name in ("numeric", "anything-but")
            else "Only one key allowed in match expression"
        )
        _fail(extra, path)


def _compile_prefix(operand: Any, path: _Path, parts: _LeafParts) -> None:
    if isinstance(operand, _JsonObject):
        parts.folded_prefixes.append(_folded_affix(operand, "prefix", path).lower())
    elif isinstance(operand, str):
        parts.prefixes.append(operand)
    else:
        _fail("prefix match pattern must be a string", path)


def _compile_suffix(operand: Any, path: _Path, parts: _LeafParts) -> None:
    if isinstance(operand, _JsonObject):
        parts.folded_suffixes.append(_folded_affix(operand, "suffix", path).lower())
    elif isinstance(operand, str):
        parts.suffixes.append(operand)
    else:
        _fail("suffix match pattern must be a string", path)


def _folded_affix(operand: _JsonObject, kind: str, path: _Path) -> str:
    """The string of ``{"prefix": {"equals-ignore-case": "..."}}`` (or suffix)."""
    if not operand:
        _fail(f"{kind.capitalize()} expression name not found", path)
    name, value = operand[0]
    if name != "equals-ignore-case":
        _fail(f"Unsupported {kind} pattern: {name}", path)
    if not isinstance(value, str):
        _fail("equals-ignore-case match pattern must be a string", (*path, name))
    if len(operand) > 1:
        _fail("Only one key allowed in match expression", path)
    return value


def _compile_equals_ignore_case(operand: Any, path: _Path, parts: _LeafParts) -> None:
    if not isinstance(operand, str):
        _fail("equals-ignore-case match pattern must be a string", path)
    parts.folded.add(operand.lower())


def _compile_wildcard(operand: Any, path: _Path, parts: _LeafParts) -> None:
    if not isinstance(operand, str):
        _fail("wildcard match pattern must be a string", path)
    parts.wildcards.append(_parse_wildcard(operand, path))


def _compile_exists(operand: Any, path: _Path, parts: _LeafParts) -> None:
    if operand is True:
        parts.present = True
    elif operand is False:
        parts.absent = True
    else:
        _fail("exists match pattern must be either true or false.", path)


def _compile_cidr(operand: Any, path: _Path, parts: _LeafParts) -> None:
    if not isinstance(operand, str):
        _fail("prefix match pattern must be a string", path)  # sic: Ruler's message for cidr
    parts.cidrs.append(_parse_cidr(operand, path))


def _compile_numeric(operand: Any, path: _Path, parts: _LeafParts) -> None:
    if not isinstance(operand, list):
        _fail("Value of numeric must be an array.", path)
    parts.ranges.append(_parse_numeric(operand, path))


def _compile_anything_but(operand: Any, path: _Path, parts: _LeafParts) -> None:
    if isinstance(operand, _JsonObject):
        parts.anything_buts.append(_parse_anything_but_operator(operand, path))
    elif isinstance(operand, list):
        parts.anything_buts.append(_parse_anything_but_list(operand, path))
    elif isinstance(operand, str):
        parts.anything_buts.append(_NotStrings(frozenset({operand})))
    elif _is_number(operand):
        parts.anything_buts.append(_NotNumbers(frozenset({_numeric_operand(operand, path)})))
    else:
        _fail("Value of anything-but must be an array or single string/number value.", path)


class _CompileOperand(Protocol):
    def __call__(self, operand: Any, path: _Path, parts: _LeafParts, /) -> None: ...


_OPERATORS: Final[Mapping[str, _CompileOperand]] = MappingProxyType(
    {
        "prefix": _compile_prefix,
        "suffix": _compile_suffix,
        "equals-ignore-case": _compile_equals_ignore_case,
        "wildcard": _compile_wildcard,
        "exists": _compile_exists,
        "cidr": _compile_cidr,
        "numeric": _compile_numeric,
        "anything-but": _compile_anything_but,
    }
)


# --- operands: numbers ----------------------------------------------------------------------------


def _numeric_operand(value: int | Decimal, path: _Path) -> float:
    """A number Ruler can compare: at most six decimals, within +/-5e9."""
    number = Decimal(value)
    if _decimal_places(number) > _NUMERIC_DECIMALS:
        _fail("Only values upto 6 decimals are supported", path)
    if abs(number) > _NUMERIC_BOUND:
        _fail("Value must be between -5.0E9 and 5.0E9, inclusive", path)
    return float(number)


def _decimal_places(number: Decimal) -> int:
    """Digits after the point as written, trailing zeros aside (1.50 has one, 1e-7 seven)."""
    _sign, digits, exponent = number.as_tuple()
    if not isinstance(exponent, int):
        return 0
    places = -exponent
    index = len(digits) - 1
    while places > 0 and index >= 0 and digits[index] == 0:
        places -= 1
        index -= 1
    return max(places, 0)


def _parse_numeric(items: list[Any], path: _Path) -> _Range:
    """``["=", 5]``, ``["<", 5]``, ``["<=", 5]``, ``[">", 0]``, ``[">=", 0, "<", 5]``..."""
    if not items or not isinstance(items[0], str):
        _fail(f"Invalid member in numeric match: {_token(items[0]) if items else ']'}", path)
    operator = items[0]
    if operator not in ("=", "<", "<=", ">", ">="):
        _fail(f"Unrecognized numeric range operator: {operator}", path)
    label = "equals" if operator == "=" else operator
    first = _operand_after(items, 1, label, path)
    if operator == "=":
        _expect_end(items, 2, "Too many elements in numeric expression", path)
        return _Range(first, False, first, False)
    if operator in ("<", "<="):
        _expect_end(items, 2, "Too many elements in numeric expression", path)
        return _Range(-math.inf, False, first, operator == "<")
    if len(items) == 2:
        return _Range(first, operator == ">", math.inf, False)
    upper = items[2]
    if not isinstance(upper, str):
        _fail(f"Bad value in numeric range: {_token(upper)}", path)
    if upper not in ("<", "<="):
        _fail(f"Bad numeric range operator: {upper}", path)
    second = _operand_after(items, 3, upper, path)
    _expect_end(items, 4, "Too many terms in numeric range expression", path)
    if not first < second:
        _fail("Bottom must be less than top", path)
    return _Range(first, operator == ">", second, upper == "<")


def _operand_after(items: list[Any], index: int, label: str, path: _Path) -> float:
    value = items[index] if index < len(items) else None
    if not _is_number(value):
        _fail(f"Value of {label} must be numeric", path)
    return _numeric_operand(value, path)


def _expect_end(items: list[Any], length: int, reason: str, path: _Path) -> None:
    if len(items) > length:
        _fail(reason, path)


# --- operands: anything-but -----------------------------------------------------------------------


def _parse_anything_but_list(values: list[Any], path: _Path) -> _AnythingBut:
    """``{"anything-but": ["a", "b"]}`` or ``[1, 2]``: all strings or all numbers."""
    strings: set[str] = set()
    numbers: set[float] = set()
    for index, value in enumerate(values):
        if isinstance(value, str):
            strings.add(value)
        elif _is_number(value):
            numbers.add(_numeric_operand(value, (*path, index)))
        else:
            _fail("Inside anything but list, start|null|boolean is not supported.", (*path, index))
    if bool(strings) == bool(numbers):  # both kinds, or an empty list
        _fail(
            "Inside anything but list, either all values are number or string, "
            "mixed type is not supported",
            path,
        )
    return _NotStrings(frozenset(strings)) if strings else _NotNumbers(frozenset(numbers))


# What a string operand is not allowed to be, per anything-but sub-operator (Ruler's messages).
_NOT_A_STRING: Final = MappingProxyType(
    {
        "equals-ignore-case": "Inside anything-but/equals-ignore-case list, "
        "number|start|null|boolean is not supported.",
        "prefix": "prefix/suffix match pattern must be a string",
        "suffix": "prefix/suffix match pattern must be a string",
        "wildcard": "wildcard match pattern must be a string",
    }
)


def _parse_anything_but_operator(operand: _JsonObject, path: _Path) -> _AnythingBut:
    """``{"anything-but": {"prefix" | "suffix" | "equals-ignore-case" | "wildcard": ...}}``."""
    if not operand:
        _fail("Anything-But expression name not found", path)
    name, value = operand[0]
    if name not in _NOT_A_STRING:
        _fail(f"Unsupported anything-but pattern: {name}", path)
    where = (*path, name)
    if not isinstance(value, list | str) and not _is_number(value):
        _fail("Value of anything-but must be an array or single string/number value.", where)
    values: list[str] = []
    for index, item in enumerate(value if isinstance(value, list) else [value]):
        if not isinstance(item, str):
            _fail(_NOT_A_STRING[name], (*where, index) if isinstance(value, list) else where)
        if not item and name in ("prefix", "suffix"):
            _fail("Null prefix/suffix not allowed", where)
        values.append(item)
    if len(operand) > 1:
        _fail("Too many elements in numeric expression", path)
    if name == "prefix":
        return _NotPrefixes(tuple(values))
    if name == "suffix":
        return _NotSuffixes(tuple(values))
    if name == "equals-ignore-case":
        return _NotFolded(frozenset(item.lower() for item in values))
    return _NotWildcards(tuple(_parse_wildcard(item, where) for item in values))


# --- operands: wildcards and IP addresses ---------------------------------------------------------


def _parse_wildcard(text: str, path: _Path) -> _Wildcard:
    """Split at unescaped ``*``; ``\\*`` is a star and ``\\\\`` a backslash, nothing else escapes.

    Positions in errors count UTF-8 bytes of the quoted string, as Ruler's do.
    """
    segments: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            escaped = text[index + 1 : index + 2]
            if escaped not in ("*", "\\"):
                _fail(f"Invalid escape character at pos {_byte_pos(text, index)}", path)
            current.append(escaped)
            index += 2
            continue
        if char == "*":
            if text[index + 1 : index + 2] == "*":
                _fail(f"Consecutive wildcard characters at pos {_byte_pos(text, index)}", path)
            segments.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    segments.append("".join(current))
    return _Wildcard(tuple(segments))


def _byte_pos(text: str, index: int) -> int:
    return 1 + len(text[:index].encode("utf-8", "surrogatepass"))


def _parse_ip(text: str) -> tuple[int, int] | None:
    """``(version, address)`` for an IP literal as Ruler reads one, else None.

    Dotted quads allow leading zeros (Java reads them as decimal); IPv6 must be plain hex and
    colons, and an IPv4-mapped IPv6 address is the IPv4 address (Java's InetAddress says so).
    """
    if _IPV4_SHAPE.fullmatch(text):
        octets = [int(part) for part in text.split(".")]
        if any(octet > 255 for octet in octets):
            return None
        return 4, int.from_bytes(bytes(octets), "big")
    if _IPV6_SHAPE.fullmatch(text):
        try:
            address = ipaddress.IPv6Address(text)
        except ValueError:
            return None
        mapped = address.ipv4_mapped
        return (4, int(mapped)) if mapped is not None else (6, int(address))
    return None


def _parse_cidr(text: str, path: _Path) -> _IpRange:
    """Ruler's CIDR: from the address as written up to it with the host bits set."""
    parts = text.split("/")
    while len(parts) > 1 and not parts[-1]:  # Java's split() drops trailing empty strings
        parts.pop()
    if len(parts) != 2:
        _fail("Malformed CIDR, one '/' required", path)
    address, bits = parts
    if not _JAVA_INT.fullmatch(bits) or not -(2**31) <= int(bits) < 2**31:
        _fail("Malformed CIDR, mask bits must be an integer", path)
    mask = int(bits)
    if mask < 0:
        _fail("Malformed CIDR, mask bits must not be negative", path)
    ip = _parse_ip(address)
    if ip is None:
        shaped = _IPV4_SHAPE.fullmatch(address) or _IPV6_SHAPE.fullmatch(address)
        _fail(f"{'Invalid' if shaped else 'Nonstandard'} IP address: {address}", path)
    version, value = ip
    width = 32 if version == 4 else 128
    if mask >= width:
        _fail(f"IPv{version} mask bits must be < {width}", path)
    return _IpRange(version, value, value | ((1 << (width - mask)) - 1))


# --- compiled matchers ----------------------------------------------------------------------------


def _is_numeric_value(value: Any) -> bool:
    """An event value Ruler treats as a number: a JSON number within its fixed-point bounds."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and -_NUMERIC_BOUND <= value <= _NUMERIC_BOUND
    )


@dataclass(frozen=True, slots=True)
class _Wildcard:
    """Literal segments between wildcards, found left to right.

    Leftmost-first search is exact when ``*`` is the only metacharacter, and it stays linear where
    a backtracking regex would not (``*a*a*a*b`` against a long run of ``a``).
    """

    segments: tuple[str, ...]
    min_length: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_length", sum(map(len, self.segments)))

    def matches(self, value: str) -> bool:
        segments = self.segments
        if len(segments) == 1:
            return value == segments[0]
        first, last = segments[0], segments[-1]
        if len(value) < self.min_length or not value.startswith(first):
            return False
        if not value.endswith(last):
            return False
        position, end = len(first), len(value) - len(last)
        for segment in segments[1:-1]:
            found = value.find(segment, position, end)
            if found < 0:
                return False
            position = found + len(segment)
        return True


@dataclass(frozen=True, slots=True)
class _Range:
    low: float
    low_open: bool
    high: float
    high_open: bool

    def contains(self, value: float) -> bool:
        if value < self.low or (self.low_open and value == self.low):
            return False
        return not (value > self.high or (self.high_open and value == self.high))


@dataclass(frozen=True, slots=True)
class _IpRange:
    version: int
    low: int
    high: int

    def contains(self, ip: tuple[int, int]) -> bool:
        return ip[0] == self.version and self.low <= ip[1] <= self.high


class _AnythingBut(Protocol):
    def accepts(self, value: Any) -> bool: ...


# Each anything-but refuses only values of the kind it lists and accepts every other value.
@dataclass(frozen=True, slots=True)
class _NotStrings:
    values: frozenset[str]

    def accepts(self, value: Any) -> bool:
        return not (isinstance(value, str) and value in self.values)


@dataclass(frozen=True, slots=True)
class _NotNumbers:
    values: frozenset[float]

    def accepts(self, value: Any) -> bool:
        return not (_is_numeric_value(value) and value in self.values)


@dataclass(frozen=True, slots=True)
class _NotPrefixes:
    values: tuple[str, ...]

    def accepts(self, value: Any) -> bool:
        return not (isinstance(value, str) and value.startswith(self.values))


@dataclass(frozen=True, slots=True)
class _NotSuffixes:
    values: tuple[str, ...]

    def accepts(self, value: Any) -> bool:
        return not (isinstance(value, str) and value.endswith(self.values))


@dataclass(frozen=True, slots=True)
class _NotFolded:
    values: frozenset[str]

    def accepts(self, value: Any) -> bool:
        return not (isinstance(value, str) and value.lower() in self.values)


@dataclass(frozen=True, slots=True)
class _NotWildcards:
    values: tuple[_Wildcard, ...]

    def accepts(self, value: Any) -> bool:
        return not (isinstance(value, str) and any(w.matches(value) for w in self.values))


class _Leaf:
    """An array of alternatives, matched against the field's value(s)."""

    __slots__ = (
        "absence_only",
        "absent_ok",
        "anything_buts",
        "cidrs",
        "folded",
        "folded_prefixes",
        "folded_suffixes",
        "has_folded",
        "has_ips",
        "ips",
        "literals",
        "numbers",
        "prefixes",
        "present_ok",
        "ranges",
        "strings",
        "suffixes",
        "wildcards",
    )

    def __init__(self, parts: _LeafParts) -> None:
        self.strings = frozenset(parts.strings)
        self.numbers = frozenset(parts.numbers)
        self.literals = frozenset(parts.literals)
        self.ips = frozenset(parts.ips)
        # Tuples, because one str.startswith(tuple) call tests every prefix.
        self.prefixes = tuple(parts.prefixes)
        self.suffixes = tuple(parts.suffixes)
        self.folded_prefixes = tuple(parts.folded_prefixes)
        self.folded_suffixes = tuple(parts.folded_suffixes)
        self.folded = frozenset(parts.folded)
        self.wildcards = tuple(parts.wildcards)
        self.ranges = tuple(parts.ranges)
        self.cidrs = tuple(parts.cidrs)
        self.anything_buts = tuple(parts.anything_buts)
        self.present_ok = parts.present
        self.absent_ok = parts.absent
        self.has_folded = bool(self.folded or self.folded_prefixes or self.folded_suffixes)
        self.has_ips = bool(self.ips or self.cidrs)
        positive = (
            self.strings or self.numbers or self.literals or self.prefixes or self.suffixes
            or self.has_folded or self.wildcards or self.ranges or self.cidrs
            or self.anything_buts or self.present_ok
        )  # fmt: skip
        self.absence_only = self.absent_ok and not positive

    def matches(self, value: Any) -> bool:
        """`value` is the event's raw value for this field, or _MISSING."""
        if isinstance(value, str | int | float) or value is None:  # the usual case: one value
            return self.present_ok or self._matches_scalar(value)
        if isinstance(value, list | tuple):
            present = False
            for item in _flatten(value):
                if isinstance(item, Mapping):
                    continue  # an object is not a value
                if self.present_ok or self._matches_scalar(item):
                    return True
                present = True
            return self.absent_ok and not present
        if value is _MISSING or isinstance(value, Mapping):
            return self.absent_ok  # an object is not a value: the leaf is absent
        return self.present_ok or self._matches_scalar(value)

    def _matches_scalar(self, value: Any) -> bool:
        if isinstance(value, str):
            hit = self._matches_string(value)
        elif isinstance(value, bool) or value is None:
            hit = value in self.literals
        elif isinstance(value, int | float):
            hit = value in self.numbers or (
                bool(self.ranges)
                and _is_numeric_value(value)
                and any(r.contains(value) for r in self.ranges)
            )
        else:
            hit = False
        return hit or any(but.accepts(value) for but in self.anything_buts)

    def _matches_string(self, value: str) -> bool:
        if value in self.strings:
            return True
        if self.prefixes and value.startswith(self.prefixes):
            return True
        if self.suffixes and value.endswith(self.suffixes):
            return True
        if self.has_folded:
            lowered = value.lower()
            if (
                lowered in self.folded
                or (self.folded_prefixes and lowered.startswith(self.folded_prefixes))
                or (self.folded_suffixes and lowered.endswith(self.folded_suffixes))
            ):
                return True
        if self.wildcards and any(w.matches(value) for w in self.wildcards):
            return True
        if self.has_ips:
            ip = _parse_ip(value)
            if ip is not None and (ip in self.ips or any(c.contains(ip) for c in self.cidrs)):
                return True
        return False


class _Object:
    """An object pattern: every field must match, and one alternative of each ``$or`` group."""

    __slots__ = ("absence_only", "alternatives", "fields")

    def __init__(
        self, fields: tuple[tuple[str, _Node], ...], alternatives: tuple[tuple[_Object, ...], ...]
    ) -> None:
        self.fields = fields
        self.alternatives = alternatives
        self.absence_only: bool = all(node.absence_only for _, node in fields) and all(
            alternative.absence_only for group in alternatives for alternative in group
        )

    def matches(self, value: Any) -> bool:
        """`value` is the event's raw value at this object's key, or _MISSING."""
        if type(value) is dict or isinstance(value, Mapping):
            return self.matches_mapping(value)
        if isinstance(value, list | tuple):
            elements = [item for item in _flatten(value) if isinstance(item, Mapping)]
            if elements:
                if self.absence_only:
                    # Nothing pins an element, so Ruler asks whether *any* element has the field.
                    return all(self.matches_mapping(element) for element in elements)
                # Fields of one object pattern must all come from the same element.
                return any(self.matches_mapping(element) for element in elements)
        # A scalar, an array without objects, or nothing: no field below exists.
        return self.matches_mapping(_EMPTY)

    def matches_mapping(self, obj: Mapping[str, Any]) -> bool:
        get = obj.get
        for key, node in self.fields:
            if not node.matches(get(key, _MISSING)):
                return False
        for group in self.alternatives:
            for alternative in group:
                if alternative.matches_mapping(obj):
                    break
            else:
                return False
        return True


_Node = _Leaf | _Object


def _flatten(values: list[Any] | tuple[Any, ...]) -> Iterator[Any]:
    """The elements of an event array, nested arrays flattened (iteratively: no depth limit)."""
    stack: list[Iterator[Any]] = [iter(values)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list | tuple):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()
