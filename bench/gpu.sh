#!/usr/bin/env bash
# Every benchmark on one CUDA device in one call of under 8 minutes (the lent GPU machine).
#   bash bench/gpu.sh [OUTDIR] [STEP ...]      default OUTDIR bench-out, default steps: $DEFAULT
# Each step writes its table to OUTDIR/<step>.md (stderr in <step>.err), runs under its own `timeout`
# and can be run alone by name; a step whose time limit would take the call past BUDGET_S (default
# 470 s) is skipped, saying so. Warm-up steps (torch.compile, cuDNN autotuning) are never timed: the
# benchmarks' --warmup. The epoch step's generated CIFAR-10-format data is written once per call
# (OUTDIR/cifar) and reused by every step that reads it. No network there: hydra-core, omegaconf,
# antlr4, torchgpipe and the launcher plugins travel as wheels in .whl/ (see docs/benchmarks.md).
# dist on one GPU: the edge on the CPU over gloo and the cloud stage on the GPU (two NCCL ranks
# cannot share one GPU); the *_gpu_edge steps put dist's edge on the GPU too.
# DEVICE=cpu bash bench/gpu.sh OUTDIR checks the script without a GPU: every step at a tiny size.
set -uo pipefail
cd "$(dirname "$0")/.."
DEFAULT="codecs backends backends_bf16 gpipe_never quantize codec_share epoch sweep"
ALL="$DEFAULT backends_cl prune epoch_loader none_gpu_edge prune_gpu_edge quantize_gpu_edge"
out=${1:-${OUT:-bench-out}}
shift || true
steps=${*:-$DEFAULT}
budget=${BUDGET_S:-470}
mkdir -p "$out"
start=$SECONDS
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
# precision and channels_last come with issue 10 item 1: their steps are skipped where the config lacks them
if python3 -c "from edgesplit.config import compose_config; compose_config(['precision=bf16', 'channels_last=true'])" \
    2>/dev/null; then precision=1; else precision=0; fi
run() {  # run NAME SECONDS ARGS...: one benchmark, its table in $out/NAME.md, never more than SECONDS
  local name=$1 limit=$(($2 * scale)); shift 2
  local used=$((SECONDS - start))
  echo "== $name (limit ${limit} s; ${used} s used of ${budget})"
  if [ $((used + limit)) -gt "$budget" ]; then
    echo "skipped: its ${limit} s would pass the budget (run it alone: bash bench/gpu.sh OUTDIR $name)"
    return
  fi
  timeout "$limit" python3 -m edgesplit.bench "$@" > "$out/$name.md" 2> "$out/$name.err"
  echo "exit $? after $((SECONDS - start - used)) s"; cat "$out/$name.md"; tail -3 "$out/$name.err"
}
needs_precision() {
  [ "$precision" = 1 ] && return 0
  echo "== $1: skipped, the config has no precision/channels_last (issue 10 item 1) yet"; return 1
}
device=${DEVICE:-cuda}
resident=cuda
scale=1
common=(--device "$device" --width 1.0 --batch 1024 --chunks 4 --warmup 2 --steps 6)
small=()  # the epoch, sweep and codecs steps' sizes: the real ones on a GPU
codec_repeats=20
if [ "$device" = cpu ]; then
  common=(--device cpu --width 0.125 --batch 64 --chunks 2 --warmup 1 --steps 2)
  small=(--images 2048 --test-images 512 --width 0.125 --batch 128 --chunks 2 --warmup 1)
  codec_repeats=2
  resident=cpu_resident  # the resident code path, on the host
  scale=3 budget=$((budget * 3))  # a CPU of a few cores is slow even at these sizes
fi
bf16=(--override precision=bf16 --override channels_last=true)
for step in $steps; do
  case $step in
    codecs) run codecs 35 codecs --device "$device" --repeats "$codec_repeats" ;;
    # the issue's table: plain PyTorch and every backend, fp32, no compression
    backends) run backends 80 backends "${common[@]}" --compressor none --backends plain,naive,gpipe,dist ;;
    backends_cl) needs_precision "$step" && run "$step" 50 backends "${common[@]}" --compressor none \
                   --backends plain,naive,gpipe --override channels_last=true ;;
    backends_bf16) needs_precision "$step" && run "$step" 55 backends "${common[@]}" --compressor none \
                     --backends plain,naive,gpipe "${bf16[@]}" ;;
    # gpipe without checkpointing beside naive (which has no recomputation to turn off), bf16 + CL
    # where the config has them
    gpipe_never) if [ "$precision" = 1 ]; then p=("${bf16[@]}"); else p=(); fi
                 run "$step" 45 backends "${common[@]}" --compressor none --backends plain,naive,gpipe \
                   --override pipeline_backend.checkpoint=never ${p[@]+"${p[@]}"} ;;
    # the codecs' share of a bf16 + channels_last step: each backend again with compressor none
    codec_share) needs_precision "$step" && run "$step" 70 backends "${common[@]}" --compressor quantize \
                   --backends naive,gpipe --codec-share "${bf16[@]}" ;;
    quantize|prune) run "$step" 60 backends "${common[@]}" --compressor "$step" --backends plain,gpipe,dist ;;
    *_gpu_edge) run "backends_$step" 70 backends "${common[@]}" --compressor "${step%_gpu_edge}" \
                  --backends gpipe,dist --dist-edge "$device" ;;
    # s/epoch of each study's settings on 50,000 generated images, data loading included; 16 of the
    # 48 steps and 4 of the 10 evaluation batches timed, projected to the epoch and to the studies
    # data.device=cuda: the set resident on the GPU (epoch_loader: torchvision's CPU loader)
    epoch|epoch_loader) if [ "$step" = epoch ] && [ -n "$resident" ]; then r=(--override "data.device=$resident")
                        else r=(); fi
           run "$step" 90 epoch --device "$device" --data-root "$out/cifar" --steps 16 --eval-batches 4 \
             ${small[@]+"${small[@]}"} ${r[@]+"${r[@]}"} ;;
    # the 3x3 smoke grid (digits, 2 epochs) serially, then as 3 parallel joblib jobs on the one GPU
    sweep) if [ "$device" = cpu ]; then g=(--grid 1,2x1 --train-size 256 --epochs 1 --n-jobs 2)
           else g=(--grid 1,2,3x1,2,3 --n-jobs 3 --epochs 2); fi
           run sweep 100 sweep "${g[@]}" ;;
    *) echo "unknown step $step; steps: $ALL" >&2 ;;
  esac
done
echo "total $((SECONDS - start)) s"
