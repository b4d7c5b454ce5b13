#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, prepared for one short device session (about 9 minutes on an H100 for all
# parts; name parts to run fewer). Tables go into a copy of docs/benchmarks.md in OUTPUT_DIR, JSON beside it.
#
#   bash benchmarks/gpu_session.sh OUTPUT_DIR [step] [compile] [graphs] [checkpointing] [max_batch] [loss] [data]
#
# A dry run on the CPU checks the script itself in a minute (tiny model, no GPU):
#   PYTHON=.venv/bin/python DEVICE=cpu MODEL_ARGS="--model_size vit-tiny --config_overrides image_size=32,patch_size=8,local_crop_size=16,\
#   num_local_crops=2,num_prototypes=64" MAX_BATCH_LIMIT=192 bash benchmarks/gpu_session.sh /tmp/dry step max_batch loss data
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu_session.sh OUTPUT_DIR [parts...]}
shift
parts=${*:-step compile checkpointing max_batch loss data graphs}
mkdir -p "$out"
[ -f "$out/benchmarks.md" ] || cp docs/benchmarks.md "$out/benchmarks.md"
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } | tee "$out/gpu.txt"
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
step="$python benchmarks/step.py --device $device ${MODEL_ARGS:---model_size vit-base} --max_batch_limit ${MAX_BATCH_LIMIT:-2048}"

for part in $parts; do
  echo "== $part ($(date +%T))"
  case $part in
    step) $step --batch_sizes 24 64 --steps 8 --warmup 3 --output_json "$out/step.json" \
            --markdown "$out/benchmarks.md" --section h100-vit-base ;;
    compile) $step --variants pera --compile --batch_sizes 24 64 --steps 8 --warmup 4 \
            --output_json "$out/step_compiled.json" --markdown "$out/benchmarks.md" --section h100-vit-base-compiled ;;
    graphs) $step --variants pera --compile reduce-overhead --batch_sizes 24 --steps 8 --warmup 5 \
            --output_json "$out/step_graphs.json" --markdown "$out/benchmarks.md" --section h100-vit-base-graphs ;;
    checkpointing) $step --variants pera --activation_checkpointing selective --batch_sizes 64 --steps 8 --warmup 3 \
            --output_json "$out/step_selective.json" --markdown "$out/benchmarks.md" --section h100-vit-base-selective ;;
    max_batch) $step --variants pera full_view --batch_sizes 96 --find_max_batch --steps 2 --warmup 1 \
            --output_json "$out/max_batch.json" --markdown "$out/benchmarks.md" --section h100-vit-base-max-batch ;;
    loss) "$python" benchmarks/dino_loss.py --device "$device" --rows 640 --output_json "$out/dino_loss.json" \
            --markdown "$out/benchmarks.md" --section h100-dino-loss ;;
    data)
      # the device has no datasets: 512 synthetic 256 px JPEG tiles (smooth noise, like aerial texture)
      "$python" - "$out/tiles" <<'PYTHON'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
folder = Path(sys.argv[1]); folder.mkdir(parents=True, exist_ok=True)
generator = np.random.default_rng(0)
for index in range(512):
    coarse = generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((256, 256), Image.BICUBIC).save(folder / f"tile_{index:03d}.jpg", quality=90)
PYTHON
      "$python" benchmarks/data.py --device "$device" ${MODEL_ARGS:---model_size vit-base} --train_dir "$out/tiles" --num_workers 4 8 14 --batch_size 64 \
            --output_json "$out/data.json" --markdown "$out/benchmarks.md" --section data-h100
      rm -rf "$out/tiles" ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
