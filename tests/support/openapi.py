"""Validate JSON against component schemas of OpenAI's OpenAPI document (../shared/specs/openai/openapi.yaml).

Two readings of the document are applied, both stated here:
- `nullable: true` (OpenAPI 3.0 style, used throughout the 3.1 file) allows null;
- a property that is not `required` may be null: vLLM writes null for unset optional fields
  (`"logprobs": null`, `"prompt_tokens_details": null`), and OpenAI's SDKs treat null and absent alike.
Everything else (required fields, types, enums, shapes) is checked as written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_URN = "urn:openai-openapi"


def relax(node: Any) -> Any:
    if isinstance(node, list):
        return [relax(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: relax(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        node = {"anyOf": [node, {"type": "null"}]}
        return node
    properties = node.get("properties")
    if isinstance(properties, dict):
        required = set(node.get("required", []))
        node["properties"] = {
            name: schema if name in required else {"anyOf": [schema, {"type": "null"}]}
            for name, schema in properties.items()
        }
    return node


class OpenAISchemas:
    def __init__(self, document: dict[str, Any]) -> None:
        resource = Resource.from_contents(relax(document), default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_URN, resource)
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}

    @classmethod
    def load(cls, path: Path) -> OpenAISchemas:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with open(path, encoding="utf-8") as handle:
            return cls(yaml.load(handle, Loader=loader))

    def errors(self, schema: str, instance: Any) -> list[str]:
        validator = self._validators.get(schema)
        if validator is None:
            ref = {"$ref": f"{_URN}#/components/schemas/{schema}"}
            validator = self._validators[schema] = jsonschema.Draft202012Validator(ref, registry=self._registry)
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]

    def check(self, schema: str, instance: Any) -> None:
        problems = self.errors(schema, instance)
        assert not problems, f"{schema} violations:\n" + "\n".join(problems)
