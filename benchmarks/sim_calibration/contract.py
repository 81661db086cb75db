"""Compare the simulator's HTTP answers with real vLLM's, request by request (status, content type, JSON shape).

    CON=benchmarks/sim_calibration/contract.py; DATA=benchmarks/sim_calibration/data
    .venv/bin/python $CON capture http://127.0.0.1:9300 $DATA/contract-vllm.json   # a running vLLM (see NOTES.md)
    .venv/bin/python $CON capture http://127.0.0.1:9311 $DATA/contract-sim.json    # a running simulator
    .venv/bin/python $CON compare $DATA/contract-vllm.json $DATA/contract-sim.json

The same ~35 requests go to both: health, models, tokenize/detokenize, chat and completions streamed and not (n, usage
options, ignore_eos, token-id and list prompts) and the usual mistakes (unknown model, bad JSON, wrong types,
out-of-range values, prompts over max_model_len). `compare` prints, per request, where the two differ: status,
content type, the shape of the JSON (keys and value types, recursively; for streams, chunk by chunk), and for
errors the envelope's type/param/code and message.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx

MESSAGES = [{"role": "user", "content": "Say hi"}]


def requests(model: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    chat, comp = "/v1/chat/completions", "/v1/completions"
    m = {"model": model}
    return [
        ("health", "GET", "/health", {}),
        ("models", "GET", "/v1/models", {}),
        ("version", "GET", "/version", {}),
        ("tokenize_prompt", "POST", "/tokenize", {"json": {**m, "prompt": "Hello world, how are you?"}}),
        ("tokenize_messages", "POST", "/tokenize", {"json": {**m, "messages": MESSAGES}}),
        ("tokenize_no_model", "POST", "/tokenize", {"json": {"prompt": "Hello"}}),
        ("tokenize_strs", "POST", "/tokenize", {"json": {"prompt": "Hello", "return_token_strs": True}}),
        ("detokenize", "POST", "/detokenize", {"json": {**m, "tokens": [19556, 905]}}),
        ("chat", "POST", chat, {"json": {**m, "messages": MESSAGES, "max_tokens": 5}}),
        ("chat_n2", "POST", chat, {"json": {**m, "messages": MESSAGES, "max_tokens": 3, "n": 2}}),
        ("chat_stream", "POST", chat, {"json": {**m, "messages": MESSAGES, "max_tokens": 4, "stream": True}}),
        ("chat_stream_usage", "POST", chat, {"json": {**m, "messages": MESSAGES, "max_tokens": 4, "stream": True,
                                                      "stream_options": {"include_usage": True}}}),
        ("chat_stream_continuous_usage", "POST", chat, {"json": {**m, "messages": MESSAGES, "max_tokens": 3,
         "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}}),
        ("chat_ignore_eos", "POST", chat, {"json": {**m, "messages": MESSAGES, "max_tokens": 40, "ignore_eos": True}}),
        ("chat_max_completion_tokens", "POST", chat, {"json": {**m, "messages": MESSAGES, "max_completion_tokens": 2}}),
        ("chat_content_parts", "POST", chat, {"json": {**m, "max_tokens": 2, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Say hi"}]}]}}),
        ("chat_no_model", "POST", chat, {"json": {"messages": MESSAGES, "max_tokens": 2}}),
        ("completion", "POST", comp, {"json": {**m, "prompt": "Once upon a time", "max_tokens": 5}}),
        ("completion_list", "POST", comp, {"json": {**m, "prompt": ["A", "B"], "max_tokens": 2}}),
        ("completion_ids", "POST", comp, {"json": {**m, "prompt": [1, 2, 3], "max_tokens": 2}}),
        ("completion_stream", "POST", comp, {"json": {**m, "prompt": "Once upon a time", "max_tokens": 3,
                                                      "stream": True, "stream_options": {"include_usage": True}}}),
        ("err_unknown_model", "POST", chat, {"json": {"model": "nope", "messages": MESSAGES}}),
        ("err_no_messages", "POST", chat, {"json": m}),
        ("err_empty_messages", "POST", chat, {"json": {**m, "messages": [], "max_tokens": 2}}),
        ("err_bad_json", "POST", chat, {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        ("err_max_tokens_str", "POST", chat, {"json": {**m, "messages": MESSAGES, "max_tokens": "x"}}),
        ("err_max_tokens_0", "POST", chat, {"json": {**m, "messages": MESSAGES, "max_tokens": 0}}),
        ("err_n0", "POST", chat, {"json": {**m, "messages": MESSAGES, "n": 0}}),
        ("err_stream_options", "POST", chat, {"json": {**m, "messages": MESSAGES, "max_tokens": 2,
                                                       "stream_options": {"include_usage": True}}}),
        ("err_min_tokens", "POST", chat, {"json": {**m, "messages": MESSAGES, "min_tokens": 10, "max_tokens": 5}}),
        ("err_prompt_too_long", "POST", comp, {"json": {**m, "prompt": "hello " * 3000, "max_tokens": 5}}),
        ("err_prompt_too_long_streamed", "POST", comp, {"json": {**m, "prompt": "hello " * 3000, "max_tokens": 5,
                                                                  "stream": True}}),
        ("err_max_tokens_over_len", "POST", comp, {"json": {**m, "prompt": "hello", "max_tokens": 5000}}),
        ("err_completion_no_prompt", "POST", comp, {"json": m}),
        ("err_tokenize_unknown_model", "POST", "/tokenize", {"json": {"model": "x", "prompt": "hi"}}),
        ("err_route", "GET", "/v1/nothing", {}),
        ("err_method", "GET", chat, {}),
        ("metrics", "GET", "/metrics", {}),
    ]  # fmt: skip


def capture(url: str, out: Path) -> None:
    models = httpx.get(f"{url}/v1/models", timeout=30).json()
    model = models["data"][0]["id"]
    results: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, method, path, kwargs in requests(model):
            response = client.request(method, path, **kwargs)
            results[name] = {"status": response.status_code, "headers": dict(response.headers), "body": response.text}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"captured {len(results)} answers from {url} ({model})")


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def parse(body: str, content_type: str | None) -> Any:
    if content_type and "event-stream" in content_type:
        frames = [line[6:] for line in body.split("\n") if line.startswith("data: ")]
        return [frame if frame == "[DONE]" else json.loads(frame) for frame in frames]
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return body


def differences(real: dict[str, Any], sim: dict[str, Any]) -> list[str]:
    out = []
    if real["status"] != sim["status"]:
        out.append(f"status {real['status']} vs {sim['status']}")
    ctype_r, ctype_s = real["headers"].get("content-type"), sim["headers"].get("content-type")
    if ctype_r != ctype_s:
        out.append(f"content-type {ctype_r} vs {ctype_s}")
    a, b = parse(real["body"], ctype_r), parse(sim["body"], ctype_s)
    if isinstance(a, list) and isinstance(b, list) and "event-stream" in (ctype_r or ""):
        if len(a) != len(b):
            out.append(f"{len(a)} vs {len(b)} stream frames")
        out += [
            f"frame {i}: {shape(x)} vs {shape(y)}"
            for i, (x, y) in enumerate(zip(a, b, strict=False))
            if shape(x) != shape(y)
        ]
    elif shape(a) != shape(b):
        out.append(f"shape {json.dumps(shape(a))[:300]} vs {json.dumps(shape(b))[:300]}")
    if isinstance(a, dict) and isinstance(b, dict) and isinstance(a.get("error"), dict):
        ea, eb = a["error"], b.get("error") or {}
        out += [f"{f}: {ea.get(f)!r} vs {eb.get(f)!r}" for f in ("type", "param", "code") if ea.get(f) != eb.get(f)]
        if ea.get("message") != eb.get("message"):
            out.append(f"message: {ea.get('message')!r} vs {eb.get('message')!r}")
    return out


def compare(real_path: Path, sim_path: Path) -> None:
    real, sim = json.loads(real_path.read_text()), json.loads(sim_path.read_text())
    same = 0
    for name, answer in real.items():
        if name == "metrics":
            continue
        found = differences(answer, sim[name]) if name in sim else ["missing"]
        same += not found
        print(("same  " if not found else "DIFF  ") + name + "".join(f"\n        {d}" for d in found))
    families: dict[Path, set[str]] = {sim_path: set(), real_path: set()}
    for path, data in ((real_path, real), (sim_path, sim)):
        for line in data["metrics"]["body"].splitlines():
            if line.startswith("# TYPE vllm:") and not line.split()[2].endswith("_created"):
                families[path].add(line.split()[2])
    print(f"\n{same} of {len(real) - 1} answers have the same status, content type and shape")
    print("vllm:* metric families only vLLM exports:", ", ".join(sorted(families[real_path] - families[sim_path])))
    print(
        "vllm:* metric families only the simulator exports:",
        ", ".join(sorted(families[sim_path] - families[real_path])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("capture")
    c.add_argument("url")
    c.add_argument("out", type=Path)
    d = sub.add_parser("compare")
    d.add_argument("real", type=Path)
    d.add_argument("sim", type=Path)
    args = parser.parse_args()
    if args.command == "capture":
        capture(args.url, args.out)
    else:
        compare(args.real, args.sim)


if __name__ == "__main__":
    main()
