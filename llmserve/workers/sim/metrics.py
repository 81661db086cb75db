"""The engine's counters and histograms, rendered in Prometheus text with vLLM's `vllm:*` names.

Hand-rolled rather than prometheus_client: no global registry (several engines per process in tests), and
rendering costs microseconds. Bucket bounds are vLLM's defaults (vllm/v1/metrics/buckets.py).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)

ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
N_BUCKETS = (1, 2, 5, 10, 20)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")


def token_buckets(max_model_len: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to max_model_len (vLLM's request-token buckets)."""
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_model_len:
                return tuple(out)
            out.append(float(value))
        exponent += 1


@dataclass
class Histogram:
    buckets: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


@dataclass
class EngineStats:
    """Everything the engine counts; gauges are read from the engine when rendering."""

    max_model_len: int
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prompt_tokens: int = 0
    prompt_tokens_cached: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    request_success: dict[str, int] = field(default_factory=dict)
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    queue: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    prefill: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    decode: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    inference: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    tpot: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    iteration_tokens: Histogram = field(default_factory=lambda: Histogram(ITERATION_TOKENS_BUCKETS))
    request_params_n: Histogram = field(default_factory=lambda: Histogram(N_BUCKETS))
    request_prompt_tokens: Histogram = field(init=False)
    request_generation_tokens: Histogram = field(init=False)
    request_params_max_tokens: Histogram = field(init=False)

    def __post_init__(self) -> None:
        self.request_prompt_tokens = Histogram(token_buckets(self.max_model_len))
        self.request_generation_tokens = Histogram(token_buckets(self.max_model_len))
        self.request_params_max_tokens = Histogram(token_buckets(self.max_model_len))


@dataclass(frozen=True)
class Gauges:
    running: int
    waiting: int
    kv_cache_usage: float
    running_loras: Sequence[str]
    waiting_loras: Sequence[str]


@dataclass(frozen=True)
class MetricsInfo:
    """What the text needs besides the numbers."""

    model_name: str
    block_size: int
    num_blocks: int
    enable_prefix_caching: bool
    legacy_names: bool
    max_loras: int | None
    lora_info_time: float


def render(stats: EngineStats, gauges: Gauges, info: MetricsInfo) -> bytes:
    """Prometheus text as vLLM's multiprocess exporter writes it: counters named `*_total` in HELP/TYPE too,
    labels in sorted order (no `*_created` samples)."""
    base = {"engine": "0", "model_name": info.model_name}
    lines: list[str] = []

    def gauge(name: str, doc: str, value: float, **extra: str) -> None:
        lines.extend((f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name}{_labels(base, extra)} {_num(value)}"))

    def counter(name: str, doc: str, values: dict[str, float] | float, label: str = "") -> None:
        lines.extend((f"# HELP {name}_total {doc}", f"# TYPE {name}_total counter"))
        if isinstance(values, dict):
            lines.extend(f"{name}_total{_labels(base, {label: k})} {_num(v)}" for k, v in values.items())
        else:
            lines.append(f"{name}_total{_labels(base, {})} {_num(values)}")

    gauge("vllm:num_requests_running", "Number of requests in model execution batches.", gauges.running)
    gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", gauges.waiting)
    lines.extend(
        (
            "# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason.",
            "# TYPE vllm:num_requests_waiting_by_reason gauge",
        )
    )
    for reason, value in (("capacity", gauges.waiting), ("deferred", 0)):
        lines.append(f"vllm:num_requests_waiting_by_reason{_labels(base, {'reason': reason})} {_num(value)}")
    gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", gauges.kv_cache_usage)
    if info.legacy_names:
        gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", gauges.kv_cache_usage)
        queries = stats.prefix_cache_queries
        hit_rate = stats.prefix_cache_hits / queries if queries else 0.0
        gauge("vllm:gpu_prefix_cache_hit_rate", "GPU prefix cache block hit rate.", hit_rate)
        counter(
            "vllm:gpu_prefix_cache_queries",
            "GPU prefix cache queries, in terms of number of queried tokens.",
            stats.prefix_cache_queries,
        )
        counter(
            "vllm:gpu_prefix_cache_hits",
            "GPU prefix cache hits, in terms of number of cached tokens.",
            stats.prefix_cache_hits,
        )
    counter(
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        stats.prefix_cache_queries,
    )
    counter(
        "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", stats.prefix_cache_hits
    )
    counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", stats.preemptions)
    counter("vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens)
    counter(
        "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).", stats.prompt_tokens_cached
    )
    counter("vllm:generation_tokens", "Number of generation tokens processed.", stats.generation_tokens)
    counter(
        "vllm:request_success",
        "Count of successfully processed requests.",
        {r: stats.request_success.get(r, 0) for r in FINISH_REASONS},
        "finished_reason",
    )
    for name, doc, hist in (
        ("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", stats.iteration_tokens),
        ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", stats.request_prompt_tokens),
        ("vllm:request_generation_tokens", "Number of generation tokens processed.", stats.request_generation_tokens),
        ("vllm:request_params_n", "Histogram of the n request parameter.", stats.request_params_n),
        (
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            stats.request_params_max_tokens,
        ),
        ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", stats.ttft),
        ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", stats.itl),
        (
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            stats.tpot,
        ),
        ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", stats.e2e),
        ("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", stats.queue),
        (
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            stats.inference,
        ),
        ("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", stats.prefill),
        ("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", stats.decode),
    ):
        _histogram(lines, name, doc, hist, base)
    if info.max_loras is not None:
        lora = {
            "max_lora": str(info.max_loras),
            "running_lora_adapters": ",".join(gauges.running_loras),
            "waiting_lora_adapters": ",".join(gauges.waiting_loras),
        }
        lines.extend(
            (
                "# HELP vllm:lora_requests_info Running stats on lora requests.",
                "# TYPE vllm:lora_requests_info gauge",
                f"vllm:lora_requests_info{_labels({}, lora)} {info.lora_info_time!r}",
            )
        )
    cache = {
        "block_size": str(info.block_size),
        "enable_prefix_caching": str(info.enable_prefix_caching),
        "engine": "0",
        "kv_cache_size_tokens": str(info.block_size * info.num_blocks),
        "num_cpu_blocks": "None",
        "num_gpu_blocks": str(info.num_blocks),
    }
    lines.extend(
        (
            "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
            "# TYPE vllm:cache_config_info gauge",
            f"vllm:cache_config_info{_labels({}, cache)} 1.0",
        )
    )
    lines.append("")
    return "\n".join(lines).encode()


def _histogram(lines: list[str], name: str, doc: str, hist: Histogram, base: dict[str, str]) -> None:
    lines.append(f"# HELP {name} {doc}")
    lines.append(f"# TYPE {name} histogram")
    running = 0
    for bound, count in zip(hist.buckets, hist.counts, strict=False):
        running += count
        lines.append(f"{name}_bucket{_labels(base, {'le': repr(float(bound))})} {_num(running)}")
    lines.append(f"{name}_bucket{_labels(base, {'le': '+Inf'})} {_num(hist.count)}")
    lines.append(f"{name}_count{_labels(base, {})} {_num(hist.count)}")
    lines.append(f"{name}_sum{_labels(base, {})} {hist.total!r}")


def _labels(base: dict[str, str], extra: dict[str, str]) -> str:
    merged = {**base, **extra}
    return "{" + ",".join(f'{k}="{_escape(merged[k])}"' for k in sorted(merged)) + "}"


def _num(value: float) -> str:
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
