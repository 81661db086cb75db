"""Generate gateway/openapi.json, the gateway's OpenAPI document, from the specs it implements.

    python scripts/gateway_openapi.py [--specs ../shared/specs] [--check]

The gateway's real routes (FastAPI's generated schema knows only the few FastAPI routes; the proxy routes are
pure ASGI) with their schemas taken from OpenAI's OpenAPI document (../shared/specs/openai/openapi.yaml) and the
Open Inference Protocol's REST document (../shared/specs/open-inference-protocol/open_inference_rest.yaml),
components copied with their $ref closure (V2's prefixed `v2_`). Errors are the gateway's own envelopes: OpenAI's
`ErrorResponse` on /v1 and the other routes, `{"error": string}` on /v2.

Two readings of OpenAI's document, the same as tests/support/openapi.py (where they are explained): `nullable: true`
allows null, and a property that is not required may be null. `--check` fails if the committed file differs from
what the specs give (tests/unit/gateway/test_openapi_document.py runs it).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "gateway" / "openapi.json"
sys.path.insert(0, str(REPO))

from tests.support.openapi import relax  # noqa: E402

JSON = "application/json"
OPENAI_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
V2_ERROR = {"$ref": "#/components/schemas/v2_error_response"}


def _errors(statuses: dict[str, str], schema: dict[str, str]) -> dict[str, Any]:
    return {status: {"description": text, "content": {JSON: {"schema": schema}}} for status, text in statuses.items()}


OPENAI_ERRORS = {
    "400": "Malformed JSON, a wrong type, or a value the worker refused (the message says which).",
    "401": "Missing or invalid API key (when the gateway has keys).",
    "404": "No such model is served here.",
    "408": "The request head or body did not arrive in time.",
    "413": "The body is larger than the gateway's limit.",
    "431": "Too many, or too large, request headers.",
    "502": "The model worker failed or could not be reached.",
    "503": "No ready replica in time, or too many connections; see Retry-After.",
}
V2_ERRORS = {
    "400": "Malformed request: JSON, tensor shapes, datatypes, binary data.",
    "401": "Missing or invalid API key (when the gateway has keys).",
    "404": "No such model (or version) is served here.",
    "405": "Method not allowed on this path.",
    "408": "The request head or body did not arrive in time.",
    "413": "The body is larger than the limit.",
    "415": "Unsupported Content-Encoding.",
    "431": "Too many, or too large, request headers.",
    "502": "The runtime failed or could not be reached.",
    "503": "No ready replica in time, or the model is not ready; see Retry-After.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}}


def _with_retry_after(responses: dict[str, Any]) -> dict[str, Any]:
    if "503" in responses:
        responses["503"]["headers"] = RETRY_AFTER
    return responses


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _closure(components: dict[str, Any], roots: set[str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    todo = sorted(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = components[name]
        todo.extend(sorted(_refs(components[name]) - set(seen)))
    return dict(sorted(seen.items()))


def _prefix_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        out = {k: _prefix_refs(v, prefix) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            out["$ref"] = "#/components/schemas/" + prefix + ref.rsplit("/", 1)[1]
        return out
    if isinstance(node, list):
        return [_prefix_refs(v, prefix) for v in node]
    return node


def _openai_post(spec: dict[str, Any], path: str, streams: bool) -> dict[str, Any]:
    source = spec["paths"][path]["post"]
    ok = copy.deepcopy(source["responses"]["200"])
    content = ok.setdefault("content", {})
    if streams and "text/event-stream" not in content:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    responses = {"200": ok, **_errors(OPENAI_ERRORS, OPENAI_ERROR)}
    return {
        "post": {
            "operationId": source["operationId"],
            "summary": source.get("summary", "").strip(),
            "requestBody": {"required": True, "content": {JSON: {"schema": _gateway_checks(source)}}},
            "responses": _with_retry_after(responses),
        }
    }


def _gateway_checks(source: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's request schema with what the gateway itself checks on top (llmserve/protocol/openai.py): a
    non-empty `model` (OpenAI's schema allows "")."""
    own = {"type": "object", "properties": {"model": {"type": "string", "minLength": 1}}}
    return {"allOf": [source["requestBody"]["content"][JSON]["schema"], own]}


def _get(summary: str, ok: dict[str, Any], errors: dict[str, Any], op_id: str, **extra: Any) -> dict[str, Any]:
    return {"get": {"operationId": op_id, "summary": summary, "responses": {"200": ok, **errors}, **extra}}


def _path_params(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}} for n in names]


