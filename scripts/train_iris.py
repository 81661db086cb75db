#!/usr/bin/env python3
"""Train the ready-to-run iris model of configs/iris.yaml: XGBoost on scikit-learn's bundled iris data (no
download), saved as XGBoost's JSON model format (plain text: nothing runs when it loads, and it loads across
XGBoost versions), plus `training-summary.json` (feature means, for explanations).

    python scripts/train_iris.py [OUT_DIR]        # default: configs/iris (what the repository ships); `make iris`

Deterministic (one thread, fixed seed): re-running it reproduces the shipped model's predictions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
CLASSES = ["setosa", "versicolor", "virginica"]
PARAMS = {"objective": "multi:softprob", "num_class": 3, "max_depth": 3, "eta": 0.3, "nthread": 1, "seed": 0}
ROUNDS = 10


def train(out: Path) -> Path:
    import xgboost as xgb
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    booster = xgb.train(PARAMS, xgb.DMatrix(x, label=y), ROUNDS)
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / "model.json"))
    summary = {"feature_names": FEATURES, "class_names": CLASSES, "feature_means": x.mean(axis=0).round(6).tolist()}
    (out / "training-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out / "model.json"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "configs" / "iris"
    print(train(target))
