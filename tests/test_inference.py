"""The shared inference engine: exact tiling, batching, precision, model resolution, ONNX."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.a2n import A2N, A2NConfig, fuse_for_inference
from models.checkpoint import load_model, save_checkpoint
from remaster.data.imaging import bicubic_upscale, imresize, modcrop
from remaster.engine import upscaler
from remaster.engine.tiling import Lanes, _bands, a2n_tiled_forward, shared_lanes, tiled_forward
from remaster.engine.upscaler import (
    CPU_TILE,
    Upscaler,
    auto_tile,
    pick_precision,
    resolve_model_path,
)
from remaster.evaluation.metrics import psnr_y

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(2)


def _tiny(scale: int, n_blocks: int = 2, seed: int = 0) -> A2N:
    """A small random A2N whose ADM is sharp enough that naive tiles visibly differ."""
    torch.manual_seed(seed)
    model = A2N(A2NConfig(scale=scale, n_feat=8, n_up_feat=8, n_blocks=n_blocks)).eval()
    with torch.no_grad():
        for block in model.AAB_trunk:
            block.ADM[2].weight.mul_(200.0)  # type: ignore[index]
    return model


def test_tiles_cover_every_pixel_once_weighted() -> None:
    identity_x2 = lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    x = torch.rand(2, 3, 37, 51)
    out = tiled_forward(identity_x2, x, 2, tile=16, overlap=4)
    assert out.shape == (2, 3, 74, 102)
    assert torch.allclose(out, identity_x2(x), atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_tiled_equals_whole_for_odd_sizes(scale: int) -> None:
    model = _tiny(scale)
    x = torch.rand(2, 3, 37, 29)
    with torch.inference_mode():
        whole = model(x)  # (2, 3, 37*s, 29*s)
        naive = tiled_forward(model, x, scale, tile=16, overlap=4)
        assert (naive - whole).abs().max() > 1e-3  # the ADM's global pooling defeats plain tiles
        fused = fuse_for_inference(model)  # the engine's model: the same function, faster
        for tile in (8, 13, 16, 30):  # bands shorter than, equal to and longer than the halos
            for net, lanes in ((model, None), (fused, None), (fused, shared_lanes(2))):
                tiled = a2n_tiled_forward(net, x, tile, lanes=lanes)
                assert tiled.shape == whole.shape
                assert (tiled - whole).abs().max() < 1e-3, (tile, lanes)


def test_bands_are_near_equal_and_fill_the_lanes() -> None:
    assert _bands(576, 192) == [(0, 192), (192, 384), (384, 576)]
    assert _bands(576, 192, multiple=2) == [(0, 144), (144, 288), (288, 432), (432, 576)]
    assert _bands(37, 16, multiple=2) == [(0, 9), (9, 18), (18, 28), (28, 37)]  # 3 rounded up to 4
    assert _bands(30, 16, multiple=4) == [(0, 15), (15, 30)]  # 4 bands would be under 8 px
    assert _bands(40, 8, multiple=2) == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40)]  # never > tile
    assert _bands(12, 16, multiple=4) == [(0, 12)]  # too short to split into 8 px bands


def test_lanes_run_single_core_threads_and_carry_the_callers_modes() -> None:
    before = torch.get_num_threads()  # other test modules set their own at import
    torch.set_num_threads(2)
    lanes = Lanes(2)
    try:
        assert torch.get_num_threads() == 2  # the caller keeps its threads
        assert lanes.map(lambda _: torch.get_num_threads(), range(4)) == [1, 1, 1, 1]
        later: list[int] = []
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert later == [2]  # and so do threads started afterwards
        with torch.inference_mode():
            assert lanes.map(lambda _: torch.is_inference_mode_enabled(), range(2)) == [True, True]
        assert lanes.map(lambda i: i * i, range(5)) == [0, 1, 4, 9, 16]  # in order
        nested = lanes.map(lambda i: lanes.map(lambda j: i * j, range(3)), range(4))  # no deadlock
        assert nested == [[0, 0, 0], [0, 1, 2], [0, 2, 4], [0, 3, 6]]
        with pytest.raises(ZeroDivisionError):
            lanes.map(lambda i: 1 // i, [1, 0])
    finally:
        lanes.close()
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="at least 2 threads"):
        Lanes(1)


def _abs_on_lanes(values: list[int]) -> list[int]:
    lanes = shared_lanes(2)
    assert lanes is not None
    return lanes.map(abs, values)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_gets_working_lanes() -> None:
    assert _abs_on_lanes([-1]) == [1]  # the parent's pool exists, with its threads
    with multiprocessing.get_context("fork").Pool(1) as pool:  # the child inherits it, threads not
        assert pool.apply_async(_abs_on_lanes, ([-1, -2, 3],)).get(timeout=60) == [1, 2, 3]


def test_tiled_equals_whole_on_the_published_weights(shared: Path) -> None:
    model, _, _ = load_model(shared / "refs/a2n/aan_x2.pt", scale=2)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    hr = np.asarray(Image.open(shared / "refs/benchmarks/Set5/HR/baby.png").convert("RGB"))
    lr = imresize(hr[100:302, 150:328], 0.5)  # (101, 89, 3): odd sides
    x = (
        torch.from_numpy(lr)
        .permute(2, 0, 1)[None]
        .float()
        .div(255)
        .contiguous(memory_format=torch.channels_last)
    )
    with torch.inference_mode():
        whole = model(x)
        tiled = a2n_tiled_forward(model, x, 40)
    assert (tiled - whole).abs().max() < 1e-3


def test_upscaler_tiles_large_inputs_exactly(tmp_path: Path) -> None:
    model = _tiny(2)
    cfg = model.config
    save_checkpoint(tmp_path / "tiny.pt", model, cfg, step=1)
    up = Upscaler.load(str(tmp_path / "tiny.pt"), 2, tile=0)
    img = np.random.default_rng(0).integers(0, 256, (45, 33, 3), dtype=np.uint8)
    whole = up.upscale_image(img)
    up.tile = 16
    tiled = up.upscale_image(img)
    assert tiled.shape == (90, 66, 3)
    assert np.abs(tiled.astype(int) - whole).max() <= 1  # rounding of values within 1e-3


def test_frames_are_batched_and_quantised(tmp_path: Path) -> None:
    cfg = A2NConfig(scale=4, n_feat=8, n_up_feat=8, n_blocks=1)
    save_checkpoint(tmp_path / "tiny.pt", A2N(cfg), cfg, step=3)
    up = Upscaler.load(str(tmp_path / "tiny.pt"), 4, tile=0)
    frames = np.random.default_rng(0).integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
    out = up.upscale_frames(frames)
    assert out.shape == (3, 40, 48, 3) and out.dtype == np.uint8
    assert np.array_equal(out[1], up.upscale_image(frames[1]))
    up.tile = 24  # small frames share a batch up to one tile's worth of pixels
    assert up.frames_per_batch(10, 12) == 4 and up.frames_per_batch(100, 100) == 1
    assert np.array_equal(up.upscale_frames(frames), out)
    with pytest.raises(ValueError, match="checkpoint is x4, asked for x2"):
        Upscaler.load(str(tmp_path / "tiny.pt"), 2)


def test_model_resolution_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing.pt"), 2)
    with pytest.raises(FileNotFoundError, match="no shipped clean weights for x3"):
        resolve_model_path(None, 3)


FAULTS_PER_BLOCK = """
import resource, sys, torch
from models.a2n import A2N, A2NConfig
from remaster.engine.cpu import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
torch.set_num_threads(2)
block = A2N(A2NConfig(scale=2, n_blocks=1)).eval().AAB_trunk[0]
x = torch.rand(1, 40, 148, 196)  # one CPU tile of a 576x432 frame, with its halo
faults = []
with torch.inference_mode():
    block(x)
    block(x)
    for _ in range(9):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[4])  # the median call: an odd call that grows the heap does not decide it
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_cpu_inference_reuses_freed_memory_without_page_faults() -> None:
    faults = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", FAULTS_PER_BLOCK, mode],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for mode in ("default", "tuned")
    }
    assert faults["default"] > 2000  # glibc maps and zeroes fresh pages for each new activation
    assert faults["tuned"] * 20 < faults["default"], faults  # at least 95% of them gone


