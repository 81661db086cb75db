"""`python -m llmserve.runtimes.retriever --port P --name NAME --documents DIR [--embeddings-url URL]
--embeddings-model M [--top-k 2]`: one retriever replica. Without --embeddings-url it embeds through the gateway
the controller tells its replicas about (LLMSERVE_GATEWAY_URL). The API key for the embeddings service, if it
needs one, comes from the environment (LLMSERVE_EMBEDDINGS_API_KEY, else the gateway key the controller passes in
LLMSERVE_GATEWAY_API_KEY), never from argv."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from llmserve.frontdoor import add_front_door_arguments, front_door_from_args


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmserve.runtimes.retriever", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", required=True, help="the model name it serves at /v1/models/NAME:predict")
    parser.add_argument("--documents", type=Path, required=True, help="directory of *.md / *.txt documents")
    parser.add_argument(
        "--embeddings-url",
        default=os.environ.get("LLMSERVE_GATEWAY_URL"),
        help="base URL of an OpenAI-compatible /v1/embeddings (default: $LLMSERVE_GATEWAY_URL, the gateway)",
    )
    parser.add_argument("--embeddings-model", required=True, help="the embeddings model name to send")
    parser.add_argument("--top-k", type=int, default=2, help="passages per question")
    parser.add_argument("--index-within-s", type=float, default=600.0, help="how long to wait for embeddings")
    parser.add_argument("--log-level", default="info")
    add_front_door_arguments(parser)
    args = parser.parse_args(argv)
    front_door = front_door_from_args(parser, args)
    if not args.embeddings_url:
        parser.error(
            "no embeddings service: give --embeddings-url, or run under a controller that knows its gateway "
            "(llmserve up does; llmserve controller --gateway-url URL), which sets LLMSERVE_GATEWAY_URL"
        )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from llmserve.frontdoor import uvicorn_config
    from llmserve.runtimes.retriever.app import RetrieverApp
    from llmserve.runtimes.retriever.documents import load_passages
    from llmserve.runtimes.retriever.embedder import Embedder
    from llmserve.runtimes.retriever.retrieval import Retriever

    try:
        passages = load_passages(args.documents)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    key = os.environ.get("LLMSERVE_EMBEDDINGS_API_KEY") or os.environ.get("LLMSERVE_GATEWAY_API_KEY") or None
    embedder = Embedder(args.embeddings_url, args.embeddings_model, api_key=key)
    app = RetrieverApp(args.name, Retriever(passages, embedder, top_k=args.top_k), index_within_s=args.index_within_s)
    config = uvicorn_config(
        app, front_door=front_door, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="on"
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
