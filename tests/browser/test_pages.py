"""The operator pages in headless Chromium against a real gateway and runner (SPEC §11).

The tests share one browser, runner and gateway and run in file order; each bounds its waits.
Screenshots (laptop 1366x900, phone 390x844) and figures go to var/test-artifacts/browser/.
"""

from __future__ import annotations

import json
import time

import grpc
import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from protos.runner.v1 import runner_pb2 as pb
from protos.runner.v1 import runner_pb2_grpc
from tests.browser.conftest import ADMIN_TOKEN, GatewayThread
from tests.browser.pages import (
    console_errors,
    cpu_share,
    diagnostic,
    get_run,
    paint_ms,
    shoot,
    submit,
    text,
    wait_for,
)

# A batch that lasts a few seconds (weak attacks make long battles), so the bar is seen moving.
SLOW_BATCH_OVERRIDES = {
    "sides": {"red": {"units": {"0": {"attack": 0.02}}}, "blue": {"units": {"0": {"attack": 0.02}}}}
}


def fill(driver, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def badge(driver) -> str:
    return text(driver, "#state .badge")


def test_docs_render_the_operations(browser, site, artifacts):
    _, gateway = site
    browser.get(f"{gateway.url}/docs")
    blocks = wait_for("the operations", lambda: len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) >= 12 or None)
    assert blocks
    page = browser.find_element(By.ID, "swagger-ui").text
    assert "Accepts a run and returns it once it is durably stored" in page
    assert "/v1/runs/{run_id}:cancel" in page and "/v1/admin/workers:restart" in page
    browser.find_element(By.CSS_SELECTOR, "#operations-RunnerService-RunnerService_ListRuns button").click()
    wait_for(
        "ListRuns' parameters", lambda: "0 means the default (50)" in browser.find_element(By.ID, "swagger-ui").text
    )
    assert not console_errors(browser)
    shoot(browser, artifacts, "docs")


def test_a_batch_submitted_from_the_form_moves_its_bar_and_ends_succeeded_with_statistics(browser, site, artifacts):
    _, gateway = site
    browser.get(f"{gateway.url}/submit")
    wait_for("the scenarios", lambda: browser.find_elements(By.CSS_SELECTOR, "#scenario option"))
    wait_for("the limits from the schema", lambda: "from 1 to 1,000" in text(browser, "#iterations-hint"))
    Select(browser.find_element(By.ID, "kind")).select_by_value("batch")
    Select(browser.find_element(By.ID, "scenario")).select_by_value("duel")
    fill(browser, "max_ticks", "100000")
    fill(browser, "seed", "7")
    fill(browser, "iterations", "200")
    fill(browser, "overrides", json.dumps(SLOW_BATCH_OVERRIDES))
    browser.find_element(By.ID, "submit").click()
    wait_for("the run page", lambda: "/runs/" in browser.current_url)
    seen: set[int] = set()

    def ended() -> bool:
        value = browser.execute_script(
            "const b = document.querySelector('#bar [role=progressbar]'); return b && b.getAttribute('aria-valuenow');"
        )
        if value is not None:
            seen.add(int(value))
        return badge(browser) == "SUCCEEDED"

    wait_for("SUCCEEDED", ended, timeout_s=40, every_s=0.03)
    moving = sorted(v for v in seen if 0 < v < 100)
    assert len(moving) >= 2, f"the bar was seen only at {sorted(seen)}"
    wait_for("the statistics", lambda: browser.find_elements(By.CSS_SELECTOR, "#result table.stats"))
    result = browser.find_element(By.ID, "result").text
    assert "P(win)" in result and "red" in result and "blue" in result and "draw" in result
    assert "Iterations\n200" in result or "200" in result
    assert browser.find_element(By.ID, "cancel").get_attribute("disabled") is not None
    log = browser.find_element(By.ID, "log").text
    assert "state QUEUED" in log and "state RUNNING" in log and "state SUCCEEDED" in log
    assert not console_errors(browser)
    shoot(browser, artifacts, "run-batch")