def test_auto_tile_fits_the_budget() -> None:
    cfg = A2NConfig(scale=4)
    side = auto_tile(cfg, torch.device("cpu"), budget_bytes=1 << 30)
    assert 64 <= side <= 1024 and side % 8 == 0
    assert auto_tile(cfg, torch.device("cpu"), budget_bytes=1 << 20) == 64
    assert auto_tile(cfg, torch.device("cpu")) <= CPU_TILE  # cache-sized by default


def test_auto_precision_is_fp32_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(upscaler, "cpu_has_bf16", lambda: False)
    assert pick_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(upscaler, "cpu_has_bf16", lambda: True)
    assert pick_precision("auto", cpu) == "bf16"
    assert pick_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        pick_precision("int8", cpu)


def test_bf16_stays_within_0p02_db_of_fp32(shared: Path) -> None:
    # butterfly is the Set5 image where bf16 strays most (-0.011 dB; the others within 0.001)
    hr = modcrop(np.asarray(Image.open(shared / "refs/benchmarks/Set5/HR/butterfly.png").convert("RGB")), 2)
    lr = imresize(hr, 0.5)  # (128, 128, 3)
    scores = {}
    for precision in ("fp32", "bf16"):
        up = Upscaler.load(str(shared / "refs/a2n/aan_x2.pt"), 2, tile=0, precision=precision)
        scores[precision] = psnr_y(up.upscale_image(lr), hr, 2)
    assert abs(scores["bf16"] - scores["fp32"]) < 0.02


