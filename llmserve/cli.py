"""`llmserve`: up, controller, gateway, apply, delete, get, status, logs, pull, validate.

Settings are parsed here, in main(), and passed down; nothing reads configuration at import time. This is the one
module that composes the control plane (controller/) and the data plane (gateway/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr, ValidationError

from llmserve.spec import InferenceGraph, InferenceService, SpecError, load_resources, load_services
from llmserve.storage import StorageError, pull, stderr_progress

if TYPE_CHECKING:
    from controller.backends import Backend
    from controller.run import ControlPlane
    from gateway.drain import Drain
    from gateway.run import DataPlane
    from gateway.settings import GatewaySettings
    from gateway.tracing import TracingSettings
    from llmserve.frontdoor import FrontDoorSettings
    from llmserve.workers.tracing import WorkerTracing

log = logging.getLogger("llmserve")

DEFAULT_CONTROL_PORT = 8090
DEFAULT_STATE_DIR = Path(".llmserve/state")


class UsageError(Exception):
    """A command line that cannot be run as given."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if getattr(args, "subparser", None) is not None:
        _front_door(args)  # a bad connection limit is a usage error before anything starts
    try:
        return int(args.handler(args))
    except (SpecError, StorageError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmserve", description="LLM-first model serving.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="run a controller and a gateway in one process (the embedded default); Ctrl-C stops everything"
    )
    up.add_argument("-f", "--file", default="configs/quickstart.yaml", help="InferenceService / InferenceGraph YAML")
    _gateway_arguments(up)
    _controller_arguments(up, default_port=DEFAULT_CONTROL_PORT, port_flag="--control-port")
    up.set_defaults(handler=_cmd_up, subparser=up)

    ct = sub.add_parser("controller", help="run the control plane: workers, autoscaler, the control API")
    ct.add_argument(
        "-f", "--file", default=None, help="InferenceService / InferenceGraph YAML applied at start (optional)"
    )
    ct.add_argument(
        "--gateway-url",
        default=None,
        help="where replicas reach a gateway (passed to them as LLMSERVE_GATEWAY_URL; the retriever embeds through "
        "it), e.g. http://127.0.0.1:8080",
    )
    ct.add_argument("--host", default="127.0.0.1", help="control API address (non-loopback needs --token)")
    _controller_arguments(ct, default_port=DEFAULT_CONTROL_PORT, port_flag="--port")
    _tracing_argument(ct, "vLLM replicas export their own spans to this OTLP collector (--otlp-traces-endpoint)")
    ct.add_argument(
        "--keep-workers",
        action="store_true",
        help="on SIGTERM / Ctrl-C, leave the replicas running for the next controller to adopt",
    )
    _drain_argument(ct)
    _front_door_arguments(ct)
    ct.set_defaults(handler=_cmd_controller, subparser=ct)

    gw = sub.add_parser("gateway", help="run the data plane: the OpenAI / V2 gateway, following a controller")
    gw.add_argument(
        "--controller", default=None, help=f"control API URL (default http://127.0.0.1:{DEFAULT_CONTROL_PORT})"
    )
    gw.add_argument("--control-token", default=None, help="control token (default: $LLMSERVE_CONTROL_TOKEN, "
                    "or the token file in --state-dir)")  # fmt: skip
    gw.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="where a local controller keeps its token"
    )
    gw.add_argument("--workers", type=int, default=1, help="gateway processes sharing the port (SO_REUSEPORT)")
    gw.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    _gateway_arguments(gw)
    gw.set_defaults(handler=_cmd_gateway, subparser=gw)

    ap = sub.add_parser("apply", help="create or change the services and graphs of a file in a running controller")
    ap.add_argument("-f", "--file", required=True, help="InferenceService / InferenceGraph YAML")
    _client_arguments(ap)
    ap.set_defaults(handler=_cmd_apply)

    de = sub.add_parser("delete", help="remove a service or a graph from a running controller")
    de.add_argument("name", help="a service (NAME or service/NAME) or an InferenceGraph (graph/NAME; plain NAME "
                    "when no service has that name)")  # fmt: skip
    _client_arguments(de)
    de.set_defaults(handler=_cmd_delete)

    ge = sub.add_parser("get", help="services (or one), their revisions and replicas; InferenceGraphs")
    ge.add_argument("name", nargs="?")
    ge.add_argument("-o", "--output", choices=("table", "json"), default="table")
    _client_arguments(ge)
    ge.set_defaults(handler=_cmd_get)

    st = sub.add_parser("status", help="services, replicas, the autoscaler's decisions, gateways, the warm pool")
    _client_arguments(st)
    st.add_argument(
        "--gateway",
        default=os.environ.get("LLMSERVE_GATEWAY"),
        metavar="URL",
        help="read the status through this gateway (its /ui/status: the controller's, with the gateway's load per "
        "replica, activator queue and recent errors); also $LLMSERVE_GATEWAY",
    )
    st.add_argument("--api-key", default=None, help="the gateway's bearer key (default: $LLMSERVE_API_KEYS' first)")
    st.add_argument("-o", "--output", choices=("table", "json"), default="table")
    st.set_defaults(handler=_cmd_status)

    lg = sub.add_parser("logs", help="a replica's log (NAME: a replica, or a service: all its replicas)")
    lg.add_argument("name")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C stops)")
    lg.add_argument("-n", "--lines", type=int, default=100, help="lines from the end to print first")
    lg.add_argument("--log-dir", type=Path, default=Path(".llmserve/logs"), help="where the replicas log")
    _client_arguments(lg)
    lg.set_defaults(handler=_cmd_logs)

    pl = sub.add_parser("pull", help="fetch and prepare models into the cache")
    pl.add_argument("source", help="an InferenceService YAML file, or a storage URI")
    pl.add_argument("--format", default=None, help="model format when SOURCE is a URI (default: from the name)")
    pl.set_defaults(handler=_cmd_pull)

    va = sub.add_parser("validate", help="check an InferenceService / InferenceGraph YAML file")
    va.add_argument("file")
    va.add_argument("--routing-profiles", type=Path, default=None, help="directory of RoutingProfile YAML files")
    va.set_defaults(handler=_cmd_validate)
    return parser


