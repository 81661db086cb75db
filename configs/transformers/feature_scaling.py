"""Example transformer for predictive models (V2 / Open Inference Protocol and KServe V1): standardises the
features before the model sees them ((x - mean) / scale) and names the predicted classes in the answer.

    spec:
      transformer:
        handler: configs/transformers/feature_scaling.py:StandardScaler
        config: {mean: [5.8, 3.1, 3.8, 1.2], scale: [0.8, 0.4, 1.8, 0.8], labels: [setosa, versicolor, virginica]}
"""

from __future__ import annotations

from typing import Any

from llmserve.runtimes.transformer import ClientError, Transformer


class StandardScaler(Transformer):
    def __init__(self, mean: list[float], scale: list[float], labels: list[str] | None = None) -> None:
        if len(mean) != len(scale) or not all(s > 0 for s in scale):
            raise ValueError("mean and scale need the same length, and every scale must be positive")
        self.mean = mean
        self.scale = scale
        self.labels = labels

    def _row(self, row: Any) -> list[float]:
        if not isinstance(row, list) or len(row) != len(self.mean):
            raise ClientError(f"each row needs {len(self.mean)} features, got {row!r}"[:200])
        try:
            return [(float(x) - m) / s for x, m, s in zip(row, self.mean, self.scale, strict=True)]
        except (TypeError, ValueError):
            raise ClientError(f"features must be numbers, got {row!r}"[:200]) from None

    async def preprocess(self, request: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        if "instances" in request:  # KServe V1
            request["instances"] = [self._row(row) for row in request["instances"]]
            return request
        for tensor in request.get("inputs", []):  # V2: FP32/FP64 tensors of shape [rows, features]
            shape = tensor.get("shape", [])
            data = tensor.get("data", [])
            if len(shape) != 2 or shape[1] != len(self.mean):
                raise ClientError(f"input '{tensor.get('name')}' must have shape [rows, {len(self.mean)}]")
            flat = [x for row in data for x in row] if data and isinstance(data[0], list) else data
            rows = [flat[i : i + shape[1]] for i in range(0, len(flat), shape[1])]
            tensor["data"] = [x for row in rows for x in self._row(row)]
            tensor["datatype"] = "FP32"
        return request

    async def postprocess(self, response: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        if not self.labels:
            return response
        labels = self.labels
        if "predictions" in response:  # KServe V1
            response["predictions"] = [_label(labels, p) for p in response["predictions"]]
        for tensor in response.get("outputs", []):
            if tensor.get("datatype", "").startswith(("INT", "UINT")):
                tensor["data"] = [_label(labels, p) for p in tensor.get("data", [])]
                tensor["datatype"] = "BYTES"
        return response


def _label(labels: list[str], value: Any) -> Any:
    return labels[value] if isinstance(value, int) and 0 <= value < len(labels) else value
