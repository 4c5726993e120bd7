"""Logging: credentials never reach a log line, and a DEBUG level is the project's own detail
rather than the libraries' chatter. Checked through the real set-up (logs.configure and the
handler's output), and on a runner process started with the development profile."""

from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from runner_service import logs

REPO = pathlib.Path(__file__).resolve().parents[2]
SECRETS = ("s3cret-in-query", "hunter2-in-url", "bearer-cr3dential", "adm1n-t0ken-value", "k3y-value")


@pytest.fixture
def configured():
    """logs.configure() writing to a string; the logging state is restored afterwards."""
    root = logging.getLogger()
    names = [*logs.PROJECT_LOGGERS, "uvicorn.error", "uvicorn.access", "uvicorn.asgi"]
    saved = (list(root.handlers), root.level, {name: logging.getLogger(name).level for name in names})
    stream = io.StringIO()

    def configure(level: str = "DEBUG", json_lines: bool = True, secrets=()) -> io.StringIO:
        logs.configure(level, json_lines, secrets=secrets, stream=stream)
        return stream

    try:
        yield configure
    finally:
        logging.captureWarnings(False)
        handlers, level, levels = saved
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, value in levels.items():
            logging.getLogger(name).setLevel(value)


def _log_everything(logger: logging.Logger) -> None:
    url = "postgresql+psycopg://u@db.example/runs?password=s3cret-in-query&sslmode=require"
    logger.info("starting runner", extra={"database": url})
    logger.info("connecting to %s as %r", "postgresql://app:hunter2-in-url@db.example/runs", "app")
    logger.info("upstream metadata %s", [("authorization", "Bearer bearer-cr3dential"), ("x-request-id", "r1")])
    logger.warning("Authorization: Bearer bearer-cr3dential refused")
    logger.info("admin call", extra={"token": "adm1n-t0ken-value", "api": {"api_key": "k3y-value", "n": 3}})
    logger.info("config pwd=s3cret-in-query passwd='hunter2-in-url' token: adm1n-t0ken-value")
    logger.info("the admin token is adm1n-t0ken-value")
    try:
        raise RuntimeError("login failed for postgresql://app:hunter2-in-url@db.example/runs")
    except RuntimeError:
        logger.exception("database unreachable")


@pytest.mark.parametrize("json_lines", [True, False], ids=["json", "text"])
def test_credentials_are_redacted_in_message_args_extras_and_exceptions(configured, json_lines):
    stream = configured("INFO", json_lines, secrets=["adm1n-t0ken-value"])
    _log_everything(logging.getLogger("runner_service.server"))
    # A library's lines (its warnings and errors at this level) go through the same filter.
    _log_everything(logging.getLogger("sqlalchemy.pool"))
    written = stream.getvalue()
    for secret in SECRETS:
        assert secret not in written
    assert written.count(logs.REDACTED) == 15
    assert "sqlalchemy.pool" in written and "Authorization: Bearer *** refused" in written
    # What is not a credential is still there.
    assert "postgresql+psycopg://u@db.example/runs?password=***&sslmode=require" in written
    assert "postgresql://app:***@db.example/runs" in written
    assert "RuntimeError: login failed for" in written and "x-request-id" in written
    if json_lines:
        records = [json.loads(line) for line in written.splitlines()]
        first = records[0]
        assert first["message"] == "starting runner" and first["database"].endswith("password=***&sslmode=require")
        admin = next(r for r in records if r["message"] == "admin call")
        assert admin["token"] == logs.REDACTED and admin["api"] == {"api_key": logs.REDACTED, "n": 3}
        failure = next(r for r in records if r["message"] == "database unreachable")
        assert "Traceback" in failure["exc"] and "hunter2" not in failure["exc"]


def test_redaction_leaves_ordinary_lines_alone(configured):
    stream = configured("DEBUG", json_lines=False)
    log = logging.getLogger("runner_service.scheduler")
    log.info("run %s moved to %s after %d ms", "01J0ABC", "RUNNING", 12, extra={"listen": "127.0.0.1:50051"})
    log.info("missing credentials: send 'authorization: Bearer <token>'")
    log.info("using basic scheduling for sqlite:///var/runner.db")
    written = stream.getvalue()
    assert "run 01J0ABC moved to RUNNING after 12 ms listen='127.0.0.1:50051'" in written
    assert "send 'authorization: Bearer <token>'" in written
    assert "using basic scheduling for sqlite:///var/runner.db" in written
    assert logs.REDACTED not in written


