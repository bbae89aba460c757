#!/usr/bin/env bash
# The prepared GPU check: on a GPU machine with PyTorch, Triton and nvcc but no TVM and no network
# (the device tool's H200), install the kit's TVM runtime, then run the gpu test tier and the GPU
# benchmark against the kit's prebuilt artifacts (benchmarks/gpu_kit.py). Results go to $OUT.
#
#   python benchmarks/gpu_kit.py build --part core -o .gpukit/core         # here first
#   bash benchmarks/gpu_device_run.sh .gpukit/core [BENCH_DEADLINE_S]      # there
set -uo pipefail
KIT=$(realpath "${1:?usage: gpu_device_run.sh KIT_DIR [BENCH_DEADLINE_S]}")
DEADLINE=${2:-300}
OUT=${OUT:-$PWD/gpu_run}
mkdir -p "$OUT"
SITE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --find-links "$KIT/runtime/wheels" --target "$SITE" \
  apache-tvm-ffi || exit 1
tar -xJf "$KIT/runtime/tvm_runtime.tar.xz" -C "$SITE" || exit 1
# The rooms are subpackages of sepconv (pyproject's package-dir); mirror that without installing.
mkdir "$SITE/sepconv" && cp -r sepconv/. "$SITE/sepconv/"
for room in models compiler schedules targets tune_logs; do ln -s "$PWD/$room" "$SITE/sepconv/$room"; done
export PYTHONPATH="$SITE:$PWD" TVM_USE_RUNTIME_LIB=1 SEPCONV_GPU_KIT="$KIT" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import sys, torch, triton, numpy; print(sys.version.split()[0], torch.__version__, triton.__version__, numpy.__version__)"
  python3 -c "import tvm, sepconv.compiler.runtime as r; e = r._load_cuda_runtime(); d = tvm.cuda(0); print('tvm', tvm.__version__, 'runtime only:', tvm.base._RUNTIME_ONLY, 'cuda runtime:', e or 'loaded', 'gpu:', d.exist and d.compute_version)"
} 2>&1 | tee "$OUT/env.txt"
python3 -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider --junitxml "$OUT/gpu_tier.xml" 2>&1 | tee "$OUT/gpu_tier.log"
python3 benchmarks/gpu_layers.py --kit "$KIT" --deadline-s "$DEADLINE" --out "$OUT/gpu_layers.json" 2>&1 | tee "$OUT/gpu_layers.log"
