"""The gateway: its parts built from settings and an endpoint reader, every dependency passed in (tests build it
with fakes). `build_gateway` returns the parts and the ASGI app; `create_app` just the app."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from prometheus_client.registry import Collector

from gateway import errors
from gateway.activator import Activator, ActivatorSettings
from gateway.capacity import Capacity, ReplicaCap
from gateway.dispatch import DispatchDeps, Dispatcher
from gateway.drain import Drain
from gateway.ejection import EjectingView, Ejector, OnEject
from gateway.fastpath import GatewayApp
from gateway.graph.routes import GraphRoutes, attach_graphs
from gateway.graph.source import GraphSource, StaticGraphs
from gateway.health import attach_router as attach_health
from gateway.health.router import Readiness
from gateway.ledger import LoadLedger
from gateway.metrics import GatewayMetrics, LedgerCollector
from gateway.openai.chat_completions import attach_router as attach_chat_completions
from gateway.openai.completions import attach_router as attach_completions
from gateway.openai.embeddings import attach_router as attach_embeddings
from gateway.openai.models import attach_router as attach_models
from gateway.openapi import attach_openapi
from gateway.payload_log import PayloadLogCollector, PayloadLogger
from gateway.recent_errors import RecentErrors
from gateway.routing import Scheduler, SignalScraper, load_profiles
from gateway.settings import GatewaySettings
from gateway.tracing import RequestTracer, build_tracer
from gateway.transform import TransformerClient, Transformers
from gateway.upstream import UpstreamPool
from gateway.v2 import attach_router as attach_v2
from gateway.v2 import start_grpc
from llmserve.endpoints import EndpointReader

if TYPE_CHECKING:
    from gateway.ui import StatusSource
    from gateway.v2.grpc_proxy import GrpcProxy

AppExtension = Callable[[FastAPI], None]


@dataclass
class Gateway:
    """The gateway's parts, for the code that composes it (the CLI) and for tests."""

    app: GatewayApp
    ledger: LoadLedger
    scheduler: Scheduler
    activator: Activator
    ejector: Ejector
    endpoints: EndpointReader  # the view every route reads: watched endpoints minus ejected replicas
    metrics: GatewayMetrics
    pool: UpstreamPool
    grpc: GrpcProxy | None = field(default=None)  # set while serving, when settings.grpc_port is set
    graphs: GraphRoutes | None = field(default=None)  # the InferenceGraphs it serves
    tracer: RequestTracer | None = field(default=None)
    errors: RecentErrors | None = field(default=None)  # the last 5xx answers (the status page shows them)
    drain: Drain = field(default_factory=Drain)  # the requests in flight; DataPlane.stop() drains them


