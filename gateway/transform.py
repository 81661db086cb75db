"""The gateway's side of a transformer: call a replica's hooks (llmserve/runtimes/transformer/app.py) through the
upstream pool, and turn every failure into a ServingError the dispatch path renders in the client's protocol.

Per request of a service with a transformer, the dispatch path does:
    hooks = await client.hooks(url)                       # cached per replica URL
    body = await client.preprocess(url, body, headers)    # if hooks.preprocess
    ... route `body` to the predictor ...
    body = await client.postprocess(url, body, headers)   # whole 2xx responses, if hooks.postprocess
    rewriter = SSERewriter(client, url, headers)          # streamed responses, only if hooks.postprocess_chunk;
    piece = await rewriter.feed(chunk); ...; rewriter.tail()   # without it the stream is relayed unchanged

Failures: a replica that cannot be connected to -> `TransformerUnreachable` (502; the request never reached it,
so another replica may take it); a hook's own error -> its status and message (4xx from `ClientError`, 500, 504);
no answer within the timeout -> 504; anything malformed -> 502.

`Transformers` is that sequence for the proxies: `begin()` picks one of the service's ready transformer replicas
(round robin; with none ready the request waits in the activator, like a request for a service at zero), asks its
hooks and preprocesses (a replica that cannot be reached is ejected and the next one tried), and returns the
request's `TransformerHop`, whose `response()` wraps the predictor's 2xx response so that the relay sends the
client the postprocessed body or the stream through the chunk hook.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson

from gateway.activator import Activator, KeepAlive
from gateway.ejection import EjectingView, Ejector
from gateway.upstream import Headers, UpstreamError, UpstreamPool, UpstreamResponse
from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.protocol.errors import ServingError

PATH_HEADER = b"x-llmserve-path"
# Never handed to a transformer: credentials, and what the hop sets itself.
_DROPPED = frozenset(
    {
        b"authorization", b"proxy-authorization", b"cookie", b"x-api-key", b"api-key",
        b"host", b"content-length", b"content-encoding", b"transfer-encoding", b"connection", b"keep-alive",
        b"te", b"upgrade", b"content-type", b"x-request-id", PATH_HEADER,
    }
)  # fmt: skip


class TransformerUnreachable(ServingError):
    """The transformer replica could not be connected to: the request never left, another replica may take it."""

    def __init__(self, detail: str) -> None:
        super().__init__(502, f"The transformer is unreachable: {detail}", code="transformer_unreachable")


@dataclass(frozen=True, slots=True)
class Hooks:
    preprocess: bool
    postprocess: bool
    postprocess_chunk: bool


def hook_headers(client_headers: Iterable[tuple[bytes, bytes]], path: str, request_id: bytes) -> Headers:
    """The headers a hook sees: the client's (credentials and hop-by-hop ones removed), the client's path and the
    request id."""
    headers = [(k, v) for k, v in client_headers if k not in _DROPPED]
    return [
        *headers,
        (b"content-type", b"application/json"),
        (PATH_HEADER, path.encode()),
        (b"x-request-id", request_id),
    ]


class TransformerClient:
    def __init__(self, pool: UpstreamPool, *, timeout_s: float = 35.0) -> None:
        """`timeout_s`: the gateway's limit for one hook call, above the transformer's own hook timeout
        (`spec.transformer.timeoutSeconds`, 30 s by default) so that the hook's 504 arrives first."""
        self.pool = pool
        self.timeout_s = timeout_s
        self._hooks: dict[str, Hooks] = {}

    async def hooks(self, url: str) -> Hooks:
        """Which hooks the replica at `url` implements (asked once per URL)."""
        known = self._hooks.get(url)
        if known is not None:
            return known
        body = await self._call(url, b"GET", b"/v1/hooks", [], b"", None)
        try:
            names = orjson.loads(body)["hooks"]
            hooks = Hooks(*(name in names for name in ("preprocess", "postprocess", "postprocess_chunk")))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise _malformed("/v1/hooks") from None
        self._hooks[url] = hooks
        return hooks

    def forget(self, url: str) -> None:
        """Drop what is known of a replica (it was replaced)."""
        self._hooks.pop(url, None)

    async def preprocess(self, url: str, body: bytes, headers: Headers, *, timeout_s: float | None = None) -> bytes:
        """The request to send the predictor instead of `body`."""
        return await self._call(url, b"POST", b"/v1/hooks/preprocess", headers, body, timeout_s)

    async def postprocess(self, url: str, body: bytes, headers: Headers, *, timeout_s: float | None = None) -> bytes:
        """The response to send the client instead of the predictor's `body`."""
        return await self._call(url, b"POST", b"/v1/hooks/postprocess", headers, body, timeout_s)

    async def chunks(
        self, url: str, events: Sequence[bytes], headers: Headers, *, timeout_s: float | None = None
    ) -> list[bytes | None]:
        """Streamed events (each a JSON object's text) through the chunk hook, one result per event (None: the
        hook dropped it)."""
        body = b'{"chunks":[' + b",".join(events) + b"]}"
        answer = await self._call(url, b"POST", b"/v1/hooks/chunks", headers, body, timeout_s)
        try:
            chunks = orjson.loads(answer)["chunks"]
            if len(chunks) != len(events):
                raise TypeError
            return [orjson.dumps(chunk) if chunk is not None else None for chunk in chunks]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise _malformed("/v1/hooks/chunks") from None

    async def _call(
        self, url: str, method: bytes, path: bytes, headers: Headers, body: bytes, timeout_s: float | None
    ) -> bytes:
        limit = timeout_s if timeout_s is not None else self.timeout_s
        response: UpstreamResponse | None = None
        try:
            async with asyncio.timeout(limit):
                response = await self.pool.request(url, method, path, headers, body)
                answer = await response.read()
        except TimeoutError:
            if response is not None:
                response.abort()
            raise ServingError(
                504, f"The transformer did not answer within {limit:g} s.", code="transformer_timeout"
            ) from None
        except UpstreamError as exc:
            if exc.retryable:
                raise TransformerUnreachable(str(exc)) from None
            raise ServingError(502, f"The transformer failed: {exc}", code="transformer_error") from None
        if response.status >= 400:
            raise _hook_error(response.status, answer)
        return answer


