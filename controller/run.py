"""One controller process: the published state, the controller and its backend, the autoscaler fed by the
gateways' demand reports, and the control API's HTTP server.

`ControlPlane.start(services, graphs)` restores the state directory (services and graphs applied earlier, replicas
that outlived the previous controller: re-adopted when healthy), applies `services` and `graphs` (the file given at
start) on top, starts the
autoscaler and then serves the control API, so that gateways see the adopted replicas in their first snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry

from controller.autoscaling.autoscaler import Autoscaler
from controller.backends import Backend
from controller.demand import DemandAggregator
from controller.metrics import ControllerCollector
from controller.reconciler import Controller
from controller.server import create_control_app
from controller.settings import ControllerSettings
from controller.state import ControlState
from controller.statedir import StateDir
from llmserve.frontdoor import FrontDoorSettings, uvicorn_config
from llmserve.serving import ManagedServer, bind_socket
from llmserve.spec import InferenceGraph, InferenceService

log = logging.getLogger("llmserve.controller")


class ControlPlane:
    def __init__(
        self,
        backend: Backend,
        settings: ControllerSettings,
        *,
        host: str,
        port: int,
        token: str,
        state_dir: StateDir | None,
        demand_stale_after_s: float = 5.0,
        front_door: FrontDoorSettings | None = None,
    ) -> None:
        self.host = host
        self.front_door = front_door or FrontDoorSettings()
        self.port = port
        self.token = token
        self.state = ControlState()
        self.demand = DemandAggregator(stale_after_s=demand_stale_after_s)
        self.controller = Controller(backend, self.state, settings, state_dir=state_dir, graphs=self.state)
        self.autoscaler = Autoscaler(self.controller, self.demand)
        self.metrics = CollectorRegistry(auto_describe=True)
        self.metrics.register(ControllerCollector(self.controller))
        self.app = create_control_app(
            self.state, self.controller, self.autoscaler, self.demand, token=token, metrics=self.metrics
        )
        self.server: ManagedServer | None = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self, services: list[InferenceService], graphs: list[InferenceGraph] | None = None) -> None:
        sock = bind_socket(self.host, self.port)  # first: a port in use fails before any worker is touched
        self.port = int(sock.getsockname()[1])
        await self.controller.start()
        if services or graphs:
            for line in self.controller.apply(services, graphs):
                log.info("%s", line)
        await self.autoscaler.start()
        config = uvicorn_config(
            self.app,
            front_door=self.front_door,
            error_envelope="v2",  # the control API's errors are {"error": "..."} on every path
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self.server = ManagedServer(config)
        self._serving = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]), name="control")
        while not self.server.started:
            if self._serving.done():
                await self._serving
                raise RuntimeError("the control API's server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("controller on %s (state %s)", self.url, self.state.resource_version)

    async def stop(self, *, keep_workers: bool = False) -> None:
        """Stop serving the API, the autoscaler, then every replica (unless `keep_workers`)."""
        self.state.end_watches()
        if self.server is not None:
            self.server.should_exit = True
        if self._serving is not None:
            with contextlib.suppress(Exception):
                await self._serving
        await self.autoscaler.stop()
        log.info("leaving the replicas running" if keep_workers else "stopping replicas")
        await self.controller.stop(keep_workers=keep_workers)

    async def serve_until_stopped(self) -> None:
        if self._serving is not None:
            await self._serving
