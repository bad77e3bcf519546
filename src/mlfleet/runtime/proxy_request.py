"""The head of a request sent to an HTTP proxy: read by the egress proxy and a worker's forwarder.

HTTP clients send a proxy either ``CONNECT host:port`` (HTTPS) or an absolute-form request
(``POST http://host:port/path``, plain HTTP), with the proxy credentials of the proxy URL in
``Proxy-Authorization``. Both relays read only the head, decide, and then relay bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 16 * 1024
# Hop-by-hop headers of the client-proxy hop, not sent on.
_PROXY_HEADERS = (b"proxy-authorization", b"proxy-connection", b"connection", b"keep-alive")


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status

    def response(self, who: str) -> bytes:
        """The refusal as an HTTP answer: MLflow passes its body on to its caller."""
        body = f"{who}: {self}\n".encode()
        return (
            f"HTTP/1.1 {self.status} Refused\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )


@dataclass
class Head:
    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]]

    @classmethod
    def parse(cls, raw: bytes) -> Head:
        lines = raw.split(b"\r\n")
        try:
            method, target, version = lines[0].decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError) as exc:
            raise Refused(400, "a malformed request line") from exc
        headers = []
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(b":")
                if not sep:
                    raise Refused(400, "a malformed header line")
                headers.append((name.strip().lower(), value.strip()))
        return cls(method, target, version, headers)

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)

    def origin_form(self, path: str, host: bytes | None = None) -> bytes:
        """The request as the origin server expects it: origin-form target, no proxy headers
        (``host`` in place of the client's Host, when given), and the connection closed after
        the answer: the next request on it may be for another host."""
        query = urlsplit(self.target).query
        target = path + (f"?{query}" if query else "")
        lines = [f"{self.method} {target} {self.version}".encode()]
        dropped = _PROXY_HEADERS + ((b"host",) if host is not None else ())
        lines += [k + b": " + v for k, v in self.headers if k not in dropped]
        if host is not None:
            lines.append(b"host: " + host)
        lines.append(b"connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"
