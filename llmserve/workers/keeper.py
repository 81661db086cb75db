"""`python -m llmserve.workers.keeper --lease FILE --grace S -- COMMAND...`: a replica that outlives its controller,
but not for long without one.

The local backend starts every replica under a keeper, which leads the replica's process group and does not die
with the controller: a controller that crashes or is upgraded finds its replicas still serving and re-adopts them
(controller/adoption.py). The controller renews the replica's lease by touching FILE every few seconds; when nobody
has renewed it for S seconds (no controller adopted the replica), the keeper stops the worker and exits, so no
replica is ever left behind for good. The worker is the keeper's child in the same process group: stopping the
group stops both, and the worker dies with the keeper (PR_SET_PDEATHSIG) if the keeper is killed outright.

Stdlib only: the keeper costs a small Python process per replica.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from llmserve.workers.processes import die_with_parent

CHECK_INTERVAL_S = 1.0


def lease_age(path: str, now: float) -> float:
    """Seconds since the lease was last renewed (infinite if the file is gone)."""
    try:
        return now - os.stat(path).st_mtime
    except FileNotFoundError:
        return float("inf")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmserve.workers.keeper")
    parser.add_argument("--lease", required=True, help="file whose modification time is the lease")
    parser.add_argument("--grace", type=float, required=True, help="seconds without a renewal before stopping")
    parser.add_argument("--stop-grace", type=float, default=15.0, help="SIGTERM, then SIGKILL after this long")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the worker's command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no worker command after --")

    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if worker.poll() is None:
            worker.send_signal(signum)

    worker = subprocess.Popen(command, preexec_fn=die_with_parent)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            return _exit_status(worker.wait(timeout=CHECK_INTERVAL_S))
        except subprocess.TimeoutExpired:
            pass
        if stopping:
            continue
        age = lease_age(args.lease, time.time())
        if age > args.grace:
            print(
                f"[keeper] no controller renewed {args.lease} for {age:.0f} s (grace {args.grace:g} s): "
                f"stopping the worker (pid {worker.pid})",
                file=sys.stderr,
                flush=True,
            )
            stopping = True
            worker.terminate()
            try:
                return _exit_status(worker.wait(timeout=args.stop_grace))
            except subprocess.TimeoutExpired:
                os.killpg(os.getpgrp(), signal.SIGKILL)  # the whole group, this keeper included
                return 137


def _exit_status(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N -> 128 + N, as a shell reports it


if __name__ == "__main__":
    raise SystemExit(main())
