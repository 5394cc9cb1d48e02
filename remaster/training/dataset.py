"""Torch datasets over the packed HDF5 files written by ``stages.pack``.

Layout of a packed file: ``hr`` (N, T, T, 3) uint8 and ``lr_x{s}`` (N, T/s, T/s, 3) uint8,
one tile per chunk. Files are opened lazily, once per DataLoader worker (after the fork).

Training samples are addressed by a global sample number ``k`` rather than by tile: the
tile, the crop and the augmentation of sample ``k`` come from a generator seeded with
``(seed, k)``. A run that resumes at step ``t`` with batch ``B`` asks for samples from
``t * B`` on and sees exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


def lr_key(scale: int, kind: str = "bicubic") -> str:
    """The dataset that holds the LR of ``kind`` (bicubic or realistic) at ``scale``."""
    return f"lr_x{scale}" + ("_real" if kind == "realistic" else "")


class _Packed:
    def __init__(self, path: str | Path, scale: int, kind: str = "bicubic") -> None:
        self.path = Path(path)
        self.scale = scale
        self.key = lr_key(scale, kind)
        self._file: h5py.File | None = None
        with h5py.File(self.path, "r") as f:
            if f"lr_x{scale}" not in f:
                raise ValueError(f"{self.path} has no lr_x{scale}; packed scales: {list(f.attrs['scales'])}")
            if self.key not in f:
                raise ValueError(
                    f"{self.path} has no realistic LR ({self.key}): pack it with pack.degradation: realistic"
                )
            self.n = int(f["hr"].shape[0])
            self.tile = int(f["hr"].shape[1])
            self.attrs: dict[str, Any] = dict(f.attrs)

    def _open(self) -> h5py.File:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None  # h5py handles must not cross a fork
        return state

    def read(self, i: int, clean: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Tile ``i``'s (LR, HR); ``clean`` reads the bicubic LR whatever the kind."""
        f = self._open()
        return f[f"lr_x{self.scale}" if clean else self.key][i], f["hr"][i]


class PairDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random aligned LR/HR crops with flips and 90-degree rotations, deterministic per sample.

    With ``kind="realistic"`` a sample takes the degraded LR, or the clean one with probability
    ``clean_fraction``: the clean share keeps what the network knows of clean drawing.
    """

    def __init__(
        self,
        path: str | Path,
        scale: int,
        hr_crop: int = 256,
        augment: bool = True,
        seed: int = 0,
        length: int = 1 << 40,
        kind: str = "bicubic",
        clean_fraction: float = 0.0,
    ) -> None:
        if hr_crop % scale:
            raise ValueError(f"hr_crop {hr_crop} is not divisible by the scale {scale}")
        self.packed = _Packed(path, scale, kind)
        self.kind, self.clean_fraction = kind, clean_fraction
        if self.packed.n == 0:
            raise ValueError(f"{path} holds no tiles")
        if hr_crop > self.packed.tile:
            raise ValueError(f"hr_crop {hr_crop} is larger than the tiles ({self.packed.tile})")
        self.scale, self.hr_crop, self.augment, self.seed = scale, hr_crop, augment, seed
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, k])
        i = int(rng.integers(self.packed.n))
        # drawn last, and only for realistic runs: a bicubic run sees what it always saw
        clean = self.kind == "realistic" and bool(
            np.random.default_rng([self.seed, k, 1]).random() < self.clean_fraction
        )
        lr_tile, hr_tile = self.packed.read(i, clean=clean)
        s, lc = self.scale, self.hr_crop // self.scale
        y = int(rng.integers(lr_tile.shape[0] - lc + 1))
        x = int(rng.integers(lr_tile.shape[1] - lc + 1))
        lr = lr_tile[y : y + lc, x : x + lc]
        hr = hr_tile[y * s : (y + lc) * s, x * s : (x + lc) * s]
        if self.augment:
            hflip, vflip, rot = rng.random(3) < 0.5
            if hflip:
                lr, hr = lr[:, ::-1], hr[:, ::-1]
            if vflip:
                lr, hr = lr[::-1], hr[::-1]
            if rot:
                lr, hr = np.rot90(lr), np.rot90(hr)
        return _to_tensor(lr), _to_tensor(hr)


class TileDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Whole LR/HR tiles in order, for validation."""

    def __init__(self, path: str | Path, scale: int, kind: str = "bicubic") -> None:
        self.packed = _Packed(path, scale, kind)

    def __len__(self) -> int:
        return self.packed.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr = self.packed.read(i)
        return _to_tensor(lr), _to_tensor(hr)


class StepSampler(Sampler[int]):
    """Sample numbers for steps ``start..stop`` of a run; rank ``r`` of ``world`` takes its share."""

    def __init__(self, start: int, stop: int, batch: int, rank: int = 0, world: int = 1) -> None:
        self.start, self.stop, self.batch, self.rank, self.world = start, stop, batch, rank, world

    def __iter__(self):  # type: ignore[no-untyped-def]
        for step in range(self.start, self.stop):
            base = (step * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.batch
