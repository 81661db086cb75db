"""A client of the controller's control API (routes and wire format: llmserve/protocol/control.py), used by
gateways (watch, demand reports, wake, suspect reports) and by the CLI (apply, delete, get, status; graphs too).

Off the request path: httpx, one connection pool per client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson

from llmserve.endpoints import Demand
from llmserve.protocol.control import (
    BOOKMARK_INTERVAL_S,
    PREFIX,
    DemandReport,
    ServiceDemand,
    SuspectReport,
    WakeRequest,
)


class ControlAPIError(Exception):
    """The controller answered with an error (its message), or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ControlClient:
    def __init__(self, url: str, token: str | None, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s)

    async def close(self) -> None:
        await self._client.aclose()

    # -- gateways ----------------------------------------------------------------------------------------------------
    async def watch(self, resource_version: str = "") -> AsyncIterator[dict[str, Any]]:
        """The watch's events as they come; ends (ControlAPIError) when the stream breaks or stays silent for
        three bookmark intervals."""
        params = {"resourceVersion": resource_version} if resource_version else {}
        timeout = httpx.Timeout(10.0, read=3 * BOOKMARK_INTERVAL_S)
        try:
            async with self._client.stream("GET", f"{PREFIX}/watch", params=params, timeout=timeout) as response:
                if response.status_code != 200:
                    body = await response.aread()
                    raise ControlAPIError(_message(body, response.status_code), response.status_code)
                async for line in response.aiter_lines():
                    if line:
                        yield orjson.loads(line)
        except httpx.HTTPError as exc:
            raise ControlAPIError(f"watch broke: {type(exc).__name__}: {exc}") from None

    async def report_demand(self, gateway: str, seq: int, services: Mapping[str, Demand]) -> None:
        report = DemandReport(
            gateway=gateway, seq=seq, services={name: ServiceDemand.of(d) for name, d in services.items()}
        )
        await self._post(f"{PREFIX}/demand", report.model_dump_json().encode())

    async def wake(self, gateway: str, service: str) -> None:
        await self._post(f"{PREFIX}/wake", WakeRequest(gateway=gateway, service=service).model_dump_json().encode())

    async def suspect(self, gateway: str, service: str, replica: str, url: str, reason: str) -> None:
        report = SuspectReport(gateway=gateway, service=service, replica=replica, url=url, reason=reason[:1000])
        await self._post(f"{PREFIX}/suspect", report.model_dump_json().encode())

    # -- users -------------------------------------------------------------------------------------------------------
    async def apply(self, text: str, source: str) -> dict[str, Any]:
        return await self._call(
            "PUT", f"{PREFIX}/services", content=text.encode(), params={"source": source},
            headers={"content-type": "application/yaml"},
        )  # fmt: skip

    async def delete(self, name: str) -> dict[str, Any]:
        return await self._call("DELETE", f"{PREFIX}/services/{name}")

    async def get(self, name: str | None = None) -> dict[str, Any]:
        return await self._call("GET", f"{PREFIX}/services" + (f"/{name}" if name else ""))

    async def graphs(self, name: str | None = None) -> dict[str, Any]:
        """InferenceGraphs (`{"graphs": [...]}`), or one graph."""
        return await self._call("GET", f"{PREFIX}/graphs" + (f"/{name}" if name else ""))

    async def delete_graph(self, name: str) -> dict[str, Any]:
        return await self._call("DELETE", f"{PREFIX}/graphs/{name}")

    async def status(self) -> dict[str, Any]:
        return await self._call("GET", f"{PREFIX}/status")

    async def state(self) -> dict[str, Any]:
        return await self._call("GET", f"{PREFIX}/state")

    # -- internals ---------------------------------------------------------------------------------------------------
    async def _post(self, path: str, body: bytes) -> None:
        await self._call("POST", path, content=body, headers={"content-type": "application/json"})

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ControlAPIError(f"cannot reach the controller at {self.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise ControlAPIError(_message(response.content, response.status_code), response.status_code)
        parsed = orjson.loads(response.content) if response.content else {}
        return parsed if isinstance(parsed, dict) else {"result": parsed}


def _message(body: bytes, status: int) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}"