def test_a_sweep_shows_its_table_and_chart(browser, site, artifacts):
    _, gateway = site
    spec = {
        "sweep": {
            "simulation": {"scenario": "duel", "maxTicks": 500, "seed": "3"},
            "parameter": "sides.red.units.0.count",
            "values": [10, 15, 20, 25, 30],
            "numIterations": 40,
        }
    }
    run = submit(gateway.url, spec)
    browser.get(f"{gateway.url}/runs/{run['runId']}")
    wait_for("the chart", lambda: browser.find_elements(By.CSS_SELECTOR, "#result .chart svg circle"), timeout_s=30)
    sides = browser.find_elements(By.CSS_SELECTOR, "#result .chart svg g[data-side]")
    assert {s.get_attribute("data-side") for s in sides} == {"red", "blue"}
    assert len(browser.find_elements(By.CSS_SELECTOR, "#result .chart svg g[data-side='red'] circle")) == 5
    assert "P(red wins)" in browser.find_element(By.ID, "result").text
    shoot(browser, artifacts, "run-sweep")


def test_a_bad_field_shows_the_servers_message_next_to_it(browser, site, artifacts):
    _, gateway = site
    browser.get(f"{gateway.url}/submit?kind=batch")
    wait_for("the scenarios", lambda: browser.find_elements(By.CSS_SELECTOR, "#scenario option"))
    fill(browser, "iterations", "5000")
    fill(browser, "max_ticks", "0")
    browser.find_element(By.ID, "submit").click()
    error = wait_for("the field error", lambda: text(browser, "#iterations-error"))
    assert error == "must be at most 1000 (got 5000)"  # the server's BadRequest, word for word
    assert text(browser, "#max_ticks-error") == "must be at least 1 (got 0)"
    assert browser.find_element(By.ID, "iterations").get_attribute("aria-invalid") == "true"
    assert "/submit" in browser.current_url  # nothing was submitted
    # A detail of a field inside the overrides lands next to the overrides.
    fill(browser, "iterations", "10")
    fill(browser, "max_ticks", "100")
    fill(browser, "overrides", '{"no_such_parameter": 1}')
    browser.find_element(By.ID, "submit").click()
    message = wait_for("the overrides error", lambda: text(browser, "#overrides-error"))
    assert "no parameter 'no_such_parameter'" in message
    fill(browser, "overrides", "")
    fill(browser, "iterations", "5000")
    browser.find_element(By.ID, "submit").click()
    wait_for("the field error again", lambda: text(browser, "#iterations-error"))
    shoot(browser, artifacts, "submit-errors")


def test_a_long_run_is_cancelled_from_its_page(browser, site, artifacts):
    _, gateway = site
    run = submit(gateway.url, diagnostic(600, 0.05, logEvery=20))
    browser.get(f"{gateway.url}/runs/{run['runId']}")
    wait_for(
        "RUNNING with progress",
        lambda: (
            badge(browser) == "RUNNING"
            and "· live" in text(browser, "#stream-state")
            and text(browser, "#progress-text").split(" ")[0] not in ("", "0")
        ),
    )
    shoot(browser, artifacts, "run-running")
    started = time.monotonic()
    browser.find_element(By.ID, "cancel").click()
    wait_for("CANCELLED", lambda: badge(browser) == "CANCELLED", timeout_s=10)
    shown_after_s = time.monotonic() - started
    wait_for("the ending", lambda: "CANCELLED" in text(browser, "#result"))
    assert get_run(gateway.url, run["runId"])["state"] == "CANCELLED"
    assert (
        "client request" in browser.find_element(By.ID, "log").text
        or "cancel" in browser.find_element(By.ID, "log").text
    )
    assert shown_after_s < 5


