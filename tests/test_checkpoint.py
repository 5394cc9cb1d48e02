"""Checkpoints: our format, safetensors, published state dicts, and partial (body) loading."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from models.a2n import A2N, A2NConfig, is_upsampler_key
from models.checkpoint import (
    capture_rng_state,
    infer_config,
    load_body,
    load_model,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_safetensors,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
A2N_REFS = SHARED / "refs" / "a2n"

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def refs() -> Path:
    if not A2N_REFS.is_dir():
        pytest.fail(f"reference weights not found under {A2N_REFS}")
    return A2N_REFS


def _tiny(scale: int = 3, **kw: int) -> tuple[A2N, A2NConfig]:
    torch.manual_seed(0)
    cfg = A2NConfig(scale=scale, n_feat=8, n_up_feat=6, n_blocks=2, adm_reduction=2, **kw)
    return A2N(cfg).eval(), cfg


def _outputs(model: A2N) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        out: torch.Tensor = model(torch.rand(2, 3, 5, 7, generator=g))
    return out


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model, cfg = _tiny(scale=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    model(torch.rand(1, 3, 4, 4)).mean().backward()
    opt.step()
    model.eval()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(
        path,
        model,
        cfg,
        step=123,
        data_hash="abc123",
        optimizer_state=opt.state_dict(),
        scheduler_state=sched.state_dict(),
        rng_state=capture_rng_state(),
        extra={"best_psnr": 31.5, "history": [1, 2.5, "x"]},
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp files left

    loaded, cfg2, info = load_model(path)
    assert cfg2 == cfg
    assert info["source"] == "checkpoint"
    assert (info["step"], info["data_hash"], info["path"]) == (123, "abc123", str(path))
    assert not loaded.training
    assert torch.equal(_outputs(loaded), _outputs(model))

    # The training state comes back through weights_only=True and is usable.
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["format"] == "remaster-a2n/1"
    assert read_checkpoint(path).keys() == ckpt.keys()
    assert (ckpt["step"], ckpt["data_hash"], ckpt["config"]) == (123, "abc123", cfg.to_dict())
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == 1
    assert ckpt["scheduler"]["step_size"] == 10
    assert ckpt["extra"] == {"best_psnr": 31.5, "history": [1, 2.5, "x"]}


def test_rng_state_round_trip(tmp_path: Path) -> None:
    import random

    import numpy as np

    model, cfg = _tiny()
    save_checkpoint(tmp_path / "c.pt", model, cfg, rng_state=capture_rng_state())
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(read_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_unsafe_extras_are_refused_at_save_time(tmp_path: Path) -> None:
    model, cfg = _tiny()
    target = tmp_path / "c.pt"
    with pytest.raises(TypeError, match="weights_only"):
        save_checkpoint(target, model, cfg, extra={"out": Path("/tmp")})
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_existing_checkpoint(tmp_path: Path) -> None:
    model, cfg = _tiny()
    path = tmp_path / "c.pt"
    save_checkpoint(path, model, cfg, step=1)
    save_checkpoint(path, model, cfg, step=2)
    assert load_model(path)[2]["step"] == 2


def test_safetensors_round_trip(tmp_path: Path) -> None:
    model, cfg = _tiny(scale=4, non_attention_kernel=1)
    path = tmp_path / "anime_x4.safetensors"
    save_safetensors(path, model, cfg, {"data_hash": "feed", "licence": "CC-BY-4.0"})
    loaded, cfg2, info = load_model(path)
    assert cfg2 == cfg
    assert info["source"] == "safetensors"
    assert info["metadata"]["data_hash"] == "feed"
    assert info["metadata"]["licence"] == "CC-BY-4.0"
    assert torch.equal(_outputs(loaded), _outputs(model))
    with pytest.raises(TypeError):
        bad_meta: dict[str, object] = {"step": 3}
        save_safetensors(tmp_path / "b.safetensors", model, cfg, bad_meta)  # type: ignore[arg-type]


def test_published_state_dict_scale_from_file_name(refs: Path) -> None:
    model, cfg, info = load_model(refs / "aan_x3.pt")
    assert cfg == A2NConfig(scale=3)
    assert info["source"] == "state_dict"
    assert model(torch.rand(1, 3, 4, 5)).shape == (1, 3, 12, 15)


def test_published_state_dict_scale_from_argument(refs: Path, tmp_path: Path) -> None:
    anon = tmp_path / "weights.pt"
    shutil.copyfile(refs / "aan_x2.pt", anon)
    with pytest.raises(ValueError, match="cannot tell x2 from x3"):
        load_model(anon)
    _, cfg, _ = load_model(anon, scale=2)
    assert cfg.scale == 2
    # the argument wins over the file name; a state dict in memory needs it
    sd = torch.load(refs / "aan_x2.pt", map_location="cpu", weights_only=True)
    assert load_model(sd, scale=3)[1].scale == 3
    with pytest.raises(ValueError, match="cannot tell"):
        load_model(sd)
    with pytest.raises(ValueError, match="not x4"):
        load_model(sd, scale=4)


def test_bare_state_dict_shapes_give_the_config(tmp_path: Path) -> None:
    model, cfg = _tiny(scale=4, non_attention_kernel=1)
    path = tmp_path / "plain.pth"
    torch.save(model.state_dict(), path)
    loaded, cfg2, _ = load_model(path)  # x4 from upconv2, no name hint needed
    assert cfg2 == cfg
    assert torch.equal(_outputs(loaded), _outputs(model))
    # DataParallel-style prefixes are accepted
    prefixed = {f"module.{k}": v for k, v in model.state_dict().items()}
    assert load_model(prefixed)[1] == cfg


@pytest.mark.parametrize(
    ("name", "scale"),
    [("aan_x2.pt", 2), ("A2N_X3.pth", 3), ("x2", 2), ("max2.pt", None), ("x2_x3.pt", None)],
)
def test_scale_from_file_name(name: str, scale: int | None) -> None:
    sd = _tiny(scale=2)[0].state_dict()
    if scale is None:
        with pytest.raises(ValueError, match="cannot tell"):
            infer_config(sd, name=name)
    else:
        assert infer_config(sd, name=name).scale == scale


def test_garbage_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(ValueError, match=r"garbage\.pt: not a loadable PyTorch checkpoint"):
        load_model(garbage)

    other = tmp_path / "other.pt"
    torch.save({"epoch": 3, "lr": 0.1}, other)
    with pytest.raises(ValueError, match=r"other\.pt: not an A2N checkpoint"):
        load_model(other)

    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a readable safetensors"):
        load_model(bad_st)

    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


class _Booby:
    """Unpickling this runs code: a loader that allows it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def test_arbitrary_pickles_are_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"conv_first.weight": _Booby(marker)}, path)
    with pytest.raises(ValueError, match=r"evil\.pt"):
        load_model(path)
    assert not marker.exists()


