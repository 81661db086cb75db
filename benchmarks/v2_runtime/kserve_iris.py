"""A minimal KServe 0.21 ModelServer for the benchmark's iris LogisticRegression (runs in the kserve venv).

    python kserve_iris.py --model_dir DIR --http_port P --grpc_port G

KServe parses these flags itself at import (kserve.model_server's parser); its REST host is 0.0.0.0.
"""

from __future__ import annotations

import argparse

import joblib
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve import model_server as kserve_model_server


class Iris(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.model = None
        self.load()

    def load(self) -> bool:
        self.model = joblib.load(self.path)
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        y = self.model.predict(x)
        output = InferOutput(name="predict", shape=list(y.shape), datatype="INT64")
        output.set_data_from_numpy(y, binary_data=False)
        return InferResponse(response_id=payload.id or "1", model_name=self.name, infer_outputs=[output])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve_model_server.parser], conflict_handler="resolve")
    parser.add_argument("--model_dir", required=True)
    args, _ = parser.parse_known_args()
    ModelServer().start([Iris("iris", f"{args.model_dir}/model.joblib")])
