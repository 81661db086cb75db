"""Predictive-model storage: local paths (system directories refused), archives (escapes refused), s3:// against
a local moto server, http(s):// against a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmserve.storage import ModelCache, StorageError, fetch_model_dir, pull
from llmserve.storage.archives import unpack
from llmserve.storage.locations import is_system_path


@pytest.mark.parametrize(
    "uri", ["file:///etc/passwd", "file:///etc", "/proc/self", "file:///", "/usr/lib/python3", "file:///dev/null"]
)
def test_system_directories_are_refused(tmp_path: Path, uri: str) -> None:
    with pytest.raises(StorageError, match="system directory"):
        fetch_model_dir(uri, cache=ModelCache(tmp_path))
    with pytest.raises(StorageError, match="system directory"):
        pull(uri, "huggingface", cache=ModelCache(tmp_path))


def test_symlink_into_a_system_directory_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    assert is_system_path(link)
    with pytest.raises(StorageError, match="system directory"):
        fetch_model_dir(str(link), cache=ModelCache(tmp_path / "c"))


def test_ordinary_locations_are_allowed(tmp_path: Path) -> None:
    assert not is_system_path(tmp_path)
    assert not is_system_path(Path("/usr/local/models"))
    assert not is_system_path(Path("/etcetera/models"))
    model = tmp_path / "m"
    model.mkdir()
    assert fetch_model_dir(f"file://{model}", cache=ModelCache(tmp_path / "c")) == model
    assert fetch_model_dir(str(model), cache=ModelCache(tmp_path / "c")) == model


def test_unknown_scheme_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"unsupported storage scheme 'gs://' \(supported: file://, s3://"):
        fetch_model_dir("gs://bucket/model", cache=ModelCache(tmp_path))
    with pytest.raises(StorageError, match="not a storage for predictive models"):
        fetch_model_dir("pypi://x/y.gguf", cache=ModelCache(tmp_path))


def tar_with(members: list[tarfile.TarInfo], payload: bytes = b"data") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            if member.isfile():
                member.size = len(payload)
                tar.addfile(member, io.BytesIO(payload))
            else:
                tar.addfile(member)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("members", "fragment"),
    [
        ([member("../evil.txt")], "outside the model directory"),
        ([member("ok/../../evil.txt")], "outside the model directory"),
        ([member("/etc/cron.d/evil")], "outside the model directory"),
        ([member("link", tarfile.SYMTYPE, "/etc/passwd")], "leaves the model directory"),
        ([member("sub/link", tarfile.SYMTYPE, "../../secret")], "leaves the model directory"),
        ([member("hard", tarfile.LNKTYPE, "../outside")], "leaves the model directory"),
        ([member("dev", tarfile.CHRTYPE)], "device or FIFO"),
    ],
)
def test_tar_escapes_are_refused(tmp_path: Path, members: list[tarfile.TarInfo], fragment: str) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(tar_with(members))
    dest = tmp_path / "out"
    with pytest.raises(StorageError, match=fragment):
        unpack(archive, dest)
    assert not (tmp_path / "evil.txt").exists()
    assert not any(dest.rglob("*")) if dest.exists() else True


def test_tar_with_inner_links_unpacks(tmp_path: Path) -> None:
    archive = tmp_path / "model.tgz"
    archive.write_bytes(tar_with([member("m/model.txt"), member("m/alias.txt", tarfile.SYMTYPE, "model.txt")]))
    unpack(archive, tmp_path / "out")
    assert (tmp_path / "out" / "m" / "alias.txt").read_bytes() == b"data"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_zip_escapes_are_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr(name, "evil")
    with pytest.raises(StorageError, match="outside the model directory"):
        unpack(archive, tmp_path / "out")


def test_zip_symlinks_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(StorageError, match="is a link"):
        unpack(archive, tmp_path / "out")


def test_local_archive_is_unpacked_into_the_cache(tmp_path: Path) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model.txt", "tree")
    cache = ModelCache(tmp_path / "cache")
    first = fetch_model_dir(str(archive), cache=cache)
    assert (first / "model.txt").read_text() == "tree"
    assert fetch_model_dir(str(archive), cache=cache) == first


# --- http(s):// against a local server ---------------------------------------------------------------------


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_http_archive_is_unpacked(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    url, root = http_root
    (root / "model.tar.gz").write_bytes(tar_with([member("model.txt")], b"booster"))
    path = fetch_model_dir(f"{url}/model.tar.gz", cache=ModelCache(tmp_path / "cache"))
    assert (path / "model.txt").read_bytes() == b"booster"
    (root / "model.joblib").write_bytes(b"pickle")
    single = fetch_model_dir(f"{url}/model.joblib", cache=ModelCache(tmp_path / "cache"))
    assert (single / "model.joblib").read_bytes() == b"pickle"


def test_http_errors(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    url, root = http_root
    cache = ModelCache(tmp_path / "cache")
    with pytest.raises(StorageError, match="HTTP 404"):
        fetch_model_dir(f"{url}/missing.tar.gz", cache=cache)
    (root / "evil.tar.gz").write_bytes(tar_with([member("../evil")]))
    with pytest.raises(StorageError, match="outside the model directory"):
        fetch_model_dir(f"{url}/evil.tar.gz", cache=cache)
    assert [p for p in cache.root.iterdir() if not p.name.startswith(".")] == []  # nothing half-built is kept


# --- s3:// against moto's server ---------------------------------------------------------------------------


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    try:
        yield client
    finally:
        server.stop()


def test_s3_prefix_and_single_archive(tmp_path: Path, s3_endpoint: object) -> None:
    client: object = s3_endpoint
    put = client.put_object  # type: ignore[attr-defined]
    put(Bucket="models", Key="iris/model.joblib", Body=b"pickle")
    put(Bucket="models", Key="iris/sub/extra.json", Body=b"{}")
    put(Bucket="models", Key="iris-2/model.joblib", Body=b"other")  # shares the prefix text: not included
    put(Bucket="models", Key="packed/model.tar.gz", Body=tar_with([member("model.txt")], b"tree"))
    cache = ModelCache(tmp_path / "cache")
    path = fetch_model_dir("s3://models/iris", cache=cache)
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) == [
        "model.joblib",
        "sub/extra.json",
    ]
    assert fetch_model_dir("s3://models/iris/", cache=cache) == path  # cached: same objects, same ETags
    put(Bucket="models", Key="iris/model.joblib", Body=b"retrained")
    changed = fetch_model_dir("s3://models/iris", cache=cache)
    assert changed != path
    assert (changed / "model.joblib").read_bytes() == b"retrained"
    packed = fetch_model_dir("s3://models/packed/model.tar.gz", cache=cache)
    assert (packed / "model.txt").read_bytes() == b"tree"
    with pytest.raises(StorageError, match="no objects found"):
        fetch_model_dir("s3://models/nothing-here", cache=cache)
    with pytest.raises(StorageError, match="cannot list objects"):
        fetch_model_dir("s3://no-such-bucket/x", cache=cache)


def test_s3_keys_that_escape_are_refused(tmp_path: Path, s3_endpoint: object) -> None:
    s3_endpoint.put_object(Bucket="models", Key="bad/../../escape.txt", Body=b"x")  # type: ignore[attr-defined]
    s3_endpoint.put_object(Bucket="models", Key="bad/model.txt", Body=b"x")  # type: ignore[attr-defined]
    with pytest.raises(StorageError, match="outside the model directory"):
        fetch_model_dir("s3://models/bad", cache=ModelCache(tmp_path / "cache"))
