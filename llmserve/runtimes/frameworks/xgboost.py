"""XGBoost boosters saved with `save_model` (.json or .ubj). Output `predict`: what `Booster.predict` returns
(probabilities for classification objectives). Explain: the library's own `pred_contribs` (SHAP values; the
last column is the bias)."""

from __future__ import annotations

from typing import Any

import numpy as np
import xgboost as xgb

from llmserve.protocol.v2 import TensorMetadata
from llmserve.runtimes.frameworks import find_artifact
from llmserve.runtimes.frameworks.tabular import Array, TabularModel


class XGBoostModel(TabularModel):
    platform = "xgboost"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._booster: xgb.Booster | None = None

    def load_sync(self) -> None:
        path = find_artifact(self.model_dir, (".json", ".ubj", ".bst"), "XGBoost model")
        booster = xgb.Booster()
        booster.load_model(str(path))
        self._booster = booster
        self.n_features = booster.num_features()

    async def unload(self) -> None:
        self._booster = None

    @property
    def booster(self) -> xgb.Booster:
        assert self._booster is not None, "model not loaded"
        return self._booster

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("predict",)

    def run(self, features: Array, output: str) -> Array:
        return np.asarray(self.booster.inplace_predict(features))

    def contributions(self, features: Array) -> Array:
        return np.asarray(self.booster.predict(xgb.DMatrix(features), pred_contribs=True))

    def output_metadata(self) -> tuple[TensorMetadata, ...]:
        return (TensorMetadata("predict", "FP32", (-1,)),)
