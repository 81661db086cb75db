"""InferenceGraphs through the control plane, in the split topology (`llmserve controller` + `llmserve gateway`
processes, simulated workers): `llmserve validate` / `apply -f` of a file mixing a service and a graph, the graph
served by the gateway as soon as the watch carries it, `llmserve get`, the refusals (a graph over a service that
does not run here, deleting a service a graph calls), a controller killed and restarted from its state dir with
the graph intact, then `llmserve delete graph/NAME`."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import REPO
from tests.support.topology import topology, wait_for
from tests.support.up import sim_service

SERVICE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: sim
spec:
  predictor:
    model:
      modelFormat:
        name: huggingface
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--speed", "20"]
"""
GRAPH = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: twice}
spec:
  exposeAs: {model: twice}
  nodes:
    root:
      routerType: Sequence
      steps:
        - {name: draft, serviceName: SERVICE}
        - {name: answer, serviceName: SERVICE, stream: true}
"""
CHAT = {"model": "twice", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmserve", *args], capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )


def test_graphs_applied_listed_refused_restored_and_deleted(tmp_path: Path) -> None:
    config = sim_service(tmp_path, SERVICE)
    with topology(config, tmp_path) as (controller, (gateway,)):
        graph_file = tmp_path / "graph.yaml"
        graph_file.write_text(config.read_text() + "---\n" + GRAPH.replace("SERVICE", "sim"))
        validated = run_cli("validate", str(graph_file))
        assert validated.returncode == 0, validated.stderr
        assert "1 InferenceService(s), 1 InferenceGraph(s)" in validated.stdout
        assert "twice: graph of 1 node(s) over sim, exposed as model 'twice'" in validated.stdout

        # A file with just the graph: its steps call a service that runs on the controller.
        only_graph = tmp_path / "only-graph.yaml"
        only_graph.write_text(GRAPH.replace("SERVICE", "sim"))
        applied = controller.cli("apply", "-f", str(only_graph))
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.splitlines() == ["graph/twice: created"]
        chat = f"{gateway.url}/v1/chat/completions"
        wait_for(lambda: httpx.post(chat, json=CHAT, timeout=30).status_code == 200, 20, "the graph is served")
        graph_answer = httpx.post(f"{gateway.url}/v1/graphs/twice", json={**CHAT, "model": "sim"}, timeout=30)
        assert graph_answer.json()["object"] == "chat.completion"
        listed = controller.cli("get")
        assert listed.returncode == 0, listed.stderr
        assert "graph/twice  ready  nodes: root: Sequence  services: sim (1 ready)" in listed.stdout
        one = controller.cli("get", "twice")  # no service of that name: the graph
        assert "exposed as model 'twice'" in one.stdout

        # Refused: a graph over a service that does not run here; deleting a service the graph calls.
        unknown = tmp_path / "unknown.yaml"
        unknown.write_text(GRAPH.replace("SERVICE", "nowhere").replace("twice", "lost"))
        refused = controller.cli("apply", "-f", str(unknown))
        assert refused.returncode == 1
        assert (
            "spec.nodes.root.steps.0.serviceName: no InferenceService named 'nowhere' in this file or on the "
            "controller (declared: sim)" in refused.stderr
        )
        in_use = controller.cli("delete", "sim")
        assert in_use.returncode == 1
        assert "The service 'sim' is called by InferenceGraph 'twice'" in in_use.stderr
        assert httpx.post(chat, json={**CHAT, "model": "sim"}, timeout=30).status_code == 200  # still there

        # A controller killed and restarted from its state dir: the graph is restored and served again.
        controller.kill(signal.SIGKILL)
        controller.start()
        assert [g["name"] for g in controller.status()["graphs"]] == ["twice"]
        wait_for(lambda: controller.status()["watchers"] == 1, 20, "the gateway's watch resumed", gateway.tail)
        wait_for(lambda: httpx.post(chat, json=CHAT, timeout=30).status_code == 200, 30, "served after restart")

        deleted = controller.cli("delete", "graph/twice")
        assert deleted.returncode == 0, deleted.stderr
        assert deleted.stdout.strip() == "graph/twice: deleted"
        wait_for(lambda: httpx.post(chat, json=CHAT, timeout=30).status_code == 404, 15, "the exposed model is gone")
        assert httpx.post(f"{gateway.url}/v1/graphs/twice", json=CHAT, timeout=30).status_code == 404
        missing = controller.cli("delete", "twice")
        assert missing.returncode == 1
        assert "No service named 'twice'. No InferenceGraph named 'twice'." in missing.stderr
        assert controller.cli("delete", "sim").returncode == 0  # nothing calls it now
