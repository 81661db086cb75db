"""Settings of the graph router that are the gateway's, not the graph's (KServe sets them on the router's pod)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator


class GraphRouterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    propagate_headers: tuple[str, ...] = Field(
        default=(),
        description="Regular expressions (searched, case-insensitive) of the client's header names that are passed "
        "to every step; KServe's PROPAGATE_HEADERS. Others are not sent; content-type defaults to "
        "application/json.",
    )

    @field_validator("propagate_headers")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"'{pattern}' is not a regular expression: {exc}") from None
        return patterns

    def header_patterns(self) -> list[re.Pattern[str]]:
        return [re.compile(p, re.IGNORECASE) for p in self.propagate_headers]
