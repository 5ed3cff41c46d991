"""Throwaway credentials for a local Flower deployment: a CA, a server certificate, and SuperNode keys.

TLS: a self-signed CA (ECDSA P-384) and a server certificate it signs for ``localhost`` / ``127.0.0.1`` /
``::1`` (the SuperLink's Fleet, Control and Runtime APIs, and each SuperNode's Runtime API, share it).
SuperNode authentication: one ECDSA P-384 key pair per SuperNode, in the OpenSSH formats ``flower-supernode
--auth-supernode-private-key`` and ``flwr supernode register`` read. The private keys are written with mode
0600. These files protect a run on this machine for the length of the run; they are not a PKI: on real
machines use your own CA and keep each SuperNode's private key on its machine.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

__all__ = ["NodeKey", "TlsFiles", "make_node_keys", "make_tls"]

_VALID = datetime.timedelta(days=30)  # longer than any run; the files are thrown away with the run folder


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    private_key: Path  # OpenSSH private key (flower-supernode --auth-supernode-private-key)
    public_key: Path  # OpenSSH public key (flwr supernode register)
    registration: bytes  # what the Control API's RegisterNode takes (PEM SubjectPublicKeyInfo)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "privsim"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_tls(folder: Path) -> TlsFiles:
    """A new CA and a server certificate for this machine's loopback names, written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + _VALID
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("privsim throwaway CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    out = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    out.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        out.server_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return out


def make_node_keys(folder: Path, n: int, *, prefix: str = "supernode") -> list[NodeKey]:
    """``n`` SuperNode key pairs ``<prefix>-<i>.key`` / ``.pub`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP384R1())
        priv, pub = folder / f"{prefix}-{i}.key", folder / f"{prefix}-{i}.pub"
        _write_private(
            priv,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
        )
        pub.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        )
        out.append(NodeKey(priv, pub, public_key_to_bytes(key.public_key())))
    return out
