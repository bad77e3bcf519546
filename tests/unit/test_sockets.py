"""The Unix-socket connector: a process that is not (or no longer) listening."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from mlfleet.runtime.sockets import socket_session, socket_url


def test_an_absent_socket_is_a_client_connection_error(tmp_path: Path) -> None:
    # What the health wait and the gateway catch; it was an AttributeError (the connector named
    # an exception that the aiohttp package does not export).
    async def connect() -> BaseException | None:
        async with socket_session(tmp_path) as http:
            try:
                await http.get(socket_url("s-0123456789abcdef", "w-1", "/health"))
            except Exception as exc:
                return exc
        return None

    error = asyncio.run(connect())
    assert isinstance(error, aiohttp.ClientConnectionError)
    assert str(tmp_path / "s-0123456789abcdef" / "w-1.sock") in str(error)
