#!/usr/bin/env bash
# Run ON the lent GPU machine, by the device tool's one call (after benchmarks/gpu_prepare.sh here):
#   run(command="bash benchmarks/gpu_session.sh", carry=[".gpu-carry"], timeout_s=450)
#
# Installs the carried wheels into /tmp/site (the machine's python 3.12 lacks pydantic), records
# the card and the software into $OUT/env.txt, checks that vaelab imports, then runs
# benchmarks/gpu_throughput.py on .gpu-carry/ccp-figures with its default time budget (300 s,
# watchdog at 390 s). Back under $OUT (5 files):
#   session.log   everything printed (the end of it is also the tool's output_tail)
#   env.txt       nvidia-smi, python, torch, CUDA, cuDNN, triton and package versions
#   rows.jsonl    one JSON line per setup, written as each one is measured (survives a kill)
#   table.txt     the benchmark's table, ratios and JSON line
#   result.json   the JSON line alone
# Exit status: the benchmark's (0 done, 3 stopped by its watchdog), 2 when something it needs is
# missing.
#
# Env: OUT (default ./out-gpu, for a check here), PYTHON (default python3), GPU_BENCH_ARGS (more
# arguments, shell-quoted, after the defaults so they win), e.g. to check this script on a CPU:
#   OUT=/tmp/gpu-sim PYTHON=.venv/bin/python \
#   GPU_BENCH_ARGS="--allow-cpu --sizes 16 --batches 16:8 --warmup 1 --steps 2 --workers 0" \
#   bash benchmarks/gpu_session.sh
# or, on the GPU with little time left: GPU_BENCH_ARGS="--budget-s 150 --sizes 640".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out-gpu}
PY=${PYTHON:-python3}
SITE=/tmp/site
mkdir -p "$OUT"
rm -f "$OUT"/{session.log,env.txt,rows.jsonl,table.txt,result.json}

session() {
    echo "== gpu_session: $(date -u +%FT%TZ), $(uname -m), $(nproc) CPUs, OUT=$OUT"
    if [ ! -f .gpu-carry/ccp-figures/metadata.json ]; then
        echo "gpu_session: no .gpu-carry/ccp-figures: run 'bash benchmarks/gpu_prepare.sh' first, and carry .gpu-carry"
        return 2
    fi
    if "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
        echo "== installing $(ls .gpu-carry/whl/*.whl | wc -l) carried wheels into $SITE"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            .gpu-carry/whl/*.whl || { echo "gpu_session: the wheels did not install"; return 2; }
        export PYTHONPATH="$PWD/src:$SITE"
    else
        echo "== $("$PY" -V 2>&1) is not 3.12: the carried wheels are for the GPU machine's python 3.12;" \
             "NOT installing them, this python's own packages are used (a check of this script, not a GPU session)"
        export PYTHONPATH="$PWD/src"
    fi
    {
        echo "== nvidia-smi"
        if command -v nvidia-smi >/dev/null; then
            nvidia-smi 2>&1
            nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit,temperature.gpu,utilization.gpu \
                --format=csv 2>&1
        else
            echo "(no nvidia-smi here)"
        fi
        echo "== python, torch, packages"
        "$PY" - <<'PYEOF'
import os, sys
print("python", sys.version.split()[0], sys.executable, "| PYTHONPATH", os.environ.get("PYTHONPATH"))
import torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(),
      "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs,"
          f" bf16 {torch.cuda.is_bf16_supported()}")
print("tf32: matmul", torch.backends.cuda.matmul.allow_tf32, "| cudnn", torch.backends.cudnn.allow_tf32)
try:
    import triton
    print("triton", triton.__version__)
except Exception as error:  # noqa: BLE001
    print("triton: not importable:", error)
import numpy, PIL, yaml, pydantic, pydantic_core, typing_extensions
for module in (numpy, PIL, yaml, pydantic, pydantic_core):
    print(f"{module.__name__} {getattr(module, '__version__', '?')} from {os.path.dirname(module.__file__)}")
print("typing_extensions from", typing_extensions.__file__)
import vaelab.train.trainer, vaelab.config, vaelab.data.loader  # what the benchmark imports
print("vaelab from", os.path.dirname(vaelab.__file__))
PYEOF
    } 2>&1 | tee "$OUT/env.txt"
    if [ "${PIPESTATUS[0]}" -ne 0 ]; then
        echo "gpu_session: python, torch or vaelab did not import (above); not running the benchmark"
        return 2
    fi
    local extra=()
    eval "extra=(${GPU_BENCH_ARGS:-})"
    echo "== benchmarks/gpu_throughput.py ${extra[*]}"
    export PYTHONUNBUFFERED=1 VAELAB_CACHE_DIR="${VAELAB_CACHE_DIR:-/tmp/vaelab-cache}"
    "$PY" benchmarks/gpu_throughput.py --images .gpu-carry/ccp-figures --rows-out "$OUT/rows.jsonl" "${extra[@]}" \
        | tee "$OUT/table.txt"
    local rc=${PIPESTATUS[0]}
    grep '^{"benchmark": "gpu_throughput"' "$OUT/table.txt" | tail -n 1 >"$OUT/result.json" || true
    [ -s "$OUT/result.json" ] || rm -f "$OUT/result.json"
    echo "== gpu_session: benchmark exit $rc; $(wc -l <"$OUT/rows.jsonl" 2>/dev/null || echo 0) rows in rows.jsonl;" \
         "result.json $([ -f "$OUT/result.json" ] && echo written || echo MISSING); $(date -u +%FT%TZ)"
    return "$rc"
}

session 2>&1 | tee "$OUT/session.log"
exit "${PIPESTATUS[0]}"
