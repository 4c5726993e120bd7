"""A grpc.health.v1 probe for container health checks.

    python -m runner_service.probe [--target HOST:PORT] [--timeout SECONDS]
        [--tls-ca FILE [--tls-cert FILE --tls-key FILE] [--tls-server-name NAME]] [SERVICE]

One ``Check`` of SERVICE (default ``readiness``; ``liveness`` asks only whether the process
answers) with a short deadline. Exit status 0 when the answer is SERVING, with one line on
stdout; 1 for anything else (NOT_SERVING, an unknown service, nothing listening, no answer
before the deadline, bad arguments), with one line on stderr saying why. Docker reserves exit
status 2 of a HEALTHCHECK, so a usage error is 1 too.

The target defaults to ``RUNNER_LISTEN`` (as the runner reads it) with a wildcard host
(``0.0.0.0``, ``[::]`` or none) replaced by loopback: inside a container the probe asks the
runner beside it. It speaks plaintext unless given ``--tls-ca`` (the PEM CA the runner's
certificate must chain to); a runner that requires client certificates (mTLS) also needs
``--tls-cert`` and ``--tls-key``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_SERVICE = "readiness"
DEFAULT_TIMEOUT_S = 2.0
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}


class ProbeError(Exception):
    """The probe cannot run as asked (a bad argument or a malformed address)."""


def default_target(environ: Mapping[str, str]) -> str:
    """RUNNER_LISTEN with a wildcard host replaced by loopback."""
    listen = environ.get("RUNNER_LISTEN") or DEFAULT_LISTEN
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ProbeError(f"RUNNER_LISTEN={listen!r} is not HOST:PORT")
    return f"{_WILDCARDS.get(host, host)}:{port}"


def _read(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ProbeError(f"{flag} {path}: {exc.strerror or exc}") from None


def tls_credentials(ca: str, cert: str = "", key: str = ""):
    """Channel credentials trusting `ca`, with a client certificate when given (mTLS)."""
    import grpc

    if bool(cert) != bool(key):
        raise ProbeError("--tls-cert and --tls-key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read("--tls-ca", ca),
        private_key=_read("--tls-key", key) if key else None,
        certificate_chain=_read("--tls-cert", cert) if cert else None,
    )


def check(target: str, service: str, timeout_s: float, credentials=None, server_name: str = "") -> tuple[bool, str]:
    """Ask one Check (over TLS with `credentials`); (serving, what was found) without raising."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # No proxy: a probe asks the process next to it, whatever *_proxy variables say.
    options: list[tuple[str, object]] = [("grpc.enable_http_proxy", 0)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if credentials is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, credentials, options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            code = err.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return False, "unknown service (NOT_FOUND)"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return False, f"no answer within {timeout_s:g} s (DEADLINE_EXCEEDED)"
            details = " ".join((err.details() or "").split())
            return False, f"{code.name}: {details}" if details else code.name
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, name


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ProbeError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m runner_service.probe",
        description="Exit 0 when the runner's grpc.health.v1 service is SERVING, 1 otherwise.",
    )
    parser.add_argument(
        "--target",
        help="the runner's gRPC address (default: RUNNER_LISTEN, a wildcard host replaced by loopback)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"deadline of the Check in seconds (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument("--tls-ca", default="", help="TLS: the PEM CA the runner's certificate must chain to")
    parser.add_argument("--tls-cert", default="", help="mTLS: the probe's PEM client certificate (with --tls-key)")
    parser.add_argument("--tls-key", default="", help="mTLS: the client certificate's unencrypted PEM key")
    parser.add_argument("--tls-server-name", default="", help="TLS: the name in the runner's certificate")
    parser.add_argument(
        "service",
        nargs="?",
        default=DEFAULT_SERVICE,
        help="health service name: readiness (default), liveness, or '' for the server as a whole",
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    try:
        args = _parser().parse_args(argv)
        if not args.timeout > 0:
            raise ProbeError(f"--timeout must be positive, not {args.timeout:g}")
        target = args.target or default_target(env)
        if not args.tls_ca and (args.tls_cert or args.tls_key or args.tls_server_name):
            raise ProbeError("--tls-cert, --tls-key and --tls-server-name need --tls-ca")
        # grpc's own log lines would break the one-line answer.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    except ProbeError as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 1
    serving, found = check(target, args.service, args.timeout, credentials, args.tls_server_name)
    line = f"probe: {target} service {args.service!r}: {found}"
    print(line, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
