"""One gateway process: the controller's watch, the load ledger, demand reports, and the HTTP server.

`DataPlane.start()` binds the port (SO_REUSEPORT when several gateway processes share it: settings.reuse_port),
starts following the controller, and serves; requests that arrive before the first snapshot find no model (and
/ready says 503).
`stop()` drains (gateway/drain.py): /ready fails and new connections are refused at once, requests and streams in
flight get up to `settings.drain_timeout_s` to finish (then they are cut: 503 or a last error frame), the gRPC server
takes no new calls and gives those in flight the same time; then the watch and the reports stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket

from prometheus_client.registry import Collector

from gateway.app import Gateway, build_gateway
from gateway.ledger import LoadLedger
from gateway.reporting import DemandReporter
from gateway.settings import ControlLinkSettings, GatewaySettings
from gateway.watch import WatchedEndpoints
from llmserve.control import ControlClient
from llmserve.frontdoor import uvicorn_config
from llmserve.serving import ManagedServer, bind_socket

log = logging.getLogger("llmserve.gateway")
_BACKSTOP_S = 3.0  # uvicorn cancels what is still running this long after the drain deadline


def gateway_id() -> str:
    """Unique per gateway process start: the controller keeps one demand report per id."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class DataPlane:
    def __init__(
        self,
        settings: GatewaySettings,
        link: ControlLinkSettings,
        *,
        collectors: tuple[Collector, ...] = (),
    ) -> None:
        self.settings = settings
        self.link = link
        self.id = gateway_id()
        token = link.token.get_secret_value() if link.token is not None else None
        self.client = ControlClient(link.url, token)
        self.watch = WatchedEndpoints(self.client, self.id)
        self.ledger = LoadLedger()
        self.reporter = DemandReporter(self.client, self.ledger, self.id, interval_s=link.report_interval_s)
        self.gateway: Gateway = build_gateway(
            settings,
            self.watch,
            ledger=self.ledger,
            on_eject=self.reporter.suspect,
            readiness=self._readiness,
            collectors=collectors,
            graphs=self.watch,
            controller_status=self.client.status,  # the status page at /ui
        )
        self.server: ManagedServer | None = None
        self.port = settings.port
        self._serving: asyncio.Task[None] | None = None

    def _readiness(self) -> str | None:
        if not self.watch.synced.is_set():
            return f"no state from the controller at {self.link.url} yet ({self.watch.last_error or 'connecting'})"
        return None

    async def start(self) -> None:
        sock = bind_socket(self.settings.host, self.settings.port, reuse_port=self.settings.reuse_port)
        self.port = int(sock.getsockname()[1])
        self.watch.start()
        self.reporter.start()
        config = uvicorn_config(
            self.gateway.app,
            front_door=self.settings.front_door,
            access_log=self.settings.access_log,
            log_level="warning",
            # A backstop: the drain cuts what is left at its deadline, and the skeletons end their responses then.
            timeout_graceful_shutdown=math.ceil(self.settings.drain_timeout_s + _BACKSTOP_S),
            lifespan="on",
        )
        self.server = ManagedServer(config)
        self._serving = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]), name="gateway")
        while not self.server.started:
            if self._serving.done():
                await self._serving  # raises what stopped it
                raise RuntimeError("the gateway's server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("gateway %s on http://%s:%d (controller %s)", self.id, self.settings.host, self.port, self.link.url)

    async def wait_synced(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.watch.synced.wait(), timeout_s)
        return self.watch.synced.is_set()

    async def stop(self, drain_s: float | None = None) -> None:
        """Drain for `drain_s` (default: settings.drain_timeout_s), then stop."""
        drain_s = self.settings.drain_timeout_s if drain_s is None else drain_s
        drain = self.gateway.drain
        if drain.in_flight:
            log.info("gateway %s draining: %d request(s) in flight, up to %g s", self.id, drain.in_flight, drain_s)
        drain.begin(drain_s)
        grpc = self.gateway.grpc
        stopping_grpc = asyncio.ensure_future(grpc.stop(drain_s)) if grpc is not None else None
        if self.server is not None:
            self.server.config.timeout_graceful_shutdown = math.ceil(drain_s + _BACKSTOP_S)
            self.server.should_exit = True
        if self._serving is not None:
            with contextlib.suppress(Exception):
                await self._serving
        if stopping_grpc is not None:
            with contextlib.suppress(Exception):
                await stopping_grpc
        await self.reporter.stop()
        await self.watch.stop()
        await self.client.close()

    async def serve_until_stopped(self) -> None:
        """Until the server stops (its `should_exit`)."""
        if self._serving is not None:
            await self._serving
