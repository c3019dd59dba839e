#!/usr/bin/env bash
# Reproduce the PEMN paper's ConvMixer-256/8 CIFAR-10 experiments with one command (on a GPU):
#
#   scripts/reproduce_paper.sh                     # everything below, then the report
#   DRY_RUN=1 scripts/reproduce_paper.sh           # print the plan and the expected GPU-hours, train nothing
#
# One `pemn sweep` (17 runs, the official recipe: `--recipe convmixer` = AdamW lr 0.05, wd 0.005, batch 512,
# 100 epochs, the paper's lr schedule, flip + torchvision's RandAugment(2, 12) per image + ColorJitter 0.2 +
# RandomErasing 0.2; mixed precision on CUDA), keep 0.5 (the official default):
#   * the representational-capacity figure: Dense, Mask, One-layer, MP, RP 1e-1 ... 1e-5;
#   * the compression comparison: Random and Minimum (magnitude) pruning at 90 / 92 / 94 / 96 % beside
#     RP 1e-1 / 1e-2 / 1e-3 and Dense.
# Then scripts/paper_report.py writes OUT/paper_table.md (every setting beside the paper's number) and
# OUT/paper_figure.png (both figures with the paper's points overlaid); `pemn sweep` itself writes OUT/sweep.csv
# and OUT/sweep.png. Re-running the same command continues: finished runs are skipped, an interrupted run
# resumes from its checkpoint.
#
# Expected cost (an estimate, not a measurement): a ConvMixer-256/8 training step costs ~0.9 GFLOP per 32x32
# image (0.30 GFLOP forward: 16x16 positions x (8 x (256^2 + 25 x 256) + 12 x 256) MACs, x3 for the backward),
# so a 100-epoch run is ~4.5 PFLOP plus ~0.3 for the test passes, and the 17 runs ~80 PFLOP. At the 5-10 TFLOP/s
# such a small, memory-bound network (depthwise convs, BatchNorm, GELU) sustains with AMP on an A100/H100-class
# GPU, that is about 2.5-5 GPU-hours (8-17 minutes a run). The report prints the measured total from the
# runs' own timings.
#
# Settings (environment variables): OUT (default runs/paper-convmixer-256-8), DATA_DIR (data; CIFAR-10 is
# downloaded there with its checksum if missing), DEVICE (cuda), EPOCHS (100), MODEL (convmixer-256-8),
# DATASET (cifar10), EXTRA (more `--set KEY=VALUE` pairs, e.g. "train_subset=512 batch_size=64" for a toy run),
# PYTHON (python).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
OUT="${OUT:-runs/paper-convmixer-256-8}"
DATA_DIR="${DATA_DIR:-data}"
DEVICE="${DEVICE:-cuda}"
EPOCHS="${EPOCHS:-100}"
MODEL="${MODEL:-convmixer-256-8}"
DATASET="${DATASET:-cifar10}"
EXTRA="${EXTRA:-}"
case "$DEVICE" in
  cuda*) AMP=true ;;   # the official code trains with autocast + GradScaler
  *) AMP=false ;;      # mixed precision is CUDA-only
esac

# shellcheck disable=SC2206  # EXTRA is a list of KEY=VALUE words
SETTINGS=(data_dir="$DATA_DIR" download=true device="$DEVICE" amp="$AMP" progress=false $EXTRA)
CMD=("$PYTHON" -m pemn sweep --model "$MODEL" --dataset "$DATASET" --recipe convmixer --epochs "$EPOCHS"
     --strategies mask one_layer mp rp --ratios 1e-1 1e-2 1e-3 1e-4 1e-5 --keeps 0.5 --dense
     --prune random magnitude --compressions 0.9 0.92 0.94 0.96
     --set "${SETTINGS[@]}" --out "$OUT")

echo "reproduce_paper: 17 runs of $MODEL on $DATASET, $EPOCHS epochs each, device $DEVICE (AMP $AMP), into $OUT"
echo "reproduce_paper: expected about 2.5-5 GPU-hours on one A100/H100-class GPU at 100 epochs (an estimate)"
echo "reproduce_paper: ${CMD[*]}"
if [[ -n "${DRY_RUN:-}" ]]; then
  exit 0
fi
"${CMD[@]}"
"$PYTHON" "$HERE/paper_report.py" "$OUT"
