"""Helpers for ``stages.train``: devices and DDP, resuming, loss and validation.

Nothing here keeps state between calls; ``stages.train.run`` reads top to bottom and calls in.
The history files and pictures are in ``remaster.training.report``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.distributed as dist

from models.a2n import A2N, A2NConfig
from models.checkpoint import load_body, load_model, read_checkpoint
from remaster.config import TrainParams, as_dict
from remaster.data.imaging import bicubic_upscale
from remaster.engine.cpu import keep_freed_memory
from remaster.evaluation.metrics import psnr_y_torch, ssim_y_torch
from remaster.files import sha256_file
from remaster.training.dataset import TileDataset

log = logging.getLogger(__name__)

CPU_BF16_ENV = "REMASTER_CPU_BF16"
VAL_BATCH = 4  # whole val tiles per forward pass


# --- devices ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where this process trains: its device, precision and place in a DDP group."""

    device: torch.device
    bf16: bool  # bf16 autocast (always on GPU; on CPU only with REMASTER_CPU_BF16=1)
    channels_last: bool  # model and batches in NHWC memory order
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def precision(self) -> str:
        return ("bf16 autocast" if self.bf16 else "fp32") + (" channels_last" if self.channels_last else "")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def __str__(self) -> str:
        group = f", rank {self.rank} of {self.world}" if self.world > 1 else ""
        return f"{self.device} ({self.precision}{group})"

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def runtime() -> Iterator[Runtime]:
    """CUDA if there is one, else the CPU; a DDP group when torchrun set WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        bf16 = channels_last = True
    else:
        device = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        # every core, shared among this machine's ranks, unless OMP_NUM_THREADS says otherwise
        threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_world))
        keep_freed_memory()  # no page faults for each new activation (see remaster.engine.cpu)
        # channels_last: 1.5x faster fp32 training here (benchmarks/train_throughput.py)
        bf16, channels_last = os.environ.get(CPU_BF16_ENV, "") == "1", True
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield Runtime(device, bf16, channels_last, rank, world)
    finally:
        if owns_group:
            dist.destroy_process_group()


# --- configuration and resuming ------------------------------------------------------------

# Keys that do not change what the run computes step by step: a last.pt saved under other
# values still resumes (a step-schedule run can be extended by raising `iterations`).
_NOT_HPARAMS = ("iterations", "val_every", "workers")


def model_config(p: TrainParams) -> A2NConfig:
    m = p.model
    return A2NConfig(
        scale=p.scale,
        n_feat=m.n_feat,
        n_up_feat=m.n_up_feat,
        n_blocks=m.n_blocks,
        non_attention_kernel=1 if m.a2n_m else 3,
    )


def data_hash(path: Path) -> str:
    """The packed file's ``manifest_hash`` attribute (or, lacking one, its SHA-256)."""
    with h5py.File(path, "r") as f:
        value = f.attrs.get("manifest_hash")
    if value is None:
        log.warning("%s has no manifest_hash attribute; hashing the file instead", path)
        return sha256_file(path)
    return value.decode() if isinstance(value, bytes) else str(value)


def hparams(p: TrainParams, world: int) -> dict[str, Any]:
    """What must match for a last.pt to resume (cosine's horizon is `iterations` itself)."""
    hp = {k: v for k, v in as_dict(p).items() if k not in _NOT_HPARAMS}
    if p.degradation == "bicubic":  # a clean run's hparams stay what they were before realistic LR
        del hp["degradation"], hp["clean_fraction"]
    if p.schedule == "cosine":
        hp["iterations"] = p.iterations
    hp["world_size"] = world
    return hp


def make_scheduler(opt: torch.optim.Optimizer, p: TrainParams) -> torch.optim.lr_scheduler.LRScheduler:
    if p.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=p.lr_step, gamma=p.lr_gamma)
    if p.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.iterations, eta_min=0.0)
    raise ValueError(f"train.schedule must be step or cosine, got {p.schedule!r}")


