"""The evaluate stage: parity on Set5, the report, LR-only mode, bad files, memory, DVC and MLflow."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from models.a2n import A2N, A2NConfig
from models.checkpoint import save_checkpoint
from remaster.cli.main import main as cli_main
from remaster.config import EvaluateParams
from remaster.data.imaging import downscale, modcrop
from remaster.evaluation.sets import EvaluateError, packed_pairs
from remaster.tracking import MlflowTracker, NullTracker
from stages.evaluate import run

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"name", "psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y"}


def _tiny(path: Path, scale: int, *, seed: int = 0, bilinear: bool = False) -> Path:
    """A tiny A2N checkpoint; ``bilinear`` zeroes the last conv so it returns its bilinear skip."""
    torch.manual_seed(seed)
    cfg = A2NConfig(scale=scale, n_feat=8, n_up_feat=8, n_blocks=1)
    model = A2N(cfg)
    if bilinear:
        torch.nn.init.zeros_(model.conv_last.weight)
        torch.nn.init.zeros_(model.conv_last.bias)
    save_checkpoint(path, model, cfg, step=1, data_hash="test")
    return path


def _picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour ramps with hard-edged rings: something for SR to do, cheap to compress."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w * 255, y / h * 255, 128 + 100 * np.sin((x + y + seed * 7) / 13)], axis=-1)
    img[(np.hypot(x - w / 2, y - h / 3) % 23) < 3] = 20
    return img.clip(0, 255).astype(np.uint8)


def _pack_val(path: Path, hr_files: list[Path], tile: int, scale: int) -> None:
    """A packed val file as stages.pack writes it: hr, lr_x{scale}, image, xy and the attrs."""
    hrs = [np.asarray(Image.open(f).convert("RGB"))[:tile, :tile] for f in hr_files]
    with h5py.File(path, "w") as f:
        f["hr"] = np.stack(hrs)
        f[f"lr_x{scale}"] = np.stack([downscale(h, scale) for h in hrs])
        f.create_dataset("image", data=[p.stem for p in hr_files], dtype=h5py.string_dtype())
        f["xy"] = np.zeros((len(hrs), 2), np.int32)
        f.attrs.update({"scales": [scale], "kernel": "matlab-bicubic-aa", "tile_size": tile, "split": "val"})


def defaults(folder: Path) -> str:
    """A params file that holds nothing: every param at its built-in default."""
    (folder / "defaults.yaml").write_text("{}\n")
    return str(folder / "defaults.yaml")


def test_set5_parity_bicubic_and_report(shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = cli_main(["evaluate", "--hr", str(shared / "refs/benchmarks/Set5/HR"), "--scale", "2",
                   "--model", str(shared / "refs/a2n/aan_x2.pt"), "-o", str(out), "--no-track",
                   "--params", defaults(tmp_path)])  # fmt: skip
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    print(f"Set5 x2: A2N {m['psnr_y']:.3f} dB / {m['ssim_y']:.4f}, "
          f"bicubic {m['bicubic_psnr_y']:.3f} dB / {m['bicubic_ssim_y']:.4f}")  # fmt: skip
    assert m["scale"] == 2 and m["n_images"] == 5 and m["skipped"] == []
    assert m["psnr_y"] == pytest.approx(38.06, abs=0.05)  # the paper's figure, through this path
    assert m["bicubic_psnr_y"] == pytest.approx(33.67, abs=0.2)  # measured 33.674
    assert m["ssim_y"] > m["bicubic_ssim_y"] + 0.02
    assert m["psnr_rgb"] > m["bicubic_psnr_rgb"] + 3
    assert m["model"]["spec"].endswith("aan_x2.pt") and len(m["model"]["sha256"]) == 64
    rows = m["images"]
    assert [r["name"] for r in rows] == ["baby", "bird", "butterfly", "head", "woman"]
    assert all(set(r) >= ROWS and r["psnr_y"] > r["bicubic_psnr_y"] for r in rows)
    assert m["psnr_y"] == pytest.approx(np.mean([r["psnr_y"] for r in rows]))

    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page) and "<script" not in page
    strips = re.findall(r'<img class="sbs"[^>]*src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(strips) == 5
    import base64
    import io

    first = Image.open(io.BytesIO(base64.b64decode(strips[0])))
    assert first.size == (4 * 192 + 3 * 4, 192)  # LR nearest | bicubic | A2N | HR
    svg = re.search(r'<svg class="gain".*?</svg>', page, re.S)
    assert svg is not None and svg.group(0).count('class="bar"') == 5
    assert "butterfly" in page and f"{m['psnr_y']:.3f}" in page
    assert len(page) < 1_500_000


def test_lr_only_mode_writes_outputs_and_page(tmp_path: Path) -> None:
    lr_dir = tmp_path / "lr"
    (lr_dir / "sub").mkdir(parents=True)
    Image.fromarray(_picture(30, 40)).save(lr_dir / "a.png")
    Image.fromarray(_picture(21, 17, seed=1)).save(lr_dir / "sub" / "b.jpg", quality=95)
    (lr_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    rc = cli_main(["evaluate", "--lr", str(lr_dir), "--scale", "2", "--model",
                   str(_tiny(tmp_path / "t.pt", 2)), "-o", str(out), "--no-track",
                   "--params", defaults(tmp_path)])  # fmt: skip
    assert rc == 0
    assert Image.open(out / "sr" / "a.png").size == (80, 60)
    assert Image.open(out / "sr" / "sub" / "b.png").size == (34, 42)
    assert sorted(p.name for p in (out / "sr").rglob("*.png")) == ["a.png", "b.png"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_images"] == 2 and m["n_skipped"] == 1 and "psnr_y" not in m
    assert m["skipped"][0]["name"] == "broken.png"
    page = (out / "report.html").read_text()
    strips = re.findall(r'<img class="sbs"[^>]*src="data:image/jpeg;base64,', page)
    assert len(strips) == 2 and 'class="bar"' not in page and "LR (nearest) | bicubic | A2N<" in page


def test_bad_files_are_skipped_with_reasons_and_empty_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    good = _picture(64, 50)
    Image.fromarray(good).save(hr / "good.png")
    (hr / "empty.png").write_bytes(b"")
    (hr / "notes.txt").write_text("not an image")
    (hr / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    Image.fromarray(good).save(hr / "cut.png")
    (hr / "cut.png").write_bytes((hr / "cut.png").read_bytes()[:300])
    Image.fromarray(good[:10, :10]).save(hr / "small.png")
    ckpt = _tiny(tmp_path / "t.pt", 2)
    m = run(EvaluateParams(), 2, tmp_path / "out", model=str(ckpt), hr_dirs=[hr])
    assert m["n_images"] == 1 and [r["name"] for r in m["images"]] == ["good"]
    reasons = {s["name"]: s["reason"].split(":")[0] for s in m["skipped"]}
    assert reasons == {
        "cut.png": "truncated",
        "empty.png": "zero_byte",
        "noise.jpg": "not_an_image",
        "notes.txt": "unsupported_extension",
        "small": "too_small",
    }
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["skipped"] == m["skipped"]
    assert "zero_byte" in (tmp_path / "out" / "report.html").read_text()

    (hr / "good.png").unlink()
    with pytest.raises(EvaluateError, match="no readable images to score"):
        run(EvaluateParams(), 2, tmp_path / "out2", model=str(ckpt), hr_dirs=[hr])
    empty = tmp_path / "nothing"
    empty.mkdir()
    rc = cli_main(["evaluate", "--hr", str(empty), "--scale", "2", "--model", str(ckpt), "--no-track",
                   "-o", str(tmp_path / "out3"), "--params", defaults(tmp_path)])  # fmt: skip
    assert rc == 2
    assert f"{empty} is empty: no images to evaluate" in capsys.readouterr().err
    assert not (tmp_path / "out3").exists()


_MEMORY_SCRIPT = """
import json, resource, sys
from pathlib import Path
from stages.evaluate import run
from remaster.config import EvaluateParams
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# tile=392 sends the 768x768 LR through the tiled path in about four tiles
m = run(EvaluateParams(tile=392), 4, Path(sys.argv[1]), model=sys.argv[2], hr_dirs=[Path(sys.argv[3])])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kib": after - before, "n_images": m["n_images"]}))
"""


@pytest.mark.slow
def test_a_3072px_image_evaluates_within_4_gib(tmp_path: Path) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(_picture(3072, 3072)).save(hr / "big.png", compress_level=1)
    ckpt = _tiny(tmp_path / "t.pt", 4)
    res = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path / "out"), str(ckpt), str(hr)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"peak RSS growth evaluating 3072x3072 at x4: {got['growth_kib'] / 2**20:.2f} GiB")
    assert got["n_images"] == 1
    assert got["growth_kib"] < 4 * 2**20


def test_packed_pairs_prefer_the_stored_lr(tmp_path: Path) -> None:
    hr = np.stack([_picture(48, 48, seed=i) for i in range(2)])
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["hr"] = hr
        f["lr_x2"] = np.zeros((2, 24, 24, 3), np.uint8)  # not what downscale gives: must be used
    pairs = list(packed_pairs(tmp_path / "v.h5", 2))
    assert [p[0] for p in pairs] == ["tile00000", "tile00001"]
    assert not pairs[1][2].any()
    assert np.array_equal(pairs[1][1], hr[1])
    pairs = list(packed_pairs(tmp_path / "v.h5", 3))  # no lr_x3: made with the pack downsampler
    assert np.array_equal(pairs[0][2], downscale(modcrop(hr[0], 3), 3))


def test_dvc_stage_command_scores_val_and_hr_dirs(
    shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set5 = sorted((shared / "refs/benchmarks/Set5/HR").glob("*.png"))
    (tmp_path / "data/packed").mkdir(parents=True)
    _pack_val(tmp_path / "data/packed/val.h5", set5[:3], 96, 2)
    _tiny(tmp_path / "runs/train/best.pt", 2)
    test_dir = tmp_path / "test" / "HR"
    test_dir.mkdir(parents=True)
    Image.fromarray(_picture(40, 52)).save(test_dir / "one.png")
    params = {"train": {"scale": 2}, "evaluate": {"hr_dirs": ["test/HR"]}, "tracking": {"enabled": False}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]
    argv = shlex.split(stage["cmd"])
    assert argv[:3] == ["python", "-m", "stages.evaluate"]
    monkeypatch.chdir(tmp_path)
    from stages.evaluate import main

    assert main(argv[3:]) == 0
    declared = [next(iter(d)) if isinstance(d, dict) else d for d in stage["metrics"]]
    dvc_metrics = json.loads((tmp_path / declared[0]).read_text())
    assert dvc_metrics["scale"] == 2 and set(dvc_metrics) == {"scale", "degradation", "val", "test_HR"}
    assert dvc_metrics["degradation"] == "bicubic"
    assert dvc_metrics["val"]["n_images"] == 3 and dvc_metrics["test_HR"]["n_images"] == 1
    assert {"psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y", "gain_psnr_y"} <= set(dvc_metrics["val"])
    full = json.loads((tmp_path / "reports/eval/metrics.json").read_text())
    assert full["name"] == "val" and full["model"]["spec"] == "runs/train/best.pt"
    assert set(full["sets"]) == {"val", "test_HR"}
    assert [r["name"] for r in full["images"]] == ["baby@0,0", "bird@0,0", "butterfly@0,0"]
    assert (tmp_path / "reports/eval/report.html").read_text().count('class="sbs"') == 4


def test_champion_alias_follows_val_psnr(shared: Path, tmp_path: Path) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db")
    client = tracker.client
    val = tmp_path / "val.h5"
    _pack_val(val, sorted((shared / "refs/benchmarks/Set5/HR").glob("*.png"))[:3], 96, 2)
    bilinear = _tiny(tmp_path / "a/best.pt", 2, bilinear=True)
    noisy = _tiny(tmp_path / "b/best.pt", 2, seed=3)
    published = A2N(A2NConfig(scale=2))
    published.load_state_dict(torch.load(shared / "refs/a2n/aan_x2.pt", weights_only=True))
    save_checkpoint(tmp_path / "c/best.pt", published, published.config, step=1)

    def train_then_evaluate(ckpt: Path) -> tuple[str | None, dict]:
        with tracker.start_run("training", "train-x2", {"data_hash": "test"}):
            tracker.log_artifact(ckpt, "model")
            version = tracker.register_model("model", "a2n-x2", "candidate")
        m = run(EvaluateParams(), 2, ckpt.parent / "eval", tracker, model=str(ckpt), val_h5=val)
        return version, m

    def champion() -> str:
        return str(client.get_model_version_by_alias("a2n-x2", "champion").version)

    v1, m1 = train_then_evaluate(bilinear)
    assert champion() == v1 == "1" and m1["tracking"]["champion"]["moved"]
    run1 = client.get_run(m1["tracking"]["training_run_id"])
    assert run1.data.metrics["eval_val_psnr_y"] == pytest.approx(m1["psnr_y"])
    assert "evaluation/report.html" in [a.path for a in client.list_artifacts(run1.info.run_id, "evaluation")]
    ev = client.get_run(m1["tracking"]["evaluation_run_id"])
    exp = client.get_experiment(ev.info.experiment_id)
    assert exp is not None and exp.name == "evaluation"
    assert ev.data.metrics["eval_val_psnr_y"] == pytest.approx(m1["psnr_y"])
    assert ev.data.tags["training_run_id"] == run1.info.run_id

    v2, m2 = train_then_evaluate(noisy)
    assert m2["psnr_y"] < m1["psnr_y"]
    assert champion() == "1" and v2 == "2" and not m2["tracking"]["champion"]["moved"]

    v3, m3 = train_then_evaluate(tmp_path / "c/best.pt")
    assert m3["psnr_y"] > m1["psnr_y"]
    assert champion() == v3 == "3"

    # A model that is not the candidate's file touches neither its training run nor the alias.
    m4 = run(EvaluateParams(), 2, tmp_path / "d", tracker, model=str(bilinear), val_h5=val)
    assert "training_run_id" not in m4["tracking"] and m4["tracking"]["evaluation_run_id"]
    assert champion() == "3"
    # With tracking off nothing is recorded.
    runs_before = len(client.search_runs([exp.experiment_id]))
    m5 = run(EvaluateParams(), 2, tmp_path / "e", NullTracker(), model=str(noisy), val_h5=val)
    assert m5["tracking"] == {"evaluation_run_id": None}
    assert len(client.search_runs([exp.experiment_id])) == runs_before and champion() == "3"


def test_degrade_scores_on_degraded_lr_and_says_so(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    for i in range(2):
        Image.fromarray(_picture(96, 128, seed=i)).save(hr_dir / f"p{i}.png")
    model = str(_tiny(tmp_path / "tiny.pt", 2, bilinear=True))
    scores = {}
    for spec in ("", "x264:crf=35", "mpeg2:q=12"):
        out = tmp_path / (spec.replace(":", "_") or "clean")
        params = EvaluateParams(degrade=spec, report_images=0)
        scores[spec] = run(params, 2, out, NullTracker(), model=model, hr_dirs=[hr_dir])
        html = (out / "report.html").read_text()
        assert (spec or "bicubic (clean)") in html
        assert json.loads((out / "metrics.json").read_text())["degradation"] == (spec or "bicubic")
    clean = scores[""]
    assert {"lanczos_psnr_y", "lanczos_ssim_y"} <= set(clean)
    for spec in ("x264:crf=35", "mpeg2:q=12"):
        # the same HR and model; only the LR changed, and every upscaler lost to it
        assert scores[spec]["bicubic_psnr_y"] < clean["bicubic_psnr_y"] - 0.5, spec
        assert scores[spec]["psnr_y"] < clean["psnr_y"] - 0.5, spec
        assert scores[spec]["lanczos_psnr_y"] < clean["lanczos_psnr_y"] - 0.5, spec
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["evaluate", "--hr", str(hr_dir), "--scale", "2", "-S", "evaluate.degrade=vhs", "--no-track"]
        )
    assert exit_info.value.code == 2
