"""Where a tracking server's outbound connections may go.

A destination is allowed when the host the server asked for matches an entry of the allowlist
(built-in provider hosts plus the operator's ``egress_allow``) and the address it is about to
be connected to is acceptable for that entry:

- a name entry (``api.openai.com``, ``*.openai.azure.com``, optionally ``:port``) admits only
  public addresses: a provider name that resolves to a loopback, private, link-local (cloud
  metadata), shared or reserved address is refused, so a DNS answer cannot turn an allowed
  name into a way into the operator's network;
- an address entry (``10.1.2.3``, ``10.0.0.0/8``, ``127.0.0.1:8080``, ``[::1]:8080``) admits
  that address whatever its kind: the operator has named it on purpose.

Plain HTTP is allowed only where an address entry admits it. The daemon's own port is never a
destination (events.egress). The check is made on the address
the proxy then connects to, never on a name resolved again later.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from mlfleet.common.tags import switched_off
from mlfleet.events.egress import OwnAddress

EGRESS_TAG = "mlfleet:egress"

# The APIs of the LLM providers MLflow's AI gateway and judges talk to; more with egress_allow.
PROVIDER_HOSTS = (
    "api.openai.com",
    "*.openai.azure.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "*-aiplatform.googleapis.com",
    "bedrock-runtime.*.amazonaws.com",
    "api.mistral.ai",
    "api.cohere.com",
    "api.groq.com",
    "api.together.xyz",
    "api.deepseek.com",
    "openrouter.ai",
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def egress_on(tags: Sequence[dict[str, str]]) -> bool:
    """Whether a server with these tags may connect out (tag mlfleet:egress=off: not)."""
    return not switched_off(tags, EGRESS_TAG)


def _name(host: str) -> str:
    """A host as entries are matched against it: lower case, no trailing dot or brackets."""
    return host.lower().rstrip(".").strip("[]")


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class Entry:
    """One allowlist entry: a host pattern or a network, and a port (None: any)."""

    pattern: str | None
    network: Network | None
    port: int | None

    @classmethod
    def parse(cls, text: str) -> Entry:
        text = text.strip().lower()
        if not text:
            raise ValueError("an empty egress allowlist entry")
        host, port = text, None
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else None
        elif text.count(":") == 1:
            host, _, number = text.partition(":")
            port = int(number)
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"egress allowlist entry {text!r}: no such port")
        try:
            return cls(None, ipaddress.ip_network(host, strict=False), port)
        except ValueError:
            pass
        if not host or any(c in host for c in "/[]@ "):
            raise ValueError(f"egress allowlist entry {text!r}: expected a host or a network")
        return cls(host.rstrip("."), None, port)

    def admits(self, host: str, address: IPAddress, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.network is not None:
            return address in self.network
        assert self.pattern is not None
        return fnmatchcase(host, self.pattern) and _public(address)


def allowlist(allowed: Iterable[str]) -> tuple[Entry, ...]:
    """The built-in provider hosts and the operator's entries; ValueError for a bad entry."""
    return tuple(Entry.parse(text) for text in (*PROVIDER_HOSTS, *allowed))


class EgressPolicy:
    def __init__(self, allowed: Iterable[str], own: OwnAddress) -> None:
        self._entries = allowlist(allowed)
        self._own = own

    def may_admit(self, host: str, port: int) -> bool:
        """Whether some address ``host`` resolves to could be allowed: False means it is
        refused before any lookup (which, for a name nobody allowed, may take long)."""
        name = _name(host)
        return any(
            (entry.port is None or entry.port == port)
            and (entry.network is not None or fnmatchcase(name, entry.pattern or ""))
            for entry in self._entries
        )

    def refusal(self, host: str, address: str, port: int, plain_http: bool = False) -> str | None:
        """Why connecting to ``address``:``port``, which ``host`` resolved to, is refused, or
        None when it is allowed. Plain HTTP goes only to destinations allowed by address: to
        a provider on the internet it would carry the API key in clear."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if self._own.is_own(str(ip), port):
            return f"{host}:{port} is mlfleet itself"
        name = _name(host)
        admitting = [entry for entry in self._entries if entry.admits(name, ip, port)]
        if any(entry.network is not None for entry in admitting):
            return None
        if admitting:
            if plain_http:
                return f"plain http to {host} would send the provider's key in clear: use https"
            return None
        if any(e.pattern and fnmatchcase(name, e.pattern) for e in self._entries):
            return (
                f"{host} resolves to {ip}, which is not a public address; allow it by address "
                "(mlfleet up --egress-allow) if it is a provider of yours"
            )
        return self.unlisted(host, port)

    @staticmethod
    def unlisted(host: str, port: int) -> str:
        return (
            f"{host}:{port} is not on the egress allowlist (the built-in provider hosts and "
            "mlfleet up --egress-allow)"
        )
