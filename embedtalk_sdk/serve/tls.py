"""HTTPS for `serve`: a certificate from files or made at start, and the HTTP -> HTTPS redirect.

Browsers give a page the microphone only in a secure context: https://, or http://localhost.
A server used from another machine therefore needs TLS: a real certificate (`--tls-cert/--tls-key`,
or a reverse proxy in front), or for trying it on a LAN a self-signed one (`--self-signed`), made
fresh at each start for this host's names and addresses; the browser asks once to accept it, and
the printed SHA-256 fingerprint is what to compare with the one it shows.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from aiohttp import web


@dataclass
class Certificate:
    """A TLS server context and what to tell the user about its certificate."""

    context: ssl.SSLContext
    names: list[str]
    fingerprint: str      # SHA-256 of the DER certificate, colon-separated hex


def load_certificate(cert: Path, key: Path) -> Certificate:
    """The context of a PEM certificate (chain) and its private key, checked to belong together."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    for what, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise ValueError(f"{what} {path}: no such file")
    try:
        pem = Path(cert).read_bytes()
        first = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise ValueError(f"--tls-cert {cert}: not a PEM certificate ({e})") from None
    context = _server_context()
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as e:
        raise ValueError(f"--tls-key {key}: not the private key of {cert}, or not PEM ({e.reason or e})") from None
    return Certificate(context, _names(first), _fingerprint(first.fingerprint(hashes.SHA256())))


def self_signed(host: str, days: int = 30) -> Certificate:
    """A new P-256 key and a certificate for `host`, this machine's name and addresses and the
    loopback names; nothing is kept on disk (the files live only while the context loads them)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    names = host_names(host)
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"embedtalk-sdk serve ({names[0]})")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    context = _server_context()
    with tempfile.TemporaryDirectory(prefix="embedtalk-tls-") as tmp:  # private (0700), deleted at once
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        context.load_cert_chain(str(cert_path), str(key_path))
    return Certificate(context, names, _fingerprint(cert.fingerprint(hashes.SHA256())))


def host_names(host: str) -> list[str]:
    """The names a client may use for this server: the bound host (unless a wildcard), the loopback
    names, and for a wildcard bind this machine's name and interface addresses."""
    names: list[str] = []
    wildcard = host in ("0.0.0.0", "::", "")
    if not wildcard:
        names.append(host.strip("[]"))
    names += ["localhost", "127.0.0.1", "::1"]
    if wildcard:
        hostname = socket.gethostname()
        names += [hostname, f"{hostname}.local"]
        try:
            import ifaddr  # aioice's dependency: the addresses of every interface

            for adapter in ifaddr.get_adapters():
                for ip in adapter.ips:
                    names.append(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
        except ImportError:
            pass
    seen: list[str] = []
    for name in names:
        if name and name not in seen and not name.startswith("fe80"):
            seen.append(name)
    return seen


def redirect_app(https_port: int) -> web.Application:
    """A plain-HTTP app that sends every request to the same path over HTTPS (308, method kept). A
    `token` in the query is dropped, not forwarded: a token sent in clear must not work."""

    async def redirect(request: web.Request) -> web.Response:
        name = urlsplit("//" + (request.host or "")).hostname or "localhost"
        query = [(k, v) for k, v in parse_qsl(request.query_string, keep_blank_values=True) if k != "token"]
        netloc = f"[{name}]" if ":" in name else name
        target = f"https://{netloc}:{https_port}{request.path}" + (f"?{urlencode(query)}" if query else "")
        raise web.HTTPPermanentRedirect(target)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app


def _server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _fingerprint(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def _names(cert) -> list[str]:
    from cryptography import x509

    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(n.value) for n in alt]
    except x509.ExtensionNotFound:
        return [a.value for a in cert.subject]