def _gateway_arguments(parser: argparse.ArgumentParser) -> None:
    if not any(a.dest == "host" for a in parser._actions):
        parser.add_argument("--host", default="127.0.0.1", help="gateway address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="gateway port")
    parser.add_argument("--grpc-port", type=int, default=8081, help="gateway gRPC port for V2 services (0: off)")
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accepted bearer key (repeatable); also LLMSERVE_API_KEYS=k1,k2. None: no authentication",
    )
    parser.add_argument("--max-body-bytes", type=int, default=10 * 1024 * 1024, help="largest request body")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument(
        "--routing-profiles", type=Path, default=None, help="directory of RoutingProfile YAML files (configs/routing)"
    )
    parser.add_argument("--default-routing-profile", default="token-aware", help="for services that name none")
    _tracing_argument(parser, "OTLP collector for the gateway's request spans (vLLM replicas started by `up` too)")
    _drain_argument(parser)
    _backpressure_arguments(parser)
    _front_door_arguments(parser)


def _backpressure_arguments(parser: argparse.ArgumentParser) -> None:
    from gateway.settings import GatewaySettings

    defaults = GatewaySettings()
    group = parser.add_argument_group("backpressure and timeouts")
    group.add_argument(
        "--max-requests-per-replica",
        type=int,
        default=defaults.max_requests_per_replica,
        metavar="N",
        help="load cap per replica (a service's maxRequestsPerReplica wins); 0: none",
    )
    group.add_argument(
        "--max-tokens-per-replica",
        type=int,
        default=0,
        metavar="N",
        help="load cap in tokens in flight per replica (a service's maxTokensPerReplica wins); 0: none",
    )
    group.add_argument(
        "--queue-depth",
        type=int,
        default=defaults.activator_queue_depth,
        metavar="N",
        help="requests that may wait per service (no ready replica, or all at their cap)",
    )
    group.add_argument(
        "--admission-timeout",
        type=float,
        default=defaults.admission_timeout_s,
        metavar="S",
        help="how long a request waits for a slot on a busy service (then 429)",
    )
    group.add_argument(
        "--first-byte-timeout",
        type=float,
        default=defaults.upstream_first_byte_timeout_s,
        metavar="S",
        help="per-try timeout of a streamed request: no headers -> another replica; 0: off",
    )
    group.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=defaults.upstream_stream_idle_timeout_s,
        metavar="S",
        help="a stream silent this long ends with an error frame; 0: off",
    )
    group.add_argument("--outlier-failures", type=int, default=defaults.outlier_consecutive_failures, metavar="N",
                       help="failures in a row that eject a replica (at most half of a service); 0: off")  # fmt: skip


