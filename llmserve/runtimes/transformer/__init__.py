"""Transformers: user-written pre/post-processing in front of a predictor, served as their own process.

    python -m llmserve.runtimes.transformer --handler configs/transformers/pii_mask.py:PIIMask --port 9000

A transformer is a class with any of these async hooks (subclass `Transformer` for pass-through defaults):

    async def preprocess(self, request: dict, headers: dict[str, str]) -> dict          # before the predictor
    async def postprocess(self, response: dict, headers: dict[str, str]) -> dict        # whole responses
    async def postprocess_chunk(self, chunk: dict, headers: dict[str, str]) -> dict | None   # each streamed
                                                         # event of an SSE response (None drops it)
    async def load(self) -> None                         # optional, once at start (health is 503 until done)

Bodies are the protocol's JSON as the client sent it (OpenAI, V2 / Open Inference Protocol, KServe V1);
`headers` are the client's request headers (lowercase names; credentials removed), plus `x-llmserve-path` (the
client's path, e.g. /v1/chat/completions) and `x-request-id`. The constructor receives `spec.transformer.config`
as keyword arguments. Raise `ClientError` to reject a request with a 4xx; any other exception is a 500 with its
message. The process keeps serving either way. The HTTP interface the gateway calls is in `app.py`.
"""

from llmserve.runtimes.transformer.hooks import ClientError, Transformer

__all__ = ["ClientError", "Transformer"]
