"""Where a ``--model`` points: a shipped name (``clean``, ``video``, ``dvd``), a file, or a registered model
(``models:/name@alias``, downloaded from the MLflow registry). The engine loads files only; this
module is the one place that also knows the registry."""

from __future__ import annotations

from pathlib import Path

from remaster.engine.upscaler import resolve_model_path
from remaster.tracking import default_tracking_uri

# Codecs that store every pixel as it was: their frames carry no blocks or ringing, so the clean
# weights restore them better than the video weights, which trade some clean-input quality for codec repair.
LOSSLESS_CODECS = frozenset(
    {"ffv1", "ffvhuff", "huffyuv", "utvideo", "magicyuv", "png", "rawvideo", "qtrle", "v210", "v410"}
)

# The DVD and VCD codecs: even at their best quality their blocks and ringing are strong, so their
# frames get the fine-tune unblended. On MPEG-2 LR at -qscale:v 2 to 10 it leads the video weights
# on held-out frames (models/weights/MODEL_CARD_video.md), though it would lose over 1 dB to the
# clean weights on clean input, which these codecs never give.
MPEG_CODECS = frozenset({"mpeg1video", "mpeg2video"})
# What kind of source each non-default choice of video_default stands for, for the log
SOURCE_KIND = {"clean": "lossless", "dvd": "MPEG-1/2"}


def video_default(codec: str) -> str:
    """The shipped weights for a source coded with ``codec``: ``clean`` for a lossless one, ``dvd``
    for MPEG-1/2 (DVD, VCD, SD broadcast), ``video`` for the rest (H.264, HEVC, VP9, AV1 ...)."""
    if codec in LOSSLESS_CODECS:
        return "clean"
    return "dvd" if codec in MPEG_CODECS else "video"


def resolve_model(spec: str | None, scale: int, default: str = "clean") -> Path:
    """A file path for ``spec``; None means the shipped ``default`` weights."""
    if not (spec or "").startswith("models:/"):
        return resolve_model_path(spec, scale, default)
    import mlflow

    mlflow.set_tracking_uri(default_tracking_uri())
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
    found = sorted(local.rglob("*.pt")) + sorted(local.rglob("*.safetensors"))
    if not found:
        raise FileNotFoundError(f"{spec} holds no checkpoint (looked in {local})")
    return found[0]
