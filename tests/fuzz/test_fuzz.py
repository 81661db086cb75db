"""The atheris fuzz targets (tests/fuzz/targets.py), each run in its own process (libFuzzer exits the process it
runs in) with a small budget: LLMSERVE_FUZZ_RUNS inputs per target (CI: 20000), or LLMSERVE_FUZZ_SECONDS per target
(`make fuzz`: 600). A crash or a hang (an input over 10 s) fails the test and leaves the input in the test's tmp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

RUNS = int(os.environ.get("LLMSERVE_FUZZ_RUNS", "20000"))
SECONDS = int(os.environ.get("LLMSERVE_FUZZ_SECONDS", "0"))  # set: run each target this long instead of RUNS inputs


@pytest.mark.parametrize("name", ["openai", "v2", "spec"])
def test_no_crash_or_hang(name: str, tmp_path: Path) -> None:
    from tests.fuzz.targets import seeds

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(seeds(name)):
        (corpus / f"seed-{i}").write_bytes(seed)
    cmd = [
        sys.executable, "-m", "tests.fuzz.targets", name, f"-max_total_time={SECONDS}" if SECONDS else f"-runs={RUNS}",
        "-timeout=10", "-rss_limit_mb=2048",
        "-seed=1", f"-artifact_prefix={tmp_path}/", str(corpus),
    ]  # fmt: skip
    result = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=SECONDS + 600, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    artifacts = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-"))]
    assert not artifacts, f"{artifacts}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, result.stderr[-4000:]
    assert "DONE" in result.stderr or f"Done {RUNS} runs" in result.stderr, result.stderr[-2000:]
