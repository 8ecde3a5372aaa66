#!/usr/bin/env bash
# Reproduce the bit-reduction study of Lee et al. 2024 ("To FP8 and Back Again") at CPU scale:
#   1. precisionlab sweep sweep=paper   E8M7, E8M6, E8M5, E8M4, E8M3 (mantissa masking, round toward
#                                       zero) and E7M7 (exponent clipped), and the bracket beyond them
#                                       (E8M2, E8M1, E8M0; E6M7, E5M7, E4M7) x 3 LRs x 3 seeds = 108 runs,
#                                       logit sharpness every 10 steps
#   2. precisionlab sharpness           the paper's last-token-logit sharpness on every checkpoint
#   3. precisionlab report              tables, plots, report.html in reports/paper/
# About 40 minutes on 2 cores (108 runs, each to its last step; see docs/reproducing.md). Every step resumes: rerun after a crash or Ctrl-C and it
# finishes what is missing. Extra arguments go to the sweep, e.g. for the paper's scale on GPUs:
#   scripts/reproduce_paper.sh model=gpt2_124m data=tokens data.path=DIR train.seq_len=1024 \
#     train.batch_size=32 train.steps=5000 optim.warmup_steps=500 train.checkpoint_every=500 \
#     optim.lr=3e-4,6e-4,1.2e-3,2.4e-3 hydra/launcher=slurm
# (name that one apart: NAME=paper-gpu scripts/reproduce_paper.sh ...)
# Environment: NAME (the sweep's name, default paper), JOBS (runs at once on this machine,
# default 2; ignored with another launcher), STORE (results store, default
# results/precisionlab.db), OUT (report folder, default reports/NAME).
set -euo pipefail
NAME="${NAME:-paper}"
JOBS="${JOBS:-2}"
STORE="${STORE:-results/precisionlab.db}"
OUT="${OUT:-reports/$NAME}"
launcher=(--jobs "$JOBS")
for arg in "$@"; do
    [[ "$arg" == hydra/launcher=* ]] && launcher=()
done
precisionlab sweep sweep=paper sweep.name="$NAME" store.path="$STORE" "${launcher[@]}" "$@"
precisionlab sharpness --sweep "$NAME" --metric logit --store "$STORE"
precisionlab report --sweep "$NAME" --store "$STORE" --out "$OUT"
