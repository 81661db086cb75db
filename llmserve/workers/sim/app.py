"""The simulator's HTTP face: a raw ASGI app speaking the vLLM 0.32 OpenAI server's contract.

Routes: POST /v1/chat/completions, /v1/completions (streamed as SSE or not), /tokenize, /detokenize;
GET /v1/models, /health, /metrics, /version; and the simulator's own GET /sim/traceparents: the W3C
`traceparent` headers of the last generation requests (what vLLM would join its `llm_request` span to), for
tests. Responses carry the same fields as vLLM's (ids `chatcmpl-…`/`cmpl-…`,
`system_fingerprint`, `stop_reason`, usage), the streamed ones chunk by chunk: a role chunk per choice first
(chat), one chunk per token, the finish reason on the last token's chunk, an optional usage chunk, `[DONE]`.
A client that disconnects, streamed or not, has its requests aborted in the engine at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmserve.workers.sim.clock import Clock, RealClock
from llmserve.workers.sim.engine import SimEngine, SimRequest
from llmserve.workers.sim.metrics import MetricsInfo, render
from llmserve.workers.sim.profiles import EngineProfile, get_profile
from llmserve.workers.sim.protocol import (
    GenerationRequest,
    ModelNames,
    SimError,
    parse_chat,
    parse_completion,
    parse_tokenize,
)
from llmserve.workers.sim.tokenizer import SimTokenizer, WordTokenizer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_log = logging.getLogger(__name__)
VLLM_VERSION = "0.32.0"
FINGERPRINT = f"vllm-{VLLM_VERSION}-sim"
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8")]
_METRICS = [(b"content-type", b"text/plain; version=1.0.0; charset=utf-8")]


@dataclass(frozen=True)
class ServerConfig:
    """What the HTTP layer answers besides the engine's work."""

    served_model_names: list[str]
    """Names clients may send as `model`; the first is echoed when a request names none."""
    model_root: str = ""
    """`root` of the model in /v1/models (vLLM: the model path)."""
    lora_modules: list[str] = field(default_factory=list)
    """LoRA adapter names, also valid as `model`; listed in /v1/models and `vllm:lora_requests_info`."""
    legacy_metrics: bool = False
    """Also export the older generation's names (`vllm:gpu_cache_usage_perc`, `vllm:gpu_prefix_cache_*`)."""
    created: int = field(default_factory=lambda: int(time.time()))
    otlp_traces_endpoint: str | None = None
    """vLLM's --otlp-traces-endpoint, accepted and reported by /sim/traceparents (the simulator exports no spans)."""


