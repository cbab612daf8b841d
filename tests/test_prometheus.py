"""Prometheus, alert rules and the Grafana dashboard, on the real components.

promtool checks the configuration and the rules and runs the rules' unit tests; then Debian's
`prometheus` scrapes a real authorizer under a little traffic, and every expression of the
dashboard and of the rule file must evaluate without error and return data.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from ledger.demo_region import card_uid, terminal_id
from terminal_protocol.client import new_request_id

REPOSITORY = Path(__file__).resolve().parents[1]
CONFIG = REPOSITORY / "deploy/prometheus/prometheus.yml"
RULES = REPOSITORY / "deploy/prometheus/alerts.yml"
RULES_TESTS = REPOSITORY / "deploy/prometheus/alerts_test.yml"
DASHBOARD = REPOSITORY / "deploy/grafana/hdfpay-dashboard.json"
PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
JOB = "hdfpay-authorizer"  # the job name the rules and the dashboard select
ALERTS = {"AuthorizerDown", "AuthorizerErrorRate", "AuthorizationLatencyHigh",
          "SecurityRejectionsSpike", "ApprovalRateCollapse", "DatabaseRoundTripSlow",
          "LoadShedding", "ServerVoidsGivenUp", "ServerVoidsPending"}

SCRAPE_INTERVAL_S = 1
PROMTOOL_TIMEOUT_S = 60
PROMETHEUS_READY_TIMEOUT_S = 30
SCRAPED_TIMEOUT_S = 30      # until Prometheus holds the series of the traffic sent
EXPRESSIONS_TIMEOUT_S = 60  # until every expression returns data (rules evaluated every 1 s)
POLL_INTERVAL_S = 0.25
HTTP_TIMEOUT_S = 5
PROMETHEUS_STOP_TIMEOUT_S = 10
LOG_TAIL_CHARS = 3000
# Grafana's $__rate_interval is max(4 × scrape interval, step + scrape interval); the test
# gives it a value that holds enough 1 s scrapes for rate().
GRAFANA_RATE_INTERVAL = "15s"
# An alert's condition compares series with literal thresholds; removing `OP number` leaves
# the series it compares, which must exist while nothing is wrong.
COMPARISON_WITH_LITERAL = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?-?[0-9.]+(?:e-?[0-9]+)?")


def required(binary: Path) -> Path:
    """The binary, or a failure saying which Debian package brings it."""
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: apt-get install prometheus (Debian's package brings "
                    "prometheus and promtool)")
    return binary


@pytest.mark.parametrize("arguments", [("check", "config", CONFIG), ("check", "rules", RULES),
                                       ("test", "rules", RULES_TESTS)],
                         ids=["check-config", "check-rules", "test-rules"])
def test_promtool_accepts_config_rules_and_their_unit_tests(arguments):
    # rule_files in prometheus.yml is relative: promtool resolves it from the config's directory.
    result = subprocess.run([str(required(PROMTOOL)), *map(str, arguments)], cwd=REPOSITORY,
                            capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr


def free_loopback_port() -> int:
    """A TCP port nobody listens on right now (Prometheus binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape_config(target: str) -> str:
    """Prometheus's configuration for the test, as JSON (which YAML accepts): the job of
    deploy/prometheus/prometheus.yml on the test server, every second, with the same rules."""
    interval = f"{SCRAPE_INTERVAL_S}s"
    return json.dumps({
        "global": {"scrape_interval": interval, "scrape_timeout": interval,
                   "evaluation_interval": interval},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics",
                            "static_configs": [{"targets": [target]}]}],
    })


@dataclass
class RunningPrometheus:
    url: str
    session: aiohttp.ClientSession
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    async def api(self, path: str, **params: str) -> dict:
        """The `data` of an HTTP API answer; fails with Prometheus's own error message."""
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as reply:
            body = await reply.json()
        assert body.get("status") == "success", f"/api/v1/{path} {params}: {body}"
        return body["data"]

    async def query(self, expression: str) -> list[dict]:
        """An instant query's samples."""
        return (await self.api("query", query=expression))["result"]


