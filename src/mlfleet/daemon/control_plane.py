"""``POST /`` carries three AWS services; the SigV4 credential scope says which one is asked.

SageMaker speaks AWS JSON 1.1 (``X-Amz-Target``); IAM and STS speak the query protocol (a form
with ``Action=``). Clients sign for the service they mean, so the scope picks the API before
anything is verified; each API then verifies the signature for its own service.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from mlfleet.fleet.responses import SageMakerApi
from mlfleet.iam.responses import QueryApi

_FORM = "application/x-www-form-urlencoded"


def credential_scope(authorization: str) -> tuple[str, str] | None:
    """(region, service) from an AWS4-HMAC-SHA256 Authorization header, unverified."""
    marker = "Credential="
    start = authorization.find(marker)
    if start < 0:
        return None
    credential = authorization[start + len(marker) :].split(",", 1)[0].strip()
    parts = credential.split("/")
    return (parts[2], parts[3]) if len(parts) == 5 else None


class ControlPlane:
    def __init__(self, sagemaker: SageMakerApi, query_apis: Mapping[str, QueryApi]) -> None:
        self._sagemaker = sagemaker
        self._query_apis = query_apis
        self._default_query_api = query_apis["iam"]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        scope = credential_scope(request.headers.get("Authorization", ""))
        if scope is not None:
            region, service = scope
            api = self._query_apis.get(service)
            if api is not None:
                return await api.handle(request, body, region)
        elif request.content_type == _FORM:
            # Unsigned query-protocol call: answered (refused) in that protocol's XML.
            return await self._default_query_api.handle(request, body, "")
        return await self._sagemaker.handle(request, body)