def test_the_runs_table_updates_without_a_reload(browser, site, artifacts):
    _, gateway = site
    browser.get(f"{gateway.url}/")
    wait_for("the table", lambda: browser.find_elements(By.CSS_SELECTOR, "#rows tr"))
    browser.execute_script("window.__sameDocument = true;")
    run = submit(gateway.url, diagnostic(120, 0.05))
    row = f"#rows tr[data-run-id='{run['runId']}']"
    wait_for("the new row", lambda: browser.find_elements(By.CSS_SELECTOR, row), timeout_s=10)
    wait_for(
        "the row RUNNING",
        lambda: browser.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") == "RUNNING",
        timeout_s=10,
    )
    wait_for(
        "the row SUCCEEDED",
        lambda: browser.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") == "SUCCEEDED",
        timeout_s=15,
    )
    assert browser.execute_script("return window.__sameDocument === true;")
    counts = {b.get_attribute("data-state"): b.text for b in browser.find_elements(By.CSS_SELECTOR, "#counts .count")}
    assert int(counts["SUCCEEDED"].split("\n")[0]) >= 3
    # Filters: by state, then by kind (kept in the address).
    Select(browser.find_element(By.ID, "f-state")).select_by_value("CANCELLED")
    wait_for(
        "only cancelled runs",
        lambda: (
            {r.get_attribute("data-state") for r in browser.find_elements(By.CSS_SELECTOR, "#rows tr")} == {"CANCELLED"}
        ),
    )
    assert "state=CANCELLED" in browser.current_url
    Select(browser.find_element(By.ID, "f-state")).select_by_value("")
    Select(browser.find_element(By.ID, "f-kind")).select_by_value("batch")
    wait_for(
        "only batches",
        lambda: (
            {r.find_elements(By.TAG_NAME, "td")[2].text for r in browser.find_elements(By.CSS_SELECTOR, "#rows tr")}
            == {"batch"}
        ),
    )
    Select(browser.find_element(By.ID, "f-kind")).select_by_value("")
    wait_for("every run again", lambda: len(browser.find_elements(By.CSS_SELECTOR, "#rows tr")) >= 4)
    assert not console_errors(browser)
    shoot(browser, artifacts, "runs")


