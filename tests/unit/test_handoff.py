"""The pieces of connection handoff that need no daemon: the channel, the shared generation
counter, tickets, and what the worker's fast lane accepts as a request head."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import pytest
from multidict import CIMultiDict

from mlfleet.auth import sigv4
from mlfleet.mlflow_api.actions import ACTIONS
from mlfleet.mlflow_api.hardening import MAX_REQUEST_HEAD, MAX_REQUEST_LINE
from mlfleet.runtime.fast_lane import (
    BODY_LIMIT,
    INLINE_ACTIONS,
    Head,
    Unfit,
    parse_head,
    signature_holds,
)
from mlfleet.runtime.handoff import Channel, Generation, Message, Ticket, channel_pair

TICKET = Ticket(
    id=7,
    authorization="Basic a2V5OnNlY3JldA==",
    prefix="/mlflow/team-a",
    arn="arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/team-a",
    allowed=frozenset({"sagemaker-mlflow:LogMetric", "sagemaker-mlflow:GetRun"}),
    audited=True,
    caller={"arn": "arn:aws:iam::123456789012:user/ann", "user_id": "AIDA1", "name": "ann"},
    source_ip="127.0.0.1",
    generation=3,
    body_limit=1024,
    audited_body_limit=4096,
    concurrency=2,
)


def test_a_ticket_survives_the_channel() -> None:
    assert Ticket.from_message(TICKET.to_message()) == TICKET


def test_a_message_carries_a_socket_and_bytes_across_the_channel() -> None:
    ours, theirs_fd = channel_pair()
    theirs = Channel.from_fd(theirs_fd)
    left, right = socket.socketpair()
    received: list[tuple[Message, int | None, bytes]] = []
    closed: list[bool] = []

    async def exchange() -> None:
        loop = asyncio.get_running_loop()
        theirs.listen(loop, lambda m, fd, payload: received.append((m, fd, payload)), lambda: None)
        ours.listen(loop, lambda *_: None, lambda: closed.append(True))
        ours.send(TICKET.to_message(), left.fileno(), b"GET / HTTP/1.1\r\n\r\n")
        while not received:
            await asyncio.sleep(0.01)
        theirs.close()
        while not closed:
            await asyncio.sleep(0.01)

    asyncio.run(exchange())
    message, fd, payload = received[0]
    assert Ticket.from_message(message) == TICKET
    assert payload == b"GET / HTTP/1.1\r\n\r\n"
    assert fd is not None and fd != left.fileno()
    # The received descriptor is the same socket: what it sends, the other end reads.
    with socket.socket(fileno=fd) as copy:
        copy.sendall(b"through the copy")
        assert right.recv(100) == b"through the copy"
    assert closed == [True]  # the other end closing is noticed
    left.close()
    right.close()


def test_closing_passes_on_what_the_other_end_sent_before() -> None:
    """A worker's last batch is in the socket when the daemon sees the worker exit and closes
    its end, maybe before the event loop got round to reading it."""
    ours, theirs_fd = channel_pair()
    theirs = Channel.from_fd(theirs_fd)
    events: list[object] = []

    async def last_words() -> None:
        loop = asyncio.get_running_loop()
        ours.listen(
            loop, lambda m, fd, payload: events.append(m["n"]), lambda: events.append("closed")
        )
        theirs.send({"t": "stored", "n": 1})
        theirs.send({"t": "stored", "n": 2})
        theirs.close()
        ours.close()  # at once: the loop has not run the reader yet

    asyncio.run(last_words())
    assert events == [1, 2, "closed"]


def test_listening_to_a_channel_already_closed_says_closed() -> None:
    """A worker that died just before the gateway listens to its channel (the chaos suite's
    find: the listen raised on the closed descriptor, and the client got a 500)."""
    ours, theirs_fd = channel_pair()
    os.close(theirs_fd)
    ours.close()
    events: list[object] = []

    async def listen() -> None:
        ours.listen(
            asyncio.get_running_loop(),
            lambda *_: events.append("message"),
            lambda: events.append("closed"),
        )

    asyncio.run(listen())
    assert events == ["closed"]


def test_the_generation_is_shared_with_a_reader_of_its_descriptor() -> None:
    counter = Generation()
    reader = Generation(os.dup(counter.fd), writable=False)
    assert reader.value() == counter.value() == 0
    counter.bump()
    counter.bump()
    assert reader.value() == 2


def head(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def test_the_lane_parses_a_plain_request_head() -> None:
    raw = head(
        "POST /mlflow/a/api/2.0/mlflow/runs/log-metric HTTP/1.1\n"
        "Host: 127.0.0.1:8470\nContent-Length: 2\nAuthorization:  Basic eA== \n\n"
    )
    parsed = parse_head(raw + b"{}")
    assert parsed is not None
    assert (parsed.method, parsed.target, parsed.length) == (
        "POST",
        "/mlflow/a/api/2.0/mlflow/runs/log-metric",
        2,
    )
    assert parsed.size == len(raw)
    assert parsed.header("authorization") == "Basic eA=="
    assert parse_head(raw[:-2]) is None  # incomplete: wait for more


@pytest.mark.parametrize(
    "raw",
    [
        "GET / HTTP/1.0\n\n",  # not HTTP/1.1
        "GET  / HTTP/1.1\n\n",  # odd request line
        "GET http://elsewhere/ HTTP/1.1\n\n",  # absolute form
        "POST / HTTP/1.1\nTransfer-Encoding: chunked\n\n",
        "POST / HTTP/1.1\nContent-Length: 2\nContent-Length: 3\n\n",
        "GET / HTTP/1.1\nAuthorization: Basic a\nAuthorization: Basic b\n\n",
        "POST / HTTP/1.1\nExpect: 100-continue\nContent-Length: 2\n\n",
        "POST / HTTP/1.1\nContent-Length: -1\n\n",
        f"POST / HTTP/1.1\nContent-Length: {BODY_LIMIT + 1}\n\n",
        "GET / HTTP/1.1\nBad Name: x\n\n",
        "GET / HTTP/1.1\n folded: x\n\n",
        "GET / HTTP/1.1\nX: a\x00b\n\n",
        "GET /a#b HTTP/1.1\n\n",
    ],
)
def test_the_lane_leaves_anything_unusual_to_the_gateway(raw: str) -> None:
    with pytest.raises(Unfit):
        parse_head(head(raw))


def test_an_endless_head_goes_back_to_the_gateway() -> None:
    with pytest.raises(Unfit):
        parse_head(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST_HEAD)


def test_the_lane_reads_a_request_line_as_long_as_the_gateway_does() -> None:
    target = "/api/2.0/mlflow/metrics/get-history-bulk-interval?" + "q" * (MAX_REQUEST_LINE - 80)
    parsed = parse_head(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert parsed is not None and parsed.target == target
    with pytest.raises(Unfit):
        parse_head(f"GET {target}{'q' * 80} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def signed_request(secret: str, token: str | None = None) -> tuple[bytes, bytes]:
    """A request head as the sagemaker-mlflow plugin sends it (botocore's signer), and body."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = b'{"run_id": "r1", "key": "loss", "value": 0.5, "timestamp": 1, "step": 0}'
    request = AWSRequest(
        "POST",
        "http://127.0.0.1:8080/api/2.0/mlflow/runs/log-metric",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    SigV4Auth(Credentials("AKIDSIGNER", secret, token), "sagemaker-mlflow", "us-east-1").add_auth(
        request
    )
    lines = ["POST /api/2.0/mlflow/runs/log-metric HTTP/1.1", "Host: 127.0.0.1:8080"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), body


def ticket_scope(secret: str, head: Head, **changes: Any) -> dict[str, Any]:
    info = sigv4.parse_authorization(CIMultiDict(head.headers))
    scope = {
        "access_key_id": info.access_key_id,
        "date": info.date,
        "region": info.region,
        "service": info.service,
        "security_token": info.security_token,
        "expires_at": None,
        "key": sigv4.signing_key(secret, info.date, info.region, info.service).hex(),
    }
    return {**scope, **changes}


def test_the_lane_verifies_each_sigv4_signature_against_the_tickets_scope() -> None:
    secret = "s3cr3t/" + "k" * 33
    raw, body = signed_request(secret, token="session-token")
    head = parse_head(raw)
    assert head is not None
    assert signature_holds(ticket_scope(secret, head), head, body)
    # Another body than the one signed, another key, another day, another session, or a
    # session past its expiry: each goes back to the gateway.
    assert not signature_holds(ticket_scope(secret, head), head, body + b" ")
    wrong_key = sigv4.signing_key("other", "20260101", "us-east-1", "sagemaker-mlflow").hex()
    assert not signature_holds(ticket_scope(secret, head, key=wrong_key), head, body)
    assert not signature_holds(ticket_scope(secret, head, date="20200101"), head, body)
    assert not signature_holds(ticket_scope(secret, head, security_token="other"), head, body)
    assert not signature_holds(ticket_scope(secret, head, expires_at=time.time() - 1), head, body)
    assert signature_holds(ticket_scope(secret, head, expires_at=time.time() + 60), head, body)


def test_the_calls_a_lone_connection_runs_on_the_event_loop_are_sagemaker_mlflow_actions() -> None:
    assert {action.split(":", 1)[1] for action in INLINE_ACTIONS} <= ACTIONS
    assert "sagemaker-mlflow:LogMetric" in INLINE_ACTIONS
    assert "sagemaker-mlflow:SearchRuns" not in INLINE_ACTIONS  # can run long


def test_received_connections_are_not_inherited_by_spawned_processes() -> None:
    """A connection a worker hands back arrives close-on-exec: a worker or endpoint instance
    spawned next must never hold another client's connection."""
    import os
    import socket as socket_module

    from mlfleet.runtime.handoff import channel_pair

    ours, theirs = channel_pair()
    peer = socket_module.socket(fileno=theirs)
    passed_a, passed_b = socket_module.socketpair()
    try:
        socket_module.send_fds(peer, [b"x"], [passed_a.fileno()])
        _data, fds = ours._receive()
        assert fds and all(not os.get_inheritable(fd) for fd in fds)
        for fd in fds:
            os.close(fd)
    finally:
        peer.close()
        passed_a.close()
        passed_b.close()
        ours.close()
