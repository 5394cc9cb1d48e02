"""The evaluation report: one self-contained HTML page, for a person, with no external assets.

Per set of images: the mean scores, a bar plot of A2N's gain over bicubic per image (inline
SVG), a table with a row per image, and side-by-side crops (LR nearest | bicubic | A2N | HR)
taken where A2N and bicubic differ most. Crops are JPEG (quality 90) inlined as base64, so the
page opens anywhere and stays small.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

CROP = 192  # HR pixels per panel side
GAP = 4  # white pixels between panels
JPEG_QUALITY = 90


@dataclass
class Figure:
    """One side-by-side strip: panels cropped at the same HR position ``(x, y)``."""

    name: str
    data_uri: str
    labels: tuple[str, ...]
    position: tuple[int, int]


@dataclass
class Section:
    """One set of images on the page. ``means`` and the metric columns are empty for LR-only sets."""

    name: str
    means: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def pick_windows(
    a: np.ndarray, b: np.ndarray, size: int, align: int, count: int = 1
) -> list[tuple[int, int]]:
    """Top-left ``(y, x)`` of up to ``count`` non-overlapping ``size``-pixel windows where the
    (H, W, 3) uint8 images ``a`` and ``b`` differ most (mean absolute difference).

    Candidates lie on a coarse grid (half a window apart, multiples of ``align``, plus the
    windows flush with the far edges), scored in O(1) each from an integral image.
    """
    h, w = a.shape[:2]
    diff = np.zeros((h, w), dtype=np.int32)
    for c in range(3):  # channel by channel: a few bytes per pixel at most
        diff += np.abs(a[..., c].astype(np.int16) - b[..., c].astype(np.int16))
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    np.cumsum(np.cumsum(diff, axis=0, dtype=np.int64), axis=1, out=integral[1:, 1:])
    del diff
    step = max(align, (size // 2) // align * align)

    def grid(length: int) -> np.ndarray:
        pos = list(range(0, length - size + 1, step))
        if pos[-1] != length - size:
            pos.append(length - size)
        return np.array(pos)

    ys, xs = grid(h), grid(w)
    y0, x0 = ys[:, None], xs[None, :]
    sums = (
        integral[y0 + size, x0 + size] - integral[y0, x0 + size] - integral[y0 + size, x0] + integral[y0, x0]
    )
    chosen: list[tuple[int, int]] = []
    for flat in np.argsort(-sums, axis=None, kind="stable"):
        y, x = int(ys[flat // len(xs)]), int(xs[flat % len(xs)])
        if all(abs(y - cy) >= size or abs(x - cx) >= size for cy, cx in chosen):
            chosen.append((y, x))
            if len(chosen) == count:
                break
    return chosen


def crop_size(h: int, w: int, scale: int) -> int:
    """The panel side for an (h, w) HR image: ``CROP`` or less, a multiple of ``scale``."""
    return max(scale, min(CROP, h, w) // scale * scale)


def strip(lr: np.ndarray, images: Sequence[np.ndarray], y: int, x: int, size: int, scale: int) -> np.ndarray:
    """LR (nearest-neighbour enlarged) then each HR-sized image, cropped at HR ``(y, x)``."""
    s = scale
    lr_crop = lr[y // s : (y + size) // s, x // s : (x + size) // s]
    panels = [np.repeat(np.repeat(lr_crop, s, axis=0), s, axis=1)]
    panels += [img[y : y + size, x : x + size] for img in images]
    out = np.full((size, len(panels) * (size + GAP) - GAP, 3), 255, dtype=np.uint8)
    for i, p in enumerate(panels):
        out[:, i * (size + GAP) : i * (size + GAP) + size] = p
    return out


def jpeg_data_uri(img: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figures_for(
    name: str,
    lr: np.ndarray,
    bicubic: np.ndarray,
    sr: np.ndarray,
    hr: np.ndarray | None,
    scale: int,
    count: int,
) -> list[Figure]:
    """Side-by-side strips where A2N departs most from bicubic; HR last when there is one."""
    h, w = sr.shape[:2]
    size = crop_size(h, w, scale)
    images = [bicubic, sr] if hr is None else [bicubic, sr, hr]
    labels = ("LR (nearest)", "bicubic", "A2N", "HR")[: len(images) + 1]
    return [
        Figure(name, jpeg_data_uri(strip(lr, images, y, x, size, scale)), labels, (x, y))
        for y, x in pick_windows(sr, bicubic, size, scale, count)
    ]


def _nice_step(span: float) -> float:
    raw = span / 4
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def gain_svg(names: Sequence[str], gains: Sequence[float], width: int = 720, height: int = 240) -> str:
    """An inline SVG bar plot of the Y-PSNR gain over bicubic (dB), one bar per image."""
    values = [g if math.isfinite(g) else 0.0 for g in gains]
    labelled = len(values) <= 40
    ml, mr, mt, mb = 56, 12, 12, 84 if labelled else 16
    pw, ph = width - ml - mr, height - mt - mb
    lo, hi = min(0.0, *values), max(0.0, *values)
    if hi - lo < 1e-9:
        hi = lo + 1.0
    step = _nice_step(hi - lo)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step

    def ypos(v: float) -> float:
        return mt + (hi - v) / (hi - lo) * ph

    parts = [
        f'<svg class="gain" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
    ]
    n_ticks = round((hi - lo) / step)
    for i in range(n_ticks + 1):
        v = lo + i * step
        y = ypos(v)
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{ml - 4}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    parts.append(
        f'<text transform="translate(14,{mt + ph / 2:.0f}) rotate(-90)" text-anchor="middle">'
        "gain over bicubic (dB)</text>"
    )
    slot = pw / max(1, len(values))
    for i, (name, v) in enumerate(zip(names, values, strict=True)):
        x = ml + i * slot + slot * 0.1
        top, bottom = sorted((ypos(v), ypos(0.0)))
        colour = "#2e7d32" if v >= 0 else "#c62828"
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{top:.1f}" width="{max(1.0, slot * 0.8):.1f}" '
            f'height="{max(0.5, bottom - top):.1f}" fill="{colour}">'
            f"<title>{html.escape(name)}: {v:+.3f} dB</title></rect>"
        )
        if labelled:
            cx, cy = ml + (i + 0.5) * slot, mt + ph + 8
            label = html.escape(name if len(name) <= 18 else name[:17] + "…")
            parts.append(
                f'<text transform="translate({cx:.1f},{cy:.1f}) rotate(-45)" text-anchor="end">{label}</text>'
            )
    y0 = ypos(0.0)
    parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y0:.1f}" y2="{y0:.1f}" stroke="#333"/>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.mean td { font-weight: bold; background: #f4f4f4; }
td.up { color: #2e7d32; } td.down { color: #c62828; }
figure { margin: 0 0 1.2em; } figcaption { font-size: 0.9em; margin-bottom: 0.3em; }
img.sbs { max-width: 100%; image-rendering: pixelated; }
.skipped { color: #c62828; }
"""

