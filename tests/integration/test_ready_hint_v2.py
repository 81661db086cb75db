"""The V2 "try it" hint works: its request, built from a real runtime's model metadata, is answered 200 by that
runtime (scikit-learn and XGBoost models)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import httpx

from llmserve.ready_hint import fetch_metadata, ready_hint
from tests.support import v2_models
from tests.support.v2_runtime import runtime_process


async def test_the_hinted_infer_call_is_answered(tmp_path: Path) -> None:
    iris = v2_models.sklearn_iris(tmp_path / "iris")
    xgb = v2_models.xgboost_iris(tmp_path / "xgb")
    args = ["--model", f"iris={iris.path}:sklearn", "--model", f"xgb={xgb.path}"]
    with runtime_process(args, tmp_path / "runtime.log") as runtime:
        async with httpx.AsyncClient() as client:
            for model in ("iris", "xgb"):
                metadata = await fetch_metadata(client, runtime.url, model)
                assert metadata is not None
                hint = ready_hint(model, "v2", runtime.url, needs_key=False, metadata=metadata)
                curl = shlex.split(next(line for line in hint.splitlines() if line.strip().startswith("curl")))
                body = json.loads(curl[curl.index("-d") + 1])
                response = await client.post(curl[1], json=body, timeout=10)
                assert response.status_code == 200, (model, body, response.text)
                assert response.json()["outputs"]
            assert await fetch_metadata(client, runtime.url, "nope") is None
