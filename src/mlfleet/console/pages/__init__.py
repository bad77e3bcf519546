"""Every console page, area by area; the daemon mounts them under ``/console``."""

from mlfleet.console.app import PageRoute
from mlfleet.console.pages import servers

ALL_PAGES: list[PageRoute] = [*servers.ROUTES]
