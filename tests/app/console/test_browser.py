"""Every console page in a real headless Chromium against a running local stack: the explained
page is the page Recommend serves (and explaining changes nothing), each stage's scores are
there, a consumed item is listed as filtered, the stack page's latencies are the metrics
endpoints' own, the simulation charts are drawn; bad input and a dead stack give a message."""

from __future__ import annotations

import math
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from selenium.webdriver.common.by import By

from app.console import launch
from gateway.client import CascadeClient
from tests.app.console.conftest import EXPLAIN_TOKEN

pytestmark = pytest.mark.timeout(600)
STAGES = ("recall", "prerank", "rank", "rerank")
MAIN_RPC = {
    "gateway": "cascade.v1.Gateway/Recommend",
    "recall": "cascade.v1.Recall/Recall",
    "prerank": "cascade.v1.Prerank/Prerank",
    "rank": "cascade.v1.Rank/Rank",
    "rerank": "cascade.v1.Rerank/Rerank",
}


def page_items(browser) -> list[int]:
    return [
        int(row.get_attribute("data-item"))
        for row in browser.find_elements(By.CSS_SELECTOR, "tr.page-item")
    ]


def no_trace(browser) -> None:
    page = browser.page_source
    assert "Traceback" not in page and "Internal Server Error" not in page


def test_the_explained_page_is_what_recommend_serves_and_explaining_changes_nothing(
    console_stack, browser
):
    """At one request time (the page depends on it: recall's fresh channel draws by it) the
    explained page is the one Recommend serves. Rerank remembers each page it served (the
    already-shown filter), so had the explain been remembered the Recommend after it would
    serve another page; a second round a second later: the page moves on after the real
    Recommend, and the explained page is again the one Recommend serves."""
    at = int(time.time() * 1000)
    pages = []
    with CascadeClient(console_stack.stack.address(), timeout_s=10) as client:
        for round_at in (at, at + 1000):
            browser.get(f"{console_stack.url}explain?user=1&count=10&at={round_at}")
            explained = page_items(browser)
            served = list(client.recommend(1, count=10, request_time_ms=round_at).items.item_ids)
            assert explained == served
            pages.append(served)
    assert pages[0] != pages[1]  # the shown filter acts: an explain remembered would show
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.page-item")
    for row in rows:
        cells = {
            c.get_attribute("data-stage"): c.text
            for c in row.find_elements(By.CSS_SELECTOR, "td.score")
        }
        assert set(cells) == set(STAGES)
        for stage in STAGES:
            score = cells[stage].split(" ")[0]
            assert math.isfinite(float(score)), (stage, cells[stage])
    cuts = browser.find_elements(By.CSS_SELECTOR, "table.cut")
    assert [c.get_attribute("data-cut") for c in cuts] == ["recall", "prerank", "rank"]
    assert browser.find_elements(By.CSS_SELECTOR, "#history tr")[1:]  # a header, then plays
    no_trace(browser)


def test_a_consumed_item_is_listed_as_filtered_with_its_reason(console_stack, browser):
    with CascadeClient(console_stack.stack.address(), timeout_s=10) as client:
        top = client.recommend(2, count=10).items.item_ids[0]
        assert client.feedback([(2, int(top), "play")]).accepted == 1
    browser.get(f"{console_stack.url}explain?user=2&count=10")
    assert top not in page_items(browser)
    row = browser.find_element(By.CSS_SELECTOR, f'tr.filtered-item[data-item="{top}"]')
    assert row.find_element(By.CSS_SELECTOR, "td.reason").text.startswith("consumed")


