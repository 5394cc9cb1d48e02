"""Realistic LR: every codec really runs, the pack is seeded and reproducible, bad settings are refused."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from remaster.cli.main import main as cli
from remaster.config import IngestParams, PackParams, RealisticParams, TileParams
from remaster.data.degradations import (
    Degradation,
    DegradationError,
    codec_round_trip,
    degrade,
    parse_spec,
    tile_degradation,
)
from remaster.data.imaging import downscale
from remaster.evaluation.metrics import psnr_y
from remaster.training.dataset import PairDataset, TileDataset
from stages import ingest, pack, tile
from stages.demo import generate_image, write_images


@pytest.fixture(scope="module")
def hr() -> np.ndarray:
    return np.asarray(generate_image(5, 480, 320))[
        :320, :480
    ].copy()  # (320, 480, 3), sides even at x2 and x4


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return psnr_y(a, b, 0)


def test_spec_round_trips_and_names_what_is_allowed() -> None:
    for text in ("bicubic", "chroma", "x264:crf=23", "mpeg2:q=8", "jpeg:q=70,kernel=area,blur=0.8,noise=2"):
        assert parse_spec(text).spec == text
        assert parse_spec(parse_spec(text).spec) == parse_spec(text)
    assert parse_spec("clean").is_clean
    with pytest.raises(
        DegradationError, match=r"unknown degradation 'h265'.*allowed: bicubic, clean, chroma"
    ):
        parse_spec("h265:crf=23")
    with pytest.raises(DegradationError, match=r"x264 crf=60 is outside 0\.\.51"):
        parse_spec("x264:crf=60")
    with pytest.raises(DegradationError, match=r"mpeg2 needs q=N"):
        parse_spec("mpeg2")
    with pytest.raises(DegradationError, match=r"'crf=3' is not one of kernel=, blur=, noise=, q="):
        parse_spec("jpeg:crf=3")
    with pytest.raises(
        DegradationError, match=r"kernel 'nearest' is not one of bicubic, area, bilinear, lanczos"
    ):
        parse_spec("x264:crf=20,kernel=nearest")


def test_every_codec_really_runs_and_degrades_in_order_of_its_quality(hr: np.ndarray) -> None:
    clean = downscale(hr, 2)
    assert np.array_equal(degrade(hr, 2, Degradation()), clean)
    score = {spec: _psnr(degrade(hr, 2, parse_spec(spec)), clean)
             for spec in ("chroma", "x264:crf=18", "x264:crf=30", "mpeg2:q=2", "mpeg2:q=10", "jpeg:q=95",
                          "jpeg:q=40")}  # fmt: skip
    for spec, value in score.items():
        assert 25.0 < value < 60.0, (spec, value)  # changed, but still the same picture
    assert score["x264:crf=30"] < score["x264:crf=18"] - 2.0
    assert score["mpeg2:q=10"] < score["mpeg2:q=2"] - 2.0
    assert score["jpeg:q=40"] < score["jpeg:q=95"] - 2.0
    assert score["chroma"] > score["x264:crf=30"]
    # kernels, blur and noise each change the LR on their own
    for spec in ("chroma:kernel=area", "chroma:kernel=lanczos", "chroma:blur=1.0", "chroma:noise=3"):
        assert not np.array_equal(degrade(hr, 2, parse_spec(spec)), degrade(hr, 2, parse_spec("chroma"))), (
            spec
        )
    assert np.array_equal(degrade(hr, 2, parse_spec("chroma:noise=3"), seed=1),
                          degrade(hr, 2, parse_spec("chroma:noise=3"), seed=1))  # fmt: skip


def test_a_batch_codes_each_frame_as_it_would_alone(hr: np.ndarray) -> None:
    """Intra-only: a frame's LR does not depend on the frames coded beside it."""
    frames = [downscale(hr, 2), downscale(np.ascontiguousarray(hr[:, ::-1]), 2)]
    for codec, q in (("mpeg2", 6), ("chroma", 0)):
        together = codec_round_trip(frames, codec, q)
        alone = [codec_round_trip([f], codec, q)[0] for f in frames]
        assert all(np.array_equal(a, b) for a, b in zip(together, alone, strict=True)), codec
    odd = codec_round_trip([frames[0][:119, :237]], "x264", 23)[0]
    assert odd.shape == (119, 237, 3)


