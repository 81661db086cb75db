"""DataPlane: every V2 operation, independent of transport. REST (rest.py) and gRPC (grpc_service.py) decode
their wire format into `InferenceRequest`s with numpy data, call this, and encode what comes back.

Errors are `ServingError`s only: 404 unknown model or version, 400 bad input or unknown output, 503 model
not ready (failed, unloaded, over budget), 500 for anything the model raised unexpectedly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2 import InferenceRequest, InferenceResponse, InferTensor, ModelMetadata, ServerMetadata
from llmserve.runtimes.metrics import RuntimeMetrics
from llmserve.runtimes.model import V2Model
from llmserve.runtimes.repository import ModelEntry, ModelRepository

log = logging.getLogger("llmserve.runtime")


class DataPlane:
    def __init__(self, repository: ModelRepository, metrics: RuntimeMetrics, server: ServerMetadata) -> None:
        self.repository = repository
        self.metrics = metrics
        self.server = server

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.repository.ready()

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.repository.get(name, version).servable

    def server_metadata(self) -> ServerMetadata:
        return self.server

    async def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        entry = self.repository.get(name, version)
        if entry.metadata is None:  # never loaded yet: load it to learn its tensors
            await self.repository.acquire(entry)
            self.repository.release(entry)
        assert entry.metadata is not None
        return entry.metadata

    def model_names(self) -> list[str]:
        return list(self.repository.entries)

    async def infer(self, name: str, version: str | None, request: InferenceRequest) -> InferenceResponse:
        entry = self.repository.get(name, version)

        async def run(model: V2Model) -> list[InferTensor]:
            outputs = self._requested_outputs(model, request)
            assert entry.batcher is not None
            return await entry.batcher.submit(request.inputs, outputs)

        outputs = await self._measured(entry, run)
        return InferenceResponse(model_name=name, model_version=entry.settings.version, id=request.id, outputs=outputs)

    async def explain(self, name: str, version: str | None, request: InferenceRequest) -> InferenceResponse:
        entry = self.repository.get(name, version)

        async def run(model: V2Model) -> list[InferTensor]:
            return await model.explain(request.inputs)

        outputs = await self._measured(entry, run)
        return InferenceResponse(model_name=name, model_version=entry.settings.version, id=request.id, outputs=outputs)

    async def _measured(
        self, entry: ModelEntry, work: Callable[[V2Model], Awaitable[list[InferTensor]]]
    ) -> list[InferTensor]:
        started = time.perf_counter()
        status = 200
        try:
            model = await self.repository.acquire(entry)
            try:
                return await work(model)
            finally:
                self.repository.release(entry)
        except ServingError as exc:
            status = exc.status
            raise
        except Exception as exc:
            status = 500
            log.exception("model %s failed", entry.name)
            raise ServingError(500, f"Model '{entry.name}' failed: {type(exc).__name__}: {exc}") from None
        finally:
            self.metrics.request_done(entry.name, status, time.perf_counter() - started if status == 200 else None)

    @staticmethod
    def _requested_outputs(model: V2Model, request: InferenceRequest) -> Sequence[str]:
        if not request.outputs:
            return model.default_outputs
        names = tuple(output.name for output in request.outputs)
        available = model.output_names
        for output_name in names:
            if output_name not in available:
                raise ServingError(
                    400,
                    f"Model '{model.settings.name}' has no output '{output_name}' (outputs: {', '.join(available)}).",
                )
        return names

    async def load(self, name: str) -> None:
        await self.repository.load(name)

    async def unload(self, name: str) -> None:
        await self.repository.unload(name)

    def repository_index(self) -> list[dict[str, str]]:
        return self.repository.index()
