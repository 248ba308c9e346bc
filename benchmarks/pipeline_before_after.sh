#!/bin/bash
# The input pipeline before (a checkout of commit 5ea551b) and after this
# branch, interleaved: 3 rounds of {224 px, 32 px} x {1, 2 cores} x {before,
# after "tf_fast", after "pillow_exact"}, and of the 192-px aircraft config
# (resize only, no crop: before, after), each a fresh process under taskset.
#   [SIZES="224 32 192"] benchmarks/pipeline_before_after.sh BEFORE_REPO AFTER_REPO PYTHON FOOD_DIR CIFAR_DIR OUT
set -u
BEFORE=$1 AFTER=$2 PY=$3 FOOD=$4 CIFAR=$5 OUT=$6
mkdir -p "$OUT"
run() {  # name repo cores args...
  local name=$1 repo=$2 cores=$3; shift 3
  echo "$(date +%T) $name cores=$cores load: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/load.txt"
  (cd "$repo" && PYTHONPATH="$repo" taskset -c "$cores" "$PY" -m jaxattn.bench \
      --mode=pipeline "$@" --json="$OUT/$name.json" > /dev/null 2>&1) \
      || echo "FAILED $name" >> "$OUT/load.txt"
}
P224=(--config=configs/food101_hybrid.py --config.dataset=folder:$FOOD --steps=15 --warmup=3)
P32=(--config=configs/cifar10_convvit.py --config.dataset=folder:$CIFAR --steps=40 --warmup=3)
# Seed 001's FGVC-Aircraft recipe: decode, resize to 192 (no crop), batch 128.
P192=(--config=configs/aircraft_slresnet50.py:data=$FOOD --steps=15 --warmup=3)
SIZES=${SIZES:-224 32 192}
for round in 1 2 3; do
  for cores in 0 0,1; do
    c=${cores/,/}
    for size in $SIZES; do
      case $size in
        224)
          run "224_before_c${c}_r$round" "$BEFORE" "$cores" "${P224[@]}"
          run "224_tf_fast_c${c}_r$round" "$AFTER" "$cores" "${P224[@]}"
          run "224_pillow_exact_c${c}_r$round" "$AFTER" "$cores" "${P224[@]}" --config.augment.crop_impl=pillow_exact ;;
        32)
          run "32_before_c${c}_r$round" "$BEFORE" "$cores" "${P32[@]}"
          run "32_tf_fast_c${c}_r$round" "$AFTER" "$cores" "${P32[@]}" --config.augment.crop_impl=tf_fast
          run "32_pillow_exact_c${c}_r$round" "$AFTER" "$cores" "${P32[@]}" ;;
        192)
          run "192_before_c${c}_r$round" "$BEFORE" "$cores" "${P192[@]}"
          run "192_resize_c${c}_r$round" "$AFTER" "$cores" "${P192[@]}" ;;
      esac
    done
  done
done
