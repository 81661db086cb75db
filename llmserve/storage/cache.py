"""A directory of finished model entries; an entry appears whole (built in a temp dir, then renamed) or not at all."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_cache_root() -> Path:
    env = os.environ.get("LLMSERVE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmserve" / "models"


def cache_key(label: str, identity: str) -> str:
    """A readable, filesystem-safe key: the label's tail plus a hash of everything that identifies the entry."""
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    tail = _UNSAFE.sub("-", label).strip("-.")[-48:] or "model"
    return f"{tail}-{digest}"


class ModelCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_cache_root()).expanduser()

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> Path | None:
        path = self.path(key)
        return path if path.is_dir() else None

    def get_or_build(self, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """The entry for `key`, building it with `build(tmp_dir)` first if missing.

        Returns (path, built). Concurrent callers for one key wait on a file lock; the builder writes into a
        private temp dir that is renamed into place only after `build` returns, and removed if it raises.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        locks = self.root / ".locks"
        locks.mkdir(exist_ok=True)
        with open(locks / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            final = self.path(key)
            if final.is_dir():
                return final, False
            for stale in self.root.glob(f".tmp-{key}-*"):  # left by a build that was killed
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.root))
            try:
                build(tmp)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return final, True
