#!/usr/bin/env bash
# experiment=clients (docs/clients.md): 1, 4, 8 clients x sequential, sflv1, sflv2 x IID and
# Dirichlet(0.3) labels on digits, seed 0, one process (naive). About 60 minutes on 2 CPU cores.
set -euo pipefail
out=${OUT:-runs/clients_digits}
python train.py -m experiment=clients hydra.sweep.dir="$out"
python -m edgesplit.report "$out"
