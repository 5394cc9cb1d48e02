"""Drawing for the demo stills, clip and episode: cel-shaded backgrounds, characters and captions.

Everything is drawn at ``SS`` times the final size and LANCZOS-downsampled, so edges are
anti-aliased as in real anime frames. Only Pillow's built-in bitmap font is used, and all
randomness comes from the ``random.Random`` passed in, so a seed gives the same pixels on
every machine.
"""

from __future__ import annotations

import colorsys
import random
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SS = 2  # supersampling factor: draw big, LANCZOS down, so edges are anti-aliased
INK = (24, 18, 28)
WORDS = [
    "EPISODE",
    "NEXT TIME",
    "TO BE CONTINUED",
    "CAFE",
    "HOTEL",
    "NO.",
    "STATION",
    "SCHOOL",
    "OPEN",
    "MEMORIES",
    "SPIRIT",
    "STAR",
    "DREAM",
    "SUMMER",
    "TOKYO",
]  # signs and captions

RGB = tuple[int, int, int]


def _font() -> ImageFont.ImageFont:
    # Newer Pillow's load_default() may return a FreeType font whose rendering depends
    # on the FreeType build; the bitmap font is pixel-identical everywhere.
    loader = getattr(ImageFont, "load_default_imagefont", None)
    font = loader() if loader is not None else ImageFont.load_default()
    assert isinstance(font, ImageFont.ImageFont)
    return font


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def _shade(c: RGB, k: float) -> RGB:
    return (int(c[0] * k), int(c[1] * k), int(c[2] * k))


def _gradient(w: int, h: int, top: RGB, bottom: RGB) -> Image.Image:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    rows = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    column = Image.fromarray(rows[:, None, :].round().astype(np.uint8))
    return column.resize((w, h), Image.Resampling.NEAREST)


def _outlined(d: ImageDraw.ImageDraw, pts: list[tuple[float, float]], fill: RGB, w: int) -> None:
    d.polygon(pts, fill=fill)
    d.line([*pts, pts[0]], fill=INK, width=w, joint="curve")


def _hatch(img: Image.Image, mask: Image.Image, rng: random.Random, color: RGB, s: int) -> None:
    """Parallel thin lines, clipped to the non-zero area of ``mask``."""
    box = mask.getbbox()
    if box is None:
        return
    x0, y0, x1, y1 = box
    layer = Image.new("RGB", (x1 - x0, y1 - y0), color)
    lmask = Image.new("L", layer.size, 0)
    d = ImageDraw.Draw(lmask)
    step, slope = rng.randint(5, 10) * s, rng.choice([-1.0, -0.6, 0.6, 1.0])
    span = layer.size[1]
    for x in range(-span, layer.size[0] + span, step):
        d.line([(x, 0), (x + slope * span, span)], fill=255, width=max(1, s))
    clip = Image.fromarray(np.minimum(np.asarray(lmask), np.asarray(mask.crop(box))))
    img.paste(layer, (x0, y0), clip)


def text(img: Image.Image, xy: tuple[int, int], msg: str, color: RGB, zoom: int) -> None:
    # The bitmap font cannot scale, so render at 1x and upscale with NEAREST.
    font = _font()
    x0, y0, x1, y1 = (int(v) for v in ImageDraw.Draw(img).textbbox((0, 0), msg, font=font))
    mask = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
    ImageDraw.Draw(mask).text((1 - x0, 1 - y0), msg, fill=255, font=font)
    mask = mask.resize((mask.width * zoom, mask.height * zoom), Image.Resampling.NEAREST)
    img.paste(Image.new("RGB", mask.size, color), xy, mask)