_COLUMNS = (
    ("psnr_y", "A2N Y-PSNR", 3),
    ("bicubic_psnr_y", "bicubic Y-PSNR", 3),
    ("gain_psnr_y", "gain (dB)", 3),
    ("lanczos_psnr_y", "lanczos Y-PSNR", 3),
    ("ssim_y", "A2N SSIM", 4),
    ("bicubic_ssim_y", "bicubic SSIM", 4),
    ("psnr_rgb", "A2N RGB PSNR", 3),
    ("bicubic_psnr_rgb", "bicubic RGB PSNR", 3),
)


def _cell(key: str, value: Any, digits: int) -> str:
    if not isinstance(value, (int, float)):
        return f"<td>{html.escape(str(value))}</td>"
    cls = ""
    if key == "gain_psnr_y":
        cls = ' class="up"' if value > 0 else ' class="down"'
        return f"<td{cls}>{value:+.{digits}f}</td>"
    return f"<td>{value:.{digits}f}</td>"


def _metric_table(section: Section) -> str:
    head = "".join(f"<th>{title}</th>" for _, title, _ in _COLUMNS)
    rows = [f"<table><tr><th>image</th>{head}</tr>"]
    for r in section.rows:
        cells = "".join(_cell(k, r[k], d) for k, _, d in _COLUMNS)
        rows.append(f"<tr><td>{html.escape(r['name'])}</td>{cells}</tr>")
    cells = "".join(_cell(k, section.means[k], d) for k, _, d in _COLUMNS)
    rows.append(f'<tr class="mean"><td>mean of {len(section.rows)}</td>{cells}</tr></table>')
    return "".join(rows)


def _size_table(section: Section) -> str:
    rows = ["<table><tr><th>image</th><th>LR size</th><th>output size</th></tr>"]
    for r in section.rows:
        rows.append(
            f"<tr><td>{html.escape(r['name'])}</td><td>{r['width']}x{r['height']}</td>"
            f"<td>{r['out_width']}x{r['out_height']}</td></tr>"
        )
    return "".join(rows) + "</table>"


def _section_html(section: Section) -> str:
    out = [f"<h2>{html.escape(section.name)}</h2>"]
    if section.means:
        m = section.means
        out.append(
            f"<p>{len(section.rows)} images. Mean Y-PSNR: A2N <b>{m['psnr_y']:.3f} dB</b>, bicubic "
            f"{m['bicubic_psnr_y']:.3f} dB (gain {m['gain_psnr_y']:+.3f} dB); mean SSIM: A2N "
            f"{m['ssim_y']:.4f}, bicubic {m['bicubic_ssim_y']:.4f}.</p>"
        )
        out.append("<h3>Gain over bicubic per image</h3>")
        out.append(gain_svg([r["name"] for r in section.rows], [r["gain_psnr_y"] for r in section.rows]))
        out.append(_metric_table(section))
    else:
        out.append(f"<p>{len(section.rows)} images upscaled (no HR, so no scores).</p>")
        out.append(_size_table(section))
    if section.skipped:
        out.append(f'<h3 class="skipped">Skipped ({len(section.skipped)})</h3><ul class="skipped">')
        out += [f"<li>{html.escape(s['name'])}: {html.escape(s['reason'])}</li>" for s in section.skipped]
        out.append("</ul>")
    if section.figures:
        shown = len({f.name for f in section.figures})
        out.append(f"<h3>Side by side ({shown} of {len(section.rows)} images)</h3>")
        out.append("<p>Crops where A2N and bicubic differ most.</p>")
    for f in section.figures:
        caption = f"{html.escape(f.name)} at x={f.position[0]}, y={f.position[1]}: " + " | ".join(f.labels)
        out.append(
            f'<figure><figcaption>{caption}</figcaption><img class="sbs" alt="{html.escape(f.name)}" '
            f'src="{f.data_uri}"></figure>'
        )
    return "\n".join(out)


def render(title: str, facts: dict[str, str], sections: Sequence[Section]) -> str:
    """The whole page. ``facts`` are shown as a list under the title (model, scale, ...)."""
    items = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in facts.items())
    body = "\n".join(_section_html(s) for s in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1><ul>{items}</ul>\n{body}\n"
        "</body></html>\n"
    )
