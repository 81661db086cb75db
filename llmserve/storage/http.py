"""http(s)://: one file; archives (tar, zip) are unpacked, anything else is kept under its own name."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from llmserve.storage.errors import StorageError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_name(uri: str) -> str:
    name = _UNSAFE.sub("_", Path(unquote(urlparse(uri).path)).name).strip("._")
    return name or "model"


def download(uri: str, target: Path, *, timeout_s: float = 60.0) -> None:
    """Stream `uri` into `target`; StorageError on a non-200 answer or a network failure."""
    try:
        with httpx.stream("GET", uri, follow_redirects=True, timeout=timeout_s) as response:
            if response.status_code != 200:
                raise StorageError(f"'{uri}': HTTP {response.status_code}")
            with open(target, "wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise StorageError(f"'{uri}': download failed ({exc})") from None
