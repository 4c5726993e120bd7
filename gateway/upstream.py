"""The runner behind the gateway: one ``grpc.aio`` channel shared by every request.

The application's lifespan calls :meth:`Upstream.open` and :meth:`Upstream.close`; requests
only borrow the channel. Calls never wait for a channel to become ready
(``wait_for_ready=False``): an unreachable runner fails fast with UNAVAILABLE, which the gateway
answers 503, instead of a request hanging until its deadline.
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


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self.target = settings.upstream
        self._settings = settings
        self._channel: grpc.aio.Channel | None = None
        self._callables: dict[str, object] = {}
        self.health: health_pb2_grpc.HealthStub | None = None
        self.runner: runner_pb2_grpc.RunnerServiceStub | None = None

    def channel_options(self) -> list[tuple[str, object]]:
        backoff_ms = int(self._settings.reconnect_backoff_max_s * 1000)
        config: dict[str, object] = {"loadBalancingConfig": [{self._settings.lb_policy: {}}]}
        return [
            # A restarted runner is reconnected to within the backoff bound, not minutes later.
            ("grpc.initial_reconnect_backoff_ms", min(1000, backoff_ms)),
            ("grpc.min_reconnect_backoff_ms", min(1000, backoff_ms)),
            ("grpc.max_reconnect_backoff_ms", backoff_ms),
            ("grpc.service_config", json.dumps(config)),
            ("grpc.enable_retries", 0),  # the gateway never retries on its callers' behalf
        ]

    async def open(self) -> None:
        """Create the channel (it connects lazily, on the first call)."""
        self._channel = grpc.aio.insecure_channel(self.target, options=self.channel_options())
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
