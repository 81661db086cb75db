"""`python -m llmserve.runtimes.server`: the predictive runtime as its own process.

    python -m llmserve.runtimes.server --host 127.0.0.1 --port 8080 --grpc-port 8081 \
        --model iris=/models/iris:sklearn --model churn=s3://bucket/churn.tar.gz [--model-repository DIR] \
        [--memory-budget 512Mi] [--max-batch-size 64] [--max-latency-ms 0]

REST and gRPC share one event loop (uvloop) and one DataPlane. The port opens at once: /v2/health/live
answers immediately, /v2/health/ready turns 200 once every model has loaded (or failed: then it stays 503 and
the failure is in the log and in /v2/repository/index). Frameworks are imported when their first model loads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import math
import signal
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from llmserve.frontdoor import add_front_door_arguments, front_door_from_args, grpc_server_options, uvicorn_config
from llmserve.protocol.v2 import ServerMetadata
from llmserve.runtimes.dataplane import DataPlane
from llmserve.runtimes.frameworks import guess_format, model_class
from llmserve.runtimes.metrics import RuntimeMetrics
from llmserve.runtimes.model import V2Model
from llmserve.runtimes.repository import ModelRepository
from llmserve.runtimes.rest import RuntimeApp
from llmserve.runtimes.settings import ModelSettings, RuntimeSettings, parse_model_arg, scan_repository
from llmserve.serving import ManagedServer
from llmserve.spec.models import parse_quantity
from llmserve.storage import ModelCache, fetch_model_dir

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("llmserve.runtime")
VERSION = "0.1.0"


def create_model(settings: ModelSettings, path: Path) -> V2Model:
    model_format = settings.format or guess_format(path)
    if model_format is None:
        raise ValueError(f"{path}: cannot tell the model format from its files; set it (NAME=URI:sklearn)")
    return model_class(model_format)(settings, path)


class Runtime:
    """The wired runtime: data plane, REST app and (optionally) the gRPC service; tests build it in-process."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.metrics = RuntimeMetrics()
        root = settings.model_repository
        self.repository = ModelRepository(
            partial(fetch_model_dir, cache=ModelCache(settings.cache_dir)),
            create_model,
            metrics=self.metrics,
            memory_budget_bytes=settings.memory_budget_bytes,
            rescan=partial(scan_repository, root) if root is not None else None,
        )
        for model in [*settings.models, *(scan_repository(root) if root is not None else [])]:
            self.repository.register(model)
        self.dataplane = DataPlane(self.repository, self.metrics, ServerMetadata(settings.server_name, VERSION))
        self.app = RuntimeApp(
            self.dataplane, max_body_bytes=settings.max_body_bytes, on_startup=self.start, on_shutdown=self.stop
        )
        self._loading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin loading models in the background; the port opens meanwhile."""
        self._loading = asyncio.get_running_loop().create_task(self._load_all())

    async def _load_all(self) -> None:
        await self.repository.start()
        # What exists now lives as long as the process: keep it out of the collector's way (p99).
        gc.collect()
        gc.freeze()
        log.info("runtime ready: %s", ", ".join(self.repository.entries) or "no models")

    async def stop(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loading


async def serve(settings: RuntimeSettings) -> None:
    """Serve until SIGTERM / SIGINT, then drain: no new connections or calls, those in flight get
    settings.drain_timeout_s to finish, then both servers stop."""
    runtime = Runtime(settings)
    config = uvicorn_config(
        runtime.app,
        host=settings.host,
        port=settings.port,
        front_door=settings.front_door,
        error_envelope="v2",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
    )
    server = ManagedServer(config)  # the signals are ours: both servers drain together
    grpc_server = None
    if settings.grpc_port is not None:
        grpc_server = await _start_grpc(runtime, settings.host, settings.grpc_port)
    loop = asyncio.get_running_loop()
    stopping_grpc: list[asyncio.Future[None]] = []

    def drain() -> None:
        if server.should_exit:
            return
        log.info("draining: in-flight requests may finish for %g s", settings.drain_timeout_s)
        server.should_exit = True
        if grpc_server is not None:
            stopping_grpc.append(asyncio.ensure_future(grpc_server.stop(grace=settings.drain_timeout_s)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, drain)
    try:
        await server.serve()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if grpc_server is not None:
            await (stopping_grpc[0] if stopping_grpc else grpc_server.stop(grace=1.0))


async def _start_grpc(runtime: Runtime, host: str, port: int) -> grpc.aio.Server:
    import grpc

    from llmserve.runtimes.grpc_service import InferenceServicer, generic_handler

    limits = grpc_server_options(runtime.settings.front_door, max_message_bytes=runtime.settings.max_body_bytes)
    grpc_server = grpc.aio.server(options=[*limits, ("grpc.max_send_message_length", runtime.settings.max_body_bytes)])
    grpc_server.add_generic_rpc_handlers((generic_handler(InferenceServicer(runtime.dataplane)),))
    bound = grpc_server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"cannot bind gRPC to {host}:{port}")
    await grpc_server.start()
    log.info("gRPC on %s:%d", host, bound)
    return grpc_server


def parse_args(argv: list[str] | None = None) -> RuntimeSettings:
    parser = argparse.ArgumentParser(
        prog="python -m llmserve.runtimes.server", description="llmserve's V2 runtime for predictive models."
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address for REST and gRPC")
    parser.add_argument("--port", type=int, default=8080, help="REST port")
    parser.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: no gRPC)")
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME=URI[:FORMAT]", help="serve a model (repeatable)"
    )
    parser.add_argument("--model-repository", type=Path, default=None, help="a directory of model directories")
    parser.add_argument("--memory-budget", default=None, help="memory for loaded models, e.g. 512Mi (LRU beyond)")
    parser.add_argument("--max-batch-size", type=int, default=None, help="batch size for the --model models")
    parser.add_argument("--max-latency-ms", type=float, default=None, help="batch wait for the --model models")
    parser.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--cache-dir", type=Path, default=None, help="where remote artifacts are cached")
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--drain-timeout", type=float, default=30.0, help="s: in-flight requests may finish after SIGTERM"
    )
    add_front_door_arguments(parser)
    args = parser.parse_args(argv)
    try:
        models = [parse_model_arg(value) for value in args.model]
    except ValueError as exc:
        parser.error(str(exc))
    overrides: dict[str, object] = {}
    if args.max_batch_size is not None:
        overrides["max_batch_size"] = args.max_batch_size
    if args.max_latency_ms is not None:
        overrides["max_latency_ms"] = args.max_latency_ms
    models = [m.model_copy(update=overrides) for m in models]
    budget = int(parse_quantity(args.memory_budget)) if args.memory_budget else None
    if not models and args.model_repository is None:
        parser.error("give at least one --model or a --model-repository")
    return RuntimeSettings(
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        models=models,
        model_repository=args.model_repository,
        memory_budget_bytes=budget,
        max_body_bytes=args.max_body_bytes,
        front_door=front_door_from_args(parser, args),
        drain_timeout_s=args.drain_timeout,
        cache_dir=args.cache_dir,
        log_level=args.log_level,
    )


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings))


if __name__ == "__main__":
    main()
