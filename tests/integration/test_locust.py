"""benchmarks/locustfile.py against `llmserve up` with a simulated vLLM service: a 10 s headless run (the way
`make load` runs it, with two tenant keys and every traffic mix) exits 0 and its CSV has TTFT, ITL and E2E rows
with requests counted."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.support.up import llmserve_up, sim_service

SERVICE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: sim
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 1
    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--profile", "cpu-smollm2", "--speed", "20"]
"""


def test_a_10_s_headless_run_exits_0_with_ttft_itl_and_e2e_in_its_csv(tmp_path: Path) -> None:
    with llmserve_up(sim_service(tmp_path, SERVICE), tmp_path, "--api-key", "tenant-b", api_key="tenant-a") as up:
        up.wait(lambda: up.service("sim")["ready_replicas"] == 1, 30, "replica ready")
        prefix = tmp_path / "load" / "run"
        prefix.parent.mkdir()
        run = subprocess.run(
            [sys.executable, "-m", "locust", "-f", "benchmarks/locustfile.py", "--headless", "--host", up.url,
             "--users", "4", "--spawn-rate", "4", "--run-time", "10s", "--stop-timeout", "20",
             "--csv", str(prefix), "--only-summary", "--api-keys", "tenant-a,tenant-b",
             "--stream-ratio", "0.7", "--shared-prefix-ratio", "0.5", "--session-ratio", "0.5",
             "--prompt-words", "40", "--max-tokens", "16", "--ignore-eos", "--seed", "7"],
            cwd=REPO, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with open(f"{prefix}_stats.csv") as f:
        rows = list(csv.DictReader(f))
    counts: dict[str, int] = {}
    for row in rows:
        if row["Name"] != "Aggregated":
            counts[row["Type"]] = counts.get(row["Type"], 0) + int(row["Request Count"])
            assert row["Failure Count"] == "0", row
    assert counts.get("TTFT", 0) > 0, rows
    assert counts.get("ITL", 0) > 0, rows
    assert counts["E2E"] == counts["POST"]  # every chat request, streamed or not, has its end-to-end time
    streamed = [r for r in rows if r["Type"] == "E2E" and "stream" in r["Name"]]
    assert all(float(r["Average Content Size"]) == 16.0 for r in streamed)  # completion tokens, ignore_eos
    tenants = {r["Name"].rsplit(" ", 1)[-1] for r in rows if r["Type"] == "TTFT"}
    assert tenants == {"[t1]", "[t2]"}  # users took both keys, and both were accepted
