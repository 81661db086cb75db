"""KServe 0.21's own REST client (InferenceRESTClient, V2) against a server (runs in the kserve venv):
JSON inference, server/model readiness. Prints the predicted labels; exits non-zero on a mismatch.

    python kserve_client_check.py URL MODEL
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str, model: str) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=10))
    try:
        assert await client.is_server_ready(url), "server not ready"
        assert await client.is_model_ready(url, model), "model not ready"
        x = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 3.4, 5.4, 2.3]], dtype=np.float32)
        tensor = InferInput("input-0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=False)
        request = InferRequest(model_name=model, infer_inputs=[tensor], request_id="k-1")
        response = await client.infer(url, request, model_name=model)
        labels = response.outputs[0].as_numpy().tolist()
        assert labels == [0, 2], labels
        print(f"kserve InferenceRESTClient ok: {labels}")
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
