"""Held frames: anime is drawn on twos and threes and scenes hold still, so many LR frames repeat
the last one that went through the model, and its SR output can be emitted again.

``HeldFrames`` keeps, for one segment, the last frame the model computed and decides for each new
frame whether it repeats it:

- ``exact``: the frames are byte-identical;
- ``near``: first on a grey copy at a quarter of the size (4x4 block means of BT.601 luma): the
  mean difference is within ``tolerance`` grey levels and no block moved by more than
  ``LOCAL_FACTOR`` times that (a mouth or an eye that moves over a still background changes a
  few blocks a lot); then confirmed at full resolution: the mean luma difference is within
  ``tolerance``. Codec noise on a held drawing moves blocks by a few levels at most; a new drawing
  moves some by tens.

The reference is the last *computed* frame, never a reused one, so errors cannot accumulate
along a hold; a scene cut changes the picture far beyond any tolerance, so it is never crossed;
the first frame of a segment is always computed, so segments stay independent and resumable.
The decision looks only backwards and keeps one reference frame: memory does not grow with the
length of a hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remaster.config import REUSE_MODES

LOCAL_FACTOR = 12.0  # a 4x4 block may move this many times the tolerance before the frame counts as new
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class ReuseRule:
    mode: str = "off"  # off, exact or near
    tolerance: float = 1.0  # near: mean luma difference in grey levels (0..255) that still counts as held

    def __post_init__(self) -> None:
        if self.mode not in REUSE_MODES:
            raise ValueError(f"reuse must be one of {', '.join(REUSE_MODES)}, got {self.mode!r}")
        if not 0.0 <= self.tolerance <= 16.0:
            raise ValueError(f"reuse tolerance {self.tolerance} is outside 0..16 grey levels")


NO_REUSE = ReuseRule()


def luma(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float32 BT.601 luma."""
    return frame.astype(np.float32) @ _LUMA


def grey_quarter(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H/4, W/4) float32: 4x4 block means of the luma (edges cropped)."""
    y = luma(frame)
    h, w = y.shape[0] // 4 * 4, y.shape[1] // 4 * 4
    if h == 0 or w == 0:
        return y
    return y[:h, :w].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))


class HeldFrames:
    """One segment's reuse decisions; call ``repeats`` for each frame in order, and ``computed``
    for each frame that goes through the model."""

    def __init__(self, rule: ReuseRule) -> None:
        self.rule = rule
        self._ref: np.ndarray | None = None
        self._ref_small: np.ndarray | None = None
        self.computed_frames = 0
        self.reused_frames = 0

    def repeats(self, frame: np.ndarray) -> bool:
        """Whether ``frame`` (H, W, 3) uint8 may take the SR output of the last computed frame."""
        held = self._ref is not None and self._same(frame)
        if held:
            self.reused_frames += 1
        return held

    def computed(self, frame: np.ndarray) -> None:
        """``frame`` went through the model: it is the reference from now on."""
        self.computed_frames += 1
        if self.rule.mode == "off":
            return
        self._ref = frame.copy()
        self._ref_small = grey_quarter(frame) if self.rule.mode == "near" else None

    def _same(self, frame: np.ndarray) -> bool:
        ref = self._ref
        assert ref is not None
        if frame.shape != ref.shape:
            return False
        if self.rule.mode == "exact":
            return bool(np.array_equal(frame, ref))
        tol = self.rule.tolerance
        small = grey_quarter(frame)
        diff = np.abs(small - self._ref_small)
        if float(diff.mean()) > tol or float(diff.max()) > LOCAL_FACTOR * tol:
            return False
        return float(np.abs(luma(frame) - luma(ref)).mean()) <= tol
