"""Validate REST bodies against the Open Inference Protocol's OpenAPI document
(../shared/specs/open-inference-protocol/open_inference_rest.yaml), component schemas as written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

_URN = "urn:open-inference-rest"


class V2Schemas:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT4)
        self._registry: Registry[Any] = Registry().with_resource(_URN, resource)
        self._validators: dict[str, jsonschema.Draft4Validator] = {}

    @classmethod
    def load(cls, path: Path) -> V2Schemas:
        with open(path, encoding="utf-8") as handle:
            return cls(yaml.safe_load(handle))

    def check(self, schema: str, instance: Any) -> None:
        validator = self._validators.get(schema)
        if validator is None:
            ref = {"$ref": f"{_URN}#/components/schemas/{schema}"}
            validator = self._validators[schema] = jsonschema.Draft4Validator(ref, registry=self._registry)
        problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]
        assert not problems, f"{schema} violations:\n" + "\n".join(problems)

    def paths(self) -> list[str]:
        return list(self.document["paths"])
