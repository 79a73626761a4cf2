#!/usr/bin/env bash
# experiment=privacy (issue 20): five codecs x {no defense, NoPeek 0.1, gradient noise 0.5} x seeds
# 0, 1, 2 on digits (45 jobs, the preset's sizes: 3 epochs, 60 decoder steps; about an hour on 2
# shared CPU cores), then the report: report.md (the privacy table among the others) and privacy.png.
# Run from the repository root; SWEEP defaults to a scratch dir outside the repository.
set -euo pipefail
sweep=${SWEEP:-/tmp/edgesplit_privacy}
out=${OUT:-docs/results/privacy}
python train.py -m experiment=privacy hydra.sweep.dir="$sweep"
python -m edgesplit.report "$sweep" > /dev/null
cp "$sweep/report.md" "$out/report.md"
cp "$sweep/privacy.png" "$out/privacy.png"
