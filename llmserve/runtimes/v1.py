"""KServe's V1 protocol on top of the V2 data plane: `{"instances": [...]}` -> `{"predictions": [...]}`.

`:predict` runs the model's default output; `:explain` returns `{"explanations": [...]}`, the same
contributions as V2 explain (rows of per-feature values, last column the bias). Instances are rows of numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2 import InferenceRequest, InferTensor
from llmserve.runtimes.codecs import datatype_of


def to_v2(body: Any) -> InferenceRequest:
    if not isinstance(body, dict):
        raise ServingError(400, "The request body must be a JSON object with 'instances'.")
    instances = body.get("instances", body.get("inputs"))
    if not isinstance(instances, list) or not instances:
        raise ServingError(400, "'instances' must be a non-empty list of rows.")
    try:
        array = np.asarray(instances)
    except ValueError as exc:
        raise ServingError(400, f"'instances' must be rows of equal length ({exc}).") from None
    if array.dtype.kind not in "biuf":
        raise ServingError(400, "'instances' must hold numbers only.")
    return InferenceRequest(inputs=[InferTensor("input-0", datatype_of(array), list(array.shape), array)])


def to_list(array: np.ndarray[Any, Any]) -> Any:
    if array.dtype.kind == "O":
        return [v.decode(errors="replace") if isinstance(v, bytes) else v for v in array.tolist()]
    return array.tolist()
