"""configs/observability/grafana-dashboard.json: what scripts/grafana_dashboard.py writes, well-formed for Grafana."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

DASHBOARD = REPO / "configs" / "observability" / "grafana-dashboard.json"


def test_the_json_is_what_the_script_writes() -> None:
    result = subprocess.run([sys.executable, "scripts/grafana_dashboard.py", "--check"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_panels_have_unique_ids_a_grid_place_and_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "model", "service"}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    places = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels]
    assert len(places) == len(set(places)), "two panels at the same place"
