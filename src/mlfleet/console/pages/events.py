"""EventBridge rules: list, create, describe with targets and deliveries, enable, disable,
delete; the dead-letter store with redrive."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

from mlfleet.console.app import PREFIX, Page, PageRoute, Visit
from mlfleet.console.deletion import Deletion, attempt, named_action
from mlfleet.console.fields import field_errors
from mlfleet.console.forms import enum_values
from mlfleet.events.dead_letters import DeliveryLog, delivery_status
from mlfleet.events.pattern import INVALID_PATTERN
from mlfleet.protocol.errors import AwsError, ValidationException
from mlfleet.state.models import EventDelivery

_LIST = f"{PREFIX}/events"
_DEAD = f"{_LIST}/dead-letters"


def _detail(name: str) -> str:
    return f"{_LIST}/rules/{quote(name, safe='')}"


def _all(visit: Visit, operation: str, params: dict[str, Any], member: str) -> list[Any]:
    """Every page of an events List* operation."""
    found: list[Any] = []
    while True:
        page = visit.call("events", operation, params)
        found.extend(page[member])
        if not page.get("NextToken"):
            return found
        params = {**params, "NextToken": page["NextToken"]}


def _deliveries(visit: Visit) -> DeliveryLog:
    log: DeliveryLog = visit.console.context["deliveries"]
    return log


def _where(visit: Visit) -> dict[str, Any]:
    """Where the request came from, as IAM conditions (aws:SourceIp, SecureTransport) and the
    audit record see it."""
    return {
        "source_ip": visit.request.remote,
        "secure_transport": visit.request.secure,
        "user_agent": visit.request.headers.get("User-Agent", ""),
    }


def _with_status(deliveries: list[EventDelivery]) -> list[tuple[str, EventDelivery]]:
    return [(delivery_status(d), d) for d in deliveries]


def _pretty(text: str | None) -> str:
    """JSON indented for reading; other text as it is."""
    try:
        return json.dumps(json.loads(text or ""), indent=2)
    except ValueError:
        return text or ""


def _moment(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else None


async def rule_list(visit: Visit) -> web.StreamResponse:
    try:
        rules = _all(visit, "ListRules", {}, "Rules")
    except AwsError as exc:
        return visit.render("events/list.html", rules=[], refused=exc)
    return visit.render("events/list.html", rules=rules, refused=None)


def _create_form(visit: Visit, error: AwsError | None, status: int) -> web.Response:
    errors = field_errors(error)
    if error is not None and error.code == INVALID_PATTERN:
        errors["EventPattern"] = error.message
    return visit.render(
        "events/new.html",
        status=status,
        error=error,
        errors=errors,
        values=visit.form or {},
        states=enum_values("events", "RuleState"),
    )


async def create_form(visit: Visit) -> web.StreamResponse:
    return _create_form(visit, None, 200)


async def create(visit: Visit) -> web.StreamResponse:
    name = visit.field("Name")
    params = {
        "Name": name,
        "EventPattern": visit.field("EventPattern"),
        "State": visit.field("State") or "ENABLED",
        "Description": visit.field("Description") or None,
    }
    try:
        visit.call("events", "PutRule", {k: v for k, v in params.items() if v is not None})
    except AwsError as exc:
        return _create_form(visit, exc, 400)
    raise visit.back(_detail(name), f"Created rule {name}. Add a target to deliver its events.")


async def detail(visit: Visit) -> web.StreamResponse:
    name = visit.request.match_info["name"]
    try:
        rule = visit.call("events", "DescribeRule", {"Name": name})
        targets = _all(visit, "ListTargetsByRule", {"Rule": name}, "Targets")
    except AwsError as exc:
        if exc.code == "ResourceNotFoundException":
            visit.flash(f"Rule {name} does not exist (any more).")
        else:
            visit.refused(exc)
        raise web.HTTPSeeOther(_LIST) from None
    # Each optional part is shown or refused on its own: a reader of the rule may lack these.
    destinations: list[dict[str, Any]] = []
    destinations_refused = deliveries_refused = None
    try:
        destinations = _all(visit, "ListApiDestinations", {}, "ApiDestinations")
    except AwsError as exc:
        destinations_refused = exc
    deliveries: list[tuple[str, EventDelivery]] = []
    try:
        deliveries = _with_status(_deliveries(visit).recent(visit.principal, name, **_where(visit)))
    except AwsError as exc:
        deliveries_refused = exc
    return visit.render(
        "events/detail.html",
        rule=rule,
        pattern=_pretty(rule.get("EventPattern")),
        targets=targets,
        destination_names={d["ApiDestinationArn"]: d["Name"] for d in destinations},
        destinations=destinations,
        destinations_refused=destinations_refused,
        deliveries=deliveries,
        dead_ids=[d.id for state, d in deliveries if state == "dead"],
        deliveries_refused=deliveries_refused,
        # The first attempt is due at once; retries may be hours apart, not worth polling.
        settling=any(state == "pending" for state, _ in deliveries),
        pretty=_pretty,
        moment=_moment,
    )


def _rule_action(operation: str, done: str) -> Page:
    return named_action("events", operation, "Name", _detail, done + " {name}.")


def _whole_number(member: str, text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise ValidationException(f"{member} must be a whole number, not {text!r}.")
    return int(text)


async def add_target(visit: Visit) -> web.StreamResponse:
    name = visit.request.match_info["name"]
    target: dict[str, Any] = {"Id": visit.field("Id"), "Arn": visit.field("Arn")}

    def put() -> None:
        policy = {
            member: value
            for member in ("MaximumRetryAttempts", "MaximumEventAgeInSeconds")
            if (value := _whole_number(member, visit.field(member))) is not None
        }
        if policy:
            target["RetryPolicy"] = policy
        answer = visit.call("events", "PutTargets", {"Rule": name, "Targets": [target]})
        # PutTargets answers 200 and lists the entries it refused, each with its reason.
        if answer["FailedEntries"]:
            failed = answer["FailedEntries"][0]
            raise AwsError(failed["ErrorCode"], failed["ErrorMessage"])

    attempt(visit, put, _detail(name), f"Target {target['Id']} added to {name}.")


async def remove_target(visit: Visit) -> web.StreamResponse:
    name, target = visit.request.match_info["name"], visit.request.match_info["target"]
    attempt(
        visit,
        lambda: visit.call("events", "RemoveTargets", {"Rule": name, "Ids": [target]}),
        _detail(name),
        f"Target {target} removed from {name}.",
    )


_DELETION = Deletion(
    noun="rule",
    detail=_detail,
    after=_LIST,
    consequence="The rule and its targets are removed; deliveries still queued for them are "
    "dead-lettered.",
    # Force: the page said its targets go with it.
    run=lambda visit, name: visit.call("events", "DeleteRule", {"Name": name, "Force": True}),
    done="Deleted rule {name} and its targets.",
)


async def dead_letters(visit: Visit) -> web.StreamResponse:
    letters = _with_status(_deliveries(visit).dead(visit.principal, **_where(visit)))
    return visit.render(
        "events/dead_letters.html", dead_letters=letters, pretty=_pretty, moment=_moment
    )


async def redrive(visit: Visit) -> web.StreamResponse:
    # Back to the rule page the button was on, if any.
    rule = visit.field("rule")
    back = _detail(rule) if rule else _DEAD
    assert visit.form is not None
    ids = [int(i) for i in visit.form.getall("id", []) if isinstance(i, str) and i.isdigit()]
    try:
        count = _deliveries(visit).redrive(visit.principal, ids, **_where(visit))
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(back) from None
    noun = "delivery" if count == 1 else "deliveries"
    raise visit.back(back, f"Redriven: {count} {noun}; they are sent again within seconds.")


ROUTES = [
    PageRoute("GET", "/events", rule_list),
    PageRoute("GET", "/events/rules/new", create_form),
    PageRoute("POST", "/events/rules", create),
    PageRoute("GET", "/events/rules/{name}", detail),
    PageRoute("POST", "/events/rules/{name}/enable", _rule_action("EnableRule", "Enabled")),
    PageRoute("POST", "/events/rules/{name}/disable", _rule_action("DisableRule", "Disabled")),
    PageRoute("POST", "/events/rules/{name}/targets", add_target),
    PageRoute("POST", "/events/rules/{name}/targets/{target}/remove", remove_target),
    PageRoute("GET", "/events/rules/{name}/delete", _DELETION.confirm),
    PageRoute("POST", "/events/rules/{name}/delete", _DELETION.delete),
    PageRoute("GET", "/events/dead-letters", dead_letters),
    PageRoute("POST", "/events/dead-letters/redrive", redrive),
]
