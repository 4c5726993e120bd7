"""TLS material for the runner and the gateway: PEM files read and checked once, at start-up.

Every check names the setting at fault, so a half or broken configuration (a certificate
without its key, an unreadable file, something that is not PEM, a key that does not match its
certificate, an encrypted key) stops the process with one clear line instead of failing at the
first handshake. Private keys must be unencrypted PEM (protect them with file permissions):
grpc cannot decrypt a key, and start-up must never wait for a password prompt.
"""

from __future__ import annotations

import ssl


def read_pem(setting: str, path: str) -> bytes:
    """The bytes of a PEM file; ValueError naming ``setting`` when it cannot be read or holds
    no PEM block."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path!r}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{setting}: {path!r} is not a PEM file")
    return data


def _encrypted_key() -> bytes:
    raise ValueError("the private key is encrypted (an unencrypted PEM key is needed)")


def server_context(cert_setting: str, cert_path: str, key_setting: str, key_path: str) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or later) holding the certificate chain and its key, checked
    to go together; ValueError naming both settings otherwise."""
    read_pem(cert_setting, cert_path)
    read_pem(key_setting, key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path, password=_encrypted_key)
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(
            f"{cert_setting}={cert_path!r} and {key_setting}={key_path!r} are not a PEM certificate "
            f"and its private key: {exc}"
        ) from None
    return context


def load_key_pair(cert_setting: str, cert_path: str, key_setting: str, key_path: str) -> tuple[bytes, bytes]:
    """``(certificate chain, private key)`` as PEM bytes, checked to be a certificate and the
    private key that goes with it; ValueError naming both settings otherwise."""
    server_context(cert_setting, cert_path, key_setting, key_path)
    return read_pem(cert_setting, cert_path), read_pem(key_setting, key_path)


def load_ca(setting: str, path: str) -> bytes:
    """The PEM bytes of one or more CA certificates; ValueError naming ``setting`` when the file
    cannot be read or holds no certificate."""
    data = read_pem(setting, path)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{setting}: {path!r} holds no usable PEM CA certificate: {exc}") from None
    return data


def mode(cert_file: str, client_ca_file: str) -> str:
    """``"plaintext"``, ``"tls"`` or ``"mtls"`` (client certificates required), for logs."""
    if not cert_file:
        return "plaintext"
    return "mtls" if client_ca_file else "tls"
