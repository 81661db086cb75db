"""GGUF -> float32 safetensors + tokenizer, so vLLM loads it like any Hugging Face model directory.

The work runs in a child process (`llmserve.storage.gguf_convert`) so the caller never imports torch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llmserve.storage.errors import StorageError

_REQUIRED_OUTPUTS = ("config.json", "model.safetensors")


def convert(gguf_file: Path, out_dir: Path) -> None:
    """Convert in a child process; raise StorageError with the child's last lines on failure."""
    cmd = [sys.executable, "-m", "llmserve.storage.gguf_convert", str(gguf_file), str(out_dir)]
    # The child's progress bars (stderr) reach the terminal; its reason for failing comes back on stdout.
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        reason = proc.stdout.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise StorageError(f"could not convert GGUF file '{gguf_file.name}': {reason[0]}")
    missing = [name for name in _REQUIRED_OUTPUTS if not (out_dir / name).is_file()]
    if missing:
        raise StorageError(f"converting '{gguf_file.name}' produced no {', '.join(missing)}")
