"""gateway/openapi.json: in step with its generator (scripts/gateway_openapi.py) and the specs, served at
/openapi.json by attach_openapi, and naming only routes the gateway serves."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from gateway.app import create_app
from gateway.openapi import openapi_document
from gateway.settings import GatewaySettings
from llmserve.endpoints import EndpointRegistry
from tests.conftest import REPO, SHARED_SPECS


def test_the_committed_document_is_what_the_specs_give() -> None:
    if not SHARED_SPECS.exists():
        pytest.fail(f"the shared specs are missing ({SHARED_SPECS})")
    result = subprocess.run(
        [sys.executable, "scripts/gateway_openapi.py", "--check", "--specs", str(SHARED_SPECS)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


async def test_served_at_openapi_json() -> None:
    app = create_app(GatewaySettings(), EndpointRegistry())  # build_gateway attaches the document
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        served = await client.get("/openapi.json")
        assert served.status_code == 200
        assert served.json() == openapi_document()
        for path, item in openapi_document()["paths"].items():
            for method in item.keys() - {"parameters"}:
                concrete = path.replace("{model}", "x").replace("{model_name}", "x").replace("{model_version}", "1")
                response = await client.request(method.upper(), concrete, json={})
                assert "Unknown request URL" not in response.text, f"{method.upper()} {path} is not served"
                assert response.status_code != 405, f"{method.upper()} {path} is not served"
        unknown = await client.get("/v1/nothing")
        assert "Unknown request URL" in unknown.text  # (the check above can fail)
