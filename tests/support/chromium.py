"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol from Python, for page tests.

A small synchronous CDP client over `websockets` (already installed with uvicorn[standard]): open a page, wait
for a condition inside it (a MutationObserver, not polling from here), collect console errors, take screenshots.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900", "--remote-debugging-port=0")  # fmt: skip


@dataclass
class Page:
    """One tab: commands go to its session; console errors and uncaught exceptions pile up in `errors`."""

    ws: ClientConnection
    session: str
    errors: list[str] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def send(self, method: str, timeout_s: float = 30, **params: Any) -> dict[str, Any]:
        call = next(self._ids)
        self.ws.send(json.dumps({"id": call, "method": method, "params": params, "sessionId": self.session}))
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._receive(deadline, method)
            if message.get("id") == call:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def wait_event(self, method: str, timeout_s: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._receive(deadline, method)
            if message.get("method") == method:
                return dict(message.get("params", {}))

    def _receive(self, deadline: float, what: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{what}: no answer from Chromium in time")
        message: dict[str, Any] = json.loads(self.ws.recv(timeout=remaining))
        self._note_errors(message)
        return message

    def _note_errors(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append("exception: " + str(details.get("exception", {}).get("description", details["text"])))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"log ({params['entry']['source']}): {params['entry']['text']}")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str, timeout_s: float = 30) -> Any:
        """The value of a JS expression (awaited when it is a promise)."""
        result = self.send(
            "Runtime.evaluate", timeout_s=timeout_s, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, predicate_js: str, timeout_s: float = 15) -> None:
        """Until `predicate_js` (a JS expression) is truthy, checked on every DOM change."""
        script = f"""new Promise((resolve) => {{
            const check = () => {{ try {{ return !!({predicate_js}); }} catch (e) {{ return false; }} }};
            if (check()) return resolve(true);
            const observer = new MutationObserver(() => {{ if (check()) {{ observer.disconnect(); resolve(true); }} }});
            observer.observe(document, {{subtree: true, childList: true, characterData: true, attributes: true}});
            setTimeout(() => {{ observer.disconnect(); resolve(check()); }}, {int(timeout_s * 1000)});
        }})"""
        if not self.evaluate(script, timeout_s=timeout_s + 5):
            body = self.evaluate("document.body.innerText")
            raise AssertionError(f"not reached within {timeout_s} s: {predicate_js}\npage text:\n{body}")

    def text(self, selector: str) -> str | None:
        return self.evaluate(f"document.querySelector({json.dumps(selector)})?.textContent ?? null")  # type: ignore[no-any-return]

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path


def binary() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(
        "'chromium' is not installed: scripts/setup.sh installs Debian's chromium package when run as root "
        "(otherwise: sudo apt-get install chromium)"
    )


@contextmanager
def chromium_page() -> Iterator[Page]:
    """A fresh headless Chromium (own profile dir) with one page whose Runtime, Log and Page domains are on."""
    with tempfile.TemporaryDirectory(prefix="llmserve-chromium-") as profile:
        process, endpoint = _start(profile)
        try:
            with connect(endpoint, max_size=64 * 1024 * 1024, open_timeout=30) as ws:
                ws.send(json.dumps({"id": 1, "method": "Target.createTarget", "params": {"url": "about:blank"}}))
                target = _answer(ws, 1)["targetId"]
                ws.send(json.dumps({"id": 2, "method": "Target.attachToTarget",
                                    "params": {"targetId": target, "flatten": True}}))  # fmt: skip
                page = Page(ws, _answer(ws, 2)["sessionId"])
                for domain in ("Runtime", "Log", "Page"):
                    page.send(f"{domain}.enable")
                yield page
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            if process.stderr is not None:
                process.stderr.close()


def _start(profile: str, attempts: int = 3) -> tuple[subprocess.Popen[str], str]:
    """Chromium and its DevTools endpoint. On a loaded machine it now and then exits before printing the endpoint
    (its launcher script and dbus complaining, then nothing): such a start is tried again, a few times at most."""
    for attempt in range(attempts):
        process = subprocess.Popen(
            [binary(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            return process, _devtools_url(process)
        except AssertionError:
            process.kill()
            process.wait(5)
            if process.stderr is not None:
                process.stderr.close()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _devtools_url(process: subprocess.Popen[str]) -> str:
    assert process.stderr is not None
    seen = []
    deadline = time.monotonic() + 30
    for line in process.stderr:  # Chromium prints the endpoint at once, before anything else it may print
        seen.append(line)
        found = re.search(r"DevTools listening on (ws://\S+)", line)
        if found:  # keep reading its stderr, or a full pipe would stall it
            threading.Thread(target=lambda: seen.extend(process.stderr or ()), daemon=True).start()
            return found[1]
        if time.monotonic() > deadline:
            break
    raise AssertionError("chromium did not start its DevTools endpoint:\n" + "".join(seen[-20:]))


def _answer(ws: ClientConnection, call: int) -> dict[str, Any]:
    while True:
        message = json.loads(ws.recv(timeout=30))
        if message.get("id") == call:
            if "error" in message:
                raise AssertionError(str(message["error"]))
            return dict(message["result"])
