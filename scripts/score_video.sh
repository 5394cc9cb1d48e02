#!/usr/bin/env bash
# Score shipped weights on held-out frames under the degradations of real episodes.
#
#   scripts/score_video.sh WORKDIR [MODEL ...]      (MODEL: clean, video, dvd or a path; default: all three)
#
# Test sets, never in the video weights' training data (scripts/train_video.sh holds them out):
#   WORKDIR/test_hr   7 HD anime frames and a manga page, made by train_video.sh;
#   WORKDIR/test_jjk  7 frames of the shared 1080p JJK clip (every 25th), made here.
# Each LR is the HR downscaled by the scale (the pack downsampler), then degraded: clean,
# libx264 CRF 18 and 23, MPEG-2 at -qscale:v 2, 6 and 10 (the DVD range) at x2; clean, CRF 23 and
# MPEG-2 at -qscale:v 6 at x4.
# Results: WORKDIR/eval/MODEL/x{s}/SPEC/metrics.json; scripts/video_card.py turns them into the card.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "$1")
shift
MODELS=("${@:-clean}")
[[ $# -eq 0 ]] && MODELS=(clean video dvd)
PY=${PY:-.venv/bin/python}
SHARED=$(realpath ../shared)

if [[ ! -d "$WORK/test_jjk" ]]; then
  mkdir -p "$WORK/test_jjk.tmp"
  ffmpeg -nostdin -v error -i "$SHARED/data/video/tas_jjk_1080p_test.mp4" -vf "select='not(mod(n\,25))'" \
    -fps_mode passthrough "$WORK/test_jjk.tmp/f%02d.png"
  mv "$WORK/test_jjk.tmp" "$WORK/test_jjk"
fi

declare -A SPECS=([2]="bicubic x264:crf=18 x264:crf=23 mpeg2:q=6 mpeg2:q=2 mpeg2:q=10" [4]="bicubic x264:crf=23 mpeg2:q=6")
for model in "${MODELS[@]}"; do
  name=$(basename "$model" .safetensors)
  for s in 2 4; do
    for spec in ${SPECS[$s]}; do
      out="$WORK/eval/$name/x$s/${spec//[:=]/_}"
      [[ -f "$out/metrics.json" ]] && continue
      $PY -m stages.evaluate --hr "$WORK/test_hr" --hr "$WORK/test_jjk" --scale "$s" --model "$model" \
        --degrade "$spec" --output "$out" --no-track -S evaluate.report_images=4
    done
  done
done
echo "scores under $WORK/eval"
