"""Self-signed OPC UA application certificates for the tests (DER certificate, PEM key).

Generated with asyncua's own helpers, once per session (RSA key generation is slow-ish).
The certificates carry the application URI as a URI SubjectAltName and the local
host name and 127.0.0.1 as DNS/IP SubjectAltNames, as OPC UA Part 6 asks.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = ["CertPair", "make_pair"]


@dataclass(frozen=True)
class CertPair:
    certificate: Path  # DER
    private_key: Path  # PEM (PKCS#8, unencrypted)
    application_uri: str


def make_pair(directory: Path, name: str, application_uri: str, *, server: bool) -> CertPair:
    """Write ``name.der`` and ``name.pem`` into ``directory``."""
    key = cert_gen.generate_private_key()
    host = socket.gethostname()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        f"calgate test {name}",
        {"organizationName": "calgate tests"},
        [
            x509.UniformResourceIdentifier(application_uri),
            x509.DNSName(host),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
        [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH],
        days=30,
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}.der"
    key_path = directory / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return CertPair(cert_path, key_path, application_uri)
