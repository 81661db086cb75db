"""The transformer as a real process, called over real HTTP: by plain httpx (its HTTP interface) and by the
gateway's client (gateway/transform.py over the upstream pool), with the example transformers in configs/."""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.transform import SSERewriter, TransformerClient, TransformerUnreachable, hook_headers
from gateway.upstream import UpstreamPool
from llmserve.protocol.errors import ServingError
from llmserve.spec import parse_services
from llmserve.workers.processes import free_port
from llmserve.workers.transformer import transformer_plan
from tests.conftest import REPO
from tests.support.transformer_process import TransformerProcess, command, transformer_process

ECHO = f"{REPO}/tests/support/transformers.py:Echo"
CLIENT_HEADERS = [
    (b"authorization", b"Bearer sk-secret-key"),
    (b"cookie", b"session=abc"),
    (b"x-tenant", b"acme"),
    (b"content-type", b"application/json"),
    (b"content-length", b"123"),
]


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformerProcess]:
    log = tmp_path_factory.mktemp("logs") / "echo.log"
    with transformer_process(ECHO, log, "--config", '{"tag": "t1"}', "--timeout-s", "0.5") as process:
        yield process


@pytest.fixture
async def client() -> AsyncIterator[TransformerClient]:
    pool = UpstreamPool()
    yield TransformerClient(pool, timeout_s=5.0)
    await pool.close()


def headers() -> list[tuple[bytes, bytes]]:
    return hook_headers(CLIENT_HEADERS, "/v1/chat/completions", b"req-1")


