"""Certificates for the TLS tests, made at run time with ``cryptography``: a CA, a server
certificate for 127.0.0.1 and localhost, a server certificate for another name only, a client
certificate the CA signed, and a second, unrelated CA with a client certificate of its own.
Keys are P-256 (quick to make); every file is PEM, keys unencrypted."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The only name in ``Pki.other_name_cert`` (a runner known by a name the gateway cannot dial).
OTHER_NAME = "runner.internal"


@dataclasses.dataclass(frozen=True)
class Pki:
    """Paths of the PEM files (as strings, as settings take them)."""

    ca: str
    server_cert: str
    server_key: str
    other_name_cert: str
    other_name_key: str
    client_cert: str
    client_key: str
    other_ca: str
    other_client_cert: str
    other_client_key: str
    garbage: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: pathlib.Path, key: ec.EllipticCurvePrivateKey) -> str:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(path)


def _write_cert(path: pathlib.Path, cert: x509.Certificate) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    cert = (
        _builder(common_name, _name(common_name), key.public_key())
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
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    usage: x509.ObjectIdentifier,
    names: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = _key()
    builder = (
        _builder(common_name, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: pathlib.Path) -> Pki:
    """Write the certificates and keys into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("test CA")
    other_ca = _ca("another CA")
    local_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server = _leaf("localhost", ca, ExtendedKeyUsageOID.SERVER_AUTH, local_names)
    other_name = _leaf(OTHER_NAME, ca, ExtendedKeyUsageOID.SERVER_AUTH, [x509.DNSName(OTHER_NAME)])
    client = _leaf("gateway", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    other_client = _leaf("intruder", other_ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    garbage = directory / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    return Pki(
        ca=_write_cert(directory / "ca.pem", ca[0]),
        server_cert=_write_cert(directory / "server.pem", server[0]),
        server_key=_write_key(directory / "server.key", server[1]),
        other_name_cert=_write_cert(directory / "other-name.pem", other_name[0]),
        other_name_key=_write_key(directory / "other-name.key", other_name[1]),
        client_cert=_write_cert(directory / "client.pem", client[0]),
        client_key=_write_key(directory / "client.key", client[1]),
        other_ca=_write_cert(directory / "other-ca.pem", other_ca[0]),
        other_client_cert=_write_cert(directory / "other-client.pem", other_client[0]),
        other_client_key=_write_key(directory / "other-client.key", other_client[1]),
        garbage=str(garbage),
    )


def read(path: str) -> bytes:
    return pathlib.Path(path).read_bytes()