def test_tile_draws_depend_on_the_tile_and_the_seed_only() -> None:
    p = RealisticParams()
    a = tile_degradation(p, "0123456789abcdef", 2, 200, 0)
    assert a == tile_degradation(p, "0123456789abcdef", 2, 200, 0)
    draws = {tile_degradation(p, "0123456789abcdef", 2, x, 0) for x in range(0, 4000, 200)}
    assert len(draws) > 10
    assert {d.codec for d, _ in draws} == {a[0].codec}  # one encode per image and scale
    other = RealisticParams(seed=1)
    assert [tile_degradation(other, "0123456789abcdef", 2, x, 0) for x in range(0, 4000, 200)] != [
        tile_degradation(p, "0123456789abcdef", 2, x, 0) for x in range(0, 4000, 200)
    ]


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real")
    write_images(root / "scrape", 3, seed=4, width=560, height=480)
    ingest.run(IngestParams(min_side=400), root / "scrape", root / "ingested")
    tile.run(
        TileParams(size=240, stride=160, skip_flat=False, val_fraction=0.34),
        root / "ingested",
        root / "tiles",
    )
    return root


def _realistic(root: Path, out: str, **changes: object) -> Path:
    realistic = RealisticParams(**changes)  # type: ignore[arg-type]
    pack.run(PackParams(scales=(2, 4), degradation="realistic", realistic=realistic), root / "ingested",
             root / "tiles", root / out)  # fmt: skip
    return root / out


def test_realistic_pack_is_seeded_and_rebuilds_bit_identically(tiles: Path) -> None:
    first = _realistic(tiles, "a")
    again = _realistic(tiles, "b")
    reseeded = _realistic(tiles, "c", seed=7)
    clean = tiles / "clean"
    pack.run(PackParams(scales=(2, 4)), tiles / "ingested", tiles / "tiles", clean)
    with h5py.File(first / "train.h5") as f, h5py.File(again / "train.h5") as g, \
            h5py.File(reseeded / "train.h5") as r, h5py.File(clean / "train.h5") as c:  # fmt: skip
        n = f["hr"].shape[0]
        assert n == c["hr"].shape[0] > 4
        assert "lr_x2_real" not in c and c.attrs["degradation"] == "bicubic"
        for s in (2, 4):
            real = f[f"lr_x{s}_real"][:]
            assert np.array_equal(real, g[f"lr_x{s}_real"][:])
            assert not np.array_equal(real, r[f"lr_x{s}_real"][:])
            assert np.array_equal(f[f"lr_x{s}"][:], c[f"lr_x{s}"][:])  # the clean LR is kept as it was
            specs = [x.decode() for x in f[f"degradation_x{s}"][:]]
            assert len(specs) == n and all(parse_spec(x).spec == x for x in specs)
            for i in range(n):
                assert _psnr(real[i], c[f"lr_x{s}"][i]) < 60.0  # every tile really degraded
        settings = json.loads(f.attrs["realistic"])
        assert settings["x264_crf"] == [18, 30] and f.attrs["ffmpeg"].startswith("ffmpeg version")
        assert f.attrs["manifest_hash"] == g.attrs["manifest_hash"] != r.attrs["manifest_hash"]
        assert f.attrs["manifest_hash"] != c.attrs["manifest_hash"]
    # the datasets read the kind asked for, and the clean share of a realistic run
    real_tiles, clean_tiles = TileDataset(first / "val.h5", 2, "realistic"), TileDataset(first / "val.h5", 2)
    assert not np.array_equal(real_tiles[0][0].numpy(), clean_tiles[0][0].numpy())
    all_clean = PairDataset(first / "train.h5", 2, 64, augment=False, kind="realistic", clean_fraction=1.0)
    no_clean = PairDataset(first / "train.h5", 2, 64, augment=False, kind="realistic", clean_fraction=0.0)
    bicubic = PairDataset(first / "train.h5", 2, 64, augment=False)
    for k in range(4):
        assert np.array_equal(all_clean[k][0].numpy(), bicubic[k][0].numpy())
        assert not np.array_equal(no_clean[k][0].numpy(), bicubic[k][0].numpy())
        assert np.array_equal(no_clean[k][1].numpy(), bicubic[k][1].numpy())
    with pytest.raises(ValueError, match=r"has no realistic LR \(lr_x2_real\)"):
        PairDataset(clean / "train.h5", 2, 64, kind="realistic")


