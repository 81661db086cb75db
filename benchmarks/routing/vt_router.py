"""The virtual-time harness's one door into `gateway.routing`: a fleet's routing, decisions only.

Every use of the gateway's Scheduler, load ledger (gateway/ledger.py) and its Dispatched records by the virtual-time
harness is in this module, so a change of their API is fixed here and nowhere else. What the
harness sees is `FleetRouter`: `route()` a chat request to a replica index, `scrape()` a replica's gauges (what
the SignalScraper records from /metrics), and a `Placement` told of the first token and of the end, exactly when
the gateway's proxy tells its Dispatched record.

The gateway's routing hashes prompt text and estimates token counts itself (no tokenizer), exactly as in a
gateway process; the runs stream without asking for usage, as the sweep's clients do, so the gateway learns no
characters-per-token ratio and keeps its default.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.ledger import Dispatched, LoadLedger
from gateway.routing import RouteContext, Scheduler, load_profiles
from gateway.routing.profiles import build_profile, load_profile_file
from llmserve.endpoints import Endpoint, ServiceInfo
from llmserve.protocol.openai import ChatCompletionRequest
from llmserve.protocol.vllm_metrics import Scraped
from llmserve.workers.sim.metrics import Gauges

MODEL = "m"


class Placement:
    """A request placed on a replica: tell it the first token and the end (each once)."""

    def __init__(self, assignment: Dispatched) -> None:
        self._assignment = assignment

    def first_token(self) -> None:
        self._assignment.first_token()

    def done(self) -> None:
        self._assignment.release()


class FleetRouter:
    """One service of `replicas` replicas routed by the named profile (built-ins, `profiles_dir`, then
    `extra_profiles`), every random choice drawn from `seed`, time read from `clock` (virtual seconds)."""

    def __init__(
        self,
        profile: str,
        replicas: int,
        *,
        seed: int,
        clock: Callable[[], float],
        profiles_dir: Path | None = None,
        extra_profiles: Path | None = None,
    ) -> None:
        profiles = load_profiles(profiles_dir, seed=seed, clock=clock)
        for path in sorted(extra_profiles.glob("*.yaml")) if extra_profiles else []:
            name, spec = load_profile_file(path)
            profiles[name] = build_profile(name, spec, seed=seed, clock=clock)
        if profile not in profiles:
            raise SystemExit(f"unknown routing profile {profile!r}; known: {', '.join(sorted(profiles))}")
        self.board = LoadLedger()
        self.scheduler = Scheduler(profiles, self.board, default_profile=profile)
        self.service = ServiceInfo(name=MODEL, model_name=MODEL, routing_profile=profile, created=0)
        self.endpoints = [Endpoint(MODEL, f"{MODEL}-{i}", f"http://replica-{i}.invalid") for i in range(replicas)]
        self._index = {e.replica_id: i for i, e in enumerate(self.endpoints)}

    async def route(self, body: dict[str, Any], session: str | None, body_size: int) -> tuple[int, Placement]:
        """Choose a replica for a chat completion request body (and count it there)."""
        request = ChatCompletionRequest.model_validate(body)
        ctx = RouteContext(
            service=self.service, route="chat_completions", request=request, body_size=body_size, session=session
        )
        assignment = await self.scheduler.assign(ctx, self.endpoints)
        return self._index[assignment.endpoint.replica_id], Placement(assignment)

    def scrape(self, replica: int, gauges: Gauges, *, block_size: int, num_blocks: int, now: float) -> None:
        """Record what a scrape of the replica's /metrics would have read now."""
        scraped = Scraped(
            running=float(gauges.running),
            waiting=float(gauges.waiting),
            kv_usage=gauges.kv_cache_usage,
            block_size=block_size,
            num_blocks=num_blocks,
        )
        self.board.record_scrape(self.endpoints[replica], scraped, now)
