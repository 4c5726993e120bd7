"""The runner behind the gateway: one ``grpc.aio`` channel shared by every request.

The application's lifespan calls :meth:`Upstream.open` and :meth:`Upstream.close`; requests
only borrow the channel. Calls never wait for a channel to become ready
(``wait_for_ready=False``): an unreachable runner fails fast with UNAVAILABLE, which the gateway
answers 503, instead of a request hanging until its deadline.

With ``upstream_tls_ca_file`` the channel is TLS (every call, health checks included), with a
client certificate when the runner requires mTLS. The PEM files are read and checked when the
Upstream is made, at start-up: a broken file stops the gateway before it serves anything.
"""

from __future__ import annotations

import json

import grpc
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2_grpc

from gateway.errors import GatewayError, status
from gateway.rules import HttpRule
from gateway.settings import Settings
from protos.runner.v1 import runner_pb2_grpc
from runner_service import tls


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self.target = settings.upstream
        self._settings = settings
        self._channel: grpc.aio.Channel | None = None
        self._callables: dict[str, object] = {}
        self.health: health_pb2_grpc.HealthStub | None = None
        self.runner: runner_pb2_grpc.RunnerServiceStub | None = None
        self._credentials = channel_credentials(settings)

    def channel_options(self) -> list[tuple[str, object]]:
        backoff_ms = int(self._settings.reconnect_backoff_max_s * 1000)
        config: dict[str, object] = {"loadBalancingConfig": [{self._settings.lb_policy: {}}]}
        options: list[tuple[str, object]] = [
            # A restarted runner is reconnected to within the backoff bound, not minutes later.
            ("grpc.initial_reconnect_backoff_ms", min(1000, backoff_ms)),
            ("grpc.min_reconnect_backoff_ms", min(1000, backoff_ms)),
            ("grpc.max_reconnect_backoff_ms", backoff_ms),
            ("grpc.service_config", json.dumps(config)),
            ("grpc.enable_retries", 0),  # the gateway never retries on its callers' behalf
        ]
        if self._credentials is not None and self._settings.upstream_tls_server_name:
            # The name the runner's certificate is checked against, when not the target's host.
            options.append(("grpc.ssl_target_name_override", self._settings.upstream_tls_server_name))
        return options

    async def open(self) -> None:
        """Create the channel (it connects lazily, on the first call)."""
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=self.channel_options())
        else:
            self._channel = grpc.aio.secure_channel(self.target, self._credentials, options=self.channel_options())
        self._callables.clear()
        self.health = health_pb2_grpc.HealthStub(self._channel)
        self.runner = runner_pb2_grpc.RunnerServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel; calls still in flight end CANCELLED. Idempotent."""
        channel, self._channel, self.health, self.runner = self._channel, None, None, None
        self._callables.clear()
        if channel is not None:
            await channel.close()

    def callable_for(self, rule: HttpRule):
        """The channel's multi-callable for a rule's method (unary or server-streaming).

        Raises GatewayError (503) when the channel is not open (before start-up or during
        shutdown)."""
        if self._channel is None:
            raise GatewayError(status(code_pb2.UNAVAILABLE, "the gateway is not connected to the runner"))
        found = self._callables.get(rule.grpc_path)
        if found is None:
            factory = self._channel.unary_stream if rule.server_streaming else self._channel.unary_unary
            found = factory(
                rule.grpc_path,
                request_serializer=rule.input_type.SerializeToString,
                response_deserializer=rule.output_type.FromString,
            )
            self._callables[rule.grpc_path] = found
        return found


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """TLS credentials for the channel to the runner (None: plaintext). Raises ValueError naming
    the setting at fault (an unreadable file, not PEM, a key that does not match its certificate)."""
    if not settings.upstream_tls_ca_file:
        return None
    ca = tls.load_ca("GATEWAY_UPSTREAM_TLS_CA_FILE", settings.upstream_tls_ca_file)
    cert = key = None
    if settings.upstream_tls_cert_file:
        cert, key = tls.load_key_pair(
            "GATEWAY_UPSTREAM_TLS_CERT_FILE",
            settings.upstream_tls_cert_file,
            "GATEWAY_UPSTREAM_TLS_KEY_FILE",
            settings.upstream_tls_key_file,
        )
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