def test_redaction_is_cheap():
    redactor = logs.Redactor(["adm1n-t0ken-value"])
    line = "runner listening listen='127.0.0.1:50051' port=50051 workers=2"
    start = time.perf_counter()
    for _ in range(10_000):
        redactor.text(line)
    per_line = (time.perf_counter() - start) / 10_000
    assert per_line < 50e-6, f"{per_line * 1e6:.1f} µs per line"
    # No quadratic case on long input without separators.
    start = time.perf_counter()
    redactor.text("x" * 200_000 + "password" + "y" * 200_000 + "://" + "z" * 200_000)
    assert time.perf_counter() - start < 0.5


def test_debug_is_for_the_project_loggers_only(configured):
    stream = configured("DEBUG", json_lines=True)
    logging.getLogger("runner_service.workers").debug("project debug line")
    logging.getLogger("gateway.upstream").debug("gateway debug line")
    for name in ("grpc._cython.cygrpc", "asyncio", "sqlalchemy.engine", "urllib3.connectionpool", "multipart"):
        logging.getLogger(name).debug("library debug line")
        logging.getLogger(name).info("library info line")
    logging.getLogger("uvicorn.asgi").debug("asgi message detail")
    logging.getLogger("uvicorn.error").debug("uvicorn debug line")
    logging.getLogger("uvicorn.error").info("Uvicorn running on http://127.0.0.1:8080")
    logging.getLogger("grpc._server").warning("library warning line")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["logger"], r["message"]) for r in records] == [
        ("runner_service.workers", "project debug line"),
        ("gateway.upstream", "gateway debug line"),
        ("uvicorn.error", "Uvicorn running on http://127.0.0.1:8080"),
        ("grpc._server", "library warning line"),
    ]


def test_configure_replaces_its_handler_and_levels_follow_the_setting(configured):
    configured("DEBUG")
    stream = configured("ERROR")
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("runner_service.server").warning("not shown at ERROR")
    logging.getLogger("grpc").error("shown")
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["shown"]


def test_warnings_go_through_the_filter(configured):
    stream = configured("INFO", json_lines=True)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").warning("driver ignored password=s3cret-in-query")
    assert "s3cret-in-query" not in stream.getvalue()


def test_importing_the_service_attaches_no_handler():
    code = (
        "import logging, runner_service.logs, runner_service.server, gateway.app, gateway.__main__; "
        "print(len(logging.getLogger().handlers), logging.getLogger().level)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["0", str(logging.WARNING)]


def test_url_secrets():
    assert logs.url_secrets("postgresql+psycopg://u@h/db?password=secret") == ["secret"]
    assert logs.url_secrets("postgresql://u:p%40ss@h/db") == ["p%40ss", "p@ss"]
    assert logs.url_secrets("sqlite:///var/runner.db") == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_development_runner_start_up_is_quiet_and_redacted(tmp_path):
    """A runner process with the development profile (DEBUG): no library line below WARNING
    at start-up and shut-down, and the database password of its URL appears nowhere."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env.update(
        RUNNER_PROFILE="development",
        RUNNER_LOG_JSON="true",
        RUNNER_LISTEN=f"127.0.0.1:{port}",
        RUNNER_DATABASE_URL=f"sqlite:///{tmp_path}/runner.db?password=s3cret-in-query",
        RUNNER_ADMIN_TOKEN="adm1n-t0ken-value",
        RUNNER_AUDIT_LOG_PATH=str(tmp_path / "audit.log"),
        RUNNER_WORKERS="1",
        RUNNER_METRICS_LISTEN="127.0.0.1:0",
        GRPC_VERBOSITY="ERROR",
    )
    env.pop("PYTHONWARNINGS", None)
    err_path = tmp_path / "stderr"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner_service"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        deadline = time.monotonic() + 30
        while "runner listening" not in err_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, err_path.read_text()
            time.sleep(0.1)
        assert "runner listening" in err_path.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, err_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    written = err_path.read_text()
    for secret in ("s3cret-in-query", "adm1n-t0ken-value"):
        assert secret not in written
    records = [json.loads(line) for line in written.splitlines() if line.startswith("{")]
    ours = [r for r in records if r["logger"].split(".")[0] in logs.PROJECT_LOGGERS]
    chatter = [r for r in records if r not in ours and logging.getLevelName(r["level"]) < logging.WARNING]
    assert not chatter, chatter
    assert any(r["message"] == "runner listening" for r in ours)
    starting = next(r for r in ours if r["message"] == "starting runner")
    assert starting["database"].endswith("?password=***")
