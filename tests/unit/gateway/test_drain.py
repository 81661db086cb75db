"""The gateway's drain (gateway/drain.py) on its own: what it tracks, when it cuts, and how a cut is told apart
from any other cancellation."""

from __future__ import annotations

import asyncio

from gateway.drain import Drain


async def serve(drain: Drain, release: asyncio.Event, outcome: list[str]) -> None:
    """A request's skeleton in miniature."""
    task = drain.track()
    try:
        await release.wait()
        outcome.append("finished")
    except asyncio.CancelledError:
        if not drain.cut_here(task):
            outcome.append("cancelled")
            raise
        outcome.append("cut")
    finally:
        drain.untrack(task)


async def test_requests_in_flight_finish_within_the_drain() -> None:
    drain, release, outcome = Drain(), asyncio.Event(), []
    request = asyncio.ensure_future(serve(drain, release, outcome))
    await asyncio.sleep(0)
    assert drain.in_flight == 1
    drain.begin(30)
    assert drain.readiness() is not None  # /ready fails at once
    release.set()
    await request
    assert outcome == ["finished"]
    await asyncio.wait_for(drain.wait_idle(), 5)


async def test_what_is_left_at_the_deadline_is_cut_and_can_still_answer() -> None:
    drain, outcome = Drain(), []
    requests = [asyncio.ensure_future(serve(drain, asyncio.Event(), outcome)) for _ in range(3)]
    await asyncio.sleep(0)
    drain.begin(0)  # a drain of 0 cuts at once
    await asyncio.gather(*requests)  # cut_here took the cancellation back: each one returned normally
    assert outcome == ["cut"] * 3
    assert drain.in_flight == 0


async def test_another_cancellation_is_not_a_cut() -> None:
    drain, outcome = Drain(), []
    request = asyncio.ensure_future(serve(drain, asyncio.Event(), outcome))
    await asyncio.sleep(0)
    request.cancel()  # a client that went away, say
    await asyncio.gather(request, return_exceptions=True)
    assert outcome == ["cancelled"]
    assert not drain.draining
