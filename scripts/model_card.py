"""Write models/weights/MODEL_CARD.md from a finished ``scripts/train_shipped.sh`` work folder.

    .venv/bin/python scripts/model_card.py WORKDIR [--machine "what trained it"]

Every figure in the card is read from the work folder (checkpoints, evaluation metrics, data
summaries) or from the weight files, so the card cannot drift from what was measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoint import read_checkpoint  # noqa: E402
from remaster.engine.cpu import cpu_model  # noqa: E402
from remaster.files import sha256_file, write_text  # noqa: E402

WEIGHTS = ROOT / "models" / "weights"


def _json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


# The earlier rounds of the shipped weights, each continued by the next; their work folders are
# gone, so their rows come from the cards of their time. Round 1: MODEL_CARD.md at commit 699b09a
# (from random weights, on anime_hr and manga109 less three test images); round 2: at e17855e
# (the data and val split of the rounds after it).
EARLIER_ROUNDS = [
    {
        2: "| 2400 | 16 | 96 | 0.0005, cosine | none (random) | 2.27 h | 51.38 dB at step 1800 (47.93) |",
        4: "| 600 | 16 | 128 | 0.0005, cosine | the x2 round 1 | 0.38 h | 44.74 dB at step 600 (39.67) |",
    },
    {
        2: "| 1200 | 16 | 96 | 0.0002, cosine | round 1 (the shipped x2) | 0.63 h "
        "| 45.30 dB at step 1200 (40.10) |",
        4: "| 400 | 16 | 128 | 0.0002, cosine | round 1 (the shipped x4) | 0.10 h "
        "| 37.41 dB at step 400 (32.78) |",
    },
]


def _sources(work: Path) -> tuple[dict[str, int], list[str]]:
    """Kept images per shared folder, and one line per video on what mining it gave."""
    with open(work / "data/ingested/manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    mined: dict[str, list[str]] = {}  # video -> each mined frame's fate
    for r in rows:
        if r["video"]:  # "ok", or "near duplicate (X kept instead)" from "near_duplicate of X (distance d)"
            kept_instead = r["reason"].split(" of ", 1)[-1].split(" (")[0]
            fate = r["status"].replace("_", " ") + (f" ({kept_instead} kept instead)" if r["reason"] else "")
            mined.setdefault(r["video"], []).append(fate)
    kept: dict[str, int] = {}
    videos: list[str] = []
    for r in rows:
        folder = (work / "scrape" / r["source"]).resolve().parent.name
        if r["status"] == "ok" and not r["video"]:
            kept[folder] = kept.get(folder, 0) + 1
        elif folder == "video" and not r["video"]:  # the video's own row: mined, or rejected
            frames = mined.get(r["source"])
            tail = f"; the frames: {', '.join(frames)}" if frames else ""
            videos.append(f"`{Path(r['source']).name}`: {r['reason']}{tail}")
    return kept, videos


def _train_rows(work: Path, scale: int) -> dict[str, Any]:
    extra = read_checkpoint(work / f"runs/x{scale}/last.pt")["extra"]
    hp = extra["hparams"]
    best = extra["best"]  # {"step", "psnr_y", "ssim_y"}; older checkpoints kept (step, psnr_y, ssim_y)
    if not isinstance(best, dict):
        best = {"step": best[0], "psnr_y": best[1]}
    return {
        "step": extra["step"],
        "iterations": hp.get("iterations"),  # a cosine run's horizon; step runs do not record it
        "hours": extra["seconds"] / 3600,
        "batch": hp.get("batch_size"),
        "crop": hp.get("hr_crop"),
        "lr": hp.get("lr"),
        "schedule": hp.get("schedule"),
        "init": hp.get("init") or "none (random)",
        "clean_fraction": hp.get("clean_fraction"),
        "val": (
            best["psnr_y"],
            extra["bicubic"][0] if extra.get("bicubic") else None,
            int(best["step"]),
        ),
    }


def _table(ours: dict[str, Any], ref: dict[str, Any] | None, before: dict[str, Any] | None) -> list[str]:
    """Per-image rows and the mean: bicubic, ours, and the weights this round started from and the
    authors' where they were scored."""
    head, rule = "| image | bicubic | A2N anime (ours) | gain |", "| --- | ---: | ---: | ---: |"
    if before:
        prev = f"round {len(EARLIER_ROUNDS)}"
        head, rule = head + f" {prev} | ours - {prev} |", rule + " ---: | ---: |"
    if ref:
        head, rule = head + " authors' DIV2K A2N | ours - authors |", rule + " ---: | ---: |"
    lines = [head, rule]
    others = [(o, {i["name"]: i for i in o["images"]}) for o in (before, ref) if o]
    rows = [*ours["images"], {"name": "**mean**", **{k: ours[k] for k in ("psnr_y", "bicubic_psnr_y")}}]
    for r in rows:
        gain = r["psnr_y"] - r["bicubic_psnr_y"]
        line = f"| {r['name']} | {r['bicubic_psnr_y']:.2f} | {r['psnr_y']:.2f} | {gain:+.2f} |"
        for other, by_name in others:
            t = by_name.get(r["name"]) or (other if r["name"] == "**mean**" else None)
            line += f" {t['psnr_y']:.2f} | {r['psnr_y'] - t['psnr_y']:+.2f} |" if t else " | |"
        lines.append(line)
    return lines


