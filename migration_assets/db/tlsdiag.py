"""Why did verify-full fail? Look at the server's certificate ourselves and say.

libpq reports an expired certificate, a certificate for another host name and one signed
by another CA all as "certificate verify failed". A tired operator needs to know which:
renewing a certificate and fixing the CA file (SUPABASE_SSLROOTCERT for the target,
SOURCE_SSLROOTCERT for the source) are different jobs. We fetch the certificate without
trusting it (nothing but the handshake is sent) and examine it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import struct
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def fetch_certificate(host: str, port: int, timeout: float = 5.0) -> x509.Certificate | None:
    """The server's certificate after PostgreSQL's SSLRequest, or None if it has none."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we only look; the connection is closed at once
    with socket.create_connection((host, port), timeout=timeout) as raw:
        raw.sendall(SSL_REQUEST)
        if raw.recv(1) != b"S":
            return None
        with context.wrap_socket(raw, server_hostname=None) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
        str(a) for a in san.get_values_for_type(x509.IPAddress)
    ]


def _matches(host: str, names: list[str]) -> bool:
    try:
        return ipaddress.ip_address(host) in {ipaddress.ip_address(n) for n in names if _is_ip(n)}
    except ValueError:
        pass
    for name in names:
        if name == host or (name.startswith("*.") and host.split(".", 1)[-1] == name[2:]):
            return True
    return False


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _signed_by(cert: x509.Certificate, ca_file: Path) -> bool:
    try:
        cas = x509.load_pem_x509_certificates(ca_file.read_bytes())
    except (OSError, ValueError):
        return False
    return any(_issued_by(cert, ca) for ca in cas)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def diagnose(host: str, port: int, ca_file: str | None) -> str | None:
    """A precise reason verify-full fails against host:port, or None if we cannot tell."""
    try:
        cert = fetch_certificate(host, port)
    except (OSError, ssl.SSLError):
        return None
    if cert is None:
        return None
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        return f"the server's TLS certificate has expired (on {cert.not_valid_after_utc:%Y-%m-%d})"
    if cert.not_valid_before_utc > now:
        return "the server's TLS certificate is not valid yet (check the clocks)"
    names = _names(cert)
    if names and not _matches(host, names):
        return (
            f"the server's TLS certificate is for {', '.join(names)}, not for {host}: "
            "connect with a host name the certificate names"
        )
    if ca_file and not _signed_by(cert, Path(ca_file)):
        # the file, not a setting's name: source and target each have their own CA setting
        return f"the server's TLS certificate is not signed by the CA in {ca_file}"
    return None
