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
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from gateway.upstream import Headers, UpstreamError, UpstreamPool, UpstreamResponse
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

    def __init__(self, client: TransformerClient, url: str, headers: Headers) -> None:
        self.client = client
        self.url = url
        self.headers = headers
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
        results = iter(await self.client.chunks(self.url, hooked, self.headers))
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
