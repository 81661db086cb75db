"""An exact in-memory vector index: cosine similarity (vectors are normalised on the way in), top-k by score."""

from __future__ import annotations

from typing import Any

import numpy as np


class VectorIndex:
    def __init__(self, vectors: list[list[float]]) -> None:
        if not vectors:
            raise ValueError("an index needs at least one vector")
        matrix = np.asarray(vectors, dtype=np.float32)
        self._matrix: np.ndarray[Any, Any] = matrix / _norms(matrix)
        self.dimensions = int(matrix.shape[1])

    def __len__(self) -> int:
        return int(self._matrix.shape[0])

    def search(self, vector: list[float], k: int) -> list[tuple[int, float]]:
        """The `k` nearest rows as (row, cosine similarity), best first."""
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (self.dimensions,):
            raise ValueError(f"the query has {query.size} dimensions, the index {self.dimensions}")
        scores = self._matrix @ (query / max(float(np.linalg.norm(query)), 1e-12))
        top = np.argsort(-scores, kind="stable")[: max(k, 0)]
        return [(int(i), float(scores[i])) for i in top]


def _norms(matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    norms: np.ndarray[Any, Any] = np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return norms
