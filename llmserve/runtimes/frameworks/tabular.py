"""TabularModel: the shared shape of scikit-learn, XGBoost and LightGBM models.

The features are one input of shape [rows, features], or one input per feature column ([rows] or [rows, 1],
stacked in request order). A 1-D single input is one column. Numeric datatypes only.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2 import InferTensor, TensorMetadata
from llmserve.runtimes.codecs import datatype_of
from llmserve.runtimes.model import V2Model

Array = np.ndarray[Any, Any]


class TabularModel(V2Model):
    n_features: int | None = None

    async def load(self) -> None:
        await asyncio.to_thread(self.load_sync)

    @abstractmethod
    def load_sync(self) -> None: ...

    @abstractmethod
    def run(self, features: Array, output: str) -> Array: ...

    def contributions(self, features: Array) -> Array:
        raise ServingError(400, f"Model '{self.settings.name}' ({self.platform}) does not support explain.")

    async def predict(self, inputs: Sequence[InferTensor], outputs: Sequence[str]) -> list[InferTensor]:
        features = self.features(inputs)
        return [self._tensor(name, self._guarded(self.run, features, name)) for name in outputs]

    async def explain(self, inputs: Sequence[InferTensor]) -> list[InferTensor]:
        features = self.features(inputs)
        return [self._tensor("contributions", self._guarded(self.contributions, features))]

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Array:
        try:
            return np.asarray(fn(*args))
        except ServingError:
            raise
        except (ValueError, TypeError) as exc:  # the library's verdict on the input
            raise ServingError(400, f"Model '{self.settings.name}' rejected the input: {exc}") from None

    @staticmethod
    def _tensor(name: str, array: Array) -> InferTensor:
        return InferTensor(name=name, datatype=datatype_of(array), shape=list(array.shape), data=array)

    def features(self, inputs: Sequence[InferTensor]) -> Array:
        for tensor in inputs:
            if tensor.datatype == "BYTES":
                raise ServingError(400, f"Input '{tensor.name}': model '{self.settings.name}' needs numbers, not BYTES")
        if len(inputs) == 1:
            x: Array = inputs[0].data
            if x.ndim == 1:
                x = x.reshape(-1, 1)
            elif x.ndim != 2:
                shape = list(x.shape)
                raise ServingError(400, f"Input '{inputs[0].name}': expected shape [rows, features], got {shape}.")
        else:
            columns = []
            for tensor in inputs:
                column: Array = tensor.data
                if column.ndim == 2 and column.shape[1] == 1:
                    column = column[:, 0]
                if column.ndim != 1:
                    raise ServingError(
                        400, f"Input '{tensor.name}': one input per feature must be [rows] or [rows, 1]."
                    )
                columns.append(column)
            if len({len(c) for c in columns}) != 1:
                raise ServingError(400, "Inputs given per feature must all have the same number of rows.")
            x = np.column_stack(columns)
        if self.n_features is not None and x.shape[1] != self.n_features:
            raise ServingError(
                400, f"Model '{self.settings.name}' expects {self.n_features} features per row, got {x.shape[1]}."
            )
        return x

    def input_metadata(self) -> tuple[TensorMetadata, ...]:
        return (TensorMetadata("input-0", "FP64", (-1, self.n_features if self.n_features is not None else -1)),)
