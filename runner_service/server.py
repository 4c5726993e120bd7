"""Builds the runner and runs it: ordered start, ordered stop."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from protos.runner.v1 import runner_pb2
from runner_service import jobs, metrics, tls
from runner_service import servicer as servicer_mod
from runner_service.audit import AuditLog
from runner_service.diagnostics import Diagnostics, Load, to_proto
from runner_service.exposition import MetricsServer
from runner_service.health import Health
from runner_service.jobs.catalog import Catalog
from runner_service.membership import Membership
from runner_service.progress import Hub, Pacer
from runner_service.scheduler import Scheduler
from runner_service.settings import Settings, parse_jobs, redact_url
from runner_service.sql_store import SqlStore
from runner_service.summary import SummaryCache

log = logging.getLogger(__name__)

# Deep diagnostics are memoized this long (not in the testing profile).
DIAGNOSTICS_TTL_S = 5.0


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gRPC port's TLS credentials from the settings' PEM files (None: plaintext). With a
    client CA, a client must present a certificate it signed (mTLS). Raises ValueError naming the
    setting at fault (an unreadable file, not PEM, a key that does not match its certificate)."""
    if not settings.tls_cert_file:
        return None
    cert, key = tls.load_key_pair(
        "RUNNER_TLS_CERT_FILE", settings.tls_cert_file, "RUNNER_TLS_KEY_FILE", settings.tls_key_file
    )
    client_ca = None
    if settings.tls_client_ca_file:
        client_ca = tls.load_ca("RUNNER_TLS_CLIENT_CA_FILE", settings.tls_client_ca_file)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=bool(client_ca))


