"""LR that looks like a real old episode: kernels, blur, noise, 4:2:0 chroma and real codecs.

The paper's LR is a clean bicubic downscale. A DVD, VCD, broadcast or web episode has also been
through a camera-side blur, some resizer, chroma subsampling and a lossy codec, and a network
trained on clean LR upscales that codec's blocks and ringing as if they were drawing. A
``Degradation`` is one such chain, in this order:

1. Gaussian blur of the HR (``blur`` = sigma in HR pixels; 0 = none);
2. downscale by the scale with ``kernel``: the MATLAB-style bicubic of ``remaster.data.imaging``, or
   Pillow's anti-aliased ``area`` (box), ``bilinear`` or ``lanczos``;
3. Gaussian noise (``noise`` = sigma in grey levels; 0 = none);
4. ``codec``: ``x264`` (libx264 at CRF ``q``), ``mpeg2`` (the DVD codec, ``-qscale:v q``) or
   ``jpeg`` (quality ``q``, 4:2:0), each a real encode and decode; ``chroma`` is only the 4:2:0
   round trip (BT.601, as a player would convert); ``none`` stops after step 3.

The video codecs run through ffmpeg pipes, a batch of same-sized frames per encode, with no
temporary files (ffmpeg-python builds the commands, ``remaster.stopping`` runs them). Frames are
coded intra-only (``-g 1``) so that no frame borrows from another.
``spec`` strings name a chain on the command line: ``x264:crf=23``, ``mpeg2:q=8``,
``jpeg:q=70,kernel=area,blur=0.8,noise=2``, ``bicubic`` (clean).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

import ffmpeg as ffmpeg_python  # the ffmpeg-python package, which builds the ffmpeg command lines
import numpy as np
from PIL import Image

from remaster import stopping
from remaster.config import BLUR_MAX, CODECS, KERNELS, NOISE_MAX, QUALITY_RANGE, RANGE_KEYS, RealisticParams
from remaster.data.imaging import downscale

CLEAN_NAMES = ("bicubic", "clean")
CODED_HERE = ("none", "jpeg")  # codecs done in this process; the others go through ffmpeg in batches
# The quality key of each codec on the command line, and its allowed range.
QUALITY_KEY = {"x264": "crf", "mpeg2": "q", "jpeg": "q"}
_PIL_KERNEL = {"area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
               "lanczos": Image.Resampling.LANCZOS}  # fmt: skip


class DegradationError(ValueError):
    """A degradation that cannot be made: a bad spec or a codec that failed."""


@dataclass(frozen=True)
class Degradation:
    """One chain from HR to LR (see the module docstring for the order)."""

    kernel: str = "bicubic"
    blur: float = 0.0  # Gaussian sigma on the HR, in HR pixels
    noise: float = 0.0  # Gaussian sigma on the LR, in grey levels (0..255)
    codec: str = "none"  # none, chroma, x264, mpeg2 or jpeg
    quality: int = 0  # x264 CRF, mpeg2 qscale or JPEG quality; unused by none and chroma

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise DegradationError(f"kernel {self.kernel!r} is not one of {', '.join(KERNELS)}")
        if self.codec not in CODECS:
            raise DegradationError(f"codec {self.codec!r} is not one of {', '.join(CODECS)}")
        if not 0.0 <= self.blur <= BLUR_MAX:
            raise DegradationError(f"blur {self.blur} is outside 0..{BLUR_MAX:g}")
        if not 0.0 <= self.noise <= NOISE_MAX:
            raise DegradationError(f"noise {self.noise} is outside 0..{NOISE_MAX:g}")
        if self.codec in QUALITY_RANGE:
            lo, hi = QUALITY_RANGE[self.codec]
            if not lo <= self.quality <= hi:
                key = QUALITY_KEY[self.codec]
                raise DegradationError(f"{self.codec} {key}={self.quality} is outside {lo}..{hi}")

    @property
    def is_clean(self) -> bool:
        return self == Degradation()

    @property
    def spec(self) -> str:
        """The command-line form, which ``parse_spec`` reads back to an equal value."""
        if self.is_clean:
            return "bicubic"
        head = self.codec
        extras = [f"{QUALITY_KEY[self.codec]}={self.quality}"] if self.codec in QUALITY_KEY else []
        if self.kernel != "bicubic":
            extras.append(f"kernel={self.kernel}")
        if self.blur:
            extras.append(f"blur={self.blur:g}")
        if self.noise:
            extras.append(f"noise={self.noise:g}")
        return head + (":" + ",".join(extras) if extras else "")

    def __str__(self) -> str:
        return self.spec


def parse_spec(text: str) -> Degradation:
    """``x264:crf=23``, ``mpeg2:q=8``, ``jpeg:q=70,kernel=area``, ``chroma``, ``bicubic``."""
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    allowed = (*CLEAN_NAMES, *CODECS[1:], "none")
    if name not in allowed:
        raise DegradationError(f"unknown degradation {name!r} in {text!r}; allowed: {', '.join(allowed)}")
    codec = "none" if name in CLEAN_NAMES else name
    fields: dict[str, object] = {"codec": codec}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        keys = ("kernel", "blur", "noise", *([QUALITY_KEY[codec]] if codec in QUALITY_KEY else []))
        if not sep or key not in keys:
            raise DegradationError(f"{text!r}: {part!r} is not one of {', '.join(k + '=' for k in keys)}")
        try:
            if key == "kernel":
                fields["kernel"] = value.strip()
            elif key in ("blur", "noise"):
                fields[key] = float(value)
            else:
                fields["quality"] = int(value)
        except ValueError as e:
            raise DegradationError(f"{text!r}: {key} needs a number, got {value!r}") from e
    if codec in QUALITY_KEY and "quality" not in fields:
        raise DegradationError(f"{text!r}: {codec} needs {QUALITY_KEY[codec]}=N")
    return Degradation(**fields)  # type: ignore[arg-type]


# --- the steps ---------------------------------------------------------------------------------


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) uint8 image, edges mirrored; uint8 out."""
    if sigma <= 0:
        return img
    k = _gaussian_kernel(sigma).astype(np.float32)
    r = len(k) // 2
    data = img.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * data.ndim
        pad[axis] = (r, r)
        padded = np.pad(data, pad, mode="symmetric")
        n = data.shape[axis]
        # each tap a view of the padded image (no copy), summed in place
        acc = np.zeros_like(data)
        for i, w in enumerate(k):
            acc += w * (padded[i : i + n] if axis == 0 else padded[:, i : i + n])
        data = acc
    return np.clip(np.round(data), 0, 255).astype(np.uint8)


