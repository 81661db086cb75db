"""The graph router: KServe's InferenceGraph semantics (cmd/router/main.go) as a small interpreter, plus streaming.

One function per router type over one step caller (steps.py):

- **Sequence**: steps in order. A step is sent the graph's input, or the previous step's answer when its `data` is
  `$response`; `mapPredictionsToInstances` rewrites what it is sent. A step's `condition` is a GJSON path tested on
  the previous answer: not valid JSON -> 500 "invalid response"; not met -> the node answers the previous answer
  with 200. A Hard step's non-2xx answer ends the node with that answer; Soft steps go on. The node answers what
  its last step answered.
- **Switch**: the first step whose condition exists in the input (valid JSON) is taken and answers; none -> 404.
- **Ensemble**: all steps at once with the input; each must answer a JSON object; the node answers
  `{name or index: answer}` (keys sorted, like Go's encoder) with 200. In step order, the first Hard step with a
  non-2xx answer decides the node's answer instead; a step that fails to answer (or whose answer is no object)
  fails the node with 500.
- **Splitter**: a cryptographically random integer in [0, 100) against the cumulative weights picks the step.
- A step that cannot be called fails the graph (the caller's ServingError; KServe: 500); failures are rendered
  with KServe's body `{"error": "Failed to process request", "cause": ...}` by the HTTP layer.

Streaming (what KServe's router cannot do): the step whose answer is the client's (the last of a Sequence, the
pick of a Switch or Splitter, recursively from root) and declares `stream: true` is asked for chunks; its answer
is returned as soon as its headers are in, and its chunks flow to the client as they arrive, each within
`routerTimeouts.streamIdle` of the previous one. Every other step is read whole. Limits: `routerTimeouts.
serviceClient` per step (a streamed step: until its headers), the graph's `timeout` until its answer starts.
Cancelling `run()` (the client went away) cancels every step in flight; their callers abort the upstream.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

from gateway.graph import bodies
from gateway.graph.settings import GraphRouterSettings
from gateway.graph.steps import JSON_TYPE, Chunks, Headers, StepAnswer, StepCaller, StepTarget
from llmserve.protocol.errors import ServingError
from llmserve.spec.graph import ROOT, InferenceGraph, InferenceRouter, InferenceStep

NO_ROUTE_MATCHED = "None of the routes matched with the switch condition"
_Member = tuple[int, dict[str, Any] | None]  # an Ensemble step's status and JSON object


def no_route_matched() -> ServingError:
    return ServingError(404, NO_ROUTE_MATCHED, code="no_route_matched")


class GraphRouter:
    """Runs one InferenceGraph. `pick(n)` draws an integer in [0, n) for Splitters (default: `secrets.randbelow`,
    a cryptographic RNG as KServe's crypto/rand; inject a seeded one in tests)."""

    def __init__(
        self,
        graph: InferenceGraph,
        call: StepCaller,
        settings: GraphRouterSettings | None = None,
        *,
        pick: Callable[[int], int] = secrets.randbelow,
    ) -> None:
        self.graph = graph
        self._call = call
        self._pick = pick
        self._patterns = (settings or GraphRouterSettings()).header_patterns()
        self._nodes = graph.spec.nodes
        timeouts = graph.spec.router_timeouts
        self._step_limit = timeouts.service_client
        self._idle_limit = timeouts.stream_idle

    @property
    def name(self) -> str:
        return self.graph.name

    def step_headers(self, client_headers: Headers) -> Headers:
        """The client's headers that every step is sent: those matching the propagation patterns; content-type
        application/json unless one was propagated."""
        headers = [(k, v) for k, v in client_headers if any(p.search(k.decode("latin-1")) for p in self._patterns)]
        if not any(k.lower() == b"content-type" for k, _ in headers):
            headers.append((b"content-type", JSON_TYPE))
        return headers

    async def run(self, body: bytes, client_headers: Headers, *, stream: bool = True) -> StepAnswer:
        """The graph's answer to `body`. With `stream`, a streaming terminal step's answer comes back as chunks
        (bounded by the idle limit); otherwise every answer is whole. ServingError when the graph fails."""
        headers = self.step_headers(client_headers)
        limit = self.graph.spec.timeout
        try:
            async with asyncio.timeout(limit):
                answer = await self._node(ROOT, body, headers, stream)
        except TimeoutError:
            raise ServingError(
                504, f"the graph '{self.name}' did not answer within {limit:g} s", code="graph_timeout"
            ) from None
        if isinstance(answer.body, bytes):
            return StepAnswer(answer.status, _whole_headers(answer), answer.body)
        return StepAnswer(answer.status, answer.headers, IdleBounded(answer.body, self._idle_limit))

    # -- nodes ------------------------------------------------------------------------------------------------
    async def _node(self, name: str, body: bytes, headers: Headers, terminal: bool) -> StepAnswer:
        node = self._nodes[name]
        if node.router_type == "Sequence":
            return await self._sequence(name, node, body, headers, terminal)
        if node.router_type == "Switch":
            return await self._switch(name, node, body, headers, terminal)
        if node.router_type == "Splitter":
            return await self._splitter(name, node, body, headers, terminal)
        return await self._ensemble(name, node, body, headers)

    async def _sequence(
        self, name: str, node: InferenceRouter, body: bytes, headers: Headers, terminal: bool
    ) -> StepAnswer:
        previous: StepAnswer | None = None
        last = len(node.steps) - 1
        for index, step in enumerate(node.steps):
            request = body
            if step.data == "$response" and previous is not None:
                request = _bytes(previous)
            if step.map_predictions_to_instances:
                request = bodies.map_predictions_to_instances(request)
            if step.condition is not None:
                before = _bytes(previous) if previous is not None else b""
                if not bodies.is_json(before):
                    raise ServingError(500, "invalid response", code="invalid_response")
                if not bodies.condition_met(before, step.condition):
                    return StepAnswer(200, previous.headers if previous is not None else [], before)
            previous = await self._step(name, index, step, request, headers, terminal and index == last)
            if step.dependency == "Hard" and not previous.ok:
                return previous
        assert previous is not None  # a node has at least one step
        return previous

    async def _switch(
        self, name: str, node: InferenceRouter, body: bytes, headers: Headers, terminal: bool
    ) -> StepAnswer:
        if bodies.is_json(body):
            for index, step in enumerate(node.steps):
                if step.condition is not None and bodies.condition_met(body, step.condition):
                    return await self._step(name, index, step, body, headers, terminal)
        raise no_route_matched()

    async def _splitter(
        self, name: str, node: InferenceRouter, body: bytes, headers: Headers, terminal: bool
    ) -> StepAnswer:
        point = self._pick(100)
        end = 0
        for index, step in enumerate(node.steps):
            end += step.weight or 0
            if point < end:
                return await self._step(name, index, step, body, headers, terminal)
        raise ServingError(500, "no route was selected by the splitter", code="no_route_selected")

    async def _ensemble(self, name: str, node: InferenceRouter, body: bytes, headers: Headers) -> StepAnswer:
        if bodies.asks_for_stream(body):
            raise ServingError.bad_request(
                f"node '{name}' is an Ensemble: its steps' answers are merged into one JSON object, which cannot "
                'be streamed; send "stream": false',
                param="stream",
            )
        tasks = [
            asyncio.create_task(self._member(name, index, step, body, headers)) for index, step in enumerate(node.steps)
        ]
        try:
            merged: dict[str, Any] = {}
            for index, step in enumerate(node.steps):
                status, answer = await _next_in_order(tasks, index)
                if step.dependency == "Hard" and not 200 <= status <= 299:
                    return StepAnswer(status, [(b"content-type", JSON_TYPE)], bodies.dumps_sorted(answer))
                merged[step.name or str(index)] = answer
            return StepAnswer(200, [(b"content-type", JSON_TYPE)], bodies.dumps_sorted(merged))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _member(self, name: str, index: int, step: InferenceStep, body: bytes, headers: Headers) -> _Member:
        answer = await self._step(name, index, step, body, headers, False)
        try:
            return answer.status, bodies.json_object(_bytes(answer))
        except ValueError as exc:
            raise ServingError(500, f"{_label(name, index, step)}: {exc}", code="invalid_response") from None

    # -- steps ------------------------------------------------------------------------------------------------
    async def _step(
        self, node: str, index: int, step: InferenceStep, body: bytes, headers: Headers, terminal: bool
    ) -> StepAnswer:
        if step.node_name is not None:
            return await self._node(step.node_name, body, headers, terminal)
        label = _label(node, index, step)
        target = StepTarget(label, step.service_name, step.service_url, step.path, self._nodes[node].router_type)
        stream = terminal and step.stream
        try:
            async with asyncio.timeout(self._step_limit):
                answer = await self._call(target, body, headers, stream)
                if not stream:
                    await answer.read()
        except TimeoutError:
            raise ServingError(
                504, f"{label} did not answer within {self._step_limit:g} s", code="step_timeout"
            ) from None
        return answer


class IdleBounded:
    """A streamed answer whose every chunk must come within `idle_s` of the one before (504 mid-stream otherwise);
    closing it closes the step's stream."""

    def __init__(self, chunks: Chunks, idle_s: float) -> None:
        self._chunks = chunks
        self._idle_s = idle_s

    def __aiter__(self) -> IdleBounded:
        return self

    async def __anext__(self) -> bytes:
        try:
            async with asyncio.timeout(self._idle_s):
                return await anext(self._chunks)
        except TimeoutError:
            await self._chunks.aclose()
            raise ServingError(
                504,
                f"the stream stalled: nothing for {self._idle_s:g} s (routerTimeouts.streamIdle)",
                code="stream_idle_timeout",
            ) from None

    async def aclose(self) -> None:
        await self._chunks.aclose()


async def _next_in_order(tasks: list[asyncio.Task[_Member]], index: int) -> _Member:
    """Step `index`'s answer, or the failure of any step not yet taken, whichever comes first: the router's
    select over "step i answered" and "some step failed" (when both are there, the answer in order wins)."""
    while True:
        waited = tasks[index]
        if waited.done() and waited.exception() is None:
            return waited.result()
        failed = next((t for t in tasks[index:] if t.done() and t.exception() is not None), None)
        if failed is not None:
            raise failed.exception()  # type: ignore[misc]
        await asyncio.wait([t for t in tasks[index:] if not t.done()], return_when=asyncio.FIRST_COMPLETED)


def _bytes(answer: StepAnswer) -> bytes:
    assert isinstance(answer.body, bytes), "steps whose answer another step reads are read whole"
    return answer.body


def _whole_headers(answer: StepAnswer) -> Headers:
    """KServe answers application/json when the body is JSON; otherwise the step's own content-type is kept."""
    if isinstance(answer.body, bytes) and bodies.is_json(answer.body):
        return [(b"content-type", JSON_TYPE)]
    content_type = answer.header(b"content-type")
    return [(b"content-type", content_type or b"text/plain; charset=utf-8")]


def _label(node: str, index: int, step: InferenceStep) -> str:
    named = f" ({step.name})" if step.name else ""
    return f"step {node}.steps[{index}]{named} -> {step.target}"
