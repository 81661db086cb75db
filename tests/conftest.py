"""Shared test configuration: where the shared specs live, and the repository root."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_SPECS = REPO.parent / "shared" / "specs"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def openai_schemas() -> object:
    from tests.support.openapi import OpenAISchemas

    return OpenAISchemas.load(SHARED_SPECS / "openai" / "openapi.yaml")
