"""``remaster upscale`` on a mixed folder: alpha, 16 bits, JPEG, greyscale and a corrupt file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.a2n import A2N, A2NConfig
from models.checkpoint import save_checkpoint
from remaster.cli.main import main as cli
from remaster.data.pictures import Picture, read_picture, write_png16
from remaster.engine.pictures import plan, upscale_picture

torch.set_num_threads(2)
RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = A2NConfig(scale=2, n_feat=8, n_up_feat=8, n_blocks=1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, A2N(cfg), cfg, step=1)
    return path


def _mixed_folder(root: Path) -> Path:
    src = root / "in"
    (src / "sub").mkdir(parents=True)
    rgba = RNG.integers(0, 256, (12, 10, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 10, dtype=np.uint8)[None, :]  # a gradient of alpha
    Image.fromarray(rgba).save(src / "sub" / "sprite.png")
    write_png16(src / "deep.png", RNG.integers(0, 65536, (9, 11, 3), dtype=np.uint16))
    Image.fromarray(RNG.integers(0, 256, (8, 14, 3), dtype=np.uint8)).save(src / "photo.jpg", quality=90)
    Image.fromarray(RNG.integers(0, 256, (7, 9), dtype=np.uint8)).save(src / "grey.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (src / "readme.txt").write_text("not an image")
    return src


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode() + (p.read_bytes() if p.is_file() else b""))
    return h.hexdigest()


def test_mixed_folder_keeps_alpha_depth_and_goes_on_past_a_bad_file(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _mixed_folder(tmp_path)
    before = _digest(src)
    out = tmp_path / "out"
    args = ["upscale", str(src), "--scale", "2", "-o", str(out), "--model", str(tiny)]
    assert cli(args) == 1
    report = capsys.readouterr().out
    assert "upscaled 4, skipped 0, failed 1" in report and "FAILED" in report and "broken.png" in report

    with Image.open(out / "sub" / "sprite.png") as im:
        assert (im.mode, im.size) == ("RGBA", (20, 24))
        alpha = np.asarray(im)[..., 3].astype(int)
    assert alpha[:, 0].max() < 40 and alpha[:, -1].min() > 215  # the alpha gradient survives
    deep = read_picture(out / "deep.png")
    assert deep.pixels.shape == (18, 22, 3) and deep.pixels.dtype == np.uint16
    assert np.any(deep.pixels % 257)  # 16-bit values, not 8-bit ones widened
    with Image.open(out / "photo.png") as im:
        assert (im.mode, im.size) == ("RGB", (28, 16))
    with Image.open(out / "grey.png") as im:
        assert (im.mode, im.size) == ("L", (18, 14))
    assert not (out / "broken.png").exists() and not (out / "readme.png").exists()
    assert not [p for p in out.rglob(".*")]  # no temporary files left behind
    assert _digest(src) == before  # inputs only read

    mtime = (out / "photo.png").stat().st_mtime_ns
    assert cli(args) == 1  # the corrupt file still fails; the rest exist and are skipped
    assert "upscaled 0, skipped 4, failed 1" in capsys.readouterr().out
    assert (out / "photo.png").stat().st_mtime_ns == mtime
    assert cli([*args, "--overwrite"]) == 1
    assert "upscaled 4, skipped 0, failed 1" in capsys.readouterr().out

    good = tmp_path / "good"
    good.mkdir()
    (src / "photo.jpg").rename(good / "photo.jpg")
    assert cli(["upscale", str(good), "--scale", "2", "-o", str(out / "g"), "--model", str(tiny)]) == 0


def test_formats_quality_and_alpha_modes(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _mixed_folder(tmp_path)
    (src / "broken.png").unlink()
    common = ["--scale", "2", "--model", str(tiny), "--quality", "80"]
    assert (
        cli(
            [
                "upscale",
                str(src / "sub" / "sprite.png"),
                "-o",
                str(tmp_path / "j"),
                "--format",
                "jpg",
                *common,
            ]
        )
        == 0
    )
    assert "composited over white" in capsys.readouterr().out
    with Image.open(tmp_path / "j" / "sprite.jpg") as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (20, 24))
    assert (
        cli(
            [
                "upscale",
                str(src),
                "-o",
                str(tmp_path / "w"),
                "--format",
                "webp",
                "--alpha",
                "bicubic",
                *common,
            ]
        )
        == 0
    )
    assert "16-bit written as 8-bit webp" in capsys.readouterr().out
    with Image.open(tmp_path / "w" / "sub" / "sprite.webp") as im:
        assert (im.format, im.mode, im.size) == ("WEBP", "RGBA", (20, 24))
    before = (src / "grey.png").read_bytes()
    assert cli(["upscale", str(src), "-o", str(src), *common]) == 2  # into the input folder: refused
    assert cli(["upscale", str(src / "grey.png"), "-o", str(src), "--overwrite", *common]) == 1
    assert "would replace the input" in capsys.readouterr().out
    assert (src / "grey.png").read_bytes() == before


def test_png16_round_trip_and_constant_alpha(tmp_path: Path) -> None:
    for channels in (1, 2, 3, 4):
        px = RNG.integers(0, 65536, (5, 7, channels), dtype=np.uint16)
        write_png16(tmp_path / f"c{channels}.png", px, icc=b"fake profile")
        back = read_picture(tmp_path / f"c{channels}.png")
        assert np.array_equal(back.pixels, px) and back.icc == b"fake profile"

    class Double:  # nearest x2 stands in for the model
        scale = 2

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    px = np.dstack([RNG.integers(0, 256, (4, 4, 3)), np.full((4, 4), 200)]).astype(np.uint8)
    out = upscale_picture(Double(), Picture(px))  # type: ignore[arg-type]
    assert out.pixels.shape == (8, 8, 4) and (out.pixels[..., 3] == 200).all()
    assert np.array_equal(out.pixels[::2, ::2, :3], px[..., :3])


def test_plan_mirrors_folders_and_avoids_clashes(tmp_path: Path) -> None:
    src = tmp_path / "pics"
    (src / "a").mkdir(parents=True)
    for name in ("a/x.jpg", "a/x.png", "y.webp", ".hidden.png"):
        (src / name).write_bytes(b"")
    (src / "up").mkdir()
    (src / "up" / "old.png").write_bytes(b"")  # a previous run's output inside the input folder
    jobs, missing = plan([src, tmp_path / "nope.png"], src / "up", "png")
    got = {j.src.relative_to(src).as_posix(): j.dst.relative_to(src / "up").as_posix() for j in jobs}
    assert got == {"a/x.jpg": "a/x.jpg.png", "a/x.png": "a/x.png.png", "y.webp": "y.png"}
    assert missing == [(str(tmp_path / "nope.png"), "does not exist")]
