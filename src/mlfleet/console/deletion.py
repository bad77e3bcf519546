"""What a console button does: one API call, then back to a page saying how it went.

A refusal is flashed with AWS's code and message and leads back to the resource's page; success
is flashed and leads on. Deleting asks first: a resource at ``<detail>`` is deleted at
``<detail>/delete``, where GET asks for the name typed out and POST deletes once it was typed
exactly (a slip on a button cannot delete anything).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from aiohttp import web

from mlfleet.console.app import Page, Visit
from mlfleet.protocol.errors import AwsError


def attempt(
    visit: Visit, call: Callable[[], object], back: str, done: str, after: str | None = None
) -> NoReturn:
    """Run `call` (API calls as the signed-in principal); go to `after` (else `back`) saying
    `done`, or back to `back` with the refusal."""
    try:
        call()
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(back) from None
    raise visit.back(after or back, done)


def named_action(
    service: str, operation: str, member: str, detail: Callable[[str], str], done: str
) -> Page:
    """A button's POST: `operation` on the resource the path names (``{name}``) as `member`,
    then back to its page; `done` may say ``{name}``."""

    async def run(visit: Visit) -> web.StreamResponse:
        name = visit.request.match_info["name"]
        attempt(
            visit,
            lambda: visit.call(service, operation, {member: name}),
            detail(name),
            done.format(name=name),
        )

    return run


@dataclass(frozen=True)
class Deletion:
    noun: str
    # The resource's page by name: the form posts below it, Cancel and refusals return to it.
    detail: Callable[[str], str]
    # Where to go once it is deleted.
    after: str
    # What deleting does, said before the name is typed.
    consequence: str
    # The API call(s) that delete it, as the signed-in principal.
    run: Callable[[Visit, str], object]
    # Said once it is deleted; may say {name}.
    done: str

    async def confirm(self, visit: Visit) -> web.StreamResponse:
        return self._page(visit, None, 200)

    async def delete(self, visit: Visit) -> web.StreamResponse:
        name = visit.request.match_info["name"]
        if visit.field("confirm") != name:
            return self._page(visit, f"Type the {self.noun}'s name exactly to confirm.", 400)
        attempt(
            visit,
            lambda: self.run(visit, name),
            self.detail(name),
            self.done.format(name=name),
            after=self.after,
        )

    def _page(self, visit: Visit, error: str | None, status: int) -> web.Response:
        name = visit.request.match_info["name"]
        return visit.render(
            "_delete.html",
            status=status,
            noun=self.noun,
            name=name,
            detail=self.detail(name),
            consequence=self.consequence,
            error=error,
        )