def _drain_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="graceful drain on SIGTERM / Ctrl-C: requests and streams in flight may finish for S seconds (new ones "
        "are refused), then they are cut (503, or a last error frame); replicas the controller stops drain as long",
    )


def _front_door_arguments(parser: argparse.ArgumentParser) -> None:
    """The connection limits of every HTTP port the command opens (`up`: the gateway's and the control API's)."""
    from llmserve.frontdoor import add_front_door_arguments

    add_front_door_arguments(parser)


def _front_door(args: argparse.Namespace) -> FrontDoorSettings:
    from llmserve.frontdoor import front_door_from_args

    return front_door_from_args(args.subparser, args)


def _tracing_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--otlp-endpoint",
        default=None,
        metavar="URL",
        help=f"{what}, e.g. http://127.0.0.1:4317 (gRPC) or http://127.0.0.1:4318/v1/traces with "
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf; default: the standard OTEL_* variables, else off",
    )


def _controller_arguments(parser: argparse.ArgumentParser, *, default_port: int, port_flag: str) -> None:
    parser.add_argument(port_flag, dest="control_port", type=int, default=default_port, help="control API port")
    parser.add_argument("--token", default=None, help="control API bearer token (default: $LLMSERVE_CONTROL_TOKEN, "
                        "else one generated into --state-dir)")  # fmt: skip
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="services, replica records, token")
    parser.add_argument("--log-dir", type=Path, default=Path(".llmserve/logs"), help="replica log files")
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="where replicas run: child processes here, or Ray actors across machines",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="HOST:PORT",
        help="GCS address of a Ray head (ray start --head); default: a private Ray on this machine",
    )
    parser.add_argument(
        "--warm-pool",
        type=int,
        default=0,
        metavar="N",
        help="local backend: keep N processes that have imported vLLM ready, so a vLLM replica (a scale-up, a "
        "request at zero replicas) serves in seconds instead of a minute; ~750 MiB each while idle (default 0)",
    )
    parser.add_argument(
        "--adopt-grace",
        type=float,
        default=60.0,
        metavar="S",
        help="a replica that no controller owns stops itself after S seconds (a restarted controller adopts it first)",
    )
    parser.add_argument(
        "--revision-retire-after",
        type=float,
        default=30.0,
        metavar="S",
        help="a revision that lost its traffic keeps its replicas S seconds (a quick rollback), then they stop",
    )


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--controller",
        default=os.environ.get("LLMSERVE_CONTROLLER", f"http://127.0.0.1:{DEFAULT_CONTROL_PORT}"),
        help="control API URL (also $LLMSERVE_CONTROLLER)",
    )
    parser.add_argument("--token", default=None, help="control token (default: $LLMSERVE_CONTROL_TOKEN, or the "
                        "token file in --state-dir)")  # fmt: skip
    parser.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="where a local controller keeps its token"
    )


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


def _describe_graph(graph: InferenceGraph) -> str:
    exposed = f", exposed as model '{graph.spec.expose_as.model}'" if graph.spec.expose_as else ""
    called = ", ".join(graph.service_names()) or "service URLs only"
    return f"{graph.name}: graph of {len(graph.spec.nodes)} node(s) over {called}{exposed}"


