"""Stage ``evaluate``: score A2N against bicubic on held-out images and write a report.

Each HR image is cropped to a multiple of the scale, its LR made with the pack downsampler
(``remaster.data.imaging.downscale``), then super-resolved through the shared ``Upscaler`` (tiled, so
memory stays bounded at any size) and by bicubic. Both are scored on the same pixels: Y-PSNR
and SSIM (BT.601 Y, border crop = scale) and RGB PSNR. Sets are the packed val tiles (their
stored LR) and/or folders of HR images; a folder of LR images with no HR (``upscale_folder``)
gets its outputs and a side-by-side page but no scores. Unreadable files are recorded under
``skipped`` with a reason and the run goes on; a folder with nothing to score is an error.

With tracking on, the scores and the report go to an ``evaluation`` run and, when the model is
the registered ``a2n-x{s}@candidate`` (same file bytes), to that version's training run too,
where the val Y-PSNR decides whether the candidate takes the ``champion`` alias.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from remaster.arguments import DEFAULT_CHECKPOINT, evaluate_parser
from remaster.commandline import prepare, progress_enabled, run_main
from remaster.config import EvaluateParams, as_dict
from remaster.data.degradations import DegradationError, parse_spec
from remaster.data.imaging import bicubic_upscale
from remaster.engine.upscaler import Upscaler
from remaster.evaluation import report
from remaster.evaluation.metrics import psnr_rgb, psnr_y, ssim_y
from remaster.evaluation.sets import EvaluateError, folder_images, hr_folder_pairs, list_files, packed_pairs
from remaster.files import atomic_path, sha256_file, write_json, write_text
from remaster.model_source import resolve_model
from remaster.tracking import MlflowTracker, Registry, Tracker

log = logging.getLogger(__name__)

EXPERIMENT = "evaluation"
METRIC_KEYS = ("psnr_y", "ssim_y", "psnr_rgb", "bicubic_psnr_y", "bicubic_ssim_y", "bicubic_psnr_rgb",
               "lanczos_psnr_y", "lanczos_ssim_y")  # fmt: skip
NUMBERS = (*METRIC_KEYS, "gain_psnr_y", "n_images", "n_skipped")  # per set, in metrics/eval.json
CHAMPION_METRIC = "eval_val_psnr_y"  # logged on the training run; decides the champion alias


def load_upscaler(params: EvaluateParams, model: str | None, scale: int) -> Upscaler:
    return Upscaler.load(
        str(resolve_model(model or None, scale)), scale, precision=params.precision, tile=params.tile or None
    )


def model_info(up: Upscaler, spec: str | None) -> dict[str, Any]:
    info = up.info or {}
    path = info.get("path")
    return {
        "spec": spec or "shipped",
        "path": path,
        "source": info.get("source"),
        "step": info.get("step"),
        "data_hash": info.get("data_hash"),
        "sha256": sha256_file(path) if path else None,
    }


@dataclass(frozen=True)
class SetScores:
    """One scored set: the means over its images (``METRIC_KEYS`` and ``gain_psnr_y``), the rows
    per image, and the files skipped with their reasons."""

    name: str
    scale: int
    means: dict[str, float]
    images: list[dict[str, Any]]
    skipped: list[dict[str, str]]

    def as_json(self) -> dict[str, Any]:
        """The set as metrics.json holds it."""
        counts = {"n_images": len(self.images), "n_skipped": len(self.skipped)}
        return {"name": self.name, "scale": self.scale, **counts, **self.means, "images": self.images,
                "skipped": self.skipped}  # fmt: skip


def score_set(
    name: str,
    pairs: Iterator[tuple[str, np.ndarray, np.ndarray]],
    up: Upscaler,
    params: EvaluateParams,
    skipped: list[dict[str, str]],
    progress: bool,
) -> tuple[SetScores, report.Section]:
    """Score A2N and bicubic on every pair; the set's metrics and its report section."""
    s = up.scale
    rows: list[dict[str, Any]] = []
    figures: list[report.Figure] = []
    for img_name, hr, lr in tqdm(pairs, desc=name, unit="image", disable=not progress):
        sr = up.upscale_image(lr)  # (H, W, 3) uint8
        bic = bicubic_upscale(lr, s)
        lanczos = np.asarray(
            Image.fromarray(lr).resize((lr.shape[1] * s, lr.shape[0] * s), Image.Resampling.LANCZOS)
        )
        row: dict[str, Any] = {"name": img_name}
        for prefix, out in (("", sr), ("bicubic_", bic)):
            row[f"{prefix}psnr_y"] = psnr_y(out, hr, s)
            row[f"{prefix}ssim_y"] = ssim_y(out, hr, s)
            row[f"{prefix}psnr_rgb"] = psnr_rgb(out, hr, s)
        row["lanczos_psnr_y"] = psnr_y(lanczos, hr, s)
        row["lanczos_ssim_y"] = ssim_y(lanczos, hr, s)
        row["gain_psnr_y"] = row["psnr_y"] - row["bicubic_psnr_y"]
        rows.append(row)
        if len(rows) <= params.report_images:
            figures += report.figures_for(img_name, lr, bic, sr, hr, s, params.report_crops)
        del sr, bic
    if not rows:
        reasons = "; ".join(f"{k['name']}: {k['reason']}" for k in skipped[:5])
        raise EvaluateError(f"{name}: no readable images to score ({len(skipped)} skipped: {reasons})")
    means = {k: float(np.mean([r[k] for r in rows])) for k in (*METRIC_KEYS, "gain_psnr_y")}
    return SetScores(name, s, means, rows, skipped), report.Section(name, means, rows, skipped, figures)


