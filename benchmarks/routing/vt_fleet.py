"""A fleet of simulated vLLM engines in virtual time, fed by a request trace and routed by a gateway profile.

No HTTP, no wall clock: one event queue orders request sends, engine steps and metric scrapes; time jumps from one
event to the next. Each replica is the simulator's own engine (`llmserve.workers.sim.engine.SimEngine`: paged KV
blocks, prefix cache, continuous batching, chunked prefill) stepping exactly as its HTTP server's loop does (steps
laid end to end while there is work); a request reaches its engine `request_overhead_ms` after the routing
decision, as the simulator's server sleeps that long before queueing it. Routing goes through `vt_router` (the real
`gateway.routing` scheduler and profiles), which is told of first tokens and ends when the gateway would be, and
reads each replica's gauges every `scrape_interval_s` (the gateway's scraper period).

Same trace + same profile + same seed = the same run, event for event.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from benchmarks.routing.vt_router import MODEL, FleetRouter, Placement
from benchmarks.routing.workloads import Session, Workload
from llmserve.workers.sim.engine import ScheduledStep, SimEngine, SimRequest
from llmserve.workers.sim.profiles import EngineProfile
from llmserve.workers.sim.tokenizer import CHATML_BOS, CHATML_EOS, WordTokenizer

_SEND, _ENQUEUE, _STEP, _SCRAPE = 0, 1, 2, 3


class VirtualClock:
    """The engines' clock: the time of the event being handled."""

    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time

    async def sleep_until(self, deadline: float) -> None:
        raise RuntimeError("nothing sleeps in virtual time")


@dataclass(slots=True)
class Outcome:
    """One request as its client saw it (virtual seconds since the start of the trace)."""

    sent: float
    replica: int
    prompt_tokens: int
    first: float | None = None
    end: float | None = None
    cached_tokens: int = 0
    output_tokens: int = 0

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.sent


