"""The bridge's live page and /docs in a real headless Chromium (selenium), against the real
bridge, the real worker (stub mode) and a real Mosquitto. Each test saves screenshots in
test-artifacts/. Where Chromium cannot start, the tests fail saying why."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from broker_util import Broker, start_broker
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from support import REPO, BridgeProcess, Collector, WorkerProcess

from worker import wire
from worker.backends.stub import StubBackend
from worker.settings import WorkerSettings

ARTIFACTS = REPO / "test-artifacts"
FAST = {"summary_interval_s": "0.2"}


def window(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((100, 9)).astype(np.float32)


def top_motif(x: np.ndarray) -> int:
    _, motifs = StubBackend(WorkerSettings()).infer(x[None])
    return int(np.argmax(motifs[0]))


def two_windows_with_different_top_motifs() -> tuple[np.ndarray, int, np.ndarray, int]:
    first = window(0)
    for seed in range(1, 100):
        other = window(seed)
        if top_motif(other) != top_motif(first):
            return first, top_motif(first), other, top_motif(other)
    raise AssertionError("the stub gave every window the same top motif")


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail("Chromium and its driver are needed (apt-get install chromium "
                    "chromium-driver; scripts/install_system_deps.sh does it)")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except WebDriverException as exc:
        pytest.fail(f"headless Chromium could not start: {exc.msg}")
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait(driver: WebDriver, what: str, condition: Any, timeout: float = 15) -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))
    except Exception:
        shot(driver, f"failed-{what.replace(' ', '-')}")
        raise AssertionError(f"the page never showed {what}") from None


def attr(driver: WebDriver, css: str, name: str) -> str | None:
    # One script call: the page redraws every second, so an element found by one call may be
    # gone by the next.
    return driver.execute_script(  # type: ignore[no-any-return]
        "const e = document.querySelector(arguments[0]); "
        "return e ? e.getAttribute(arguments[1]) : null;", css, name)


def bars(driver: WebDriver, card: str) -> tuple[int, list[int]]:
    """How many bars a sensor's card has, and which are marked top."""
    count, tops = driver.execute_script(
        "const bars = [...document.querySelectorAll(arguments[0] + ' .bar')]; "
        "return [bars.length, bars.flatMap((b, i) => b.classList.contains('top') ? [i] : [])];",
        card)
    return int(count), [int(i) for i in tops]


def text(driver: WebDriver, css: str) -> str:
    return str(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css))


def severe(driver: WebDriver) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_broker((REPO / "mosquitto" / "dev.conf").read_text(), tmp_path / "broker")
    yield b
    b.stop()


def test_page_follows_the_workers_and_sensors_live(
    browser: WebDriver, mqtt_broker: Broker, tmp_path: Path
) -> None:
    first, top_first, second, top_second = two_windows_with_different_top_motifs()
    worker = WorkerProcess(mqtt_broker.port, worker_id="pi5-page", log_dir=tmp_path, **FAST)
    worker.start()
    bridge = BridgeProcess(mqtt_broker.port, log_dir=tmp_path).start()
    sensor = Collector(mqtt_broker.port)
    row = "tr[data-worker='pi5-page']"
    try:
        sensor.wait_state("pi5-page", "online")
        browser.get(bridge.url + "/")
        wait(browser, "the worker online", lambda d: attr(d, row, "data-state") == "online")
        assert text(browser, f"{row} .state") == "online"
        assert "stub" in text(browser, row)
        shot(browser, "page-worker-online")

        card = ".sensor[data-sensor='porch']"
        sensor.publish("imu/porch/window", wire.encode_window(first, seq=1))
        wait(browser, "porch's bars", lambda d: bars(d, card)[0] == 12)
        wait(browser, "porch's top motif", lambda d: attr(d, card, "data-top") == str(top_first))
        assert bars(browser, card) == (12, [top_first])
        shot(browser, "page-sensor-bars")

        sensor.publish("imu/porch/window", wire.encode_window(second, seq=2))
        wait(browser, "porch's new top motif",
             lambda d: attr(d, card, "data-top") == str(top_second))
        assert bars(browser, card) == (12, [top_second])
        assert f"top motif {top_second}" in text(browser, card)

        worker.kill()  # kill -9: the broker publishes the last will
        wait(browser, "the worker offline", lambda d: attr(d, row, "data-state") == "offline")
        shot(browser, "page-worker-offline")
        worker = WorkerProcess(mqtt_broker.port, worker_id="pi5-page", log_dir=tmp_path,
                               **FAST).start()
        wait(browser, "the worker online again", lambda d: attr(d, row, "data-state") == "online")

        assert severe(browser) == []  # no errors in the browser console while all was well
        mqtt_broker.stop()  # the bridge's own broker connection goes: the page says so
        wait(browser, "the broker-down banner",
             lambda d: d.find_element(By.ID, "broker-down").is_displayed(), timeout=30)
        assert "lost its broker" in browser.find_element(By.ID, "broker-down").text
        shot(browser, "page-broker-down")
    finally:
        sensor.close()
        bridge.kill()
        worker.kill()


