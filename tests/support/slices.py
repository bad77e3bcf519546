"""Which slices of the suite a test belongs to, from facts about it rather than by hand.

conftest's ``pytest_collection_modifyitems`` marks each test with the names `slices_of` gives,
so ``-m unit`` or ``-m "not browser"`` select from the whole suite (pyproject registers the
markers and describes them).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.console import needs_chromium

TESTS = Path(__file__).parents[1]

# The fixtures that start a real mlfleet daemon. shared_server and serving_server ask for
# `daemon`, so a test that uses them uses it too.
DAEMON_FIXTURES = frozenset({"daemon", "pg_daemon", "any_daemon"})


def slices_of(item: pytest.Item) -> set[str]:
    """The markers `item` gets: unit, chaos, conformance (by folder), daemon, browser,
    postgres (by what it uses)."""
    found = set()
    if item.path.is_relative_to(TESTS / "unit"):
        found.add("unit")
    if item.path.is_relative_to(TESTS / "chaos"):
        found.add("chaos")
    if item.path.is_relative_to(TESTS / "conformance"):
        found.add("conformance")
    if not isinstance(item, pytest.Function):
        return found
    fixtures = set(item.fixturenames)  # the closure: fixtures of fixtures included
    names = names_used(item)
    # A daemon fixture, or a Daemon the test or one of its fixtures starts itself.
    if fixtures & DAEMON_FIXTURES or "Daemon" in names:
        found.add("daemon")
    # needs_chromium marks every test that drives Chromium (it skips them where it is missing).
    if needs_chromium.mark in item.iter_markers("skipif") or "sync_playwright" in names:
        found.add("browser")
    # pg_daemon, directly or through any_daemon's PostgreSQL variant, or a private cluster the
    # test runs itself (support.postgres).
    callspec = getattr(item, "callspec", None)
    any_daemon = callspec.params.get("any_daemon") if callspec is not None else None
    if "pg_daemon" in fixtures or any_daemon == "postgres" or "PrivateCluster" in names:
        found.add("postgres")
    return found


def names_used(item: pytest.Function) -> set[str]:
    """The global and attribute names that the test's code and its fixtures' code refer to
    (nested functions, lambdas and comprehensions included)."""
    names: set[str] = set()
    for function in _functions(item):
        code = getattr(inspect.unwrap(function), "__code__", None)
        if code is not None:
            names |= _code_names(code)
    return names


def _functions(item: pytest.Function) -> Iterator[object]:
    yield item.function
    for definitions in item._fixtureinfo.name2fixturedefs.values():
        for definition in definitions:
            yield definition.func


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _code_names(constant)
    return names
