#!/usr/bin/env bash
# The recipe for the shipped anime weights (models/weights/a2n_anime_x{2,4}.safetensors).
#
#   scripts/train_shipped.sh WORKDIR [X2_ITERATIONS] [X4_ITERATIONS]
#
# Data: every shared anime frame and Manga109 page (anime_hr, anime_hr_more, manga109,
# manga109_more) plus the frames `ingest` mines from the shared clips (../shared/data/video),
# less seven held-out anime images, the test set (never seen in training; the same set the
# video weights are scored on). x2 first, then x4.
#
# INIT=shipped starts each scale from the shipped weights of that scale (a continuation: more
# data and more iterations on top of the last committed weights, never the authors'); without
# it, x2 starts from random weights and x4 from the x2 run's body.
# BATCH, LR and X2_CROP / X4_CROP (HR crop sides) default to the CPU recipe that made the
# shipped files; on a GPU use BATCH=32 X4_CROP=256 and many more iterations.
# Then it scores both on the held-out images against bicubic (and x2 against the authors' DIV2K
# weights, if ../shared/refs/a2n is there) and exports the weights.
# Rerunning the same command resumes each training where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "$1")
X2_ITERS=${2:-2400}
X4_ITERS=${3:-600}
BATCH=${BATCH:-16}
LR=${LR:-0.0005}
X2_CROP=${X2_CROP:-96}
X4_CROP=${X4_CROP:-128}
INIT=${INIT:-}
SHARED=$(realpath ../shared)
HELD_OUT="anime4k_Fate_1080p.jpg anime4k_Slime_1080p.jpg apisr_naruto.jpg a4k__1080p-2160p_Original_0.png
a4k__1080p-2160p_Original_5.png a4k__1080p-2160p_Original_10.png a4k__720p-1080p_Original_7.png"
PY=${PY:-.venv/bin/python}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$WORK/mlflow.db}

mkdir -p "$WORK/scrape/manga" "$WORK/scrape/video" "$WORK/test_hr"
for f in "$SHARED"/data/anime_hr/*.{jpg,png} "$SHARED"/data/anime_hr_more/*.png; do
  name=$(basename "$f")
  if [[ " $(echo $HELD_OUT) " == *" $name "* ]]; then ln -sf "$f" "$WORK/test_hr/$name"; else ln -sf "$f" "$WORK/scrape/$name"; fi
done
ln -sf "$SHARED"/data/manga109/*.png "$SHARED"/data/manga109_more/*.png "$WORK/scrape/manga/"
for f in "$SHARED"/data/video/*; do
  [[ $(basename "$f") == MANIFEST.tsv ]] || ln -sf "$f" "$WORK/scrape/video/"
done

common=(-S ingest.min_side=700 -S tile.val_fraction=0.04)
$PY -m stages.ingest --source "$WORK/scrape" --output "$WORK/data/ingested" "${common[@]}"
$PY -m stages.tile --ingested "$WORK/data/ingested" --output "$WORK/data/tiles" "${common[@]}"
$PY -m stages.pack --ingested "$WORK/data/ingested" --tiles "$WORK/data/tiles" --output "$WORK/data/packed"

data=(--train "$WORK/data/packed/train.h5" --val "$WORK/data/packed/val.h5")
train=(-S train.batch_size="$BATCH" -S train.schedule=cosine -S train.lr="$LR")
x2_init=() x4_init=(-S train.init="$WORK/runs/x2/best.pt")
if [[ $INIT == shipped ]]; then
  # Copies, so that the export at the end does not change a resumed run's starting point.
  mkdir -p "$WORK/init"
  for s in 2 4; do
    [[ -f $WORK/init/x$s.safetensors ]] || cp "models/weights/a2n_anime_x$s.safetensors" "$WORK/init/x$s.safetensors"
  done
  x2_init=(--init "$WORK/init/x2.safetensors") x4_init=(--init "$WORK/init/x4.safetensors")
fi
$PY -m stages.train "${train[@]}" -S train.iterations="$X2_ITERS" -S train.val_every=400 -S train.scale=2 -S train.hr_crop="$X2_CROP" \
  "${x2_init[@]}" "${data[@]}" --output "$WORK/runs/x2" --metrics "$WORK/metrics/x2.json" --plots "$WORK/plots/x2"
$PY -m stages.train "${train[@]}" -S train.iterations="$X4_ITERS" -S train.val_every=200 -S train.scale=4 -S train.hr_crop="$X4_CROP" \
  "${x4_init[@]}" "${data[@]}" --output "$WORK/runs/x4" --metrics "$WORK/metrics/x4.json" --plots "$WORK/plots/x4"

mkdir -p models/weights
for s in 2 4; do
  $PY -m remaster.cli.export --format safetensors --scale $s --model "$WORK/runs/x$s/best.pt" \
    -o "models/weights/a2n_anime_x$s.safetensors"
  $PY -m stages.evaluate --hr "$WORK/test_hr" --scale $s --model "models/weights/a2n_anime_x$s.safetensors" \
    --output "$WORK/eval_x$s" --no-track
done
if [[ $INIT == shipped ]]; then  # the weights this round started from, on the same test images
  for s in 2 4; do
    $PY -m stages.evaluate --hr "$WORK/test_hr" --scale $s --model "$WORK/init/x$s.safetensors" \
      --output "$WORK/eval_x${s}_init" --no-track
  done
fi
if [[ -f "$SHARED/refs/a2n/aan_x2.pt" ]]; then
  $PY -m stages.evaluate --hr "$WORK/test_hr" --scale 2 --model "$SHARED/refs/a2n/aan_x2.pt" \
    --output "$WORK/eval_x2_authors" --no-track
fi
echo "scores: $WORK/eval_x2/metrics.json $WORK/eval_x4/metrics.json $WORK/eval_x2_authors/metrics.json"