def test_health_and_hooks_over_plain_http(echo: TransformerProcess) -> None:
    health = httpx.get(f"{echo.url}/health")
    assert health.json() == {"status": "ok", "hooks": ["preprocess", "postprocess", "postprocess_chunk"]}
    assert httpx.get(f"{echo.url}/v1/hooks").json()["hooks"][0] == "preprocess"
    wrong = httpx.get(f"{echo.url}/v1/hooks/preprocess")
    assert wrong.status_code == 405
    assert httpx.post(f"{echo.url}/v1/hooks/other", json={}).status_code == 404
    bad = httpx.post(f"{echo.url}/v1/hooks/preprocess", content=b"{nope")
    assert bad.status_code == 400
    assert "not valid JSON" in bad.json()["error"]["message"]
    assert httpx.post(f"{echo.url}/v1/hooks/preprocess", json=[1]).status_code == 400
    zipped = httpx.post(
        f"{echo.url}/v1/hooks/preprocess",
        content=gzip.compress(b'{"x": 1}'),
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    assert zipped.json()["x"] == 1


async def test_pre_and_post_hooks_change_request_and_response(
    echo: TransformerProcess, client: TransformerClient
) -> None:
    hooks = await client.hooks(echo.url)
    assert (hooks.preprocess, hooks.postprocess, hooks.postprocess_chunk) == (True, True, True)
    request = json.loads(await client.preprocess(echo.url, b'{"model": "m", "messages": []}', headers()))
    assert request["model"] == "m"
    assert request["preprocessed_by"] == "t1"  # the constructor got spec.transformer.config
    seen = request["seen_headers"]
    assert seen["x-llmserve-path"] == "/v1/chat/completions"
    assert seen["x-request-id"] == "req-1"
    assert seen["x-tenant"] == "acme"
    assert "authorization" not in seen
    assert "cookie" not in seen
    response = json.loads(await client.postprocess(echo.url, b'{"choices": []}', headers()))
    assert response == {"choices": [], "postprocessed_by": "t1"}


@pytest.mark.parametrize(
    ("body", "status", "fragment", "code"),
    [
        (b'{"reject": "no PII"}', 422, "rejected: no PII", "bad_prompt"),
        (b'{"crash": 7}', 500, "preprocess failed: RuntimeError: boom 7", "transformer_error"),
        (b'{"hang": true}', 504, "preprocess did not finish within 0.5 s", "transformer_timeout"),
        (b'{"not_a_dict": true}', 500, "preprocess returned list, expected a JSON object", None),
    ],
)
async def test_a_failing_hook_is_a_clean_error_and_the_next_request_succeeds(
    echo: TransformerProcess, client: TransformerClient, body: bytes, status: int, fragment: str, code: str | None
) -> None:
    with pytest.raises(ServingError) as info:
        await client.preprocess(echo.url, body, headers())
    assert info.value.status == status
    assert fragment in info.value.message
    assert info.value.code == code
    assert info.value.openai_body()["error"]["message"] == info.value.message  # rendered like any other error
    assert json.loads(await client.preprocess(echo.url, b"{}", headers()))["preprocessed_by"] == "t1"


async def test_no_answer_within_the_gateway_limit_is_a_504(echo: TransformerProcess) -> None:
    pool = UpstreamPool()
    try:
        with pytest.raises(ServingError) as info:
            await TransformerClient(pool, timeout_s=0.1).preprocess(echo.url, b'{"hang": 1}', headers())
        assert (info.value.status, info.value.code) == (504, "transformer_timeout")
    finally:
        await pool.close()


async def test_an_unreachable_replica_can_be_retried_elsewhere(client: TransformerClient) -> None:
    with pytest.raises(TransformerUnreachable) as info:
        await client.preprocess(f"http://127.0.0.1:{free_port()}", b"{}", headers())
    assert info.value.status == 502


async def test_stream_events_go_through_the_chunk_hook_in_order(
    echo: TransformerProcess, client: TransformerClient
) -> None:
    rewriter = SSERewriter(client, echo.url, headers())
    pieces = [
        b'data: {"i": 1}\n\ndata: {"i"',  # an event split across pieces
        b': 2}\n\n: keep-alive\n\ndata: {"i": 3, "drop": true}\n\n',
        b'data: {"error": {"message": "x"}}\n\ndata: [DONE]\n\n',
    ]
    out = b"".join([await rewriter.feed(piece) for piece in pieces]) + rewriter.tail()
    events = [e for e in out.decode().split("\n\n") if e]
    assert events == [
        'data: {"i":1,"seen":true}',
        'data: {"i":2,"seen":true}',
        ": keep-alive",
        'data: {"error": {"message": "x"}}',  # error frames and [DONE] pass unchanged
        "data: [DONE]",
    ]


async def test_a_chunk_hook_failure_is_a_serving_error(echo: TransformerProcess, client: TransformerClient) -> None:
    rewriter = SSERewriter(client, echo.url, headers())
    with pytest.raises(ServingError) as info:
        await rewriter.feed(b'data: {"crash": "mid-stream"}\n\n')
    assert info.value.status == 500
    assert "postprocess_chunk failed: RuntimeError: boom mid-stream" in info.value.message


async def test_example_pii_mask_on_openai_chat(tmp_path: Path, client: TransformerClient) -> None:
    config = '{"mask": "[x]", "system_prompt": "Be brief."}'
    handler = f"{REPO}/configs/transformers/pii_mask.py:PIIMask"
    with transformer_process(handler, tmp_path / "pii.log", "--config", config) as pii:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "mail bob@example.com"}]}
        request = json.loads(await client.preprocess(pii.url, json.dumps(body).encode(), headers()))
        assert request["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "mail [x]"},
        ]
        assert request["stream"] is True  # everything else passes unchanged
        answer = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "call +1 555 123 4567"}}]}'
        response = json.loads(await client.postprocess(pii.url, answer, headers()))
        assert response["choices"][0]["message"]["content"] == "call [x]"
        rewriter = SSERewriter(client, pii.url, headers())
        chunk = b'data: {"choices": [{"index": 0, "delta": {"content": "to alice@example.org"}}]}\n\n'
        assert b'"content":"to [x]"' in await rewriter.feed(chunk)
        too_many = {"model": "m", "messages": [{"role": "user", "content": "hi"}] * 300}
        with pytest.raises(ServingError) as info:
            await client.preprocess(pii.url, json.dumps(too_many).encode(), headers())
        assert (info.value.status, info.value.message) == (400, "at most 256 messages per request")