def _cmd_validate(args: argparse.Namespace) -> int:
    declared = load_resources(args.file)
    _check_routing(declared.services, args.routing_profiles, "token-aware")
    print(f"{args.file}: ok, {len(declared.services)} InferenceService(s), {len(declared.graphs)} InferenceGraph(s)")
    for service in declared.services:
        print(f"  {_describe(service)}")
    for graph in declared.graphs:
        print(f"  {_describe_graph(graph)}")
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


# -- clients of a running controller -----------------------------------------------------------------------------
def _client_token(explicit: str | None, state_dir: Path) -> str | None:
    from controller.statedir import read_token

    return explicit or os.environ.get("LLMSERVE_CONTROL_TOKEN") or read_token(state_dir)


def _await_local_token(url: str, state_dir: Path, within_s: float = 30.0) -> str | None:
    """A gateway started beside a controller that is starting too (same machine, same state dir) waits for the
    token the controller writes there at start, rather than starting without one and being refused for good."""
    from urllib.parse import urlsplit

    from controller.statedir import read_token
    from llmserve.serving import is_loopback

    token = read_token(state_dir)
    if token is not None or not is_loopback(urlsplit(url).hostname or ""):
        return token
    print(f"waiting up to {within_s:g} s for the controller's token in {state_dir}", file=sys.stderr)
    deadline = time.monotonic() + within_s
    while token is None and time.monotonic() < deadline:
        time.sleep(0.1)
        token = read_token(state_dir)
    return token


def _call(args: argparse.Namespace, call: Callable[[Any], Awaitable[dict[str, Any]]]) -> dict[str, Any] | None:
    from llmserve.control import ControlAPIError, ControlClient

    async def run() -> dict[str, Any]:
        client = ControlClient(args.controller, _client_token(args.token, args.state_dir))
        try:
            return await call(client)
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except ControlAPIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _cmd_apply(args: argparse.Namespace) -> int:
    source = Path(args.file)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{source}: cannot read the file: {exc.strerror or exc}") from None

    async def apply(client: Any) -> dict[str, Any]:
        # The same checks (and messages) before anything is sent; graphs may call services already running.
        running = [s["name"] for s in (await client.get()).get("services", [])]
        load_resources(source, known_services=running, where="in this file or on the controller")
        return dict(await client.apply(text, str(source)))

    result = _call(args, apply)
    if result is None:
        return 1
    for line in result.get("applied", []):
        print(line)
    return 0


_GRAPH_KINDS = ("graph", "graphs", "inferencegraph", "ig")
_SERVICE_KINDS = ("service", "services", "inferenceservice", "isvc")


def _cmd_delete(args: argparse.Namespace) -> int:
    from llmserve.control import ControlAPIError

    kind, _, name = args.name.rpartition("/")
    if kind and kind.lower() not in (*_GRAPH_KINDS, *_SERVICE_KINDS):
        raise UsageError(f"{args.name}: say service/NAME or graph/NAME (or just NAME for a service)")

    async def delete(client: Any) -> dict[str, Any]:
        if kind.lower() in _GRAPH_KINDS:
            return dict(await client.delete_graph(name))
        try:
            return dict(await client.delete(name))
        except ControlAPIError as exc:
            if kind or exc.status != 404:
                raise
            try:  # no service of that name: a graph, if there is one
                return dict(await client.delete_graph(name))
            except ControlAPIError as graph_exc:
                if graph_exc.status != 404:
                    raise
                raise ControlAPIError(f"{exc} {graph_exc}", 404) from None

    result = _call(args, delete)
    if result is None:
        return 1
    print(f"{result.get('deleted', name)}: deleted")
    return 0


