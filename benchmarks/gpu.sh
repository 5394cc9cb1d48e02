#!/usr/bin/env bash
# One short GPU run (a few minutes on an H100): the GPU tests (tiles, autocast, CUDA graphs), then
# A2N x4 fps on 576x432 frames in each precision, eager and from CUDA graphs, with and without
# torch.compile, then the model-alone and video-path table of benchmarks/inference.py on the GPU.
# PY picks the interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -m pytest -q -m gpu tests -p no:cacheprovider || echo "GPU tests failed (see above); benchmarks go on"
echo
PYTHONPATH=. "$PY" benchmarks/gpu_fps.py --frames "${FRAMES:-64}"
echo
PYTHONPATH=. "$PY" benchmarks/inference.py --reps 2 --video-frames 16 --no-realesrgan
