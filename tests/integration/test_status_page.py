"""The status page (gateway/ui) over real HTTP, and in a real headless Chromium: it loads without console errors
and shows a service going from 0 to 1 replica as its status source changes; a screenshot goes to the test's
tmp dir (and, with LLMSERVE_SCREENSHOTS=DIR, to DIR)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth import APIKeyMiddleware
from gateway.ui import UISettings, status_page
from tests.support.chromium import chromium_page
from tests.support.servers import ServerThread, serving


def service(desired: int, replicas: list[dict[str, Any]], decision: dict[str, Any] | None) -> dict[str, Any]:
    return {"name": "chat", "model": "smollm2", "runtime": "vllm", "min_replicas": 0, "max_replicas": 2,
            "desired_replicas": desired, "ready_replicas": sum(r["state"] == "ready" for r in replicas),
            "pull_error": None, "autoscaler": decision, "replicas": replicas}  # fmt: skip


IDLE = {"services": [service(0, [], {"mode": "idle", "desired": 0, "reason": "idle for 30 s: scale to zero"})],
        "backend": {"name": "local", "warm_pool": None}}  # fmt: skip
WAKING = {
    "services": [service(1, [{"id": "chat-0", "state": "starting", "url": None, "pid": 4242, "restarts": 0,
                              "last_exit": None}],
                         {"mode": "panic", "desired": 1, "reason": "request waiting at zero replicas"})],
    "activator": {"chat": 1},
    "backend": {"name": "local", "warm_pool": None},
}  # fmt: skip
READY_SERVICE = service(
    1,
    [
        {
            "id": "chat-0",
            "state": "ready",
            "url": "http://127.0.0.1:41000",
            "pid": 4242,
            "restarts": 0,
            "last_exit": None,
            "revision": "chat-r1",
            "load": {"in_flight": 1, "running": 1, "waiting": 0, "kv_cache_usage": 0.12},
        }
    ],
    {"mode": "stable", "desired": 1, "reason": "stable: 1.0 over 60 s"},
)
READY = {
    "services": [{**READY_SERVICE, "revisions": [{"name": "chat-r1", "traffic_percent": 100, "ready_replicas": 1}]}],
    "activator": {"chat": 0},
    "errors": [{"time": 1796150000, "service": "chat", "status": 503,
                "message": "No replica of 'chat' became ready within 120 s"}],
    "backend": {"name": "local", "warm_pool": None},
}  # fmt: skip


class Source:
    """The injected status source: the test swaps what it returns."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = IDLE
        self.fail: str | None = None

    async def __call__(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError(self.fail)
        return self.status


@pytest.fixture
def page_server() -> Iterator[tuple[ServerThread, Source]]:
    source = Source()
    with serving(status_page(source, UISettings(interval_s=0.05))) as server:
        yield server, source


def events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    event = ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            yield event, json.loads(line.split(":", 1)[1])


def test_routes(page_server: tuple[ServerThread, Source]) -> None:
    server, _ = page_server
    with httpx.Client(base_url=server.url, timeout=10) as client:
        redirect = client.get("/ui")
        assert (redirect.status_code, redirect.headers["location"]) == (307, "/ui/")
        page = client.get("/ui/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<title>llmserve status</title>" in page.text
        assert client.get("/ui/status").json() == IDLE
        missing = client.get("/ui/nothing")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        assert client.get("/elsewhere").status_code == 404
        posted = client.post("/ui/status")
        assert (posted.status_code, posted.headers["allow"]) == (405, "GET")


def test_events_send_the_status_when_it_changes_and_say_when_it_is_unavailable(
    page_server: tuple[ServerThread, Source],
) -> None:
    server, source = page_server
    with httpx.stream("GET", f"{server.url}/ui/events", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response)
        assert next(stream) == ("status", IDLE)  # at once
        source.status = WAKING
        assert next(stream) == ("status", WAKING)  # the next one only once it changed
        source.fail = "controller unreachable"
        kind, body = next(stream)
        assert kind == "unavailable"
        assert "controller unreachable" in body["message"]
        source.fail = None
        source.status = READY
        assert next(stream) == ("status", READY)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        source.fail = "down"
        assert client.get("/ui/status").status_code == 503


def test_in_headless_chromium_a_service_goes_from_0_to_1_replica(
    page_server: tuple[ServerThread, Source], tmp_path: Path
) -> None:
    server, source = page_server
    with chromium_page() as page:
        page.open(f"{server.url}/ui/")
        chat = '[data-service="chat"]'
        page.wait_for(f"document.querySelector('{chat} [data-field=ready]')?.textContent === '0/0'")
        assert page.text(f"{chat} [data-field=no-replicas]") == "no replicas"
        assert page.text("#connection") == "live"

        source.status = WAKING  # a request arrived: held, the autoscaler asks for a replica
        page.wait_for(f"document.querySelector('{chat} [data-field=ready]')?.textContent === '0/1'")
        assert page.text(f"{chat} [data-field=held]") == "1"
        assert page.text(f'{chat} [data-replica="chat-0"] [data-field=state]') == "starting"
        assert page.text(f"{chat} [data-field=decision]") == "panic → 1"

        source.status = READY
        page.wait_for(f"document.querySelector('{chat} [data-field=ready]')?.textContent === '1/1'")
        assert page.text(f'{chat} [data-replica="chat-0"] [data-field=state]') == "ready"
        assert "1 in flight" in (page.text(f'{chat} [data-replica="chat-0"]') or "")
        assert page.text(f'{chat} [data-revision="chat-r1"]') == "chat-r1100 %1"
        assert "became ready within 120 s" in (page.text("#errors") or "")
        shot = page.screenshot(tmp_path / "status-page.png")

        source.fail = "controller unreachable"
        page.wait_for("document.querySelector('#connection').textContent.includes('controller unreachable')")
        assert page.errors == [], page.errors
    assert shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("LLMSERVE_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["LLMSERVE_SCREENSHOTS"]) / shot.name)


def test_behind_api_keys_the_page_asks_for_one_and_streams_with_it() -> None:
    """The hook-up the gateway needs: the page itself public (it holds no data), its status and events behind
    the gateway's bearer keys (APIKeyMiddleware)."""
    source = Source()
    page_app = status_page(source, UISettings(interval_s=0.05))
    guarded = APIKeyMiddleware(page_app, ["s3cret"])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        public = scope["type"] == "http" and scope["path"] in ("/ui", "/ui/")
        await (page_app if public or scope["type"] == "lifespan" else guarded)(scope, receive, send)

    with serving(app) as server, chromium_page() as page:
        assert httpx.get(f"{server.url}/ui/status", timeout=10).status_code == 401
        page.open(f"{server.url}/ui/")
        page.wait_for("document.querySelector('#connection').textContent === 'needs an API key'")
        assert page.evaluate("getComputedStyle(document.querySelector('#key')).display") == "flex"
        page.evaluate("document.querySelector('#key-input').value = 's3cret'; "
                      "document.querySelector('#key button').click(); true")  # fmt: skip
        page.wait_for("document.querySelector('[data-service=chat] [data-field=ready]')?.textContent === '0/0'")
        assert page.text("#connection") == "live"
        assert page.evaluate("getComputedStyle(document.querySelector('#key')).display") == "none"
        unexpected = [e for e in page.errors if "status of 401" not in e]  # the first, keyless try
        assert unexpected == [], page.errors