def _cmd_get(args: argparse.Namespace) -> int:
    from llmserve.control import ControlAPIError

    async def get(client: Any) -> dict[str, Any]:
        if args.name is None:
            listed = dict(await client.get())
            listed["graphs"] = (await client.graphs()).get("graphs", [])
            return listed
        kind, _, name = args.name.rpartition("/")
        if kind.lower() in _GRAPH_KINDS:
            return dict(await client.graphs(name))
        try:
            return dict(await client.get(name))
        except ControlAPIError as exc:
            if kind or exc.status != 404:
                raise
            try:
                return dict(await client.graphs(name))
            except ControlAPIError:
                raise exc from None

    result = _call(args, get)
    if result is None:
        return 1
    if args.output == "json":
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    if args.name is not None:
        (_print_graph if result.get("kind") == "InferenceGraph" else _print_service)(result)
        return 0
    for service in result.get("services", []):
        _print_service(service)
    for graph in result.get("graphs", []):
        _print_graph(graph)
    return 0


def _print_graph(graph: dict[str, Any]) -> None:
    nodes = ", ".join(f"{name}: {kind}" for name, kind in graph["nodes"].items())
    services = ", ".join(f"{s['name']} ({s['ready_replicas']} ready)" for s in graph["services"]) or "-"
    print(
        f"graph/{graph['name']}  {'ready' if graph['ready'] else 'waiting for its services'}  nodes: {nodes}  "
        f"services: {services}  POST /v1/graphs/{graph['name']}"
        + (f"  exposed as model '{graph['exposed_as']}'" if graph.get("exposed_as") else "")
    )


def _cmd_status(args: argparse.Namespace) -> int:
    from llmserve.status_table import render_status

    body = _gateway_status(args) if args.gateway else _call(args, lambda client: client.status())
    if body is None:
        return 1
    if args.output == "json":
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
    print(render_status(body), end="")
    gateways = body.get("gateways", [])
    print(f"\ngateways reporting: {len(gateways)}" + (f" ({', '.join(g['id'] for g in gateways)})" if gateways
                                                      else ""))  # fmt: skip
    for graph in body.get("graphs", []):
        _print_graph(graph)
    return 0


def _gateway_status(args: argparse.Namespace) -> dict[str, Any] | None:
    """GET /ui/status of the gateway at --gateway."""
    import httpx

    keys = [k.strip() for k in os.environ.get("LLMSERVE_API_KEYS", "").split(",") if k.strip()]
    key = args.api_key or (keys[0] if keys else None)
    url = args.gateway.rstrip("/") + "/ui/status"
    try:
        response = httpx.get(url, headers={"authorization": f"Bearer {key}"} if key else {}, timeout=10)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach the gateway at {args.gateway}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    if response.status_code != 200:
        print(f"error: {url}: HTTP {response.status_code}: {response.text[:300]}", file=sys.stderr)
        return None
    return dict(response.json())


def _cmd_logs(args: argparse.Namespace) -> int:
    from llmserve.control import ControlAPIError, ControlClient
    from llmserve.replica_logs import LogNotFound, find_logs, follow, tail

    async def status() -> dict[str, Any] | None:
        client = ControlClient(args.controller, _client_token(args.token, args.state_dir), timeout_s=3)
        try:
            return await client.status()
        except ControlAPIError:
            return None  # the controller is down: the log dir's files, by name
        finally:
            await client.close()

    try:
        logs = find_logs(args.log_dir, args.name, asyncio.run(status()))
    except LogNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for log_file in logs:
        if len(logs) > 1:
            print(f"==> {log_file.replica} ({log_file.path}) <==")
        for line in tail(log_file.path, args.lines):
            print(line)
    if args.follow:
        try:
            for line in follow(logs):
                print(line, flush=True)
        except KeyboardInterrupt:
            pass
    return 0


def _print_service(service: dict[str, Any]) -> None:
    decision = service.get("autoscaler")
    print(
        f"{service['name']}  model={service['model']}  ready={service['ready_replicas']}"
        f"/{service['desired_replicas']}  (min {service['min_replicas']}, max {service['max_replicas']})"
        + (f"  autoscaler: {decision['mode']} -> {decision['desired']} ({decision['reason']})" if decision else "")
        + (f"  pull error: {service['pull_error']}" if service.get("pull_error") else "")
    )
    from llmserve.revision_table import replicas_of, revision_lines

    for line in revision_lines(service):
        print(line)
    for replica in replicas_of(service):
        print(
            f"  {replica['id']:<24} {replica['state']:<9} {replica['url'] or '-':<24} "
            f"pid={replica['pid']} restarts={replica['restarts']}"
            + ("  adopted" if replica.get("adopted") else "")
            + (f"  last exit: {replica['last_exit']}" if replica["last_exit"] else "")
        )


