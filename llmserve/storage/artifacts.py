"""fetch_model_dir: a storageUri for a predictive model -> a local file or directory.

- a plain path or file://: used where it is (a directory or a single model file); a local archive is
  unpacked into the cache. System directories are refused (see locations.py).
- s3://bucket/prefix: the objects below the prefix, cached by URI and the objects' ETags (a changed object is
  fetched again); a single archive object is unpacked.
- http(s)://host/path: the file, cached by URI; a tar or zip is unpacked.
Loading a pickled model runs code from it: a storageUri must name a trusted source.
"""

from __future__ import annotations

from pathlib import Path

from llmserve.storage import archives, http, s3
from llmserve.storage.cache import ModelCache, cache_key
from llmserve.storage.errors import StorageError
from llmserve.storage.locations import local_path, scheme_of


def fetch_model_dir(uri: str, *, cache: ModelCache | None = None) -> Path:
    scheme = scheme_of(uri)
    cache = cache or ModelCache()
    if scheme in (None, "file://"):
        return _local(uri, cache)
    if scheme == "s3://":
        return _s3(uri, cache)
    if scheme in ("http://", "https://"):
        return _http(uri, cache)
    raise StorageError(f"'{uri}': {scheme} is not a storage for predictive models")


def _local(uri: str, cache: ModelCache) -> Path:
    path = local_path(uri)
    if not path.exists():
        raise StorageError(f"'{uri}': no such file or directory ({path})")
    if path.is_file() and path.name.endswith(archives.ARCHIVE_SUFFIXES):
        stat = path.stat()
        key = cache_key(path.name, f"archive:{path}:{stat.st_size}:{stat.st_mtime_ns}")
        built, _ = cache.get_or_build(key, lambda tmp: archives.unpack(path, tmp))
        return built
    return path


def _s3(uri: str, cache: ModelCache) -> Path:
    objects = s3.list_objects(uri)
    bucket, prefix = s3.parse(uri)
    identity = f"{bucket}/{prefix}|" + "|".join(
        f"{o.key}:{o.etag}:{o.size}" for o in sorted(objects, key=lambda o: o.key)
    )
    key = cache_key(prefix.rsplit("/", 1)[-1] or bucket, f"s3:{identity}")

    def build(tmp: Path) -> None:
        s3.download(uri, objects, tmp)
        _unpack_single_archive(tmp)

    return cache.get_or_build(key, build)[0]


def _http(uri: str, cache: ModelCache) -> Path:
    name = http.file_name(uri)

    def build(tmp: Path) -> None:
        http.download(uri, tmp / name)
        _unpack_single_archive(tmp)

    return cache.get_or_build(cache_key(name, f"http:{uri}"), build)[0]


def _unpack_single_archive(folder: Path) -> None:
    """A directory holding just one archive becomes the archive's contents."""
    files = [p for p in folder.iterdir()]
    if len(files) == 1 and files[0].is_file() and archives.is_archive(files[0]):
        archive = folder / f".{files[0].name}"
        files[0].rename(archive)
        try:
            archives.unpack(archive, folder)
        finally:
            archive.unlink()
