"""A throw-away certificate authority for tests of TLS clients on loopback."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _alt_name(host: str) -> x509.GeneralName:
    """An IP address SAN for an address (clients that connect by IP check it), else a DNS one."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_certificates(hosts: list[str]) -> tuple[bytes, bytes, bytes]:
    """A throw-away CA and a server certificate for ``hosts`` (names or IP addresses):
    (ca, cert, key) as PEM."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())

    def build(subject: str, public_key, serial: int) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name("ca"))
                .public_key(public_key).serial_number(serial)
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(hours=1)))

    ca = (build("ca", ca_key.public_key(), 1)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (build(hosts[0], key.public_key(), 2)
            .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


def write_certificates(folder: Path, hosts: list[str]) -> tuple[Path, Path, Path]:
    """:func:`make_certificates` written to ``folder`` as ca.pem, cert.pem and key.pem;
    their paths. Readable by every user (an nginx worker runs as nobody)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    paths = (folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    for path, pem in zip(paths, make_certificates(hosts), strict=True):
        path.write_bytes(pem)
        path.chmod(0o644)
    return paths
