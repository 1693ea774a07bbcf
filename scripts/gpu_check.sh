#!/usr/bin/env bash
# GPU check: one table for DeiT-S DINO at batch 128, bf16, on one GPU (under 10 minutes):
#   the dense step time; SimPrune 0.8 and EViT 0.8 step times as ratios to it next to their FLOPs
#   ratios and peak-memory ratios (simprune bench cost); the loader's images/s against the step's
#   (simprune bench data, on ImageNet-like JPEGs made by scripts/make_fake_imagenet.py unless --data).
#
# Usage (from the repository root):
#   scripts/gpu_check.sh                      # on a CUDA GPU; refuses in one line without one
#   scripts/gpu_check.sh --data /data/imagenet --workers 10
#   scripts/gpu_check.sh --device cpu --tiny  # the CPU smoke test of this script (a tiny ViT, seconds)
# Options: --device cuda|cpu (default cuda), --tiny, --data DIR, --workers N (loader processes,
#   default: the recipe's), --out DIR (default a new /tmp/gpu_check.* folder; results stay there).
set -euo pipefail

DEVICE=cuda
TINY=0
DATA=""
WORKERS=""
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --data) DATA="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "gpu_check: unknown option $1; valid: --device cuda|cpu, --tiny, --data DIR, --workers N, --out DIR" >&2
       exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check: --device $DEVICE; valid: cuda, cpu" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: --device cuda, but torch sees no CUDA GPU on this machine; run it on a GPU machine, or pass --device cpu --tiny for the CPU smoke test" >&2
  exit 2
fi
OUT="${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$OUT"
RECIPE=configs/imagenet_dino_deit_small_dense.toml

if [ "$TINY" = 1 ]; then
  SETS=(--set model=vit_nano_patch4_32 --set global_size=32 --set local_size=16 --set local_views=2
        --set out_dim=64 --set head_hidden=64 --set bottleneck=16)
  COST=(--batch-size 8 --precision bf16 --repeats 2 --warmup 1)
  DATA_ARGS=(--batch-size 8 --batches 2 --repeats 1 --warmup 1 --step-batch-size 8 --num-workers 1)
  FAKE=(--classes 2 --train 16 --val 2 --size 64 48)
else
  SETS=()
  COST=(--batch-size 128 --precision bf16 --repeats 10 --warmup 3)
  DATA_ARGS=(--batch-size 128 --precision bf16 --repeats 5 --warmup 2)
  FAKE=(--classes 4 --train 64 --val 4)
fi
[ -n "$WORKERS" ] && DATA_ARGS+=(--num-workers "$WORKERS")

echo "gpu_check: results in $OUT" >&2
"$PY" -m simprune.cli bench cost --config "$RECIPE" "${SETS[@]}" "${COST[@]}" --methods simprune evit \
  --keep-rates 0.8 --device "$DEVICE" --json --no-plot --out "$OUT/cost" > "$OUT/cost.json"
if [ -z "$DATA" ]; then
  DATA="$OUT/fake_imagenet"
  "$PY" scripts/make_fake_imagenet.py --out "$DATA" "${FAKE[@]}" >&2
fi
SIMPRUNE_CACHE="$OUT/cache" "$PY" -m simprune.cli bench data --config "$RECIPE" --data "$DATA" \
  "${SETS[@]}" "${DATA_ARGS[@]}" --device "$DEVICE" --json > "$OUT/data.json"

"$PY" - "$OUT/cost.json" "$OUT/data.json" <<'EOF'
import json
import sys

cost = json.load(open(sys.argv[1]))
data = json.load(open(sys.argv[2]))
rows = cost["rows"]
dense = rows[0]
mem = "peak CUDA memory" if cost["memory_metric"] == "cuda_peak" else "saved activations (no CUDA)"
print(f"GPU check: DINO {cost['model']}, batch {cost['batch_size']}, {cost['precision']}, "
      f"{cost['device']}; reduce at {tuple(cost['reduce_at'])}")
print(f"{'':<16}{'step time':>12}{'FLOPs':>8}{'memory':>9}")
print(f"{'dense':<16}{dense['median_step_s']:>10.3f} s{1.0:>8.3f}{1.0:>9.3f}")
for r in rows[1:]:
    label = f"{r['method']} {r['keep_rate']:g}"
    print(f"{label:<16}{r['time_ratio']:>10.3f} x{r['flops_ratio']:>8.3f}{r['memory_ratio']:>9.3f}")
print(f"ratios to dense; memory = {mem}")
step = data["step_images_per_s"]
print(f"loader: {data['loader_images_per_s']:.0f} images/s with {data['num_workers']} worker(s) vs the "
      f"dense step's {step:.0f} images/s (batch {data['step_batch_size']}): "
      f"{data['loader_images_per_s'] / step:.2f}x; decode + crop {data['decode_cpu_ms_per_image']:.1f} ms "
      f"CPU per image -> {data['cores_per_gpu']:.1f} cores per GPU ({data['gpu_step_source']})")
EOF
