"""What a training run leaves for people to read: its history as CSV, curves and a sample picture.

Every file is written whole and atomically, so a reader (or a killed run) never sees half of one.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from remaster.evaluation.metrics import quantize
from remaster.files import atomic_path, write_text
from remaster.training.dataset import TileDataset
from remaster.training.loop import History, Runtime, bicubic, upscale

log = logging.getLogger(__name__)


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_history_csvs(plots_dir: Path, hist: History) -> list[Path]:
    """loss.csv (step,loss,lr; row i is step i+1) and val.csv, rewritten whole and atomically."""
    loss_rows = [[i + 1, f"{loss:.6g}", f"{lr:.6g}"] for i, (loss, lr) in enumerate(hist.loss)]
    b = hist.bicubic or (math.nan, math.nan)
    val_rows = [[v.step, f"{v.psnr_y:.4f}", f"{v.ssim_y:.5f}", f"{b[0]:.4f}", f"{b[1]:.5f}"]
                for v in hist.val]  # fmt: skip
    loss_csv, val_csv = plots_dir / "loss.csv", plots_dir / "val.csv"
    write_text(loss_csv, _csv(["step", "loss", "lr"], loss_rows))
    header = ["step", "psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y"]
    write_text(val_csv, _csv(header, val_rows))
    return [loss_csv, val_csv]


def write_curve_pngs(plots_dir: Path, hist: History) -> list[Path]:
    """loss.png and psnr.png; none (and a note in the log) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: the curves are in loss.csv and val.csv only")
        return []
    out = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(hist.loss) + 1), [loss for loss, _ in hist.loss], lw=0.8)
    ax.set(xlabel="step", ylabel="Charbonnier loss", yscale="log", title="training loss")
    out.append(plots_dir / "loss.png")
    _save_fig(fig, out[-1])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([v.step for v in hist.val], [v.psnr_y for v in hist.val], marker="o", label="A2N")
    if hist.bicubic:
        ax.axhline(hist.bicubic[0], color="grey", ls="--", label="bicubic")
    ax.set(xlabel="step", ylabel="Y-PSNR (dB)", title="validation")
    ax.legend()
    out.append(plots_dir / "psnr.png")
    _save_fig(fig, out[-1])
    return out


def _save_fig(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return (quantize(x) * 255.0).round().byte().permute(1, 2, 0).numpy()


def write_sample_png(path: Path, model: torch.nn.Module, tiles: TileDataset, scale: int, rt: Runtime) -> Path:
    """LR (nearest) | bicubic | A2N | HR of the first val tile, side by side."""
    lr, hr = tiles[0]
    sr = upscale(model.eval(), lr[None], rt)[0]
    nearest = lr.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    panels = [nearest, bicubic(lr[None], scale)[0], sr, hr]
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate([_to_uint8(p) for p in panels], axis=1)).save(tmp, "PNG")
    return path
