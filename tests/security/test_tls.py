"""TLS for anyone not on this machine: HTTPS with the operator's certificate or one the daemon
makes when it listens beyond loopback, the real clients over it, and no secret accepted over
plain HTTP from another address (``--host 0.0.0.0`` used to take Basic secrets and session
cookies in clear text). Other addresses are this machine's own: the client binds its socket to
a non-loopback address of this machine."""

from __future__ import annotations

import base64
import configparser
import datetime
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mlflow import MlflowClient

from mlfleet.daemon.tls import serve_tls
from mlfleet.settings import Settings
from support.daemon import Daemon

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/mlfleet"
TLS_REQUIRED = "TLS is required"


def other_address() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one (`ip -4 addr`)."""
    listed = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for address in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", listed):
        if not ipaddress.ip_address(address).is_loopback:
            return address
    return None


OTHER = other_address()
needs_other_address = pytest.mark.skipif(
    OTHER is None, reason="this machine has only loopback addresses: no other source to use"
)


def issue_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """What an operator brings: a CA, and a certificate for 127.0.0.1 and localhost it signed."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def served_certificate(port: int) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", port)).encode())


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def basic(daemon: Daemon) -> str:
    key, secret = daemon.credentials
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


def from_address(
    daemon: Daemon,
    source: str,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, str, str]:
    """One request whose connection comes from `source` (status, media type, body)."""
    if daemon.ca:
        context = ssl.create_default_context(cafile=str(daemon.ca))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", daemon.port, source_address=(source, 0), context=context, timeout=30
        )
    else:
        conn = http.client.HTTPConnection(
            "127.0.0.1", daemon.port, source_address=(source, 0), timeout=30
        )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        media_type = answer.getheader("Content-Type", "").split(";")[0]
        return answer.status, media_type, answer.read().decode()
    finally:
        conn.close()


def secure_only_user(daemon: Daemon) -> dict[str, str]:
    """A user allowed to list servers only over TLS (aws:SecureTransport)."""
    iam = daemon.client("iam")
    name = f"tls-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=name)
    statement = {
        "Effect": "Allow",
        "Action": "sagemaker:ListMlflowTrackingServers",
        "Resource": "*",
        "Condition": {"Bool": {"aws:SecureTransport": "true"}},
    }
    iam.put_user_policy(
        UserName=name,
        PolicyName="tls-only",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
    )
    return iam.create_access_key(UserName=name)["AccessKey"]


def cookie_header(answer: requests.Response) -> str:
    return answer.headers.get("Set-Cookie", "")


