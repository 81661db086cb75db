"""A simulated vLLM worker: vLLM's HTTP contract over a modelled engine, no model and no accelerator.

Run it as `python -m llmserve.workers.sim --host H --port P --model NAME [--profile cpu-smollm2|h100-llama-8b]`,
or in-process: `create_app("NAME", profile=..., clock=...)` is an ASGI app (a `SimServer` around a `SimEngine`),
and a `SimEngine` with a `ManualClock` steps without real time (tests). See `profiles.py` for the latency model.
"""

from llmserve.workers.sim.app import ServerConfig, SimServer, create_app
from llmserve.workers.sim.clock import Clock, ManualClock, RealClock
from llmserve.workers.sim.engine import ScheduledStep, SimEngine, SimRequest
from llmserve.workers.sim.plan import sim_plan
from llmserve.workers.sim.profiles import CPU_SMOLLM2, H100_LLAMA_8B, PROFILES, EngineProfile, get_profile
from llmserve.workers.sim.tokenizer import HFTokenizer, SimTokenizer, WordTokenizer, load_tokenizer

__all__ = [
    "CPU_SMOLLM2",
    "H100_LLAMA_8B",
    "PROFILES",
    "Clock",
    "EngineProfile",
    "HFTokenizer",
    "ManualClock",
    "RealClock",
    "ScheduledStep",
    "ServerConfig",
    "SimEngine",
    "SimRequest",
    "SimServer",
    "SimTokenizer",
    "WordTokenizer",
    "create_app",
    "get_profile",
    "load_tokenizer",
    "sim_plan",
]
