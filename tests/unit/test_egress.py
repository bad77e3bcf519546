"""The egress policy's decisions, and the proxy's reading of a request, without a daemon."""

from __future__ import annotations

import pytest

from mlfleet.egress.policy import EgressPolicy, Entry, allowlist, egress_on
from mlfleet.egress.proxy import _destination
from mlfleet.events.egress import OwnAddress
from mlfleet.runtime.proxy_request import Head, Refused

OWN = OwnAddress("127.0.0.1", 8470)


def policy(*allowed: str) -> EgressPolicy:
    return EgressPolicy(allowed, OWN)


@pytest.mark.parametrize(
    ("host", "address", "port"),
    [
        ("api.openai.com", "162.159.140.245", 443),
        ("my-resource.openai.azure.com", "20.42.1.1", 443),
        ("bedrock-runtime.eu-west-1.amazonaws.com", "52.94.1.1", 443),
    ],
)
def test_built_in_providers_on_public_addresses_are_allowed(
    host: str, address: str, port: int
) -> None:
    assert policy().refusal(host, address, port) is None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.5",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fd00:ec2::254",
        "fe80::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
def test_a_providers_name_resolving_inwards_is_refused(address: str) -> None:
    # DNS rebinding: the name is allowed, the address it resolves to now is not.
    refusal = policy().refusal("api.openai.com", address, 443)
    assert refusal is not None and "not a public address" in refusal


def test_hosts_off_the_allowlist_are_refused() -> None:
    refusal = policy().refusal("example.com", "93.184.216.34", 443)
    assert refusal is not None and "not on the egress allowlist" in refusal


def test_an_address_entry_admits_a_private_address_on_its_port_only() -> None:
    allowed = policy("10.1.2.3:8000", "192.168.0.0/16")
    assert allowed.refusal("10.1.2.3", "10.1.2.3", 8000) is None
    assert allowed.refusal("vllm.internal", "10.1.2.3", 8000) is None
    assert allowed.refusal("10.1.2.3", "10.1.2.3", 8001) is not None
    assert allowed.refusal("ollama.lan", "192.168.7.7", 11434) is None


def test_plain_http_goes_only_where_an_address_entry_allows() -> None:
    allowed = policy("10.1.2.3:8000")
    assert allowed.refusal("10.1.2.3", "10.1.2.3", 8000, plain_http=True) is None
    refusal = allowed.refusal("api.openai.com", "162.159.140.245", 80, plain_http=True)
    assert refusal is not None and "in clear" in refusal


def test_the_daemon_itself_is_never_a_destination() -> None:
    everything = policy("0.0.0.0/0", "::/0")
    refusal = everything.refusal("127.0.0.1", "127.0.0.1", 8470)
    assert refusal is not None and "mlfleet itself" in refusal
    assert everything.refusal("127.0.0.1", "127.0.0.1", 8471) is None


@pytest.mark.parametrize(
    ("text", "pattern", "network", "port"),
    [
        ("API.example.com", "api.example.com", None, None),
        ("*.example.com:8443", "*.example.com", None, 8443),
        ("10.0.0.0/8", None, "10.0.0.0/8", None),
        ("127.0.0.1:9000", None, "127.0.0.1/32", 9000),
        ("[::1]:9000", None, "::1/128", 9000),
        ("fd00::/8", None, "fd00::/8", None),
    ],
)
def test_allowlist_entries(
    text: str, pattern: str | None, network: str | None, port: int | None
) -> None:
    entry = Entry.parse(text)
    assert entry.pattern == pattern
    assert (str(entry.network) if entry.network else None) == network
    assert entry.port == port


@pytest.mark.parametrize("text", ["", "host:0", "host:99999", "user@host", "a/b c"])
def test_bad_allowlist_entries_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        allowlist([text])


def test_the_egress_tag_switches_a_server_off() -> None:
    assert egress_on([])
    assert egress_on([{"Key": "mlfleet:egress", "Value": "on"}])
    assert not egress_on([{"Key": "mlfleet:egress", "Value": "OFF"}])


def test_a_plain_http_request_is_sent_on_in_origin_form_without_proxy_headers() -> None:
    head = Head.parse(
        b"POST http://10.1.2.3:8000/v1/chat?x=1 HTTP/1.1\r\nHost: 10.1.2.3:8000\r\n"
        b"Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n"
        b"Content-Length: 2"
    )
    assert _destination(head) == ("10.1.2.3", 8000, "/v1/chat")
    sent = head.origin_form("/v1/chat")
    assert sent.startswith(b"POST /v1/chat?x=1 HTTP/1.1\r\n")
    assert b"c2VjcmV0" not in sent and b"proxy-connection" not in sent
    assert sent.endswith(b"content-length: 2\r\nconnection: close\r\n\r\n")


@pytest.mark.parametrize(
    "line",
    [
        b"CONNECT api.openai.com HTTP/1.1",
        b"GET /relative HTTP/1.1",
        b"GET https://api.openai.com/ HTTP/1.1",
        b"GET http://host:port/ HTTP/1.1",
        b"GARBAGE",
    ],
)
def test_requests_the_proxy_does_not_serve(line: bytes) -> None:
    with pytest.raises(Refused):
        _destination(Head.parse(line))


def test_names_nobody_allowed_are_refused_before_any_lookup() -> None:
    assert not policy().may_admit("raw.githubusercontent.com", 443)
    assert policy().may_admit("api.openai.com", 443)
    # An address entry may admit whatever name resolves to its address, on its port.
    assert policy("10.1.2.3:8000").may_admit("vllm.internal", 8000)
    assert not policy("10.1.2.3:8000").may_admit("vllm.internal", 8001)