def test_admin_view_with_the_token_shows_the_pool_and_restarts_workers(browser, site, artifacts):
    _, gateway = site
    browser.get(f"{gateway.url}/admin")
    fill(browser, "token", "wrong-token")
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    wait_for("the refusal", lambda: "Not authorized" in text(browser, "#status"))
    fill(browser, "token", ADMIN_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    wait_for("the status", lambda: "Alive" in text(browser, "#workers"))
    assert "allowed" in text(browser, "#policy") and "closed" in text(browser, "#circuit")
    assert browser.execute_script("return sessionStorage.getItem('runner.adminToken');") == ADMIN_TOKEN
    assert not browser.find_element(By.ID, "ack-field").is_displayed()  # only while blocked
    fill(browser, "reason", "browser test")
    browser.find_element(By.ID, "restart").click()
    browser.find_element(By.ID, "confirm").click()
    wait_for("the restart", lambda: text(browser, "#restart-state") == "Workers restarted.", timeout_s=30)
    wait_for("the pool back", lambda: "Restarts (total)" in text(browser, "#workers"))
    shoot(browser, artifacts, "admin")


@pytest.mark.timeout(90)
def test_runner_stopped_then_started_degraded_state_shown_no_flood_and_recovery(
    browser, site, processes, artifacts, figures
):
    runner, gateway = site
    long_run = submit(gateway.url, diagnostic(2000, 0.05, logEvery=10))
    browser.get(f"{gateway.url}/runs/{long_run['runId']}")
    wait_for(
        "the run page live",
        lambda: badge(browser) == "RUNNING" and "· live" in text(browser, "#stream-state"),
        timeout_s=10,
    )
    run_tab = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(f"{gateway.url}/")
    wait_for("the table", lambda: browser.find_elements(By.CSS_SELECTOR, "#rows tr"))

    processes.kill(runner)
    down = time.monotonic()
    wait_for("the degraded state", lambda: "Runner unreachable" in text(browser, "#status"), timeout_s=10)
    shoot(browser, artifacts, "runs-degraded")
    browser.switch_to.window(run_tab)
    wait_for(
        "the stream's degraded state",
        lambda: "Runner unreachable" in text(browser, "#status") or "Gateway" in text(browser, "#status"),
        timeout_s=15,
    )
    assert "resuming after event" in text(browser, "#stream-state")
    shoot(browser, artifacts, "run-degraded")
    browser.switch_to.window(browser.window_handles[-1])
    time.sleep(max(0.0, 12 - (time.monotonic() - down)))
    window_s = time.monotonic() - down
    requests = gateway.counter.since(down)
    restarted = processes.start(
        "runner", port=runner.port, RUNNER_WORKERS="2", RUNNER_MAX_QUEUED="100", RUNNER_ADMIN_TOKEN=ADMIN_TOKEN
    )
    back = time.monotonic()
    wait_for("the banner gone", lambda: not browser.find_element(By.ID, "status").is_displayed(), timeout_s=25)
    recovered_s = time.monotonic() - back
    wait_for(
        "a fresh table",
        lambda: browser.find_elements(
            By.CSS_SELECTOR, f"#rows tr[data-run-id='{long_run['runId']}'][data-state='INTERRUPTED']"
        ),
        timeout_s=10,
    )
    browser.switch_to.window(run_tab)
    wait_for("the run page resumed to the end", lambda: badge(browser) == "INTERRUPTED", timeout_s=25)

    def log_with_the_end() -> str:
        shown = browser.find_element(By.ID, "log").text
        return shown if "state INTERRUPTED" in shown else ""

    log = wait_for("the end in the log", log_with_the_end)
    # Resumed from the last event: every state change once, nothing shown twice.
    assert log.count("state RUNNING") == 1 and log.count("state INTERRUPTED") == 1
    lines = [line.split(" ", 1)[1] for line in log.splitlines() if "tick " in line]
    assert len(lines) == len(set(lines)), "a log line was shown twice"
    by_page: dict[str, int] = {}
    for _, _, path in requests:
        key = "events" if path.endswith("/events") else path
        by_page[key] = by_page.get(key, 0) + 1
    figures["degraded"] = {
        "window_s": round(window_s, 1),
        "requests": len(requests),
        "requests_by_path": by_page,
        "recovered_after_restart_s": round(recovered_s, 1),
    }
    # Two pages, backing off from 1 s to 15 s with jitter: a handful each, never a tight loop.
    assert len(requests) <= 24, by_page
    browser.close()
    browser.switch_to.window(browser.window_handles[0])
    assert restarted.proc.poll() is None


@pytest.mark.timeout(120)
def test_responsive_with_1000_runs_in_the_table_and_100_log_lines_a_second(browser, site, artifacts, figures):
    runner, gateway = site
    with grpc.insecure_channel(runner.address) as channel:
        stub = runner_pb2_grpc.RunnerServiceStub(channel)
        for _ in range(1000):
            request = pb.SubmitRunRequest()
            request.spec.diagnostic.ticks = 0
            stub.SubmitRun(request, timeout=10)
    browser.execute_cdp_cmd("Performance.enable", {"timeDomain": "threadTicks"})
    browser.get(f"{gateway.url}/?page_size=500")
    wait_for("500 rows", lambda: len(browser.find_elements(By.CSS_SELECTOR, "#rows tr")) == 500, timeout_s=15)
    paints = paint_ms(browser)
    rendered = browser.execute_script("return performance.getEntriesByName('runs-rendered')[0].startTime;")
    started = time.monotonic()
    browser.find_element(By.ID, "more").click()
    wait_for(
        "1000 rows",
        lambda: browser.execute_script("return document.querySelectorAll('#rows tr').length;") >= 1000,
        timeout_s=15,
    )
    more_ms = (time.monotonic() - started) * 1000
    idle_cpu = cpu_share(browser, 5)
    ping = time.monotonic()
    browser.execute_script("return 1;")
    ping_ms = (time.monotonic() - ping) * 1000
    shoot(browser, artifacts, "runs-1000")

    run = submit(gateway.url, diagnostic(1500, 0.01, logEvery=1))
    browser.get(f"{gateway.url}/runs/{run['runId']}")
    wait_for(
        "log lines",
        lambda: browser.execute_script("return document.querySelectorAll('#log li').length;") > 50,
        timeout_s=10,
    )
    run_paints = paint_ms(browser)
    before = browser.execute_script("return document.querySelectorAll('#log li').length;")
    t0 = time.monotonic()
    log_cpu = cpu_share(browser, 5)
    lines_per_s = (browser.execute_script("return document.querySelectorAll('#log li').length;") - before) / (
        time.monotonic() - t0
    )
    ping = time.monotonic()
    browser.execute_script("return 1;")
    log_ping_ms = (time.monotonic() - ping) * 1000
    shoot(browser, artifacts, "run-log-flood")
    browser.find_element(By.ID, "cancel").click()
    wait_for("CANCELLED", lambda: badge(browser) == "CANCELLED", timeout_s=10)
    figures["runs_table_1000"] = {
        "first_paint_ms": paints.get("first-paint"),
        "first_contentful_paint_ms": paints.get("first-contentful-paint"),
        "first_500_rows_rendered_ms": round(rendered, 1),
        "next_500_rows_ms": round(more_ms, 1),
        "main_thread_cpu_share_polling_5s": round(idle_cpu, 3),
        "script_round_trip_ms": round(ping_ms, 1),
    }
    figures["run_log_100_lines_per_s"] = {
        "first_contentful_paint_ms": run_paints.get("first-contentful-paint"),
        "log_lines_per_s_shown": round(lines_per_s, 1),
        "main_thread_cpu_share_5s": round(log_cpu, 3),
        "script_round_trip_ms": round(log_ping_ms, 1),
    }
    assert paints.get("first-contentful-paint", 10_000) < 2000
    assert rendered < 5000 and more_ms < 5000
    assert idle_cpu < 0.5, f"the runs page keeps the main thread {idle_cpu:.0%} busy"
    assert lines_per_s > 50, f"only {lines_per_s:.0f} log lines/s shown"
    assert log_cpu < 0.6, f"the log keeps the main thread {log_cpu:.0%} busy"
    assert not console_errors(browser)


def test_backoff_waits_at_least_what_retry_after_says_and_grows_with_jitter(browser, site):
    _, gateway = site
    browser.get(f"{gateway.url}/")
    waits = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        import('/static/common.js').then((m) => done({
          told: Array.from({length: 50}, () => m.backoffMs(1, 7)),
          grown: [1, 2, 3, 4, 5, 6, 9].map((n) => Array.from({length: 50}, () => m.backoffMs(n, null))),
        }));
        """
    )
    assert all(7000 <= w <= 8400 for w in waits["told"])
    for failures, samples in zip([1, 2, 3, 4, 5, 6, 9], waits["grown"]):
        ceiling = min(15000, 1000 * 2 ** (failures - 1))
        assert all(ceiling / 2 <= w <= ceiling for w in samples), (failures, min(samples), max(samples))
        assert len(set(samples)) > 40  # jittered: clients do not come back together


@pytest.mark.timeout(60)
def test_a_full_queue_is_shown_and_the_submit_retried_until_it_passes(browser, processes, artifacts):
    runner = processes.start("queue", RUNNER_WORKERS="1", RUNNER_MAX_QUEUED="1")
    gateway = GatewayThread(runner.address)
    gateway.start()
    try:
        running = submit(gateway.url, diagnostic(600, 0.05))
        waiting = submit(gateway.url, diagnostic(600, 0.05))
        browser.get(f"{gateway.url}/submit?kind=diagnostic")
        wait_for("the form", lambda: browser.find_elements(By.CSS_SELECTOR, "#ticks-hint"))
        fill(browser, "ticks", "5")
        browser.find_element(By.ID, "submit").click()
        wait_for("the queue full banner", lambda: "Queue full" in text(browser, "#status"), timeout_s=10)
        assert "trying again in" in text(browser, "#status")
        shoot(browser, artifacts, "submit-queue-full")
        first_refusal = time.monotonic()
        for run in (running, waiting):
            httpx.post(f"{gateway.url}/v1/runs/{run['runId']}:cancel", json={}, timeout=10)
        wait_for("the run page", lambda: "/runs/" in browser.current_url, timeout_s=30)
        wait_for("the run's end", lambda: badge(browser) == "SUCCEEDED", timeout_s=15)
        submits = [r for r in gateway.counter.since(first_refusal - 15) if r[1] == "POST" and r[2] == "/v1/runs"]
        # Two from the test, then the page's: a first try and a few retries, never a tight loop.
        assert 2 + 2 <= len(submits) <= 2 + 6, submits
        listed = httpx.get(f"{gateway.url}/v1/runs", params={"kind": "diagnostic"}, timeout=10).json()["runs"]
        assert len(listed) == 3  # retried with one request_id: one run, however many tries
    finally:
        gateway.stop()
        processes.kill(runner)