def resize_down(hr: np.ndarray, scale: int, kernel: str) -> np.ndarray:
    """(H, W, 3) uint8 -> (H/s, W/s, 3) uint8 with the named anti-aliased kernel."""
    if kernel == "bicubic":
        return downscale(hr, scale)
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"{w}x{h} is not divisible by the scale {scale}")
    img = Image.fromarray(hr).resize((w // scale, h // scale), _PIL_KERNEL[kernel])
    return np.asarray(img)


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    if sigma <= 0:
        return img
    noisy = img.astype(np.float32) + np.float32(sigma) * rng.standard_normal(img.shape, np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def jpeg_round_trip(img: np.ndarray, quality: int) -> np.ndarray:
    """A real JPEG encode and decode (libjpeg through Pillow, 4:2:0), in memory."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=2)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


@functools.cache
def ffmpeg_version() -> str:
    """The ffmpeg build that codes the LR (recorded beside it: another build may differ in bits)."""
    # -version is no graph: a plain list
    try:
        out = stopping.run(["ffmpeg", "-hide_banner", "-version"])
    except OSError as e:
        raise DegradationError(f"ffmpeg is needed for the video codecs and could not run: {e}") from e
    if out.returncode != 0:
        err = out.stderr.decode(errors="replace").strip()
        raise DegradationError(
            f"ffmpeg is needed for the video codecs and could not run: exit {out.returncode}: {err}"
        )
    return out.stdout.decode(errors="replace").splitlines()[0]


def _codec_args(codec: str, quality: int) -> dict[str, object]:
    if codec == "x264":
        # Single-threaded: libx264's output is then the same on any machine with this build.
        return {"vcodec": "libx264", "crf": quality, "preset": "medium", "g": 1, "threads": 1,
                "pix_fmt": "yuv420p", "format": "h264"}  # fmt: skip
    if codec == "mpeg2":
        return {"vcodec": "mpeg2video", "qscale:v": quality, "g": 1, "pix_fmt": "yuv420p",
                "format": "mpeg2video"}  # fmt: skip
    # chroma: 4:2:0 and back, nothing lost to a codec
    return {"vcodec": "rawvideo", "pix_fmt": "yuv420p", "format": "rawvideo"}


def _last_line(err: bytes) -> str:
    lines = err.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def _drain(stream: IO[bytes], into: list[bytes]) -> threading.Thread:
    def read() -> None:
        into.append(stream.read())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def _encode_decode(encoder: Any, decoder: Any, data: bytes, what: str) -> bytes:
    """``data`` through the encoder and straight on into the decoder: two ffmpeg children joined
    by a pipe, running at once (their start-up, most of a small batch's cost, overlaps)."""
    enc_args = encoder.global_args("-nostdin", "-v", "error").compile()
    dec_args = decoder.global_args("-nostdin", "-v", "error").compile()
    pipe = subprocess.PIPE
    try:
        enc = stopping.spawn(enc_args, stdin=pipe, stdout=pipe, stderr=pipe)
    except OSError as e:
        raise DegradationError(f"{what}: ffmpeg could not start: {e}") from e
    procs = [enc]
    try:
        try:
            dec = stopping.spawn(dec_args, stdin=enc.stdout, stdout=pipe, stderr=pipe)
        except OSError as e:
            raise DegradationError(f"{what}: ffmpeg could not start: {e}") from e
        procs.append(dec)
        assert enc.stdin is not None and enc.stdout is not None and enc.stderr is not None
        enc.stdout.close()  # the decoder holds the pipe now; the encoder gets EPIPE if it dies

        def feed() -> None:
            with contextlib.suppress(BrokenPipeError):  # the encoder died: its status says why
                enc.stdin.write(data)  # type: ignore[union-attr]
            with contextlib.suppress(BrokenPipeError):
                enc.stdin.close()  # type: ignore[union-attr]

        enc_err: list[bytes] = []
        threads = [threading.Thread(target=feed, daemon=True), _drain(enc.stderr, enc_err)]
        threads[0].start()
        out, dec_err = dec.communicate()
        for t in threads:
            t.join()
    except BaseException:
        for p in procs:
            p.kill()
        raise
    finally:
        codes = [stopping.reap(p) for p in procs]
    # the encoder first: a decoder that failed after it did only reports the missing stream;
    # but an encoder whose pipe broke (ffmpeg says so and exits 1) only lost its reader, the
    # decoder, which says why
    enc_says = _last_line(b"".join(enc_err))
    lost_reader = codes[1] != 0 and "Broken pipe" in enc_says
    if codes[0] != 0 and not lost_reader:
        raise DegradationError(f"{what} (encode): ffmpeg exited {codes[0]}: {enc_says}")
    if codes[1] != 0:
        raise DegradationError(f"{what} (decode): ffmpeg exited {codes[1]}: {_last_line(dec_err)}")
    return bytes(out)


def codec_round_trip(frames: Sequence[np.ndarray], codec: str, quality: int) -> list[np.ndarray]:
    """Encode same-sized (H, W, 3) uint8 frames as one stream and decode it back, all in pipes.

    Odd sides are padded by one mirrored row or column for 4:2:0 and cropped off again.
    """
    if not frames:
        return []
    h, w = frames[0].shape[:2]
    if any(f.shape != (h, w, 3) for f in frames):
        raise ValueError("codec_round_trip needs frames of one size")
    ph, pw = h + h % 2, w + w % 2
    raw = b"".join(np.pad(f, ((0, ph - h), (0, pw - w), (0, 0)), mode="symmetric").tobytes() for f in frames)
    size = f"{pw}x{ph}"
    what = f"{codec} q={quality} on {len(frames)} frame(s) of {w}x{h}"
    opts = _codec_args(codec, quality)
    fmt = str(opts["format"])
    raw_in = ffmpeg_python.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=size, r=25)
    if fmt == "rawvideo":
        dec = ffmpeg_python.input("pipe:", format="rawvideo", pix_fmt="yuv420p", s=size, r=25)
    else:  # the raw elementary streams' demuxers: h264, and mpegvideo for mpeg2video
        dec = ffmpeg_python.input("pipe:", format="mpegvideo" if fmt == "mpeg2video" else fmt)
    dec = dec.output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
    out = _encode_decode(raw_in.output("pipe:", **opts), dec, raw, what)
    n = len(out) // (ph * pw * 3)
    if n != len(frames) or len(out) % (ph * pw * 3):
        raise DegradationError(f"{what}: ffmpeg returned {n} frames for {len(frames)}")
    decoded = np.frombuffer(out, np.uint8).reshape(n, ph, pw, 3)
    return [np.array(d[:h, :w]) for d in decoded]


def degrade_batch(
    hrs: Sequence[np.ndarray],
    scales: Sequence[int],
    degs: Sequence[Degradation],
    noise_seeds: Sequence[int],
) -> list[np.ndarray]:
    """The LR of each HR under its own chain, at its own scale.

    Frames sharing a codec setting and size go through ffmpeg together, and the batches run at
    once: each starts as soon as its frames are resized, while the next are made here.
    """
    n = len(hrs)
    if not n == len(scales) == len(degs) == len(noise_seeds):
        raise ValueError(
            f"{n} images, {len(scales)} scales, {len(degs)} degradations and {len(noise_seeds)} seeds"
        )
    groups: dict[tuple[str, int, int, int, int], list[int]] = {}
    for i, (hr, s, d) in enumerate(zip(hrs, scales, degs, strict=True)):
        if d.codec not in CODED_HERE:
            groups.setdefault((d.codec, d.quality, s, hr.shape[0], hr.shape[1]), []).append(i)
    lrs: list[np.ndarray] = [np.empty(0, np.uint8)] * n

    def made(i: int) -> np.ndarray:
        d = degs[i]
        lr = resize_down(gaussian_blur(hrs[i], d.blur), scales[i], d.kernel)
        lr = add_noise(lr, d.noise, np.random.default_rng(noise_seeds[i]))
        return jpeg_round_trip(lr, d.quality) if d.codec == "jpeg" else lr

    with ThreadPoolExecutor(max(1, len(groups)), thread_name_prefix="codec") as pool:
        running: list[tuple[int, list[int], Future[list[np.ndarray]]]] = []
        for (codec, quality, s, *_), idx in groups.items():
            frames = [made(i) for i in idx]
            running.append((s, idx, pool.submit(codec_round_trip, frames, codec, quality)))
        for i, d in enumerate(degs):
            if d.codec in CODED_HERE:
                lrs[i] = made(i)
        for s, idx, done in running:
            try:
                coded = done.result()
            except DegradationError as e:
                raise DegradationError(f"at x{s}: {e}") from e
            for i, out in zip(idx, coded, strict=True):
                lrs[i] = out
    return lrs


def degrade(hr: np.ndarray, scale: int, deg: Degradation, seed: int = 0) -> np.ndarray:
    """One image's LR under ``deg`` (the noise seeded by ``seed``)."""
    return degrade_batch([hr], [scale], [deg], [seed])[0]


# --- drawing chains for the realistic pack -------------------------------------------------------


def _digest_int(digest: str) -> int:
    return int(digest[:15], 16) if all(c in "0123456789abcdef" for c in digest[:15]) else 0


def image_codec(p: RealisticParams, digest: str, scale: int) -> tuple[str, int]:
    """The codec and quality of one image's tiles at one scale, drawn from ``(seed, image, scale)``."""
    rng = np.random.default_rng([p.seed, _digest_int(digest), scale])
    codec = p.codecs[int(rng.integers(len(p.codecs)))]
    if codec not in RANGE_KEYS:
        return codec, 0
    lo, hi = getattr(p, RANGE_KEYS[codec])
    return codec, int(rng.integers(lo, hi + 1))


def tile_degradation(p: RealisticParams, digest: str, scale: int, x: int, y: int) -> tuple[Degradation, int]:
    """One tile's chain and its noise seed, drawn from ``(seed, image, scale, x, y)`` alone, so a
    tile's LR does not depend on which other tiles were packed beside it."""
    codec, quality = image_codec(p, digest, scale)
    rng = np.random.default_rng([p.seed, _digest_int(digest), scale, x, y])
    kernel = p.kernels[int(rng.integers(len(p.kernels)))]
    blur = round(float(rng.uniform(p.blur[0], p.blur[1])), 2) if rng.random() < p.blur_prob else 0.0
    noise = round(float(rng.uniform(p.noise[0], p.noise[1])), 2) if rng.random() < p.noise_prob else 0.0
    noise_seed = int(rng.integers(1 << 62))
    return Degradation(kernel, blur, noise, codec, quality), noise_seed