def build(specs: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    openai = yaml.load((specs / "openai" / "openapi.yaml").read_text(), Loader=loader)
    oip = yaml.load((specs / "open-inference-protocol" / "open_inference_rest.yaml").read_text(), Loader=loader)

    paths: dict[str, Any] = {
        "/v1/chat/completions": _openai_post(openai, "/chat/completions", streams=True),
        "/v1/completions": _openai_post(openai, "/completions", streams=True),
        "/v1/embeddings": _openai_post(openai, "/embeddings", streams=False),
        "/v1/models": _get(
            "The LLM services served here.",
            openai["paths"]["/models"]["get"]["responses"]["200"],
            _errors({k: OPENAI_ERRORS[k] for k in ("401",)}, OPENAI_ERROR),
            "listModels",
        ),
        "/v1/models/{model}": _get(
            "One LLM service's model card (for a V2 service: KServe V1's {name, ready}).",
            {
                "description": "The model.",
                "content": {
                    JSON: {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/Model"},
                                {"$ref": "#/components/schemas/v1_model_status"},
                            ]
                        }
                    }
                },
            },
            _errors({k: OPENAI_ERRORS[k] for k in ("401", "404")}, OPENAI_ERROR),
            "retrieveModel",
            parameters=_path_params("model"),
        ),
        "/health": _get("The gateway process is up.", {"description": "Up."}, {}, "health"),
        "/ready": _get(
            "Every service with minReplicas > 0 has a ready replica.",
            {"description": "Ready."},
            _errors({"503": "Not every service is ready yet."}, OPENAI_ERROR),
            "ready",
        ),
    }
    v2_ok = {"200": {"description": "OK"}}
    server_metadata = {
        "description": "OK",
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/v2_metadata_server_response"}}},
    }
    v2_errors = _errors(V2_ERRORS, V2_ERROR)
    paths["/v2"] = _get("Server metadata.", server_metadata, {}, "v2ServerMetadata")
    paths["/v2/health/live"] = _get("Server live.", v2_ok["200"], {}, "v2ServerLive")
    paths["/v2/health/ready"] = _get(
        "Server ready.", v2_ok["200"], _with_retry_after(_errors({"503": V2_ERRORS["503"]}, V2_ERROR)), "v2ServerReady"
    )
    model_metadata = {
        "description": "OK",
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/v2_metadata_model_response"}}},
    }
    infer = oip["paths"]["/v2/models/${MODEL_NAME}/versions/${MODEL_VERSION}/infer"]["post"]
    for suffix, params, tag in (
        ("", ("model_name",), ""),
        ("/versions/{model_version}", ("model_name", "model_version"), "Version"),
    ):
        base = "/v2/models/{model_name}" + suffix
        pick = {k: V2_ERRORS[k] for k in ("401", "404", "405", "502", "503")}
        paths[base] = _get(
            "Model metadata.",
            model_metadata,
            _with_retry_after(_errors(pick, V2_ERROR)),
            f"v2ModelMetadata{tag}",
            parameters=_path_params(*params),
        )
        paths[base + "/ready"] = _get(
            "Model ready.",
            v2_ok["200"],
            _with_retry_after(_errors(pick, V2_ERROR)),
            f"v2ModelReady{tag}",
            parameters=_path_params(*params),
        )
        responses = {
            "200": {
                "description": "OK",
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/v2_inference_response"}}},
            },
            **v2_errors,
        }
        paths[base + "/infer"] = {
            "parameters": _path_params(*params),
            "post": {
                "operationId": f"v2ModelInfer{tag}",
                "summary": "Inference (JSON; Triton's binary tensor extension is accepted too).",
                "requestBody": {
                    "required": True,
                    "content": {JSON: _prefix_refs(infer["requestBody"]["content"][JSON], "v2_")},
                },
                "responses": _with_retry_after(responses),
            },
        }

    openai_roots = _refs(paths) - {n for n in _refs(paths) if n.startswith(("v2_", "v1_"))}
    components = {
        name: relax(schema) for name, schema in _closure(openai["components"]["schemas"], openai_roots).items()
    }
    oip_schemas = oip["components"]["schemas"]
    for name, schema in _closure(oip_schemas, set(oip_schemas)).items():
        components["v2_" + name] = _prefix_refs(schema, "v2_")
    components["v2_error_response"] = {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    }
    components["v1_model_status"] = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
        "required": ["name", "ready"],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llmserve gateway",
            "version": "0.1.0",
            "description": "Generated by scripts/gateway_openapi.py from OpenAI's OpenAPI document and the Open "
            "Inference Protocol's REST document; do not edit by hand.",
        },
        "paths": paths,
        "components": {"schemas": dict(sorted(components.items()))},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=Path, default=REPO.parent / "shared" / "specs")
    parser.add_argument("--check", action="store_true", help="fail if gateway/openapi.json is not up to date")
    args = parser.parse_args()
    text = json.dumps(build(args.specs), indent=1, sort_keys=False) + "\n"
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/gateway_openapi.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
