"""InferenceGraph validation: KServe's webhook rules, the ones it lacks (cycles, unknown references, streaming),
and files that mix InferenceServices and InferenceGraphs."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmserve.spec import (
    InferenceGraph,
    SpecError,
    check_graphs,
    check_service_references,
    load_resources,
    parse_resources,
    parse_services,
)

SERVICE = """
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {name: NAME}
spec:
  predictor:
    model: {modelFormat: {name: sklearn}, storageUri: file:///models/NAME}
"""

GRAPH = """
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: pipeline}
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
        - {name: first, serviceName: a}
        - {name: second, nodeName: split, data: $response}
    split:
      routerType: Splitter
      steps:
        - {serviceName: a, weight: 30}
        - {serviceName: b, weight: 70}
"""


def services(*names: str) -> str:
    return "\n---\n".join(SERVICE.replace("NAME", name) for name in names)


def declared(graph: str = GRAPH, *names: str) -> str:
    return services(*(names or ("a", "b"))) + "\n---\n" + graph


def problems_of(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_resources(text, "g.yaml")
    return str(info.value)


def test_a_file_mixing_services_and_graphs_loads_both() -> None:
    found = parse_resources(declared(), "g.yaml")
    assert [s.name for s in found.services] == ["a", "b"]
    (graph,) = found.graphs
    assert graph.name == "pipeline"
    assert graph.service_names() == ["a", "b"]
    root = graph.spec.nodes["root"]
    assert root.router_type == "Sequence"
    assert [s.data for s in root.steps] == ["$request", "$response"]
    assert root.steps[0].dependency == "Soft"
    assert InferenceGraph.model_validate(graph.model_dump(by_alias=True)) == graph


def test_load_services_keeps_returning_only_services() -> None:
    assert [s.name for s in parse_services(declared(), "g.yaml")] == ["a", "b"]


def test_load_resources_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(declared())
    assert len(load_resources(path).graphs) == 1


def test_rag_config_is_a_valid_graph(repo_root: Path) -> None:
    found = load_resources(repo_root / "configs" / "rag.yaml")
    (graph,) = found.graphs
    assert graph.spec.expose_as is not None
    assert set(graph.service_names()) <= {s.name for s in found.services}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # KServe's webhook rules
        (("metadata: {name: pipeline}", "metadata: {name: 1pipe}"), ["metadata.name", "start with a letter"]),
        (("    root:\n", "    start:\n"), ["spec.nodes: root node not found"]),
        (("{name: first, serviceName: a}", "{name: first}"), ["spec.nodes.root.steps.0", "one of nodeName"]),
        (
            ("{name: first, serviceName: a}", "{name: first, serviceName: a, serviceUrl: 'http://x:1/p'}"),
            ["spec.nodes.root.steps.0", "only one of nodeName, serviceName, serviceUrl"],
        ),
        (("{name: second,", "{name: first,"), ["spec.nodes.root.steps.1.name", "more than one step named 'first'"]),
        (("weight: 70", "weight: 60"), ["spec.nodes.split.steps", "sum to 100 (they sum to 90)"]),
        (("{serviceName: b, weight: 70}", "{serviceName: b}"), ["spec.nodes.split.steps.1.weight", "needs a weight"]),
        (("routerType: Splitter", "routerType: Fanout"), ["routerType", "'Sequence'", "'Fanout'"]),
        # what KServe does not check
        (("nodeName: split", "nodeName: splat"), ["spec.nodes.root.steps.1.nodeName", "no node named 'splat'"]),
        (
            ("{serviceName: a, weight: 30}", "{nodeName: root, weight: 30}"),
            ["spec.nodes.split.steps.0.nodeName", "cycle (root -> split -> root)"],
        ),
        (("{name: first, serviceName: a}", "{name: first, serviceName: a, condition: x}"), ["first step", "Switch"]),
        (("{name: first, serviceName: a}", "{name: first, serviceName: a, data: $response}"), ["use $request"]),
        (("data: $response", "data: $response.predictions"), ["steps.1.data", "'$request' or '$response'"]),
        (("{serviceName: a, weight: 30}", "{serviceName: a, weight: 30, dependancy: Hard}"), ["unknown field"]),
        (("weight: 30}", "weight: 30, condition: x}"), ["split.steps.0.condition", "not used by a Splitter"]),
        (("{name: first, serviceName: a}", "{name: first, serviceUrl: 'ftp://x/y'}"), ["serviceUrl", "http://"]),
        (("{name: first, serviceName: a}", "{name: first, serviceName: a, path: v1/x}"), ["path", "absolute"]),
    ],
)
def test_invalid_graphs_name_the_field(change: tuple[str, str], expected: list[str]) -> None:
    text = declared(GRAPH.replace(*change))
    assert text != declared()
    message = problems_of(text)
    assert message.startswith("g.yaml (document 3): invalid InferenceGraph:")
    for fragment in expected:
        assert fragment in message


def test_a_switch_step_without_condition_is_refused() -> None:
    text = declared(GRAPH.replace("routerType: Splitter", "routerType: Switch").replace(", weight: 30", ""))
    message = problems_of(text.replace(", weight: 70", ", condition: x"))
    assert "spec.nodes.split.steps.0.condition: required in a Switch node" in message


def test_every_problem_is_reported_at_once() -> None:
    text = declared(GRAPH.replace("nodeName: split", "nodeName: splat").replace("weight: 70", "weight: 10"))
    message = problems_of(text)
    assert "no node named 'splat'" in message
    assert "they sum to 40" in message


def test_unknown_services_are_refused_against_the_same_file() -> None:
    message = problems_of(declared(GRAPH, "a"))
    assert "spec.nodes.split.steps.1.serviceName: no InferenceService named 'b' in this file (declared: a)" in message


def test_services_known_elsewhere_satisfy_references() -> None:
    found = parse_resources(services("a") + "\n---\n" + GRAPH, "g.yaml", known_services={"b"})
    assert len(found.graphs) == 1


def test_the_controller_checks_a_graph_against_its_running_services() -> None:
    (graph,) = parse_resources(declared(), "g.yaml").graphs
    assert check_service_references(graph, frozenset({"a", "b"}), "on the controller") == []
    (problem,) = check_service_references(graph, frozenset({"a"}), "on the controller")
    assert problem.endswith("no InferenceService named 'b' on the controller (declared: a)")
    document = graph.model_dump(by_alias=True)
    document["spec"]["exposeAs"] = {"model": "chat"}
    exposed = InferenceGraph.model_validate(document)
    with pytest.raises(SpecError, match="'chat' is already served"):
        check_graphs(
            "apply", [exposed], [], known_services={"a", "b"}, known_models={"chat"}, where="on the controller"
        )


def test_an_exposed_model_name_must_be_free() -> None:
    graph = GRAPH.replace("spec:\n", "spec:\n  exposeAs: {model: a}\n", 1)
    assert "spec.exposeAs.model: 'a' is already served" in problems_of(declared(graph))


def test_graph_names_are_unique() -> None:
    assert "declared twice" in problems_of(declared(GRAPH + "\n---\n" + GRAPH))


def test_unknown_kind_is_named() -> None:
    message = problems_of(GRAPH.replace("kind: InferenceGraph", "kind: Pipeline"))
    assert "kind: must be 'InferenceService' or 'InferenceGraph' (got 'Pipeline')" in message


STREAMING = """
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: chat}
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
        - {serviceName: a}
        - {nodeName: pick, data: $response}
    pick:
      routerType: Switch
      steps:
        - {serviceName: a, condition: x, stream: true}
        - {serviceName: b, condition: y, stream: true}
