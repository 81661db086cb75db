"""The gateway's step caller: a serviceName step is a request to that service through the gateway's one dispatch
path (gateway/dispatch.py `Dispatcher.send`): the service's routing profile picks the replica, the load ledger
counts the step as one of the service's requests (so autoscaling sees graph traffic), a service with no ready
replica is woken and the step waits in the activator (503 + Retry-After at its deadline), a replica that refuses
the connection is ejected and the step goes to another, and an engine that died is ejected with the gateway's 502.
A service with a transformer is called through it, as KServe's router calls an InferenceService's URL.
A serviceUrl step is called as written (`HttpStepCaller`, on the gateway's upstream pool).
Traced (gateway/tracing.py), each step is a child of the graph's request span: a service step gets the activator
wait, the routing decision and its upstream calls beneath it, a serviceUrl step its call's traceparent.

A step body the gateway's own route would refuse (an OpenAI body without `messages`, say) is answered as that
route would answer it (400 in OpenAI's envelope), so the graph's dependency rules apply to it as to any answer.
"""

from __future__ import annotations

import asyncio

from gateway.dispatch import Dispatcher, Outbound, next_request_id
from gateway.graph.http_caller import HttpStepCaller, step_answer, step_headers
from gateway.graph.steps import JSON_TYPE, Headers, StepAnswer, StepTarget
from gateway.graph.targets import service_request
from gateway.routing import RouteContext
from gateway.tracing import RequestSpan, current_graph_span
from gateway.v2.services import V2Services
from gateway.worker_errors import WorkerErrorKind
from llmserve.endpoints import ServiceInfo
from llmserve.protocol.errors import ServingError
from llmserve.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIRequest,
    parse_request,
)

_OPENAI_ROUTES: dict[str, tuple[str, type[OpenAIRequest]]] = {
    "/v1/chat/completions": ("chat_completions", ChatCompletionRequest),
    "/v1/completions": ("completions", CompletionRequest),
    "/v1/embeddings": ("embeddings", EmbeddingRequest),
}


class DispatchStepCaller:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.endpoints = dispatcher.endpoints
        self.ledger = dispatcher.ledger
        self.default_output_tokens = dispatcher.scheduler.default_output_tokens
        self.direct = HttpStepCaller({}, dispatcher.pool)  # serviceUrl steps; the pool is the gateway's

    async def __call__(self, target: StepTarget, body: bytes, headers: Headers, stream: bool) -> StepAnswer:
        graph_span = current_graph_span.get()
        if target.service_name is None:
            with graph_span.step(target.label, target.router_type) as step:
                return await self.direct(target, body, step.inject(headers), stream)
        span = graph_span.step_request(target.label, target.router_type)
        try:
            answer = await self._dispatch(target, body, headers, stream, span)
        except ServingError as error:
            span.finish(error.status, error.message)
            raise
        except BaseException as exc:
            span.finish(499 if isinstance(exc, asyncio.CancelledError) else 500, f"{type(exc).__name__}: {exc}")
            raise
        return answer

    async def _dispatch(
        self, target: StepTarget, body: bytes, headers: Headers, stream: bool, span: RequestSpan
    ) -> StepAnswer:
        info = self._service(target)
        span.resolved(model=info.model_name, service=info.name, stream=stream)
        path, body = service_request(target.label, info.protocol, info.model_name, body, target.path)
        transformers = self.dispatcher.deps.transformers
        hop = None
        try:
            if transformers is not None and info.transformer_timeout_s is not None:  # as KServe: via its transformer
                hop, body = await transformers.begin(info, body, headers, path, next_request_id())
            ctx = self._context(info, path, body)
        except ServingError as refused:  # what the gateway's route for this body would answer
            return StepAnswer(refused.status, [(b"content-type", JSON_TYPE)], refused.render(path))
        self.ledger.arrived(info.name)
        held_tokens = ctx.body_size // 4 + (ctx.request.max_tokens or self.default_output_tokens)
        outbound = Outbound(b"POST", path.encode(), step_headers(headers), body)
        response, dispatched = await self.dispatcher.send(ctx, outbound, held_tokens=held_tokens, span=span)
        if hop is not None:
            response = hop.response(response)
        status = response.status

        def ended() -> None:  # the step's exchange is over (read whole, failed, or its stream closed)
            dispatched.release()
            span.finish(status)

        answer = await step_answer(response, target.label, stream, on_end=ended)
        if isinstance(answer.body, bytes):
            failure = self.dispatcher.worker_error(dispatched.endpoint, answer.status, answer.body, path=path)
            if failure is not None and failure.kind is WorkerErrorKind.ENGINE_DEAD:
                raise failure.error
        return answer

    def _service(self, target: StepTarget) -> ServiceInfo:
        name = target.service_name
        found = next((s for s in self.endpoints.services() if s.name == name), None)
        if found is None:  # the controller refuses graphs over unknown services: this gateway is behind
            raise ServingError(
                503,
                f"{target.label}: the service '{name}' is not known to this gateway (yet); retry later",
                code="service_unavailable",
                headers={"retry-after": str(self.dispatcher.retry_after_s)},
            )
        return found

    @staticmethod
    def _context(info: ServiceInfo, path: str, body: bytes) -> RouteContext:
        if info.protocol == "v2":
            route = "v2_infer" if path.endswith("/infer") else "v1_predict"
            return V2Services.context(info, route, len(body))
        known = _OPENAI_ROUTES.get(path)
        if known is None:  # a step's own `path`: route on the model alone
            request = OpenAIRequest.model_construct(model=info.model_name)
            return RouteContext(service=info, route="graph_step", request=request, body_size=len(body))
        route, model = known
        return RouteContext(service=info, route=route, request=parse_request(model, body), body_size=len(body))
