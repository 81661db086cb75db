"""create_app: the gateway as a FastAPI app, with every dependency passed in (tests build it with fakes)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from gateway import errors
from gateway.activator import Activator, ActivatorSettings
from gateway.demand import DemandTracker
from gateway.fastpath import GatewayApp
from gateway.health import attach_router as attach_health
from gateway.metrics import GatewayMetrics
from gateway.openai.chat_completions import attach_router as attach_chat_completions
from gateway.openai.completions import attach_router as attach_completions
from gateway.openai.embeddings import attach_router as attach_embeddings
from gateway.openai.models import attach_router as attach_models
from gateway.openai.proxy import ProxyDeps
from gateway.routing import LoadBoard, Scheduler, SignalScraper, load_profiles
from gateway.settings import GatewaySettings
from gateway.upstream import UpstreamPool
from gateway.v2 import V2Deps, start_grpc
from gateway.v2 import attach_router as attach_v2
from llmserve.endpoints import EndpointReader

AppExtension = Callable[[FastAPI], None]


def create_app(
    settings: GatewaySettings,
    endpoints: EndpointReader,
    *,
    scheduler: Scheduler | None = None,
    metrics: GatewayMetrics | None = None,
    extensions: tuple[AppExtension, ...] = (),
) -> GatewayApp:
    """The gateway app. `extensions` may add routes (the CLI adds the controller's admin API this way)."""
    metrics = metrics or GatewayMetrics()
    pool = UpstreamPool(
        connect_timeout=settings.upstream_connect_timeout,
        idle_timeout=settings.upstream_idle_timeout,
    )
    board = scheduler.board if scheduler is not None else LoadBoard()
    if scheduler is None:
        profiles_dir = Path(settings.routing_profiles_dir) if settings.routing_profiles_dir else None
        scheduler = Scheduler(load_profiles(profiles_dir), board, default_profile=settings.default_routing_profile)
    scraper = SignalScraper(endpoints, board, pool, interval_s=settings.scrape_interval_s)
    demand = DemandTracker()
    activator = Activator(
        endpoints,
        ActivatorSettings(
            queue_depth=settings.activator_queue_depth,
            timeout_s=settings.activator_timeout_s,
            keepalive_s=settings.activator_keepalive_s,
            retry_after_s=settings.retry_after_seconds,
        ),
        demand,
        metrics,
    )
    v2_deps = V2Deps(endpoints, board, pool, metrics, settings, demand, activator)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Everything allocated so far (imports, the app) lives as long as the process: move it out of the
        # collector's way, so full collections under load stay short (they showed as p99 spikes).
        gc.collect()
        gc.freeze()
        scraper.start()
        grpc_proxy = await start_grpc(v2_deps)  # None unless settings.grpc_port
        app.state.grpc_proxy = grpc_proxy
        yield
        if grpc_proxy is not None:
            await grpc_proxy.stop()
        await scraper.stop()
        await pool.close()

    app = GatewayApp(
        title="llmserve gateway",
        lifespan=lifespan,
        api_keys=[key.get_secret_value() for key in settings.api_keys],
    )
    app.state.metrics = metrics
    app.state.upstream_pool = pool
    app.state.scheduler = scheduler
    app.state.demand = demand
    app.state.activator = activator
    errors.install_error_handlers(app)

    deps = ProxyDeps(
        endpoints=endpoints,
        scheduler=scheduler,
        pool=pool,
        metrics=metrics,
        settings=settings,
        demand=demand,
        activator=activator,
    )
    attach_chat_completions(app, deps)
    attach_completions(app, deps)
    attach_embeddings(app, deps)
    attach_models(app, endpoints)
    attach_v2(app, v2_deps)
    attach_health(app, endpoints, metrics)
    for extend in extensions:
        extend(app)
    return app
