"""`python -m llmserve.workers.sim --host H --port P --model NAME [--profile ...] [overrides]`: one simulated worker.

Starts in a fraction of a second (no vLLM, no torch). Flags shared with vLLM's server keep their meaning
(`--served-model-name`, `--max-model-len`, `--block-size`, `--num-gpu-blocks-override`, `--max-num-seqs`,
`--max-num-batched-tokens`, `--enable-prefix-caching`, `--lora-modules`, `--max-loras`); `--dtype` and
`--enforce-eager` are accepted and ignored, so a vLLM argv can be pointed at the simulator.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from llmserve.workers.sim.profiles import PROFILES, EngineProfile, get_profile

_STARTED = time.monotonic()

_OVERRIDES: tuple[tuple[str, str, type, str], ...] = (
    ("--block-size", "block_size", int, "tokens per KV block"),
    ("--num-blocks", "num_blocks", int, "KV blocks in the cache"),
    ("--max-num-seqs", "max_num_seqs", int, "most sequences in one batch"),
    ("--max-num-batched-tokens", "max_num_batched_tokens", int, "token budget of one step (chunked prefill)"),
    ("--max-model-len", "max_model_len", int, "longest prompt + output"),
    ("--step-floor-ms", "step_floor_ms", float, "shortest step (memory-bound floor)"),
    ("--step-base-ms", "step_base_ms", float, "fixed cost of a step (alias: --decode-step-ms)"),
    ("--decode-ms-per-seq", "decode_ms_per_seq", float, "added per decoding sequence in a step"),
    ("--prefill-ms-per-token", "prefill_ms_per_token", float, "added per uncached prompt token"),
    ("--prefill-ms-per-token-kctx", "prefill_ms_per_token_kctx", float, "added per prompt token per 1000 context"),
    ("--request-overhead-ms", "request_overhead_ms", float, "API-server latency per request"),
    ("--output-tokens", "output_tokens", int, "tokens before the synthetic end of sequence (no ignore_eos)"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llmserve.workers.sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", required=True, help="model name (or a model directory, as vLLM's --model)")
    parser.add_argument("--served-model-name", nargs="+", help="names clients send (default: --model)")
    parser.add_argument("--profile", default="cpu-smollm2", choices=sorted(PROFILES))
    parser.add_argument(
        "--tokenizer",
        help="directory with tokenizer.json (default: --model if it has one, "
        "else a built-in ~4-characters-per-token tokenizer)",
    )
    for flag, _name, kind, help_text in _OVERRIDES:
        names = [flag, "--decode-step-ms"] if flag == "--step-base-ms" else [flag]
        parser.add_argument(*names, type=kind, help=help_text)
    parser.add_argument("--num-gpu-blocks-override", type=int, help="vLLM's name for --num-blocks")
    parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--lora",
        "--lora-modules",
        dest="lora",
        nargs="+",
        default=[],
        help="LoRA adapter names requests may send as `model` (vLLM's name=path is accepted)",
    )
    parser.add_argument("--max-loras", type=int, default=1, help="distinct adapters in one batch")
    parser.add_argument(
        "--legacy-metrics",
        action="store_true",
        help="also export vllm:gpu_cache_usage_perc and vllm:gpu_prefix_cache_* (older vLLM)",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--enforce-eager", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--disable-uvicorn-access-log", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--otlp-traces-endpoint",
        help="vLLM's flag, accepted: the simulator exports no spans but records the traceparent of each request "
        "(GET /sim/traceparents)",
    )
    return parser


def profile_from_args(args: argparse.Namespace) -> EngineProfile:
    overrides = {name: getattr(args, name) for _flag, name, _kind, _help in _OVERRIDES}
    if args.num_gpu_blocks_override is not None and overrides["num_blocks"] is None:
        overrides["num_blocks"] = args.num_gpu_blocks_override
    return get_profile(args.profile).with_overrides(**overrides)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    import uvicorn

    from llmserve.workers.sim.app import create_app
    from llmserve.workers.sim.clock import RealClock
    from llmserve.workers.sim.tokenizer import load_tokenizer

    profile = profile_from_args(args)
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None and (Path(args.model) / "tokenizer.json").is_file():
        tokenizer_dir = args.model
    tokenizer = load_tokenizer(tokenizer_dir)
    app = create_app(
        args.model,
        profile=profile,
        clock=RealClock(args.speed),
        tokenizer=tokenizer,
        served_model_names=args.served_model_name or (),
        lora_modules=[name.split("=", 1)[0] for name in args.lora],
        max_loras=args.max_loras,
        legacy_metrics=args.legacy_metrics,
        enable_prefix_caching=args.enable_prefix_caching,
        otlp_traces_endpoint=args.otlp_traces_endpoint,
    )
    config = app.config
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
    )

    async def serve() -> None:
        import asyncio

        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn exposes only a flag
            await asyncio.sleep(0.002)
        if server.started:
            print(
                f"llmserve sim: {config.served_model_names[0]} on http://{args.host}:{args.port} "
                f"(profile {profile.name}, tokenizer {tokenizer.name}, speed {args.speed}x) "
                f"ready in {time.monotonic() - _STARTED:.2f} s",
                file=sys.stderr,
                flush=True,
            )
        await task

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:  # pragma: no cover - uvloop is a core dependency
        import asyncio

        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
