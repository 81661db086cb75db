"""Ejection: a replica out of rotation on this gateway, back when restarted, when its time is over, or gone."""

from __future__ import annotations

from gateway.ejection import EjectingView, Ejector
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo

A = Endpoint("chat", "chat-00001-0", "http://a:1")
B = Endpoint("chat", "chat-00001-1", "http://b:1")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def view() -> tuple[EjectingView, Ejector, EndpointRegistry, Clock, list[tuple[str, str]]]:
    registry = EndpointRegistry()
    registry.declare_service(ServiceInfo(name="chat", model_name="chat"))
    registry.publish(A)
    registry.publish(B)
    told: list[tuple[str, str]] = []
    clock = Clock()
    ejector = Ejector(base_s=5, max_s=60, clock=clock, on_eject=lambda e, why: told.append((e.replica_id, why)))
    return EjectingView(registry, ejector), ejector, registry, clock, told


def test_an_ejected_replica_is_left_out_until_its_time_is_over() -> None:
    endpoints, ejector, _, clock, told = view()
    changed: list[str] = []
    endpoints.subscribe(changed.append)
    assert endpoints.ready_endpoints("chat") == (A, B)
    ejector.eject(A, "unreachable")
    assert endpoints.ready_endpoints("chat") == (B,)
    assert changed == ["chat"]
    assert told == [("chat-00001-0", "unreachable")]
    clock.now += 5.1
    assert endpoints.ready_endpoints("chat") == (A, B)


def test_ejected_again_it_stays_out_twice_as_long() -> None:
    endpoints, ejector, _, clock, _ = view()
    ejector.eject(A, "unreachable")
    clock.now += 6
    ejector.eject(A, "unreachable")
    clock.now += 6
    assert endpoints.ready_endpoints("chat") == (B,)  # 10 s the second time
    clock.now += 4.1
    assert endpoints.ready_endpoints("chat") == (A, B)


def test_a_replica_restarted_at_another_address_is_used_at_once() -> None:
    endpoints, ejector, registry, _, _ = view()
    ejector.eject(A, "engine dead")
    restarted = Endpoint("chat", A.replica_id, "http://a:2")
    registry.publish(restarted)
    assert restarted in endpoints.ready_endpoints("chat")


def test_transformer_replicas_are_read_apart_from_the_predictor_s() -> None:
    registry = EndpointRegistry()
    registry.declare_service(ServiceInfo(name="chat", model_name="chat"))
    predictor = Endpoint("chat", "chat-00001-0", "http://p:1")
    transformer = Endpoint("chat", "chat-transformer-0", "http://t:1", component="transformer")
    registry.set_endpoints("chat", (predictor, transformer))
    ejector = Ejector()
    view = EjectingView(registry, ejector)
    assert view.ready_endpoints("chat") == (predictor,)  # what requests are routed to
    assert view.transformer_endpoints("chat") == (transformer,)
    ejector.eject(transformer, "unreachable")
    assert view.transformer_endpoints("chat") == ()
    assert view.ready_endpoints("chat") == (predictor,)


def outliers(replicas: int = 2) -> tuple[EjectingView, Ejector, Clock, list[tuple[str, str]]]:
    registry = EndpointRegistry()
    registry.declare_service(ServiceInfo(name="chat", model_name="chat"))
    for i in range(replicas):
        registry.publish(Endpoint("chat", f"chat-00001-{i}", f"http://r{i}:1"))
    told: list[tuple[str, str]] = []
    clock = Clock()
    ejector = Ejector(base_s=5, max_s=60, clock=clock, on_eject=lambda e, why: told.append((e.replica_id, why)),
                      outlier_failures=3, population=lambda s: len(registry.ready_endpoints(s)))  # fmt: skip
    return EjectingView(registry, ejector), ejector, clock, told


def test_n_failures_in_a_row_eject_an_outlier_for_base_times_the_times_ejected() -> None:
    endpoints, ejector, clock, told = outliers()
    first = endpoints.ready_endpoints("chat")[0]
    for _ in range(2):
        ejector.observed(first, failed=True, what="HTTP 5xx")
    assert len(endpoints.ready_endpoints("chat")) == 2  # not yet
    ejector.observed(first, failed=True, what="HTTP 5xx")
    assert first not in endpoints.ready_endpoints("chat")
    assert told == [(first.replica_id, "outlier: 3 failures in a row (HTTP 5xx)")]
    clock.now += 5.1
    assert first in endpoints.ready_endpoints("chat")  # back after the base time
    for _ in range(3):
        ejector.observed(first, failed=True)
    clock.now += 9.9
    assert first not in endpoints.ready_endpoints("chat")  # 2 x base the second time (linear, not doubling)
    clock.now += 0.2
    assert first in endpoints.ready_endpoints("chat")


def test_a_success_clears_the_count() -> None:
    endpoints, ejector, _, told = outliers()
    first = endpoints.ready_endpoints("chat")[0]
    for _ in range(5):
        ejector.observed(first, failed=True)
        ejector.observed(first, failed=False)
    assert told == []
    restarted = Endpoint("chat", first.replica_id, "http://elsewhere:1")
    ejector.observed(first, failed=True)
    ejector.observed(first, failed=True)
    ejector.observed(restarted, failed=True)  # another process at another address: its own count
    assert told == []


def test_never_more_than_half_of_a_service_but_dead_replicas_always() -> None:
    endpoints, ejector, _, told = outliers(replicas=3)
    a, b, c = endpoints.ready_endpoints("chat")
    for replica in (a, b):
        for _ in range(3):
            ejector.observed(replica, failed=True)
    assert endpoints.ready_endpoints("chat") == (b, c)  # one of three may be out as an outlier, not two
    ejector.eject(b, "engine dead")  # a dead replica is out whatever the rest looks like
    assert endpoints.ready_endpoints("chat") == (c,)
    assert [r for r, _ in told] == [a.replica_id, b.replica_id]
    single, lone, _, lone_told = outliers(replicas=1)
    only = single.ready_endpoints("chat")[0]
    for _ in range(6):
        lone.observed(only, failed=True)
    assert single.ready_endpoints("chat") == (only,)
    assert lone_told == []
