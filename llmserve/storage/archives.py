"""Unpack tar and zip archives into a model directory, refusing members that would land outside it.

Refused, with the member named: absolute paths, paths with `..`, symbolic or hard links whose target leaves
the directory (or is absolute), device files and FIFOs, and any link inside a zip archive (zipfile would write
it as a plain file). Tar extraction also uses Python's 'data' filter as a second line of defence.
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from llmserve.storage.errors import StorageError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")


def is_archive(path: Path) -> bool:
    if path.name.endswith(ARCHIVE_SUFFIXES):
        return True
    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def unpack(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        _unpack_zip(archive, dest)
    elif tarfile.is_tarfile(archive):
        _unpack_tar(archive, dest)
    else:
        raise StorageError(f"{archive.name}: not a tar or zip archive")


def _check_name(archive: Path, name: str) -> None:
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
        raise StorageError(f"{archive.name}: member '{name}' would be written outside the model directory")


def _unpack_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_name(archive, member.name)
                if member.issym() or member.islnk():
                    _check_link(archive, member)
                elif not (member.isfile() or member.isdir()):
                    raise StorageError(f"{archive.name}: member '{member.name}' is a device or FIFO")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python < 3.11.4: our checks above are the defence
                tar.extractall(dest, members=members)
    except tarfile.TarError as exc:
        raise StorageError(f"{archive.name}: cannot unpack ({exc})") from None


def _check_link(archive: Path, member: tarfile.TarInfo) -> None:
    target = member.linkname
    if member.issym():  # relative to the link's own directory
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), target))
    else:  # hard links name another member, relative to the archive root
        joined = posixpath.normpath(target)
    if target.startswith("/") or joined == ".." or joined.startswith("../"):
        raise StorageError(f"{archive.name}: link '{member.name}' -> '{target}' leaves the model directory")


def _unpack_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_name(archive, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise StorageError(f"{archive.name}: member '{info.filename}' is a link (not allowed in zip)")
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise StorageError(f"{archive.name}: cannot unpack ({exc})") from None
