"""Frozen settings, read from the environment once (in __main__) and passed down."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping

PROFILES = ("production", "development", "testing")


@dataclasses.dataclass(frozen=True)
class Settings:
    profile: str = "production"
    listen: str = "127.0.0.1:50051"
    # TLS on the gRPC port: a PEM certificate (chain) and its unencrypted key; with a
    # client CA too, clients must present a certificate it signed (mTLS). Empty: plaintext.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    database_url: str = "sqlite:///var/runner.db"
    replica: str = dataclasses.field(default_factory=socket.gethostname)
    workers: int = 2
    max_queued: int = 20
    max_heavy_concurrent: int = 2
    cancel_grace_s: float = 2.0
    # A running job's worker beats every heartbeat_interval_s; a run with no beat
    # for heartbeat_timeout_s has a stuck worker, which is killed (run FAILED).
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 10.0
    # A worker process that is not ready this long after it was started is replaced.
    worker_start_timeout_s: float = 30.0
    drain_period_s: float = 1.0
    shutdown_grace_s: float = 5.0
    # Per-watcher bound on undelivered state changes, logs and results.
    watcher_queue_size: int = 1000
    # A watcher gets at most one progress event per interval (the latest); 0 sends all.
    watch_progress_interval_s: float = 0.01
    # All watchers together get at most this many progress events a second (the pace of
    # each slows when many watch); 0 sets no bound.
    watch_progress_budget_per_s: float = 5000.0
    # Calls the gRPC server holds before taking them up; past it, then past twice it, gRPC
    # refuses new ones (CANCELLED), first some, then all.
    max_pending_calls: int = 4096
    db_pool_size: int = 4
    db_max_overflow: int = 2
    db_pool_timeout_s: float = 5.0
    db_query_timeout_s: float = 10.0
    slow_query_concurrency: int = 5
    # Reads beyond the connection pool wait in a bounded line; past it a read is
    # refused with DB_POOL_EXHAUSTED (no unbounded queue in front of the database).
    db_read_queue_max: int = 64
    # The database circuit breaker: opens after this many consecutive failures,
    # refuses calls (CIRCUIT_OPEN) for the reset timeout, then lets one probe through.
    db_breaker_failure_threshold: int = 5
    db_breaker_reset_timeout_s: float = 5.0
    # Held writes are retried with exponential backoff up to this interval.
    db_write_retry_max_s: float = 2.0
    # SQLite: a commit that leaves more WAL pages than this checkpoints in line (the
    # bound on the WAL); below it a background thread checkpoints.
    sqlite_wal_autocheckpoint_pages: int = 8000
    max_message_bytes: int = 4 * 1024 * 1024
    # Stored sizes: a larger spec is refused (INVALID_ARGUMENT), a larger result
    # ends its run FAILED (RESULT_TOO_LARGE). Both stay well under
    # max_message_bytes, so every stored run can be read, listed and cancelled.
    max_spec_bytes: int = 1024 * 1024
    max_result_bytes: int = 1024 * 1024
    # A ListRuns page ends early (with a next_page_token) past this many bytes.
    max_list_page_bytes: int = 3 * 1024 * 1024
    # AdminService bearer token; empty disables the admin API (PERMISSION_DENIED).
    admin_token: str = ""
    audit_log_path: str = "var/audit.log"
    watchdog_window_s: float = 60.0
    watchdog_cooldown_threshold: int = 3
    watchdog_block_threshold: int = 6
    watchdog_cooldown_s: float = 5.0
    # Operator's scenario directory (JSON files), added to the built-in scenarios.
    scenario_dir: str = ""
    # Job kinds from modules the operator did not package: "kind=module:function"
    # entries separated by commas; they win over entry points of the same name.
    jobs: str = ""
    log_level: str = "INFO"
    log_json: bool = True
    # Prometheus metrics: GET /metrics on this address (port 0: any free port); empty: off.
    metrics_listen: str = "127.0.0.1:9464"
    use_uvloop: bool = True
    # Where the queue lives. "auto": in the database on PostgreSQL (replicas claim
    # runs from it), in this process on SQLite (one runner per file); "on"/"off" force it.
    shared_queue: str = "auto"
    # A replica renews its lease every lease_ttl_s / 3; one silent for lease_ttl_s
    # is dead and the leader ends or requeues its runs.
    lease_ttl_s: float = 15.0
    # The leader (a lock row) renews its lock every leader_heartbeat_s; another
    # replica takes it once it is leader_ttl_s old.
    leader_heartbeat_s: float = 10.0
    leader_ttl_s: float = 60.0
    # Terminal runs (and their events) older than this are deleted by the leader,
    # prune_batch runs at a time; 0 keeps them forever.
    retention_s: float = 30 * 86400.0
    prune_batch: int = 500
    # Claimers and cross-replica watchers also poll this often, in case a
    # notification was missed (a reconnect of the listening connection).
    claim_poll_s: float = 1.0
    # Progress is written behind at this interval (0: 0.1 s with the queue in this
    # process, 0.01 s with the queue in the database, where other replicas' watchers read it).
    progress_flush_s: float = 0.0
    # GetSummary: sections are cached and rebuilt when the database's revision of
    # what they show moves; revisions are read at most this often (and at once after
    # a commit of this process). summary_cache=false reads everything every call.
    summary_cache: bool = True
    summary_revision_ttl_s: float = 0.25

    @property
    def queue_in_database(self) -> bool:
        if self.shared_queue == "auto":
            return self.database_url.startswith("postgresql")
        return self.shared_queue == "on"

    @property
    def progress_flush_interval_s(self) -> float:
        if self.progress_flush_s > 0:
            return self.progress_flush_s
        return 0.01 if self.queue_in_database else 0.1


_PROFILE_DEFAULTS: dict[str, dict[str, object]] = {
    "production": {"slow_query_concurrency": 5},
    "development": {"slow_query_concurrency": 3, "log_json": False, "log_level": "DEBUG"},
    "testing": {"slow_query_concurrency": 1, "log_json": False, "drain_period_s": 0.0, "metrics_listen": ""},
}


def _coerce(field: dataclasses.Field, raw: str) -> object:
    kind = field.type
    if kind in ("bool", bool):
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if kind in ("int", int):
        return int(raw)
    if kind in ("float", float):
        return float(raw)
    return raw


def from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from RUNNER_* variables: RUNNER_PROFILE picks the profile
    defaults, then each field may be set by RUNNER_<FIELD NAME IN CAPITALS>
    (e.g. RUNNER_CANCEL_GRACE_S=1.5). Keyword overrides win over both."""
    env = os.environ if environ is None else environ
    profile = env.get("RUNNER_PROFILE", "production")
    if profile not in PROFILES:
        raise ValueError(f"RUNNER_PROFILE must be one of {', '.join(PROFILES)}, not {profile!r}")
    values: dict[str, object] = {"profile": profile, **_PROFILE_DEFAULTS[profile]}
    for field in dataclasses.fields(Settings):
        raw = env.get("RUNNER_" + field.name.upper())
        if raw is not None and field.name != "profile":
            try:
                values[field.name] = _coerce(field, raw)
            except ValueError as exc:
                raise ValueError(f"RUNNER_{field.name.upper()}: {exc}") from None
    values.update(overrides)
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.workers < 1:
        raise ValueError("RUNNER_WORKERS must be at least 1")
    if settings.sqlite_wal_autocheckpoint_pages < 1:
        raise ValueError("RUNNER_SQLITE_WAL_AUTOCHECKPOINT_PAGES must be at least 1 (it bounds the WAL)")
    if settings.max_queued < 0:
        raise ValueError("RUNNER_MAX_QUEUED must not be negative")
    if settings.watch_progress_interval_s < 0 or settings.watch_progress_budget_per_s < 0:
        raise ValueError("RUNNER_WATCH_PROGRESS_INTERVAL_S and RUNNER_WATCH_PROGRESS_BUDGET_PER_S must not be negative")
    if settings.max_pending_calls < 1:
        raise ValueError("RUNNER_MAX_PENDING_CALLS must be at least 1")
    if settings.shared_queue not in ("auto", "on", "off"):
        raise ValueError(f"RUNNER_SHARED_QUEUE must be auto, on or off, not {settings.shared_queue!r}")
    if not 0 < settings.leader_heartbeat_s < settings.leader_ttl_s:
        raise ValueError("RUNNER_LEADER_HEARTBEAT_S must be positive and below RUNNER_LEADER_TTL_S")
    if settings.lease_ttl_s <= 0 or settings.claim_poll_s <= 0 or settings.prune_batch < 1:
        raise ValueError("RUNNER_LEASE_TTL_S and RUNNER_CLAIM_POLL_S must be positive, RUNNER_PRUNE_BATCH at least 1")
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise ValueError("RUNNER_TLS_CERT_FILE and RUNNER_TLS_KEY_FILE go together: set both or neither")
    if settings.tls_client_ca_file and not settings.tls_cert_file:
        raise ValueError("RUNNER_TLS_CLIENT_CA_FILE needs RUNNER_TLS_CERT_FILE and RUNNER_TLS_KEY_FILE (mTLS is TLS)")
    if settings.metrics_listen:
        host, _, port = settings.metrics_listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(
                f"RUNNER_METRICS_LISTEN must be host:port (or empty: off), not {settings.metrics_listen!r}"
            )
    parse_jobs(settings.jobs)  # refuse a malformed entry at start-up, not at the first run
    return settings


def parse_jobs(raw: str) -> dict[str, str]:
    """RUNNER_JOBS ("kind=module:function,...") as a {kind: target} map."""
    found: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        kind, sep, target = (piece.strip() for piece in entry.partition("="))
        module, colon, function = target.partition(":")
        if not sep or not kind or not colon or not module or not function:
            raise ValueError(f"RUNNER_JOBS: {entry!r} is not kind=module:function")
        found[kind] = target
    return found


def redact_url(url: str) -> str:
    """The database URL with any password replaced, for logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL: show nothing of it
        return "<unparsable database url>"