def files_table(*patterns: str) -> list[str]:
    """The card's Files section for the x2 and x4 files named by each pattern ({s}: the scale)."""
    out = ["", "## Files", "", "| file | bytes | sha256 |", "| --- | ---: | --- |"]
    for pattern in patterns:
        for s in (2, 4):
            f = WEIGHTS / pattern.format(s=s)
            out.append(f"| `{f.name}` | {f.stat().st_size:,} | `{sha256_file(f)[:16]}...` |")
    return [*out, ""]


def card(work: Path, machine: str) -> str:
    ingest, tiles = _json(work / "data/ingested/summary.json"), _json(work / "data/tiles/summary.json")
    held_out = sorted(p.name for p in (work / "test_hr").iterdir())
    kept, videos = _sources(work)
    out = [
        "# A2N anime weights (x2, x4)",
        "",
        "The clean weights (`--model clean`): `remaster upscale` and `evaluate` load them when no",
        "`--model` is given, and the video weights (`MODEL_CARD_video.md`) start from them. A2N as",
        "in `models/a2n.py` (40 features, 16 attention-in-attention",
        "blocks), fp32 safetensors with the config in the metadata. Trained by",
        "`scripts/train_shipped.sh` with the project's own stages, in rounds: from random weights",
        "on the first data, then continued on more (`INIT=shipped`), each round from the last",
        "committed weights. This card was written by `scripts/model_card.py` from the last round's",
        "files.",
        "",
        "Round 2 and later rounds: `INIT=shipped LR=0.0002 scripts/train_shipped.sh WORK X2 X4`, with",
        "the iterations of the table below.",
        *files_table("a2n_anime_x{s}.safetensors"),
        "## Data",
        "",
        f"- **Training:** {ingest['ok']} images through `ingest`, `tile` (480 px, stride 200) and",
        f"  `pack` (MATLAB-style anti-aliased bicubic LR): {tiles['tiles_train']} training tiles and",
        f"  {tiles['tiles_val']} validation tiles ({tiles['val_images']} images). Kept per shared folder:",
        "  " + ", ".join(f"`{k}` {v}" for k, v in sorted(kept.items())) + ".",
        "- **Frames mined from the shared clips** (`../shared/data/video`, `ingest.video` defaults):",
        *[f"  - {line}" for line in videos],
        "- Sources and licences are in each folder's `MANIFEST.tsv` (MIT, BSD-3-Clause, AGPL-3.0 for",
        "  the JJK frames, and Manga109 pages with no licence file): check them before you",
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
        "Round 1 had its own val split (one image of 48), so its val column does not compare with",
        "the later rounds'; the test images below do.",
        "",
        "| scale | iterations | batch | HR crop | lr, schedule | initialised from | wall time "
        "| val Y-PSNR (bicubic) |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for s in (2, 4):
        t = _train_rows(work, s)
        val, bic, at = t["val"]
        init, label = t["init"], f"x{s}"
        if "init/x" in init:  # a continuation of the shipped weights: the earlier rounds first
            for n, rows in enumerate(EARLIER_ROUNDS, 1):
                out.append(f"| x{s}, round {n} {rows[s]}")
            n = len(EARLIER_ROUNDS)
            init, label = f"round {n} (the shipped x{s})", f"x{s}, round {n + 1}"
        elif s == 4 and init != "none (random)":
            init = "the x2 run"
        out.append(
            f"| {label} | {t['step']} | {t['batch']} | {t['crop']} "
            f"| {t['lr']}, {t['schedule']} | {init} | {t['hours']:.2f} h "
            f"| {val:.2f} dB at step {at} ({bic:.2f}) |"
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
        earlier = work / f"eval_x{s}_init/metrics.json"  # the weights this round started from
        before = _json(earlier) if earlier.exists() else None
        out += [f"### x{s}", "", *_table(ours, ref, before), ""]
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
    ap.add_argument("--machine", default=f"{cpu_model()}, CPU only, torch fp32 channels_last")
    args = ap.parse_args()
    write_text(WEIGHTS / name, make(args.work, args.machine))
    print(f"wrote {WEIGHTS / name}")
    return 0


def main() -> int:
    return write_card(__doc__.splitlines()[0], "MODEL_CARD.md", card)


if __name__ == "__main__":
    raise SystemExit(main())
