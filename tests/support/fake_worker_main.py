"""`python -m tests.support.fake_worker_main --host H --port P [--ignore-sigterm] [--spawn-child]`.

A real process serving the fake OpenAI worker, for tests of process supervision.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys

import uvicorn

from tests.support.fake_worker import FakeWorker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--spawn-child", action="store_true", help="start a long-lived child, as vLLM does")
    args = parser.parse_args()
    if args.spawn_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        print(f"child pid {child.pid}", flush=True)
    config = uvicorn.Config(FakeWorker(f"port{args.port}"), host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    if args.ignore_sigterm:
        # A worker that will not stop politely: only SIGKILL ends it.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    server.run()


if __name__ == "__main__":
    main()
