"""The llmserve gateway (build_gateway: auth, dispatch, ledger, routing, metrics) serving one InferenceGraph over
fixed services, without a controller, the way the benchmark runs it: one process, uvicorn + httptools + uvloop,
access log off.

    python benchmarks/graph_overhead/serve_graph.py --port 9100 --service s1=http://127.0.0.1:9001 ... \
        --graph-json '{"nodes": {...}}' [--name bench]

Each `--service NAME=URL` is an OpenAI service of one replica serving model NAME (routed with least-request);
`--graph-json` is the graph's `spec`, served at POST /v1/graphs/NAME; the services answer /v1/chat/completions
through the gateway too.
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn

from gateway.app import build_gateway
from gateway.graph.source import StaticGraphs
from gateway.settings import GatewaySettings
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo
from llmserve.spec.graph import InferenceGraph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="bench")
    parser.add_argument("--service", action="append", default=[], help="NAME=URL (repeatable)")
    parser.add_argument("--graph-json", required=True, help="the graph's spec as JSON")
    args = parser.parse_args()
    registry = EndpointRegistry()
    for entry in args.service:
        name, _, url = entry.partition("=")
        registry.declare_service(ServiceInfo(name=name, model_name=name, routing_profile="least-request"))
        registry.publish(Endpoint(name, f"{name}-0", url))
    graph = InferenceGraph.model_validate(
        {
            "apiVersion": "serving.llmserve.io/v1alpha1",
            "kind": "InferenceGraph",
            "metadata": {"name": args.name},
            "spec": orjson.loads(args.graph_json),
        }
    )
    parts = build_gateway(GatewaySettings(port=args.port), registry, graphs=StaticGraphs([graph]))
    uvicorn.run(parts.app, host=args.host, port=args.port, http="httptools", loop="uvloop", log_level="warning",
                access_log=False)  # fmt: skip


if __name__ == "__main__":
    main()