# -- the planes --------------------------------------------------------------------------------------------------
def _gateway_settings(args: argparse.Namespace) -> GatewaySettings:
    from gateway.settings import GatewaySettings

    keys = [k for k in args.api_key if k]
    keys += [k.strip() for k in os.environ.get("LLMSERVE_API_KEYS", "").split(",") if k.strip()]
    try:
        return GatewaySettings(
            tracing=_tracing_settings(args),
            host=args.host,
            port=args.port,
            grpc_port=args.grpc_port,
            api_keys=tuple(SecretStr(k) for k in keys),
            max_body_bytes=args.max_body_bytes,
            access_log=args.access_log,
            routing_profiles_dir=str(args.routing_profiles) if args.routing_profiles else None,
            default_routing_profile=args.default_routing_profile,
            front_door=_front_door(args),
            drain_timeout_s=args.drain_timeout,
            max_requests_per_replica=args.max_requests_per_replica or None,
            max_tokens_per_replica=args.max_tokens_per_replica or None,
            activator_queue_depth=args.queue_depth,
            admission_timeout_s=args.admission_timeout,
            upstream_first_byte_timeout_s=args.first_byte_timeout or None,
            upstream_stream_idle_timeout_s=args.stream_idle_timeout or None,
            outlier_consecutive_failures=args.outlier_failures,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def _tracing_settings(args: argparse.Namespace) -> TracingSettings:
    from gateway.tracing import TracingSettings

    try:
        return TracingSettings.from_environment(os.environ, otlp_endpoint=args.otlp_endpoint)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _worker_tracing(args: argparse.Namespace) -> WorkerTracing | None:
    """Where vLLM replicas export their spans: the gateway's OTLP collector, when tracing is on."""
    from llmserve.workers.tracing import WorkerTracing

    tracing = _tracing_settings(args)
    if tracing.otlp_endpoint is None:
        return None
    return WorkerTracing(endpoint=tracing.otlp_endpoint, protocol=tracing.protocol, insecure=tracing.insecure)


def _control_plane(
    args: argparse.Namespace, host: str, gateway_url: str | None = None, gateway_key: str | None = None
) -> ControlPlane:
    from controller.backends.local import Leases, LocalBackend
    from controller.run import ControlPlane
    from controller.settings import ControllerSettings
    from controller.statedir import StateDir
    from llmserve.serving import is_loopback

    if args.revision_retire_after < 0:
        raise UsageError(f"--revision-retire-after: {args.revision_retire_after:g} is not a duration (0 or more)")
    if args.warm_pool < 0:
        raise UsageError(f"--warm-pool: {args.warm_pool} is not a pool size (0 or more)")
    if args.warm_pool and args.backend != "local":
        raise UsageError("--warm-pool: only the local backend keeps a warm pool")
    explicit = args.token or os.environ.get("LLMSERVE_CONTROL_TOKEN")
    if not is_loopback(host) and not explicit:
        raise UsageError(
            f"the control API on {host} would be reachable from other machines: give it a token "
            "(--token or LLMSERVE_CONTROL_TOKEN), which gateways and the CLI then present"
        )
    state_dir = StateDir(args.state_dir)
    token = explicit or state_dir.token()
    settings = ControllerSettings(
        log_dir=args.log_dir,
        warm_pool_size=args.warm_pool,
        gateway_url=gateway_url,
        gateway_api_key=SecretStr(gateway_key) if gateway_key else None,
        worker_tracing=_worker_tracing(args),
        revision_retire_after_s=args.revision_retire_after,
        drain_s=args.drain_timeout,
    )
    backend: Backend
    if args.backend == "ray":
        from controller.backends.ray import RayBackend

        backend = RayBackend(args.log_dir)
    else:
        pool = None
        if settings.warm_pool_size > 0:
            from llmserve.workers.warm import WarmPool

            pool = WarmPool(settings.warm_pool_size, python=settings.python, log_dir=args.log_dir)
        leases = Leases(state_dir.leases_dir, grace_s=args.adopt_grace)
        backend = LocalBackend(
            settings.replica_host, args.log_dir, warm_pool=pool, leases=leases, python=settings.python
        )
    return ControlPlane(
        backend,
        settings,
        host=host,
        port=args.control_port,
        token=token,
        state_dir=state_dir,
        front_door=_front_door(args),
    )


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a core dependency
        return asyncio.run


async def _until_signalled() -> int:
    """Until SIGINT or SIGTERM; which one came."""
    loop = asyncio.get_running_loop()
    came: asyncio.Future[int] = loop.create_future()

    def note(sig: signal.Signals) -> None:
        if not came.done():
            came.set_result(int(sig))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, note, sig)
    try:
        return await came
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def _second_signal_cuts(drain: Drain) -> AsyncIterator[None]:
    """While a gateway drains, a second SIGINT / SIGTERM cuts the drain short: what is in flight ends now (503 or
    a last error frame) and the shutdown goes on cleanly (no replica is left behind)."""
    again = asyncio.ensure_future(_until_signalled())
    again.add_done_callback(lambda done: None if done.cancelled() else drain.cut())
    try:
        yield
    finally:
        again.cancel()