def build_gateway(
    settings: GatewaySettings,
    endpoints: EndpointReader,
    *,
    ledger: LoadLedger | None = None,
    scheduler: Scheduler | None = None,
    metrics: GatewayMetrics | None = None,
    on_eject: OnEject | None = None,
    readiness: Readiness | None = None,
    collectors: tuple[Collector, ...] = (),
    extensions: tuple[AppExtension, ...] = (),
    graphs: GraphSource | None = None,
    tracer: RequestTracer | None = None,
    controller_status: StatusSource | None = None,
) -> Gateway:
    """The gateway. `on_eject` hears about replicas this gateway takes out of rotation (the CLI tells the
    controller); `readiness` says why /ready must fail (the controller's first snapshot has not come); `collectors`
    add metrics to /metrics; `extensions` may add routes; `graphs` is where it learns InferenceGraphs (the
    controller's watch; default: none). `tracer`: spans go there (default: built from settings.tracing; off unless
    it names an endpoint). `controller_status`: the controller's status (GET /control/v1/status); with it, the
    status page is served at /ui."""
    metrics = metrics or GatewayMetrics()
    tracer = tracer if tracer is not None else build_tracer(settings.tracing)
    recent_errors = RecentErrors()
    ledger = scheduler.ledger if scheduler is not None else (ledger or LoadLedger())
    pool = UpstreamPool(
        connect_timeout=settings.upstream_connect_timeout,
        idle_timeout=settings.upstream_idle_timeout,
    )
    if scheduler is None:
        profiles_dir = Path(settings.routing_profiles_dir) if settings.routing_profiles_dir else None
        scheduler = Scheduler(load_profiles(profiles_dir), ledger, default_profile=settings.default_routing_profile)
    ejector = Ejector(
        base_s=settings.ejection_base_s,
        on_eject=on_eject,
        outlier_failures=settings.outlier_consecutive_failures,
        population=lambda service: sum(e.component == "predictor" for e in endpoints.ready_endpoints(service)),
    )
    view = EjectingView(endpoints, ejector)
    scraper = SignalScraper(view, ledger, pool, interval_s=settings.scrape_interval_s)
    activator = Activator(
        view,
        ActivatorSettings(
            queue_depth=settings.activator_queue_depth,
            timeout_s=settings.activator_timeout_s,
            admission_timeout_s=settings.admission_timeout_s,
            keepalive_s=settings.activator_keepalive_s,
            retry_after_s=settings.retry_after_seconds,
        ),
        ledger,
        metrics,
        capacity=Capacity(ledger, ReplicaCap(settings.max_requests_per_replica, settings.max_tokens_per_replica)),
    )
    payload_log = PayloadLogger(secrets=[key.get_secret_value() for key in settings.api_keys])
    transformers = Transformers(view, TransformerClient(pool), activator, ejector)
    drain = Drain()
    dispatcher = Dispatcher(
        DispatchDeps(
            view, scheduler, ledger, pool, activator, ejector, metrics, settings, tracer, recent_errors,
            transformers=transformers, payload_log=payload_log, drain=drain,
        )
    )  # fmt: skip
    metrics.registry.register(LedgerCollector(ledger, view))
    metrics.registry.register(PayloadLogCollector(payload_log))
    metrics.declare(lambda: [info.name for info in view.services()])
    for collector in collectors:
        metrics.registry.register(collector)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Everything allocated so far (imports, the app) lives as long as the process: move it out of the
        # collector's way, so full collections under load stay short (they showed as p99 spikes).
        gc.collect()
        gc.freeze()
        scraper.start()
        gateway.grpc = await start_grpc(dispatcher)  # None unless settings.grpc_port
        yield
        if gateway.grpc is not None:
            await gateway.grpc.stop()
        await scraper.stop()
        await payload_log.close()
        await pool.close()
        tracer.close()  # exports what is still buffered

    app = GatewayApp(
        title="llmserve gateway",
        lifespan=lifespan,
        api_keys=[key.get_secret_value() for key in settings.api_keys],
    )
    errors.install_error_handlers(app)
    attach_openapi(app)
    graph_routes = attach_graphs(app, dispatcher, graphs or StaticGraphs())
    attach_chat_completions(app, dispatcher, graph_routes)
    attach_completions(app, dispatcher)
    attach_embeddings(app, dispatcher)
    attach_models(app, view, graph_routes.exposed_models)
    attach_v2(app, dispatcher)
    attach_health(app, view, metrics, _draining_or(drain, readiness))
    if controller_status is not None:
        from gateway.ui import status_page
        from gateway.ui.source import GatewayStatus

        page = status_page(GatewayStatus(controller_status, ledger, activator, recent_errors, view))
        app.add_fast_prefix(page.settings.prefix, page)
    for extend in extensions:
        extend(app)
    gateway = Gateway(app, ledger, scheduler, activator, ejector, view, metrics, pool, graphs=graph_routes,
                      tracer=tracer, errors=recent_errors, drain=drain)  # fmt: skip
    return gateway


def _draining_or(drain: Drain, readiness: Readiness | None) -> Readiness:
    """/ready fails while the process drains, else for the caller's reason (if any)."""

    def blocked() -> str | None:
        return drain.readiness() or (readiness() if readiness is not None else None)

    return blocked


def create_app(
    settings: GatewaySettings,
    endpoints: EndpointReader,
    *,
    scheduler: Scheduler | None = None,
    metrics: GatewayMetrics | None = None,
    extensions: tuple[AppExtension, ...] = (),
) -> GatewayApp:
    """The gateway's ASGI app (see build_gateway for its parts)."""
    return build_gateway(settings, endpoints, scheduler=scheduler, metrics=metrics, extensions=extensions).app