class RunnerApp:
    """The runner's parts, wired together. Nothing starts before start()."""

    def __init__(self, settings: Settings, job_targets: dict[str, str] | None = None) -> None:
        self.settings = settings
        if job_targets is None:
            job_targets = jobs.discover(parse_jobs(settings.jobs))
        # Metrics (None when RUNNER_METRICS_LISTEN is empty): the parts report to the observer.
        observer, self.metrics = metrics.build(settings.metrics_listen, job_targets)
        self.metrics_server: MetricsServer | None = None
        self.store = SqlStore(settings)
        if self.metrics is not None:
            self.store.on_commit = self.metrics.store_committed
        self.hub = Hub(
            settings.watcher_queue_size,
            settings.watch_progress_interval_s,
            Pacer(settings.watch_progress_budget_per_s),
        )
        self.scheduler = Scheduler(settings, self.store, self.hub, job_targets, observer=observer)
        # Replicas on one database: a lease, the leader's lock and its rounds.
        self.membership = (
            Membership(settings, self.store, self.scheduler.abandon, self.scheduler.supervise, self.scheduler.observer)
            if settings.queue_in_database
            else None
        )
        self.summary = SummaryCache(self.store, settings.summary_revision_ttl_s, enabled=settings.summary_cache)
        self.store.on_touch = self.summary.touched
        self.health = Health(self.store, self.scheduler)
        self.diagnostics = Diagnostics(
            self.store.breaker.status,
            self.store.status,
            self.scheduler.watchdog.policy,
            self._load,
            ttl_s=0.0 if settings.profile == "testing" else DIAGNOSTICS_TTL_S,
        )
        self.server = grpc.aio.server(
            interceptors=[metrics.RpcInterceptor(self.metrics)],
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
                # Calls received but not yet taken up by the server: past the first bound gRPC
                # refuses a growing share of new ones, past the second all (its defaults, 1,000 and
                # 3,000, cut a burst of a thousand watchers opened at once).
                ("grpc.server.max_pending_requests", settings.max_pending_calls),
                ("grpc.server.max_pending_requests_hard_limit", 2 * settings.max_pending_calls),
            ],
        )
        self.audit = AuditLog(settings.audit_log_path)
        servicer_mod.add_to_server(
            self.server,
            servicer_mod.RunnerServicer(
                self.scheduler, self.store, Catalog(settings.scenario_dir), settings, self.resilience, self.summary
            ),
            servicer_mod.AdminServicer(self.scheduler, settings, self.audit, self.resilience),
            health=self.health.servicer,
        )
        reflection.enable_server_reflection(
            (
                runner_pb2.DESCRIPTOR.services_by_name["RunnerService"].full_name,
                runner_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self.port: int | None = None
        self._stopped = asyncio.Event()
        self._stopping = False

    @property
    def tls_mode(self) -> str:
        """``plaintext``, ``tls`` or ``mtls`` (client certificates required)."""
        return tls.mode(self.settings.tls_cert_file, self.settings.tls_client_ca_file)

    def resilience(self) -> runner_pb2.Resilience:
        """The memoized resilience picture as GetResilience and GetStatus give it."""
        return to_proto(self.diagnostics.snapshot(), self.settings, self.scheduler.watchdog)

    @property
    def metrics_port(self) -> int | None:
        """The bound port of /metrics (None while not served)."""
        return self.metrics_server.port if self.metrics_server is not None else None

    def _metrics_state(self) -> metrics.State:
        status = self.scheduler.status()
        policy = self.scheduler.watchdog.policy()
        breaker = self.store.breaker.status()
        return metrics.State(
            queued=status.queued,
            running=status.running,
            draining=status.draining,
            workers_size=status.workers_size,
            workers_alive=status.workers_alive,
            workers_busy=status.workers_busy,
            worker_restarts_total=status.restarts_total,
            worker_restarts_in_window=policy.restarts_in_window,
            churn_policy=policy.state,
            circuit=breaker.state,
            circuit_opened_total=breaker.opened_total,
            held_writes=self.store.status().held_writes,
        )

    @property
    def metrics_url(self) -> str:
        """Where /metrics is served, or ``off``."""
        return self.metrics_server.url if self.metrics_server is not None else "off"

    async def _close_metrics(self) -> None:
        server, self.metrics_server = self.metrics_server, None
        if server is not None:
            await asyncio.to_thread(server.close)  # waits for its thread: off the event loop

    def _load(self) -> Load:
        status = self.scheduler.status()
        return Load(
            queued=status.queued,
            running=status.running,
            max_queued=self.settings.max_queued,
            workers_alive=status.workers_alive,
            workers_size=status.workers_size,
            draining=status.draining,
        )

    async def start(self) -> int:
        """Open the store (migrations), recover, start workers, then listen.
        Returns the bound port."""
        log.info("starting runner", extra={"database": redact_url(self.settings.database_url)})
        credentials = server_credentials(self.settings)  # a bad certificate fails before anything starts
        await self.store.start()
        if self.membership is not None:
            await self.membership.join()
        await self.scheduler.start()
        if credentials is None:
            self.port = self.server.add_insecure_port(self.settings.listen)
        else:
            self.port = self.server.add_secure_port(self.settings.listen, credentials)
        if not self.port:
            raise RuntimeError(f"cannot listen on {self.settings.listen}")
        if self.metrics is not None:
            self.metrics.watch_state(self._metrics_state, asyncio.get_running_loop())
            try:
                self.metrics_server = MetricsServer(self.settings.metrics_listen, self.metrics.registry)
            except OSError as exc:
                raise RuntimeError(
                    f"cannot serve metrics on RUNNER_METRICS_LISTEN={self.settings.metrics_listen}: {exc}"
                ) from exc
        await self.server.start()
        await self.health.start()
        log.info(
            "runner listening",
            extra={
                "listen": self.settings.listen,
                "port": self.port,
                "tls": self.tls_mode,
                "metrics": self.metrics_url,
            },
        )
        return self.port

    async def abort(self) -> None:
        """Release what a failed start() opened."""
        self.scheduler.draining = True
        try:
            await self.scheduler.pool.stop(timeout_s=1.0)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        if self.membership is not None:
            await self.membership.leave()
        await self.server.stop(None)
        await self._close_metrics()
        await self.store.close()

    async def stop(self) -> None:
        """Graceful shutdown, in this order: health NOT_SERVING and new submissions
        refused (DRAINING); wait drain_period; running runs get shutdown_grace,
        then are cancelled and stored INTERRUPTED (their watchers get the final
        event); stop the server; close the store. Idempotent."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        log.info("shutting down")
        self.scheduler.draining = True
        await self.health.shutdown()
        if self.settings.drain_period_s > 0:
            await asyncio.sleep(self.settings.drain_period_s)
        await self.scheduler.shutdown(self.settings.shutdown_grace_s)
        if self.membership is not None:
            await self.membership.leave()
        await self.server.stop(grace=1.0)
        await self._close_metrics()
        await self.store.close()
        log.info("runner stopped")
        self._stopped.set()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    app = RunnerApp(settings)
    try:
        await app.start()
    except Exception as exc:
        # Migrations, the database or the port failed: say so and exit non-zero.
        log.critical("runner failed to start: %s", exc)
        log.debug("start-up failure", exc_info=True)
        await app.abort()
        raise SystemExit(1) from None
    print(
        f"runner: gRPC on {settings.listen} ({app.tls_mode}; health: grpc.health.v1; metrics: {app.metrics_url})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await app.stop()
