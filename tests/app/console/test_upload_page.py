"""The item page of a recent upload (added with AddItems) in a real headless Chromium: its
impressions delivered against the traffic pool's target K as the gateway serves it, their share
and the time left in the pool's window; an item older than the window shows impressions so far
only. Runs after the other console tests: its upload joins the stack's catalogue."""

from __future__ import annotations

import time

import pytest
from selenium.webdriver.common.by import By

from app.console import metrics
from gateway.client import CascadeClient

pytestmark = pytest.mark.timeout(600)
HOUR_MS = 3_600_000


def test_a_recent_upload_shows_delivered_against_the_pools_target(console_stack, browser):
    now_ms = int(time.time() * 1000)
    upload = {"item_key": "console-upload", "creator_id": 1, "categories": [1]}
    with CascadeClient(console_stack.stack.address(), timeout_s=10) as client:
        (item,) = client.add_items([{**upload, "upload_time_ms": now_ms - HOUR_MS}]).item_ids
        client.recommend(3, count=10, request_time_ms=now_ms)  # the pool's clock: now
        shown = client.feedback([(u, item, "impression") for u in (3, 4)], request_time_ms=now_ms)
        assert shown.accepted == 2
    gateway = next(s for s in console_stack.stack.services if s.name == "gateway")
    served = metrics.scrape(f"http://127.0.0.1:{gateway.metrics_port}/metrics")
    setting = {labels["setting"]: v for labels, v in served.select("cascade_gateway_pool_setting")}
    assert setting["slots"] >= 1  # the stack serves its profile's pool
    browser.get(f"{console_stack.url}item?id={item}")
    text = {
        name: browser.find_element(By.ID, f"pool-{name}").text
        for name in ("delivered", "target", "share", "state")
    }
    assert text["delivered"] == "2" and int(text["target"]) == setting["target"]
    assert text["share"] == f"{100 * 2 / setting['target']:.0f} %"
    assert text["state"] == ("target reached" if setting["target"] <= 2 else "in the pool")
    left = int(browser.find_element(By.ID, "pool-left").get_attribute("data-seconds"))
    assert left == setting["window_s"] - HOUR_MS // 1000  # on the gateway's clock: now
    assert "console-upload" in browser.find_element(By.ID, "title").text
    browser.get(f"{console_stack.url}item?id=1")  # a catalogue item, older than the window
    assert not browser.find_elements(By.ID, "pool")
    assert browser.find_element(By.ID, "impressions").text.isdigit()
