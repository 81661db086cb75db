"""Serve InferenceGraphs with llmserve's graph router (GraphApp over the direct HTTP step caller), the way the
benchmark runs it: one process, uvicorn + httptools + uvloop, access log off.

    python benchmarks/graph_overhead/serve_graph.py --port 9100 --graph-json '{"nodes": {...}}' [--name bench]

`--graph-json` takes the graph's `spec` (as KServe's router does); it is served at POST /v1/graphs/NAME.
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn

from gateway.graph import GraphRouter
from gateway.graph.asgi import GraphApp
from gateway.graph.http_caller import HttpStepCaller
from llmserve.spec.graph import InferenceGraph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="bench")
    parser.add_argument("--graph-json", required=True, help="the graph's spec as JSON")
    args = parser.parse_args()
    graph = InferenceGraph.model_validate(
        {
            "apiVersion": "serving.llmserve.io/v1alpha1",
            "kind": "InferenceGraph",
            "metadata": {"name": args.name},
            "spec": orjson.loads(args.graph_json),
        }
    )
    app = GraphApp({graph.name: GraphRouter(graph, HttpStepCaller({}))})
    uvicorn.run(app, host=args.host, port=args.port, http="httptools", loop="uvloop", log_level="warning",
                access_log=False)  # fmt: skip


if __name__ == "__main__":
    main()
