"""A control API with a fixed state, for benchmarks of the data plane: one service whose ready endpoints are the
given worker URLs, served over the controller's own watch stream (controller/state.py, controller/server.py), and
demand reports accepted (and dropped). No workers are started: the workers are whatever runs at the URLs.

    python benchmarks/topology/static_controller.py --port 9100 --worker http://127.0.0.1:9000 --model m \
        [--routing-profile token-aware] [--tokenizer-dir DIR]
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from controller.server import _watch_stream  # the controller's own watch: the benchmark measures what ships
from controller.state import ControlState
from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.protocol.control import PREFIX, WATCH_CONTENT_TYPE


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--worker", action="append", required=True)
    parser.add_argument("--model", default="m")
    parser.add_argument("--routing-profile", default=None)
    parser.add_argument("--tokenizer-dir", default=None)
    args = parser.parse_args()
    state = ControlState()
    state.declare_service(
        ServiceInfo(
            name=args.model,
            model_name=args.model,
            routing_profile=args.routing_profile,
            tokenizer_dir=args.tokenizer_dir,
            revision=f"{args.model}-00001",
        )
    )
    state.set_endpoints(
        args.model,
        tuple(
            Endpoint(args.model, f"{args.model}-00001-{i}", url, revision=f"{args.model}-00001")
            for i, url in enumerate(args.worker)
        ),
    )
    app = FastAPI()

    @app.get("/health")
    async def health() -> Response:
        return Response(b"{}", media_type="application/json")

    @app.get(f"{PREFIX}/watch")
    async def watch(resourceVersion: str = "") -> StreamingResponse:
        return StreamingResponse(_watch_stream(state, resourceVersion), media_type=WATCH_CONTENT_TYPE)

    @app.post(f"{PREFIX}/demand")
    @app.post(f"{PREFIX}/wake")
    @app.post(f"{PREFIX}/suspect")
    async def accepted(request: Request) -> Response:
        await request.body()
        return Response(b'{"accepted": true}', media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
