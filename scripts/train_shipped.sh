#!/usr/bin/env bash
# The recipe for the shipped anime weights (models/weights/a2n_anime_x{2,4}.safetensors).
#
#   scripts/train_shipped.sh WORKDIR [ITERATIONS]
#
# Trains from scratch on ../shared/data/anime_hr and ../shared/data/manga109, holding out three
# anime images as the test set (never seen in training), x2 first and then x4 initialised from
# the x2 body. On a GPU, 10 minutes per scale is the plan; on 2 CPU cores it takes many hours.
# Rerunning the same command resumes each training where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "$1")
ITERS=${2:-20000}
SHARED=$(realpath ../shared/data)
HELD_OUT="anime4k_Fate_1080p.jpg anime4k_Slime_1080p.jpg apisr_naruto.jpg"
PY=${PY:-.venv/bin/python}

mkdir -p "$WORK/scrape/manga109" "$WORK/test_hr"
for f in "$SHARED"/anime_hr/*.jpg "$SHARED"/anime_hr/*.png; do
  name=$(basename "$f")
  if [[ " $HELD_OUT " == *" $name "* ]]; then ln -sf "$f" "$WORK/test_hr/$name"; else ln -sf "$f" "$WORK/scrape/$name"; fi
done
ln -sf "$SHARED"/manga109/*.png "$WORK/scrape/manga109/"

common=(-S ingest.min_side=700 -S tile.val_fraction=0.02)
$PY -m stages.ingest --source "$WORK/scrape" --out "$WORK/data/ingested" "${common[@]}"
$PY -m stages.tile --ingested "$WORK/data/ingested" --out "$WORK/data/tiles" "${common[@]}"
$PY -m stages.pack --ingested "$WORK/data/ingested" --tiles "$WORK/data/tiles" --out "$WORK/data/packed"

train=(-S train.iterations="$ITERS" -S train.batch_size=32 -S train.hr_crop=128 -S train.schedule=cosine
       -S train.val_every=1000)
$PY -m stages.train "${train[@]}" -S train.scale=2 -S train.hr_crop=128 \
  --train "$WORK/data/packed/train.h5" --val "$WORK/data/packed/val.h5" --out "$WORK/runs/x2" \
  --metrics "$WORK/metrics/x2.json" --plots "$WORK/plots/x2"
$PY -m stages.train "${train[@]}" -S train.scale=4 -S train.hr_crop=256 --init "$WORK/runs/x2/best.pt" \
  --train "$WORK/data/packed/train.h5" --val "$WORK/data/packed/val.h5" --out "$WORK/runs/x4" \
  --metrics "$WORK/metrics/x4.json" --plots "$WORK/plots/x4"
for s in 2 4; do
  $PY -m stages.evaluate --hr "$WORK/test_hr" --scale $s --model "$WORK/runs/x$s/best.pt" --out "$WORK/eval_x$s" --no-track
done
echo "now: export runs/x{2,4}/best.pt to models/weights/*.safetensors (models.checkpoint.save_safetensors)"
