"""configs/iris.yaml runs on a fresh clone: its shipped model (configs/iris, trained by scripts/train_iris.py) is
what the script makes, and `llmserve up -f configs/iris.yaml` answers V1 and V2 requests through the gateway."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from llmserve.spec import load_services
from tests.conftest import REPO
from tests.support.up import llmserve_up

SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.2, 3.4, 5.4, 2.3]


def predict(model_dir: Path) -> np.ndarray:  # type: ignore[type-arg]
    import xgboost as xgb
    from sklearn.datasets import load_iris

    booster = xgb.Booster()
    booster.load_model(str(model_dir / "model.json"))
    x, _ = load_iris(return_X_y=True)
    return np.asarray(booster.inplace_predict(x))


def test_the_shipped_model_is_what_the_script_trains(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "scripts" / "train_iris.py"), str(tmp_path)], check=True)
    shipped, fresh = predict(REPO / "configs" / "iris"), predict(tmp_path)
    np.testing.assert_allclose(fresh, shipped, atol=1e-6)
    from sklearn.datasets import load_iris

    _, y = load_iris(return_X_y=True)
    assert (shipped.argmax(axis=1) == y).mean() > 0.95


def test_the_config_names_the_shipped_model() -> None:
    (service,) = load_services(REPO / "configs" / "iris.yaml")
    assert (service.runtime, service.spec.predictor.model.storage_uri) == ("llmserve-v2", "file://./configs/iris")
    assert (REPO / "configs" / "iris" / "model.json").is_file()


@pytest.mark.timeout(180)
def test_llmserve_up_serves_the_iris_example(tmp_path: Path) -> None:
    with llmserve_up(REPO / "configs" / "iris.yaml", tmp_path) as up:
        v1 = httpx.post(f"{up.url}/v1/models/iris:predict", json={"instances": [SETOSA, VIRGINICA]}, timeout=120)
        assert v1.status_code == 200, up.tail()
        probabilities = np.asarray(v1.json()["predictions"])
        assert probabilities.argmax(axis=1).tolist() == [0, 2]
        tensor = {"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": SETOSA}
        v2 = httpx.post(f"{up.url}/v2/models/iris/infer", json={"inputs": [tensor]}, timeout=60)
        assert v2.status_code == 200
        assert v2.json()["outputs"][0]["name"] == "predict"
