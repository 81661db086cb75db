"""`llmserve gateway --workers N`: N gateway processes on one port.

Each process binds the port itself with SO_REUSEPORT (the kernel spreads new connections over them), follows the
controller with its own watch and reports its own demand, exactly as gateways on several hosts behind a load
balancer would. This parent only starts them, restarts one that dies (with backoff), and passes SIGINT / SIGTERM on.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("llmserve.gateway")


def run_gateway_processes(count: int, argv: Sequence[str], *, stop_grace_s: float = 10.0) -> int:
    """Run `count` processes of `argv` until SIGINT / SIGTERM, then stop them; the exit status."""
    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: list[subprocess.Popen[bytes]] = [subprocess.Popen(list(argv)) for _ in range(count)]
    log.info("gateway: %d processes sharing the port (pids %s)", count, ", ".join(str(c.pid) for c in children))
    restarts = [0] * count
    try:
        while not stopping:
            for index, child in enumerate(children):
                code = child.poll()
                if code is None:
                    continue
                restarts[index] += 1
                delay = min(30.0, 0.5 * 2 ** min(restarts[index], 6))
                log.warning("gateway process %d exited (%s); restarting it in %.1f s", child.pid, code, delay)
                time.sleep(delay)
                children[index] = subprocess.Popen(list(argv))
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(stopping[0] if stopping else signal.SIGTERM)
        deadline = time.monotonic() + stop_grace_s
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