async def test_example_feature_scaling_on_v2_and_v1(tmp_path: Path, client: TransformerClient) -> None:
    (service,) = parse_services((REPO / "configs/transformers/iris-scaled.yaml").read_text())
    assert service.spec.transformer is not None
    plan = transformer_plan(service, base_dir=REPO)
    port = free_port()
    argv = plan.command("127.0.0.1", port)
    config = argv[argv.index("--config") + 1]
    with transformer_process(argv[argv.index("--handler") + 1], tmp_path / "scale.log", "--config", config) as scale:
        v2 = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [[5.84, 3.06, 3.76, 1.2]]}]}
        request = json.loads(await client.preprocess(scale.url, json.dumps(v2).encode(), headers()))
        assert request["inputs"][0]["data"] == pytest.approx([0.0, 0.0, 0.0, 0.0])
        assert request["inputs"][0]["datatype"] == "FP32"
        v1 = json.loads(await client.preprocess(scale.url, b'{"instances": [[6.67, 3.49, 5.52, 1.96]]}', headers()))
        assert v1["instances"][0] == pytest.approx([1.0, 1.0, 1.0, 1.0])
        output = {"name": "predict", "shape": [2], "datatype": "INT64", "data": [0, 2]}
        answer = json.dumps({"model_name": "iris", "outputs": [output]}).encode()
        response = json.loads(await client.postprocess(scale.url, answer, headers()))
        assert response["outputs"][0]["data"] == ["setosa", "virginica"]
        with pytest.raises(ServingError) as info:
            await client.preprocess(scale.url, b'{"instances": [[1, 2]]}', headers())
        assert info.value.status == 400
        assert "each row needs 4 features" in info.value.message


async def test_a_module_handler_without_some_hooks(tmp_path: Path, client: TransformerClient) -> None:
    with transformer_process("tests.support.transformers:PreOnly", tmp_path / "pre.log") as pre:
        hooks = await client.hooks(pre.url)
        assert (hooks.preprocess, hooks.postprocess, hooks.postprocess_chunk) == (True, False, False)
        # a hop the gateway would skip still answers the pass-through way
        assert await client.postprocess(pre.url, b'{"a": 1}', headers()) == b'{"a":1}'


@pytest.mark.parametrize(
    ("handler", "fragment"),
    [
        ("nowhere/missing.py:X", "nowhere/missing.py: no such file"),
        (f"{REPO}/tests/support/transformers.py:Missing", "Missing is not found"),
        (f"{REPO}/tests/support/transformers.py:SyncHook", "SyncHook.preprocess must be 'async def'"),
        (f"{REPO}/tests/support/transformers.py:NoHooks", "defines none of preprocess, postprocess"),
        ("no_such_module_here:X", "importing it failed: ModuleNotFoundError"),
    ],
)
def test_a_bad_handler_exits_at_once_and_says_why(handler: str, fragment: str) -> None:
    done = subprocess.run(command(handler, free_port()), capture_output=True, timeout=60, check=False)
    assert done.returncode == 2
    assert fragment in done.stderr.decode()


def test_bad_constructor_config_and_a_failing_load_exit(tmp_path: Path) -> None:
    done = subprocess.run(
        command(ECHO, free_port(), "--config", '{"colour": 1}'), capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "constructing Echo(colour=...) failed" in done.stderr.decode()
    failing = f"{REPO}/tests/support/transformers.py:FailsToLoad"
    done = subprocess.run(command(failing, free_port()), capture_output=True, timeout=60, check=False)
    assert done.returncode == 3
    assert "weights missing" in done.stderr.decode()


def test_plan_resolves_the_handler_file_and_passes_config_and_timeout() -> None:
    (service,) = parse_services((REPO / "configs/transformers/chat-pii.yaml").read_text())
    plan = transformer_plan(service, python="/py", base_dir=REPO)
    argv = plan.command("127.0.0.1", 9000)
    assert argv[:3] == ["/py", "-m", "llmserve.runtimes.transformer"]
    assert argv[argv.index("--handler") + 1] == f"{REPO}/configs/transformers/pii_mask.py:PIIMask"
    assert argv[argv.index("--port") + 1] == "9000"
    assert argv[argv.index("--timeout-s") + 1] == "5"
    assert json.loads(argv[argv.index("--config") + 1])["mask"] == "[redacted]"
    assert (plan.health_path, plan.protocol) == ("/health", "openai")
