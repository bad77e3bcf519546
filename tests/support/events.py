"""Events for tests: an HTTP receiver on loopback, and rules that deliver to it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from support.aws import unique
from support.daemon import Daemon, free_port
from support.waiting import wait_for

API_KEY = "receiver-key-0123456789"


class Receiver:
    """An HTTP endpoint that records what it is sent; it can be told to fail or be stopped."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[dict[str, Any]] = []
        self.status = 200
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.status == 200:
                    receiver.received.append(
                        {"body": json.loads(body), "raw": body, "headers": dict(self.headers)}
                    )
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def bodies(self) -> list[Any]:
        return [r["body"] for r in self.received]


def route_to(daemon: Daemon, receiver: Receiver, pattern: dict[str, Any], **target: Any) -> str:
    """A rule with `pattern` whose one target is `receiver` (an API destination)."""
    events = daemon.client("events")
    name = unique("rule")
    connection = events.create_connection(
        Name=name,
        AuthorizationType="API_KEY",
        AuthParameters={
            "ApiKeyAuthParameters": {"ApiKeyName": "x-api-key", "ApiKeyValue": API_KEY}
        },
    )
    destination = events.create_api_destination(
        Name=name,
        ConnectionArn=connection["ConnectionArn"],
        InvocationEndpoint=receiver.url,
        HttpMethod="POST",
    )
    events.put_rule(Name=name, EventPattern=json.dumps(pattern))
    put = events.put_targets(
        Rule=name,
        Targets=[{"Id": "receiver", "Arn": destination["ApiDestinationArn"], **target}],
    )
    assert put["FailedEntryCount"] == 0, put
    return name


def wait_received(receiver: Receiver, count: int, timeout: float = 60) -> list[Any]:
    wait_for(lambda: len(receiver.received) >= count, timeout, what=f"{count} deliveries")
    return receiver.bodies()


def detail_types(receiver: Receiver, containing: str, count: int) -> list[str]:
    """The detail-types of the first ``count`` events received whose detail-type contains
    ``containing``, once that many have come."""

    def found() -> list[str] | None:
        seen = [b["detail-type"] for b in receiver.bodies()]
        matching = [t for t in seen if containing in t]
        return matching[:count] if len(matching) >= count else None

    return wait_for(found, 60, what=f"{count} events of {containing!r}")