def test_a_failing_codec_names_the_tiles_and_writes_no_file(tiles: Path, tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/sh\nfor a in "$@"; do [ "$a" = -version ] && echo "ffmpeg version fake" && exit 0; done\n'
        'echo "Conversion failed!" >&2\nexit 1\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    from remaster.data import degradations

    degradations.ffmpeg_version.cache_clear()
    try:
        with pytest.raises(
            DegradationError,
            match=r"train\.h5: tiles 0\.\.\d+ \(image [0-9a-f]{12}\) at x2: "
            r"(x264|mpeg2) q=\d+ on \d+ frame\(s\) of 120x120 \(encode\): ffmpeg exited 1: Conversion",
        ):
            _realistic(tiles, "broken", codecs=("x264", "mpeg2"))
    finally:
        degradations.ffmpeg_version.cache_clear()
    assert not (tiles / "broken" / "train.h5").exists()
    assert not [p for p in (tiles / "broken").iterdir() if p.name.startswith(".")]


def _params(tmp_path: Path, **pack_values: object) -> Path:
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["pack"].update(pack_values)
    params["tracking"]["enabled"] = False
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"degradation": "dvd"}, "pack.degradation: 'dvd' is not one of bicubic, realistic"),
        (
            {"realistic": {"x264_crf": [18, 60]}},
            r"pack.realistic.x264_crf: [18, 60] must be [low, high] within 0..51",
        ),
        (
            {"realistic": {"codecs": ["x264", "h265"]}},
            "pack.realistic.codecs: ['x264', 'h265'] must be a non-empty list of "
            "none, chroma, x264, mpeg2, jpeg",
        ),
        ({"realistic": {"blur_prob": 1.5}}, "pack.realistic.blur_prob: 1.5 is outside 0..1"),
    ],
)
def test_bad_pack_settings_exit_2_with_the_key_and_no_hdf5(
    tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: dict, message: str
) -> None:
    params = _params(tmp_path, **setting)
    out = tmp_path / "packed"
    with pytest.raises(SystemExit) as exit_info:
        cli(["pack", "--params", str(params), "--ingested", str(tiles / "ingested"),
             "--tiles", str(tiles / "tiles"), "-o", str(out)])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_evaluate_refuses_a_bad_degrade_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(["evaluate", "--hr", str(tmp_path), "--scale", "2", "--degrade", "x264:crf=99", "--no-track"])
    assert exit_info.value.code == 2
    assert "--degrade: x264 crf=99 is outside 0..51" in capsys.readouterr().err


def test_a_failing_decoder_is_named_not_the_encoder_it_cut_off(tmp_path: Path) -> None:
    """Encoder and decoder run at once, joined by a pipe: when the decoder dies, the encoder only
    sees its pipe break, so the error must quote the decoder."""
    import ffmpeg

    from remaster import stopping
    from remaster.data import degradations

    enc = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s="64x64", r=25)
    enc = enc.output("pipe:", vcodec="libx264", format="h264")
    dec = ffmpeg.input("pipe:", format="h264").output(str(tmp_path / "no" / "such.raw"), format="rawvideo")
    with pytest.raises(DegradationError, match=r"^x264 test \(decode\): ffmpeg exited 1: .*such\.raw"):
        degradations._encode_decode(enc, dec, bytes(64 * 64 * 3 * 200), "x264 test")
    assert stopping.live_children() == []
