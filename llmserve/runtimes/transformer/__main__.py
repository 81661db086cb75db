"""`python -m llmserve.runtimes.transformer`: a transformer as its own process.

    python -m llmserve.runtimes.transformer --handler configs/transformers/pii_mask.py:PIIMask \
        --host 127.0.0.1 --port 9000 [--config '{"mask": "[email]"}'] [--timeout-s 30]

The handler is imported and constructed before the port opens (a bad handler exits with status 2 and says why);
its optional `load()` runs at startup, with /health at 503 until it is done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import uvicorn
import uvloop
from pydantic import BaseModel, ConfigDict, Field

from llmserve.frontdoor import FrontDoorSettings, add_front_door_arguments, front_door_from_args, uvicorn_config
from llmserve.runtimes.transformer.app import TransformerApp
from llmserve.runtimes.transformer.hooks import HandlerError, load_handler

log = logging.getLogger("llmserve.transformer")


class TransformerSettings(BaseModel):
    """One transformer process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    handler: str = Field(description="FILE.py:ClassName or package.module:ClassName.")
    config: dict[str, object] = Field(default_factory=dict, description="Keyword arguments for the constructor.")
    host: str = Field(default="127.0.0.1", description="Bind address.")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port.")
    timeout_s: float = Field(default=30.0, gt=0, description="How long one hook call may take (then 504).")
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1, description="Largest body accepted (413).")
    log_level: str = Field(default="info", description="Logging level (debug, info, warning).")
    front_door: FrontDoorSettings = Field(
        default_factory=FrontDoorSettings, description="Connection limits of the port (llmserve/frontdoor.py)."
    )


def parse_args(argv: list[str] | None = None) -> TransformerSettings:
    parser = argparse.ArgumentParser(
        prog="python -m llmserve.runtimes.transformer", description="Serve a transformer's hooks over HTTP."
    )
    parser.add_argument("--handler", required=True, help="FILE.py:ClassName or package.module:ClassName")
    parser.add_argument("--config", default="{}", help="JSON object: keyword arguments for the class")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--timeout-s", type=float, default=30.0, help="limit of one hook call (504 beyond)")
    parser.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--log-level", default="info")
    add_front_door_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.config)
    except json.JSONDecodeError as exc:
        parser.error(f"--config is not valid JSON: {exc}")
    if not isinstance(config, dict):
        parser.error("--config must be a JSON object")
    return TransformerSettings(
        handler=args.handler,
        config=config,
        host=args.host,
        port=args.port,
        timeout_s=args.timeout_s,
        max_body_bytes=args.max_body_bytes,
        log_level=args.log_level,
        front_door=front_door_from_args(parser, args),
    )


async def serve(settings: TransformerSettings, app: TransformerApp) -> None:
    config = uvicorn_config(
        app,
        front_door=settings.front_door,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        access_log=False,
        log_level="warning",
    )
    await uvicorn.Server(config).serve()


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        handler = load_handler(settings.handler, settings.config)
    except HandlerError as exc:
        print(f"transformer: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("transformer %s: hooks %s", settings.handler, ", ".join(handler.hooks))
    app = TransformerApp(handler, timeout_s=settings.timeout_s, max_body_bytes=settings.max_body_bytes)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, app))
    if not app.loaded:
        raise SystemExit(3)  # load() failed (logged): the supervisor sees a failed start


if __name__ == "__main__":
    main()