def test_wrong_shapes_fail_strict_loading() -> None:
    model, cfg = _tiny(scale=2)
    sd = model.state_dict()
    sd["trunk_conv.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="do not fit"):
        load_model({"format": "remaster-a2n/1", "model": sd, "config": cfg.to_dict()})


def test_checkpoint_scale_mismatch(tmp_path: Path) -> None:
    model, cfg = _tiny(scale=3)
    save_checkpoint(tmp_path / "c.pt", model, cfg)
    with pytest.raises(ValueError, match="x3, asked for x2"):
        load_model(tmp_path / "c.pt", scale=2)


def test_load_body_across_scales(refs: Path) -> None:
    source = torch.load(refs / "aan_x2.pt", map_location="cpu", weights_only=True)
    torch.manual_seed(3)
    target = A2N(A2NConfig(scale=4))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    loaded, skipped = load_body(target, source)

    after = target.state_dict()
    assert loaded and all(not is_upsampler_key(k) for k in loaded)
    assert set(loaded) == {k for k in source if not is_upsampler_key(k)}
    assert set(skipped) == {k for k in source if is_upsampler_key(k)}
    assert "upconv1.weight" in skipped and "conv_last.bias" in skipped
    for k in loaded:
        assert torch.equal(after[k], source[k]), k
    for k in after:
        if is_upsampler_key(k):
            assert torch.equal(after[k], before[k]), k  # upsampler untouched, x4 keys included


def test_load_body_refuses_a_different_trunk() -> None:
    small, _ = _tiny(scale=2)
    with pytest.raises(ValueError, match="trunk"):
        load_body(A2N(A2NConfig(scale=2, n_blocks=2)), small.state_dict())
