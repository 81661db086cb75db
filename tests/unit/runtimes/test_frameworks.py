"""Each framework: a model trained here, saved as users save it, served, and compared with the library's own
predict; explanations compared with the library's own contributions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmserve.runtimes.frameworks import guess_format
from tests.support import v2_models
from tests.support.v2_models import TrainedModel
from tests.unit.runtimes.conftest import RuntimeClient, settings_for


def request_for(x: np.ndarray[Any, Any], datatype: str = "FP32") -> dict[str, Any]:
    dtype = {"FP32": np.float32, "FP64": np.float64}[datatype]
    return {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": datatype, "data": x.astype(dtype).ravel().tolist()}
        ]
    }


async def predict(client: RuntimeClient, model: str, x: np.ndarray[Any, Any], datatype: str = "FP32") -> Any:
    response = await client.infer(model, request_for(x, datatype))
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    return np.reshape(out["data"], out["shape"])


async def explain(client: RuntimeClient, model: str, x: np.ndarray[Any, Any]) -> Any:
    response = await client.http.post(f"/v2/models/{model}/explain", json=request_for(x, "FP64"))
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    assert out["name"] == "contributions"
    return np.reshape(out["data"], out["shape"])


async def test_sklearn(make_runtime: Callable[..., Any], iris_model: TrainedModel, ridge_model: TrainedModel) -> None:
    client = await make_runtime([settings_for(iris_model), settings_for(ridge_model)])
    x = iris_model.x
    assert (await predict(client, "iris", x, "FP64")).tolist() == iris_model.model.predict(x).tolist()
    np.testing.assert_allclose(
        await predict(client, "ridge", ridge_model.x, "FP64"), ridge_model.model.predict(ridge_model.x)
    )
    # linear explanation: coef * (x - mean), bias last; each row sums to the decision function
    contributions = await explain(client, "ridge", ridge_model.x)
    means = np.array(json.loads((ridge_model.path / "training-summary.json").read_text())["feature_means"])
    np.testing.assert_allclose(contributions[:, :3], ridge_model.model.coef_ * (ridge_model.x - means))
    np.testing.assert_allclose(contributions.sum(axis=1), ridge_model.model.predict(ridge_model.x))
    per_class = await explain(client, "iris", x)
    assert per_class.shape == (len(x), 3, 5)
    np.testing.assert_allclose(per_class.sum(axis=2), iris_model.model.decision_function(x))


async def test_linear_explain_needs_means(make_runtime: Callable[..., Any], tmp_path: Path) -> None:
    bare = v2_models.sklearn_iris(tmp_path / "bare", summary=False)
    client = await make_runtime([settings_for(bare)])
    response = await client.http.post("/v2/models/iris/explain", json=request_for(bare.x, "FP64"))
    assert response.status_code == 400
    assert "feature means" in response.json()["error"]
    given = settings_for(bare, name="iris-means", feature_means=[5.8, 3.0, 3.7, 1.2])
    client = await make_runtime([given])
    assert (await explain(client, "iris-means", bare.x)).shape == (len(bare.x), 3, 5)


async def test_xgboost(make_runtime: Callable[..., Any], xgb_model: TrainedModel, tmp_path: Path) -> None:
    import xgboost as xgb

    ubj = v2_models.xgboost_iris(tmp_path / "ubj", suffix=".ubj")
    client = await make_runtime([settings_for(xgb_model), settings_for(ubj, name="xgb-ubj")])
    x = xgb_model.x
    expected = xgb_model.model.predict(xgb.DMatrix(x.astype(np.float32)))
    np.testing.assert_allclose(await predict(client, "xgb", x), expected, rtol=1e-6)
    np.testing.assert_allclose(await predict(client, "xgb-ubj", x), ubj.model.predict(xgb.DMatrix(x)), rtol=1e-6)
    contributions = await explain(client, "xgb", x)
    np.testing.assert_allclose(contributions, xgb_model.model.predict(xgb.DMatrix(x), pred_contribs=True), rtol=1e-5)
    meta = (await client.http.get("/v2/models/xgb")).json()
    assert meta["platform"] == "xgboost"
    assert meta["inputs"][0]["shape"] == [-1, 4]


async def test_lightgbm(
    make_runtime: Callable[..., Any], lgbm_model: TrainedModel, lgbm_iris_model: TrainedModel
) -> None:
    client = await make_runtime([settings_for(lgbm_model), settings_for(lgbm_iris_model)])
    x = lgbm_model.x
    np.testing.assert_allclose(await predict(client, "lgbm", x, "FP64"), lgbm_model.model.predict(x))
    np.testing.assert_allclose(await explain(client, "lgbm", x), lgbm_model.model.predict(x, pred_contrib=True))
    xi = lgbm_iris_model.x
    np.testing.assert_allclose(await predict(client, "lgbm-iris", xi, "FP64"), lgbm_iris_model.model.predict(xi))
    multi = await explain(client, "lgbm-iris", xi)
    expected = lgbm_iris_model.model.predict(xi, pred_contrib=True).reshape(len(xi), 3, 5)
    np.testing.assert_allclose(multi, expected)


async def test_tree_explain_unsupported_for_sklearn_forest(make_runtime: Callable[..., Any], tmp_path: Path) -> None:
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    x, y = v2_models.iris()
    folder = tmp_path / "forest"
    folder.mkdir()
    joblib.dump(RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y), folder / "model.pkl")
    client = await make_runtime([settings_for(v2_models.TrainedModel("forest", folder, "sklearn", None, x))])
    response = await client.http.post("/v2/models/forest/explain", json=request_for(x[:2], "FP64"))
    assert response.status_code == 400
    assert "explain supports linear" in response.json()["error"]


@pytest.mark.parametrize(
    ("files", "expected"),
    [(["model.joblib"], "sklearn"), (["model-settings.json", "m.ubj"], "xgboost"), (["model.txt"], "lightgbm"),
     (["readme.md"], None)],
)  # fmt: skip
def test_guess_format(tmp_path: Path, files: list[str], expected: str | None) -> None:
    for name in files:
        (tmp_path / name).write_text("x")
    assert guess_format(tmp_path) == expected


async def test_broken_artifact_fails_that_model_only(
    make_runtime: Callable[..., Any], iris_model: TrainedModel, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.txt").write_text("not a lightgbm model")
    client = await make_runtime(
        [settings_for(iris_model), settings_for(TrainedModel("broken", broken, "", None, None))]
    )
    assert (await client.http.get("/v2/health/ready")).status_code == 503
    failed = await client.infer("broken", request_for(iris_model.x))
    assert failed.status_code == 503
    assert "failed to load" in failed.json()["error"]
    assert (await predict(client, "iris", iris_model.x)).shape == (len(iris_model.x),)
    index = (await client.http.post("/v2/repository/index")).json()
    assert next(row for row in index if row["name"] == "broken")["state"] == "FAILED"
