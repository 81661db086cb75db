"""End to end through the controller, without vLLM: `llmserve up -f <yaml>` (a subprocess, as a user runs it)
with one predictive service at minReplicas 0. The first `POST /v2/models/iris/infer` through the gateway wakes
the service, the controller starts a runtime replica, and the held request is answered; gRPC works through the
gateway's --grpc-port too. Ctrl-C stops everything, replica included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from llmserve.protocol.v2_grpc import open_inference_grpc_pb2 as pb
from llmserve.workers.processes import free_port, group_members
from tests.conftest import REPO
from tests.support import v2_models
from tests.support.v2_models import TrainedModel

SERVICE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: iris
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 1
    model:
      modelFormat: {{name: sklearn}}
      storageUri: file://{model_dir}
"""
ROW = [6.2, 3.4, 5.4, 2.3]


@dataclass
class Up:
    url: str
    grpc_target: str
    process: subprocess.Popen[bytes]
    log: Path
    control_url: str = ""
    state_dir: Path | None = None

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def replicas(self) -> list[dict[str, Any]]:
        assert self.state_dir is not None
        token = (self.state_dir / "control-token").read_text().strip()
        services = httpx.get(
            f"{self.control_url}/control/v1/services", headers={"authorization": f"Bearer {token}"}, timeout=10
        ).json()["services"]
        return [r for s in services for r in s["replicas"]]


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    return v2_models.sklearn_iris(tmp_path_factory.mktemp("up") / "models" / "iris")


@pytest.fixture(scope="module")
def up(iris: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    work = tmp_path_factory.mktemp("llmserve-up")
    config = work / "iris.yaml"
    config.write_text(SERVICE.format(model_dir=iris.path))
    port, grpc_port, control_port = free_port(), free_port(), free_port()
    log = work / "llmserve.log"
    cmd = [
        sys.executable, "-m", "llmserve", "up", "-f", str(config),
        "--port", str(port), "--grpc-port", str(grpc_port), "--log-dir", str(work / "logs"),
        "--control-port", str(control_port), "--state-dir", str(work / "state"),
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ))
    running = Up(f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", process, log,
                 f"http://127.0.0.1:{control_port}", work / "state")  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # minReplicas 0: ready at once, with no replica
            if process.poll() is not None:
                pytest.fail(f"llmserve up exited with {process.returncode}:\n{running.tail()}")
            try:
                if httpx.get(f"{running.url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llmserve up did not answer within 60 s:\n{running.tail()}")
            time.sleep(0.2)
        yield running
    finally:
        pids = [r["pid"] for r in running.replicas() if r["pid"]] if process.poll() is None else []
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("llmserve up did not stop within 60 s of Ctrl-C")
        leftovers = {pid: group_members(pid) for pid in pids if group_members(pid)}
        assert not leftovers, f"replica processes still alive after Ctrl-C: {leftovers}"


def test_first_request_cold_starts_the_runtime(up: Up, iris: TrainedModel) -> None:
    assert up.replicas() == []  # scaled to zero
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
    answer = httpx.post(f"{up.url}/v2/models/iris/infer", json=body, timeout=120)  # held until a runtime is up
    assert answer.status_code == 200, f"{answer.text}\n{up.tail()}"
    assert answer.json()["outputs"][0]["data"] == iris.model.predict([ROW]).tolist()
    replicas = up.replicas()
    assert [r["state"] for r in replicas] == ["ready"]
    metrics = httpx.get(f"{up.url}/metrics").text
    assert (
        'llmserve_requests_total{model="iris",revision="iris-00001",route="v2_infer",service="iris",status="200"} 1.0'
    ) in metrics
    assert 'llmserve_activator_held_seconds_count{service="iris"} 1.0' in metrics


def test_grpc_through_the_gateway_port(up: Up, iris: TrainedModel) -> None:
    request = pb.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend(ROW)
    with grpc.insecure_channel(up.grpc_target) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        reply: pb.ModelInferResponse = infer(request, timeout=120)
    assert list(reply.outputs[0].contents.int64_contents) == iris.model.predict([ROW]).tolist()