def endpoint_quantiles(metrics_port: int, rpc: str) -> tuple[float, float]:
    """p50 and p99 (ms) of the live traffic of `rpc`, computed here from the service's own
    endpoint as Prometheus' histogram_quantile does (linear within the bucket)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    cumulative: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "cascade_rpc_latency_seconds_bucket"
                and labels["rpc"] == rpc
                and labels["traffic"] == "live"
            ):
                le = float(labels["le"])
                cumulative[le] = cumulative.get(le, 0.0) + sample.value
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]]
    assert total > 0, f"no {rpc} calls counted"
    answers = []
    for q in (0.5, 0.99):
        lower, below = 0.0, 0.0
        for bound in bounds:
            if cumulative[bound] >= q * total:
                inside = cumulative[bound] - below
                answers.append(1000 * (lower + (bound - lower) * (q * total - below) / inside))
                break
            lower, below = bound, cumulative[bound]
    return answers[0], answers[1]


def test_the_stack_page_shows_five_services_with_their_endpoints_latencies(console_stack, browser):
    with CascadeClient(console_stack.stack.address(), timeout_s=10) as client:
        for user in (3, 4, 5):
            client.recommend(user, count=10)
    browser.get(f"{console_stack.url}stack")
    rows = {
        r.get_attribute("data-service"): r
        for r in browser.find_elements(By.CSS_SELECTOR, "tr.service")
    }
    assert sorted(rows) == sorted(MAIN_RPC)
    for service in console_stack.stack.services:
        if service.name not in MAIN_RPC:
            continue
        row = rows[service.name]
        assert "SERVING" in row.text
        p50, p99 = endpoint_quantiles(service.metrics_port, MAIN_RPC[service.name])
        shown = [
            float(row.find_element(By.CSS_SELECTOR, f"td.{q}").get_attribute("data-value"))
            for q in ("p50", "p99")
        ]
        assert shown == pytest.approx([p50, p99], rel=1e-9), service.name
    no_trace(browser)


def test_the_experiments_page_draws_the_simulation_charts(console_stack, browser):
    browser.get(f"{console_stack.url}experiments")
    charts = browser.find_elements(By.CSS_SELECTOR, "#charts svg.chart")
    assert len(charts) >= 3
    for chart in charts:
        lines = chart.find_elements(By.CSS_SELECTOR, "polyline.series")
        assert len(lines) == 5  # the report's five arms
        assert all(len(line.get_attribute("points").split()) == 4 for line in lines)  # 4 days
        assert chart.size["width"] > 100 and chart.size["height"] > 100  # laid out, visible
    arms = browser.find_element(By.ID, "arms").text
    assert "none" in arms
    no_trace(browser)


def test_bad_input_gives_a_message_and_the_console_keeps_serving(console_stack, browser):
    cases = [
        ("explain?user=987654321", "unknown to the gateway"),
        ("explain?user=%00%01", "printable"),
        ("explain?user=1&count=abc", "count"),
        ("item?id=abc", "not an item id"),
        ("item?id=99999999", "not in the catalogue"),
    ]
    for path, message in cases:
        browser.get(console_stack.url + path)
        assert message in browser.find_element(By.ID, "error").text, path
        no_trace(browser)
    browser.get(f"{console_stack.url}item?id=1")
    assert browser.find_elements(By.CSS_SELECTOR, "#item-cf tr")[1:]
    assert browser.find_elements(By.CSS_SELECTOR, "#two-tower tr")[1:]


def test_a_stack_that_is_down_and_a_silent_prometheus_give_messages(
    console_stack, browser, tmp_path
):
    """A second console: its run folder holds no stack, its Prometheus URL answers nothing, and
    it has no explain token (the gateway refuses it)."""
    gateway = console_stack.stack.address()
    dead = "gateway=127.0.0.1:1=http://127.0.0.1:1/metrics"
    env = {
        "CASCADE_CONSOLE_PROMETHEUS_URL": "http://127.0.0.1:1",
        "CASCADE_CONSOLE_SIMULATION_DIR": str(tmp_path / "none"),
    }
    empty = launch.start(tmp_path / "empty", port=0, env=env)
    try:
        browser.get(f"{empty.url}stack")
        assert "no running stack" in browser.find_element(By.ID, "error").text
        browser.get(f"{empty.url}explain?user=1")
        assert "no running stack" in browser.find_element(By.ID, "error").text
        browser.get(f"{empty.url}experiments")
        assert "no simulation report" in browser.find_element(By.ID, "report-error").text
        no_trace(browser)
    finally:
        launch.stop(tmp_path / "empty")
    env |= {"CASCADE_CONSOLE_SERVICES": dead, "CASCADE_CONSOLE_GATEWAY_TARGET": gateway}
    down = launch.start(tmp_path / "down", port=0, env=env)
    try:
        browser.get(f"{down.url}stack")
        assert "did not answer" in browser.find_element(By.CSS_SELECTOR, "tr.service").text
        assert "Prometheus" in browser.find_element(By.ID, "prometheus-error").text
        browser.get(f"{down.url}explain?user=1")  # no explain token: refused by the gateway
        assert "UNAUTHENTICATED" in browser.find_element(By.ID, "error").text
        no_trace(browser)
        with urllib.request.urlopen(f"{down.url}healthz", timeout=5) as answer:
            assert answer.read() == b"ok"
    finally:
        launch.stop(tmp_path / "down")


def test_beyond_loopback_every_page_wants_the_token(console_stack, browser, tmp_path):
    env = {"CASCADE_CONSOLE_TOKEN": "let-me-in", "CASCADE_CONSOLE_EXPLAIN_TOKEN": EXPLAIN_TOKEN}
    guarded = launch.start(tmp_path / "guarded", host="127.0.0.1", port=0, env=env)
    try:
        browser.get(f"{guarded.url}stack")
        assert "wants its token" in browser.page_source
        browser.get(f"{guarded.url}stack?token=let-me-in")
        assert browser.find_elements(By.ID, "services") or browser.find_elements(By.ID, "error")
        browser.get(f"{guarded.url}experiments")  # the cookie carries the token on
        assert "wants its token" not in browser.page_source
    finally:
        launch.stop(tmp_path / "guarded")
