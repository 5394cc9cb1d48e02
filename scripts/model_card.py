"""Write models/weights/MODEL_CARD.md from a finished ``scripts/train_shipped.sh`` work folder.

    .venv/bin/python scripts/model_card.py WORKDIR [--machine "what trained it"]

Every figure in the card is read from the work folder (checkpoints, evaluation metrics, data
summaries) or from the weight files, so the card cannot drift from what was measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoint import read_checkpoint  # noqa: E402
from remaster.files import sha256_file, write_text  # noqa: E402

WEIGHTS = ROOT / "models" / "weights"


def _json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _train_rows(work: Path, scale: int) -> dict[str, Any]:
    extra = read_checkpoint(work / f"runs/x{scale}/last.pt")["extra"]
    hp = extra["hparams"]
    return {
        "step": extra["step"],
        "hours": extra["seconds"] / 3600,
        "batch": hp.get("batch_size"),
        "crop": hp.get("hr_crop"),
        "lr": hp.get("lr"),
        "schedule": hp.get("schedule"),
        "init": hp.get("init") or "none (random)",
        "clean_fraction": hp.get("clean_fraction"),
        "val": (
            extra["best"][1],
            extra["bicubic"][0] if extra.get("bicubic") else None,
            int(extra["best"][0]),
        ),
    }


def _table(ours: dict[str, Any], ref: dict[str, Any] | None) -> list[str]:
    head = "| image | bicubic | A2N anime (ours) | gain |" + (
        " authors' DIV2K A2N | ours - authors |" if ref else ""
    )
    lines = [head, "| --- | ---: | ---: | ---: |" + (" ---: | ---: |" if ref else "")]
    theirs = {r["name"]: r for r in ref["images"]} if ref else {}
    rows = [*ours["images"], {"name": "**mean**", **{k: ours[k] for k in ("psnr_y", "bicubic_psnr_y")}}]
    for r in rows:
        gain = r["psnr_y"] - r["bicubic_psnr_y"]
        line = f"| {r['name']} | {r['bicubic_psnr_y']:.2f} | {r['psnr_y']:.2f} | {gain:+.2f} |"
        if ref:
            t = theirs.get(r["name"]) or (ref if r["name"] == "**mean**" else None)
            line += f" {t['psnr_y']:.2f} | {r['psnr_y'] - t['psnr_y']:+.2f} |" if t else " | |"
        lines.append(line)
    return lines


def files_table(pattern: str) -> list[str]:
    """The card's Files section for the x2 and x4 files named by ``pattern`` ({s}: the scale)."""
    out = ["", "## Files", "", "| file | bytes | sha256 |", "| --- | ---: | --- |"]
    for s in (2, 4):
        f = WEIGHTS / pattern.format(s=s)
        out.append(f"| `{f.name}` | {f.stat().st_size:,} | `{sha256_file(f)[:16]}...` |")
    return [*out, ""]


def card(work: Path, machine: str) -> str:
    ingest, tiles = _json(work / "data/ingested/summary.json"), _json(work / "data/tiles/summary.json")
    held_out = sorted(p.name for p in (work / "test_hr").iterdir())
    out = [
        "# A2N anime weights (x2, x4)",
        "",
        "The project's default models: `remaster video`, `upscale` and `evaluate` load them when no",
        "`--model` is given. A2N as in `models/a2n.py` (40 features, 16 attention-in-attention",
        "blocks), fp32 safetensors with the config in the metadata. Trained from scratch by",
        "`scripts/train_shipped.sh` with the project's own stages; this card was written by",
        "`scripts/model_card.py` from that run's files.",
        *files_table("a2n_anime_x{s}.safetensors"),
        "## Data",
        "",
        f"- **Training:** {ingest['ok']} images through `ingest`, `tile` (480 px, stride 200) and",
        f"  `pack` (MATLAB-style anti-aliased bicubic LR): {tiles['tiles_train']} training tiles and",
        f"  {tiles['tiles_val']} validation tiles ({tiles['val_images']} image). The images are the",
        "  shared anime screenshots and frames (`anime_hr`, less the test set) and 40 Manga109 pages",
        "  (`manga109`). Their sources and licences are in each folder's `MANIFEST.tsv` (MIT, AGPL-3.0",
        "  for the JJK frames, and Manga109 pages with no licence file): check them before you",
        "  redistribute these weights.",
        f"- **Test (never seen in training):** {', '.join(f'`{n}`' for n in held_out)}.",
        "",
        "## Training",
        "",
        f"Hardware: {machine}. Charbonnier loss, Adam (0.9, 0.999), random crops with flips and",
        "rotations; x4 starts from the x2 model's body (its upsampler reset), which is our own.",
        "The paper trains with batch 32 and 256/64 crops for far longer; on a CPU, batch 16 and small",
        "crops are what gets enough iterations into a few hours. A GPU run of the same script with",
        "`BATCH=32 X4_CROP=256` and more iterations should do better, x4 above all.",
        "",
        "| scale | iterations | batch | HR crop | lr, schedule | initialised from | wall time "
        "| val Y-PSNR (bicubic) |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for s in (2, 4):
        t = _train_rows(work, s)
        val, bic, at = t["val"]
        init = "the x2 run" if s == 4 and t["init"] != "none (random)" else t["init"]
        out.append(
            f"| x{s} | {t['step']} | {t['batch']} | {t['crop']} | {t['lr']}, {t['schedule']} | {init} "
            f"| {t['hours']:.2f} h | {val:.2f} dB at step {at} ({bic:.2f}) |"
        )
    out += [
        "",
        "## Quality on the test images",
        "",
        "Y-PSNR in dB (BT.601 Y, border crop = scale), LR made by the pack downsampler, full images",
        "through the tiled inference path, fp32 (`remaster evaluate`).",
        "",
    ]
    authors = work / "eval_x2_authors/metrics.json"
    for s in (2, 4):
        ours = _json(work / f"eval_x{s}/metrics.json")
        ref = _json(authors) if s == 2 and authors.exists() else None
        out += [f"### x{s}", "", *_table(ours, ref), ""]
        line = f"SSIM (Y): {ours['ssim_y']:.4f} against {ours['bicubic_ssim_y']:.4f} for bicubic"
        if ref:
            line += f" and {ref['ssim_y']:.4f} for the authors' DIV2K weights"
        out += [line + ".", ""]
    out += [
        "The authors' weights (`../shared/refs/a2n/aan_x2.pt`) serve only as this reference: they",
        "are not shipped and nothing here starts from them.",
        "",
    ]
    return "\n".join(out)


def write_card(description: str, name: str, make: Callable[[Path, str], str]) -> int:
    """The command line of a card script: WORKDIR [--machine TEXT] -> models/weights/``name``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("work", type=Path)
    ap.add_argument("--machine", default=f"{_cpu()}, CPU only, torch fp32 channels_last")
    args = ap.parse_args()
    write_text(WEIGHTS / name, make(args.work, args.machine))
    print(f"wrote {WEIGHTS / name}")
    return 0


def main() -> int:
    return write_card(__doc__.splitlines()[0], "MODEL_CARD.md", card)


if __name__ == "__main__":
    raise SystemExit(main())
