"""s3://bucket/prefix: every object under the prefix (or the one object named), through boto3.

Credentials and endpoint come from boto3's usual sources: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles,
instance roles, and AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for S3-compatible stores (MinIO, moto, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from llmserve.storage.errors import StorageError


@dataclass(frozen=True)
class S3Object:
    key: str
    relative: str  # where it goes under the model directory
    etag: str
    size: int


def _client() -> Any:
    try:
        import boto3
    except ImportError:
        raise StorageError("s3:// storage needs boto3 (pip install 'llmserve[v2]')") from None
    return boto3.client("s3")


def parse(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise StorageError(f"'{uri}': expected s3://bucket/prefix")
    return bucket, prefix.strip("/")


def list_objects(uri: str, client: Any | None = None) -> list[S3Object]:
    """The objects a URI names: the exact key, or everything below the prefix; keys that would escape the
    model directory (`..`, absolute) are refused."""
    bucket, prefix = parse(uri)
    client = client or _client()
    found: list[S3Object] = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                key: str = item["Key"]
                if key.endswith("/"):
                    continue
                if key == prefix:
                    relative = PurePosixPath(key).name
                elif not prefix or key.startswith(prefix + "/"):
                    relative = key[len(prefix) + 1 :] if prefix else key
                else:
                    continue  # a sibling sharing the prefix text (model-2 next to model)
                parts = PurePosixPath(relative).parts
                if relative.startswith("/") or ".." in parts:
                    raise StorageError(f"'{uri}': object key '{key}' would be written outside the model directory")
                found.append(S3Object(key, relative, str(item.get("ETag", "")), int(item.get("Size", 0))))
    except StorageError:
        raise
    except Exception as exc:  # botocore's errors: no credentials, no bucket, endpoint down
        raise StorageError(f"'{uri}': cannot list objects ({exc})") from None
    if not found:
        raise StorageError(f"'{uri}': no objects found")
    return found


def download(uri: str, objects: list[S3Object], dest: Path, client: Any | None = None) -> None:
    bucket, _ = parse(uri)
    client = client or _client()
    for obj in objects:
        target = dest / obj.relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(bucket, obj.key, str(target))
        except Exception as exc:
            raise StorageError(f"'{uri}': cannot download '{obj.key}' ({exc})") from None
