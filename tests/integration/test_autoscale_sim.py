"""Autoscaling under load, end to end with fast-starting workers: `llmserve up` with a vllm-sim service
(the vLLM-contract simulator) scales from 1 to 3+ replicas under concurrent streams and back to 1 when idle."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from tests.support.up import llmserve_up, sim_service

SERVICE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: sim
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 4
    scaleTarget: 2
    autoscaling:
      stableWindowSeconds: 6
      panicWindowSeconds: 2
      scaleToZeroGracePeriodSeconds: 2
      maxScaleDownRate: 4
    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--profile", "cpu-smollm2"]
"""


def test_scale_up_under_load_and_back_down(tmp_path: Path) -> None:
    with llmserve_up(sim_service(tmp_path, SERVICE), tmp_path) as up:
        up.wait(lambda: up.service("sim")["ready_replicas"] == 1, 30, "first replica")
        stop = threading.Event()
        started = threading.Semaphore(0)

        def stream() -> None:
            body = {"model": "sim", "messages": [{"role": "user", "content": "tell me a long story"}],
                    "max_tokens": 2000, "ignore_eos": True, "stream": True}  # fmt: skip
            with httpx.stream("POST", f"{up.url}/v1/chat/completions", json=body, timeout=120) as response:
                assert response.status_code == 200
                started.release()
                for _ in response.iter_lines():
                    if stop.is_set():
                        return

        clients = [threading.Thread(target=stream) for _ in range(10)]
        for client in clients:
            client.start()
        for _ in clients:
            assert started.acquire(timeout=30)
        # 10 streams in flight for a target of 2 per replica: the autoscaler asks for more (up to 4).
        up.wait(lambda: up.service("sim")["ready_replicas"] >= 3, 30, "scale-up to 3+ replicas")
        assert up.service("sim")["desired_replicas"] <= 4
        stop.set()  # the clients hang up; the streams are aborted in the workers
        for client in clients:
            client.join(30)
        up.wait(lambda: up.service("sim")["desired_replicas"] == 1, 40, "scale-down decision")
        up.wait(lambda: len(up.service("sim")["replicas"]) == 1, 40, "replicas stopped")
        metrics = httpx.get(f"{up.url}/metrics", timeout=10).text
        assert 'llmserve_replicas_ready{service="sim"} 1.0' in metrics