async def poll(condition, timeout_s: float, what: str, prometheus: RunningPrometheus | None = None):
    """Await condition() every POLL_INTERVAL_S until it returns something truthy; fail after
    timeout_s saying what was awaited (and the end of Prometheus's log)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        outcome = await condition()
        if outcome:
            return outcome
        if loop.time() > deadline:
            log = prometheus.log_tail() if prometheus else ""
            pytest.fail(f"{what}: not within {timeout_s} s\n{log}")
        await asyncio.sleep(POLL_INTERVAL_S)


@pytest.fixture
async def prometheus(server, tmp_path):
    """Debian's prometheus on a free loopback port, scraping the test server; stopped at the end."""
    config = tmp_path / "prometheus.yml"
    config.write_text(scrape_config(urlsplit(server.url).netloc))
    port = free_loopback_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [str(required(PROMETHEUS)), f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            running = RunningPrometheus(f"http://127.0.0.1:{port}", session, log)

            async def ready() -> bool:
                assert process.poll() is None, f"prometheus exited:\n{running.log_tail()}"
                try:
                    async with session.get(f"{running.url}/-/ready") as reply:
                        return reply.status == 200
                except aiohttp.ClientError:
                    return False

            await poll(ready, PROMETHEUS_READY_TIMEOUT_S, "prometheus ready", running)
            yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=PROMETHEUS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def send_traffic(bookshop, equipment_shop) -> int:
    """Approved purchases at both partner categories, declines (lost card 41, no rights 57) and
    a reversal; returns the number of messages answered."""
    voided = new_request_id()
    expected = [(bookshop.purchase(card_uid(5), 1_00, request_id=voided), "00"),
                (bookshop.purchase(card_uid(6), 2_50), "00"),
                (bookshop.purchase(card_uid(1), 1_00), "41"),
                (bookshop.purchase(card_uid(50), 1_00), "57"),
                (equipment_shop.purchase(card_uid(7), 3_00), "00"),
                (bookshop.reversal(voided), "00")]
    for message, rc in expected:
        assert (await message).rc == rc
    return len(expected)


def dashboard_expressions() -> list[str]:
    """Every target expression of the dashboard's panels (rows included), with Grafana's
    $__rate_interval given a value."""
    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                yield node["expr"].replace("$__rate_interval", GRAFANA_RATE_INTERVAL)
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)
    expressions = list(walk(json.loads(DASHBOARD.read_text())["panels"]))
    assert expressions, "the dashboard has no expression"
    assert not [e for e in expressions if "$" in e], "a Grafana variable the test cannot fill"
    return expressions


async def rule_expressions(prometheus: RunningPrometheus) -> tuple[list[str], list[str]]:
    """(expressions that must return data, alert conditions that must only evaluate), from the
    rules Prometheus loaded (/api/v1/rules: the rule file as Prometheus parsed it). A recording
    rule gives its expression and its recorded series; an alert gives its condition and the
    condition with each comparison to a literal threshold removed."""
    rules = [rule for group in (await prometheus.api("rules"))["groups"] for rule in group["rules"]]
    alerts = [rule for rule in rules if rule["type"] == "alerting"]
    assert {rule["name"] for rule in alerts} == ALERTS
    with_data = [rule["query"] for rule in rules if rule["type"] == "recording"]
    with_data += [rule["name"] for rule in rules if rule["type"] == "recording"]
    for alert in alerts:
        compared = COMPARISON_WITH_LITERAL.sub("", alert["query"])
        assert compared != alert["query"], f"{alert['name']}: no `OP threshold` in its condition"
        with_data.append(compared)
    return with_data, [rule["query"] for rule in alerts]


def has_finite_sample(samples: list[dict]) -> bool:
    """At least one sample whose value is a number (a histogram_quantile over no new
    observations gives NaN: that is no data for the panel)."""
    return any(math.isfinite(float(sample["value"][1])) for sample in samples)


async def test_every_dashboard_and_rule_expression_returns_data(prometheus, client, terminal):
    up = f'up{{job="{JOB}"}} == 1'
    await poll(lambda: prometheus.query(up), SCRAPED_TIMEOUT_S, "the authorizer scraped", prometheus)

    async with terminal(terminal_id(7, 1)) as equipment_shop:  # partner 7: EQUIPMENT
        # Two rounds, each seen by a scrape: a counter's first sample is no increase, and the
        # histograms' rates need observations between two scrapes.
        for round_number in (1, 2):
            answered = round_number * await send_traffic(client, equipment_shop)
            seen = f'sum(hdfpay_authorizations_total{{job="{JOB}"}}) >= {answered}'
            await poll(lambda: prometheus.query(seen), SCRAPED_TIMEOUT_S,
                       f"traffic round {round_number} scraped", prometheus)

    with_data, alert_conditions = await rule_expressions(prometheus)
    for condition in alert_conditions:  # no error; empty while nothing is wrong
        await prometheus.query(condition)
    for expression in with_data + dashboard_expressions():
        async def returns_data(expression=expression) -> bool:
            """The expression, evaluated now, has at least one numeric sample."""
            return has_finite_sample(await prometheus.query(expression))
        await poll(returns_data, EXPRESSIONS_TIMEOUT_S, f"data for {expression!r}", prometheus)

    # Every recorded series has data by now, so the rule group has run: each rule is healthy.
    groups = (await prometheus.api("rules"))["groups"]
    unhealthy = {rule["name"]: (rule["health"], rule.get("lastError"))
                 for group in groups for rule in group["rules"] if rule["health"] != "ok"}
    assert unhealthy == {}
