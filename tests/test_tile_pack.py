"""tile -> pack -> dataset on generated images: counts by the formula, aligned pairs, atomic files."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from remaster.config import IngestParams, PackParams, TileParams
from remaster.data.imaging import downscale
from remaster.training.dataset import PairDataset, StepSampler, TileDataset
from stages import ingest, pack, tile
from stages.demo import write_images


def test_positions_cover_the_edges() -> None:
    assert tile.positions(1920, 480, 200) == [0, 200, 400, 600, 800, 1000, 1200, 1400, 1440]
    assert tile.positions(1080, 480, 200) == [0, 200, 400, 600]
    assert tile.positions(480, 480, 200) == [0]
    assert tile.positions(479, 480, 200) == []
    assert tile.tile_count(1920, 1080, 480, 200) == 36
    assert tile.tile_count(942, 879, 480, 200) == 4 * 3


def test_split_is_by_image_and_stable() -> None:
    hashes = [f"{i:04x}" for i in range(20)]
    val = tile.split_images(hashes, 0.2, seed=0)
    assert len(val) == 4
    grown = tile.split_images([*hashes, "ffff", "eeee", "dddd", "cccc", "bbbb"], 0.2, seed=0)
    assert len(grown) == 5 and len(val - grown) <= 1
    assert tile.split_images(hashes, 0.2, seed=1) != val
    assert tile.split_images(hashes[:1], 0.5, seed=0) == set()


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    write_images(root / "scrape", 5, seed=3, width=720, height=560)
    ing = ingest.run(IngestParams(min_side=500), root / "scrape", root / "ingested")
    assert ing["ok"] == 5
    tile.run(
        TileParams(size=240, stride=200, skip_flat=False, val_fraction=0.2), root / "ingested", root / "tiles"
    )
    pack.run(PackParams(scales=(2, 4)), root / "ingested", root / "tiles", root / "packed")
    return {"root": root, "train": root / "packed" / "train.h5", "val": root / "packed" / "val.h5"}


def test_tile_counts_match_the_formula(packed: dict[str, Path]) -> None:
    summary = json.loads((packed["root"] / "tiles" / "summary.json").read_text())
    per_image = tile.tile_count(720, 560, 240, 200)  # 4 x 3
    assert per_image == 12
    assert summary["tiles_train"] + summary["tiles_val"] == 5 * per_image
    assert summary["val_images"] == 1 and summary["tiles_val"] == per_image
    with open(packed["root"] / "tiles" / "tiles.csv") as f:
        rows = list(csv.DictReader(f))
    by_split: dict[str, set[str]] = {r["split"]: set() for r in rows}
    for r in rows:
        by_split[r["split"]].add(r["image"])
    assert not by_split["train"] & by_split["val"], "an image feeds both splits"


def test_pack_layout_and_lr_pairs(packed: dict[str, Path]) -> None:
    with h5py.File(packed["train"]) as f:
        n = f["hr"].shape[0]
        assert n == 48
        assert f["hr"].shape == (n, 240, 240, 3) and f["hr"].dtype == np.uint8
        assert f["lr_x2"].shape == (n, 120, 120, 3)
        assert f["lr_x4"].shape == (n, 60, 60, 3)
        assert f["hr"].chunks == (1, 240, 240, 3)
        assert f["hr"].compression is None
        assert list(f.attrs["scales"]) == [2, 4]
        assert f.attrs["kernel"] == "matlab-bicubic-aa"
        assert int(f.attrs["tile_size"]) == 240
        assert len(f.attrs["manifest_hash"]) == 20
        assert f.attrs["code_version"]
        hr = f["hr"][7]
        assert np.array_equal(f["lr_x4"][7], downscale(hr, 4))
        x, y = f["xy"][7]
        digest = f["image"][7].decode()
    from PIL import Image

    with Image.open(packed["root"] / "ingested" / "images" / f"{digest}.png") as im:
        src = np.asarray(im)
    assert np.array_equal(src[y : y + 240, x : x + 240], hr)


def test_pack_hash_follows_the_data(packed: dict[str, Path], tmp_path: Path) -> None:
    with h5py.File(packed["train"]) as f:
        before = f.attrs["manifest_hash"]
    other = pack.data_hash(packed["root"] / "tiles" / "tiles.csv", (2,))
    assert other != before


def _pack_forever(root: str) -> None:  # pragma: no cover - killed by the test
    r = Path(root)
    pack.run(PackParams(scales=(2, 4)), r / "ingested", r / "tiles", r / "killed")


def test_killed_pack_leaves_no_file(packed: dict[str, Path]) -> None:
    root = packed["root"]
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_pack_forever, args=(str(root),))
    proc.start()
    deadline = time.time() + 60
    while time.time() < deadline and not any((root / "killed").glob(".train.h5.tmp-*")):
        time.sleep(0.02)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert not (root / "killed" / "train.h5").exists()
    assert not (root / "killed" / "val.h5").exists()


def test_dataset_crops_are_aligned_and_deterministic(packed: dict[str, Path]) -> None:
    ds = PairDataset(packed["train"], scale=4, hr_crop=96, seed=5)
    lr, hr = ds[11]
    assert lr.shape == (3, 24, 24) and hr.shape == (3, 96, 96)
    assert lr.dtype == torch.float32 and float(lr.min()) >= 0 and float(hr.max()) <= 1
    lr2, hr2 = PairDataset(packed["train"], scale=4, hr_crop=96, seed=5)[11]
    assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
    assert not torch.equal(PairDataset(packed["train"], scale=4, hr_crop=96, seed=6)[11][1], hr)
    # Aligned: the HR crop shrunk by the same kernel is close to the LR crop (not equal:
    # the crop's border sees a different neighbourhood than inside the tile).
    hr_u8 = (hr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    lr_u8 = (lr.permute(1, 2, 0).numpy() * 255).round().astype(np.int32)
    inner = np.abs(downscale(hr_u8, 4).astype(np.int32) - lr_u8)[2:-2, 2:-2]
    assert inner.mean() < 1.0


def test_augmentations_all_occur(packed: dict[str, Path]) -> None:
    ds = PairDataset(packed["train"], scale=2, hr_crop=64, seed=0)
    plain = PairDataset(packed["train"], scale=2, hr_crop=64, seed=0, augment=False)
    differs = sum(not torch.equal(ds[k][1], plain[k][1]) for k in range(64))
    assert 40 <= differs <= 64  # each of 3 flips at p=0.5: 7 in 8 samples change


def test_val_tiles_and_step_sampler(packed: dict[str, Path]) -> None:
    val = TileDataset(packed["val"], scale=2)
    assert len(val) == 12
    lr, hr = val[0]
    assert lr.shape == (3, 120, 120) and hr.shape == (3, 240, 240)
    assert list(StepSampler(2, 4, batch=3)) == [6, 7, 8, 9, 10, 11]
    ranks = [list(StepSampler(0, 2, batch=2, rank=r, world=2)) for r in range(2)]
    assert ranks == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_dataset_errors(packed: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="not divisible"):
        PairDataset(packed["train"], scale=4, hr_crop=98)
    with pytest.raises(ValueError, match="has no lr_x3"):
        PairDataset(packed["train"], scale=3, hr_crop=96)


@pytest.mark.slow
def test_shared_anime_images_end_to_end(shared: Path, tmp_path: Path) -> None:
    """The real scrape: with min_side 700 every 1920x1080 image gives 36 tiles, and so on."""
    from PIL import Image

    src = shared / "data" / "anime_hr"
    ing = ingest.run(IngestParams(min_side=700), src, tmp_path / "ingested")
    m = {}
    with open(tmp_path / "ingested" / "manifest.csv", newline="") as f:
        m = {r["source"]: r for r in csv.DictReader(f)}
    assert m["MANIFEST.tsv"]["status"] == "skipped"
    expected = 0
    for name, row in m.items():
        if name.endswith((".jpg", ".png")):
            assert row["status"] == "ok", row
            with Image.open(src / name) as im:
                assert (int(row["width"]), int(row["height"])) == im.size
            expected += tile.tile_count(*im.size, 480, 200)
    assert ing["ok"] == 11
    t = tile.run(TileParams(skip_flat=False), tmp_path / "ingested", tmp_path / "tiles")
    assert t["tiles_train"] + t["tiles_val"] == expected == 345
    pack.run(
        PackParams(scales=(2, 4)),
        tmp_path / "ingested",
        tmp_path / "tiles",
        tmp_path / "packed",
        progress=False,
    )
    with h5py.File(tmp_path / "packed" / "train.h5") as ftr, h5py.File(tmp_path / "packed" / "val.h5") as fva:
        assert ftr["hr"].shape[0] + fva["hr"].shape[0] == 345
        assert ftr["lr_x2"].shape[1:] == (240, 240, 3)


def test_split_keeps_each_video_on_one_side(tmp_path: Path) -> None:
    """Frames mined from one video share their scenes: they go to train or to val together."""
    from dataclasses import asdict

    from PIL import Image

    ingested = tmp_path / "ingested"
    (ingested / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        video = f"ep{i % 3}.mkv" if i < 12 else ""  # 3 videos of 4 frames, and 4 images
        pixels = rng.integers(0, 256, (240, 240, 3), dtype=np.uint8)
        digest = f"{i:020x}"
        Image.fromarray(pixels).save(ingested / "images" / f"{digest}.png")
        source = f"{video}#pts={i}" if video else f"img{i}.png"
        rows.append(ingest.Record(source, digest, 240, 240, "ok", video=video, pts=i if video else None))
    with open(ingested / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=ingest.COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    videos_in_val = 0
    for seed in range(8):
        out = tmp_path / f"tiles{seed}"
        summary = tile.run(TileParams(size=240, stride=240, val_fraction=0.3, seed=seed), ingested, out)
        assert (summary["groups"], summary["val_groups"]) == (7, 2)  # 3 videos and 4 images
        with open(out / "tiles.csv") as f:
            split_of = {r["image"]: r["split"] for r in csv.DictReader(f)}
        for v in range(3):
            sides = {split_of[r.hash] for r in rows if r.video == f"ep{v}.mkv"}
            assert len(sides) == 1, f"ep{v}.mkv feeds {sides}"
            videos_in_val += sides == {"val"}
        val_images = sum(split_of[r.hash] == "val" for r in rows)
        assert summary["val_images"] == val_images
    assert videos_in_val > 0