def background(rng: random.Random, w: int, h: int, s: int) -> Image.Image:
    """Sky gradient, sun/moon, clouds, hills, buildings and ground, at scale ``s``."""
    hue, night = rng.random(), rng.random() < 0.3
    v = 0.35 if night else 0.95
    top = _hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.3, 0.9), v * rng.uniform(0.5, 0.9))
    img = _gradient(w, h, top, _hsv(hue + rng.uniform(0.05, 0.3), rng.uniform(0.1, 0.6), v))
    d = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.35, 0.75))

    def lw() -> int:  # outline widths vary per shape, as with real inked cels
        return rng.randint(2, 7) * s

    r = int(h * rng.uniform(0.04, 0.1))
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.08, 0.3) * h
    sun = _hsv(rng.uniform(0.1, 0.17), 0.3 if night else 0.7, 1)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=sun)
    for _ in range(rng.randint(0, 5)):  # clouds: clusters of flat ellipses
        x, y, cw = rng.uniform(0, w), rng.uniform(0.05, 0.4) * horizon, rng.uniform(0.05, 0.15) * w
        fill, ow = _shade((250, 250, 255), 0.5 if night else 1.0), lw()
        blobs = [
            (x + rng.uniform(-1, 1) * cw, y + rng.uniform(-0.2, 0.2) * cw, rng.uniform(0.3, 0.6) * cw)
            for _ in range(rng.randint(2, 4))
        ]
        for bx, by, br in blobs:
            d.ellipse([bx - br, by - br * 0.6, bx + br, by + br * 0.6], outline=INK, width=ow)
        for bx, by, br in blobs:  # fills after all outlines, so the cluster reads as one cloud
            if br * 0.6 > ow:
                d.ellipse([bx - br + ow, by - br * 0.6 + ow, bx + br - ow, by + br * 0.6 - ow], fill)
    for layer in range(rng.randint(1, 3)):  # hills, far to near: two-tone cel shading
        base = horizon - int(h * rng.uniform(0.0, 0.25)) + layer * int(h * 0.05)
        n = rng.randint(3, 9)
        pts = [(i * w / n, base - rng.uniform(0, 0.25) * h) for i in range(n + 1)]
        pts = [(-10.0, float(h)), *pts, (w + 10.0, float(h))]
        col = _hsv(hue + rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.8), rng.uniform(0.35, 0.75) * v + 0.1)
        _outlined(d, pts, col, lw())
        shadow = [*pts[: len(pts) // 2 + 1], (w * 0.3, float(h))]  # lies inside the hill
        d.polygon(shadow, fill=_shade(col, 0.75))
        if rng.random() < 0.6:
            mask = Image.new("L", (w, h), 0)
            ImageDraw.Draw(mask).polygon(shadow, fill=255)
            _hatch(img, mask, rng, _shade(col, 0.5), s)
        d.line(pts, fill=INK, width=lw(), joint="curve")
    ground_col = _hsv(hue + rng.uniform(0.2, 0.5), rng.uniform(0.3, 0.7), 0.5 * v + 0.1)
    d.rectangle([0, horizon, w, h], fill=ground_col)
    d.line([(0, horizon), (w, horizon)], fill=INK, width=lw())
    x = rng.uniform(-0.1, 0.3) * w
    while x < w and rng.random() < 0.85:  # buildings along the horizon
        bw, bh = rng.uniform(0.06, 0.18) * w, rng.uniform(0.1, 0.45) * h
        col = _hsv(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.4, 0.9) * v + 0.05)
        box = [x, horizon - bh, x + bw, horizon]
        d.rectangle(box, fill=col, outline=INK, width=lw())
        d.rectangle([x + bw * 0.65, horizon - bh, x + bw, horizon], fill=_shade(col, 0.7))
        d.line([(x + bw * 0.65, horizon - bh), (x + bw * 0.65, horizon)], fill=INK, width=s)
        win = _hsv(0.14, 0.5, 1) if night else _shade(col, 0.55)
        for wy in np.arange(horizon - bh + 10 * s, horizon - 16 * s, 14 * s * rng.uniform(1, 2)):
            for wx in np.arange(x + 6 * s, x + bw - 12 * s, 12 * s * rng.uniform(1, 2)):
                d.rectangle([wx, wy, wx + 6 * s, wy + 7 * s], fill=win)
        if rng.random() < 0.5:
            text(img, (int(x + 4 * s), int(horizon - bh + 2 * s)), rng.choice(WORDS), INK, s)
        x += bw + rng.uniform(-0.02, 0.15) * w
    ground = Image.new("L", (w, h), 0)
    ImageDraw.Draw(ground).rectangle([0, min(horizon + lw(), h), w, h], fill=255)
    if rng.random() < 0.5:
        _hatch(img, ground, rng, _shade(_hsv(hue + 0.3, 0.5, 0.5 * v), 0.6), s)
    return img


def character(
    d: ImageDraw.ImageDraw,
    rng: random.Random,
    cx: float,
    cy: float,
    size: float,
    s: int,
    eyes_open: float = 1.0,
) -> None:
    """Stylised head-and-shoulders: hair spikes, face, big eyes, body. Consumes a fixed
    amount of ``rng`` regardless of ``eyes_open`` so blink frames share the same look."""
    skin = _hsv(rng.uniform(0.03, 0.09), rng.uniform(0.15, 0.35), rng.uniform(0.85, 1))
    hair = _hsv(rng.random(), rng.uniform(0.4, 1), rng.uniform(0.3, 1))
    iris = _hsv(rng.random(), 0.8, 0.8)
    cloth = _hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.9))
    w, lw = size * rng.uniform(0.35, 0.5), max(2 * s, int(size * rng.uniform(0.012, 0.025)))
    body = [
        (cx - w * 1.6, cy + size),
        (cx - w * 0.9, cy + w * 0.9),
        (cx + w * 0.9, cy + w * 0.9),
        (cx + w * 1.6, cy + size),
    ]
    _outlined(d, body, cloth, lw)
    spikes = rng.randint(5, 11)
    back = [
        (cx + w * 1.2 * np.cos(a), cy - w * 0.1 + w * 1.3 * np.sin(a) * (1.2 if k % 2 else 0.8))
        for k, a in enumerate(np.linspace(np.pi * 0.9, np.pi * 2.1, spikes * 2))
    ]
    _outlined(d, [(cx - w * 1.1, cy + w * 0.7), *back, (cx + w * 1.1, cy + w * 0.7)], hair, lw)
    d.ellipse([cx - w, cy - w, cx + w, cy + w * 1.15], fill=skin, outline=INK, width=lw)
    d.chord([cx - w, cy - w, cx + w, cy + w * 1.15], 300, 420, fill=_shade(skin, 0.85))
    fringe = [(cx - w * 1.05, cy - w * 0.1)]
    for k in range(spikes):
        fx, nx = cx - w + 2 * w * (k + 0.5) / spikes, cx - w + 2 * w * (k + 1) / spikes
        fringe += [(fx, cy - w * rng.uniform(-0.1, 0.3)), (nx, cy - w * 0.9)]
    _outlined(d, [*fringe, (cx + w * 1.05, cy - w * 0.1), (cx, cy - w * 1.3)], hair, lw)
    ew, eh, white = w * rng.uniform(0.22, 0.3), w * rng.uniform(0.3, 0.42), (255, 255, 255)
    for side in (-1, 1):
        ex, ey = cx + side * w * 0.42, cy + w * 0.22
        if eyes_open > 0.2:
            h2 = eh * eyes_open
            d.ellipse([ex - ew, ey - h2, ex + ew, ey + h2], fill=white, outline=INK, width=lw)
            d.ellipse([ex - ew * 0.7, ey - h2 * 0.8, ex + ew * 0.7, ey + h2 * 0.8], fill=iris)
            d.ellipse([ex - ew * 0.3, ey - h2 * 0.3, ex + ew * 0.3, ey + h2 * 0.4], fill=INK)
            d.ellipse([ex - ew * 0.5, ey - h2 * 0.6, ex - ew * 0.1, ey - h2 * 0.2], fill=white)
        else:
            d.arc([ex - ew, ey - eh * 0.4, ex + ew, ey + eh * 0.4], 10, 170, fill=INK, width=lw)
        d.line([(ex - ew * 1.1, ey - eh * 1.3), (ex + ew, ey - eh * 1.45)], fill=INK, width=lw)
    mouth = [(cx - w * 0.15, cy + w * 0.8), (cx + w * 0.15, cy + w * 0.78)]
    d.line(mouth, fill=INK, width=max(s, lw // 2))


def character_sprite(seed: int, size: float, s: int, eyes_open: float = 1.0) -> Image.Image:
    """The character of ``seed`` alone on transparency (RGBA), drawn at scale ``s`` and
    LANCZOS-downsampled by ``s`` with premultiplied alpha, so no black fringe leaks in."""
    box = (int(size * 1.8), int(size * 2.1))
    layer = Image.new("RGBA", box, (0, 0, 0, 0))
    character(ImageDraw.Draw(layer), random.Random(seed), box[0] / 2, box[1] * 0.4, size, s, eyes_open)
    small = (max(1, box[0] // s), max(1, box[1] // s))
    return layer.convert("RGBa").resize(small, Image.Resampling.LANCZOS).convert("RGBA")


def char_layout(rng: random.Random, w: int, h: int) -> tuple[float, float, float]:
    size = h * rng.uniform(0.2, 0.5)
    return rng.uniform(0.15, 0.85) * w, h - size * rng.uniform(0.9, 1.3), size


def downsample(img: Image.Image, w: int, h: int) -> Image.Image:
    return img.resize((w, h), Image.Resampling.LANCZOS)


# The mining demo: a held shot, a cut, a shot drawn on threes, a fade to black (frames at 24 fps).
EPISODE_FPS = 24
EPISODE_HELD = 24  # frames the first shot holds still
EPISODE_DRAWINGS = 8  # drawings of the second shot ...
EPISODE_ON = 3  # ... each held this many frames (on threes)
EPISODE_FADE = 12  # frames of the fade to black that ends it
EPISODE_FRAMES = EPISODE_HELD + EPISODE_DRAWINGS * EPISODE_ON + EPISODE_FADE


def episode_cut() -> int:
    """The first frame of the second shot."""
    return EPISODE_HELD


def episode_drawings() -> list[int]:
    """The first frame of each new drawing: the held still's, then each of the second shot's."""
    return [0, *(EPISODE_HELD + k * EPISODE_ON for k in range(EPISODE_DRAWINGS))]


def _scene(rng: random.Random, width: int, height: int) -> Image.Image:
    return downsample(background(rng, width * SS, height * SS, SS), width, height)


def episode_frames(width: int, height: int, seed: int = 0) -> Iterator[bytes]:
    """RGB24 frames of a short episode, fully determined by ``seed``: a still shot held for
    ``EPISODE_HELD`` frames; a cut to another scene where a character crosses the frame in
    ``EPISODE_DRAWINGS`` drawings on threes; a fade of the last drawing to black."""
    rng = random.Random(seed)
    first = _scene(rng, width, height)
    cx, cy, size = char_layout(rng, width * SS, height * SS)
    sprite = character_sprite(rng.getrandbits(64), size, SS)
    first.paste(sprite, (int(cx / SS - sprite.width / 2), int(cy / SS - sprite.height * 0.4)), sprite)
    still = first.tobytes()
    for _ in range(EPISODE_HELD):
        yield still
    second = _scene(rng, width, height)
    walker = character_sprite(rng.getrandbits(64), height * SS * 0.35, SS)
    span, y = max(0, width - walker.width), int(height - walker.height * 0.9)
    frame = second
    for k in range(EPISODE_DRAWINGS):
        frame = second.copy()
        frame.paste(walker, (span * k // (EPISODE_DRAWINGS - 1), y), walker)
        drawing = frame.tobytes()
        for _ in range(EPISODE_ON):
            yield drawing
    last = np.asarray(frame, np.float32)
    for k in range(1, EPISODE_FADE + 1):
        yield (last * (1 - k / EPISODE_FADE)).round().astype(np.uint8).tobytes()
