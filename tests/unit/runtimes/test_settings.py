"""Model declarations: `--model NAME=URI[:format]`, model repositories with model-settings.json, and the
repository API picking up a directory added after start."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmserve.runtimes.server import parse_args
from llmserve.runtimes.settings import parse_model_arg, scan_repository
from tests.support.v2_models import TrainedModel


@pytest.mark.parametrize(
    ("arg", "name", "uri", "fmt"),
    [
        ("iris=/models/iris:sklearn", "iris", "/models/iris", "sklearn"),
        ("iris=/models/iris", "iris", "/models/iris", None),
        ("x=s3://bucket/x:xgboost", "x", "s3://bucket/x", "xgboost"),
        ("x=https://host:8443/m.tar.gz", "x", "https://host:8443/m.tar.gz", None),
        ("x=file:///m/a:b:lightgbm", "x", "file:///m/a:b", "lightgbm"),
    ],
)
def test_model_argument(arg: str, name: str, uri: str, fmt: str | None) -> None:
    settings = parse_model_arg(arg)
    assert (settings.name, settings.uri, settings.format) == (name, uri, fmt)


@pytest.mark.parametrize("arg", ["noequals", "=/x", "x=", "bad name=/x"])
def test_bad_model_argument(arg: str) -> None:
    with pytest.raises(ValueError, match="--model"):
        parse_model_arg(arg)


def test_cli_settings() -> None:
    settings = parse_args(
        [
            "--port",
            "9000",
            "--grpc-port",
            "9001",
            "--model",
            "a=/m/a",
            "--memory-budget",
            "1Gi",
            "--max-batch-size",
            "8",
        ]
    )
    assert settings.port == 9000
    assert settings.grpc_port == 9001
    assert settings.memory_budget_bytes == 1024**3
    assert settings.models[0].max_batch_size == 8
    with pytest.raises(SystemExit):
        parse_args([])


def test_repository_scan(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b" / "model-settings.json").write_text(json.dumps({"format": "xgboost", "max_latency_ms": 5}))
    models = scan_repository(tmp_path)
    assert [m.name for m in models] == ["a", "b"]
    assert models[1].format == "xgboost"
    assert models[1].max_latency_ms == 5
    (tmp_path / "b" / "model-settings.json").write_text(json.dumps({"max_batch_size": 0}))
    with pytest.raises(ValueError, match="max_batch_size"):
        scan_repository(tmp_path)
    (tmp_path / "b" / "model-settings.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        scan_repository(tmp_path)


async def test_repository_api_loads_a_directory_added_later(
    make_runtime: Callable[..., Any], iris_model: TrainedModel, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(iris_model.path, repo / "first")
    client = await make_runtime([], model_repository=repo)
    assert [row["name"] for row in (await client.http.post("/v2/repository/index")).json()] == ["first"]
    shutil.copytree(iris_model.path, repo / "later")
    assert (await client.http.post("/v2/repository/models/later/load")).status_code == 200
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
    assert (await client.infer("later", body)).json()["outputs"][0]["data"] == [0]
