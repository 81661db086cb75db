"""Explanations for linear models: the contribution of feature j to class k is coef[k, j] * (x[j] - mean[j]).

The means come from the training data: `feature_means` in the model settings, or `training-summary.json`
saved next to the model (`{"feature_means": [...]}`; write it at training time with `X_train.mean(axis=0)`).
A last column holds the bias, intercept[k] + coef[k] . mean, so each row sums to the model's decision
function (the same layout as XGBoost's `pred_contribs`). Tree models use their library's own contributions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from llmserve.protocol.errors import ServingError
from llmserve.runtimes.settings import ModelSettings

Array = np.ndarray[Any, Any]
TRAINING_SUMMARY = "training-summary.json"


def feature_means(settings: ModelSettings, model_dir: Path) -> Array | None:
    if settings.feature_means is not None:
        return np.asarray(settings.feature_means, dtype=np.float64)
    summary = (model_dir if model_dir.is_dir() else model_dir.parent) / TRAINING_SUMMARY
    if not summary.is_file():
        return None
    try:
        means = json.loads(summary.read_text())["feature_means"]
        return np.asarray(means, dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{summary}: expected {{'feature_means': [numbers]}} ({exc})") from None


def linear_contributions(model: str, coef: Array, intercept: Array, x: Array, means: Array | None) -> Array:
    """[rows, features + 1] for one output, [rows, classes, features + 1] for several; last column: bias."""
    if means is None:
        raise ServingError(
            400,
            f"Model '{model}': explaining a linear model needs the training feature means: set feature_means in "
            f"the model settings or ship {TRAINING_SUMMARY} with the model.",
        )
    weights = np.atleast_2d(coef).astype(np.float64)  # [classes, features]
    if means.shape != (weights.shape[1],):
        raise ServingError(
            500, f"Model '{model}': {len(means)} feature means configured for {weights.shape[1]} features."
        )
    centered = np.asarray(x, dtype=np.float64) - means  # [rows, features]
    contributions = centered[:, None, :] * weights[None, :, :]  # [rows, classes, features]
    bias = np.atleast_1d(intercept).astype(np.float64) + weights @ means  # [classes]
    bias_column = np.broadcast_to(bias[None, :, None], (len(centered), len(bias), 1))
    result = np.concatenate([contributions, bias_column], axis=2)
    return result[:, 0, :] if result.shape[1] == 1 else result
