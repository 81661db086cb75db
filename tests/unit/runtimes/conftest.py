"""Trained models (once per session) and an in-process runtime reachable over ASGI, for runtime unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from llmserve.runtimes.server import Runtime
from llmserve.runtimes.settings import ModelSettings, RuntimeSettings
from tests.conftest import SHARED_SPECS
from tests.support import v2_models
from tests.support.v2_models import TrainedModel
from tests.support.v2_schemas import V2Schemas


@pytest.fixture(scope="session")
def v2_schemas() -> V2Schemas:
    return V2Schemas.load(SHARED_SPECS / "open-inference-protocol" / "open_inference_rest.yaml")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def iris_model(models_dir: Path) -> TrainedModel:
    return v2_models.sklearn_iris(models_dir / "iris")


@pytest.fixture(scope="session")
def ridge_model(models_dir: Path) -> TrainedModel:
    return v2_models.sklearn_regressor(models_dir / "ridge")


@pytest.fixture(scope="session")
def xgb_model(models_dir: Path) -> TrainedModel:
    return v2_models.xgboost_iris(models_dir / "xgb")


@pytest.fixture(scope="session")
def lgbm_model(models_dir: Path) -> TrainedModel:
    return v2_models.lightgbm_regressor(models_dir / "lgbm")


@pytest.fixture(scope="session")
def lgbm_iris_model(models_dir: Path) -> TrainedModel:
    return v2_models.lightgbm_iris(models_dir / "lgbm-iris")


RuntimeFactory = Callable[..., "RuntimeClient"]


class RuntimeClient:
    """A Runtime whose models are loaded, and an httpx client speaking ASGI to its REST app."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=runtime.app), base_url="http://runtime")

    async def infer(self, model: str, body: object, **kwargs: object) -> httpx.Response:
        return await self.http.post(f"/v2/models/{model}/infer", json=body, **kwargs)


@pytest.fixture
async def make_runtime(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    clients: list[RuntimeClient] = []

    async def make(models: list[ModelSettings], **settings: object) -> RuntimeClient:
        runtime = Runtime(RuntimeSettings(models=models, cache_dir=tmp_path / "cache", **settings))
        await runtime.repository.start()
        client = RuntimeClient(runtime)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.http.aclose()


def settings_for(model: TrainedModel, **extra: object) -> ModelSettings:
    return ModelSettings.model_validate({"name": model.name, "uri": str(model.path), **extra})
