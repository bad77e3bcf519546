"""``POST /`` carries several AWS services; the SigV4 credential scope says which one is asked.

SageMaker and CloudTrail speak AWS JSON 1.1 (``X-Amz-Target``); IAM and STS speak the query
protocol (a form with ``Action=``). Clients sign for the service they mean, so the scope picks
the endpoint before anything is verified; each endpoint then verifies the signature for its own
service. An unsigned call is refused by the endpoint its format points to, in its format.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from mlfleet.api.endpoint import Endpoint
from mlfleet.auth.sigv4 import claimed_credential

_FORM = "application/x-www-form-urlencoded"


class ControlPlane:
    def __init__(self, endpoints: Mapping[str, Endpoint]) -> None:
        self._endpoints = endpoints

    async def handle(self, request: web.Request) -> web.Response:
        claimed = claimed_credential(request.headers.get("Authorization", ""))
        region, service = (claimed.region, claimed.service) if claimed else ("", "")
        if service not in self._endpoints:
            service = "iam" if request.content_type == _FORM else "sagemaker"
        return await self._endpoints[service].handle(request, region)
