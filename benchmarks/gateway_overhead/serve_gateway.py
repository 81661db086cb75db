"""The llmserve gateway alone, in front of one fixed worker URL (no controller), for proxy benchmarks.

python benchmarks/gateway_overhead/serve_gateway.py --port 9002 --worker http://127.0.0.1:9000 --model m
"""

from __future__ import annotations

import argparse

import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument("--worker", action="append", required=True, help="worker URL (repeatable)")
    parser.add_argument("--model", default="m")
    args = parser.parse_args()
    registry = EndpointRegistry()
    registry.declare_service(ServiceInfo(name=args.model, model_name=args.model))
    for i, url in enumerate(args.worker):
        registry.publish(Endpoint(service=args.model, replica_id=f"{args.model}-{i}", url=url))
    app = create_app(GatewaySettings(port=args.port), registry)
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, http="httptools", loop="uvloop", access_log=False, log_level="warning"
    )


if __name__ == "__main__":
    main()
