"""ModelRepository: the models of one runtime process, their lifecycle, and the memory budget.

States: registered (known, not in memory) -> loading -> ready; `unloaded` after an explicit unload (the
repository API), `failed` when loading failed. Requests for a registered model load it on demand; concurrent
requests share that one load. With a memory budget, making room for a model unloads the least-recently-used
ready models that have no request in flight (ModelMesh's idea); they return to `registered` and come back on
their next request. A model's cost is `memory_bytes` from its settings, or else the size of its artifact files.
The budget is soft only in one case: when every other loaded model is busy, the new one loads anyway (logged).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2 import ModelMetadata
from llmserve.runtimes.batching import AdaptiveBatcher
from llmserve.runtimes.metrics import RuntimeMetrics
from llmserve.runtimes.model import V2Model
from llmserve.runtimes.settings import ModelSettings

log = logging.getLogger("llmserve.runtime")

Fetch = Callable[[str], Path]  # storageUri -> local path (blocking; run in a thread)
ModelFactory = Callable[[ModelSettings, Path], V2Model]


class ModelState(enum.StrEnum):
    REGISTERED = "registered"
    LOADING = "loading"
    READY = "ready"
    UNLOADED = "unloaded"
    FAILED = "failed"


@dataclass(eq=False)
class ModelEntry:
    settings: ModelSettings
    state: ModelState = ModelState.REGISTERED
    model: V2Model | None = None
    batcher: AdaptiveBatcher | None = None
    metadata: ModelMetadata | None = None  # kept across evictions
    model_dir: Path | None = None
    size_bytes: int = 0
    last_used: float = 0.0
    inflight: int = 0
    loaded_once: bool = False
    error: str | None = None
    loading: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def servable(self) -> bool:
        """Ready now, or known good and loadable on demand."""
        return self.state is ModelState.READY or (self.state is ModelState.REGISTERED and self.loaded_once)


def artifact_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class ModelRepository:
    def __init__(
        self,
        fetch: Fetch,
        factory: ModelFactory,
        *,
        metrics: RuntimeMetrics,
        memory_budget_bytes: int | None = None,
        rescan: Callable[[], list[ModelSettings]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._factory = factory
        self._metrics = metrics
        self._rescan = rescan
        self._clock = clock
        self.memory_budget_bytes = memory_budget_bytes
        self.entries: dict[str, ModelEntry] = {}
        self.started = False
        metrics.memory_budget.set(memory_budget_bytes or 0)

    def register(self, settings: ModelSettings) -> ModelEntry:
        if settings.name in self.entries:
            raise ValueError(f"model '{settings.name}' is declared twice")
        entry = self.entries[settings.name] = ModelEntry(settings)
        self._metrics.loaded.labels(settings.name).set(0)
        return entry

    async def start(self) -> None:
        """Load every model once (verifying its artifact); failures are recorded, not raised."""
        for entry in list(self.entries.values()):
            try:
                await self.ensure_loaded(entry)
            except ServingError as exc:
                log.error("model %s failed to load: %s", entry.name, exc.message)
        self.started = True

    def ready(self) -> bool:
        return self.started and all(e.servable or e.state is ModelState.UNLOADED for e in self.entries.values())

    def get(self, name: str, version: str | None = None) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise ServingError(404, f"Model '{name}' is not served here.")
        if version is not None and version != entry.settings.version:
            known = entry.settings.version or "none"
            raise ServingError(404, f"Model '{name}' has no version '{version}' (versions: {known}).")
        return entry

    async def acquire(self, entry: ModelEntry) -> V2Model:
        """The loaded model, loading it first if needed; the caller must `release` it."""
        while entry.state is not ModelState.READY:  # a loop: another load may evict it before we resume
            if entry.state is ModelState.UNLOADED:
                raise ServingError(503, f"Model '{entry.name}' is unloaded; load it through the repository API.")
            if entry.state is ModelState.FAILED:
                raise ServingError(503, f"Model '{entry.name}' failed to load: {entry.error}")
            await self.ensure_loaded(entry)
        assert entry.model is not None
        entry.inflight += 1
        entry.last_used = self._clock()
        return entry.model

    def release(self, entry: ModelEntry) -> None:
        entry.inflight -= 1
        entry.last_used = self._clock()

    async def ensure_loaded(self, entry: ModelEntry) -> None:
        if entry.state is ModelState.READY:
            return
        if entry.loading is None:
            entry.loading = asyncio.get_running_loop().create_task(self._load(entry))
        try:
            await asyncio.shield(entry.loading)
        finally:
            if entry.loading is not None and entry.loading.done():
                entry.loading = None
        if entry.state in (ModelState.FAILED, ModelState.UNLOADED):
            raise ServingError(503, f"Model '{entry.name}' is not ready: {entry.error or entry.state.value}.")

    async def _load(self, entry: ModelEntry) -> None:
        entry.state = ModelState.LOADING
        entry.error = None
        try:
            if entry.model_dir is None:
                entry.model_dir = await asyncio.to_thread(self._fetch, entry.settings.uri)
            model = self._factory(entry.settings, entry.model_dir)
            entry.size_bytes = entry.settings.memory_bytes or artifact_size(entry.model_dir)
            await self._make_room(entry)
            await model.load()
        except Exception as exc:  # storage, framework or artifact errors: the model is failed, the server lives
            entry.state = ModelState.FAILED
            entry.error = exc.message if isinstance(exc, ServingError) else str(exc)
            log.error("loading model %s failed: %s", entry.name, entry.error)
            return
        entry.model = model
        entry.metadata = model.metadata()
        rows, requests = self._metrics.observer(entry.name)

        def observe(batch_rows: int, batch_requests: int) -> None:
            rows.observe(batch_rows)
            requests.observe(batch_requests)

        entry.batcher = AdaptiveBatcher(
            model.predict,
            max_batch_size=entry.settings.max_batch_size,
            max_latency_s=entry.settings.max_latency_ms / 1000,
            observe=observe,
        )
        entry.state = ModelState.READY
        entry.loaded_once = True
        entry.last_used = self._clock()
        self._metrics.loads.labels(entry.name).inc()
        self._metrics.loaded.labels(entry.name).set(1)
        self._update_memory()
        log.info("model %s ready (%d bytes charged)", entry.name, entry.size_bytes)

    def memory_used(self) -> int:
        return sum(e.size_bytes for e in self.entries.values() if e.state is ModelState.READY)

    async def _make_room(self, incoming: ModelEntry) -> None:
        budget = self.memory_budget_bytes
        if budget is None:
            return
        if incoming.size_bytes > budget:
            raise ServingError(
                503, f"Model '{incoming.name}' needs {incoming.size_bytes} bytes, more than the budget of {budget}."
            )
        while self.memory_used() + incoming.size_bytes > budget:
            idle = [e for e in self.entries.values() if e.state is ModelState.READY and e.inflight == 0]
            if not idle:
                log.warning("memory budget exceeded while loading %s: every loaded model is busy", incoming.name)
                return
            victim = min(idle, key=lambda e: e.last_used)
            await self._unload(victim, ModelState.REGISTERED, "evicted")

    async def load(self, name: str) -> None:
        """The repository API's load: (re)register from the model repository if new, then load."""
        entry = self.entries.get(name)
        if entry is None and self._rescan is not None:
            for settings in self._rescan():
                if settings.name == name:
                    entry = self.register(settings)
        if entry is None:
            raise ServingError(404, f"Model '{name}' is not in the model repository.")
        if entry.state is ModelState.FAILED:
            entry.model_dir = None  # fetch again: the artifact may have been fixed
        if entry.state in (ModelState.UNLOADED, ModelState.FAILED):
            entry.state = ModelState.REGISTERED
        await self.ensure_loaded(entry)

    async def unload(self, name: str) -> None:
        entry = self.get(name)
        if entry.loading is not None:
            await asyncio.shield(entry.loading)
        await self._unload(entry, ModelState.UNLOADED, "api")

    async def _unload(self, entry: ModelEntry, state: ModelState, reason: str) -> None:
        model, was_ready = entry.model, entry.state is ModelState.READY
        entry.state = state
        entry.model = None
        entry.batcher = None
        if model is not None:
            try:
                await model.unload()
            except Exception:
                log.exception("unloading model %s failed", entry.name)
        if was_ready:
            self._metrics.unloads.labels(entry.name, reason).inc()
            self._metrics.loaded.labels(entry.name).set(0)
            log.info("model %s unloaded (%s)", entry.name, reason)
        self._update_memory()

    def _update_memory(self) -> None:
        self._metrics.memory_used.set(self.memory_used())

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index: one row per model with its state."""
        rows = []
        for entry in self.entries.values():
            row = {"name": entry.name, "state": entry.state.value.upper()}
            if entry.settings.version:
                row["version"] = entry.settings.version
            if entry.error:
                row["reason"] = entry.error
            rows.append(row)
        return rows
