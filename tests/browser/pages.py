"""Helpers of the browser tests: bounded waits, screenshots at two widths, the REST calls the
tests make beside the page, and figures read from the browser (Performance API, DevTools)."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from typing import Any

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.conftest import LAPTOP, PHONE


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 15.0, every_s: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:  # a page in the middle of changing: try again
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")
        time.sleep(every_s)


def text(driver: WebDriver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def shoot(driver: WebDriver, folder: pathlib.Path, name: str, settle_s: float = 0.4) -> list[pathlib.Path]:
    """Screenshots of the current page at laptop and phone width (the viewport emulated through
    DevTools, so the sizes are exact): ``name-laptop.png``, ``name-phone.png``."""
    out = []
    for label, (width, height), mobile in (("laptop", LAPTOP, False), ("phone", PHONE, True)):
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )
        time.sleep(settle_s)
        path = folder / f"{name}-{label}.png"
        driver.save_screenshot(str(path))
        out.append(path)
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return out


def console_errors(driver: WebDriver) -> list[str]:
    """Severe console messages since the last call: script errors and CSP violations land here.
    Error answers the pages expect and handle (400, 503, ...) are logged by the browser too, as
    "Failed to load resource": those are left out."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]


def submit(url: str, spec: dict, **request: Any) -> dict:
    response = httpx.post(f"{url}/v1/runs", json={"spec": spec, **request}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def get_run(url: str, run_id: str) -> dict:
    response = httpx.get(f"{url}/v1/runs/{run_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def diagnostic(ticks: int, tick_s: float, **fields: Any) -> dict:
    return {"diagnostic": {"ticks": ticks, "tickDuration": f"{tick_s}s", **fields}}


def task_seconds(driver: WebDriver) -> float:
    """The renderer main thread's busy time so far (DevTools Performance.getMetrics TaskDuration)."""
    metrics = driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
    return next(m["value"] for m in metrics if m["name"] == "TaskDuration")


def cpu_share(driver: WebDriver, seconds: float) -> float:
    """The share of wall time the page's main thread was busy over the next ``seconds``."""
    driver.execute_cdp_cmd("Performance.enable", {"timeDomain": "threadTicks"})
    start_busy, start = task_seconds(driver), time.monotonic()
    time.sleep(seconds)
    busy, wall = task_seconds(driver) - start_busy, time.monotonic() - start
    return busy / wall


def paint_ms(driver: WebDriver) -> dict[str, float]:
    """first-paint and first-contentful-paint of the page, in ms from navigation start."""
    entries = driver.execute_script("return performance.getEntriesByType('paint').map(e => [e.name, e.startTime]);")
    return {name: round(start, 1) for name, start in entries}