def test_operator_certificate_serves_every_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = issue_certificate(tmp_path / "pki")
    daemon = Daemon(
        tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key), ca=ca
    ).start()
    try:
        assert (
            fingerprint(served_certificate(daemon.port))
            in (daemon.data_dir / "daemon.out").read_text()
        )
        config = configparser.ConfigParser()
        config.read(daemon.data_dir / "config")
        assert config["default"]["endpoint_url"] == daemon.url
        assert "ca_bundle" not in config["default"]  # the operator's CA is theirs to hand out
        with pytest.raises(requests.RequestException):
            requests.get(f"http://127.0.0.1:{daemon.port}/health", timeout=5)

        # boto3
        sm = daemon.client()
        sm.create_mlflow_tracking_server(
            TrackingServerName="over-tls",
            ArtifactStoreUri=f"file://{tmp_path}/artifacts/over-tls",
            RoleArn=ROLE,
        )
        server = daemon.wait_status("over-tls", "Created", "CreateFailed")
        assert server["TrackingServerStatus"] == "Created", server
        assert server["TrackingServerUrl"] == f"{daemon.url}/mlflow/over-tls"

        # the AWS CLI
        aws_cli = [sys.executable, "-m", "awscli", "--ca-bundle", str(ca)]
        listed = subprocess.run(
            [*aws_cli, "sagemaker", "list-mlflow-tracking-servers", "--output", "json"],
            env=daemon.cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        summaries = json.loads(listed.stdout)["TrackingServerSummaries"]
        assert [s["TrackingServerName"] for s in summaries] == ["over-tls"]

        # the MLflow client (HTTP Basic, artifacts through the proxy), several calls on one
        # keep-alive connection: a TLS connection is never handed to a worker
        access_key, secret = daemon.credentials
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(ca))
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", access_key)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
        client = MlflowClient(tracking_uri=server["TrackingServerUrl"])
        run = client.create_run(client.create_experiment("tls"))
        for step in range(5):
            client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
        client.log_text(run.info.run_id, "over TLS", "notes/tls.txt")
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 5
        assert client.download_artifacts(run.info.run_id, "notes/tls.txt", str(tmp_path))

        # the S3 endpoint: over HTTPS botocore streams bodies aws-chunked, checksum trailing
        s3 = daemon.client("s3")
        prefix = run.info.artifact_uri.removeprefix("mlflow-artifacts:/").strip("/")
        s3.put_object(Bucket="over-tls", Key=f"{prefix}/notes/s3.txt", Body=b"chunked")
        got = s3.get_object(Bucket="over-tls", Key=f"{prefix}/notes/s3.txt")
        assert got["Body"].read() == b"chunked"
        fetched = client.download_artifacts(run.info.run_id, "notes/s3.txt", str(tmp_path))
        assert Path(fetched).read_bytes() == b"chunked"

        # aws:SecureTransport is true over TLS
        tls_only = secure_only_user(daemon)
        daemon.client(
            key=tls_only["AccessKeyId"], secret=tls_only["SecretAccessKey"]
        ).list_mlflow_tracking_servers()

        # cookies are Secure: the MLflow UI's through a presigned link, the console's
        link = sm.create_presigned_mlflow_tracking_server_url(TrackingServerName="over-tls")
        assert link["AuthorizedUrl"].startswith(f"{daemon.url}/mlflow/over-tls/auth?")
        opened = requests.get(link["AuthorizedUrl"], verify=str(ca), allow_redirects=False)
        assert opened.status_code == 302 and "Secure" in cookie_header(opened)
        browser = requests.Session()
        form = browser.get(f"{daemon.url}/console/sign-in", verify=daemon.verify).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf
        signed_in = browser.post(
            f"{daemon.url}/console/sign-in",
            data={"csrf": csrf[1], "access_key_id": access_key, "secret_access_key": secret},
            allow_redirects=False,
            verify=daemon.verify,
        )
        assert signed_in.status_code == 303
        assert re.search(r"mlfleet_console=[^;]+;.*Secure", cookie_header(signed_in))

        # another address of this machine is served over TLS, Basic included
        if OTHER is not None:
            status, _, _ = from_address(
                daemon,
                OTHER,
                "GET",
                "/mlflow/over-tls/api/2.0/mlflow/experiments/search?max_results=5",
                {"Authorization": basic(daemon)},
            )
            assert status == 200
    finally:
        daemon.stop()


