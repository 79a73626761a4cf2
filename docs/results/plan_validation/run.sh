#!/usr/bin/env bash
# The planner's validation (issue 18): the 3x3 front/back grid x {none, quantize4, prune} x two
# links (20/5 Mbit/s + 20 ms, 200/50 Mbit/s + 5 ms) x edge slowdown 1 and 4, every candidate run on
# dist for 12 timed steps. Run from the repository root on a quiet machine (about 25 minutes on 2
# cores); each setting writes plan.md, plan.json, plan.png, validation.md and validation.json into
# its own folder, and summary.md gathers the four.
set -euo pipefail
out=${OUT:-docs/results/plan_validation}
common=(data=digits model.width=0.25 data.batch_size=32 threads=1 pipeline_backend.chunks=4
        "plan.compressors=[none,quantize4,prune]" plan.validate=27 plan.validate_steps=12
        plan.validate_warmup=2)
for link in "20 5 20" "200 50 5"; do
  read -r up down latency <<<"$link"
  for slowdown in 1 4; do
    python -m edgesplit.plan "${common[@]}" pipeline_backend.link.uplink_mbps="$up" \
      pipeline_backend.link.downlink_mbps="$down" pipeline_backend.link.latency_ms="$latency" \
      plan.edge_slowdown="$slowdown" plan.out_dir="$out/up${up}_down${down}_edge_x${slowdown}"
  done
done
python -m edgesplit.plan.validation_report "$out" | tee "$out/summary.md"
