"""mlfleet's own calls to a tracking server's MLflow API (the registry sync's), through the
server's workers like any request: admitted, then forwarded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlfleet.gateway.admission import Admission
from mlfleet.gateway.forwarding import Forwarding


class OwnCalls:
    def __init__(self, admission: Admission, forwarding: Forwarding) -> None:
        self._admission = admission
        self._forwarding = forwarding

    async def __call__(
        self, server_id: str, method: str, path: str, body: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        worker = await self._admission.acquire(server_id, capped=True)
        if worker is None:
            raise RuntimeError(f"tracking server {server_id} is not serving")
        try:
            return await self._forwarding.call(worker, method, path, body)
        finally:
            self._admission.release(server_id, worker)
