"""The one load ledger: a request counts on its replica and its service from dispatch to release."""

from __future__ import annotations

from gateway.ledger import LoadLedger
from llmserve.endpoints import Endpoint
from llmserve.protocol.vllm_metrics import Scraped

A = Endpoint("chat", "chat-00001-0", "http://a:1")
B = Endpoint("chat", "chat-00001-1", "http://b:1")


def test_dispatch_counts_until_release_and_only_once() -> None:
    ledger = LoadLedger()
    ledger.arrived("chat")
    first = ledger.dispatch(A, tokens=100, prefill_tokens=40)
    second = ledger.dispatch(B, tokens=10)
    assert ledger.load(A).in_flight == 1
    assert ledger.load(A).pending_prefill == 40
    demand = ledger.demand("chat")
    assert (demand.in_flight, demand.in_flight_tokens, demand.arrived) == (2, 110, 1)
    first.first_token()
    assert ledger.load(A).pending_prefill == 0
    first.release()
    first.release()
    second.release()
    assert ledger.demand("chat").in_flight == 0
    assert ledger.load(A).in_flight == ledger.load(B).in_flight == 0


def test_held_requests_are_demand_too() -> None:
    ledger = LoadLedger()
    ledger.hold("chat", 300)
    assert (ledger.demand("chat").held, ledger.demand("chat").held_tokens) == (1, 300)
    ledger.unhold("chat", 300)
    assert ledger.demand("chat").held == 0


def test_a_restarted_replica_starts_from_zero_and_old_releases_do_not_touch_it() -> None:
    ledger = LoadLedger()
    old = ledger.dispatch(A, tokens=5)
    restarted = Endpoint("chat", A.replica_id, "http://a:2")  # same replica id, a new address
    assert ledger.load(restarted).in_flight == 0
    fresh = ledger.dispatch(restarted, tokens=5)
    old.release()  # the old process's request ends: it must not take the new one's count
    assert ledger.load(restarted).in_flight == 1
    assert ledger.demand("chat").in_flight == 1
    fresh.release()


def test_scrapes_and_forgetting_gone_replicas() -> None:
    ledger = LoadLedger()
    ledger.record_scrape(A, Scraped(running=2, waiting=1, block_size=16), now=1.0)
    ledger.record_scrape(B, None, now=1.0)
    assert ledger.load(A).requests == 3
    assert ledger.load(B).scrape_failures == 1
    busy = ledger.dispatch(B, tokens=1)
    ledger.forget_except(set())
    assert set(ledger.loads) == {B.replica_id}  # kept while a request is still counted on it
    busy.release()
    ledger.forget_except(set())
    assert ledger.loads == {}


def test_demand_is_also_counted_per_revision() -> None:
    ledger = LoadLedger()
    v1 = Endpoint("chat", "chat-00001-0", "http://a:1", revision="chat-00001")
    v2 = Endpoint("chat", "chat-00002-0", "http://b:1", revision="chat-00002")
    first, second = ledger.dispatch(v1, tokens=10), ledger.dispatch(v2, tokens=30)
    ledger.hold("chat", 5, "chat-00002")
    demand = ledger.demand("chat")
    assert (demand.in_flight, demand.held) == (2, 1)
    assert (demand.revisions["chat-00001"].in_flight, demand.revisions["chat-00001"].arrived) == (1, 1)
    assert (demand.revisions["chat-00002"].in_flight_tokens, demand.revisions["chat-00002"].held_tokens) == (30, 5)
    first.release()
    second.release()
    ledger.unhold("chat", 5, "chat-00002")
    assert all(d.in_flight == d.held == 0 for d in ledger.demand("chat").revisions.values())
