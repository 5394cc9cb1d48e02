"""params.yaml, loaded once into frozen dataclasses. An unknown or missing key is an error."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml

T = TypeVar("T")


# The enum-like params, checked when params load (an unknown value names the key and the choices).
LrKind = Literal["bicubic", "realistic"]  # the paper's clean LR, or LR like a real old episode
Schedule = Literal["step", "cosine"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Backend = Literal["auto", "torch", "onnx"]
Codec = Literal["libx264", "libx265"]
PixFmt = Literal["auto", "yuv420p", "yuv420p10le"]
Deinterlace = Literal["auto", "on", "off"]
ReuseMode = Literal["off", "exact", "near"]
Runner = Literal["threads", "dask"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
BACKENDS: tuple[str, ...] = get_args(Backend)
REUSE_MODES: tuple[str, ...] = get_args(ReuseMode)
RUNNERS: tuple[str, ...] = get_args(Runner)
# What a degradation chain (remaster.data.degradations) may hold; checked here when params load.
KERNELS = ("bicubic", "area", "bilinear", "lanczos")
CODECS = ("none", "chroma", "x264", "mpeg2", "jpeg")
QUALITY_RANGE = {"x264": (0, 51), "mpeg2": (1, 31), "jpeg": (1, 100)}  # CRF, -qscale:v, quality
RANGE_KEYS = {"x264": "x264_crf", "mpeg2": "mpeg2_q", "jpeg": "jpeg_quality"}  # RealisticParams' ranges
BLUR_MAX = 5.0  # Gaussian sigma, HR pixels
NOISE_MAX = 50.0  # Gaussian sigma, grey levels


@dataclass(frozen=True)
class DemoParams:
    n_images: int = 8
    width: int = 1280
    height: int = 1024
    seed: int = 0
    clip_seconds: float = 2.0
    episode: bool = False  # also put a 2.5 s episode (episode.mkv) in the scrape, for ingest to mine


SquarePixels = Literal["shrink", "stretch", "keep"]  # a non-square SAR: shrink an axis, stretch one, or keep


@dataclass(frozen=True)
class MiningParams:
    """How ``ingest`` mines frames out of video files (``remaster.data.mining``)."""

    frames_per_minute: float = 12.0  # at most this many frames per minute of video
    repeat_tolerance: float = 1.5  # mean luma difference (grey levels, small grey copy) that still repeats
    scene_threshold: float = 0.2  # grey-histogram change (0..1) between two frames that is a scene cut
    black_level: int = 32  # a frame with 98% of its luma under this (0..255) is black
    flat_std: float = 4.0  # a frame whose luma standard deviation is under this is near-flat
    crop: bool = True  # crop letterbox and pillarbox bars
    deinterlace: Deinterlace = "auto"  # auto (field order, frame flags, else idet), on or off
    square_pixels: SquarePixels = "shrink"
    min_seconds: float = 1.0  # a shorter video is rejected (too_short)

    def __post_init__(self) -> None:
        where = "ingest.video"
        check_choices(self, where)
        if not 0.0 < self.frames_per_minute <= 3600.0:
            raise ValueError(f"{where}.frames_per_minute: {self.frames_per_minute} is outside (0, 3600]")
        for key, hi in (("repeat_tolerance", 64.0), ("flat_std", 128.0), ("min_seconds", 3600.0)):
            if not 0.0 <= getattr(self, key) <= hi:
                raise ValueError(f"{where}.{key}: {getattr(self, key)} is outside 0..{hi:g}")
        if not 0.0 < self.scene_threshold <= 1.0:
            raise ValueError(f"{where}.scene_threshold: {self.scene_threshold} is outside (0, 1]")
        if not 0 <= self.black_level <= 255:
            raise ValueError(f"{where}.black_level: {self.black_level} is outside 0..255")


@dataclass(frozen=True)
class IngestParams:
    source_dir: str = "data/demo/scrape"
    min_side: int = 1024
    max_pixels: int = 100_000_000
    background: tuple[int, int, int] = (255, 255, 255)
    near_dup_distance: int = 6
    video: MiningParams = field(default_factory=MiningParams)


@dataclass(frozen=True)
class TileParams:
    size: int = 480
    stride: int = 200
    skip_flat: bool = True
    flat_std: float = 2.0
    val_fraction: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class RealisticParams:
    """How ``pack.degradation: realistic`` draws each tile's chain (``remaster.data.degradations``).

    Ranges are [low, high], drawn uniformly. The codec and its quality are drawn once per image
    and scale (all of an image's tiles go through one encode); the kernel, blur and noise per tile.
    """

    seed: int = 0
    kernels: tuple[str, ...] = ("bicubic", "area", "bilinear", "lanczos")
    blur_prob: float = 0.4  # share of tiles blurred before the downscale
    blur: tuple[float, ...] = (0.3, 1.2)  # Gaussian sigma, HR pixels
    noise_prob: float = 0.3  # share of tiles with noise
    noise: tuple[float, ...] = (0.5, 3.0)  # Gaussian sigma, grey levels
    codecs: tuple[str, ...] = ("x264", "mpeg2", "jpeg")  # drawn uniformly per image
    x264_crf: tuple[int, ...] = (18, 30)
    mpeg2_q: tuple[int, ...] = (2, 10)  # -qscale:v; DVDs sit around 3 to 8
    jpeg_quality: tuple[int, ...] = (50, 95)

    def __post_init__(self) -> None:
        check_realistic(self, "pack.realistic")


def check_realistic(p: RealisticParams, where: str) -> None:
    """Every key in range, or a ``ValueError`` that names the key and what it allows."""

    def subset(key: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
        bad = [v for v in values if v not in allowed]
        if not values or bad:
            raise ValueError(
                f"{where}.{key}: {list(values)} must be a non-empty list of {', '.join(allowed)}"
            )

    def span(key: str, values: tuple[float, ...], lo: float, hi: float) -> None:
        if len(values) != 2 or not lo <= values[0] <= values[1] <= hi:
            raise ValueError(f"{where}.{key}: {list(values)} must be [low, high] within {lo:g}..{hi:g}")

    subset("kernels", p.kernels, KERNELS)
    subset("codecs", p.codecs, CODECS)
    for key in ("blur_prob", "noise_prob"):
        if not 0.0 <= getattr(p, key) <= 1.0:
            raise ValueError(f"{where}.{key}: {getattr(p, key)} is outside 0..1")
    span("blur", p.blur, 0.0, BLUR_MAX)
    span("noise", p.noise, 0.0, NOISE_MAX)
    for codec, key in RANGE_KEYS.items():
        span(key, getattr(p, key), *QUALITY_RANGE[codec])


@dataclass(frozen=True)
class PackParams:
    scales: tuple[int, ...] = (2, 4)
    degradation: LrKind = "bicubic"  # bicubic (the paper's clean LR only) or realistic (also lr_x{s}_real)
    realistic: RealisticParams = field(default_factory=RealisticParams)


@dataclass(frozen=True)
class ModelParams:
    n_feat: int = 40
    n_up_feat: int = 24
    n_blocks: int = 16
    a2n_m: bool = False


@dataclass(frozen=True)
class TrainParams:
    scale: int = 4
    iterations: int = 100
    batch_size: int = 16
    hr_crop: int = 128
    lr: float = 5e-4
    schedule: Schedule = "step"
    lr_step: int = 200_000
    lr_gamma: float = 0.5
    charbonnier_eps: float = 1e-6
    val_every: int = 50
    seed: int = 0
    workers: int = 0
    init: str = ""
    degradation: LrKind = "bicubic"  # which LR to learn from: bicubic, or realistic (needs a realistic pack)
    clean_fraction: float = 0.3  # with realistic: share of samples that take the clean LR instead
    model: ModelParams = field(default_factory=ModelParams)

    def __post_init__(self) -> None:
        if not 0.0 <= self.clean_fraction <= 1.0:
            raise ValueError(f"train.clean_fraction: {self.clean_fraction} is outside 0..1")


@dataclass(frozen=True)
class EvaluateParams:
    hr_dirs: tuple[str, ...] = ()  # held-out HR folders scored beside the val split
    model: str = ""  # a checkpoint or models:/name@alias; "" = runs/train/best.pt in the DVC stage
    precision: Precision = "fp32"  # fp32 keeps scores comparable across machines; bf16/fp16/auto are faster
    tile: int = 0  # LR tile side for inference; 0 = sized to the device's memory
    report_crops: int = 1  # side-by-side crops per image in the report
    report_images: int = 16  # images per set that get side-by-side crops (the first ones)
    degrade: str = ""  # LR made with this chain (e.g. x264:crf=23); "" = the clean pack downsampler


@dataclass(frozen=True)
class RemasterParams:
    scale: int = 4  # 2 or 4
    model: str = ""  # "" = shipped video weights (clean ones for a lossless source); clean; a path
    codec: Codec = "libx264"
    crf: int = 18
    preset: str = "medium"
    pix_fmt: PixFmt = "auto"  # yuv420p, yuv420p10le, or auto (10-bit for a deeper source)
    segment_seconds: float = 10.0  # segments are cut at keyframes about this long; 0 = one segment
    deinterlace: Deinterlace = "auto"  # auto (probe/idet), on or off
    workers: int = 0  # segments upscaled at once; 0 = 1 on a CPU, 2 on a GPU
    batch: int = 2  # frames per model call
    precision: Precision = "auto"
    tile: int = 0  # LR tile side for inference; 0 = sized to the device's memory
    cuda_graphs: bool = False  # replay the model from CUDA graphs, one per frame shape (GPU only)
    reuse: ReuseMode = "near"  # a frame that repeats the last computed one reuses its output
    reuse_tolerance: float = 1.5  # near: mean luma difference (grey levels) that still counts as held
    media_roots: tuple[str, ...] = ()  # inputs and outputs must lie under one of these; () = anywhere
    runner: Runner = "threads"  # where segments upscale: threads (this process) or dask (worker processes)
    dask_address: str = ""  # a running Dask scheduler, tcp://host:8786; "" = a local cluster per run


@dataclass(frozen=True)
class TrackingParams:
    enabled: bool = True


@dataclass(frozen=True)
class Params:
    demo: DemoParams = field(default_factory=DemoParams)
    ingest: IngestParams = field(default_factory=IngestParams)
    tile: TileParams = field(default_factory=TileParams)
    pack: PackParams = field(default_factory=PackParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    remaster: RemasterParams = field(default_factory=RemasterParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return from_mapping(tp, value, where)  # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0]
        return tuple(_coerce(item, v, where) for v in value)
    if origin in (types.UnionType, typing.Union):
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ValueError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def check_choices(obj: Any, where: str) -> None:
    """Check the ``Literal`` fields of dataclass ``obj`` built without ``from_mapping`` (by a flow
    run's parameters, or ``dataclasses.replace``)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if typing.get_origin(hints[f.name]) is Literal:
            _coerce(hints[f.name], getattr(obj, f.name), f"{where}.{f.name}")


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "params") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise, missing keys take defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=1e-4`` -> (["train", "lr"], 0.0001), values parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override must look like section.key=value, got {text!r}")
    return key.split("."), yaml.safe_load(raw)


DEFAULT_PARAMS = "params.yaml"


def load_params(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Params:
    """Read the params file and apply ``key=value`` overrides. ``None`` reads ./params.yaml, or gives
    the defaults where there is none; a file that is named but missing is an error."""
    p = Path(path if path is not None else DEFAULT_PARAMS)
    if path is not None and not p.is_file():
        raise FileNotFoundError(f"params file {p} does not exist")
    data: dict[str, Any] = {}
    if p.exists():
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{p}: expected a mapping at the top level")
        data = loaded
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return from_mapping(Params, data, str(p))


def as_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain, YAML/JSON-friendly data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"train.model.n_feat": 40, ...}, for logging params."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