@dataclasses.dataclass(frozen=True)
class Score:
    """One validation: the step and the val tiles' mean Y-PSNR (dB) and Y-SSIM."""

    step: int
    psnr_y: float
    ssim_y: float


NO_SCORE = Score(0, -math.inf, 0.0)  # what any first validation beats


@dataclasses.dataclass
class History:
    """The run so far; saved in last.pt's ``extra`` so that a resumed run continues it."""

    step: int = 0
    loss: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (loss, lr) of step i + 1
    val: list[Score] = dataclasses.field(default_factory=list)
    best: Score = NO_SCORE
    bicubic: tuple[float, float] | None = None  # bicubic's Y-PSNR and Y-SSIM on the same val tiles
    train_seconds: float = 0.0  # in the training loop, over all invocations
    seconds: float = 0.0  # wall time, validation included, over all invocations
    run_ids: list[str] = dataclasses.field(default_factory=list)  # tracking runs that contributed

    def to_extra(self) -> dict[str, Any]:
        extra = dataclasses.asdict(self)
        extra["loss"] = torch.tensor(self.loss, dtype=torch.float64).reshape(-1, 2)  # (steps, 2)
        return extra

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> History:
        hist = cls(**{f.name: extra[f.name] for f in dataclasses.fields(cls)})
        hist.loss = [(loss, lr) for loss, lr in extra["loss"].tolist()]
        hist.val = [_score(v) for v in hist.val]
        hist.best = _score(hist.best)
        if len(hist.loss) != hist.step:
            raise ValueError(f"the loss history has {len(hist.loss)} rows for step {hist.step}")
        return hist

    def summary(self, samples_per_step: int) -> dict[str, Any]:
        last = self.val[-1] if self.val else None
        bic = self.bicubic or (None, None)
        return {
            "step": self.step,
            "psnr_y": last.psnr_y if last else None,
            "ssim_y": last.ssim_y if last else None,
            "best_step": self.best.step,
            "best_psnr_y": self.best.psnr_y if self.val else None,
            "best_ssim_y": self.best.ssim_y if self.val else None,
            "bicubic_psnr_y": bic[0],
            "bicubic_ssim_y": bic[1],
            "seconds": round(self.seconds, 2),
            "samples_per_s": round(self.step * samples_per_step / max(self.train_seconds, 1e-9), 3),
        }


def _score(saved: Any) -> Score:
    """A score as last.pt holds it: a dict, or the [step, psnr, ssim] list of older checkpoints."""
    if isinstance(saved, Score):
        return saved
    if isinstance(saved, dict):
        return Score(int(saved["step"]), float(saved["psnr_y"]), float(saved["ssim_y"]))
    step, psnr, ssim = saved
    return Score(int(step), float(psnr), float(ssim))


def resumable(
    last: Path, cfg: A2NConfig, hashes: tuple[str, str], hp: dict[str, Any]
) -> tuple[dict[str, Any], History] | None:
    """last.pt's contents and history if this run may continue it; else None, reason logged."""
    if not last.exists():
        return None
    try:
        ckpt = read_checkpoint(last)
        e = ckpt["extra"]
        saved = {
            "config": ckpt["config"],
            "data hash": (ckpt["data_hash"], e.get("val_hash")),
            "hparams": e.get("hparams"),
        }
        hist = History.from_extra(e)
    except (ValueError, KeyError, TypeError) as err:
        log.warning("cannot resume from %s (%s); starting fresh", last, err)
        return None
    now = {"config": cfg.to_dict(), "data hash": hashes, "hparams": hp}
    changed = [k for k in now if saved[k] != now[k]]
    if changed:
        if saved["hparams"] != hp and isinstance(saved["hparams"], dict):
            diff = sorted(k for k in {*hp, *saved["hparams"]} if hp.get(k) != saved["hparams"].get(k))
            changed[changed.index("hparams")] = f"hparams ({', '.join(diff)})"
        log.warning("not resuming from %s: its %s differ(s); starting fresh", last, " and ".join(changed))
        return None
    return ckpt, hist


