"""`llmserve`: up (gateway + controller + workers), pull, validate, status.

Settings are parsed here, in main(), and passed down; nothing reads configuration at import time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from llmserve.spec import InferenceService, SpecError, load_services
from llmserve.storage import StorageError, pull, stderr_progress

log = logging.getLogger("llmserve")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.handler(args))
    except (SpecError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmserve", description="LLM-first model serving.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="run the gateway, the controller and the autoscaler; replicas run as child processes or Ray actors"
    )
    up.add_argument("-f", "--file", default="configs/quickstart.yaml", help="InferenceService YAML")
    up.add_argument("--host", default="127.0.0.1", help="gateway address (default: loopback only)")
    up.add_argument("--port", type=int, default=8080, help="gateway port")
    up.add_argument("--grpc-port", type=int, default=8081, help="gateway gRPC port for V2 services (0: off)")
    up.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accepted bearer key (repeatable); also LLMSERVE_API_KEYS=k1,k2. None: no authentication",
    )
    up.add_argument("--max-body-bytes", type=int, default=10 * 1024 * 1024, help="largest request body")
    up.add_argument("--log-dir", type=Path, default=Path(".llmserve/logs"), help="replica log files")
    up.add_argument("--access-log", action="store_true", help="log every request")
    up.add_argument(
        "--routing-profiles", type=Path, default=None, help="directory of RoutingProfile YAML files (configs/routing)"
    )
    up.add_argument("--default-routing-profile", default="token-aware", help="for services that name none")
    up.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="where replicas run: child processes here, or Ray actors across machines",
    )
    up.add_argument(
        "--ray-address",
        default=None,
        metavar="HOST:PORT",
        help="GCS address of a Ray head (ray start --head); default: a private Ray on this machine",
    )
    up.add_argument(
        "--warm-pool",
        type=int,
        default=0,
        metavar="N",
        help="local backend: keep N processes that have imported vLLM ready, so a vLLM replica (a scale-up, a "
        "request at zero replicas) serves in seconds instead of a minute; ~750 MiB each while idle (default 0)",
    )
    up.set_defaults(handler=_cmd_up)

    pl = sub.add_parser("pull", help="fetch and prepare models into the cache")
    pl.add_argument("source", help="an InferenceService YAML file, or a storage URI")
    pl.add_argument("--format", default=None, help="model format when SOURCE is a URI (default: from the name)")
    pl.set_defaults(handler=_cmd_pull)

    va = sub.add_parser("validate", help="check an InferenceService YAML file")
    va.add_argument("file")
    va.add_argument("--routing-profiles", type=Path, default=None, help="directory of RoutingProfile YAML files")
    va.set_defaults(handler=_cmd_validate)

    st = sub.add_parser("status", help="services and replicas of a running llmserve")
    st.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    st.add_argument("--api-key", default=os.environ.get("LLMSERVE_API_KEY"), help="bearer key, if keys are on")
    st.set_defaults(handler=_cmd_status)
    return parser


# -- validate / pull ---------------------------------------------------------------------------------------------
def _describe(service: InferenceService) -> str:
    predictor = service.spec.predictor
    model = predictor.model
    return (
        f"{service.name}: model '{service.served_model_name}', {model.model_format.name} via {service.runtime}, "
        f"replicas {predictor.min_replicas}..{predictor.replica_ceiling}, from {model.storage_uri}"
    )


def _check_routing(services: list[InferenceService], profiles_dir: Path | None, default: str) -> None:
    from gateway.routing import RoutingProfileError, load_profiles

    try:
        known = load_profiles(profiles_dir)
    except RoutingProfileError as exc:
        raise SpecError(str(exc)) from None
    if default not in known:
        raise SpecError(f"--default-routing-profile: no profile named '{default}' (known: {', '.join(sorted(known))})")
    for service in services:
        profile = service.spec.predictor.routing.profile
        if profile is not None and profile not in known:
            raise SpecError(
                f"{service.name}: spec.predictor.routing.profile: no profile named '{profile}' "
                f"(known: {', '.join(sorted(known))})"
            )


def _cmd_validate(args: argparse.Namespace) -> int:
    services = load_services(args.file)
    _check_routing(services, args.routing_profiles, "token-aware")
    print(f"{args.file}: ok, {len(services)} InferenceService(s)")
    for service in services:
        print(f"  {_describe(service)}")
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    source: str = args.source
    if source.endswith((".yaml", ".yml")) and Path(source).is_file():
        for service in load_services(source):
            model = service.spec.predictor.model
            path = pull(model.storage_uri, model.model_format.name, progress=stderr_progress)
            print(f"{service.name}: {path}")
        return 0
    model_format = args.format or ("gguf" if source.endswith(".gguf") else "huggingface")
    print(pull(source, model_format, progress=stderr_progress))
    return 0


# -- status ------------------------------------------------------------------------------------------------------
def _cmd_status(args: argparse.Namespace) -> int:
    import httpx

    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        response = httpx.get(f"{args.url}/admin/v1/services", headers=headers, timeout=5)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"error: HTTP {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    body = response.json()
    pool = (body.get("backend") or {}).get("warm_pool")
    if pool is not None:
        states = [p["state"] for p in pool["processes"]]
        summary = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states)) or "empty"
        print(f"warm pool: size {pool['size']} ({summary})")
    for service in body["services"]:
        print(
            f"{service['name']}  model={service['model']}  ready={service['ready_replicas']}"
            f"/{service['desired_replicas']}  (min {service['min_replicas']}, max {service['max_replicas']})"
            + (f"  pull error: {service['pull_error']}" if service["pull_error"] else "")
        )
        for replica in service["replicas"]:
            print(
                f"  {replica['id']:<24} {replica['state']:<9} {replica['url'] or '-':<24} "
                f"pid={replica['pid']} restarts={replica['restarts']}"
                + (f"  last exit: {replica['last_exit']}" if replica["last_exit"] else "")
            )
    return 0


# -- up ----------------------------------------------------------------------------------------------------------
def _cmd_up(args: argparse.Namespace) -> int:
    from gateway.settings import GatewaySettings

    services = load_services(args.file)
    _check_routing(services, args.routing_profiles, args.default_routing_profile)
    if args.warm_pool < 0:
        raise SpecError(f"--warm-pool: {args.warm_pool} is not a pool size (0 or more)")
    if args.warm_pool and args.backend != "local":
        raise SpecError("--warm-pool: only the local backend keeps a warm pool")
    keys = [k for k in args.api_key if k]
    keys += [k.strip() for k in os.environ.get("LLMSERVE_API_KEYS", "").split(",") if k.strip()]
    settings = GatewaySettings(
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        api_keys=tuple(SecretStr(k) for k in keys),
        max_body_bytes=args.max_body_bytes,
        access_log=args.access_log,
        routing_profiles_dir=str(args.routing_profiles) if args.routing_profiles else None,
        default_routing_profile=args.default_routing_profile,
    )
    runner: Any = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a core dependency
        pass
    if args.backend == "ray":
        from controller.backends.ray import connect_ray

        connect_ray(args.ray_address)  # before the event loop: ray.init blocks for seconds
    try:
        runner(_serve(services, settings, args.log_dir, args.backend, args.warm_pool))
    finally:
        if args.backend == "ray":
            from controller.backends.ray import disconnect_ray

            disconnect_ray()
    return 0


async def _serve(
    services: list[InferenceService], settings: Any, log_dir: Path, backend: str = "local", warm_pool: int = 0
) -> None:
    import uvicorn

    from controller.api import admin_extension
    from controller.autoscaling.autoscaler import Autoscaler
    from controller.backends.local import LocalBackend
    from controller.reconciler import Controller
    from controller.settings import ControllerSettings
    from gateway.app import create_app
    from llmserve.endpoints import EndpointRegistry

    registry = EndpointRegistry()
    controller_settings = ControllerSettings(log_dir=log_dir, warm_pool_size=warm_pool)
    if backend == "ray":
        from controller.backends.ray import RayBackend

        controller = Controller(RayBackend(log_dir), registry, controller_settings)
    else:
        pool = None
        if controller_settings.warm_pool_size > 0:
            from llmserve.workers.warm import WarmPool

            pool = WarmPool(controller_settings.warm_pool_size, python=controller_settings.python, log_dir=log_dir)
        local = LocalBackend(controller_settings.replica_host, log_dir, warm_pool=pool)
        controller = Controller(local, registry, controller_settings)
    autoscaler = Autoscaler(controller, registry)
    app = create_app(settings, registry, extensions=(admin_extension(controller, autoscaler),))
    registry.report_demand_from(app.state.demand)  # gateway -> autoscaler: held and in-flight requests
    registry.on_wake(autoscaler.wake)  # a request held at zero replicas scales the service up at once
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="httptools",
        access_log=settings.access_log,
        log_level="info",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    controller.apply(services)
    await controller.start()
    await autoscaler.start()
    announcer = asyncio.get_running_loop().create_task(_announce(services, settings, registry, log_dir))
    try:
        await server.serve()
    finally:
        announcer.cancel()
        await autoscaler.stop()
        log.info("stopping replicas")
        await controller.stop()
        log.info("stopped")


async def _announce(services: list[InferenceService], settings: Any, registry: Any, log_dir: Path) -> None:
    """Say where the gateway is, and how to call each service once it has a ready replica."""
    base = f"http://{settings.host}:{settings.port}"
    log.info("gateway on %s; replica logs in %s; Ctrl-C stops everything", base, log_dir)
    for service in services:
        if service.spec.predictor.min_replicas == 0:
            log.info("'%s' scales from zero: its first request starts a replica", service.served_model_name)
    pending = {s.name: s for s in services if s.spec.predictor.min_replicas > 0}
    key_hint = "<your key>" if settings.api_keys else "unused"
    while pending:
        for name in [n for n in pending if registry.ready_endpoints(n)]:
            model = pending.pop(name).served_model_name
            print(
                f"\n  '{model}' is ready. Try it:\n"
                f"    curl -N {base}/v1/chat/completions -H 'content-type: application/json' "
                + (f"-H 'authorization: Bearer {key_hint}' " if settings.api_keys else "")
                + f'-d \'{{"model": "{model}", "stream": true, '
                f'"messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}\'\n'
                f"    python -c \"from openai import OpenAI; c = OpenAI(base_url='{base}/v1', "
                f"api_key='{key_hint}'); print(c.chat.completions.create(model='{model}', "
                f"messages=[{{'role': 'user', 'content': 'Hi!'}}]).choices[0].message.content)\"\n",
                flush=True,
            )
        await asyncio.sleep(0.5)


if __name__ == "__main__":
    raise SystemExit(main())