def _hook_error(status: int, answer: bytes) -> ServingError:
    try:
        error = orjson.loads(answer)["error"]
        return ServingError(status, str(error["message"]), error_type=error.get("type"), code=error.get("code"))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        text = answer[:300].decode("utf-8", "replace")
        return ServingError(502, f"The transformer answered {status}: {text}", code="transformer_error")


def _malformed(path: str) -> ServingError:
    return ServingError(502, f"The transformer's answer on {path} is malformed.", code="transformer_error")


class SSERewriter:
    """Passes a predictor's SSE stream through the chunk hook, event by event, in order.

    `feed(piece)` returns the rewritten complete events of what arrived so far (a partial event waits for the
    next piece). Events whose data is a JSON object without "error" go through the hook, all of a piece's in one
    call; comments, `[DONE]` and error frames pass unchanged; an event the hook drops is left out."""

    def __init__(
        self, client: TransformerClient, url: str, headers: Headers, *, timeout_s: float | None = None
    ) -> None:
        self.client = client
        self.url = url
        self.headers = headers
        self.timeout_s = timeout_s
        self._partial = b""

    async def feed(self, piece: bytes) -> bytes:
        data = self._partial + piece
        end = data.rfind(b"\n\n")
        if end < 0:
            self._partial = data
            return b""
        self._partial = data[end + 2 :]
        complete = data[: end + 2]
        events = complete.split(b"\n\n")[:-1]
        payloads = [_json_data(event) for event in events]
        hooked = [payload for payload in payloads if payload is not None]
        if not hooked:
            return complete
        results = iter(await self.client.chunks(self.url, hooked, self.headers, timeout_s=self.timeout_s))
        out: list[bytes] = []
        for event, payload in zip(events, payloads, strict=True):
            if payload is None:
                out.append(event + b"\n\n")
            elif (result := next(results)) is not None:
                out.append(b"data: " + result + b"\n\n")
        return b"".join(out)

    def tail(self) -> bytes:
        """What is left at the end of the stream (an event without its blank line), unchanged."""
        rest, self._partial = self._partial, b""
        return rest


def _json_data(event: bytes) -> bytes | None:
    """The JSON object an SSE event carries in its (single) `data:` line, unless it is an error frame."""
    stripped = event.strip()
    if not stripped.startswith(b"data:") or b"\n" in stripped:
        return None
    data = stripped[5:].strip()
    if not data.startswith(b"{") or data.startswith(b'{"error"'):
        return None
    return data


# A whole body the postprocess hook can take, and a stream the chunk hook can.
_EVENT_STREAM = b"text/event-stream"
PLAIN_BINARY = b"inference-header-content-length"  # V2's binary tensor extension: not JSON, not transformed
_GATEWAY_MARGIN_S = 5.0  # the gateway's limit of a hook call: the service's hook timeout plus this