class ChatPrompts:
    """Chat messages -> the engine's prompt token ids (ChatML, the simulator's word tokenizer), each message
    encoded once: ChatML puts a special token at every message start, so the encoding of the rendered
    conversation is the concatenation of its messages' encodings."""

    def __init__(self, tokenizer: WordTokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[tuple[str, str], list[int]] = {}
        self._generation_prompt = tokenizer.encode(f"{CHATML_BOS}assistant\n", add_special_tokens=False)

    def encode(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        ids: list[int] = []
        for message in messages:
            key = (message["role"], message["content"])
            part = self._cache.get(key)
            if part is None:
                text = f"{CHATML_BOS}{key[0]}\n{key[1]}{CHATML_EOS}\n"
                part = self._cache[key] = self.tokenizer.encode(text, add_special_tokens=False)
            ids += part
        return ids + self._generation_prompt


@dataclass(slots=True)
class _InFlight:
    outcome: Outcome
    placement: Placement
    session: Session | None
    history: list[dict[str, str]] | None
    turn: int


class Fleet:
    def __init__(
        self,
        router: FleetRouter,
        profile: EngineProfile,
        replicas: int,
        clock: VirtualClock,
        *,
        scrape_interval_s: float = 0.5,
        measure_until_s: float = float("inf"),
        horizon_s: float = float("inf"),
    ) -> None:
        """`measure_until_s`: once past it, the run stops as soon as every request sent until then has its first
        token (what comes after is not measured); `horizon_s`: it stops then in any case."""
        self.router = router
        self.profile = profile
        self.clock = clock
        self.tokenizer = WordTokenizer()
        self.prompts = ChatPrompts(self.tokenizer)
        self.engines = [SimEngine(profile, clock, output_vocab=self.tokenizer.output_vocab) for _ in range(replicas)]
        self.scrape_interval_s = scrape_interval_s
        self.measure_until_s = measure_until_s
        self.horizon_s = horizon_s
        self._awaiting_first = 0  # requests sent until measure_until_s without a first token yet
        self._steps: list[ScheduledStep | None] = [None] * replicas
        self._queue: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._inflight: dict[SimRequest, _InFlight] = {}
        self._pending = 0  # sends scheduled + requests not finished
        self.outcomes: list[Outcome] = []

    def _push(self, at: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._queue, (at, next(self._seq), kind, payload))
        if kind == _SEND:
            self._pending += 1

    async def run(self, workload: Workload) -> list[Outcome]:
        """Replay `workload`; returns every request's outcome (those cut off by the stop have no end, or no
        first token)."""
        for turn in workload.turns:
            self._push(turn.at, _SEND, (turn.messages, turn.max_tokens, turn.session, None, None, 0))
        for session in workload.sessions:
            history = [{"role": "system", "content": session.system}]
            self._push(session.start, _SEND, (None, session.max_tokens, session.name, session, history, 0))
        self._push(0.0, _SCRAPE, None)
        while self._queue and self._pending > 0:
            at, _, kind, payload = heapq.heappop(self._queue)
            if at > self.horizon_s or (at > self.measure_until_s and self._awaiting_first == 0):
                break
            self.clock.time = at
            if kind == _SEND:
                await self._send(*payload)
            elif kind == _ENQUEUE:
                self._enqueue(*payload)
            elif kind == _STEP:
                self._step_done(payload)
            else:
                self._scrape()
        return self.outcomes

    async def _send(
        self,
        messages: list[dict[str, str]] | None,
        max_tokens: int,
        session_name: str | None,
        session: Session | None,
        history: list[dict[str, str]] | None,
        turn: int,
    ) -> None:
        if session is not None and history is not None:
            history.append({"role": "user", "content": session.questions[turn]})
            messages = list(history)
        assert messages is not None
        body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
        replica, placement = await self.router.route(body, session_name, len(orjson.dumps(body)))
        prompt = self.prompts.encode(messages)
        outcome = Outcome(sent=self.clock.time, replica=replica, prompt_tokens=len(prompt))
        self.outcomes.append(outcome)
        if outcome.sent <= self.measure_until_s:
            self._awaiting_first += 1
        entry = _InFlight(outcome, placement, session, history, turn)
        at = self.clock.time + self.profile.request_overhead_ms / 1000
        self._push(at, _ENQUEUE, (replica, prompt, max_tokens, entry))

    def _enqueue(self, replica: int, prompt: list[int], max_tokens: int, entry: _InFlight) -> None:
        engine = self.engines[replica]
        request = engine.add_request(prompt, max_tokens)
        self._inflight[request] = entry
        if self._steps[replica] is None:
            self._start_step(replica)

    def _start_step(self, replica: int) -> None:
        engine = self.engines[replica]
        step = engine.schedule() if engine.has_work else None
        if step is None or not step.entries:
            self._steps[replica] = None
            return
        self._steps[replica] = step
        self._push(self.clock.time + step.duration, _STEP, replica)

    def _step_done(self, replica: int) -> None:
        step = self._steps[replica]
        assert step is not None
        now = self.clock.time
        self.engines[replica].complete(step)
        for request, _ in step.entries:
            entry = self._inflight.get(request)
            if entry is None:
                continue
            outcome = entry.outcome
            if outcome.first is None and request.first_token_at is not None:
                outcome.first = now
                outcome.cached_tokens = request.num_cached_tokens
                if outcome.sent <= self.measure_until_s:
                    self._awaiting_first -= 1
                entry.placement.first_token()
            if request.finished:
                del self._inflight[request]
                outcome.end = now
                outcome.output_tokens = len(request.output_token_ids)
                entry.placement.done()
                self._pending -= 1
                self._next_turn(entry, request)
        self._start_step(replica)

    def _next_turn(self, entry: _InFlight, request: SimRequest) -> None:
        session, history = entry.session, entry.history
        if session is None or history is None or entry.turn + 1 >= len(session.questions):
            return
        answer = "".join(self.tokenizer.piece(t) for t in request.output_token_ids)
        history.append({"role": "assistant", "content": answer})
        at = self.clock.time + session.think_s
        self._push(at, _SEND, (None, session.max_tokens, session.name, session, history, entry.turn + 1))

    def _scrape(self) -> None:
        now = self.clock.time
        for i, engine in enumerate(self.engines):
            self.router.scrape(
                i, engine.gauges(), block_size=self.profile.block_size, num_blocks=self.profile.num_blocks, now=now
            )
        self._push(now + self.scrape_interval_s, _SCRAPE, None)
