from __future__ import annotations

import threading
from pathlib import Path

import pytest

from llmserve.storage.cache import ModelCache, cache_key


def test_build_once_then_hit(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    calls = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "config.json").write_text("{}")

    first, built = cache.get_or_build("k", build)
    second, built_again = cache.get_or_build("k", build)
    assert (built, built_again) == (True, False)
    assert first == second == tmp_path / "k"
    assert (first / "config.json").is_file()
    assert len(calls) == 1
    assert calls[0] != first  # built elsewhere, then renamed into place


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)

    def build(tmp: Path) -> None:
        (tmp / "half-written.bin").write_bytes(b"x" * 100)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        cache.get_or_build("k", build)
    assert cache.get("k") is None
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != ".locks"]
    assert leftovers == []


def test_interrupted_build_is_cleaned_by_the_next_one(tmp_path: Path) -> None:
    stale = tmp_path / ".tmp-k-abc123"
    stale.mkdir(parents=True)
    (stale / "partial").write_text("x")
    cache = ModelCache(tmp_path)
    path, built = cache.get_or_build("k", lambda tmp: (tmp / "ok").write_text("1") and None)
    assert built
    assert not stale.exists()
    assert (path / "ok").read_text() == "1"


def test_concurrent_pulls_build_once(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    started = threading.Event()
    release = threading.Event()
    builds = []

    def build(tmp: Path) -> None:
        builds.append(1)
        started.set()
        release.wait(5)
        (tmp / "w").write_text("1")

    results: list[tuple[Path, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_build("k", build))) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert started.wait(5)
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(builds) == 1
    assert sorted(built for _, built in results) == [False, False, True]


def test_cache_keys_are_safe_and_distinct() -> None:
    a = cache_key("../../etc/passwd", "one")
    b = cache_key("../../etc/passwd", "two")
    assert a != b
    assert "/" not in a
    assert not a.startswith(".")