class TransformerHop:
    """One request's transformer replica: its hooks, applied to the predictor's response by `response()`."""

    __slots__ = ("client", "headers", "hooks", "timeout_s", "url")

    def __init__(self, client: TransformerClient, url: str, hooks: Hooks, headers: Headers, timeout_s: float):
        self.client = client
        self.url = url
        self.hooks = hooks
        self.headers = headers
        self.timeout_s = timeout_s

    def response(self, response: UpstreamResponse) -> UpstreamResponse:
        """The predictor's response as the client gets it: a 2xx JSON body through `postprocess`, a 2xx SSE
        stream through `postprocess_chunk` event by event (each piece as soon as it is rewritten); anything else
        (errors, hooks the class does not have, binary tensors) unchanged."""
        if not 200 <= response.status < 300:
            return response
        content_type = response.header(b"content-type") or b"application/json"
        if content_type.startswith(_EVENT_STREAM) and response.header(b"content-length") is None:
            if not self.hooks.postprocess_chunk:
                return response
            rewriter = SSERewriter(self.client, self.url, self.headers, timeout_s=self.timeout_s)
            return HookedResponse(response, _rewritten(response, rewriter))
        if not self.hooks.postprocess or b"json" not in content_type or response.header(PLAIN_BINARY) is not None:
            return response
        return HookedResponse(response, self._postprocessed(response))

    def _postprocessed(self, response: UpstreamResponse) -> Callable[[], Awaitable[bytes | None]]:
        sent = False

        async def next_chunk() -> bytes | None:
            nonlocal sent
            if sent:
                return None
            sent = True
            try:
                body = await response.read()
            except UpstreamError as exc:
                raise ServingError.upstream_failure(str(exc)) from None
            return await self.client.postprocess(self.url, body, self.headers, timeout_s=self.timeout_s)

        return next_chunk


def _rewritten(response: UpstreamResponse, rewriter: SSERewriter) -> Callable[[], Awaitable[bytes | None]]:
    ended = False

    async def next_chunk() -> bytes | None:
        nonlocal ended
        while not ended:
            piece = await response.next_chunk()
            if piece is None:
                ended = True
                return rewriter.tail() or None
            out = await rewriter.feed(piece)
            if out:
                return out
        return None

    return next_chunk


class HookedResponse(UpstreamResponse):
    """A predictor's response whose body comes through a transformer's hook: what the relay reads instead of the
    original (status and headers are the original's, less its content-length)."""

    __slots__ = ("_inner", "_next")

    def __init__(self, inner: UpstreamResponse, next_chunk: Callable[[], Awaitable[bytes | None]]) -> None:
        # Not UpstreamResponse.__init__: this response reads from `inner`, it has no connection of its own.
        self._inner = inner
        self._next = next_chunk
        self.status = inner.status
        self.headers = [(k, v) for k, v in inner.headers if k != b"content-length"]
        self.received_any = inner.received_any

    @property
    def complete(self) -> bool:
        return self._inner.complete

    async def next_chunk(self) -> bytes | None:
        return await self._next()

    def abort(self) -> None:
        self._inner.abort()


class Transformers:
    """The request path's access to services' transformer replicas (one per gateway process)."""

    def __init__(self, endpoints: EjectingView, client: TransformerClient, activator: Activator, ejector: Ejector):
        self.endpoints = endpoints
        self.client = client
        self.activator = activator
        self.ejector = ejector
        self._turn = itertools.count()

    async def begin(
        self,
        service: ServiceInfo,
        body: bytes,
        client_headers: Iterable[tuple[bytes, bytes]],
        path: str,
        request_id: bytes,
        keepalive: KeepAlive | None = None,
    ) -> tuple[TransformerHop | None, bytes]:
        """The request's hop (None: the service has no transformer) and the body to route (preprocessed)."""
        if service.transformer_timeout_s is None:
            return None, body
        headers = hook_headers(client_headers, path, request_id)
        timeout_s = service.transformer_timeout_s + _GATEWAY_MARGIN_S
        tried: set[str] = set()
        while True:
            endpoint = await self._replica(service, tried, keepalive)
            try:
                hooks = await self.client.hooks(endpoint.url)
                hop = TransformerHop(self.client, endpoint.url, hooks, headers, timeout_s)
                if hooks.preprocess:
                    body = await self.client.preprocess(endpoint.url, body, headers, timeout_s=timeout_s)
                return hop, body
            except TransformerUnreachable as exc:
                tried.add(endpoint.url)
                self.client.forget(endpoint.url)
                self.ejector.eject(endpoint, f"unreachable: {exc.message}")
                if len(tried) >= 3:
                    raise

    async def _replica(self, service: ServiceInfo, tried: set[str], keepalive: KeepAlive | None) -> Endpoint:
        def untried(_: object) -> tuple[str, list[Endpoint]]:
            return "", [e for e in self.endpoints.transformer_endpoints(service.name) if e.url not in tried]

        while True:
            ready = untried(None)[1]
            if ready:
                return ready[next(self._turn) % len(ready)]
            await self.activator.admit(service, 0, keepalive, untried, takes_slot=False)  # until one is ready
