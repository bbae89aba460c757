#!/usr/bin/env bash
# The environment of the external-zoo test tier (-m ext): a virtualenv with the CUDA build of
# torch 2.14.1, torchvision 0.29.1 and timm (which import there; with the CPU torch 2.13.0 that
# sepconv's own set-up installs, torchvision's wheels fail to load: they link libtorch_cuda.so),
# and sepconv from this checkout, installed --no-deps so it keeps that torch, plus its other
# dependencies. The CUDA build runs without a GPU. About 6.6 GB, 3–4 minutes from the registries.
#
#   tests/ext/setup_env.sh [VENV]          # default VENV: $SEPCONV_EXT_VENV or ~/.cache/sepconv/ext-venv
#   VENV/bin/pytest -m ext tests/ext       # then run the tier with that environment's pytest
#
# Needs network access to the package registries (nothing at test time).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-${SEPCONV_EXT_VENV:-$HOME/.cache/sepconv/ext-venv}}"
PYTHON="${PYTHON:-python3}"

TORCH=(torch==2.14.1 torchvision==0.29.1 timm)
# sepconv's own dependencies as pyproject.toml declares them (read from it, so they cannot drift),
# except torch, kept as above; plus what the tier's tests run with.
mapfile -t DEPS < <("$PYTHON" -c '
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if re.split(r"[<>=!~ \[]", d, maxsplit=1)[0] != "torch"))
' "$ROOT/pyproject.toml")
DEPS+=("pytest>=8" "pytest-timeout>=2.3" "onnx>=1.16" "onnxruntime>=1.18" "onnxscript>=0.1")

start=$(date +%s)
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip >/dev/null
"$VENV/bin/pip" install "${TORCH[@]}"
"$VENV/bin/pip" install "${DEPS[@]}"
"$VENV/bin/pip" install --no-deps -e "$ROOT"
"$VENV/bin/python" - <<'EOF'
import torch, torchvision, timm, sepconv  # noqa: E401
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}")
EOF
echo "ready in $(( $(date +%s) - start ))s: $VENV/bin/pytest -m ext $ROOT/tests/ext"
