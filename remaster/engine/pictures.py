"""Upscaling picture files with A2N (``remaster upscale``): folders mirrored, alpha, 16-bit and
greyscale kept as far as the format allows. The details are in ``remaster.cli.upscale``."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from remaster.commandline import progress_enabled
from remaster.data.imaging import EXTENSIONS
from remaster.data.pictures import Picture, read_picture, save_picture
from remaster.engine.upscaler import Upscaler
from remaster.files import atomic_path, display_path

log = logging.getLogger(__name__)

IMAGE_EXTS = tuple(EXTENSIONS)
FORMATS = {"png": ".png", "webp": ".webp", "jpg": ".jpg"}


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path


@dataclass
class Summary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"upscaled {len(self.written)}, skipped {len(self.skipped)}, failed {len(self.failed)}"]
        if self.skipped:
            lines[0] += " (skipped outputs exist; --overwrite redoes them)"
        lines += [f"  note {src}: {note}" for src, note in self.notes]
        lines += [f"  FAILED {src}: {why}" for src, why in self.failed]
        return "\n".join(lines)


def plan(inputs: Sequence[Path], out_dir: Path, fmt: str) -> tuple[list[Job], list[tuple[str, str]]]:
    """The files to upscale and their outputs, and the inputs that do not exist."""
    ext, missing = FORMATS[fmt], []
    found: list[tuple[Path, Path]] = []  # (source, output path without the extension)
    out_abs = out_dir.resolve()
    for item in inputs:
        if item.is_dir():
            for src in sorted(item.rglob("*")):
                rel = src.relative_to(item)
                if (
                    src.is_file()
                    and src.suffix.lower() in IMAGE_EXTS
                    and not any(part.startswith(".") for part in rel.parts)
                    and out_abs not in src.resolve().parents  # never our own outputs
                ):
                    found.append((src, out_dir / rel))
        elif item.is_file():
            found.append((item, out_dir / item.name))
        else:
            missing.append((display_path(item), "does not exist"))
    # a.jpg and a.png would both give a.png: such outputs keep the whole name (a.jpg.png)
    stems = Counter(dst.with_suffix("") for _, dst in found)
    unique = {dst: stems[dst.with_suffix("")] == 1 for _, dst in found}
    jobs = [Job(src, dst.with_name((dst.stem if unique[dst] else dst.name) + ext)) for src, dst in found]
    return jobs, missing


def _run(up: Upscaler, colour: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] -> (H*s, W*s, 3) float32 in [0, 1]."""
    x = torch.from_numpy(colour).permute(2, 0, 1)[None]  # (1, 3, H, W)
    return up(x)[0].permute(1, 2, 0).cpu().numpy()


def _upscale_alpha(up: Upscaler, alpha: np.ndarray, mode: str) -> np.ndarray:
    """(H, W) float32 in [0, 1] -> (H*s, W*s)."""
    s = up.scale
    if alpha.min() == alpha.max():
        return np.full((alpha.shape[0] * s, alpha.shape[1] * s), alpha.flat[0], np.float32)
    if mode == "model":
        return _run(up, np.repeat(alpha[..., None], 3, axis=2)).mean(axis=2)
    x = torch.from_numpy(alpha)[None, None]
    out = F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False)
    return out.clamp_(0, 1)[0, 0].numpy()


def upscale_picture(up: Upscaler, pic: Picture, alpha_mode: str = "model") -> Picture:
    """Upscale the colour through the model and the alpha as ``alpha_mode`` says; same channels and depth."""
    top = float(np.iinfo(pic.pixels.dtype).max)
    px = pic.pixels.astype(np.float32) / top  # (H, W, C), C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA
    c = px.shape[2]
    colour = px[..., :3] if c >= 3 else np.repeat(px[..., :1], 3, axis=2)
    sr = _run(up, np.ascontiguousarray(colour))  # (H*s, W*s, 3)
    planes = [sr] if c >= 3 else [sr.mean(axis=2, keepdims=True)]
    if c in (2, 4):
        planes.append(_upscale_alpha(up, np.ascontiguousarray(px[..., -1]), alpha_mode)[..., None])
    out = np.round(np.concatenate(planes, axis=2) * top).astype(pic.pixels.dtype)
    return Picture(out, pic.icc, pic.notes)


def upscale_files(
    jobs: Sequence[Job],
    up: Upscaler,
    *,
    fmt: str = "png",
    quality: int = 95,
    alpha: str = "model",
    overwrite: bool = False,
    progress: bool | None = None,
) -> Summary:
    """Upscale each job's file into its output; a failure is recorded and the batch goes on."""
    summary = Summary()
    with (
        logging_redirect_tqdm(),
        tqdm(total=len(jobs), unit="image", disable=not progress_enabled(progress)) as bar,
    ):
        for job in jobs:
            name = display_path(job.src)
            bar.set_postfix_str(job.src.name[-30:], refresh=False)
            if job.dst.exists() and job.dst.resolve() == job.src.resolve():
                summary.failed.append((name, "the output would replace the input; choose another -o"))
            elif job.dst.exists() and not overwrite:
                summary.skipped.append(name)
            else:
                try:
                    pic = read_picture(job.src)
                    out = upscale_picture(up, pic, alpha)
                    with atomic_path(job.dst) as tmp:
                        notes = save_picture(out, tmp, fmt, quality)
                    summary.written.append(name)
                    summary.notes += [(name, n) for n in [*pic.notes, *notes]]
                except Exception as e:  # one bad file must not stop the batch
                    log.warning("%s: %s", name, e, exc_info=log.isEnabledFor(logging.DEBUG))
                    summary.failed.append((name, f"{type(e).__name__}: {e}"))
            bar.update()
    return summary
