"""Deterministic procedural "scrape" generator: cel-shaded anime-style stills and a clip.

The pipeline must run end to end on a fresh clone with no user data, so this stage
fabricates a demo dataset. All randomness comes from the seed, and only Pillow's
built-in bitmap font is used, so a seed yields the same pixels on every machine.

``--episode PATH`` also writes a short episode to mine training frames from (``ingest`` mines the
videos of its source folder): a held shot, a scene cut, drawings on threes and a fade to black
(``remaster.data.drawing.episode_frames``). ``demo.episode: true`` writes it into the scrape
folder as ``episode.mkv``, so that ``dvc repro`` mines it beside the images.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import random
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from remaster import stopping
from remaster.commandline import add_output, load_params_or_exit, run_main, setup_logging, stage_parser
from remaster.data.drawing import (
    EPISODE_FPS,
    EPISODE_FRAMES,
    INK,
    SS,
    WORDS,
    background,
    char_layout,
    character,
    character_sprite,
    downsample,
    episode_cut,
    episode_frames,
    text,
)
from remaster.files import atomic_path

log = logging.getLogger(__name__)

EPISODE_NAME = "episode.mkv"

_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP"}


def generate_image(seed: int, width: int = 1280, height: int = 1024) -> Image.Image:
    """One cel-shaded anime-style still, fully determined by ``seed``."""
    rng = random.Random(seed)
    w, h = width * SS, height * SS
    img = background(rng, w, h, SS)
    d = ImageDraw.Draw(img)
    cast = [(*char_layout(rng, w, h), rng.getrandbits(64)) for _ in range(rng.randint(1, 2))]
    for cx, cy, size, char_seed in sorted(cast, key=lambda c: c[2]):  # nearer (bigger) on top
        character(d, random.Random(char_seed), cx, cy, size, SS)
    if rng.random() < 0.7:  # subtitle-style caption
        msg = f"{rng.choice(WORDS)} {rng.randint(1, 99)}"
        zoom, tx = SS * rng.randint(1, 3), int(w * rng.uniform(0.05, 0.5))
        text(img, (tx + zoom, int(h * 0.9) + zoom), msg, INK, zoom)  # drop shadow
        text(img, (tx, int(h * 0.9)), msg, (255, 255, 255), zoom)
    return downsample(img, width, height)


def _encode(img: Image.Image, fmt: str) -> bytes:
    pil_fmt = _FORMATS.get(fmt.lower())
    if pil_fmt is None:
        raise ValueError(f"unsupported image format {fmt!r}; use one of {sorted(_FORMATS)}")
    buf = io.BytesIO()
    opts = {"quality": 95} if pil_fmt in ("JPEG", "WEBP") else {}
    img.save(buf, format=pil_fmt, **opts)
    return buf.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_images(
    out_dir: Path, n: int, seed: int = 0, width: int = 1280, height: int = 1024, fmt: str = "png"
) -> list[Path]:
    """Write ``demo_{i:03d}.{fmt}`` for i in range(n); image i uses seed ``seed + i``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = out_dir / f"demo_{i:03d}.{fmt}"
        data = _encode(generate_image(seed + i, width, height), fmt)
        if path.is_file() and path.read_bytes() == data:
            log.debug("unchanged %s", path)
        else:
            _atomic_write(path, data)
            log.info("wrote %s", path)
        paths.append(path)
    return paths


def _frames(seconds: float, fps: int, width: int, height: int, seed: int) -> Iterator[bytes]:
    """Yield RGB24 frames: the background pans, the character walks and blinks."""
    rng = random.Random(seed)
    n = round(seconds * fps)
    pan = max(1, int(width * 0.25))
    bg = downsample(background(rng, (width + pan) * SS, height * SS, SS), width + pan, height)
    cx, cy, size = char_layout(rng, width * SS, height * SS)
    char_seed = rng.getrandbits(64)
    sprites = [character_sprite(char_seed, size, SS, eyes) for eyes in (1.0, 0.0)]
    blink_every = max(2, int(fps * rng.uniform(0.8, 1.6)))
    x0, drift = cx / SS - sprites[0].width / 2, rng.choice([-1, 1]) * width * 0.2
    for i in range(n):
        t = i / max(1, n - 1)
        frame = bg.crop((int(pan * t), 0, int(pan * t) + width, height))
        sprite = sprites[1 if i % blink_every in (0, 1) else 0]
        pos = (int(x0 + drift * t), int(cy / SS - sprite.height * 0.4 + 3 * np.sin(i * 0.7)))
        frame.paste(sprite, pos, sprite)
        yield frame.tobytes()


