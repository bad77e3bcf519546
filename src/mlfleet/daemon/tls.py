"""HTTPS for anyone not on this machine, and no secret accepted in clear text from them.

The daemon serves HTTPS with the operator's certificate (``--tls-cert/--tls-key``), or, when it
listens beyond loopback without one, with a certificate it makes: a small CA of its own signs
it, and the CA (``<data-dir>/ca.pem``) is what clients trust (the AWS ``config`` file names it).
The CA's key is dropped once the certificate is signed: it could sign for any name, and a
client that trusts ca.pem should trust this daemon only. A certificate that no longer names the
daemon's host or this machine, or is about to expire, is made again with a new CA.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import logging
import os
import re
import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mlfleet.gateway.proxy import mlflow_error
from mlfleet.protocol.errors import AccessDeniedException
from mlfleet.settings import Settings

log = logging.getLogger(__name__)

CERT_DAYS = 825
CA_DAYS = CERT_DAYS + 1
# A certificate this close to its end is made again at start, before clients see it expire.
RENEW_BEFORE = datetime.timedelta(days=30)
_SIOCGIFADDR = 0x8915
_GATEWAY = re.compile(r"/(mlflow|api|ajax-api)/")
_PRESIGNED_LINK = re.compile(r"/mlflow/[^/]+/auth")
_CONSOLE_SIGN_IN = re.compile(r"/console/sign-in(/.*)?")


class TlsError(Exception):
    """The operator's certificate or key cannot be served."""


@dataclass(frozen=True)
class Tls:
    context: ssl.SSLContext
    # SHA-256 of the certificate served, as browsers and `openssl x509 -fingerprint` show it.
    fingerprint: str
    # The CA clients must trust, when the daemon made the certificate itself.
    ca_file: Path | None

    def banner(self) -> str:
        """Lines of `mlfleet up`'s banner: what a client checks or trusts."""
        lines = f"  https:       certificate SHA-256 {self.fingerprint}\n"
        if self.ca_file:
            lines += (
                f"               made by mlfleet; clients trust its CA {self.ca_file} (the "
                "config file names it; MLflow: MLFLOW_TRACKING_SERVER_CERT_PATH)\n"
            )
        return lines


def serve_tls(settings: Settings) -> Tls | None:
    """The TLS the daemon serves with, None for plain HTTP (loopback, no certificate given)."""
    if not settings.tls:
        return None
    ca_file: Path | None = None
    if settings.tls_cert:
        cert, key = Path(settings.tls_cert).expanduser(), Path(settings.tls_key).expanduser()
    else:
        cert, key, ca_file = _own_certificate(settings)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
        served = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise TlsError(f"cannot serve HTTPS with {cert} and {key}: {exc}") from exc
    return Tls(context, fingerprint(served), ca_file)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _own_certificate(settings: Settings) -> tuple[Path, Path, Path]:
    folder = settings.data_dir / "tls"
    cert, key, ca_file = folder / "cert.pem", folder / "key.pem", settings.ca_file
    if cert.exists() and key.exists() and ca_file.exists():
        current = x509.load_pem_x509_certificate(cert.read_bytes())
        covered = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        fresh = current.not_valid_after_utc - RENEW_BEFORE > _now()
        if fresh and _required_names(settings) <= set(covered):
            return cert, key, ca_file
        log.warning(
            "the HTTPS certificate mlfleet made no longer covers its names or expires soon: "
            "making a new one with a new CA; clients must trust the new %s",
            ca_file,
        )
    folder.mkdir(mode=0o700, exist_ok=True)
    ca_pem, cert_pem, key_pem = _issue(_names(settings))
    _write(key, key_pem)
    _write(cert, cert_pem)
    _write(ca_file, ca_pem)
    return cert, key, ca_file


def _required_names(settings: Settings) -> set[x509.GeneralName]:
    """What clients must be able to call this daemon: the host it listens on or is published
    as, this machine's name, and loopback."""
    hosts = {"localhost", "127.0.0.1", "::1", socket.gethostname(), settings.host}
    hosts.add(urlsplit(settings.public_url).hostname or "")
    return _general_names(hosts)


def _names(settings: Settings) -> set[x509.GeneralName]:
    """The required names and what else reaches this machine now (a daemon on 0.0.0.0 is
    reached by any address of it); a change of the latter alone makes no new certificate."""
    hosts = {socket.getfqdn(), *_interface_addresses()}
    try:
        found = {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}
        hosts.update(address for address in found if "%" not in address)  # no link-local
    except OSError:
        pass  # a hostname that does not resolve is still a name clients may use
    return _required_names(settings) | _general_names(hosts)


def _general_names(hosts: set[str]) -> set[x509.GeneralName]:
    names: set[x509.GeneralName] = set()
    for host in filter(None, hosts):
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            names.add(x509.DNSName(host.lower()))
            continue
        if not address.is_unspecified:  # 0.0.0.0 and :: are listen addresses, not names
            names.add(x509.IPAddress(address))
    return names


def _interface_addresses() -> set[str]:
    """The IPv4 address of each network interface of this machine (Linux's SIOCGIFADDR)."""
    found = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue  # no IPv4 address on this interface
            found.add(socket.inet_ntoa(answer[20:24]))
    return found


def _issue(names: set[x509.GeneralName]) -> tuple[bytes, bytes, bytes]:
    """A CA certificate, and a server certificate for `names` signed by it with its key."""
    now = _now()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"mlfleet CA {socket.gethostname()}"[:64])]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlfleet")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                sorted(names, key=lambda name: (type(name).__name__, str(name.value)))
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# Secrets in clear text ---------------------------------------------------------------------


@web.middleware
async def refuse_secrets_in_clear(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse, over plain HTTP from another address, what would carry a secret: HTTP Basic
    (an access key's secret), console sign-in and presigned links (their tokens, and the
    session cookie they set). The secret already crossed the network; the refusal keeps it
    from working and tells the client to use HTTPS."""
    if request.secure or _loopback(request.remote):
        return await handler(request)
    path = request.path
    if _PRESIGNED_LINK.fullmatch(path) or _CONSOLE_SIGN_IN.fullmatch(path):
        what = "a sign-in link" if _PRESIGNED_LINK.fullmatch(path) else "a console sign-in"
        return web.Response(status=403, text=_required(what) + "\n")
    if not request.headers.get("Authorization", "").lower().startswith("basic "):
        return await handler(request)
    message = _required("an access key's secret (HTTP Basic)")
    if _GATEWAY.match(path):
        return mlflow_error(403, "PERMISSION_DENIED", message)
    refused = AccessDeniedException(message)
    return web.Response(status=403, body=refused.body(), content_type="application/x-amz-json-1.1")


def _required(what: str) -> str:
    return (
        f"TLS is required: {what} is refused over plain HTTP from another host, where anyone "
        "on the network could read it. Connect with https:// to a daemon serving HTTPS "
        "(mlfleet up --tls-cert/--tls-key, or --host beyond loopback)."
    )


def _loopback(remote: str | None) -> bool:
    if not remote:
        return True  # a Unix socket: only this machine reaches it
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
