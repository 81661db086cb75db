"""`python -m tests.support.tritonclient_grpc_check HOST:PORT MODEL EXPECTED_JSON [SERVER_NAME]`: tritonclient's
gRPC client against a runtime (or the gateway, whose SERVER_NAME is llmserve), in its own process (tritonclient's
copy of the inference proto and ours cannot share one process: both define `inference.*` in protobuf's default
pool). Exits non-zero with a message on any mismatch."""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def main() -> None:
    url, model, expected_json = sys.argv[1:4]
    server_name = sys.argv[4] if len(sys.argv) > 4 else "llmserve-runtime"
    expected = json.loads(expected_json)
    client = grpcclient.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert client.is_model_ready(model), "model not ready"
    meta = client.get_model_metadata(model, as_json=True)
    assert meta["name"] == model, meta
    assert client.get_server_metadata(as_json=True)["name"] == server_name
    x = np.asarray(expected["x"], dtype=np.float32)
    inputs = [grpcclient.InferInput("input-0", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput("predict")], request_id="g-1")
    got = result.as_numpy("predict").tolist()
    assert got == expected["predict"], f"predict {got} != {expected['predict']}"
    assert result.get_response().id == "g-1"
    default = client.infer(model, inputs)  # no outputs named: the model's default
    assert default.as_numpy("predict").tolist() == expected["predict"]
    try:
        client.infer("ghost", inputs)
        raise SystemExit("unknown model accepted")
    except InferenceServerException as exc:
        if "not served" not in str(exc.message()):
            raise SystemExit(f"unexpected error for an unknown model: {exc}") from None
    print("tritonclient grpc ok")


if __name__ == "__main__":
    main()