def set_name(folder: Path, taken: set[str]) -> str:
    """A folder's name in the metrics: ``Set5_HR`` for the usual ``Set5/HR`` layout."""
    name = folder.resolve().name
    if name.lower() in ("hr", "gt", "hq", "images") and folder.resolve().parent.name:
        name = f"{folder.resolve().parent.name}_{name}"
    name = re.sub(r"[^\w\-.]", "_", name) or "images"
    base, i = name, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def run(
    params: EvaluateParams,
    scale: int,
    out_dir: Path,
    tracker: Tracker | None = None,
    *,
    model: str | None = None,
    val_h5: Path | None = None,
    hr_dirs: Sequence[Path] = (),
    metrics_path: Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Score ``model`` (None = the shipped weights) and bicubic on ``val_h5`` and ``hr_dirs``.

    Writes ``out_dir/metrics.json`` (the first set's means and per-image rows at the top
    level, every set under ``sets`` when there are several), ``out_dir/report.html`` and, when
    given, ``metrics_path``: the means per set only, for ``dvc metrics``. Returns the metrics.
    """
    if val_h5 is None and not hr_dirs:
        raise EvaluateError("nothing to evaluate: give HR folders or a packed val file")
    if val_h5 is not None and not Path(val_h5).is_file():
        raise EvaluateError(f"{val_h5} does not exist")
    for d in hr_dirs:
        list_files(Path(d))  # an empty folder fails before the model loads
    degradation = parse_spec(params.degrade) if params.degrade else None
    up = load_upscaler(params, model, scale)
    show = progress_enabled(progress)
    results: list[SetScores] = []
    sections: list[report.Section] = []
    sources: list[tuple[str, Iterator[tuple[str, np.ndarray, np.ndarray]], list[dict[str, str]]]] = []
    if val_h5 is not None:
        sources.append(("val", packed_pairs(Path(val_h5), scale, degradation), []))
    taken = {"val"}
    for d in hr_dirs:
        skipped: list[dict[str, str]] = []
        name = set_name(Path(d), taken)
        taken.add(name)
        sources.append((name, hr_folder_pairs(Path(d), scale, skipped, degradation), skipped))
    for name, pairs, skipped in sources:
        result, section = score_set(name, pairs, up, params, skipped, show)
        results.append(result)
        sections.append(section)
        m = result.means
        log.info("%s: A2N %.3f dB / %.4f, bicubic %.3f dB / %.4f over %d images", name, m["psnr_y"],
                 m["ssim_y"], m["bicubic_psnr_y"], m["bicubic_ssim_y"], len(result.images))  # fmt: skip
    lr_spec = degradation.spec if degradation is not None else "bicubic"
    metrics = {**results[0].as_json(), "model": model_info(up, model), "degradation": lr_spec}
    if len(results) > 1:
        metrics["sets"] = {r.name: r.as_json() for r in results}
    write_json(out_dir / "metrics.json", metrics)
    lr_text = f"{lr_spec} (HR downscaled x{scale}, then degraded)" if degradation else "bicubic (clean)"
    facts = {"model": str(metrics["model"]["spec"]), "scale": f"x{scale}", "precision": up.precision}
    facts["LR"] = lr_text
    write_text(out_dir / "report.html", report.render(f"A2N x{scale} against bicubic", facts, sections))
    compact = {r.name: {k: v for k, v in r.as_json().items() if k in NUMBERS} for r in results}
    if metrics_path is not None:
        write_json(metrics_path, {"scale": scale, "degradation": lr_spec, **compact})
    flat = {f"eval_{n}_{k}": float(v) for n, m in compact.items() for k, v in m.items()}
    if tracker is not None:
        metrics["tracking"] = track(tracker, params, scale, metrics["model"], flat, out_dir)
    return metrics


def upscale_folder(
    params: EvaluateParams,
    scale: int,
    lr_dir: Path,
    out_dir: Path,
    tracker: Tracker | None = None,
    *,
    model: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """LR-only mode: write ``out_dir/sr/<name>.png`` per image and a side-by-side page; counts only."""
    list_files(lr_dir)
    up = load_upscaler(params, model, scale)
    skipped: list[dict[str, str]] = []
    rows: list[dict[str, Any]] = []
    figures: list[report.Figure] = []
    images = folder_images(lr_dir, skipped)
    for name, lr in tqdm(images, desc=lr_dir.name, unit="image", disable=not progress_enabled(progress)):
        sr = up.upscale_image(lr)  # (H*s, W*s, 3) uint8
        with atomic_path(out_dir / "sr" / f"{name}.png") as tmp:
            Image.fromarray(sr).save(tmp, format="PNG")
        h, w = lr.shape[:2]
        rows.append({"name": name, "width": w, "height": h, "out_width": w * scale, "out_height": h * scale})
        if len(rows) <= params.report_images:
            bic = bicubic_upscale(lr, scale)
            figures += report.figures_for(name, lr, bic, sr, None, scale, params.report_crops)
    if not rows:
        raise EvaluateError(f"{lr_dir}: no readable images ({len(skipped)} skipped)")
    info = model_info(up, model)
    metrics = {"mode": "lr", "scale": scale, "n_images": len(rows), "n_skipped": len(skipped)}
    metrics |= {"model": info, "images": rows, "skipped": skipped}
    write_json(out_dir / "metrics.json", metrics)
    section = report.Section(lr_dir.name, rows=rows, skipped=skipped, figures=figures)
    facts = {"model": str(info["spec"]), "scale": f"x{scale}", "precision": up.precision}
    write_text(out_dir / "report.html", report.render(f"A2N x{scale} on {lr_dir.name}", facts, [section]))
    if tracker is not None:
        counts = {"eval_lr_n_images": float(len(rows)), "eval_lr_n_skipped": float(len(skipped))}
        track(tracker, params, scale, info, counts, out_dir, link=False)
    return metrics


def track(
    tracker: Tracker,
    params: EvaluateParams,
    scale: int,
    model: dict[str, Any],
    metrics: dict[str, float],
    out_dir: Path,
    link: bool = True,
) -> dict[str, Any]:
    """An ``evaluation`` run; with ``link``, for the registered candidate also its training run
    and the champion alias (which compares val Y-PSNRs: scores from different val splits are
    not comparable, so keep the split fixed while models compete)."""
    done: dict[str, Any] = {}
    registry = Registry(tracker) if isinstance(tracker, MlflowTracker) else None
    name = f"a2n-x{scale}"
    candidate = registry.candidate(name, model.get("sha256")) if registry and link else None
    tags = {"model": str(model["spec"]), "scale": str(scale)}
    if candidate is not None:
        tags |= {"training_run_id": candidate.run_id, "model_version": str(candidate.version)}
    with tracker.start_run(EXPERIMENT, f"evaluate-x{scale}", tags):
        done["evaluation_run_id"] = tracker.run_id
        tracker.log_params({f"evaluate.{k}": v for k, v in as_dict(params).items()})
        tracker.log_metrics(metrics)
        for f in ("metrics.json", "report.html"):
            tracker.log_artifact(out_dir / f, "evaluation")
    if registry is None or candidate is None:
        return done
    registry.log_to_run(candidate.run_id, metrics, [out_dir / "metrics.json", out_dir / "report.html"])
    done |= {"training_run_id": candidate.run_id, "model_version": str(candidate.version)}
    if CHAMPION_METRIC in metrics:
        done["champion"] = registry.promote(name, candidate, metrics[CHAMPION_METRIC], CHAMPION_METRIC)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = evaluate_parser()
    args = parser.parse_args(argv)
    if args.hr and args.lr:
        parser.error("--hr and --lr go to separate runs")
    if args.degrade is not None:
        try:
            parse_spec(args.degrade)
        except DegradationError as e:
            parser.error(f"--degrade: {e}")
        args.overrides.append(f"evaluate.degrade={args.degrade}")
    params, tracker = prepare(args)
    p = params.evaluate
    if p.degrade:
        try:
            parse_spec(p.degrade)
        except DegradationError as e:
            parser.error(f"evaluate.degrade: {e}")
    scale = args.scale or params.train.scale
    stage = not args.hr and not args.lr
    model = args.model or p.model or (DEFAULT_CHECKPOINT if stage else None)
    try:
        if args.lr:
            upscale_folder(p, scale, args.lr, args.output, tracker, model=model)
        else:
            val = args.val or (Path("data/packed/val.h5") if stage else None)
            hr_dirs = args.hr or [Path(d) for d in p.hr_dirs]
            run(
                p,
                scale,
                args.output,
                tracker,
                model=model,
                val_h5=val,
                hr_dirs=hr_dirs,
                metrics_path=args.metrics,
            )
    except (EvaluateError, FileNotFoundError) as e:
        print(f"remaster evaluate: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
