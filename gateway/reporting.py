"""What a gateway tells the controller: its demand every `interval_s` (from the load ledger, sequence-numbered),
and the replicas it took out of rotation (so that the controller checks and replaces them). Sent in the
background; a controller that cannot be reached only makes the gateway log it once per outage."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.ledger import LoadLedger
from llmserve.control import ControlAPIError, ControlClient
from llmserve.endpoints import Endpoint

log = logging.getLogger("llmserve.gateway")


class DemandReporter:
    def __init__(self, client: ControlClient, ledger: LoadLedger, gateway_id: str, *, interval_s: float = 1.0) -> None:
        self.client = client
        self.ledger = ledger
        self.gateway_id = gateway_id
        self.interval_s = interval_s
        self.seq = 0
        self.failing = False
        self._task: asyncio.Task[None] | None = None
        self._sent: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="demand reports")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._sent) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def report_once(self) -> None:
        self.seq += 1
        services = {name: load.demand() for name, load in self.ledger.services().items()}
        await self.client.report_demand(self.gateway_id, self.seq, services)

    def suspect(self, endpoint: Endpoint, reason: str) -> None:
        """Tell the controller that this gateway stopped using `endpoint` (an Ejector's on_eject)."""

        async def send() -> None:
            try:
                await self.client.suspect(self.gateway_id, endpoint.service, endpoint.replica_id, endpoint.url, reason)
            except ControlAPIError as exc:
                log.warning("could not report replica %s to the controller: %s", endpoint.replica_id, exc)

        try:
            task = asyncio.get_running_loop().create_task(send())
        except RuntimeError:  # no running loop (unit tests): nothing to send
            return
        self._sent.add(task)
        task.add_done_callback(self._sent.discard)

    async def _run(self) -> None:
        while True:
            try:
                await self.report_once()
                if self.failing:
                    log.info("demand reports reach the controller again")
                self.failing = False
            except ControlAPIError as exc:
                if not self.failing:
                    log.warning("demand report failed (%s); retrying every %.1f s", exc, self.interval_s)
                self.failing = True
            except Exception:
                log.exception("demand report failed")
            await asyncio.sleep(self.interval_s)
