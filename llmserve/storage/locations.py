"""Which local paths a storageUri may name.

Rule: a local model path (plain, or `file://`) is resolved, symlinks included, and refused when it is the
filesystem root or lies under a system directory: /etc, /proc, /sys, /dev, /boot, /run, /var/run, /bin, /sbin,
/lib, /lib32, /lib64, /libx32, /usr/bin, /usr/sbin, /usr/lib, /usr/lib32, /usr/lib64, /usr/libexec,
/usr/include, /usr/share/ca-certificates, /var/lib/dpkg, /var/lib/apt. Those hold configuration, secrets,
devices and binaries, never models; a typo or a crafted spec must not serve (or unpickle) them. Everything else
(home directories, /srv, /data, /opt, /mnt, /tmp, /usr/local, /usr/share) is allowed.
"""

from __future__ import annotations

from pathlib import Path

from llmserve.storage.errors import StorageError

SYSTEM_ROOTS: tuple[Path, ...] = tuple(
    Path(p)
    for p in (
        "/etc", "/proc", "/sys", "/dev", "/boot", "/run", "/var/run", "/bin", "/sbin", "/lib", "/lib32", "/lib64",
        "/libx32", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/include",
        "/usr/share/ca-certificates", "/var/lib/dpkg", "/var/lib/apt",
    )
)  # fmt: skip
SCHEMES = ("file://", "s3://", "http://", "https://", "pypi://")


def is_system_path(path: Path) -> bool:
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return True
    return any(resolved == root or root in resolved.parents for root in SYSTEM_ROOTS)


def local_path(uri: str) -> Path:
    """The resolved local path of a plain path or file:// URI; StorageError for system directories."""
    raw = uri.removeprefix("file://")
    if raw.startswith("localhost/"):
        raw = raw.removeprefix("localhost")
    path = Path(raw).expanduser()
    if is_system_path(path):
        raise StorageError(
            f"'{uri}': refusing to load a model from a system directory ({path.resolve()}); "
            "put models outside /etc, /proc, /sys, /dev, /boot, /run, /bin, /sbin, /lib* and /usr/{bin,sbin,lib*}"
        )
    return path.resolve()


def scheme_of(uri: str) -> str | None:
    """The URI's scheme with '://', or None for a plain path; StorageError for schemes we do not serve."""
    if "://" not in uri:
        return None
    scheme = uri.split("://", 1)[0] + "://"
    if scheme not in SCHEMES:
        raise StorageError(f"'{uri}': unsupported storage scheme '{scheme}' (supported: {', '.join(SCHEMES)})")
    return scheme
