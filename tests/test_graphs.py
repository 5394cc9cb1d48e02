"""CUDA graph replay (``--cuda-graphs``): refused with a clear message off a GPU, exact on one."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.a2n import A2N, A2NConfig
from models.checkpoint import save_checkpoint
from remaster.cli.upscale import main as upscale_main
from remaster.cli.video import add_settings, settings
from remaster.config import RemasterParams
from remaster.engine.cuda_graphs import GraphedForward
from remaster.engine.upscaler import Upscaler


def _checkpoint(tmp_path: Path, scale: int = 2) -> Path:
    torch.manual_seed(0)
    cfg = A2NConfig(scale=scale, n_feat=8, n_up_feat=8, n_blocks=2)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, A2N(cfg).eval(), cfg, step=1)
    return path


def test_cuda_graphs_are_refused_off_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint(tmp_path)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device, not cpu"):
        Upscaler.load(str(ckpt), 2, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device, not cpu"):
        GraphedForward(torch.device("cpu"))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    args = [str(tmp_path / "a.png"), "--scale", "2", "-o", str(tmp_path / "out"), "--model", str(ckpt)]
    code = upscale_main([*args, "--device", "cpu", "--cuda-graphs"])
    assert code == 2
    assert "remaster upscale: CUDA graphs need a CUDA device, not cpu" in capsys.readouterr().err
    assert not (tmp_path / "out" / "a.png").exists()


def test_cuda_graphs_need_the_torch_backend(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    with pytest.raises(ValueError, match="CUDA graphs need the torch backend"):
        Upscaler.load(str(ckpt), 2, device="cpu", backend="onnx", cuda_graphs=True)


def test_video_flag_sets_cuda_graphs_and_its_absence_keeps_params() -> None:
    parser = argparse.ArgumentParser()
    add_settings(parser)
    base = RemasterParams(cuda_graphs=True)
    assert settings(RemasterParams(), parser.parse_args(["--cuda-graphs"])).cuda_graphs is True
    assert settings(base, parser.parse_args([])).cuda_graphs is True  # params.yaml's value stays
    assert settings(RemasterParams(), parser.parse_args([])).cuda_graphs is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graph_replay_equals_eager_and_follows_new_inputs(tmp_path: Path, precision: str) -> None:
    ckpt = _checkpoint(tmp_path)
    eager = Upscaler.load(str(ckpt), 2, device="cuda", precision=precision, tile=0)
    graphed = Upscaler.load(str(ckpt), 2, device="cuda", precision=precision, tile=0, cuda_graphs=True)
    assert graphed._graphed is not None
    tol = 1e-5 if precision == "fp32" else 2e-2
    for _ in range(3):  # each replay sees its own frame, not the captured one
        x = torch.rand(2, 3, 37, 29)
        first = graphed(x)
        assert (first - eager(x)).abs().max() < tol
    assert graphed._graphed.captures == 1
    assert (graphed(x[:1]) - eager(x[:1])).abs().max() < tol  # a smaller batch: a second graph
    assert graphed._graphed.captures == 2
    held = graphed(x)
    graphed(torch.rand(2, 3, 37, 29))
    assert (held - eager(x)).abs().max() < tol  # a returned frame is not overwritten by the next replay
    graphed.tile = 16  # tiles: captured, or run eagerly with a warning; exact to rounding either way
    assert (graphed(x) - eager(x)).abs().max() < (1e-3 if precision == "fp32" else 5e-2)
