"""The llmserve gateway alone, in front of fixed worker URLs (no controller), for benchmarks.

    python benchmarks/gateway_overhead/serve_gateway.py --port 9002 --worker http://127.0.0.1:9000 --model m \
        [--routing-profile token-aware] [--tokenizer-dir DIR] [--protocol v2 [--grpc-port 9003]] [--upstream aiohttp] \
        [--otlp-endpoint URL]

`--protocol v2`: the workers are V2 runtimes (`python -m llmserve.runtimes.server`) serving MODEL; the gateway
routes /v2/models/MODEL/... (and KServe V1 :predict) to them. `--upstream aiohttp`: the gateway's worker client
is aiohttp's (benchmarks/gateway_overhead/aiohttp_upstream.py) instead of gateway/upstream.py. Profiles: the
built-in ones and configs/routing/*.yaml, every picker seeded from `--seed`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn

from gateway.app import create_app
from gateway.ledger import LoadLedger
from gateway.routing import Scheduler, load_profiles
from gateway.settings import GatewaySettings
from gateway.tracing import TracingSettings
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo

PROFILES = Path(__file__).resolve().parents[2] / "configs" / "routing"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument("--worker", action="append", required=True, help="worker URL (repeatable)")
    parser.add_argument("--model", default="m")
    parser.add_argument("--routing-profile", default="token-aware")
    parser.add_argument("--tokenizer-dir", default=None, help="model directory with tokenizer.json")
    parser.add_argument("--protocol", choices=["openai", "v2"], default="openai", help="what the workers speak")
    parser.add_argument("--grpc-port", type=int, default=0, help="the gateway's gRPC port (0: off)")
    parser.add_argument("--worker-grpc", action="append", default=[], help="V2 worker gRPC host:port (repeatable)")
    parser.add_argument("--upstream", choices=["home", "aiohttp"], default="home", help="the client to the workers")
    parser.add_argument("--seed", type=int, default=0, help="the routing profiles' pickers draw from this seed")
    parser.add_argument("--otlp-endpoint", default=None, help="trace requests to this OTLP collector (else OTEL_*)")
    args = parser.parse_args()
    if args.upstream == "aiohttp":  # the one place the variant is swapped in (create_app builds the pool)
        import gateway.app
        from benchmarks.gateway_overhead.aiohttp_upstream import AiohttpUpstreamPool

        gateway.app.UpstreamPool = AiohttpUpstreamPool  # type: ignore[misc,assignment]
    registry = EndpointRegistry()
    registry.declare_service(
        ServiceInfo(
            name=args.model,
            model_name=args.model,
            protocol=args.protocol,
            routing_profile=args.routing_profile,
            tokenizer_dir=args.tokenizer_dir,
        )
    )
    for i, url in enumerate(args.worker):
        grpc_address = args.worker_grpc[i] if i < len(args.worker_grpc) else None
        registry.publish(Endpoint(args.model, f"{args.model}-{i}", url, grpc_address))
    profiles = load_profiles(PROFILES, seed=args.seed)  # the built-ins and configs/routing (sticky-sessions, ...)
    if args.routing_profile not in profiles:
        raise SystemExit(f"unknown routing profile {args.routing_profile!r}; known: {', '.join(sorted(profiles))}")
    scheduler = Scheduler(profiles, LoadLedger(), default_profile=args.routing_profile)
    tracing = TracingSettings.from_environment(os.environ, otlp_endpoint=args.otlp_endpoint)
    settings = GatewaySettings(port=args.port, grpc_port=args.grpc_port, tracing=tracing)
    app = create_app(settings, registry, scheduler=scheduler)
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, http="httptools", loop="uvloop", access_log=False, log_level="warning"
    )


if __name__ == "__main__":
    main()
