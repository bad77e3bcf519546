"""Where event deliveries may go: anywhere but mlfleet itself.

A target on the daemon's own port would have mlfleet call itself with a tenant's connection
credentials, from a loopback source address that policies may trust (``aws:SourceIp``), and
could feed events back into the bus. So an API destination naming the daemon's address is a
``ValidationException`` when it is created or updated, and since a name may resolve elsewhere
later, the delivery client's resolver drops the daemon's addresses at every connection (and a
delivery to an IP address, which aiohttp resolves without it, is checked before it is sent).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

WILDCARDS = ("", "0.0.0.0", "::")


def _is_local(address: str) -> bool:
    """Whether ``address`` belongs to this machine (one can bind to it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


class OwnAddress:
    """The daemon's listening address: a host (or a wildcard) and a port."""

    def __init__(self, host: str, port: int) -> None:
        self.port = port
        self._wildcard = host in WILDCARDS
        # The host's IPv4 and IPv6 addresses (the only families a host name resolves to).
        self._listening: set[str] = (
            set()
            if self._wildcard
            else {
                info[4][0] for info in socket.getaddrinfo(host, port) if isinstance(info[4][0], str)
            }
        )

    def is_own(self, address: str, port: int) -> bool:
        if port != self.port:
            return False
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if self._wildcard:
            return ip.is_loopback or ip.is_unspecified or _is_local(str(ip))
        listening = {ipaddress.ip_address(a.split("%", 1)[0]) for a in self._listening}
        # Any loopback address reaches a daemon on one, whatever name the URL gives it.
        return (
            ip in listening
            or ip.is_unspecified
            or (ip.is_loopback and any(a.is_loopback for a in listening))
        )

    def literal_is_own(self, url: str) -> bool:
        """Whether ``url`` names the daemon by IP address (aiohttp asks no resolver then)."""
        parts = urlsplit(url)
        try:
            ipaddress.ip_address(parts.hostname or "")
        except ValueError:
            return False
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return self.is_own(parts.hostname or "", port)

    def names_me(self, url: str) -> bool:
        """Whether ``url`` resolves to the daemon itself (a name that resolves to nothing
        cannot be judged now: the resolver judges it at delivery)."""
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            found = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return False
        return any(self.is_own(str(info[4][0]), port) for info in found)


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver without the daemon's own addresses."""

    def __init__(self, own: OwnAddress) -> None:
        self._own = own
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if not self._own.is_own(r["host"], r["port"])]
        if not kept:
            raise OSError(f"{host}:{port} is mlfleet itself: events are not delivered to it")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def guarded_connector(own: OwnAddress, **kwargs: Any) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(resolver=GuardedResolver(own), **kwargs)
