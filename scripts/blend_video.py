"""Blend the fine-tuned video weights with the clean ones, choosing the mix on the val tiles.

    .venv/bin/python scripts/blend_video.py WORKDIR --scale 2 [--max-clean-loss 1.0]

A model fine-tuned on degraded LR removes codec artifacts but smooths clean input. Interpolating
the two networks' weights (Wang et al., "Deep Network Interpolation", CVPR 2019), w = a * video +
(1 - a) * clean, moves between the two. For each ``a`` in the grid this scores the blend on
every third of the packed val tiles, with their realistic LR and with their clean LR, keeps the
largest realistic score among the blends that lose at most ``--max-clean-loss`` dB on the clean
LR against the clean weights, and writes models/weights/a2n_anime_video_x{s}.safetensors. The blend
with the largest realistic score under no limit becomes a2n_anime_dvd_x{s}.safetensors, for the
sources that are never clean (MPEG-1/2; remaster.model_source.video_default). The val tiles come
from the training images' held-out split, never from the test images, so the choice sees no
test frame. The table it prints is kept beside the run (WORKDIR/blend_x{s}.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoint import load_model  # noqa: E402
from remaster.engine.onnx import export_safetensors  # noqa: E402
from remaster.engine.upscaler import default_weights  # noqa: E402
from remaster.files import write_json  # noqa: E402
from remaster.training import loop  # noqa: E402
from remaster.training.dataset import TileDataset  # noqa: E402

GRID = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def interpolate(
    tuned: dict[str, torch.Tensor], clean: dict[str, torch.Tensor], a: float
) -> dict[str, torch.Tensor]:
    """The state dict a * tuned + (1 - a) * clean."""
    return {k: a * tuned[k] + (1 - a) * clean[k] for k in clean}


class Subset(TileDataset):
    """Every ``every``-th tile of a val set: the sweep scores many blends."""

    def __init__(self, tiles: TileDataset, every: int) -> None:
        self.packed = tiles.packed
        self.index = list(range(0, len(tiles), every))
        self._tiles = tiles

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        return self._tiles[self.index[i]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--scale", type=int, required=True)
    ap.add_argument("--max-clean-loss", type=float, default=1.0, help="dB on clean LR (default: %(default)s)")
    ap.add_argument("--every", type=int, default=3, help="score every Nth val tile (default: %(default)s)")
    args = ap.parse_args()
    s = args.scale
    with loop.runtime() as rt:
        clean, _, _ = load_model(default_weights(s))
        tuned, _, info = load_model(args.work / f"runs/x{s}/best.pt")
        val = args.work / "data/packed/val.h5"
        sets = {name: Subset(TileDataset(val, s, kind), args.every)
                for name, kind in (("realistic", "realistic"), ("clean", "bicubic"))}  # fmt: skip
        sd_c, sd_v = clean.state_dict(), tuned.state_dict()
        rows = []
        for a in GRID:
            model, _, _ = load_model(default_weights(s))
            model.load_state_dict(interpolate(sd_v, sd_c, a))
            model.to(rt.device, memory_format=rt.memory_format)  # type: ignore[call-overload]
            scores = {name: loop.validate(model, tiles, s, rt)[0] for name, tiles in sets.items()}
            rows.append({"alpha": a, **scores})
            print(
                f"x{s} a={a:.1f}: realistic {scores['realistic']:.3f} dB, clean {scores['clean']:.3f} dB",
                flush=True,
            )
    floor = rows[0]["clean"] - args.max_clean_loss  # a = 0 is the clean weights themselves
    chosen = {
        "video": max((r for r in rows if r["clean"] >= floor), key=lambda r: r["realistic"])["alpha"],
        "dvd": max(rows, key=lambda r: r["realistic"])["alpha"],
    }
    step, data_hash = info.get("step"), info.get("data_hash")
    for name, a in chosen.items():
        blended, _, _ = load_model(default_weights(s))
        blended.load_state_dict(interpolate(sd_v, sd_c, a))
        dst = default_weights(s, name)
        source = f"{a:g} x {info.get('path')} + {1 - a:g} x {default_weights(s).name}"
        export_safetensors(blended, dst, source=source, step=step, data_hash=data_hash)
        print(f"x{s} {name}: a = {a:g} -> {dst}")
    record = {"chosen": chosen["video"], "dvd": chosen["dvd"], "max_clean_loss": args.max_clean_loss}
    write_json(args.work / f"blend_x{s}.json", {**record, "grid": rows})
    return 0


if __name__ == "__main__":
    with torch.inference_mode():
        raise SystemExit(main())