def _clip_command(
    ffmpeg: str, width: int, height: int, fps: int, n: int, mkv: bool, video_args: Sequence[str] = ()
) -> list[str]:
    """ffmpeg encoding rgb24 frames from stdin as H.264 yuv420p with an AAC tone, bit-exactly."""
    tone = "0.2*sin(2*PI*440*t)+0.08*sin(2*PI*660*t)*sin(PI*t)"
    cmd = [
        ffmpeg,
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        str(fps),
        "-i",
        "-",
        "-f",
        "lavfi",
        "-i",
        f"aevalsrc={tone}|{tone}:s=48000:d={n / fps}",
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-crf",
        "18",
        "-preset",
        "veryfast",
        "-threads:v",
        "1",  # multi-threaded x264 output varies run to run and by core count
        *video_args,
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-map_metadata",
        "-1",
        "-fflags",
        "+bitexact",
        "-flags:v",
        "+bitexact",
        "-flags:a",
        "+bitexact",
    ]
    return cmd + (["-f", "matroska"] if mkv else ["-movflags", "+faststart", "-f", "mp4"])


def _encode_frames(path: Path, cmd: list[str], frames: Iterable[bytes]) -> Path:
    """Feed ``frames`` to the encoder ``cmd`` writing ``path``; atomic on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # stderr goes to a file: a full stderr pipe would deadlock us while we feed stdin
    with atomic_path(path) as tmp, tempfile.TemporaryFile() as err:
        proc = stopping.spawn([*cmd, str(tmp)], stdin=subprocess.PIPE, stderr=err)  # muxer named by -f
        assert proc.stdin is not None
        try:
            for frame in frames:
                proc.stdin.write(frame)
        except BrokenPipeError:
            pass  # ffmpeg died; its exit status and stderr tell why
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            rc = stopping.reap(proc)
        if rc != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"ffmpeg failed (exit {rc}) writing {path}:\n{tail}")
    return path


def write_clip(
    path: Path,
    seconds: float = 3.0,
    fps: int = 25,
    width: int = 576,
    height: int = 432,
    seed: int = 0,
    ffmpeg: str = "ffmpeg",
) -> Path:
    """Encode an animated clip (H.264 yuv420p + AAC tone) reproducibly; atomic on success."""
    path = Path(path)
    n = round(seconds * fps)
    cmd = _clip_command(ffmpeg, width, height, fps, n, path.suffix.lower() == ".mkv")
    log.info("encoding %d frames %dx%d@%d -> %s", n, width, height, fps, path)
    return _encode_frames(path, cmd, _frames(seconds, fps, width, height, seed))


def write_episode(
    path: Path, width: int = 1280, height: int = 720, seed: int = 0, ffmpeg: str = "ffmpeg"
) -> Path:
    """Encode the mining demo (``episode_frames``: 2.5 s at 24 fps) reproducibly; atomic on success.

    Keyframes fall on the first frame of each shot only, and there are no B-frames, so every
    new drawing is a P-frame larger than the repeats after it: the frames worth mining are known.
    """
    path = Path(path)
    cut = episode_cut() / EPISODE_FPS
    x264 = ["-bf", "0", "-g", "1000", "-sc_threshold", "0", "-force_key_frames", f"0,{cut:.6f}"]
    n, mkv = EPISODE_FRAMES, path.suffix.lower() == ".mkv"
    cmd = _clip_command(ffmpeg, width, height, EPISODE_FPS, n, mkv, x264)
    log.info("encoding the %d-frame episode %dx%d@%d -> %s", n, width, height, EPISODE_FPS, path)
    return _encode_frames(path, cmd, episode_frames(width, height, seed))


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("Write the procedural demo scrape (PNG pages) and clip (a short episode).")
    add_output(parser, "folder for the demo images (default: %(default)s)", default=Path("data/demo/scrape"))
    parser.add_argument(
        "--clip", type=Path, default=Path("data/demo/clip.mp4"), help="the demo clip (.mp4/.mkv)"
    )
    parser.add_argument("--no-clip", action="store_true", help="write the images only")
    parser.add_argument(
        "--episode",
        type=Path,
        help="also write a 2.5 s episode to mine frames from (.mkv/.mp4): a held shot, a scene cut, "
        "drawings on threes and a fade; demo.width x demo.height",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    d = load_params_or_exit(args.params, args.overrides).demo
    write_images(args.output, d.n_images, d.seed, d.width, d.height)
    if not args.no_clip:
        write_clip(args.clip, seconds=d.clip_seconds, seed=d.seed)
    episodes = [args.episode] if args.episode else []
    if d.episode:  # in the scrape itself, so that the pipeline's ingest mines it beside the images
        episodes.append(Path(args.output) / EPISODE_NAME)
    for path in episodes:
        write_episode(path, d.width - d.width % 2, d.height - d.height % 2, seed=d.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