# --- loss and model --------------------------------------------------------------------------


class Heartbeat:
    """Logs progress (loss, it/s, ETA) every ``every`` seconds; for runs with no progress bar."""

    def __init__(self, total: int, start: int, enabled: bool, every: float = 60.0) -> None:
        self.total, self.enabled, self.every = total, enabled, every
        self.t0 = self.last = time.perf_counter()
        self.start = start
        self.losses: list[float] = []

    def tick(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        self.losses.append(loss)
        now = time.perf_counter()
        if now - self.last < self.every and step != self.total:
            return
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        mean = sum(self.losses) / len(self.losses)
        log.info("step %d/%d  loss %.5f  %.2f it/s  ETA %.0f min", step, self.total, mean, rate, eta / 60)
        self.last, self.losses = now, []


def charbonnier(sr: torch.Tensor, hr: torch.Tensor, eps: float) -> torch.Tensor:
    """mean(sqrt((sr - hr)^2 + eps^2)): an L1 that is smooth at zero."""
    return torch.sqrt((sr - hr) ** 2 + eps * eps).mean()


def init_from(model: A2N, path: str | Path) -> str:
    """Load our checkpoint at ``path`` into ``model``: all of it, or the trunk across scales."""
    src, src_cfg, _ = load_model(path)
    cfg = model.config
    if src_cfg.scale == cfg.scale:
        if src_cfg != cfg:
            raise ValueError(f"--init {path}: its config {src_cfg} differs from {cfg}")
        model.load_state_dict(src.state_dict())
        return "all weights"
    load_body(model, src.state_dict())
    return f"the trunk only (x{src_cfg.scale} -> x{cfg.scale}: the upsampler starts fresh)"


# --- validation ------------------------------------------------------------------------------


def _batches(tiles: TileDataset) -> Any:
    for i in range(0, len(tiles), VAL_BATCH):
        pairs = [tiles[j] for j in range(i, min(i + VAL_BATCH, len(tiles)))]
        yield torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, H*s, W*s): the MATLAB-style bicubic that evaluation also uses."""
    imgs = (lr.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    up = np.stack([bicubic_upscale(img, scale) for img in imgs])  # (B, H*s, W*s, 3) uint8
    return torch.from_numpy(up).permute(0, 3, 1, 2).float().div_(255.0).to(lr.device)


def bicubic_scores(tiles: TileDataset, scale: int) -> tuple[float, float]:
    """Mean Y-PSNR and Y-SSIM of plain bicubic upscaling over the val tiles."""
    psnr, ssim = [], []
    for lr, hr in _batches(tiles):
        up = bicubic(lr, scale)
        psnr.append(psnr_y_torch(up, hr, scale))
        ssim.append(ssim_y_torch(up, hr, scale))
    return float(torch.cat(psnr).mean()), float(torch.cat(ssim).mean())


@torch.inference_mode()
def upscale(model: torch.nn.Module, lr: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """(B, 3, H, W) on the CPU -> (B, 3, H*s, W*s) float32 on the CPU, unclamped."""
    x = rt.to_device(lr)
    with rt.autocast():
        sr = model(x)
    return sr.float().cpu().contiguous()


def validate(model: torch.nn.Module, tiles: TileDataset, scale: int, rt: Runtime) -> tuple[float, float]:
    """Mean Y-PSNR and Y-SSIM of ``model`` over whole val tiles (border crop = scale)."""
    was_training = model.training
    model.eval()
    psnr, ssim = [], []
    try:
        for lr, hr in _batches(tiles):
            sr = upscale(model, lr, rt)
            psnr.append(psnr_y_torch(sr, hr, scale))
            ssim.append(ssim_y_torch(sr, hr, scale))
    finally:
        model.train(was_training)
    return float(torch.cat(psnr).mean()), float(torch.cat(ssim).mean())
