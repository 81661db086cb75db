"""Revisions and canary rollout end to end: `llmserve up` with simulated vLLM workers, changes through
`llmserve apply`, requests over real HTTP under steady traffic (no request may fail during any transition).

The two revisions answer with different lengths (the simulator ends a sequence after `--output-tokens`), so
each answer tells which revision produced it."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.up import Up, llmserve_up

SERVICE = """\
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata:
  name: chat
spec:
  predictor:
    minReplicas: 1
{canary}    model:
      modelFormat: {{name: huggingface}}
      runtime: vllm-sim
      storageUri: file://{model_dir}
      args: ["--speed", "50", {args}]
"""
V1, V2 = "chat-00001", "chat-00002"
TOKENS = {2: V1, 3: V2}  # completion tokens -> the revision that answered
RETIRE = ("--revision-retire-after", "1")


def spec(work: Path, name: str, args: str, percent: int | None = None) -> Path:
    model_dir = work / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    canary = f"    canaryTrafficPercent: {percent}\n" if percent is not None else ""
    path = work / f"{name}.yaml"
    path.write_text(SERVICE.format(model_dir=model_dir, canary=canary, args=args))
    return path


def v1(work: Path) -> Path:
    return spec(work, "v1", '"--output-tokens", "2"')


def v2(work: Path, percent: int | None) -> Path:
    return spec(work, f"v2-{percent}", '"--output-tokens", "3"', percent)


def ask(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    return client.post(f"{url}/v1/chat/completions", json=body, headers=headers or {}, timeout=60)


def revision_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return TOKENS[response.json()["usage"]["completion_tokens"]]


def split(up: Up) -> list[tuple[str, int, str | None]]:
    traffic = up.service("chat")["components"]["predictor"]["traffic"]
    return [(t["revisionName"], t["percent"], t["tag"]) for t in traffic]


def many(up: Up, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    with httpx.Client() as client, ThreadPoolExecutor(8) as pool:
        return Counter(pool.map(lambda _: revision_of(ask(client, up.url, headers)), range(n)))


class SteadyTraffic:
    """Requests one after another from a background thread until stopped; every answer is kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.revisions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                try:
                    response = ask(client, self.url)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.statuses[response.status_code] += 1
                if response.status_code == 200:
                    self.revisions[TOKENS[response.json()["usage"]["completion_tokens"]]] += 1
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:300]}")

    @contextmanager
    def running(self) -> Iterator[SteadyTraffic]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(60)


def until_gateway(up: Up, condition: Any, what: str) -> None:
    """Until the gateway (not just the controller) routes by the new split."""
    with httpx.Client() as client:
        up.wait(lambda: condition(client), 30, what)