class SimServer:
    """The ASGI app: `SimServer(engine, tokenizer, config)`; it runs the engine loop from lifespan startup."""

    def __init__(self, engine: SimEngine, tokenizer: SimTokenizer, config: ServerConfig) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.config = config
        self.names = ModelNames(config.served_model_names, config.lora_modules)
        self.traceparents: deque[dict[str, str | None]] = deque(maxlen=1000)  # the last requests' trace contexts
        self._loop_task: asyncio.Task[None] | None = None
        self._routes: dict[str, tuple[str, Callable[[Scope, Receive, Send], Awaitable[None]]]] = {
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/completions": ("POST", self._completions),
            "/tokenize": ("POST", self._tokenize),
            "/detokenize": ("POST", self._detokenize),
            "/v1/models": ("GET", self._models),
            "/health": ("GET", self._health),
            "/metrics": ("GET", self._metrics),
            "/version": ("GET", self._version),
            "/sim/traceparents": ("GET", self._traceparents),
        }
        self._piece_json = {t: orjson.dumps(tokenizer.piece(t)) for t in tokenizer.output_vocab}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self.start()
        route = self._routes.get(scope["path"])
        if route is None:
            await _respond(send, 404, b'{"detail":"Not Found"}')
            return
        method, handler = route
        if scope["method"] != method and not (method == "GET" and scope["method"] == "HEAD"):
            await _respond(send, 405, b'{"detail":"Method Not Allowed"}')
            return
        try:
            await handler(scope, receive, send)
        except SimError as exc:
            await _respond(send, exc.status, orjson.dumps(exc.body()))
        except Exception as exc:  # a bug here must still answer in the envelope (if nothing was sent yet)
            _log.exception("request to %s failed", scope["path"])
            error = SimError(500, f"{type(exc).__name__}: {exc}", "InternalServerError")
            await _respond(send, 500, orjson.dumps(error.body()))

    def start(self) -> None:
        """Start the engine loop on the running event loop (idempotent; lifespan startup calls it)."""
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self.engine.run())

    async def stop(self) -> None:
        self.engine.stop()
        if self._loop_task is not None:
            await self._loop_task

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- simple routes ----------------------------------------------------------------------------------------

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def _version(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, orjson.dumps({"version": VLLM_VERSION}))

    async def _traceparents(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = {"otlp_traces_endpoint": self.config.otlp_traces_endpoint, "requests": list(self.traceparents)}
        await _respond(send, 200, orjson.dumps(answer))

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        cfg = self.config
        base = cfg.served_model_names[0]
        cards = [self._card(name, cfg.model_root or name, None) for name in cfg.served_model_names]
        cards += [self._card(name, name, base) for name in cfg.lora_modules]
        await _respond(send, 200, orjson.dumps({"object": "list", "data": cards}))

    def _card(self, name: str, root: str, parent: str | None) -> dict[str, Any]:
        created = self.config.created
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": root,
            "parent": parent,
            "max_model_len": self.engine.profile.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{secrets.token_hex(8)}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        engine = self.engine
        info = MetricsInfo(
            model_name=self.config.served_model_names[0],
            block_size=engine.profile.block_size,
            num_blocks=engine.profile.num_blocks,
            enable_prefix_caching=engine.pool.enable_caching,
            legacy_names=self.config.legacy_metrics,
            max_loras=engine.max_loras if self.config.lora_modules else None,
            lora_info_time=time.time(),
        )
        body = render(engine.stats, engine.gauges(), info)
        await _respond(send, 200, body, _METRICS)

    async def _tokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_json(receive)
        ids, with_strs = parse_tokenize(body, self.names, self.tokenizer)
        answer = {
            "count": len(ids),
            "max_model_len": self.engine.profile.max_model_len,
            "tokens": ids,
            "token_strs": [self.tokenizer.decode([t]) for t in ids] if with_strs else None,
        }
        await _respond(send, 200, orjson.dumps(answer))

    async def _detokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_json(receive)
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise SimError.validation("tokens", "list_type", "Input should be a valid list", tokens)
        if isinstance(body, dict):
            self.names.resolve(body)
        await _respond(send, 200, orjson.dumps({"prompt": self.tokenizer.decode(tokens)}))

    # ---- generation -------------------------------------------------------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_json(receive)
        request = parse_chat(body, self.names, self.tokenizer, self.engine.profile.max_model_len)
        await self._generate(scope, receive, send, request, chat=True)

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_json(receive)
        request = parse_completion(body, self.names, self.tokenizer, self.engine.profile.max_model_len)
        await self._generate(scope, receive, send, request, chat=False)

    async def _generate(
        self, scope: Scope, receive: Receive, send: Send, request: GenerationRequest, chat: bool
    ) -> None:
        engine = self.engine
        traceparent = _header(scope, b"traceparent")
        if traceparent is not None:
            self.traceparents.append({"request_id": _request_id(scope), "traceparent": traceparent})
        overhead = engine.profile.request_overhead_ms / 1000
        if overhead > 0:
            await engine.clock.sleep_until(engine.clock.now() + overhead)
        update = asyncio.Event()
        sequences = self._submit(request, update.set)
        gone = asyncio.Event()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            update.set()

        watcher = asyncio.get_running_loop().create_task(watch_disconnect())
        try:
            header = _request_id(scope)
            if request.stream:
                await self._stream(send, request, sequences, update, gone, chat, header)
            else:
                while not all(s.finished for s in sequences) and not gone.is_set():
                    update.clear()
                    await update.wait()
                if not gone.is_set():
                    await _respond(send, 200, orjson.dumps(_full_response(request, sequences, chat, self, header)))
        finally:
            watcher.cancel()
            if all(s.finished and s.finish_reason != "abort" for s in sequences):
                engine.stats.request_params_n.observe(request.n)
            for sequence in sequences:
                engine.abort(sequence)

    def _submit(self, request: GenerationRequest, on_update: Callable[[], None]) -> list[SimRequest]:
        engine = self.engine
        max_model_len = engine.profile.max_model_len
        natural = engine.profile.output_tokens
        sequences = []
        for prompt in request.prompts:
            room = max_model_len - len(prompt)
            limit = room if request.max_tokens is None else min(request.max_tokens, room)
            eos_after = None if request.ignore_eos else max(natural, request.min_tokens)
            if eos_after is not None and eos_after >= limit:
                eos_after = None
            for _ in range(request.n):
                sequences.append(
                    engine.add_request(prompt, limit, eos_after=eos_after, lora=request.lora, on_update=on_update)
                )
        return sequences

    async def _stream(
        self,
        send: Send,
        request: GenerationRequest,
        sequences: list[SimRequest],
        update: asyncio.Event,
        gone: asyncio.Event,
        chat: bool,
        request_id: str | None,
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        ids = _ids(chat, request_id)
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = orjson.dumps({"id": ids, "object": obj, "created": created, "model": request.model})[:-1]
        prompt_tokens = sum(len(p) for p in request.prompts)
        frames: list[bytes] = []
        sent = [0] * len(sequences)
        roles_sent = not chat
        while True:
            if not roles_sent and any(s.output_token_ids for s in sequences):
                roles_sent = True  # as vLLM: the role chunks go out with the first output, after the prefill
                for index in range(len(sequences)):
                    role = {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    usage = {"usage": _usage(prompt_tokens, 0, details=True)} if request.continuous_usage else {}
                    frames.append(
                        _frame(head, {"choices": [role], **usage, "prompt_token_ids": None, "prompt_text": None})
                    )
            for index, sequence in enumerate(sequences):
                produced = sequence.output_token_ids
                while sent[index] < len(produced):
                    token = produced[sent[index]]
                    sent[index] += 1
                    last = sequence.finished and sent[index] == len(produced)
                    reason = sequence.finish_reason if last else None
                    frames.append(
                        self._token_frame(head, index, token, reason, chat, request, sequences, prompt_tokens)
                    )
            if frames:
                await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
                frames.clear()
            if all(s.finished for s in sequences) or gone.is_set():
                break
            update.clear()
            await update.wait()
        if gone.is_set():
            return
        if request.include_usage:
            completion = sum(len(s.output_token_ids) for s in sequences)
            frames.append(
                _frame(
                    head, {"choices": [], "usage": _usage(prompt_tokens, completion), "system_fingerprint": FINGERPRINT}
                )
            )
        frames.append(b"data: [DONE]\n\n")
        await send({"type": "http.response.body", "body": b"".join(frames), "more_body": False})

    def _token_frame(
        self,
        head: bytes,
        index: int,
        token: int,
        reason: str | None,
        chat: bool,
        request: GenerationRequest,
        sequences: list[SimRequest],
        prompt_tokens: int,
    ) -> bytes:
        text = self._piece_json.get(token) or orjson.dumps(self.tokenizer.decode([token]))
        if reason is None and not request.continuous_usage:  # the hot path: no dict, no serialisation
            if chat:
                return (
                    b"data: "
                    + head
                    + b',"choices":[{"index":'
                    + str(index).encode()
                    + b',"delta":{"content":'
                    + text
                    + b'},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
                )
            return (
                b"data: "
                + head
                + b',"choices":[{"index":'
                + str(index).encode()
                + b',"text":'
                + text
                + b',"logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,'
                b'"token_ids":null}]}\n\n'
            )
        piece = orjson.loads(text)
        choice: dict[str, Any]
        if chat:
            choice = {"index": index, "delta": {"content": piece}, "logprobs": None, "finish_reason": reason}
            if reason is not None:
                choice["stop_reason"] = None
            choice["token_ids"] = None
        else:
            choice = {
                "index": index,
                "text": piece,
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
                "prompt_token_ids": None,
                "token_ids": None,
            }
        chunk: dict[str, Any] = {"choices": [choice]}
        if request.continuous_usage:
            chunk["usage"] = _usage(prompt_tokens, sum(len(s.output_token_ids) for s in sequences), details=True)
        if reason is not None and not request.include_usage and chat:
            chunk["system_fingerprint"] = FINGERPRINT
        return _frame(head, chunk)


def create_app(
    model: str,
    *,
    profile: EngineProfile | str = "cpu-smollm2",
    clock: Clock | None = None,
    tokenizer: SimTokenizer | None = None,
    served_model_names: Sequence[str] = (),
    lora_modules: Sequence[str] = (),
    max_loras: int = 1,
    legacy_metrics: bool = False,
    enable_prefix_caching: bool = True,
    otlp_traces_endpoint: str | None = None,
) -> SimServer:
    """A simulated worker as an ASGI app: `create_app("m")` for tests and in-process fleets (pass a
    `ManualClock` to step it without real time, or `RealClock(speed)` to run it faster than the wall)."""
    engine_profile = get_profile(profile) if isinstance(profile, str) else profile
    tokens = tokenizer or WordTokenizer()
    engine = SimEngine(
        engine_profile,
        clock or RealClock(),
        output_vocab=tokens.output_vocab,
        enable_prefix_caching=enable_prefix_caching,
        max_loras=max_loras,
    )
    config = ServerConfig(
        served_model_names=list(served_model_names) or [model],
        model_root=model,
        lora_modules=list(lora_modules),
        legacy_metrics=legacy_metrics,
        otlp_traces_endpoint=otlp_traces_endpoint,
    )
    return SimServer(engine, tokens, config)


def _full_response(
    request: GenerationRequest, sequences: list[SimRequest], chat: bool, server: SimServer, request_id: str | None
) -> dict[str, Any]:
    choices: list[dict[str, Any]] = []
    for index, sequence in enumerate(sequences):
        text = "".join(server.tokenizer.piece(t) for t in sequence.output_token_ids)
        if chat:
            message = {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
            }
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": sequence.finish_reason,
                    "stop_reason": None,
                    "token_ids": None,
                    "routed_experts": None,
                }
            )
        else:
            choices.append(
                {
                    "index": index,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": sequence.finish_reason,
                    "stop_reason": None,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": None,
                }
            )
    prompt_tokens = sum(len(p) for p in request.prompts)
    completion = sum(len(s.output_token_ids) for s in sequences)
    answer: dict[str, Any] = {
        "id": _ids(chat, request_id),
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": FINGERPRINT,
        "usage": {
            **_usage(prompt_tokens, completion),
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
    }
    if chat:
        answer.update(prompt_logprobs=None, prompt_token_ids=None, prompt_text=None)
    answer.update(kv_transfer_params=None, ec_transfer_params=None, metrics=None)
    return answer


def _usage(prompt: int, completion: int, details: bool = False) -> dict[str, int | None]:
    usage: dict[str, int | None] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    if details:
        usage["completion_tokens_details"] = None
    return usage


def _ids(chat: bool, request_id: str | None) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + (request_id or secrets.token_hex(8))


def _request_id(scope: Scope) -> str | None:
    return _header(scope, b"x-request-id")


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


def _frame(head: bytes, rest: dict[str, Any]) -> bytes:
    return b"data: " + head + b"," + orjson.dumps(rest)[1:] + b"\n\n"


async def _read_json(receive: Receive) -> Any:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise SimError(499, "client disconnected")
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise SimError.validation("", "json_invalid", "JSON decode error", {}) from None


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = _JSON) -> None:
    with contextlib.suppress(OSError):
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
