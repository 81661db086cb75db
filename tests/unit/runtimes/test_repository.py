"""Density: many models under a memory budget; least-recently-used idle models are unloaded and come back on
demand; in-flight models are never unloaded; all of it visible in the metrics."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2 import InferTensor, TensorMetadata
from llmserve.runtimes.metrics import RuntimeMetrics
from llmserve.runtimes.model import V2Model
from llmserve.runtimes.repository import ModelRepository, ModelState
from llmserve.runtimes.settings import ModelSettings
from tests.support.v2_models import TrainedModel
from tests.unit.runtimes.conftest import settings_for


class CountingModel(V2Model):
    loads: dict[str, int] = {}
    unloads: dict[str, int] = {}
    gate: asyncio.Event | None = None

    async def load(self) -> None:
        CountingModel.loads[self.settings.name] = CountingModel.loads.get(self.settings.name, 0) + 1

    async def unload(self) -> None:
        CountingModel.unloads[self.settings.name] = CountingModel.unloads.get(self.settings.name, 0) + 1

    async def predict(self, inputs: Sequence[InferTensor], outputs: Sequence[str]) -> list[InferTensor]:
        if CountingModel.gate is not None:
            await CountingModel.gate.wait()
        return [InferTensor("y", "FP64", inputs[0].shape, inputs[0].data)]

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("y",)

    def input_metadata(self) -> tuple[TensorMetadata, ...]:
        return ()

    def output_metadata(self) -> tuple[TensorMetadata, ...]:
        return ()


@pytest.fixture
def repository(tmp_path: Path) -> ModelRepository:
    CountingModel.loads, CountingModel.unloads, CountingModel.gate = {}, {}, None
    ticks = itertools.count()
    repo = ModelRepository(
        lambda uri: tmp_path,
        CountingModel,
        metrics=RuntimeMetrics(),
        memory_budget_bytes=300,
        clock=lambda: float(next(ticks)),
    )
    for name in "abcd":
        repo.register(ModelSettings(name=name, uri=str(tmp_path), memory_bytes=100))
    return repo


async def use(repo: ModelRepository, name: str) -> None:
    entry = repo.get(name)
    await repo.acquire(entry)
    repo.release(entry)


def loaded(repo: ModelRepository) -> set[str]:
    return {name for name, e in repo.entries.items() if e.state is ModelState.READY}


async def test_least_recently_used_is_unloaded_and_reloaded_on_demand(repository: ModelRepository) -> None:
    await repository.start()  # loads a, b, c, then d evicts a (the least recently used)
    assert loaded(repository) == {"b", "c", "d"}
    assert repository.ready()
    assert repository.entries["a"].servable  # evicted, still servable
    await use(repository, "b")  # b becomes the most recent; c is now the LRU
    await use(repository, "a")  # a comes back, evicting c
    assert loaded(repository) == {"a", "b", "d"}
    assert CountingModel.loads == {"a": 2, "b": 1, "c": 1, "d": 1}
    assert CountingModel.unloads == {"a": 1, "c": 1}
    assert repository.memory_used() == 300
    text = repository._metrics.render().decode()
    assert 'llmserve_v2_model_unloads_total{model="a",reason="evicted"} 1.0' in text
    assert 'llmserve_v2_model_loaded{model="c"} 0.0' in text
    assert "llmserve_v2_memory_used_bytes 300.0" in text
    assert "llmserve_v2_memory_budget_bytes 300.0" in text


async def test_busy_models_are_not_evicted(repository: ModelRepository) -> None:
    await repository.start()
    gate = CountingModel.gate = asyncio.Event()
    x = [InferTensor("x", "FP64", [1, 1], np.ones((1, 1)))]
    busy = {}
    for name in ("b", "c", "d"):
        entry = repository.get(name)
        model = await repository.acquire(entry)
        busy[name] = asyncio.ensure_future(model.predict(x, ["y"]))
    await use(repository, "a")  # no idle victim: loads over budget (soft) rather than failing
    assert loaded(repository) == {"a", "b", "c", "d"}
    gate.set()
    for name, task in busy.items():
        await task
        repository.release(repository.entries[name])
    assert CountingModel.unloads == {"a": 1}


async def test_a_model_larger_than_the_budget_is_refused(repository: ModelRepository, tmp_path: Path) -> None:
    repository.register(ModelSettings(name="huge", uri=str(tmp_path), memory_bytes=1000))
    with pytest.raises(ServingError, match="more than the budget") as caught:
        await use(repository, "huge")
    assert caught.value.status == 503
    assert repository.entries["huge"].state is ModelState.FAILED


async def test_concurrent_requests_share_one_load(repository: ModelRepository) -> None:
    await asyncio.gather(*(use(repository, "a") for _ in range(5)))
    assert CountingModel.loads == {"a": 1}


async def test_lru_through_rest_with_real_models(
    make_runtime: Callable[..., Any], iris_model: TrainedModel, tmp_path: Path
) -> None:
    names = ["m0", "m1", "m2"]
    client = await make_runtime(
        [settings_for(iris_model, name=n, memory_bytes=1000) for n in names], memory_budget_bytes=2000
    )
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
    for name in names * 2:  # every request after the first round needs a reload
        response = await client.infer(name, body)
        assert response.status_code == 200
        assert response.json()["outputs"][0]["data"] == [0]
    metrics = (await client.http.get("/metrics")).text
    assert 'llmserve_v2_model_loads_total{model="m0"} 3.0' in metrics  # startup, then two reloads
    assert 'llmserve_v2_model_unloads_total{model="m0",reason="evicted"}' in metrics
    assert (await client.http.get("/v2/health/ready")).status_code == 200
    assert (await client.http.get("/v2/models/m0/ready")).status_code == 200
