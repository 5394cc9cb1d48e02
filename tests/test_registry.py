"""Registered models are usable by name: `--model models:/a2n-x2@candidate` loads our own A2N."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from remaster.config import ModelParams, TrainParams
from remaster.data.imaging import downscale
from remaster.engine.upscaler import Upscaler
from remaster.model_source import resolve_model
from remaster.tracking import MlflowTracker
from stages import train


def _pack(path: Path, seed: int, n: int) -> Path:
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("hr", data=hr)
        f.create_dataset("lr_x2", data=np.stack([downscale(t, 2) for t in hr]))
        f.attrs.update(manifest_hash=f"reg{seed}", scales=[2], kernel="matlab-bicubic-aa", tile_size=48)
    return path


def test_models_uri_resolves_to_the_registered_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = TrainParams(
        scale=2, iterations=2, batch_size=2, hr_crop=32, val_every=2, model=ModelParams(8, 8, 1)
    )
    train.run(
        params,
        _pack(tmp_path / "t.h5", 0, 4),
        _pack(tmp_path / "v.h5", 1, 2),
        tmp_path / "out",
        MlflowTracker(uri),
        metrics_path=tmp_path / "m.json",
        plots_dir=tmp_path / "plots",
        progress=False,
    )
    path = resolve_model("models:/a2n-x2@candidate", 2)
    assert path.name == "best.pt"
    up = Upscaler.load(str(path), 2, tile=0)
    ours = Upscaler.load(str(tmp_path / "out" / "best.pt"), 2, tile=0)
    x = torch.rand(1, 3, 12, 10)
    assert torch.equal(up(x), ours(x))