def test_beyond_loopback_the_daemon_makes_its_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    daemon = Daemon(data_dir, "--host", "0.0.0.0", ca=data_dir / "ca.pem").start()
    try:
        served = served_certificate(daemon.port)
        printed = re.search(
            r"certificate SHA-256 ([0-9A-F:]+)", (data_dir / "daemon.out").read_text()
        )
        assert printed and printed[1] == fingerprint(served)
        names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {"localhost", socket.gethostname()} <= set(names.get_values_for_type(x509.DNSName))
        addresses = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
        assert "127.0.0.1" in addresses
        config = configparser.ConfigParser()
        config.read(data_dir / "config")
        assert config["default"]["endpoint_url"] == daemon.url
        assert config["default"]["ca_bundle"] == str(data_dir / "ca.pem")

        # boto3 and the AWS CLI with nothing but the files the daemon wrote
        env = daemon.cli_env()
        for name in [k for k in os.environ if k.startswith("AWS_")]:
            monkeypatch.delenv(name)
        for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            monkeypatch.setenv(name, env[name])
        assert "TrackingServerSummaries" in (
            boto3.Session().client("sagemaker").list_mlflow_tracking_servers()
        )
        cli = subprocess.run(
            [sys.executable, "-m", "awscli", "sagemaker", "list-mlflow-tracking-servers"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr
        listed = subprocess.run(
            [sys.executable, "-m", "mlfleet", "list", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr

        # its certificate names this machine's other addresses too
        if OTHER is not None:
            health = f"https://{OTHER}:{daemon.port}/health"
            assert requests.get(health, verify=daemon.verify, timeout=10).status_code == 200
    finally:
        daemon.stop()

    again = Daemon(data_dir, "--host", "0.0.0.0", ca=data_dir / "ca.pem").start()
    try:
        assert fingerprint(served_certificate(again.port)) == fingerprint(served)
    finally:
        again.stop()


@needs_other_address
def test_plain_http_from_another_address_refuses_secrets(daemon: Daemon) -> None:
    assert OTHER is not None
    api = "/mlflow/shared/api/2.0/mlflow/experiments/search?max_results=1"
    status, kind, body = from_address(daemon, OTHER, "GET", api, {"Authorization": basic(daemon)})
    assert (status, kind) == (403, "application/json")
    answer = json.loads(body)
    assert answer["error_code"] == "PERMISSION_DENIED" and TLS_REQUIRED in answer["message"]
    key, secret = daemon.credentials
    assert secret not in body and key not in body

    status, kind, body = from_address(
        daemon, OTHER, "POST", "/", {"Authorization": basic(daemon)}, b"{}"
    )
    assert (status, kind) == (403, "application/x-amz-json-1.1")
    assert json.loads(body)["__type"] == "AccessDeniedException" and TLS_REQUIRED in body

    for method, path in [
        ("GET", "/console/sign-in"),
        ("POST", "/console/sign-in"),
        ("GET", "/console/sign-in/one-time-token"),
        ("GET", "/mlflow/shared/auth?authToken=presigned-token"),
    ]:
        status, _, body = from_address(daemon, OTHER, method, path)
        assert status == 403 and TLS_REQUIRED in body, (method, path)

    # loopback is this machine: the same calls are served
    status, _, body = from_address(
        daemon, "127.0.0.1", "GET", api, {"Authorization": basic(daemon)}
    )
    assert TLS_REQUIRED not in body
    assert from_address(daemon, "127.0.0.1", "GET", "/console/sign-in")[0] == 200

    # SigV4 carries no secret: served from anywhere, and aws:SecureTransport is false
    request = AWSRequest(
        method="POST",
        url=f"{daemon.url}/",
        data=b"{}",
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "SageMaker.ListMlflowTrackingServers",
        },
    )
    SigV4Auth(Credentials(key, secret), "sagemaker", "us-east-1").add_auth(request)
    status, _, body = from_address(daemon, OTHER, "POST", "/", dict(request.headers.items()), b"{}")
    assert status == 200, body
    tls_only = secure_only_user(daemon)
    with pytest.raises(ClientError) as refused:
        daemon.client(
            key=tls_only["AccessKeyId"], secret=tls_only["SecretAccessKey"]
        ).list_mlflow_tracking_servers()
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"


def test_the_certificate_is_kept_until_it_no_longer_names_the_host(tmp_path: Path) -> None:
    first = serve_tls(Settings(data_dir=tmp_path, host="0.0.0.0"))
    assert first and first.ca_file == tmp_path / "ca.pem"
    ca = first.ca_file.read_bytes()
    again = serve_tls(Settings(data_dir=tmp_path, host="0.0.0.0"))
    assert again and again.fingerprint == first.fingerprint
    renamed = serve_tls(Settings(data_dir=tmp_path, host="mlfleet.example"))
    assert renamed and renamed.fingerprint != first.fingerprint
    assert (tmp_path / "ca.pem").read_bytes() != ca  # a new CA: the old key is gone
    cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mlfleet.example" in names.get_values_for_type(x509.DNSName)
    assert all(mode & 0o077 == 0 for mode in _modes(tmp_path / "tls", tmp_path / "ca.pem"))


def test_an_unusable_certificate_stops_the_daemon_with_a_message(tmp_path: Path) -> None:
    def up(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mlfleet", "up", "--data-dir", str(tmp_path / "data"), *flags],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    missing = up("--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tmp_path / "none.key"))
    assert missing.returncode == 2, missing.stderr
    assert "cannot serve HTTPS with" in missing.stderr and "Traceback" not in missing.stderr
    half = up("--tls-cert", str(tmp_path / "none.pem"))
    assert half.returncode == 2 and "tls_cert and tls_key go together" in half.stderr


def _modes(*paths: Path) -> list[int]:
    found = []
    for path in paths:
        found += [p.stat().st_mode for p in [path, *path.rglob("*")]]
    return found
