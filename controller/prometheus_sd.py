"""Prometheus HTTP service discovery for workers: the controller's status -> the JSON `http_sd_configs` reads.

Workers export their own series (vLLM's `vllm:*`, the V2 runtime's `llmserve_v2_*`), so Prometheus scrapes each
replica directly. Prometheus' HTTP SD wants a list of target groups:

    [{"targets": ["127.0.0.1:43117"], "labels": {"__metrics_path__": "/metrics", "service": "chat", ...}}]

One group per ready replica, labelled `service`, `replica`, `runtime` (and `revision` where the status carries
one), so a dashboard joins a replica's engine series to the gateway's per-service series. These names are not
used by the workers' own series (vLLM labels `model_name` and `engine`; the V2 runtime `model`, `status`,
`reason`), so nothing gets renamed to `exported_*` on ingestion. Replicas that are starting or backing off are
left out: they answer no scrape yet, and the controller's `llmserve_replicas_ready` already tells that story.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

SCRAPED_STATES = frozenset({"ready"})
"""Replica states whose workers are scraped."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


def prometheus_targets(status: Mapping[str, Any], *, metrics_path: str = "/metrics") -> list[dict[str, Any]]:
    """Target groups for every ready replica in `status` (the shape of GET /admin/v1/services:
    `{"services": [{"name", "runtime", "replicas": [{"id", "state", "url", ...}], ...}], ...}`), sorted by
    service and replica so that the answer is stable between polls."""
    groups = []
    for service in status.get("services", ()):
        for replica in _scraped(service.get("replicas", ())):
            groups.append(_group(service, replica, metrics_path))
    groups.sort(key=lambda g: (g["labels"]["service"], g["labels"]["replica"]))
    return groups


def _scraped(replicas: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    return (r for r in replicas if r.get("state") in SCRAPED_STATES and r.get("url"))


def _group(service: Mapping[str, Any], replica: Mapping[str, Any], metrics_path: str) -> dict[str, Any]:
    url = urlsplit(str(replica["url"]))
    if url.scheme not in _DEFAULT_PORTS or url.hostname is None:
        raise ValueError(f"replica {replica.get('id')}: not an http(s) URL: {replica['url']!r}")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    port = url.port or _DEFAULT_PORTS[url.scheme]
    labels = {
        "__scheme__": url.scheme,
        "__metrics_path__": url.path.rstrip("/") + metrics_path,
        "service": str(service["name"]),
        "replica": str(replica["id"]),
        "runtime": str(service.get("runtime") or ""),
    }
    revision = replica.get("revision") or service.get("revision")
    if revision:
        labels["revision"] = str(revision)
    return {"targets": [f"{host}:{port}"], "labels": labels}
