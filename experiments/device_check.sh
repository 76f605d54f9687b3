#!/usr/bin/env bash
# The prepared device check: one command on a lent GPU machine (no package registry there), ~9 minutes.
#
#   make device-wheels                    # here, once: the wheels the GPU machine lacks -> experiments/wheels/
#   bash experiments/device_check.sh      # there, from the repository root (carry experiments/wheels)
#
# 1. prints the GPU and the jax it has, and installs what is missing (grain, ml_collections, tensorboardX)
#    from experiments/wheels/ without any index;
# 2. runs experiments/benchmark.py on synthetic images, each appending a section to
#    $OUT_DIR/device_check.md: step time, images/s, MFU against the chip's dense bf16 peak
#    (CHIP_PEAK_TFLOPS in benchmark.py), compile time, the compiled step's memory and the device's peak:
#      a. ViT-H/14 bf16 (configs/vit_h14.py) unrolled (model.scan_layers=False, model.remat=none) with
#         model.attention=xla at the largest per-device batch of $FIT that the compiler says fits;
#      b. the same batch with the default model.scan_layers=True, model.remat=dots (the layer scan: ~1
#         minute's compile on TPU instead of ~15, the same memory as (a) there; chosen on the TPU compiler's
#         figures and an XLA:CPU step time: its step time against (a) on an accelerator confirms or reverses it);
#      c. the same batch with model.attention=cudnn (cuDNN's fused attention);
#      d. ViT-B/16 bf16 (predictor depth 6, the paper's) with the first step's loss in bf16 and in fp32.
# SMOKE=1 shrinks every model to seconds: tests/test_device_check.py runs the script that way on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-experiments/wheels}
OUT_DIR=${OUT_DIR:-experiments/results}
REQUIRED=${REQUIRED:-"grain ml_collections tensorboardX"}
FIT=${FIT:-256,128}           # ViT-H/14 per-device batches, largest first (the release ran 128 per A100)
STEPS=${STEPS:-10}
OUT="$OUT_DIR/device_check.md"
mkdir -p "$OUT_DIR"
start=$(date +%s)

echo "== device"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  echo "no nvidia-smi on this machine"
fi

missing=$("$PYTHON" - "$REQUIRED" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1].split() if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "error: $missing not installed and no wheels in $WHEELS: run 'make device-wheels' on a machine with" \
         "a package index and carry $WHEELS with the working tree." >&2
    exit 2
  fi
  echo "== installing from $WHEELS: $missing"
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" $missing
fi
"$PYTHON" -c "import jax, flax; print(f'jax {jax.__version__}, flax {flax.__version__}:', jax.devices())"

# Synthetic data (no dataset on the machine); fewer pipeline workers than the ImageNet configs' 8.
COMMON=(--config.data.source=synthetic --config.data.num_workers=2 --steps="$STEPS" --warmup=2
        --pipeline_batches=5 --chip_peak --out="$OUT")
VITB=(--config.model.name=vit_base --config.model.patch_size=16 --config.model.predictor_depth=6)
if [ "${SMOKE:-0}" = 1 ]; then
  TINY=(--config.data.image_size=64 --config.model.patch_size=8 --config.model.width=32 --config.model.depth=1
        --config.model.num_heads=2 --config.model.mlp_dim=64 --config.model.predictor_width=16
        --config.model.predictor_depth=1 --config.model.predictor_heads=2 --config.mask.min_keep=2
        --config.mask.reference_batch=8 --config.data.synthetic_size=64)
  COMMON+=("${TINY[@]}" --config.data.num_workers=0 --pipeline_batches=2 --note="SMOKE=1: tiny models, the script's logic only")
  VITB=("${TINY[@]}")
  COMMON+=(--steps=2)   # absl flags: the later value counts
  FIT=${SMOKE_FIT:-8,4}
fi

bench() {
  echo "== $1"; shift
  "$PYTHON" experiments/benchmark.py "$@" 2>&1 | tee -a "$OUT_DIR/device_check.log" | grep -v '^|' || return 1
}

bench "ViT-H/14 bf16 unrolled, attention=xla, per-device batch: the largest of $FIT that fits" \
  --config=configs/vit_h14.py --config.model.attention=xla --config.model.scan_layers=False \
  --config.model.remat=none --fit_batch="$FIT" "${COMMON[@]}"
# The batch the first run timed: its section's heading ends in "batch N" (global = per device x devices).
batch=$(grep -o 'batch [0-9]*$' "$OUT" | tail -n 1 | cut -d' ' -f2)
bench "ViT-H/14 bf16, scan_layers=True remat=dots, global batch $batch" \
  --config=configs/vit_h14.py --config.model.attention=xla --config.model.scan_layers=True \
  --config.model.remat=dots --config.batch_size="$batch" "${COMMON[@]}"
bench "ViT-H/14 bf16, attention=cudnn, global batch $batch" \
  --config=configs/vit_h14.py --config.model.attention=cudnn --config.batch_size="$batch" "${COMMON[@]}"
bench "ViT-B/16 bf16, attention=xla, bf16 vs fp32 first-step loss" \
  --config=configs/vit_h14.py "${VITB[@]}" --config.batch_size="$batch" --precision_check "${COMMON[@]}"

echo "== done in $(( $(date +%s) - start )) s; sections appended to $OUT"
