#!/usr/bin/env bash
# guardq against a real SGLang 0.5.17 on the lent GPU machine; run from the repository root there.
#   bash tests/gpu/device.sh install .whl1|.whl2|.whl3   one carry per call (the machine keeps /tmp while warm)
#   bash tests/gpu/device.sh build                       random-weight LLaVA-1.5-7B-shaped checkpoint in /tmp/ck-7b
#   bash tests/gpu/device.sh build-ov                    random-weight LlavaGuard-v1.2-7B-OV-shaped checkpoint in /tmp/ck-ov
#   bash tests/gpu/device.sh e2e launched|attached [args] tests/gpu/run_e2e.py, results under $OUT
# Prepare the carries here first: bash tests/gpu/sglang_wheels.sh /tmp/sgw && cp -r /tmp/sgw/part1 .whl1 &&
#   cp -r /tmp/sgw/part2 .whl2 && bash tests/gpu/project_wheels.sh .whl3   (all three ignored by git)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvcc_bin=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$nvcc_bin")")}
export PATH="$CUDA_HOME/bin:$(dirname "$(command -v python3)"):$PATH" TVM_FFI_CACHE_DIR=/tmp/tvm-ffi-cache
if [ ! -e "$CUDA_HOME/lib64/libcudart.so" ] && [ ! -e /tmp/cudalib/libcudart.so ]; then
  rt=$(python3 -c "import nvidia, os, glob; print(sorted(f for d in nvidia.__path__ for f in glob.glob(os.path.join(d, '*', 'lib*', 'libcudart.so.1*')))[-1])" 2>/dev/null)
  [ -n "$rt" ] && mkdir -p /tmp/cudalib && ln -sf "$rt" /tmp/cudalib/libcudart.so
fi
[ -e /tmp/cudalib/libcudart.so ] && export LIBRARY_PATH=/tmp/cudalib:${LIBRARY_PATH:-}
case "$1" in
  install)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$2"/*.whl 2>&1 | tail -3
    for deb in "$2"/*.deb; do [ -e "$deb" ] && dpkg -x "$deb" /tmp/redis; done
    python3 -c "import sys; sys.path.insert(0, '/tmp/site'); import importlib
for m in ('sglang', 'celery', 'kombu', 'structlog', 'pydantic_settings', 'boto3'):
    try: print(m, importlib.import_module(m).__version__ if hasattr(importlib.import_module(m), '__version__') else 'ok')
    except Exception as e: print(m, 'missing', type(e).__name__)"
    ls /tmp/redis/usr/bin 2>/dev/null | head -3 ;;
  build)
    t=$(date +%s); [ -f /tmp/ck-7b/llava-rand/config.json ] || python3 tests/gpu/fake_llava_ckpt.py /tmp/ck-7b --size 7b > "$OUT/ckpt7b.json"
    echo "checkpoint in $(( $(date +%s) - t )) s"; du -sh /tmp/ck-7b/* ; nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv ;;
  build-ov)
    t=$(date +%s); [ -f /tmp/ck-ov/ov-rand/config.json ] || python3 tests/gpu/fake_onevision_ckpt.py /tmp/ck-ov --size 7b > "$OUT/ckpt-ov.json"
    echo "checkpoint in $(( $(date +%s) - t )) s"; du -sh /tmp/ck-ov/* ; nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv ;;
  e2e)
    shift; python3 tests/gpu/run_e2e.py "$@" 2>&1 | tee "$OUT/e2e.log" | grep -v "^\[20" | tail -40 ;;
esac
