"""Every console page, area by area; the daemon mounts them under ``/console``."""

from mlfleet.console.app import PageRoute
from mlfleet.console.pages import apps, audit, endpoints, events, iam, registry, servers

ALL_PAGES: list[PageRoute] = [
    *servers.ROUTES,
    *apps.ROUTES,
    *iam.ROUTES,
    *audit.ROUTES,
    *events.ROUTES,
    *registry.ROUTES,
    *endpoints.ROUTES,
]
