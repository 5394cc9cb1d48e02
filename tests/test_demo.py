"""Behaviour of the procedural demo-data generator (stages.demo)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from stages import demo

# Small sizes keep the suite fast; the drawing code is resolution independent.
W, H = 320, 256


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def _dhash(img: Image.Image) -> np.ndarray:
    g = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BILINEAR), np.int16)
    return (g[:, 1:] > g[:, :-1]).ravel()


def _top_colour_share(a: np.ndarray, k: int = 32) -> float:
    _, counts = np.unique(a.reshape(-1, 3), axis=0, return_counts=True)
    return float(np.sort(counts)[::-1][:k].sum() / counts.sum())


def _dark_share(a: np.ndarray) -> float:
    luma = a.reshape(-1, 3) @ np.array([0.299, 0.587, 0.114])
    return float((luma < 40).mean())


def _looks_like_anime(a: np.ndarray) -> bool:
    # flat cel regions (few colours cover much of the frame) and inked outlines
    return _top_colour_share(a) > 0.3 and _dark_share(a) > 0.01


def test_same_seed_same_pixels() -> None:
    a, b = demo.generate_image(7, W, H), demo.generate_image(7, W, H)
    assert a.tobytes() == b.tobytes()


def test_different_seeds_differ_a_lot() -> None:
    imgs = [demo.generate_image(s, W, H) for s in range(6)]
    hashes = [_dhash(im) for im in imgs]
    for i in range(len(imgs)):
        for j in range(i):
            mad = np.abs(_pixels(imgs[i]) - _pixels(imgs[j])).mean()
            assert mad > 30, (i, j, mad)
            # a perceptual hash must tell them apart, or dedup would drop the demo set
            assert (hashes[i] != hashes[j]).sum() >= 10, (i, j)


def test_size_and_mode() -> None:
    img = demo.generate_image(0, 200, 150)
    assert img.size == (200, 150)
    assert img.mode == "RGB"


@pytest.mark.parametrize("seed", range(4))
def test_image_is_anime_like(seed: int) -> None:
    assert _looks_like_anime(np.asarray(demo.generate_image(seed, W, H)))


def test_anime_check_rejects_noise() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert not _looks_like_anime(noise)


def test_edges_are_antialiased() -> None:
    # supersampled drawing leaves intermediate tones, not just the palette colours
    _, counts = np.unique(np.asarray(demo.generate_image(3, W, H)).reshape(-1, 3), axis=0, return_counts=True)
    assert len(counts) > 500


def test_write_images(tmp_path: Path) -> None:
    out = tmp_path / "scrape" / "nested"
    paths = demo.write_images(out, 3, seed=5, width=96, height=64)
    assert [p.name for p in paths] == ["demo_000.png", "demo_001.png", "demo_002.png"]
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in paths]  # no temp files
    first = [p.read_bytes() for p in paths]
    with Image.open(paths[1]) as im:
        assert im.size == (96, 64)
        assert im.tobytes() == demo.generate_image(6, 96, 64).tobytes()  # seed + i

    again = demo.write_images(out, 3, seed=5, width=96, height=64)
    assert again == paths
    assert [p.read_bytes() for p in again] == first
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in paths]


def test_write_images_jpeg(tmp_path: Path) -> None:
    (path,) = demo.write_images(tmp_path, 1, width=64, height=48, fmt="jpg")
    assert path.name == "demo_000.jpg"
    with Image.open(path) as im:
        assert im.format == "JPEG"


def test_write_images_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        demo.write_images(tmp_path, 1, width=32, height=32, fmt="xyz")


def _probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    info: dict[str, Any] = json.loads(out)
    return info


def test_write_clip(tmp_path: Path) -> None:
    path = demo.write_clip(tmp_path / "ep01.mp4", seconds=1.0, fps=25, width=160, height=120)
    assert path == tmp_path / "ep01.mp4"
    assert [p.name for p in tmp_path.iterdir()] == ["ep01.mp4"]
    info = _probe(path)
    video = [s for s in info["streams"] if s["codec_type"] == "video"]
    audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
    assert len(video) == 1 and len(audio) == 1
    v = video[0]
    assert v["codec_name"] == "h264"
    assert v["pix_fmt"] == "yuv420p"
    assert (v["width"], v["height"]) == (160, 120)
    assert v["r_frame_rate"] == "25/1"
    assert int(v["nb_read_frames"]) == 25
    assert audio[0]["codec_name"] == "aac"
    assert abs(float(info["format"]["duration"]) - 1.0) < 0.1


def test_write_clip_is_reproducible_and_animated(tmp_path: Path) -> None:
    a = demo.write_clip(tmp_path / "a.mkv", seconds=0.4, width=96, height=64, seed=3)
    b = demo.write_clip(tmp_path / "b.mkv", seconds=0.4, width=96, height=64, seed=3)
    assert a.read_bytes() == b.read_bytes()
    assert _probe(a)["format"]["format_name"] == "matroska,webm"
    frames = list(demo._frames(0.4, 25, 96, 64, seed=3))
    assert len(frames) == 10 and len(set(frames)) == 10  # something moves every frame


def test_write_clip_failure_leaves_nothing(tmp_path: Path) -> None:
    # yuv420p needs even dimensions, so libx264 refuses an odd width
    with pytest.raises(RuntimeError, match="ffmpeg failed"):
        demo.write_clip(tmp_path / "bad.mp4", seconds=0.2, width=161, height=120)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    rc = demo.main(
        [
            "--params",
            str(tmp_path / "none.yaml"),
            "-o",
            str(tmp_path / "imgs"),
            "-S",
            "demo.n_images=2",
            "-S",
            "demo.width=64",
            "-S",
            "demo.height=48",
            "--clip",
            str(tmp_path / "c.mp4"),
            "-S",
            "demo.clip_seconds=0.2",
        ]
    )
    assert rc == 0
    names = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    assert names == ["demo_000.png", "demo_001.png"]
    assert (tmp_path / "c.mp4").stat().st_size > 0
