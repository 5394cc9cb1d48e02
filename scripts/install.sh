#!/usr/bin/env bash
# Install everything remaster needs on a fresh Debian/Ubuntu machine with Python 3.11+:
# ffmpeg (apt), then a virtual environment in .venv with the project and its dev tools.
# Without an NVIDIA GPU it takes the CPU build of torch (constraints-cpu.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv}

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  echo "installing ffmpeg ..."
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends ffmpeg
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing the default (CUDA) build of torch"
  "$VENV/bin/python" -m pip install -q -e ".[dev,onnx]"
else
  echo "no GPU: installing the CPU build of torch"
  "$VENV/bin/python" -m pip install -q -c constraints-cpu.txt -e ".[dev,onnx]"
fi

"$VENV/bin/python" - <<'PY'
import torch, h5py, PIL, prefect, mlflow, dvc.version
print(f"torch {torch.__version__} (cuda: {torch.cuda.is_available()}), prefect {prefect.__version__}, "
      f"mlflow {mlflow.__version__}, dvc {dvc.version.__version__}, h5py {h5py.__version__}, pillow {PIL.__version__}")
PY
ffmpeg -hide_banner -version | head -n 1
echo "ready: activate with  . $VENV/bin/activate"