def test_out_of_memory_retries_with_smaller_tiles() -> None:
    calls: list[int] = []

    def fussy(x: torch.Tensor) -> torch.Tensor:  # a model that fits only 80 px tiles
        calls.append(x.shape[-1])
        if max(x.shape[-2:]) > 80:
            raise torch.cuda.OutOfMemoryError("fake")
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    up = Upscaler(fussy, A2NConfig(scale=2), torch.device("cpu"), tile=0, overlap=8)
    x = torch.rand(1, 3, 130, 100)
    assert torch.allclose(up(x), torch.nn.functional.interpolate(x, scale_factor=2), atol=1e-6)
    assert calls[0] == 100 and max(calls[1:]) <= 65


def test_non_finite_low_precision_output_is_recomputed_in_fp32() -> None:
    def flaky(x: torch.Tensor) -> torch.Tensor:  # overflows under autocast only
        y = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        return y * float("inf") if torch.is_autocast_enabled("cpu") else y

    up = Upscaler(flaky, A2NConfig(scale=2), torch.device("cpu"), precision="bf16")
    out = up(torch.full((1, 3, 4, 4), 0.5))
    assert torch.isfinite(out).all() and torch.allclose(out, torch.full_like(out, 0.5))


def test_bicubic_baseline_is_matlab_style() -> None:
    img = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    up = bicubic_upscale(img, 2)
    assert up.shape == (18, 14, 3) and up.dtype == np.uint8
    assert np.array_equal(up, imresize(img, 2.0))


def test_onnx_export_matches_torch_and_serves_as_a_backend(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from remaster.cli.main import main as cli
    from remaster.engine.onnx import OnnxModel

    model = _tiny(4, n_blocks=1)
    save_checkpoint(tmp_path / "tiny.pt", model, model.config, step=1)
    assert cli(["export", "--format", "onnx", "--scale", "4", "--model", str(tmp_path / "tiny.pt"),
                "-o", str(tmp_path / "tiny.onnx")]) == 0  # fmt: skip
    runner = OnnxModel(tmp_path / "tiny.onnx", torch.device("cpu"))
    assert runner.config == model.config
    x = torch.rand(2, 3, 23, 17)
    with torch.inference_mode():
        assert (runner(x) - model(x)).abs().max() < 1e-4
    up = Upscaler.load(str(tmp_path / "tiny.onnx"), 4)
    assert up.backend == "onnx" and up.tile == 0  # whole frames: ORT cannot tile exactly
    frames = np.random.default_rng(2).integers(0, 256, (2, 9, 11, 3), dtype=np.uint8)
    ref = Upscaler.load(str(tmp_path / "tiny.pt"), 4, tile=0).upscale_frames(frames)
    assert np.abs(up.upscale_frames(frames).astype(int) - ref).max() <= 1
    on_the_fly = Upscaler.load(str(tmp_path / "tiny.pt"), 4, backend="onnx")
    assert on_the_fly.backend == "onnx" and np.array_equal(
        on_the_fly.upscale_frames(frames), up.upscale_frames(frames)
    )
    with pytest.raises(ValueError, match="x4 model, not x2"):
        Upscaler.load(str(tmp_path / "tiny.onnx"), 2)


def test_safetensors_export_reloads_bit_for_bit_with_its_provenance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors import safe_open

    from remaster.cli.main import main as cli

    model = _tiny(2, n_blocks=1)
    save_checkpoint(tmp_path / "run.pt", model, model.config, step=7, data_hash="abc123")
    out = tmp_path / "weights/a2n_x2.safetensors"
    assert cli(["export", "--format", "safetensors", "--scale", "2", "--model", str(tmp_path / "run.pt"),
                "-o", str(out)]) == 0  # fmt: skip
    again, cfg, info = load_model(out)
    assert cfg == model.config and info["source"] == "safetensors"
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["step"] == "7" and meta["data_hash"] == "abc123"
    assert meta["source"].startswith("run.pt sha256:")
    before = out.read_bytes()
    argv = ["export", "--format", "safetensors", "--scale", "4", "--model", str(out), "-o", str(out)]
    assert cli(argv) == 2
    assert "x2 model, not x4" in capsys.readouterr().err and out.read_bytes() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_tiles_exactly_and_autocasts(tmp_path: Path) -> None:
    model = _tiny(2)
    save_checkpoint(tmp_path / "tiny.pt", model, model.config, step=1)
    up = Upscaler.load(str(tmp_path / "tiny.pt"), 2, device="cuda", precision="fp32", tile=0)
    x = torch.rand(2, 3, 67, 45)
    whole = up(x)
    up.tile = 24
    assert (up(x) - whole).abs().max() < 1e-3
    up.precision = "bf16"
    assert up.precision == "bf16" and torch.isfinite(up(x)).all()
