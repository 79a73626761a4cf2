#!/usr/bin/env bash
# The backends and codecs benchmarks on one CUDA device, in under 8 minutes. On the lent GPU machine
# (no network: hydra-core, omegaconf, antlr4 and torchgpipe travel as wheels in .whl/, see
# docs/benchmarks.md):   bash bench/gpu.sh [OUTDIR] [STEP ...]   (default: every step)
# dist on one GPU: by default the edge on the CPU over gloo and the cloud stage on the GPU (two
# NCCL ranks cannot share one GPU, and a CPU edge is the realistic set-up); the *_gpu_edge steps
# put dist's edge on the GPU too, to compare it with gpipe on the same device.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench-out}}
shift || true
steps=${*:-"codecs none prune quantize none_gpu_edge prune_gpu_edge quantize_gpu_edge"}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run() {  # run NAME SECONDS ARGS...: one benchmark, its table in $out/NAME.md, never more than SECONDS
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" python3 -m edgesplit.bench "$@" > "$out/$name.md" 2> "$out/$name.err"
  echo "exit $?"; cat "$out/$name.md"; tail -3 "$out/$name.err"
}
common=(--device cuda --width 1.0 --batch 1024 --chunks 4 --warmup 2 --steps 6)
for step in $steps; do
  case $step in
    codecs) run codecs 60 codecs --device cuda --repeats 20 ;;
    none|prune|quantize) run "backends_$step" 100 backends "${common[@]}" --compressor "$step" ;;
    *_gpu_edge) run "backends_$step" 70 backends "${common[@]}" --compressor "${step%_gpu_edge}" \
                  --backends gpipe,dist --dist-edge cuda ;;
    *) echo "unknown step $step" >&2 ;;
  esac
done