"""


def test_streaming_steps_where_the_answer_comes_from_are_accepted() -> None:
    (graph,) = parse_resources(declared(STREAMING), "s.yaml").graphs
    assert graph.spec.router_timeouts.stream_idle == 120.0


def test_stream_true_on_an_ensemble_is_refused() -> None:
    message = problems_of(declared(STREAMING.replace("routerType: Switch", "routerType: Ensemble")))
    assert "spec.nodes.pick.steps.0.stream: an Ensemble merges its steps' whole JSON answers and cannot stream" in (
        message
    )


def test_a_condition_after_a_streaming_step_is_refused() -> None:
    text = STREAMING.replace("- {serviceName: a}\n", "- {serviceName: a, stream: true}\n").replace(
        "{nodeName: pick, data: $response}", "{nodeName: pick, condition: choices}"
    )
    message = problems_of(declared(text))
    assert "spec.nodes.root.steps.0.stream: a streaming step must be the last of its Sequence" in message
    assert "step 1 has a condition" in message


def test_a_streaming_node_under_an_ensemble_is_refused() -> None:
    text = STREAMING.replace("routerType: Sequence", "routerType: Ensemble").replace(", data: $response", "")
    message = problems_of(declared(text))
    assert "spec.nodes.pick.steps.0.stream: node 'pick' is not where the graph's answer comes from" in message
