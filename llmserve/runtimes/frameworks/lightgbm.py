"""LightGBM boosters saved as text (`Booster.save_model('model.txt')`). Output `predict`: what
`Booster.predict` returns. Explain: the library's own `pred_contrib`, as [rows, features + 1] (last column the
expected value) or, for multi-class models, [rows, classes, features + 1]."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np

from llmserve.protocol.v2 import TensorMetadata
from llmserve.runtimes.frameworks import find_artifact
from llmserve.runtimes.frameworks.tabular import Array, TabularModel


class LightGBMModel(TabularModel):
    platform = "lightgbm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._booster: lgb.Booster | None = None

    def load_sync(self) -> None:
        path = find_artifact(self.model_dir, (".txt",), "LightGBM model")
        self._booster = lgb.Booster(model_file=str(path))
        self.n_features = self._booster.num_feature()

    async def unload(self) -> None:
        self._booster = None

    @property
    def booster(self) -> lgb.Booster:
        assert self._booster is not None, "model not loaded"
        return self._booster

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("predict",)

    def run(self, features: Array, output: str) -> Array:
        return np.asarray(self.booster.predict(features))

    def contributions(self, features: Array) -> Array:
        values = np.asarray(self.booster.predict(features, pred_contrib=True))
        classes = self.booster.num_model_per_iteration()
        if classes > 1:
            values = values.reshape(len(features), classes, -1)
        return values

    def output_metadata(self) -> tuple[TensorMetadata, ...]:
        classes = self.booster.num_model_per_iteration() if self._booster is not None else 1
        return (TensorMetadata("predict", "FP64", (-1,) if classes == 1 else (-1, classes)),)
