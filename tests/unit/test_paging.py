"""Paging: one way to cut a page, each API's members, default size, tokens and refusals."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest

from mlfleet.common.paging import EVENTBRIDGE, IAM, SAGEMAKER, page_by_key, page_by_offset
from mlfleet.iam.store import listing
from mlfleet.protocol.errors import ValidationException

NAMES = [f"name-{n:03d}" for n in range(250)]


def walk_by_key(items: list[str], paging: Any, size: int) -> list[list[str]]:
    pages, req = [], {paging.size_member: size}
    while True:
        page, token = page_by_key(items, req, paging, str)
        pages.append(page)
        if token is None:
            return pages
        req = {paging.size_member: size, paging.token_member: token}


@pytest.mark.parametrize("paging", [EVENTBRIDGE, IAM])
def test_key_paging_walks_every_item_once(paging: Any) -> None:
    pages = walk_by_key(NAMES, paging, 7)
    assert [name for page in pages for name in page] == NAMES
    assert [len(page) for page in pages] == [7] * 35 + [5]


@pytest.mark.parametrize("paging", [EVENTBRIDGE, IAM])
def test_key_paging_holds_100_by_default(paging: Any) -> None:
    page, token = page_by_key(NAMES, {}, paging, str)
    assert page == NAMES[:100]
    assert paging.position({paging.token_member: token}) == NAMES[100]


def test_a_key_page_stays_right_when_items_before_it_go() -> None:
    _, token = page_by_key(NAMES, {"Limit": 10}, EVENTBRIDGE, str)
    fewer = NAMES[3:]  # three items of the first page were deleted meanwhile
    page, _ = page_by_key(fewer, {"Limit": 10, "NextToken": token}, EVENTBRIDGE, str)
    assert page == NAMES[10:20]


def test_eventbridge_tokens_are_the_next_key_in_base64() -> None:
    _, token = page_by_key(["a", "b"], {"Limit": 1}, EVENTBRIDGE, str)
    assert token == base64.urlsafe_b64encode(b"b").decode()


@pytest.mark.parametrize(
    "token", ["!!not a token!!", "garbage", base64.b64encode(b"\xff").decode()]
)
def test_eventbridge_refuses_a_token_it_did_not_issue(token: str) -> None:
    with pytest.raises(ValidationException) as refused:
        page_by_key(NAMES, {"NextToken": token}, EVENTBRIDGE, str)
    assert refused.value.message == "The NextToken is not valid."


def test_iam_markers_are_the_next_key() -> None:
    answer = listing("Users", NAMES, {"MaxItems": 2}, str)
    assert answer == {"Users": NAMES[:2], "IsTruncated": True, "Marker": NAMES[2]}
    assert listing("Users", NAMES, {"Marker": NAMES[-1]}, str) == {
        "Users": NAMES[-1:],
        "IsTruncated": False,
    }


def test_iam_listing_shows_each_item() -> None:
    answer = listing("PolicyNames", ["b", "a"], {"Marker": "b"}, str, show=str.upper)
    assert answer == {"PolicyNames": ["B", "A"], "IsTruncated": False}


def test_offset_paging_walks_every_item_once() -> None:
    seen, req = [], {"MaxResults": 30}
    while True:
        page, token = page_by_offset(NAMES, req, SAGEMAKER)
        seen += page
        if token is None:
            break
        req = {"MaxResults": 30, "NextToken": token}
    assert seen == NAMES


def test_a_default_page_size_of_its_own() -> None:
    tags = replace(SAGEMAKER, default_size=50)
    page, token = page_by_offset(NAMES, {}, tags)
    assert page == NAMES[:50] and SAGEMAKER.position({"NextToken": token}) == 50


def test_sagemaker_tokens_carry_the_offset() -> None:
    _, token = page_by_offset(NAMES, {"MaxResults": 5}, SAGEMAKER)
    assert token is not None
    assert json.loads(base64.urlsafe_b64decode(token)) == {"offset": 5}
    assert SAGEMAKER.position({}) is None
    assert SAGEMAKER.position({"NextToken": ""}) == 0


def _offset_token(offset: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


@pytest.mark.parametrize(
    "token", ["garbage", _offset_token(-1), _offset_token(True), _offset_token("3"), "x" * 100]
)
def test_sagemaker_refuses_a_token_it_did_not_issue(token: str) -> None:
    with pytest.raises(ValidationException) as refused:
        page_by_offset(NAMES, {"NextToken": token}, SAGEMAKER)
    assert refused.value.message == (
        f"Invalid NextToken '{token[:64]}': pass a token from a previous call."
    )