def _with_ray(args: argparse.Namespace, run: Callable[[], None]) -> None:
    if args.backend != "ray":
        run()
        return
    from controller.backends.ray import connect_ray, disconnect_ray

    connect_ray(args.ray_address)  # before the event loop: ray.init blocks for seconds
    try:
        run()
    finally:
        disconnect_ray()


def _cmd_controller(args: argparse.Namespace) -> int:
    declared = load_resources(args.file) if args.file else None
    plane = _control_plane(args, args.host, gateway_url=args.gateway_url)

    async def serve() -> None:
        await plane.start(declared.services if declared else [], declared.graphs if declared else [])
        log.info("control API on %s; %s", plane.url, "Ctrl-C leaves the replicas running" if args.keep_workers
                 else "Ctrl-C stops every replica")  # fmt: skip
        stopped = asyncio.ensure_future(plane.serve_until_stopped())
        signalled = asyncio.ensure_future(_until_signalled())
        await asyncio.wait({stopped, signalled}, return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        await plane.stop(keep_workers=args.keep_workers)

    _with_ray(args, lambda: _event_loop_runner()(serve()))
    return 0


def _cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.settings import ControlLinkSettings

    settings = _gateway_settings(args)
    _check_routing([], args.routing_profiles, args.default_routing_profile)
    if args.workers < 1:
        raise UsageError(f"--workers: {args.workers} is not a number of processes (1 or more)")
    if args.workers > 1:
        from gateway.multiprocess import run_gateway_processes

        return run_gateway_processes(args.workers, _child_argv(args.argv), stop_grace_s=args.drain_timeout + 5)
    url = args.controller or f"http://127.0.0.1:{DEFAULT_CONTROL_PORT}"
    token = _client_token(args.control_token, args.state_dir) or _await_local_token(url, args.state_dir)
    link = ControlLinkSettings(url=url, token=SecretStr(token) if token else None)

    async def serve() -> None:
        from gateway.run import DataPlane

        plane = DataPlane(settings.model_copy(update={"reuse_port": args.reuse_port}), link)
        await plane.start()
        stopped = asyncio.ensure_future(plane.serve_until_stopped())
        signalled = asyncio.ensure_future(_until_signalled())
        await asyncio.wait({stopped, signalled}, return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        async with _second_signal_cuts(plane.gateway.drain):
            await plane.stop()

    _event_loop_runner()(serve())
    return 0


def _child_argv(argv: list[str]) -> list[str]:
    """The command line of one of several gateway processes: the same, with one worker and a shared port."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return [sys.executable, "-m", "llmserve", *out, "--workers", "1", "--reuse-port"]


def _cmd_up(args: argparse.Namespace) -> int:
    from gateway.settings import ControlLinkSettings

    declared = load_resources(args.file)
    services = declared.services
    _check_routing(services, args.routing_profiles, args.default_routing_profile)
    settings = _gateway_settings(args)
    key = settings.api_keys[0].get_secret_value() if settings.api_keys else None
    control = _control_plane(args, "127.0.0.1", gateway_url=_replicas_gateway_url(settings), gateway_key=key)

    async def serve() -> None:
        from controller.metrics import ControllerCollector
        from gateway.run import DataPlane

        await control.start(services, declared.graphs)
        link = ControlLinkSettings(url=control.url, token=SecretStr(control.token))
        # One process: the controller's metrics are served on the gateway's /metrics too (one scrape target).
        gateway = DataPlane(settings, link, collectors=(ControllerCollector(control.controller),))
        try:
            await gateway.start()
            announcer = asyncio.ensure_future(
                _announce(services, settings, gateway, args.log_dir, control, declared.graphs)
            )
            stopped = asyncio.ensure_future(gateway.serve_until_stopped())
            signalled = asyncio.ensure_future(_until_signalled())
            await asyncio.wait({stopped, signalled}, return_when=asyncio.FIRST_COMPLETED)
            signalled.cancel()
            announcer.cancel()
        finally:
            async with _second_signal_cuts(gateway.gateway.drain):
                await gateway.stop()
                await control.stop()
            log.info("stopped")

    _with_ray(args, lambda: _event_loop_runner()(serve()))
    return 0


def _replicas_gateway_url(settings: GatewaySettings) -> str | None:
    """Where replicas of `llmserve up` reach its gateway (LLMSERVE_GATEWAY_URL); None for --port 0 (not known
    until it binds, after replicas may have started)."""
    if settings.port == 0:
        log.warning("--port 0: replicas are not told the gateway's address (LLMSERVE_GATEWAY_URL)")
        return None
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


async def _announce(
    services: list[InferenceService],
    settings: Any,
    gateway: DataPlane,
    log_dir: Path,
    control: ControlPlane,
    graphs: Sequence[InferenceGraph] = (),
) -> None:
    """Say where the gateway is, how the long steps go (pulls, replica starts, the warm pool), and how to call each
    service once it has a ready replica (a call that fits its protocol)."""
    import time

    import httpx

    from llmserve.progress import StartupProgress
    from llmserve.ready_hint import fetch_metadata, ready_hint

    base = f"http://{settings.host}:{gateway.port}"
    log.info("gateway on %s, control API on %s; replica logs in %s; status page %s/ui/; Ctrl-C stops everything",
             base, control.url, log_dir, base)  # fmt: skip
    for graph in graphs:
        exposed = f"; as the OpenAI model '{graph.spec.expose_as.model}'" if graph.spec.expose_as else ""
        log.info("graph '%s': POST %s/v1/graphs/%s%s", graph.name, base, graph.name, exposed)
    for service in services:
        if service.spec.predictor.min_replicas == 0:
            log.info("'%s' scales from zero: its first request starts a replica", service.served_model_name)
    pending = {s.name: s for s in services if s.spec.predictor.min_replicas > 0}
    keys = [key.get_secret_value() for key in settings.api_keys]
    headers = {"authorization": f"Bearer {keys[0]}"} if keys else {}
    endpoints = gateway.watch
    progress = StartupProgress()
    async with httpx.AsyncClient() as client:
        while True:
            status = {"services": control.controller.status(), "backend": control.controller.backend.describe()}
            for line in progress.lines(status, time.monotonic()):
                log.info("%s", line)
            for name in [n for n in pending if endpoints.ready_endpoints(n)]:
                service = pending.pop(name)
                model = service.served_model_name
                metadata = await fetch_metadata(client, base, model, headers) if service.protocol == "v2" else None
                print(ready_hint(model, service.protocol, base, needs_key=bool(keys), metadata=metadata), flush=True)
            await asyncio.sleep(0.5)


if __name__ == "__main__":
    raise SystemExit(main())
