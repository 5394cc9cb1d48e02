"""Train stage: A2N on the packed HDF5 tiles, with Charbonnier loss and Adam.

``run`` does the work; ``main`` reads params.yaml and the paths. Every ``val_every`` steps and
at the end it validates on whole val tiles and saves ``last.pt`` (everything needed to resume)
and, when the val PSNR improves, ``best.pt``. A run that finds a matching ``last.pt`` carries
on from it: the data order is a pure function of the step (``remaster.training.dataset``), so a resumed
run computes what an uninterrupted one would have.

Devices: CUDA if there is one (bf16 autocast, channels_last), else the CPU (fp32,
channels_last, every core unless ``OMP_NUM_THREADS`` is set); ``REMASTER_CPU_BF16=1`` asks for
bf16 autocast on the CPU, which pays only where the CPU has native bf16 (AVX512-BF16, AMX).
Under ``torchrun`` (WORLD_SIZE > 1) it trains with DistributedDataParallel; rank 0 validates,
saves and tracks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from models.a2n import A2N, A2NConfig
from models.checkpoint import capture_rng_state, load_model, restore_rng_state, save_checkpoint
from remaster import stopping
from remaster.arguments import train_parser
from remaster.commandline import load_params_or_exit, progress_enabled, run_main
from remaster.config import TrainParams, as_dict, flatten
from remaster.files import write_json
from remaster.tracking import NullTracker, Tracker, make_tracker
from remaster.training import loop, report
from remaster.training.dataset import PairDataset, StepSampler, TileDataset
from remaster.training.loop import History

log = logging.getLogger(__name__)

EXPERIMENT = "training"


def run(
    params: TrainParams,
    train_h5: Path,
    val_h5: Path,
    out_dir: Path,
    tracker: Tracker,
    *,
    metrics_path: Path | None = None,
    plots_dir: Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train (or resume, or do nothing if finished); the summary also goes to ``metrics_path``.

    The summary holds the metrics (step, last and best val Y-PSNR/SSIM, bicubic's, seconds,
    samples/s) plus ``resumed_from`` (a step or None) and the tracking ``run_id``.
    """
    with loop.runtime() as rt:
        return _train(params, Path(train_h5), Path(val_h5), Path(out_dir), tracker, rt,
                      metrics_path, plots_dir, progress)  # fmt: skip


