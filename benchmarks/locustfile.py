"""Load for an llmserve gateway's OpenAI API with locust: chat traffic, streamed and not, with time to first
token, inter-token latency and end-to-end time as locust metrics of their own.

    make load LOAD_URL=http://127.0.0.1:8080 LOAD_USERS=16 LOAD_TIME=2m LOAD_ARGS="--model smollm2"
    locust -f benchmarks/locustfile.py --headless -H http://127.0.0.1:8080 -u 16 -r 4 -t 2m --csv out/load \\
        --model smollm2 --stream-ratio 0.8 --prompt-words 300 --max-tokens 64 --shared-prefix-ratio 0.5

Rows of the CSV (`--csv PREFIX` writes PREFIX_stats.csv), by request type:
  POST      locust's own response time; for streams it ends at the response headers, so it says little
  TTFT      request sent -> first content token (streams), ms
  ITL       one stream's mean gap between tokens, (last token - first token) / (tokens - 1), ms (genai-perf's
            definition; tokens from the stream's usage chunk, else its content chunks)
  E2E       request sent -> last byte, streams and plain requests, ms; its "size" column is completion tokens
Each row is named after the traffic it measures (`chat stream`, `chat plain`, `session stream`, ...) and, with
several --api-keys, the tenant (`[t1]`), so per-tenant fairness shows in the same table.

Mixes (each user draws with a generator seeded from --seed and its own number, so a run is reproducible):
  --stream-ratio         share of requests that stream
  --shared-prefix-ratio  share of one-shot requests that start with one of --shared-prefixes long documents
                         (--shared-prefix-words each): the RAG / system-prompt pattern prefix routing exploits
  --session-ratio        share of users that hold multi-turn conversations (history resent each turn, an
                         `x-session-id` header) for --session-turns turns before starting a new one
The prompt of a request is --prompt-words words (about 1.3 tokens each), its output --max-tokens tokens
(exactly, with --ignore-eos: vLLM and the simulator honour it). A failed request is a locust failure, and
locust then exits 1.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from locust import HttpUser, events, task
from locust.env import Environment
from locust.exception import StopUser

WORDS = (
    "model", "serving", "token", "cache", "prefix", "replica", "gateway", "request", "stream", "latency", "batch",
    "kernel", "tensor", "layer", "weight", "router", "policy", "score", "queue", "prompt", "output", "decode",
    "prefill", "memory", "block", "engine", "worker", "cluster", "scale", "zero", "warm", "cold", "start",
    "metric", "trace", "span", "tenant", "limit", "budget", "fair", "share", "window", "panic", "stable", "target",
    "service", "revision",
)  # fmt: skip


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser  # locust's parser: its add_argument takes is_secret (argument groups do not)
    group.add_argument("--model", default="", help="served model name (default: the first of GET /v1/models)")
    group.add_argument("--prompt-words", type=int, default=64, help="words in a request's own prompt text")
    group.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each request")
    group.add_argument("--ignore-eos", action="store_true", help="send ignore_eos: outputs of exactly max_tokens")
    group.add_argument("--stream-ratio", type=float, default=0.8, help="share of streamed requests (0..1)")
    group.add_argument("--shared-prefix-ratio", type=float, default=0.0, help="share of one-shot requests "
                       "that start with a shared document (0..1)")  # fmt: skip
    group.add_argument("--shared-prefixes", type=int, default=4, help="how many shared documents")
    group.add_argument("--shared-prefix-words", type=int, default=400, help="words per shared document")
    group.add_argument("--session-ratio", type=float, default=0.0, help="share of users holding multi-turn "
                       "sessions (0..1)")  # fmt: skip
    group.add_argument("--session-turns", type=int, default=4, help="turns per session")
    group.add_argument("--api-keys", default="", is_secret=True, help="comma-separated tenant keys; users take "
                       "them in turn (default: no Authorization header)")  # fmt: skip
    group.add_argument("--think-time", type=float, default=0.0, help="seconds a user waits between requests")
    group.add_argument("--seed", type=int, default=0, help="seed of every random choice")


@dataclass
class Workload:
    """Everything a user needs from the command line, parsed once."""

    model: str
    prompt_words: int
    max_tokens: int
    ignore_eos: bool
    stream_ratio: float
    shared_prefix_ratio: float
    session_ratio: float
    session_turns: int
    think_time: float
    seed: int
    keys: list[str]
    documents: list[str] = field(default_factory=list)

    @classmethod
    def from_options(cls, options: Any) -> Workload:
        for name in ("stream_ratio", "shared_prefix_ratio", "session_ratio"):
            if not 0.0 <= getattr(options, name) <= 1.0:
                raise SystemExit(f"--{name.replace('_', '-')}: {getattr(options, name)} is not in 0..1")
        if min(options.prompt_words, options.max_tokens, options.session_turns, options.shared_prefixes) < 1:
            raise SystemExit("--prompt-words, --max-tokens, --session-turns and --shared-prefixes must be >= 1")
        rng = random.Random(options.seed)
        documents = [
            f"Document {i}: " + " ".join(rng.choices(WORDS, k=options.shared_prefix_words))
            for i in range(options.shared_prefixes)
        ]
        return cls(
            model=options.model,
            prompt_words=options.prompt_words,
            max_tokens=options.max_tokens,
            ignore_eos=options.ignore_eos,
            stream_ratio=options.stream_ratio,
            shared_prefix_ratio=options.shared_prefix_ratio,
            session_ratio=options.session_ratio,
            session_turns=options.session_turns,
            think_time=options.think_time,
            seed=options.seed,
            keys=[k.strip() for k in options.api_keys.split(",") if k.strip()],
            documents=documents,
        )


_workload: Workload | None = None
_user_numbers = itertools.count()


@events.init.add_listener
def _parse(environment: Environment, **_: Any) -> None:
    global _workload
    if environment.parsed_options is not None:
        _workload = Workload.from_options(environment.parsed_options)


class ChatUser(HttpUser):
    """One client: a one-shot requester, or (with --session-ratio) a multi-turn conversation."""

    def on_start(self) -> None:
        assert _workload is not None, "run through the locust command line"
        self.workload = _workload
        self.number = next(_user_numbers)
        self.rng = random.Random(self.workload.seed * 1_000_003 + self.number)
        self.headers = {"content-type": "application/json"}
        self.tenant = ""
        if self.workload.keys:
            key_index = self.number % len(self.workload.keys)
            self.headers["authorization"] = f"Bearer {self.workload.keys[key_index]}"
            self.tenant = f" [t{key_index + 1}]" if len(self.workload.keys) > 1 else ""
        self.in_session = self.rng.random() < self.workload.session_ratio
        self.history: list[dict[str, str]] = []
        self.session_id = ""
        self.model = self.workload.model or self._first_model()

    def _first_model(self) -> str:
        with self.client.get("/v1/models", headers=self.headers, name="GET /v1/models", catch_response=True) as r:
            models = r.json().get("data", []) if r.status_code == 200 else []
            if not models:
                r.failure(f"no --model given and GET /v1/models lists none: HTTP {r.status_code} {r.text[:200]}")
                raise StopUser()
            return str(models[0]["id"])

    def wait_time(self) -> float:
        return self.workload.think_time

    @task
    def chat(self) -> None:
        stream = self.rng.random() < self.workload.stream_ratio
        extra_headers: dict[str, str] = {}
        if self.in_session:
            kind = "session"
            if not self.history or len(self.history) >= 2 * self.workload.session_turns:
                self.history, self.session_id = [], f"s{self.number}-{self.rng.getrandbits(32):08x}"
            self.history.append({"role": "user", "content": self._words()})
            messages = list(self.history)
            extra_headers["x-session-id"] = self.session_id
        elif self.rng.random() < self.workload.shared_prefix_ratio:
            kind = "shared-prefix"
            document = self.rng.choice(self.workload.documents)
            messages = [{"role": "user", "content": f"{document}\n\nQuestion: {self._words()}"}]
        else:
            kind = "chat"
            messages = [{"role": "user", "content": self._words()}]
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.workload.max_tokens}
        if self.workload.ignore_eos:
            body["ignore_eos"] = True
        name = f"{kind} {'stream' if stream else 'plain'}{self.tenant}"
        headers = {**self.headers, **extra_headers}
        reply = self._stream(body, headers, name) if stream else self._plain(body, headers, name)
        if self.in_session:
            if reply is None:
                self.history = []  # a failed turn ends the session
            else:
                self.history.append({"role": "assistant", "content": reply})

    def _words(self) -> str:
        return " ".join(self.rng.choices(WORDS, k=self.workload.prompt_words))

    def _plain(self, body: dict[str, Any], headers: dict[str, str], name: str) -> str | None:
        started = time.perf_counter()
        with self.client.post("/v1/chat/completions", json=body, headers=headers, name=name, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:300]}")
                return None
            answer = r.json()
            ended = time.perf_counter()
            tokens = int((answer.get("usage") or {}).get("completion_tokens") or 0)
            self._record("E2E", name, ended - started, tokens)
            return str(answer["choices"][0]["message"].get("content") or "")

    def _stream(self, body: dict[str, Any], headers: dict[str, str], name: str) -> str | None:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        first = last = 0.0
        chunks, usage_tokens, text = 0, 0, []
        with self.client.post(
            "/v1/chat/completions", json=body, headers=headers, name=name, stream=True, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:300]}")
                return None
            done = False
            for line in r.iter_lines():
                if not line.startswith(b"data:"):
                    continue  # blank separators, keep-alive comments while the activator holds the request
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                frame = json.loads(data)
                if "error" in frame:
                    r.failure(f"error frame: {frame['error']}")
                    return None
                if frame.get("usage"):
                    usage_tokens = int(frame["usage"].get("completion_tokens") or 0)
                for choice in frame.get("choices", ()):
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        chunks += 1
                        text.append(content)
            ended = time.perf_counter()
            if not done:
                r.failure("the stream ended without [DONE]")
                return None
        tokens = usage_tokens or chunks
        if first:
            self._record("TTFT", name, first - started, 0)
            if tokens > 1:
                self._record("ITL", name, (last - first) / (tokens - 1), 0)
        self._record("E2E", name, ended - started, tokens)
        return "".join(text)

    def _record(self, kind: str, name: str, seconds: float, size: int) -> None:
        self.environment.events.request.fire(
            request_type=kind, name=name, response_time=seconds * 1000, response_length=size, exception=None,
            context={},
        )  # fmt: skip
