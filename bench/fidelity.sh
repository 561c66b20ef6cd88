#!/usr/bin/env bash
# Export every supported (target, recipe) for both seeds from non-trivial seeded checkpoints and
# audit them all against the fp32 PyTorch checkpoint on real ImageNet photos. Calibration images
# come from the same folder and are excluded from scoring by the audit (manifests list them).
#   bash bench/fidelity.sh [DATA] [OUT]      (defaults: ../shared/imagenet-sample/val, runs/fidelity)
set -euo pipefail
DATA=${1:-../shared/imagenet-sample/val}
OUT=${2:-runs/fidelity}
RECIPES=${RECIPES:-"executorch:fp32 executorch:w8a8 executorch:w4a8 tflite:fp32 tflite:w8a8 tflite:w4a8 tflite:w8a16 coreml:fp32 coreml:fp16"}
mkdir -p "$OUT"
for seed in convnext-tiny-224 convnextv2-tiny-1k-224; do
  ckpt="$OUT/ckpt/$seed"
  [ -d "$ckpt" ] || python bench/make_checkpoint.py "$seed" --out "$ckpt"
  artifacts=()
  for pair in $RECIPES; do
    target=${pair%%:*}; recipe=${pair#*:}
    start=$(date +%s)
    artifact=$(edge-convnext export "$ckpt" --target "$target" --recipe "$recipe" \
      --calib "$DATA" --calib-size 32 --no-progress -o "$OUT/artifacts" 2>>"$OUT/export.log" | tail -1)
    echo "$seed $target $recipe export_s=$(( $(date +%s) - start )) $artifact" | tee -a "$OUT/exports.txt"
    artifacts+=("$artifact")
  done
  edge-convnext audit "$ckpt" "${artifacts[@]}" --data "$DATA" --threads 2 --no-progress \
    --out "$OUT/audit-$seed"
done
