"""scikit-learn models saved with joblib (or pickle).

Loading a pickle runs code from the artifact: `storageUri` must point at a trusted source. Nothing that arrives
over the inference API is ever unpickled.

Outputs: `predict`, plus `predict_proba` for classifiers that have it. Explain: linear models (those with
`coef_` and `intercept_`), as coef * (x - mean) per feature; see `linear_contributions`.
"""

from __future__ import annotations

from typing import Any

import joblib
import numpy as np

from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2 import TensorMetadata
from llmserve.runtimes.explain import feature_means, linear_contributions
from llmserve.runtimes.frameworks import find_artifact
from llmserve.runtimes.frameworks.tabular import Array, TabularModel


class SklearnModel(TabularModel):
    platform = "sklearn"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: Any = None
        self._means: Array | None = None

    def load_sync(self) -> None:
        path = find_artifact(self.model_dir, (".joblib", ".pkl", ".pickle"), "scikit-learn model")
        self._model = joblib.load(path)
        n = getattr(self._model, "n_features_in_", None)
        self.n_features = int(n) if n is not None else None
        self._means = feature_means(self.settings, self.model_dir)

    async def unload(self) -> None:
        self._model = None

    @property
    def output_names(self) -> tuple[str, ...]:
        if hasattr(self._model, "predict_proba"):
            return ("predict", "predict_proba")
        return ("predict",)

    def run(self, features: Array, output: str) -> Array:
        if output == "predict_proba":
            return np.asarray(self._model.predict_proba(features))
        return np.asarray(self._model.predict(features))

    def contributions(self, features: Array) -> Array:
        coef = getattr(self._model, "coef_", None)
        intercept = getattr(self._model, "intercept_", None)
        if coef is None or intercept is None:
            raise ServingError(
                400, f"Model '{self.settings.name}': explain supports linear scikit-learn models (coef_, intercept_)."
            )
        return linear_contributions(self.settings.name, np.asarray(coef), np.asarray(intercept), features, self._means)

    def output_metadata(self) -> tuple[TensorMetadata, ...]:
        classes = getattr(self._model, "classes_", None)
        label_type = "FP64"
        if classes is not None:
            label_type = "BYTES" if np.asarray(classes).dtype.kind in "OSU" else "INT64"
        out = [TensorMetadata("predict", label_type, (-1,))]
        if "predict_proba" in self.output_names:
            out.append(TensorMetadata("predict_proba", "FP64", (-1, len(classes) if classes is not None else -1)))
        return tuple(out)
