"""Fake candidates and contexts for routing unit tests."""

from __future__ import annotations

from gateway.routing.base import Candidate, RouteContext
from gateway.routing.load import EndpointLoad
from gateway.routing.prompt import prompt_size
from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.protocol.openai import ChatCompletionRequest, OpenAIRequest
from llmserve.protocol.vllm_metrics import Scraped

SERVICE = ServiceInfo(name="svc", model_name="base")


def candidate(
    name: str,
    *,
    running: float = 0,
    waiting: float = 0,
    kv: float = 0,
    in_flight: int = 0,
    tokens: int = 0,
    block_size: int | None = 4,
    scraped_at: float | None = 100.0,
    lora: tuple[frozenset[str], frozenset[str], int] = (frozenset(), frozenset(), 0),
) -> Candidate:
    endpoint = Endpoint(service="svc", replica_id=name, url=f"http://{name}:1")
    scraped = Scraped(
        running=running,
        waiting=waiting,
        kv_usage=kv,
        block_size=block_size,
        lora_running=lora[0],
        lora_waiting=lora[1],
        max_lora=lora[2],
    )
    load = EndpointLoad(endpoint, scraped=scraped, scraped_at=scraped_at, in_flight=in_flight,
                        in_flight_tokens=tokens, in_flight_at_scrape=in_flight)  # fmt: skip
    return Candidate(endpoint, load)


def chat(content: str = "hello", model: str = "base", **extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    )


def context(request: OpenAIRequest | None = None, session: str | None = None,
            service: ServiceInfo = SERVICE) -> RouteContext:  # fmt: skip
    """A request as the scheduler hands it to plugins: its prompt tokens estimated at 4 characters a token."""
    ctx = RouteContext(service=service, route="chat_completions", request=request or chat(), session=session)
    size, exact = prompt_size(ctx.request)
    ctx.prompt_tokens = ctx.tokens_of(size, exact)
    return ctx
