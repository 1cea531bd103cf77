"""Services with secrets for security tests: a password- and TLS-protected redis-server, and ``guardq api`` as a
subprocess whose logs can be searched.

The TLS material is a throwaway CA and a server certificate for 127.0.0.1/localhost, made with ``cryptography``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.services.procs import ROOT, Service, free_port, wait_until


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_tls(folder: Path) -> TlsFiles:
    """A CA and a server certificate it signed, valid for 127.0.0.1 and localhost for one day."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("guardq test CA"))
        .issuer_name(_name("guardq test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(_pem_key(key))
    files.key.chmod(0o600)
    return files


def start_secure_redis(
    workdir: Path, *, password: str, tls: TlsFiles | None = None, port: int | None = None
) -> Service:
    """A redis-server that requires ``password`` (and, with ``tls``, speaks only TLS); ``url`` carries both."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server not found"
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = workdir / "redis.log"
    args = [binary, "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "", "--appendonly", "no"]
    args += ["--requirepass", password, "--logfile", str(log)]
    if tls is None:
        args += ["--port", str(port)]
        url = f"redis://:{password}@127.0.0.1:{port}/0"
    else:
        args += [
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(tls.cert),
            "--tls-key-file",
            str(tls.key),
        ]
        args += ["--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no"]
        url = f"rediss://:{password}@127.0.0.1:{port}/0?ssl_ca_certs={tls.ca}"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)

    def ping() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_until(ping, 15, "secure redis-server", proc)
    client.close()
    return Service(proc, url, workdir, log)


def start_api(env: dict[str, str], workdir: Path) -> Service:
    """``guardq api`` in its own process (the production entry point), logging to ``api.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "api.log"
    exe = Path(sys.executable).parent / "guardq"
    proc = subprocess.Popen(
        [str(exe), "api", "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 30, "guardq api", proc)
    return Service(proc, url, workdir, log)
