"""The graph interpreter against a fake step caller: every rule of KServe's router, and streaming."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest

from gateway.graph import GraphRouter, GraphRouterSettings
from gateway.graph.steps import StepAnswer
from llmserve.protocol.errors import ServingError
from tests.support.waiting import until
from tests.unit.gateway.graph.fakes import FakeCaller, GatedStream, answer, echo, graph, never, replies

INPUT = orjson.dumps({"instances": [[1, 2]], "id": "x"})


def seq(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"root": {"routerType": "Sequence", "steps": list(steps)}}


async def run(router: GraphRouter, body: bytes = INPUT, **kw: Any) -> tuple[int, Any]:
    result = await router.run(body, [], **kw)
    data = await result.read()
    return result.status, orjson.loads(data) if data else None


# -- Sequence ---------------------------------------------------------------------------------------------------
async def test_sequence_sends_the_input_or_the_previous_response() -> None:
    caller = FakeCaller({"a": echo("a"), "b": echo("b"), "c": echo("c")})
    router = GraphRouter(
        graph(seq({"serviceName": "a"}, {"serviceName": "b", "data": "$response"}, {"serviceName": "c"})), caller
    )
    status, body = await run(router)
    assert status == 200
    assert caller.sent_to("a") == [orjson.loads(INPUT)]
    assert caller.sent_to("b") == [{"tag": "a", "got": orjson.loads(INPUT)}]
    assert caller.sent_to("c") == [orjson.loads(INPUT)]  # $request (the default): the graph's input again
    assert body == {"tag": "c", "got": orjson.loads(INPUT)}


async def test_a_met_condition_runs_the_step() -> None:
    caller = FakeCaller({"a": replies({"predictions": [{"label": "dog"}]}), "b": replies({"breed": "collie"})})
    router = GraphRouter(
        graph(seq({"serviceName": "a"}, {"serviceName": "b", "condition": 'predictions.#(label=="dog")'})), caller
    )
    assert await run(router) == (200, {"breed": "collie"})


async def test_an_unmet_condition_returns_the_previous_response_with_200() -> None:
    caller = FakeCaller({"a": replies({"predictions": [{"label": "cat"}]}, status=503), "b": replies({"x": 1})})
    router = GraphRouter(
        graph(seq({"serviceName": "a"}, {"serviceName": "b", "condition": 'predictions.#(label=="dog")'})), caller
    )
    assert await run(router) == (200, {"predictions": [{"label": "cat"}]})  # Soft 503, then 200 as KServe
    assert caller.sent_to("b") == []


async def test_a_condition_on_a_response_that_is_not_json_fails_with_500() -> None:
    caller = FakeCaller({"a": replies(b"plain text"), "b": replies({})})
    router = GraphRouter(graph(seq({"serviceName": "a"}, {"serviceName": "b", "condition": "x"})), caller)
    with pytest.raises(ServingError) as info:
        await run(router)
    assert (info.value.status, info.value.graph_body()) == (
        500,
        {"error": "Failed to process request", "cause": "invalid response"},
    )


async def test_a_hard_step_failure_stops_the_sequence_with_its_answer() -> None:
    caller = FakeCaller({"a": replies({"error": "bad input"}, status=422), "b": replies({"ok": True})})
    router = GraphRouter(graph(seq({"serviceName": "a", "dependency": "Hard"}, {"serviceName": "b"})), caller)
    assert await run(router) == (422, {"error": "bad input"})
    assert caller.sent_to("b") == []


async def test_a_soft_step_failure_goes_on_and_the_last_step_answers() -> None:
    caller = FakeCaller({"a": replies({"error": "down"}, status=500), "b": replies({"ok": True}, status=201)})
    router = GraphRouter(graph(seq({"serviceName": "a"}, {"serviceName": "b", "data": "$response"})), caller)
    assert await run(router) == (201, {"ok": True})
    assert caller.sent_to("b") == [{"error": "down"}]


async def test_a_last_step_failing_soft_gives_its_status() -> None:
    caller = FakeCaller({"a": replies({"ok": 1}), "b": replies({"error": "no"}, status=500)})
    router = GraphRouter(graph(seq({"serviceName": "a"}, {"serviceName": "b"})), caller)
    assert await run(router) == (500, {"error": "no"})


async def test_map_predictions_to_instances_renames_and_drops_the_rest() -> None:
    caller = FakeCaller({"a": replies({"predictions": [1, 2], "model_name": "a"}), "b": echo("b")})
    step_b = {"serviceName": "b", "data": "$response", "mapPredictionsToInstances": True}
    router = GraphRouter(graph(seq({"serviceName": "a"}, step_b)), caller)
    await run(router)
    assert caller.sent_to("b") == [{"instances": [1, 2]}]


@pytest.mark.parametrize(
    "previous",
    [{"predictions": []}, {"outputs": [1]}, [1, 2], {"predictions": {"a": 1}}, {"predictions": [1], "instances": 3}],
)
async def test_map_predictions_leaves_other_bodies_alone(previous: Any) -> None:
    caller = FakeCaller({"a": replies(previous), "b": echo("b")})
    step_b = {"serviceName": "b", "data": "$response", "mapPredictionsToInstances": True}
    await run(GraphRouter(graph(seq({"serviceName": "a"}, step_b)), caller))
    assert caller.sent_to("b") == [previous]


async def test_a_step_that_cannot_be_called_fails_the_graph() -> None:
    async def unreachable(body: bytes) -> StepAnswer:
        raise ServingError(500, "cannot connect to 127.0.0.1:9: connection refused")

    caller = FakeCaller({"a": unreachable, "b": replies({})})
    with pytest.raises(ServingError, match="connection refused") as info:
        await run(GraphRouter(graph(seq({"serviceName": "a"}, {"serviceName": "b"})), caller))
    assert info.value.status == 500
    assert caller.sent_to("b") == []


async def test_nested_nodes_feed_a_sequence() -> None:
    caller = FakeCaller({"a": replies({"score": 1}), "b": replies({"score": 2}), "c": echo("c")})
    nodes = {
        "root": {"routerType": "Sequence", "steps": [{"nodeName": "both"}, {"serviceName": "c", "data": "$response"}]},
        "both": {"routerType": "Ensemble", "steps": [{"serviceName": "a", "name": "first"}, {"serviceName": "b"}]},
    }
    status, body = await run(GraphRouter(graph(nodes), caller))
    assert (status, body["got"]) == (200, {"first": {"score": 1}, "1": {"score": 2}})


# -- Switch -----------------------------------------------------------------------------------------------------
SWITCH = {
    "root": {
        "routerType": "Switch",
        "steps": [
            {"serviceName": "a", "condition": 'instances.#(modelId=="1")'},
            {"serviceName": "b", "condition": "instances.#(modelId>0)"},
            {"serviceName": "c", "condition": "instances.#(modelId>0)"},
        ],
    }
}


async def test_switch_takes_the_first_step_whose_condition_matches_the_input() -> None:
    caller = FakeCaller({"a": replies({"by": "a"}), "b": replies({"by": "b"}), "c": replies({"by": "c"})})
    router = GraphRouter(graph(SWITCH), caller)
    assert await run(router, orjson.dumps({"instances": [{"modelId": "1"}]})) == (200, {"by": "a"})
    assert await run(router, orjson.dumps({"instances": [{"modelId": 7}]})) == (200, {"by": "b"})
    assert caller.sent_to("c") == []


@pytest.mark.parametrize("body", [b'{"instances": [{"other": 1}]}', b"not json", b""])
async def test_switch_without_a_match_is_404_with_kserves_body(body: bytes) -> None:
    caller = FakeCaller({"a": replies({}), "b": replies({}), "c": replies({})})
    with pytest.raises(ServingError) as info:
        await GraphRouter(graph(SWITCH), caller).run(body, [])
    assert info.value.status == 404
    assert info.value.graph_body() == {
        "error": "Failed to process request",
        "cause": "None of the routes matched with the switch condition",
    }
    assert caller.calls == []


async def test_switch_passes_the_picked_steps_failure_through() -> None:
    nodes = {"root": {"routerType": "Switch", "steps": [{"serviceName": "a", "condition": "id", "dependency": "Hard"}]}}
    caller = FakeCaller({"a": replies({"error": "x"}, status=500)})
    assert await run(GraphRouter(graph(nodes), caller)) == (500, {"error": "x"})


# -- Ensemble ---------------------------------------------------------------------------------------------------
def ensemble(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"root": {"routerType": "Ensemble", "steps": list(steps)}}


async def test_ensemble_merges_answers_by_step_name_or_index() -> None:
    caller = FakeCaller({"a": replies({"p": [1]}), "b": replies({"p": [2]}), "c": replies({"z": 0, "a": 1})})
    router = GraphRouter(
        graph(ensemble({"serviceName": "a", "name": "sk"}, {"serviceName": "b"}, {"serviceName": "c"})), caller
    )
    result = await router.run(INPUT, [])
    raw = await result.read()
    assert orjson.loads(raw) == {"sk": {"p": [1]}, "1": {"p": [2]}, "2": {"z": 0, "a": 1}}
    assert raw == b'{"1":{"p":[2]},"2":{"a":1,"z":0},"sk":{"p":[1]}}'  # keys sorted, as Go's encoder
    assert [c.body for c in caller.calls] == [INPUT] * 3


async def test_ensemble_runs_steps_in_parallel() -> None:
    both_started = asyncio.Event()
    started = 0

    async def meet(body: bytes) -> StepAnswer:
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()
        await both_started.wait()
        return answer({"ok": True})

    caller = FakeCaller({"a": meet, "b": meet})
    assert (await run(GraphRouter(graph(ensemble({"serviceName": "a"}, {"serviceName": "b"})), caller)))[0] == 200


async def test_ensemble_soft_failures_are_merged() -> None:
    caller = FakeCaller({"a": replies({"error": "x"}, status=500), "b": replies({"ok": 1})})
    router = GraphRouter(graph(ensemble({"serviceName": "a"}, {"serviceName": "b"})), caller)
    assert await run(router) == (200, {"0": {"error": "x"}, "1": {"ok": 1}})


async def test_the_first_failing_hard_step_in_order_decides() -> None:
    caller = FakeCaller(
        {"a": replies({"ok": 1}), "b": replies({"e": "b"}, status=503), "c": replies({"e": "c"}, status=400)}
    )
    router = GraphRouter(
        graph(
            ensemble(
                {"serviceName": "a", "dependency": "Hard"},
                {"serviceName": "b", "dependency": "Hard"},
                {"serviceName": "c", "dependency": "Hard"},
            )
        ),
        caller,
    )
    assert await run(router) == (503, {"e": "b"})


async def test_an_answer_that_is_not_a_json_object_fails_the_ensemble_with_500() -> None:
    caller = FakeCaller({"a": replies([1, 2]), "b": replies({"ok": 1})})
    with pytest.raises(ServingError, match="not an object") as info:
        await run(GraphRouter(graph(ensemble({"serviceName": "a"}, {"serviceName": "b"})), caller))
    assert info.value.status == 500


async def test_a_step_failure_fails_the_ensemble_and_cancels_the_others() -> None:
    async def broken(body: bytes) -> StepAnswer:
        raise ServingError(500, "worker gone")

    caller = FakeCaller({"slow": never, "broken": broken})
    router = GraphRouter(graph(ensemble({"serviceName": "slow"}, {"serviceName": "broken"})), caller)
    with pytest.raises(ServingError, match="worker gone"):
        await run(router)
    assert caller.cancelled == ["slow"]


async def test_stream_true_sent_to_an_ensemble_is_a_400() -> None:
    caller = FakeCaller({"a": replies({})})
    with pytest.raises(ServingError, match="cannot be streamed") as info:
        await GraphRouter(graph(ensemble({"serviceName": "a"})), caller).run(b'{"stream": true}', [])
    assert (info.value.status, info.value.param) == (400, "stream")


# -- Splitter ---------------------------------------------------------------------------------------------------
SPLIT = {
    "root": {
        "routerType": "Splitter",
        "steps": [{"serviceName": "a", "weight": 30}, {"serviceName": "b", "weight": 70}],
    }
}


@pytest.mark.parametrize(("point", "picked"), [(0, "a"), (29, "a"), (30, "b"), (99, "b")])
async def test_splitter_picks_by_cumulative_weight(point: int, picked: str) -> None:
    caller = FakeCaller({"a": replies({"by": "a"}), "b": replies({"by": "b"})})
    draws: list[int] = []

    def pick(n: int) -> int:
        draws.append(n)
        return point

    assert await run(GraphRouter(graph(SPLIT), caller, pick=pick)) == (200, {"by": picked})
    assert draws == [100]


async def test_splitter_distribution_follows_the_weights() -> None:
    caller = FakeCaller({"a": replies({"by": "a"}), "b": replies({"by": "b"})})
    router = GraphRouter(graph(SPLIT), caller, pick=random.Random(11).randrange)
    picked = [(await run(router))[1]["by"] for _ in range(2000)]
    assert abs(picked.count("a") / 2000 - 0.30) <= 0.03


# -- headers, timeouts ------------------------------------------------------------------------------------------
async def test_only_matching_headers_are_propagated_and_json_is_the_default_type() -> None:
    caller = FakeCaller({"a": replies({})})
    settings = GraphRouterSettings(propagate_headers=("^authorization$", "^x-request-"))
    router = GraphRouter(graph(seq({"serviceName": "a"})), caller, settings)
    client = [(b"authorization", b"Bearer k"), (b"x-request-id", b"7"), (b"cookie", b"c"), (b"content-length", b"9")]
    await run_with_headers(router, client)
    assert caller.calls[0].headers == [
        (b"authorization", b"Bearer k"),
        (b"x-request-id", b"7"),
        (b"content-type", b"application/json"),
    ]


async def run_with_headers(router: GraphRouter, headers: list[tuple[bytes, bytes]]) -> None:
    await (await router.run(INPUT, headers)).read()


async def test_a_step_over_its_limit_is_a_504() -> None:
    caller = FakeCaller({"a": never})
    router = GraphRouter(graph(seq({"serviceName": "a"}), routerTimeouts={"serviceClient": 0.01}), caller)
    with pytest.raises(ServingError, match=r"did not answer within 0\.01 s") as info:
        await run(router)
    assert info.value.status == 504
    assert caller.cancelled == ["a"]


async def test_the_graph_over_its_limit_is_a_504() -> None:
    caller = FakeCaller({"a": never})
    with pytest.raises(ServingError, match=r"graph 'g' did not answer within 0\.01 s") as info:
        await run(GraphRouter(graph(seq({"serviceName": "a"}), timeout=0.01), caller))
    assert info.value.status == 504


async def test_answers_that_are_not_json_keep_their_content_type() -> None:
    async def text(body: bytes) -> StepAnswer:
        return StepAnswer(200, [(b"content-type", b"text/csv")], b"a,b\n1,2\n")

    result = await GraphRouter(graph(seq({"serviceName": "a"})), FakeCaller({"a": text})).run(INPUT, [])
    assert (result.headers, result.body) == ([(b"content-type", b"text/csv")], b"a,b\n1,2\n")


# -- streaming --------------------------------------------------------------------------------------------------
CHUNKS = [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"]


def streaming_sequence() -> dict[str, Any]:
    return seq({"serviceName": "prep"}, {"serviceName": "llm", "data": "$response", "stream": True})


async def test_the_terminal_step_streams_before_its_last_chunk() -> None:
    stream = GatedStream(list(CHUNKS))
    caller = FakeCaller({"prep": replies({"messages": []}), "llm": stream.handler()})
    result = await GraphRouter(graph(streaming_sequence()), caller).run(INPUT, [])
    assert result.streamed
    assert result.headers == [(b"content-type", b"text/event-stream")]
    assert isinstance(result.body, object)
    chunks = result.body
    assert not isinstance(chunks, bytes)
    stream.release()
    assert await anext(chunks) == CHUNKS[0]
    assert stream.produced == 1  # the client has the first chunk while the worker has sent only one
    stream.release(2)
    assert [c async for c in chunks] == CHUNKS[1:]
    assert [c.stream for c in caller.calls] == [False, True]


async def test_the_step_a_switch_picks_streams() -> None:
    stream = GatedStream(list(CHUNKS))
    nodes = {
        "root": {"routerType": "Switch", "steps": [{"serviceName": "llm", "condition": "messages", "stream": True}]}
    }
    result = await GraphRouter(graph(nodes), FakeCaller({"llm": stream.handler()})).run(b'{"messages": []}', [])
    stream.release(3)
    assert await result.read() == b"".join(CHUNKS)


async def test_a_streaming_step_whose_answer_feeds_the_next_is_read_whole() -> None:
    stream = GatedStream(list(CHUNKS))
    stream.release(3)
    caller = FakeCaller({"llm": stream.handler(), "post": echo("post")})
    router = GraphRouter(graph(seq({"serviceName": "llm"}, {"serviceName": "post"})), caller)
    result = await router.run(INPUT, [])
    assert not result.streamed
    assert [c.stream for c in caller.calls] == [False, False]


async def test_streaming_off_reads_everything_whole() -> None:
    stream = GatedStream(list(CHUNKS))
    stream.release(3)
    caller = FakeCaller({"prep": replies({}), "llm": stream.handler()})
    result = await GraphRouter(graph(streaming_sequence()), caller).run(INPUT, [], stream=False)
    assert result.body == b"".join(CHUNKS)
    assert result.headers == [(b"content-type", b"text/event-stream")]


async def test_a_stalled_stream_fails_after_the_idle_limit() -> None:
    stream = GatedStream(list(CHUNKS))
    caller = FakeCaller({"prep": replies({}), "llm": stream.handler()})
    router = GraphRouter(graph(streaming_sequence(), routerTimeouts={"streamIdle": 0.02}), caller)
    result = await router.run(INPUT, [])
    stream.release()
    chunks = result.body
    assert not isinstance(chunks, bytes)
    assert await anext(chunks) == CHUNKS[0]
    with pytest.raises(ServingError, match=r"nothing for 0\.02 s") as info:
        await anext(chunks)
    assert info.value.status == 504
    assert stream.closed  # the upstream was let go


async def test_closing_a_streamed_answer_closes_the_upstream() -> None:
    stream = GatedStream(list(CHUNKS))
    caller = FakeCaller({"prep": replies({}), "llm": stream.handler()})
    result = await GraphRouter(graph(streaming_sequence()), caller).run(INPUT, [])
    stream.release()
    chunks = result.body
    assert not isinstance(chunks, bytes)
    await anext(chunks)
    await result.discard()
    assert stream.closed


async def test_cancelling_the_graph_cancels_every_step_in_flight() -> None:
    caller = FakeCaller({"a": never, "b": never, "c": never})
    nodes = {
        "root": {"routerType": "Sequence", "steps": [{"nodeName": "fan"}]},
        "fan": {"routerType": "Ensemble", "steps": [{"serviceName": "a"}, {"serviceName": "b"}, {"serviceName": "c"}]},
    }
    task = asyncio.create_task(GraphRouter(graph(nodes), caller).run(INPUT, []))
    await until(lambda: len(caller.calls) == 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(caller.cancelled) == ["a", "b", "c"]