def test_canary_split_tags_sessions_rollback_and_promotion(tmp_path: Path) -> None:
    with llmserve_up(v1(tmp_path), tmp_path, *RETIRE) as up:
        up.wait(lambda: up.service("chat")["ready_replicas"] == 1, 30, "v1 ready")
        with SteadyTraffic(up.url).running() as steady:
            # v2 with a 20 % canary: v1 serves everything until v2 is ready, then 20 / 80.
            assert "new revision chat-00002" in up.apply(v2(tmp_path, 20))
            up.wait(lambda: split(up) == [(V2, 20, "latest"), (V1, 80, "prev")], 30, "the canary split")
            until_gateway(up, lambda c: ask(c, up.url, {"x-llmserve-revision": "prev"}).status_code == 200, "split")
            counts = many(up, 2000)
            assert abs(counts[V2] / 2000 - 0.20) <= 0.03, counts

            # Tags pin every request; an unknown revision is a 404 in OpenAI's envelope naming what exists.
            assert many(up, 40, {"x-llmserve-revision": "latest"}) == Counter({V2: 40})
            assert many(up, 40, {"x-llmserve-revision": "prev"}) == Counter({V1: 40})
            assert many(up, 40, {"x-llmserve-revision": V1}) == Counter({V1: 40})
            with httpx.Client() as client:
                unknown = ask(client, up.url, {"x-llmserve-revision": "chat-00009"})
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "revision_not_found"
            assert V1 in unknown.json()["error"]["message"]

            # A session stays on one revision; sessions land on both.
            with httpx.Client() as client:
                placed = {
                    session: {revision_of(ask(client, up.url, {"x-session-id": session})) for _ in range(8)}
                    for session in (f"session-{i}" for i in range(40))
                }
            assert all(len(revisions) == 1 for revisions in placed.values()), placed
            assert {r for revisions in placed.values() for r in revisions} == {V1, V2}

            # Roll back: canaryTrafficPercent 0 sends everything to the rolled-out revision; the canary stays
            # reachable by its tag.
            up.apply(v2(tmp_path, 0))
            up.wait(lambda: split(up) == [(V2, 0, "latest"), (V1, 100, "prev")], 30, "rolled back")
            until_gateway(up, lambda c: all(revision_of(ask(c, up.url)) == V1 for _ in range(20)), "rollback")
            assert many(up, 300) == Counter({V1: 300})
            assert many(up, 10, {"x-llmserve-revision": "latest"}) == Counter({V2: 10})

            # Promote: 100 % to v2; v1 loses its traffic, and its replicas are drained and stopped.
            up.apply(v2(tmp_path, 100))
            up.wait(lambda: split(up) == [(V2, 100, "latest")], 30, "promoted")
            until_gateway(up, lambda c: ask(c, up.url, {"x-llmserve-revision": "prev"}).status_code == 404, "promo")
            assert many(up, 300) == Counter({V2: 300})
            up.wait(lambda: [r["revision"] for r in up.replicas("chat")] == [V2], 60, "v1's replicas stopped")
            status = up.service("chat")
            states = {r["name"]: (r["state"], r["traffic_percent"]) for r in status["revisions"]}
            assert states == {V1: ("retired", 0), V2: ("ready", 100)}
            predictor = status["components"]["predictor"]
            assert (predictor["latestRolledoutRevision"], predictor["previousRolledoutRevision"]) == (V2, V1)
        assert steady.failures == [], steady.failures[:5]
        assert set(steady.revisions) == {V1, V2}  # the steady stream really went through the transitions
        get = up.cli("get", "chat")
        assert get.returncode == 0, get.stderr
        assert "traffic: chat-00002 100% (latest)" in get.stdout
        metrics = httpx.get(f"{up.url}/metrics", timeout=10).text
        assert 'llmserve_revision_traffic_percent{revision="chat-00002",service="chat"} 100.0' in metrics
        assert 'llmserve_revision_requests_routed_total{model="chat",revision="chat-00001"}' in metrics


def test_a_revision_that_never_becomes_ready_gets_no_traffic_and_status_says_why(tmp_path: Path) -> None:
    with llmserve_up(v1(tmp_path), tmp_path, *RETIRE) as up:
        up.wait(lambda: up.service("chat")["ready_replicas"] == 1, 30, "v1 ready")
        broken = spec(tmp_path, "broken", '"--profile", "no-such-profile"', 20)  # the simulator refuses to start
        with SteadyTraffic(up.url).running() as steady:
            up.apply(broken)
            up.wait(
                lambda: {r["name"]: r["state"] for r in up.service("chat")["revisions"]}.get(V2) == "failed",
                60,
                "v2 failed",
            )
            assert many(up, 200) == Counter({V1: 200})
        assert steady.failures == [], steady.failures[:5]
        assert set(steady.revisions) == {V1}
        status = up.service("chat")
        assert split(up) == [(V1, 20, "latest"), (V1, 80, "prev")]  # the canary's share stays with v1
        (failed,) = [r for r in status["revisions"] if r["name"] == V2]
        assert failed["traffic_percent"] == 0
        assert "exited with status 2 while starting" in failed["failure"]
        assert status["ready"] is False
        assert status["reason"].startswith(f"revision {V2} failed: ")
        up.wait(lambda: [r["revision"] for r in up.replicas("chat")] == [V1], 30, "v2's replicas stopped")
        get = up.cli("get", "chat")
        assert f"not ready: revision {V2} failed" in get.stdout
