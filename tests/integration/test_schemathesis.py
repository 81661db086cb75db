"""schemathesis against the gateway's own OpenAPI document (gateway/openapi.json, served at /openapi.json), all
checks, over real HTTP: a gateway app served through the project's uvicorn config, in front of the vLLM-contract
simulator (model "m") and the V2 runtime with a scikit-learn model ("iris").

Budget: LLMSERVE_SCHEMATHESIS_EXAMPLES examples per operation (CI: 200; `make fuzz-api` runs 2000).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from gateway.app import create_app
from gateway.openapi import openapi_document
from gateway.settings import GatewaySettings
from llmserve.endpoints import Endpoint, EndpointRegistry, ServiceInfo
from llmserve.frontdoor import FrontDoorSettings
from llmserve.runtimes.server import Runtime
from llmserve.runtimes.settings import ModelSettings, RuntimeSettings
from llmserve.workers.sim import CPU_SMOLLM2
from llmserve.workers.sim import create_app as create_sim
from tests.support import v2_models
from tests.support.servers import serving

EXAMPLES = int(os.environ.get("LLMSERVE_SCHEMATHESIS_EXAMPLES", "200"))
# Fast enough that schema-valid extremes (n=128, max_tokens up to the context) answer in milliseconds.
SIM = CPU_SMOLLM2.with_overrides(
    name="schemathesis",
    max_model_len=256,
    step_floor_ms=0.0,
    step_base_ms=0.0,
    decode_ms_per_seq=0.0,
    prefill_ms_per_token=0.0,
    request_overhead_ms=0.0,
    output_tokens=4,
)


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work: Path = tmp_path_factory.mktemp("schemathesis")
    iris = v2_models.sklearn_iris(work / "iris")
    runtime = Runtime(RuntimeSettings(models=[ModelSettings(name="iris", uri=str(iris.path))], cache_dir=work / "c"))
    registry = EndpointRegistry()
    with ExitStack() as stack:
        sim = stack.enter_context(serving(create_sim("m", profile=SIM)))
        v2 = stack.enter_context(serving(runtime.app))
        registry.declare_service(ServiceInfo(name="m", model_name="m"))
        registry.publish(Endpoint(service="m", replica_id="m-0", url=sim.url))
        registry.declare_service(ServiceInfo(name="iris", model_name="iris", protocol="v2"))
        registry.publish(Endpoint(service="iris", replica_id="iris-0", url=v2.url))
        app = create_app(GatewaySettings(activator_timeout_s=1.0), registry)
        gateway = stack.enter_context(serving(app, front_door=FrontDoorSettings()))
        yield gateway.url


# The document as the gateway serves it (test_openapi_document checks /openapi.json returns exactly this file).
# Loaded at import rather than from the served URL: schemathesis's lazy fixture loader does not run on pytest 9.
# Schema-valid requests the worker may still refuse with 400: what a schema cannot say (a tensor's data must fit its
# shape; prompt + max_tokens within the context; OpenAI features vLLM does not implement). Everything else holds
# for every operation as schemathesis has it (no 5xx, documented statuses, content types and bodies, invalid data
# rejected).
CONFIG = SchemathesisConfig.from_dict(
    {
        "operations": [
            {
                "include-path-regex": "^/v1/(chat/completions|completions|embeddings)$|/infer$",
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "404", "503"]}},
            }
        ]
    }
)
schema = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_gateway_keeps_its_documented_contract(case: schemathesis.Case, gateway_url: str) -> None:
    case.call_and_validate(base_url=gateway_url, timeout=30)
