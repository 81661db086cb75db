"""The simulated engine: a vLLM-V1-like scheduler over paged KV blocks, timed by a latency model.

Each step, running requests are scheduled first (one token to decode, or the next chunk of a long prompt), then
waiting requests in arrival order while the step's token budget, `max_num_seqs` and free blocks allow. A waiting
request first takes its cached prefix blocks (the last prompt token is always computed, as in vLLM). A running
request that cannot get a block for its next token preempts the newest running request (recompute: its blocks
are freed and it waits again at the head of the queue). The step lasts `profile.step_ms(...)`; at its end every
request whose known tokens are all computed samples one token.

The synchronous core (`add_request`, `schedule`, `complete`, `abort`) never sleeps: unit tests drive it with a
`ManualClock`. `run()` is the loop a server runs: schedule, sleep until the step ends, complete.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from llmserve.workers.sim.clock import Clock
from llmserve.workers.sim.kv_cache import BlockPool, block_hash
from llmserve.workers.sim.metrics import EngineStats, Gauges
from llmserve.workers.sim.profiles import EngineProfile

DEFAULT_OUTPUT_VOCAB: tuple[int, ...] = tuple(range(1000, 1064))


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class SimRequest:
    """One sequence: its prompt, what it generated so far and where it stands in the engine."""

    request_id: str
    prompt_token_ids: Sequence[int]
    max_tokens: int
    """Most tokens to generate (finish reason "length")."""
    eos_after: int | None
    """Tokens after which the synthetic model emits end-of-sequence (finish reason "stop"); None: never."""
    lora: str | None
    arrival: float
    on_update: Callable[[], None] | None = None
    output_token_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: str | None = None
    num_computed: int = 0
    num_cached_tokens: int = 0
    blocks: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_registered_blocks: int = 0
    """Leading blocks already offered to the prefix cache."""
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    num_preemptions: int = 0
    seed: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def token_at(self, position: int) -> int:
        prompt = len(self.prompt_token_ids)
        return self.prompt_token_ids[position] if position < prompt else self.output_token_ids[position - prompt]


@dataclass(frozen=True)
class ScheduledStep:
    """What one step computes: (request, tokens) pairs, and how long it takes in simulated seconds."""

    entries: list[tuple[SimRequest, int]]
    decode_seqs: int
    prefill_tokens: int
    duration: float


class SimEngine:
    def __init__(
        self,
        profile: EngineProfile,
        clock: Clock,
        *,
        output_vocab: Sequence[int] = DEFAULT_OUTPUT_VOCAB,
        enable_prefix_caching: bool = True,
        max_loras: int = 1,
    ) -> None:
        if profile.num_blocks * profile.block_size < profile.max_model_len:
            raise ValueError(
                f"the KV cache ({profile.num_blocks} blocks of {profile.block_size}) cannot hold one request of "
                f"max_model_len {profile.max_model_len} tokens"
            )
        if not output_vocab:
            raise ValueError("output_vocab is empty")
        self.profile = profile
        self.clock = clock
        self.output_vocab = tuple(output_vocab)
        self.max_loras = max_loras
        self.pool = BlockPool(profile.num_blocks, enable_caching=enable_prefix_caching)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.stats = EngineStats(max_model_len=profile.max_model_len)
        self.steps = 0
        self.busy_time = 0.0
        self._ids = itertools.count()
        self._wakeup = asyncio.Event()
        self._stopped = False

    # ---- requests -------------------------------------------------------------------------------------------

    def add_request(
        self,
        prompt_token_ids: Sequence[int],
        max_tokens: int,
        *,
        eos_after: int | None = None,
        lora: str | None = None,
        request_id: str | None = None,
        on_update: Callable[[], None] | None = None,
        seed: int | None = None,
    ) -> SimRequest:
        """Queue a request now. `max_tokens` must leave room: prompt + max_tokens <= max_model_len."""
        if not prompt_token_ids:
            raise ValueError("the prompt is empty")
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if len(prompt_token_ids) + max_tokens > self.profile.max_model_len:
            raise ValueError("prompt + max_tokens exceeds max_model_len")
        number = next(self._ids)
        request = SimRequest(
            request_id=request_id or f"sim-{number}",
            prompt_token_ids=prompt_token_ids,
            max_tokens=max_tokens,
            eos_after=eos_after,
            lora=lora,
            arrival=self.clock.now(),
            on_update=on_update,
            seed=number if seed is None else seed,
        )
        self.waiting.append(request)
        self._wakeup.set()
        return request

    def abort(self, request: SimRequest) -> None:
        """Drop a request wherever it is (client gone); its blocks are freed at once."""
        if request.finished:
            return
        if request.status is Status.WAITING:
            self.waiting.remove(request)
        else:
            self.running.remove(request)
        self._finish(request, "abort")
        self._wakeup.set()  # freed blocks may admit a waiting request

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def gauges(self) -> Gauges:
        return Gauges(
            running=len(self.running),
            waiting=len(self.waiting),
            kv_cache_usage=self.pool.usage,
            running_loras=_distinct(r.lora for r in self.running),
            waiting_loras=_distinct(r.lora for r in self.waiting),
        )

    # ---- one step ---------------------------------------------------------------------------------------------

    def schedule(self) -> ScheduledStep:
        """Pick this step's work and allocate its blocks; nothing is computed until `complete`."""
        profile = self.profile
        budget = profile.max_num_batched_tokens
        entries: list[tuple[SimRequest, int]] = []
        decode_seqs = 0
        decode_kctx = 0.0
        prefill_tokens = 0
        prefill_kctx = 0.0
        preempted = False

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed, budget)
            while not self._grow(request, request.num_computed + num_new):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            else:
                entries.append((request, num_new))
                budget -= num_new
                if num_new == 1 and request.num_computed >= request.num_prompt_tokens:
                    decode_seqs += 1
                    decode_kctx += request.num_computed / 1000
                else:
                    prefill_tokens += num_new
                    prefill_kctx += num_new * (request.num_computed + num_new / 2) / 1000
                i += 1
                continue
            break

        skipped: list[SimRequest] = []
        running_loras = {r.lora for r in self.running if r.lora is not None}
        while self.waiting and budget > 0 and len(self.running) < profile.max_num_seqs and not preempted:
            request = self.waiting[0]
            if request.lora is not None and request.lora not in running_loras and len(running_loras) >= self.max_loras:
                skipped.append(self.waiting.popleft())
                continue
            hits = self._cache_hits(request)
            num_cached = len(hits) * profile.block_size
            num_new = min(request.num_tokens - num_cached, budget)
            needed = -(-(num_cached + num_new) // profile.block_size) - len(hits)
            if not self.pool.can_allocate(needed, hits):
                break
            self.waiting.popleft()
            self.pool.touch(hits)
            request.blocks = hits + self.pool.allocate(needed)
            request.num_registered_blocks = len(hits)
            request.num_computed = num_cached
            self._cache_full_blocks(request, num_cached + num_new)
            if request.num_preemptions == 0:
                request.num_cached_tokens = num_cached
            self.stats.prefix_cache_queries += request.num_tokens
            self.stats.prefix_cache_hits += num_cached
            if request.scheduled_at is None:
                request.scheduled_at = self.clock.now()
            request.status = Status.RUNNING
            self.running.append(request)
            if request.lora is not None:
                running_loras.add(request.lora)
            entries.append((request, num_new))
            budget -= num_new
            prefill_tokens += num_new
            prefill_kctx += num_new * (num_cached + num_new / 2) / 1000
        self.waiting.extendleft(reversed(skipped))

        duration = profile.step_ms(decode_seqs, prefill_tokens, prefill_kctx, decode_kctx) / 1000
        return ScheduledStep(entries, decode_seqs, prefill_tokens, duration)

    def complete(self, step: ScheduledStep) -> None:
        """End a step: computed tokens advance; requests with nothing left to compute sample a token."""
        now = self.clock.now()
        self.steps += 1
        self.busy_time += step.duration
        stats = self.stats
        stats.iteration_tokens.observe(sum(num_new for _, num_new in step.entries))
        for request, num_new in step.entries:
            if request.status is not Status.RUNNING:
                continue  # aborted or preempted while the step ran
            request.num_computed += num_new
            if request.num_computed < request.num_tokens:
                continue  # a chunk of a long prompt
            produced = len(request.output_token_ids)
            vocab = self.output_vocab
            request.output_token_ids.append(vocab[(request.seed * 7 + produced) % len(vocab)])
            stats.generation_tokens += 1
            if produced == 0:
                request.first_token_at = now
                stats.ttft.observe(now - request.arrival)
                stats.prompt_tokens += request.num_prompt_tokens
                stats.prompt_tokens_cached += request.num_cached_tokens
            elif request.last_token_at is not None:
                stats.itl.observe(now - request.last_token_at)
            request.last_token_at = now
            produced += 1
            if request.eos_after is not None and produced >= request.eos_after:
                self.running.remove(request)
                self._finish(request, "stop")
            elif produced >= request.max_tokens or request.num_tokens >= self.profile.max_model_len:
                self.running.remove(request)
                self._finish(request, "length")
            elif request.on_update is not None:
                request.on_update()

    # ---- the loop -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Step while there is work; wait for a request otherwise. Back-to-back steps are laid end to end in
        simulated time, so event-loop jitter does not add up; after an idle wait, or when the loop has fallen a
        whole step behind, the next step starts now."""
        step_end: float | None = None
        while not self._stopped:
            step = self.schedule() if self.has_work else None
            if step is None or not step.entries:
                self._wakeup.clear()
                await self._wakeup.wait()
                step_end = None
                continue
            now = self.clock.now()
            start = step_end if step_end is not None and now - step_end < step.duration else now
            step_end = start + step.duration
            await self.clock.sleep_until(step_end)
            self.complete(step)

    def stop(self) -> None:
        self._stopped = True
        self._wakeup.set()

    def run_until_idle(self, advance: Callable[[float], None], max_steps: int = 1_000_000) -> int:
        """Step synchronously until nothing is left, calling `advance(duration)` for each step (tests)."""
        steps = 0
        while self.has_work and steps < max_steps:
            step = self.schedule()
            if not step.entries:
                break
            advance(step.duration)
            self.complete(step)
            steps += 1
        return steps

    # ---- internals ------------------------------------------------------------------------------------------

    def _cache_hits(self, request: SimRequest) -> list[int]:
        """Cached blocks of the request's prefix, at most num_tokens - 1 tokens of them."""
        max_blocks = (request.num_tokens - 1) // self.profile.block_size
        self._extend_hashes(request, max_blocks)
        return self.pool.lookup(request.block_hashes[:max_blocks])

    def _grow(self, request: SimRequest, num_tokens: int) -> bool:
        """Give the request enough blocks for `num_tokens` computed tokens; False when the pool is short."""
        needed = -(-num_tokens // self.profile.block_size) - len(request.blocks)
        if needed > 0:
            if needed > self.pool.num_free:
                return False
            request.blocks += self.pool.allocate(needed)
        self._cache_full_blocks(request, num_tokens)
        return True

    def _cache_full_blocks(self, request: SimRequest, num_tokens: int) -> None:
        full = num_tokens // self.profile.block_size
        if full <= request.num_registered_blocks:
            return
        self._extend_hashes(request, full)
        for j in range(request.num_registered_blocks, full):
            self.pool.cache(request.blocks[j], request.block_hashes[j])
        request.num_registered_blocks = full

    def _extend_hashes(self, request: SimRequest, num_blocks: int) -> None:
        size = self.profile.block_size
        hashes = request.block_hashes
        prompt = request.prompt_token_ids
        while len(hashes) < num_blocks:
            j = len(hashes)
            lo, hi = j * size, (j + 1) * size
            tokens = prompt[lo:hi] if hi <= len(prompt) else [request.token_at(p) for p in range(lo, hi)]
            hashes.append(block_hash(hashes[-1] if hashes else None, tokens, request.lora))

    def _preempt(self, request: SimRequest) -> None:
        self.pool.free(reversed(request.blocks))
        request.blocks = []
        request.num_registered_blocks = 0
        request.num_computed = 0
        request.status = Status.WAITING
        request.num_preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(request)

    def _finish(self, request: SimRequest, reason: str) -> None:
        now = self.clock.now()
        self.pool.free(reversed(request.blocks))
        request.blocks = []
        request.status = Status.FINISHED
        request.finish_reason = reason
        request.finished_at = now
        stats = self.stats
        if reason != "abort":  # like vLLM, aborted requests are not "successfully processed"
            generated = len(request.output_token_ids)
            stats.request_success[reason] = stats.request_success.get(reason, 0) + 1
            stats.e2e.observe(now - request.arrival)
            stats.request_prompt_tokens.observe(request.num_prompt_tokens)
            stats.request_generation_tokens.observe(generated)
            stats.request_params_max_tokens.observe(request.max_tokens)
            if request.scheduled_at is not None and request.first_token_at is not None:
                stats.queue.observe(request.scheduled_at - request.arrival)
                stats.inference.observe(now - request.scheduled_at)
                stats.prefill.observe(request.first_token_at - request.scheduled_at)
                stats.decode.observe(now - request.first_token_at)
                if generated > 1:
                    stats.tpot.observe((now - request.first_token_at) / (generated - 1))
        if request.on_update is not None:
            request.on_update()


def _distinct(names: Iterable[str | None]) -> list[str]:
    seen: dict[str, None] = {}
    for name in names:
        if name is not None:
            seen[name] = None
    return list(seen)
