#!/usr/bin/env bash
# Reproduce the published small-scale effects at CPU scale, each a sweep preset of its own:
#   1. sweep=wortsman_qk      QK-LayerNorm vs none, LR 1e-2, 1e-1, 1 x 3 seeds     (18 fp32 runs)
#   2. sweep=fp4_signs        bf16, E2M1 unscaled, MXFP4 / MXFP4+SR, NVFP4 / NVFP4 without SR
#                             at LR 3e-3 x 3 seeds                                 (18 runs)
#   3. sweep=wortsman_zloss   z-loss vs none without weight decay, LR 1 x 4 seeds  (8 fp32 runs)
#   4. sweep=master_weights    the master-weights study (18 runs; nothing to do where the store has it)
#   5. precisionlab report for each, and scripts/paper_tables.py's effects table (block
#      `effects` of docs/reproducing.md) from the store.
# Measured 2026-12-07 on 2 cores shared with other sweeps (load 6-9): the three presets' 44 runs took
# 96 minutes of run time summed (wortsman_qk 31, fp4_signs 52, wortsman_zloss 13), 35 minutes of
# wall time run as four single-threaded sweeps at once; an fp32 run of the tiny model alone on a
# core takes 15-30 s, so expect well under an hour on an idle 2-core machine with JOBS=1. Every
# step resumes: rerun after a crash or Ctrl-C and it finishes what is missing.
# Environment: JOBS (runs at once, default 1), STORE (results store, default results/precisionlab.db),
# OUT (report folders' parent, default reports).
set -euo pipefail
JOBS="${JOBS:-1}"
STORE="${STORE:-results/precisionlab.db}"
OUT="${OUT:-reports}"
for study in wortsman_qk fp4_signs wortsman_zloss master_weights; do
    precisionlab sweep sweep="$study" store.path="$STORE" --jobs "$JOBS" train.threads=1 "$@"
    precisionlab report --sweep "$study" --store "$STORE" --out "$OUT/$study"
done
python scripts/paper_tables.py --store "$STORE"