def test_docs_render_every_route_with_no_request_off_the_bridge(
    browser: WebDriver, mqtt_broker: Broker, tmp_path: Path
) -> None:
    bridge = BridgeProcess(mqtt_broker.port, log_dir=tmp_path).start()
    try:
        browser.get(bridge.url + "/docs")
        paths = wait(browser, "the routes", lambda d: {
            e.text for e in d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")} or None)
        assert {"/healthz", "/infer", "/metrics", "/events"} <= paths, paths
        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(url.startswith(bridge.url + "/") for url in loaded), loaded
        assert any(url.endswith("swagger-ui-bundle.js") for url in loaded)
        assert severe(browser) == []
        shot(browser, "docs")
    finally:
        bridge.kill()


def test_with_a_token_the_page_asks_for_it_and_the_events_need_it(
    browser: WebDriver, mqtt_broker: Broker, tmp_path: Path
) -> None:
    worker = WorkerProcess(mqtt_broker.port, worker_id="pi5-token", log_dir=tmp_path).start()
    bridge = BridgeProcess(mqtt_broker.port, log_dir=tmp_path, bridge_token="s3cret").start()
    try:
        assert httpx.get(bridge.url + "/events").status_code == 401
        bad = httpx.get(bridge.url + "/events", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        with httpx.stream("GET", bridge.url + "/events",
                          headers={"Authorization": "Bearer s3cret"}) as events:
            assert events.status_code == 200
            assert events.headers["content-type"].startswith("text/event-stream")
            data = next(line for line in events.iter_lines() if line.startswith("data: "))
        assert json.loads(data[6:])["bridge"]["connected"] is True
        assert httpx.get(bridge.url + "/").status_code == 200  # the page itself holds no data

        browser.get(bridge.url + "/")
        wait(browser, "the token form", lambda d: d.find_element(By.ID, "token-form")
             .is_displayed())
        assert browser.find_elements(By.CSS_SELECTOR, "tr[data-worker]") == []
        browser.find_element(By.ID, "token").send_keys("s3cret")
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
        wait(browser, "the worker with the token",
             lambda d: attr(d, "tr[data-worker='pi5-token']", "data-state") == "online")
        shot(browser, "page-with-token")
    finally:
        bridge.kill()
        worker.kill()


def test_a_live_worker_whose_status_stops_is_shown_stale_not_online(
    browser: WebDriver, mqtt_broker: Broker, tmp_path: Path
) -> None:
    """A status that says `online` but is no longer refreshed (a worker hung, or cut off while
    the broker has not noticed) is never shown as online."""
    bridge = BridgeProcess(mqtt_broker.port, log_dir=tmp_path).start()
    sensor = Collector(mqtt_broker.port)
    try:
        doc = {"state": "online", "worker_id": "ghost", "mode": "hailo", "model": "m",
               "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
               "windows_total": 0, "errors_total": 0, "queue_depth": 0}
        sensor.publish("hailo/ghost/status", json.dumps(doc).encode())
        browser.get(bridge.url + "/")
        row = "tr[data-worker='ghost']"
        wait(browser, "the ghost online", lambda d: attr(d, row, "data-state") == "online")
        wait(browser, "the ghost stale", lambda d: attr(d, row, "data-state") == "stale")
        assert text(browser, f"{row} .state") == "online, stale"
    finally:
        sensor.close()
        bridge.kill()
