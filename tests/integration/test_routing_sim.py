"""Token-aware routing over two simulated workers through `llmserve up`: the same prefix goes to the same
worker, and the load cap overrides that affinity once one worker carries too much."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from llmserve.protocol.vllm_metrics import parse_vllm_metrics
from tests.support.up import Up, llmserve_up, sim_service

SERVICE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: sim
spec:
  predictor:
    minReplicas: 2
    maxReplicas: 2
    routing: {{profile: token-aware-capped}}
    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--profile", "cpu-smollm2", "--num-blocks", "2000"]
"""
CAPPED_PROFILE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: RoutingProfile
metadata: {name: token-aware-capped}
spec:
  filters:
    - {type: fresh-signals}
    - {type: load-cap, maxExcessRequests: 8}
  scorers:
    - {type: prefix-cache, weight: 1}
    - {type: prefill-wait, weight: 3}
    - {type: queue-depth, weight: 1}
  picker: {type: max-score}
"""
DOCUMENT = "The shared document explains how the cache keeps prefixes warm. " * 80  # ~1300 tokens


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": DOCUMENT}, {"role": "user", "content": question}]


def ask(up: Up, question: str) -> httpx.Response:
    body = {"model": "sim", "messages": messages(question), "max_tokens": 2}
    return httpx.post(f"{up.url}/v1/chat/completions", json=body, timeout=60)


def worker_loads(up: Up) -> dict[str, tuple[float, float]]:
    """Per replica: (prefix-cache queries, running + waiting requests), from the workers' own /metrics."""
    out = {}
    for replica in up.service("sim")["replicas"]:
        scraped = parse_vllm_metrics(httpx.get(f"{replica['url']}/metrics", timeout=5).text)
        out[replica["id"]] = (scraped.prefix_queries, scraped.running + scraped.waiting)
    return out


def test_affinity_then_the_load_cap(tmp_path: Path) -> None:
    """Prefix affinity, bounded by the load-cap filter (token-aware as it shipped with that filter: the default
    profile dropped it, see benchmarks/results/routing_virtual.md; the filter itself is what is tested here)."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "capped.yaml").write_text(CAPPED_PROFILE)
    with llmserve_up(sim_service(tmp_path, SERVICE), tmp_path, "--routing-profiles", str(profiles)) as up:
        up.wait(lambda: up.service("sim")["ready_replicas"] == 2, 30, "two replicas")
        up.wait(lambda: all(q == 0 for q, _ in worker_loads(up).values()), 5, "idle workers")
        for i in range(6):  # one at a time: nothing but the prefix distinguishes the workers
            assert ask(up, f"Question {i}?").status_code == 200
        queried = sorted(q for q, _ in worker_loads(up).values())
        assert queried[0] == 0  # every request with this document went to one worker...
        assert queried[1] > 0
        hot = max(worker_loads(up), key=lambda r: worker_loads(up)[r][0])

        # Now many long requests with the same document at once: affinity would pile them all on `hot`;
        # the load cap (at most 8 more requests than the least-loaded worker) sends the rest to the other.
        stop = threading.Event()

        def long_stream(i: int) -> None:
            body = {
                "model": "sim",
                "stream": True,
                "max_tokens": 500,
                "ignore_eos": True,
                "messages": messages(f"L{i}"),
            }
            with httpx.stream("POST", f"{up.url}/v1/chat/completions", json=body, timeout=60) as response:
                for _ in response.iter_lines():
                    if stop.is_set():
                        return

        threads = [threading.Thread(target=long_stream, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        try:
            up.wait(lambda: sum(r for _, r in worker_loads(up).values()) == 20, 30, "20 requests in the workers")
            loads = {replica: busy for replica, (_, busy) in worker_loads(up).items()}
            cold = next(r for r in loads if r != hot)
            assert loads[cold] > 0  # some of the document's requests went to the worker without it
            assert loads[hot] - loads[cold] <= 8 + 2  # maxExcessRequests 8 (+ requests counted between scrapes)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
