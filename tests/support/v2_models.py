"""Small predictive models trained on the spot and saved the way users save them, for runtime tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class TrainedModel:
    name: str
    path: Path  # the model directory
    model_format: str
    model: Any  # the library's own object, for expected values
    x: np.ndarray[Any, Any]  # a few rows to predict


def iris() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x, y


def sklearn_iris(folder: Path, *, summary: bool = True) -> TrainedModel:
    import joblib
    from sklearn.linear_model import LogisticRegression

    x, y = iris()
    model = LogisticRegression(max_iter=1000).fit(x, y)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, folder / "model.joblib")
    if summary:
        (folder / "training-summary.json").write_text(json.dumps({"feature_means": x.mean(axis=0).tolist()}))
    return TrainedModel("iris", folder, "sklearn", model, x[::15].copy())


def sklearn_regressor(folder: Path) -> TrainedModel:
    import joblib
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = x @ np.array([1.5, -2.0, 0.5]) + 0.3
    model = Ridge().fit(x, y)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, folder / "model.joblib")
    (folder / "training-summary.json").write_text(json.dumps({"feature_means": x.mean(axis=0).tolist()}))
    return TrainedModel("ridge", folder, "sklearn", model, x[:7].copy())


def xgboost_iris(folder: Path, suffix: str = ".json") -> TrainedModel:
    import xgboost as xgb

    x, y = iris()
    booster = xgb.train(
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 3, "nthread": 1},
        xgb.DMatrix(x, label=y),
        num_boost_round=8,
    )
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(folder / f"model{suffix}"))
    return TrainedModel("xgb", folder, "xgboost", booster, x[::15].copy())


def lightgbm_regressor(folder: Path) -> TrainedModel:
    import lightgbm as lgb

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4))
    y = 2 * x[:, 0] - x[:, 1] + rng.normal(scale=0.1, size=300)
    booster = lgb.train(
        {"objective": "regression", "num_leaves": 7, "verbose": -1, "num_threads": 1},
        lgb.Dataset(x, label=y),
        num_boost_round=10,
    )
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(folder / "model.txt"))
    return TrainedModel("lgbm", folder, "lightgbm", booster, x[:9].copy())


def lightgbm_iris(folder: Path) -> TrainedModel:
    import lightgbm as lgb

    x, y = iris()
    booster = lgb.train(
        {"objective": "multiclass", "num_class": 3, "num_leaves": 5, "verbose": -1, "num_threads": 1},
        lgb.Dataset(x, label=y),
        num_boost_round=5,
    )
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(folder / "model.txt"))
    return TrainedModel("lgbm-iris", folder, "lightgbm", booster, x[::15].copy())