def _train(
    p: TrainParams,
    train_h5: Path,
    val_h5: Path,
    out_dir: Path,
    tracker: Tracker,
    rt: loop.Runtime,
    metrics_path: Path | None,
    plots_dir: Path | None,
    progress: bool | None,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    tracker = tracker if rt.is_main else NullTracker()
    cfg, hp = loop.model_config(p), loop.hparams(p, rt.world)
    hashes = (loop.data_hash(train_h5), loop.data_hash(val_h5))
    out_dir.mkdir(parents=True, exist_ok=True)
    last, best = out_dir / "last.pt", out_dir / "best.pt"
    samples_per_step = p.batch_size * rt.world

    resume = loop.resumable(last, cfg, hashes, hp)
    ckpt, hist = resume if resume is not None else (None, History())
    torch.manual_seed(p.seed)
    model = A2N(cfg)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        log.info("resuming from step %d (%s)", hist.step, last)
        if not best.exists():
            hist.best = loop.NO_SCORE  # the next validation writes a new best.pt
    else:
        if rt.is_main and best.exists():
            best.unlink()  # from another configuration: it must not be taken for this run's
        if p.init:
            log.info("initialised from %s: %s", p.init, loop.init_from(model, p.init))
    resumed_from = hist.step if ckpt is not None else None
    val_tiles = TileDataset(val_h5, p.scale, p.degradation)

    def write_outputs() -> dict[str, Any]:
        summary = hist.summary(samples_per_step)
        if rt.is_main:
            if plots_dir is not None:
                report.write_history_csvs(plots_dir, hist)
            if metrics_path is not None:
                write_json(metrics_path, summary)
        return {**summary, "resumed_from": resumed_from, "run_id": None}

    if hist.step >= p.iterations:
        log.info("%s is at step %d of %d: nothing to train; outputs rewritten", last, hist.step, p.iterations)
        summary = write_outputs()
        if rt.is_main and plots_dir is not None and best.exists():
            # DVC removes a stage's outputs before running it: every one must be written again.
            _log_artifacts(NullTracker(), p, cfg, best, val_tiles, rt, plots_dir, metrics_path, hist)
        return summary

    model.to(rt.device, memory_format=rt.memory_format)  # type: ignore[call-overload]
    opt = torch.optim.Adam(model.parameters(), lr=p.lr, betas=(0.9, 0.999))
    sched = loop.make_scheduler(opt, p)
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        restore_rng_state(ckpt["rng"])
    del ckpt
    net: torch.nn.Module = model
    if rt.world > 1:
        net = DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    sampler = StepSampler(hist.step, p.iterations, p.batch_size, rt.rank, rt.world)
    loader = DataLoader(
        PairDataset(
            train_h5,
            p.scale,
            p.hr_crop,
            augment=True,
            seed=p.seed,
            kind=p.degradation,
            clean_fraction=p.clean_fraction,
        ),
        batch_size=p.batch_size,
        sampler=sampler,
        num_workers=p.workers,
        pin_memory=rt.device.type == "cuda",
    )
    if rt.is_main and hist.bicubic is None:
        hist.bicubic = loop.bicubic_scores(val_tiles, p.scale)  # once per training, kept in last.pt
    seconds_before = hist.seconds

    def checkpoint(step: int) -> None:
        psnr, ssim = loop.validate(model, val_tiles, p.scale, rt)
        bic = hist.bicubic or (0.0, 0.0)
        hist.val.append(loop.Score(step, psnr, ssim))
        metrics = {"val_psnr_y": psnr, "val_ssim_y": ssim, "bicubic_psnr_y": bic[0], "bicubic_ssim_y": bic[1]}
        tracker.log_metrics(metrics, step)
        log.info("step %d: val Y-PSNR %.3f dB, SSIM %.4f (bicubic %.3f dB, %.4f)", step, psnr, ssim, *bic)
        if psnr > hist.best.psnr_y:
            hist.best = hist.val[-1]
            extra = {"psnr_y": psnr, "ssim_y": ssim, "hparams": hp}
            save_checkpoint(best, model, cfg, step=step, data_hash=hashes[0], extra=extra)
        save_last(step)

    def save_last(step: int) -> None:
        """last.pt at ``step``: what a resumed run needs (the data order is a function of the step)."""
        hist.seconds = seconds_before + time.perf_counter() - t_start
        extra = {**hist.to_extra(), "hparams": hp, "val_hash": hashes[1]}
        save_checkpoint(
            last,
            model,
            cfg,
            step=step,
            data_hash=hashes[0],
            optimizer_state=opt.state_dict(),
            scheduler_state=sched.state_dict(),
            rng_state=capture_rng_state(),
            extra=extra,
        )
        write_outputs()

    tags = {"data_hash": hashes[0], "scale": str(p.scale), "device": str(rt)}
    tags["resumed_from"] = str(resumed_from)
    if hist.run_ids:
        tags["previous_run_ids"] = ",".join(hist.run_ids)
    show = progress_enabled(progress)
    with tracker.start_run(EXPERIMENT, f"train-x{p.scale}", tags), logging_redirect_tqdm():
        if tracker.run_id:
            hist.run_ids.append(tracker.run_id)
        tracker.log_params({**flatten(as_dict(p), "train."), "world_size": rt.world})
        log.info("training x%d, steps %d to %d, on %s", p.scale, hist.step, p.iterations, rt)
        bar = tqdm(total=p.iterations, initial=hist.step, unit="it", disable=not show or not rt.is_main)
        net.train()
        t_seg = time.perf_counter()
        # Without a terminal there is no bar: a line a minute says how far the run is instead.
        beat = loop.Heartbeat(p.iterations, hist.step, enabled=bar.disable and rt.is_main)
        try:
            for lr_img, hr_img in loader:
                stopping.raise_if_stopping()  # between steps, where the state is whole
                lr_img = rt.to_device(lr_img)  # (B, 3, h, w)
                hr_img = rt.to_device(hr_img)  # (B, 3, h*s, w*s)
                with rt.autocast():
                    sr = net(lr_img)  # (B, 3, h*s, w*s)
                loss = loop.charbonnier(sr.float(), hr_img, p.charbonnier_eps)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                lr_now = opt.param_groups[0]["lr"]
                opt.step()
                sched.step()
                hist.step += 1
                hist.loss.append((loss.item(), lr_now))
                tracker.log_metrics({"loss": hist.loss[-1][0], "lr": lr_now}, hist.step)
                bar.set_postfix(loss=f"{hist.loss[-1][0]:.4f}", refresh=False)
                bar.update(1)
                beat.tick(hist.step, hist.loss[-1][0])
                if hist.step % p.val_every == 0 or hist.step == p.iterations:
                    hist.train_seconds += time.perf_counter() - t_seg
                    if rt.is_main:
                        checkpoint(hist.step)
                    t_seg = time.perf_counter()
        except stopping.Stopped:
            if rt.is_main and hist.step > 0:
                save_last(hist.step)  # no validation: the stop must be quick
                log.info("stopped at step %d; %s holds it", hist.step, last)
            raise
        bar.close()
        if hist.step != p.iterations:
            raise RuntimeError(f"the data loader stopped at step {hist.step} of {p.iterations}")
        summary = write_outputs()
        if rt.is_main:
            summary["run_id"] = tracker.run_id
            final = ("best_psnr_y", "best_ssim_y", "samples_per_s")
            tracker.log_metrics({f"final_{k}": summary[k] for k in final}, hist.step)
            _log_artifacts(tracker, p, cfg, best, val_tiles, rt, plots_dir, metrics_path, hist)
    log.info("done: step %d, best val Y-PSNR %.3f dB at step %d", hist.step, hist.best.psnr_y, hist.best.step)
    return summary


def _log_artifacts(
    tracker: Tracker,
    p: TrainParams,
    cfg: A2NConfig,
    best: Path,
    val_tiles: TileDataset,
    rt: loop.Runtime,
    plots_dir: Path | None,
    metrics_path: Path | None,
    hist: History,
) -> None:
    """Pictures beside the CSVs, then the best model, curves and sample to the tracker."""
    with tempfile.TemporaryDirectory() as tmp:
        pics = plots_dir if plots_dir is not None else Path(tmp)
        pics.mkdir(parents=True, exist_ok=True)
        files = report.write_curve_pngs(pics, hist)
        best_model, _, _ = load_model(best, device=rt.device)
        files.append(report.write_sample_png(pics / "sample.png", best_model, val_tiles, p.scale, rt))
        if plots_dir is None:
            files += report.write_history_csvs(pics, hist)
        else:
            files += [plots_dir / "loss.csv", plots_dir / "val.csv"]
        if tracker.run_id is None:
            return
        config_json = Path(tmp) / "config.json"
        write_json(config_json, {"config": cfg.to_dict(), **dataclasses.asdict(hist.best)})
        tracker.log_artifact(best, "model")
        tracker.log_artifact(config_json, "model")
        for f in files:
            tracker.log_artifact(f, "plots")
        if metrics_path is not None:
            tracker.log_artifact(metrics_path, "metrics")
        tracker.register_model("model", f"a2n-x{p.scale}", "candidate")


def main(argv: list[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, only rank 0 talks and tracks
    level = logging.INFO if main_rank else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_params_or_exit(args.params, args.overrides)
    tp = params.train if args.init is None else dataclasses.replace(params.train, init=args.init)
    tracker = make_tracker(not args.no_track and params.tracking.enabled and main_rank)
    resume = f"{args.output}/last.pt holds the last step; run the same command to resume"
    try:
        with stopping.stop_on_signals("remaster train", resume, raise_now=False):
            run(
                tp,
                args.train,
                args.val,
                args.output,
                tracker,
                metrics_path=args.metrics,
                plots_dir=args.plots,
            )
    except stopping.Stopped as e:
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
