"""Event targets cannot point at mlfleet itself (an SSRF into the daemon from its own bus)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from mlfleet.events.egress import OwnAddress
from support.daemon import Daemon


def test_an_api_destination_on_the_daemons_own_address_is_refused(daemon: Daemon) -> None:
    events = daemon.client("events")
    connection = events.create_connection(
        Name="egress-self",
        AuthorizationType="API_KEY",
        AuthParameters={"ApiKeyAuthParameters": {"ApiKeyName": "x-key", "ApiKeyValue": "v"}},
    )["ConnectionArn"]
    for url in (
        f"http://127.0.0.1:{daemon.port}/",
        f"http://localhost:{daemon.port}/mlflow/x/api/2.0/mlflow/experiments/create",
        f"http://127.0.0.2:{daemon.port}/",
    ):
        with pytest.raises(ClientError) as refused:
            events.create_api_destination(
                Name="egress-self",
                ConnectionArn=connection,
                InvocationEndpoint=url,
                HttpMethod="POST",
            )
        error = refused.value.response["Error"]
        assert error["Code"] == "ValidationException"
        assert "mlfleet itself" in error["Message"]
    # Another port of the same machine (a receiver beside the daemon) is fine.
    events.create_api_destination(
        Name="egress-ok",
        ConnectionArn=connection,
        InvocationEndpoint=f"http://127.0.0.1:{daemon.port + 1}/hook",
        HttpMethod="POST",
    )
    with pytest.raises(ClientError) as refused:
        events.update_api_destination(
            Name="egress-ok", InvocationEndpoint=f"http://127.0.0.1:{daemon.port}/"
        )
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    events.delete_api_destination(Name="egress-ok")
    events.delete_connection(Name="egress-self")


def test_the_delivery_resolver_drops_the_daemons_addresses() -> None:
    own = OwnAddress("127.0.0.1", 8470)
    assert own.is_own("127.0.0.1", 8470)
    assert own.is_own("127.9.9.9", 8470)
    assert not own.is_own("127.0.0.1", 8471)
    assert own.literal_is_own("http://127.0.0.1:8470/x")
    assert not own.literal_is_own("http://localhost:8470/x")  # a name: the resolver's case
    everywhere = OwnAddress("0.0.0.0", 8470)
    assert everywhere.is_own("127.0.0.1", 8470)
    assert not everywhere.is_own("192.0.2.1", 8470)  # TEST-NET: not this machine
