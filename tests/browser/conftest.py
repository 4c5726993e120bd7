"""Browser fixtures: Debian's headless Chromium driven by Selenium through chromedriver, a runner
process (killed and started again by the degraded-state test) and the real gateway served by
uvicorn on a thread of its own, behind a middleware that counts the requests it receives.

Skipped when /usr/bin/chromium or /usr/bin/chromedriver is missing, unless
RUNNER_TEST_REQUIRE_BROWSER=1 (scripts/test sets it, after installing both with apt-get).
Screenshots and measured figures go to var/test-artifacts/browser/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import socket
import tempfile
import threading
import time

import pytest
import uvicorn

from gateway import server as gateway_server
from gateway import settings as gateway_settings
from gateway.app import create_app
from tests.client.processes import RunnerProcesses
from tests.e2e.test_process import REPO

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMEDRIVER = pathlib.Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "var" / "test-artifacts" / "browser"
ADMIN_TOKEN = "browser-test-token"
LAPTOP = (1366, 900)
PHONE = (390, 844)


class CountingApp:
    """ASGI middleware: every HTTP request's arrival time, method and path."""

    def __init__(self, app) -> None:
        self.app = app
        self.requests: list[tuple[float, str, str]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.requests.append((time.monotonic(), scope["method"], scope["path"]))
        await self.app(scope, receive, send)

    def since(self, start: float) -> list[tuple[float, str, str]]:
        return [r for r in list(self.requests) if r[0] >= start]


class GatewayThread:
    """The gateway (uvicorn, its own event loop) on a thread, so the test's blocking
    WebDriver calls never stall it."""

    def __init__(self, upstream: str) -> None:
        settings = gateway_settings.from_env({}, listen="127.0.0.1:0", upstream=upstream, metrics_listen="")
        self.counter = CountingApp(create_app(settings))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = gateway_server.config(
            self.counter, settings, lifespan="on", log_config=None, log_level="warning", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), name="gateway", daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive(), "the gateway thread ended before it started serving"
            assert time.monotonic() < deadline, "the gateway did not start within 15 s"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="session")
def artifacts() -> pathlib.Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (Debian's package) under chromedriver, for the whole session."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        reason = f"no headless browser ({', '.join(missing)} missing; apt-get install chromium chromium-driver)"
        if os.environ.get("RUNNER_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " but RUNNER_TEST_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="runner-browser-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        f"--window-size={LAPTOP[0]},{LAPTOP[1]}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        with contextlib.suppress(OSError):
            import shutil

            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def processes(tmp_path_factory):
    started = RunnerProcesses(tmp_path_factory.mktemp("browser-runners"))
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="session")
def site(browser, processes):
    """A runner process and a gateway in front of it: (runner, gateway); one for the session."""
    runner = processes.start(
        "runner",
        RUNNER_WORKERS="2",
        RUNNER_MAX_QUEUED="100",
        RUNNER_ADMIN_TOKEN=ADMIN_TOKEN,
        RUNNER_WATCH_PROGRESS_INTERVAL_S="0.05",
    )
    gateway = GatewayThread(runner.address)
    gateway.start()
    try:
        yield runner, gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="session")
def figures(artifacts):
    """Measured figures, written to figures.json at the end of the session (and printed)."""
    found: dict = {}
    yield found
    if found:
        (artifacts / "figures.json").write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
        print("\nbrowser figures:", json.dumps(found, sort_keys=True))
