#!/usr/bin/env bash
# Regenerate the Open Inference Protocol gRPC message stubs (see README.md). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=llmserve/protocol/v2_grpc
cp ../shared/specs/open-inference-protocol/open_inference_grpc.proto "$HERE/"
.venv/bin/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. "$HERE/open_inference_grpc.proto"
# protoc's .pyi writes bare `Mapping` in constructor signatures; mypy --strict (disallow-any-generics) rejects that.
sed -i '1i # mypy: disable-error-code="type-arg"' "$HERE/open_inference_grpc_pb2.pyi"
