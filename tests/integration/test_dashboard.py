"""The dashboard in a real headless browser (Debian's chromium, driven by selenium through its
chromedriver) against a real sync job started through the CLI; the token that guards the controls."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mongoferry.dev.embedded import EmbeddedServer, free_port
from tests.integration.conftest import job_progress, run_cli, start_cli, user_namespaces, wait_for

TOKEN = "dash-Token-42"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:  # `make test` installs both; never skip silently
        raise AssertionError("chromium and chromedriver are missing: run `make browser` (Debian's packages)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def test_the_page_shows_what_the_api_says_and_its_buttons_control_the_job(
        servers: tuple[EmbeddedServer, EmbeddedServer], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    src, dst = servers
    with src.client() as c:
        c.app.users.insert_many([{"_id": i, "n": i} for i in range(400)])
    port = free_port()
    log = tmp_path / "sync.log"
    proc = start_cli("sync", "--src", src.uri, "--dst", dst.uri, "--http", f"127.0.0.1:{port}",
                     "--http-token", TOKEN, "--log-format", "json", log=log)
    try:
        wait_for(lambda: job_progress(port).get("state") == "RUNNING", timeout=120)
        with src.client() as c:
            for i in range(60):
                c.app.users.update_one({"_id": i}, {"$inc": {"n": 1}})
        wait_for(lambda: sum(job_progress(port).get("events", {}).values()) >= 60, timeout=60)

        browser.get(f"http://127.0.0.1:{port}/")
        progress = job_progress(port)
        events = sum(progress["events"].values())
        # the numbers on the page are the API's (the job is idle now, so they hold still)
        wait_for(lambda: _text(browser, "state") == progress["state"] == "RUNNING", timeout=30)
        wait_for(lambda: _text(browser, "events-total") == str(events), timeout=30)
        assert _text(browser, "kind") == "sync"
        assert _text(browser, "copy") == "100 %"
        namespaces = _text(browser, "namespaces")
        assert "app.users" in namespaces and "done" in namespaces
        sinks = _text(browser, "sinks")
        assert progress["sinks"] and all(f"{name} {s['events']}" in sinks for name, s in progress["sinks"].items())
        assert f"{progress['lagTimeSeconds']:.1f} s" == _text(browser, "lag")

        # Pause: the job is bound to loopback but was given a token, so the page asks for it
        browser.find_element(By.ID, "pause").click()
        WebDriverWait(browser, 10).until(expected_conditions.alert_is_present())
        prompt = browser.switch_to.alert
        prompt.send_keys(TOKEN)
        prompt.accept()
        wait_for(lambda: job_progress(port).get("state") == "PAUSED", timeout=30)
        wait_for(lambda: _text(browser, "state") == "PAUSED", timeout=30)
        with src.client() as c:
            c.app.users.insert_one({"_id": "written while paused"})
        browser.find_element(By.ID, "resume").click()  # the token is remembered for the session
        wait_for(lambda: job_progress(port).get("state") == "RUNNING", timeout=30)
        wait_for(lambda: sum(job_progress(port)["events"].values()) == events + 1, timeout=60)

        browser.find_element(By.ID, "throttle-docs").send_keys("750")
        browser.find_element(By.ID, "throttle-apply").click()
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/api/v1/throttle", timeout=5)
                 .json()["maxDocsPerSecond"] == 750, timeout=30)
        wait_for(lambda: "750" in _text(browser, "throttle-now"), timeout=30)
        assert job_progress(port)["throttle"]["maxDocsPerSecond"] == 750

        shot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        # the 401 is the page's first try of a control before it asked for the token
        page_errors = [e for e in browser.get_log("browser")
                       if e.get("level") == "SEVERE" and "401" not in e["message"]]
        assert page_errors == [], page_errors
    finally:
        _stop(proc)
    assert TOKEN not in log.read_text(), "the token must never be logged"


def test_controls_need_the_token_and_a_public_address_needs_one(
        servers: tuple[EmbeddedServer, EmbeddedServer], tmp_path: Path) -> None:
    src, dst = servers
    with src.client() as c:
        c.app.users.insert_many([{"_id": i} for i in range(50)])
    port = free_port()
    refused = run_cli("sync", "--src", src.uri, "--dst", dst.uri, "--http", f"0.0.0.0:{port}", timeout=120)
    assert refused.code == 2, refused.text
    assert "--http-token" in refused.err and len(refused.err.strip().splitlines()) == 1, refused.err
    assert "mongoferry_meta" not in {ns.split(".")[0] for ns in user_namespaces(dst)}, "nothing written"

    proc = start_cli("sync", "--src", src.uri, "--dst", dst.uri, "--http", f"0.0.0.0:{port}",
                     "--http-token", TOKEN, log=tmp_path / "sync.log")
    try:
        wait_for(lambda: job_progress(port).get("state") == "RUNNING", timeout=120)
        url = f"http://127.0.0.1:{port}"
        for path, body in (("/api/v1/pause", {}), ("/api/v1/throttle", {"maxDocsPerSecond": 5}),
                           ("/api/v1/commit", {})):
            denied = httpx.post(url + path, json=body, timeout=5)
            assert denied.status_code == 401 and "token" in denied.json()["error"], (path, denied.text)
            wrong = httpx.post(url + path, json=body, headers={"Authorization": "Bearer nope"}, timeout=5)
            assert wrong.status_code == 401
        assert job_progress(port)["state"] == "RUNNING" and job_progress(port)["throttle"]["maxDocsPerSecond"] is None
        assert httpx.get(url + "/api/v1/ui", timeout=5).json()["tokenRequired"] is True
        ok = httpx.post(url + "/api/v1/pause", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert ok.status_code == 200
        wait_for(lambda: job_progress(port).get("state") == "PAUSED", timeout=30)
        ok = httpx.post(url + "/api/v1/throttle", json={"maxDocsPerSecond": 5, "maxBytesPerSecond": 1e6},
                        headers={"X-Mongoferry-Token": TOKEN}, timeout=5)
        assert ok.status_code == 200 and ok.json()["maxBytesPerSecond"] == 1e6
        bad = httpx.post(url + "/api/v1/throttle", json={"maxDocsPerSecond": -1},
                         headers={"X-Mongoferry-Token": TOKEN}, timeout=5)
        assert bad.status_code == 400 and "maxDocsPerSecond" in bad.json()["error"]
        metrics = httpx.get(url + "/metrics", timeout=5).text
        assert 'mongoferry_throttle_limit{unit="docs"} 5.0' in metrics
    finally:
        _stop(proc)
    assert TOKEN not in (tmp_path / "sync.log").read_text()


def test_publish_redis_serves_the_dashboard_read_only_beside_its_oplogtoredis_endpoints(
        tmp_path: Path, browser: Any) -> None:
    from tests.integration.test_publish_redis import RedisServer

    mongo = EmbeddedServer(tmp_path / "mongo").start()
    redis = RedisServer(tmp_path / "redis").start()
    port = free_port()
    proc = start_cli("publish-redis", "--mongo-url", mongo.uri, "--redis-url", redis.url,
                     "--http", f"127.0.0.1:{port}", log=tmp_path / "publish.log")
    try:
        wait_for(lambda: job_progress(port).get("state") == "RUNNING", timeout=60)
        with mongo.client() as c:
            for i in range(25):
                c.app.items.insert_one({"_id": f"i{i}", "n": i})
        wait_for(lambda: job_progress(port)["events"]["insert"] == 25, timeout=60)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200  # oplogtoredis's, unchanged
        assert httpx.get(url + "/api/v1/ui", timeout=5).json()["controls"] == []

        browser.get(url + "/")
        progress = job_progress(port)
        wait_for(lambda: _text(browser, "state") == "RUNNING", timeout=30)
        wait_for(lambda: _text(browser, "events-total") == str(sum(progress["events"].values())), timeout=30)
        assert _text(browser, "kind") == "publish-redis"
        sinks = _text(browser, "sinks")
        assert progress["sinks"] and all(f"{name} {s['events']}" in sinks for name, s in progress["sinks"].items())
        page_errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        assert page_errors == [], page_errors
    finally:
        _stop(proc)
        redis.stop()
        mongo.stop()
