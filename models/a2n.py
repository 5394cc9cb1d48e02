"""A2N: attention in attention network for image super-resolution (arXiv 2104.09497).

The whole network is in this file. Module names follow the authors' code so that their
published state dicts load with ``strict=True``; do not rename them.

Public contract: ``A2N.forward`` takes RGB in [0, 1] and returns RGB on the same scale,
unclamped. Internally the network runs on 0..255 (``rgb_range``), as the published weights do.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

SCALES = (2, 3, 4)


@dataclass(frozen=True)
class A2NConfig:
    scale: int = 4  # upscaling factor: 2, 3 or 4 (x4 is two x2 steps in the upsampler)
    n_feat: int = 40  # channels in the trunk
    n_up_feat: int = 24  # channels in the upsampler
    n_blocks: int = 16  # attention-in-attention blocks (AAB)
    rgb_range: float = 255.0  # the scale the network sees; published weights expect 0..255
    non_attention_kernel: int = 3  # 3 = A2N; 1 = A2N-M (1x1 non-attention conv)
    adm_reduction: int = 4  # the ADM's hidden width is n_feat // adm_reduction
    adm_temperature: float = 30.0  # softmax temperature of the attention dropout module

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale}")
        if self.non_attention_kernel not in (1, 3):
            raise ValueError(f"non_attention_kernel must be 1 or 3, got {self.non_attention_kernel}")
        for name in ("n_feat", "n_up_feat", "n_blocks", "adm_reduction"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_feat // self.adm_reduction < 1:
            raise ValueError("n_feat // adm_reduction must be at least 1")
        if self.rgb_range <= 0 or self.adm_temperature <= 0:
            raise ValueError("rgb_range and adm_temperature must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> A2NConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown A2NConfig keys: {unknown}")
        return cls(**d)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, negative_slope=0.2)


class PA(nn.Module):
    """Pixel attention: a 1x1 conv and sigmoid give a per-pixel, per-channel gate."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(nf, nf, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class AttentionBranch(nn.Module):
    def __init__(self, nf: int) -> None:
        super().__init__()
        self.k1 = nn.Conv2d(nf, nf, 3, padding=1, bias=False)
        self.k2 = nn.Conv2d(nf, nf, 1)
        self.k3 = nn.Conv2d(nf, nf, 3, padding=1, bias=False)
        self.k4 = nn.Conv2d(nf, nf, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.sigmoid(self.k2(_lrelu(self.k1(x))))  # (B, C, H, W)
        out: torch.Tensor = self.k4(self.k3(x) * mask)  # (B, C, H, W)
        return out


def _branch_weights(adm: nn.Module, temperature: float, pooled: torch.Tensor) -> torch.Tensor:
    return F.softmax(adm(pooled) / temperature, dim=1)  # (B, C) -> (B, 2)


class AAB(nn.Module):
    """Attention-in-attention block: the ADM weighs an attention and a non-attention branch."""

    def __init__(self, nf: int, reduction: int, temperature: float, non_attention_kernel: int) -> None:
        super().__init__()
        self.temperature = temperature
        self.conv_first = nn.Conv2d(nf, nf, 1, bias=False)
        # Attention dropout module; indices 0 and 2 are the published key names.
        self.ADM = nn.Sequential(
            nn.Linear(nf, nf // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(nf // reduction, 2, bias=False),
        )
        self.attention = AttentionBranch(nf)
        k = non_attention_kernel
        self.non_attention = nn.Conv2d(nf, nf, k, padding=(k - 1) // 2, bias=False)
        self.conv_last = nn.Conv2d(nf, nf, 1, bias=False)

    def branch_weights(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, C) mean of the block's first activation -> (B, 2) attention/non-attention weights."""
        return _branch_weights(self.ADM, self.temperature, pooled)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``weights`` (B, 2) replaces the pooled ones; tiled inference pools over the whole image."""
        y = _lrelu(self.conv_first(x))  # (B, C, H, W)
        if weights is None:
            weights = self.branch_weights(y.mean(dim=(2, 3)))  # (B, 2)
        w_att = weights[:, 0].view(-1, 1, 1, 1)
        w_non = weights[:, 1].view(-1, 1, 1, 1)
        mixed = self.attention(y) * w_att + self.non_attention(y) * w_non  # (B, C, H, W)
        out: torch.Tensor = self.conv_last(_lrelu(mixed)) + x  # (B, C, H, W)
        return out


class FusedAAB(nn.Module):
    """An ``AAB`` for inference only: the same function, computed faster.

    Three of the block's four 3x3 convs read the same activation ``y``: the attention branch's
    ``k1`` and ``k3`` and the non-attention conv. Here they run as one conv with three times the
    output channels (one 40 -> 120 GEMM instead of three 40 -> 40 ones: about 1.5x the
    throughput on an AVX-512 CPU, where 40 output channels fill the vector lanes poorly), and
    the pointwise steps run in place on tensors the block owns. It takes over ``block``'s other
    modules, so build it with ``fuse_for_inference``, which hands it a copy; it has no state dict
    of the published layout.
    """

    def __init__(self, block: AAB) -> None:
        super().__init__()
        att, nf = block.attention, block.conv_first.out_channels
        self.nf, self.temperature = nf, block.temperature
        self.conv_first, self.ADM, self.k2, self.k4 = block.conv_first, block.ADM, att.k2, att.k4
        self.conv_last = block.conv_last
        shared = [att.k1, att.k3]
        self.non_attention: nn.Module | None = block.non_attention
        if block.non_attention.kernel_size == (3, 3):  # A2N; A2N-M's 1x1 conv stays apart
            shared.append(block.non_attention)
            self.non_attention = None
        self.wide = nn.Conv2d(nf, nf * len(shared), 3, padding=1, bias=False)
        with torch.no_grad():
            self.wide.weight.copy_(torch.cat([c.weight for c in shared]))

    def branch_weights(self, pooled: torch.Tensor) -> torch.Tensor:
        """As ``AAB.branch_weights``."""
        return _branch_weights(self.ADM, self.temperature, pooled)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """As ``AAB.forward``."""
        y = F.leaky_relu_(self.conv_first(x), 0.2)  # (B, C, H, W)
        if weights is None:
            weights = self.branch_weights(y.mean(dim=(2, 3)))  # (B, 2)
        w_att = weights[:, 0].view(-1, 1, 1, 1)
        w_non = weights[:, 1].view(-1, 1, 1, 1)
        wide = self.wide(y)  # (B, 2C or 3C, H, W): k1(y) | k3(y) | non_attention(y)
        k1 = wide[:, : self.nf]
        k3 = wide[:, self.nf : 2 * self.nf]
        non = wide[:, 2 * self.nf :] if self.non_attention is None else self.non_attention(y)
        mask = torch.sigmoid_(self.k2(F.leaky_relu(k1, 0.2)))  # (B, C, H, W)
        mixed = (non * w_non).addcmul_(self.k4(mask.mul_(k3)), w_att)  # (B, C, H, W)
        out: torch.Tensor = self.conv_last(F.leaky_relu_(mixed, 0.2))
        # In place where it keeps the dtype; under autocast the residual sum stays fp32, as in AAB.
        return out.add_(x) if out.dtype == x.dtype else out + x


class SubpixelConv(nn.Module):
    """``conv(nearest_upsample(x, f))`` for a 3x3 ``conv`` with padding 1, computed at the input's
    resolution: one 3x3 conv with ``f * f`` times the output channels (one kernel per output
    phase, each the sum of the taps that land on the same input pixel), then a pixel shuffle.
    Exact to float rounding, borders included (a zero pad at HR is a zero pad at LR), and the
    same multiply-adds, but as one wide GEMM at LR instead of a narrow one over an upsampled copy.
    """

    def __init__(self, conv: nn.Conv2d, factor: int) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1):
            raise ValueError("SubpixelConv needs a 3x3 conv with stride 1 and padding 1")
        f, w = factor, conv.weight.detach()  # (C_out, C_in, 3, 3)
        c_out, c_in = w.shape[:2]
        phases = torch.zeros(c_out, f, f, c_in, 3, 3, dtype=w.dtype, device=w.device)
        for a, b, dy, dx in itertools.product(range(f), range(f), range(3), range(3)):
            # HR tap (a + dy - 1) rows from phase a's pixel reads LR row offset floor((a + dy - 1) / f)
            r, c = (a + dy - 1) // f + 1, (b + dx - 1) // f + 1
            phases[:, a, b, :, r, c] += w[:, :, dy, dx]
        self.factor = f
        self.conv = nn.Conv2d(c_in, c_out * f * f, 3, padding=1, bias=conv.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(phases.reshape(c_out * f * f, c_in, 3, 3))
            if conv.bias is not None and self.conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach().repeat_interleave(f * f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), self.factor)  # (B, C_out, H*f, W*f)


class A2N(nn.Module):
    def __init__(self, config: A2NConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else A2NConfig()
        self.config = cfg
        nf, unf = cfg.n_feat, cfg.n_up_feat
        self.conv_first = nn.Conv2d(3, nf, 3, padding=1)
        self.AAB_trunk = nn.Sequential(
            *(
                AAB(nf, cfg.adm_reduction, cfg.adm_temperature, cfg.non_attention_kernel)
                for _ in range(cfg.n_blocks)
            )
        )
        self.trunk_conv = nn.Conv2d(nf, nf, 3, padding=1)
        self.upconv1: nn.Module = nn.Conv2d(nf, unf, 3, padding=1)  # SubpixelConv once fused
        self.att1 = PA(unf)
        self.HRconv1 = nn.Conv2d(unf, unf, 3, padding=1)
        if cfg.scale == 4:
            self.upconv2: nn.Module = nn.Conv2d(unf, unf, 3, padding=1)
            self.att2 = PA(unf)
            self.HRconv2 = nn.Conv2d(unf, unf, 3, padding=1)
        self.conv_last = nn.Conv2d(unf, 3, 3, padding=1)

    @property
    def scale(self) -> int:
        return self.config.scale

    @staticmethod
    def _up_step(
        fea: torch.Tensor, factor: int, upconv: nn.Module, att: nn.Module, hrconv: nn.Module
    ) -> torch.Tensor:
        if isinstance(upconv, SubpixelConv):
            fea = upconv(fea)  # (B, unf, H*f, W*f), the same function computed at (H, W)
        else:
            fea = upconv(F.interpolate(fea, scale_factor=factor, mode="nearest"))  # (B, unf, H*f, W*f)
        fea = _lrelu(att(fea))  # (B, unf, H*f, W*f)
        return _lrelu(hrconv(fea))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 3, H*s, W*s) RGB in [0, 1], not clamped."""
        fea = self.conv_first(x * self.config.rgb_range)  # (B, nf, H, W)
        return self.tail(x, self.AAB_trunk(fea))

    def tail(self, x: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
        """Everything after the AAB trunk: (B, 3, H, W) input, (B, nf, H, W) trunk output -> SR.

        Separate so that tiled inference can run the trunk block by block and then this.
        """
        s = self.config.scale
        x = x * self.config.rgb_range  # (B, 3, H, W) on 0..rgb_range
        fea = self.conv_first(x) + self.trunk_conv(trunk)  # (B, nf, H, W)
        if s == 4:
            fea = self._up_step(fea, 2, self.upconv1, self.att1, self.HRconv1)  # (B, unf, 2H, 2W)
            fea = self._up_step(fea, 2, self.upconv2, self.att2, self.HRconv2)  # (B, unf, 4H, 4W)
        else:
            fea = self._up_step(fea, s, self.upconv1, self.att1, self.HRconv1)  # (B, unf, sH, sW)
        out: torch.Tensor = self.conv_last(fea)  # (B, 3, H*s, W*s)
        # (B, 3, H*s, W*s): the network learns the residual over a bilinear upsampling
        base = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        return (out + base) / self.config.rgb_range


_UPSAMPLER_KEY = re.compile(r"^(upconv\d+|att\d+|HRconv\d+|conv_last)\.")


def is_upsampler_key(key: str) -> bool:
    """True for the scale-specific keys (the reconstruction), false for the trunk."""
    return _UPSAMPLER_KEY.match(key) is not None


def fuse_for_inference(model: A2N) -> A2N:
    """A copy of ``model`` whose blocks are ``FusedAAB`` and whose upsampling convs are
    ``SubpixelConv``: the same outputs (to float rounding), faster, for inference only (no
    gradients, no published state dict)."""
    if any(isinstance(b, FusedAAB) for b in model.AAB_trunk):
        return model
    fused = copy.deepcopy(model)  # the one copy: the fused modules take over its parts
    fused.AAB_trunk = nn.Sequential(*(FusedAAB(cast(AAB, b)) for b in fused.AAB_trunk))
    fused.upconv1 = SubpixelConv(cast(nn.Conv2d, fused.upconv1), 2 if model.scale == 4 else model.scale)
    if model.scale == 4:
        fused.upconv2 = SubpixelConv(cast(nn.Conv2d, fused.upconv2), 2)
    if model.trunk_conv.weight.is_contiguous(memory_format=torch.channels_last):
        fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # the new convs too
    return fused.eval().requires_grad_(False)
