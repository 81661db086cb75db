"""A pooled worker process: import vLLM once, wait for one bind, then serve vLLM's OpenAI API on the given port.

Started as `python -m llmserve.workers.warm --control-socket PATH --worker-id ID` (by `WarmPool`, or by anything
that can start a plain process: a controller backend, or a Ray actor through `subprocess` — inside an actor's own
process vLLM would force `spawn` again). Heavy imports happen here only, never in the client side of the package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmserve.workers.processes import die_with_parent
from llmserve.workers.warm.protocol import IMPORT_TIME_ENV, MAX_LINE, decode, encode

log = logging.getLogger("llmserve.workers.warm")

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llmserve.workers.warm", description=__doc__)
    parser.add_argument("--control-socket", required=True, help="Unix socket the pool listens on")
    parser.add_argument("--worker-id", required=True, help="the id the pool gave this process")
    parser.add_argument(
        "--preload", action="append", default=[], metavar="MODULE", help="another module to import while idle"
    )
    return parser


class Channel:
    """Blocking JSON-lines connection to the pool."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""
        self.open = True

    @classmethod
    def connect(cls, path: str) -> Channel:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return cls(sock)

    def send(self, message: Mapping[str, Any]) -> None:
        if not self.open:
            return
        try:
            self._sock.sendall(encode(message))
        except OSError:  # the pool is gone; a bound worker keeps serving without it
            self.open = False

    def receive(self) -> dict[str, Any] | None:
        """The next message, or None when the pool closed the connection."""
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk or len(self._buffer) > MAX_LINE:
                self.open = False
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return decode(line)


def apply_env(env: Mapping[str, str]) -> list[str]:
    """Set the bind's environment; the names that only take effect at import time (and differ) are returned."""
    ignored = []
    for name, value in env.items():
        if os.environ.get(name) == value:
            continue
        if name in IMPORT_TIME_ENV:
            ignored.append(name)
            continue
        os.environ[name] = value
    return sorted(ignored)


def _read_ahead(model: str) -> None:
    """Ask the kernel to start reading the weights now, while the tokenizer and engine config load."""
    directory = Path(model)
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if path.suffix in _WEIGHT_SUFFIXES and path.is_file():
            with contextlib.suppress(OSError), open(path, "rb") as file:
                os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)


async def _probe_health(host: str, port: int) -> None:
    """Until GET /health answers 200 (the socket listens from the start; uvicorn answers once the app is up)."""
    request = f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(request)
                status = await asyncio.wait_for(reader.readline(), 30)
            finally:
                writer.close()
            if status.split(b" ")[1:2] == [b"200"]:
                return
        except (OSError, TimeoutError, IndexError):
            pass
        await asyncio.sleep(0.05)


async def _serve(prepared: Any, args: argparse.Namespace, channel: Channel, bind_started: float, method: str) -> None:
    from llmserve.workers.warm import vllm_internals

    probe_host = "127.0.0.1" if args.host in (None, "", "0.0.0.0") else args.host
    host_part = f"[{probe_host}]" if ":" in probe_host else probe_host
    url = f"http://{host_part}:{args.port}"

    async def report_serving() -> None:
        await _probe_health(probe_host, args.port)
        bind_s = time.monotonic() - bind_started
        log.info("serving %s at %s, %.2f s after the bind command", args.served_model_name or args.model, url, bind_s)
        channel.send({"type": "serving", "url": url, "bind_s": bind_s})

    probe = asyncio.get_running_loop().create_task(report_serving())
    try:
        await vllm_internals.serve(prepared, args, multiproc_method=method)
    finally:
        probe.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = _parser().parse_args(argv)
    from llmserve.workers.warm import vllm_internals  # light: vLLM itself is imported by prepare()

    preload = vllm_internals.child_ld_preload(os.environ)
    if preload is not None:  # start again with the libraries vLLM preloads for its own processes (same pid)
        os.environ["LD_PRELOAD"] = preload
        os.execv(sys.executable, [sys.executable, "-m", "llmserve.workers.warm", *argv])
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s llmserve-warm[{os.getpid()}] %(levelname)s %(message)s"
    )
    die_with_parent(signal.SIGTERM)
    # Every process vLLM forks from us (engine core, and the worker it forks) dies with its parent: no orphans
    # even when this process is SIGKILLed.
    os.register_at_fork(after_in_child=lambda: die_with_parent(signal.SIGKILL))
    channel = Channel.connect(opts.control_socket)
    channel.send({"type": "started", "worker_id": opts.worker_id, "pid": os.getpid()})

    started = time.monotonic()
    try:
        prepared = vllm_internals.prepare(opts.preload)
    except Exception as exc:
        log.exception("cannot prepare vLLM")
        channel.send({"type": "failed", "error": f"preparing vLLM: {exc!r}"})
        return 2
    for failure in prepared.failed_preloads:
        log.warning("preload skipped: %s", failure)
    ready_s = time.monotonic() - started
    log.info("idle: vLLM %s imported in %.1f s; waiting for a bind", prepared.version, ready_s)
    channel.send({"type": "idle", "preload_s": ready_s, "vllm_version": prepared.version, "python": sys.version})

    message = channel.receive()
    if message is None:
        log.info("the pool closed the control connection; exiting")
        return 0
    bind_started = time.monotonic()
    if message["type"] != "bind":
        channel.send({"type": "failed", "error": f"expected a bind command, got {message['type']!r}"})
        return 2
    env = {str(k): str(v) for k, v in dict(message.get("env") or {}).items()}
    cpus = {int(cpu) for cpu in message.get("cpus") or []}
    if cpus:  # before the engine processes are forked: they inherit it
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as exc:
            log.warning("bind: cannot run on CPUs %s: %s", sorted(cpus), exc)
    ignored = apply_env(env)
    if ignored:
        log.warning("bind: %s only take effect at import time; start the pool with them", ", ".join(ignored))
    method = env.get("VLLM_WORKER_MULTIPROC_METHOD", "fork")
    cli_args = [str(a) for a in message.get("args") or []]
    log.info("bind: %s", " ".join(cli_args))
    try:
        args = vllm_internals.parse_args(prepared, cli_args)
    except (Exception, SystemExit) as exc:
        channel.send({"type": "failed", "error": f"invalid vLLM arguments: {exc!r}"})
        return 2
    _read_ahead(str(args.model))
    channel.send({"type": "binding", "ignored_env": ignored})
    try:
        import uvloop

        uvloop.run(_serve(prepared, args, channel, bind_started, method))
    except Exception as exc:
        log.exception("serving failed")
        channel.send({"type": "failed", "error": f"serving failed: {exc!r}"})
        return 1
    return 0
