"""Framework runtimes, imported only when a model of that format is loaded (the server starts without them).

`model_class(format)` resolves a format name to its V2Model class; `guess_format(path)` names the format of an
artifact from its file names.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from llmserve.protocol.errors import ServingError
from llmserve.runtimes.model import V2Model

_CLASSES: dict[str, str] = {
    "sklearn": "llmserve.runtimes.frameworks.sklearn:SklearnModel",
    "xgboost": "llmserve.runtimes.frameworks.xgboost:XGBoostModel",
    "lightgbm": "llmserve.runtimes.frameworks.lightgbm:LightGBMModel",
}
_SUFFIXES: dict[str, str] = {".joblib": "sklearn", ".pkl": "sklearn", ".pickle": "sklearn", ".ubj": "xgboost"}
_SUFFIXES.update({".bst": "xgboost", ".json": "xgboost", ".txt": "lightgbm"})
NOT_ARTIFACTS = frozenset({"model-settings.json", "training-summary.json"})


def model_class(model_format: str) -> type[V2Model]:
    target = _CLASSES.get(model_format)
    if target is None:
        raise ServingError(400, f"Unknown model format '{model_format}'; one of {', '.join(_CLASSES)}.")
    module_name, _, class_name = target.partition(":")
    cls: type[V2Model] = getattr(importlib.import_module(module_name), class_name)
    return cls


def guess_format(path: Path) -> str | None:
    """The format of the artifact at `path` (a file, or a directory holding one), from its suffix."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    for file in files:
        if file.name not in NOT_ARTIFACTS and file.suffix in _SUFFIXES:
            return _SUFFIXES[file.suffix]
    return None


def find_artifact(path: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """The one model file for a format: `path` itself, or the single file with one of `suffixes` in it."""
    if path.is_file():
        return path
    found = [p for p in sorted(path.iterdir()) if p.suffix in suffixes and p.name not in NOT_ARTIFACTS]
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ValueError(f"{path}: expected one {what} file ({', '.join(suffixes)}), found {names}")
    return found[0]
