"""A real Prometheus (Debian's `prometheus` package) on loopback for tests, and the queries our configs use.

`prometheus_on_loopback` runs it in a temp dir on a free port with the shipped configs/observability files,
retargeted at the llmserve under test (`scrape_config`). The queries come out of the shipped dashboard JSON and
alert rules (`dashboard_queries`, `alert_signals`), never copied into a test.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from llmserve.workers.processes import free_port
from tests.conftest import REPO

OBSERVABILITY = REPO / "configs" / "observability"
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$__range": "10m", "$model": ".*", "$service": ".*"}
"""What Grafana would put in place of its variables: windows long enough for a short test to fill them."""


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(
            f"'{name}' is not installed: scripts/setup.sh installs Debian's prometheus package when run as root "
            "(otherwise: sudo apt-get install prometheus)"
        )
    return path


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        return list(body["data"]["result"])

    def has_data(self, expr: str) -> bool:
        """At least one series with a number (not NaN: a quantile over no observations)."""
        return any(not math.isnan(float(series["value"][1])) for series in self.query(expr))

    def targets(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=10)
        return list(response.json()["data"]["activeTargets"])

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def scrape_config(work: Path, gateway: str, controller: str, token: str, *, interval: str = "1s") -> Path:
    """configs/observability/prometheus.yml (and its rule files) in `work`, changed only where a test must:
    the gateway's and the controller's addresses; one-second scrapes, rule evaluations and discovery refreshes; the
    controller's token in the file the discovery's `authorization` names; no separate controller job (in
    `llmserve up` its series are on the gateway's /metrics)."""
    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=interval, evaluation_interval=interval, scrape_timeout=interval)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["llmserve-gateway"]["static_configs"] = [{"targets": [gateway.removeprefix("http://")]}]
    del jobs["llmserve-controller"]
    (work / "controller-token").write_text(token + "\n")
    for discovery in jobs["llmserve-workers"]["http_sd_configs"]:
        discovery["url"] = f"{controller}/control/v1/prometheus/targets"
        discovery["refresh_interval"] = interval
        discovery["authorization"] = {"type": "Bearer", "credentials_file": str(work / "controller-token")}
    config["scrape_configs"] = list(jobs.values())
    for rules in config["rule_files"]:
        shutil.copy(OBSERVABILITY / rules, work / rules)
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextmanager
def prometheus_on_loopback(config: Path, work: Path) -> Iterator[Prometheus]:
    port = free_port()
    log = work / "prometheus.log"
    cmd = [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
           f"--web.listen-address=127.0.0.1:{port}", "--log.level=info"]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=work)
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 30
        while not _ready(prometheus):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prometheus did not become ready:\n{prometheus.tail()}")
            time.sleep(0.1)
        yield prometheus
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _ready(prometheus: Prometheus) -> bool:
    try:
        return httpx.get(f"{prometheus.url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *map(str, args)], capture_output=True, text=True, timeout=60)


# -- the queries of the shipped configs ---------------------------------------------------------------------------
def dashboard_queries(path: Path = OBSERVABILITY / "grafana-dashboard.json") -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable of the Grafana dashboard, Grafana's variables
    replaced as Grafana would (`GRAFANA_VARIABLES`); `label_values(m, l)` becomes `count by (l) (m)`."""
    dashboard = json.loads(path.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            out.append((f"panel '{panel['title']}' {target['refId']}", grafana_to_promql(target["expr"])))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
            assert found, f"variable {variable['name']}: not a label_values() query"
            out.append((f"variable ${variable['name']}", f"count by ({found[2]}) ({found[1]})"))
    return out


def grafana_to_promql(expr: str) -> str:
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable the tests do not know: {expr}"
    return expr


_THRESHOLD = re.compile(r"(==|!=|>=|<=|>|<)\s*(-?[0-9.]+)\s*$")


def alert_signals(path: Path = OBSERVABILITY / "alerts.yml") -> list[tuple[str, str]]:
    """(alert, expression) for every rule, each written "signal OP number", as "signal OP bool number": a 0/1
    for every series of the signal, so the query has data whenever the signal does, firing or not."""
    out = []
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            expr = " ".join(str(rule["expr"]).split())
            assert _THRESHOLD.search(expr), f"{rule['alert']}: not 'signal OP number': {expr}"
            out.append((f"alert {rule['alert']}", _THRESHOLD.sub(r"\1 bool \2", expr)))
    return out
