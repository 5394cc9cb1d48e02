"""The ingest stage on generated images, including every kind of bad input it must survive."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from remaster.config import IngestParams
from stages.demo import generate_image
from stages.ingest import phash, run

PARAMS = IngestParams(min_side=96, near_dup_distance=6)


def _img(seed: int, w: int = 160, h: int = 128) -> Image.Image:
    return generate_image(seed, w, h)


def _jpeg(img: Image.Image, quality: int = 92, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, **kw)
    return buf.getvalue()


def _png(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        return {r["source"]: r for r in csv.DictReader(f)}


def _tree_state(root: Path) -> dict[bytes, tuple[str, int, int]]:
    state = {}
    for dirpath, _, files in os.walk(os.fsencode(root)):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            try:
                digest = hashlib.sha256(Path(os.fsdecode(p)).read_bytes()).hexdigest()
            except PermissionError:
                digest = "unreadable"
            state[p] = (digest, st.st_mtime_ns, st.st_mode)
    return state


@pytest.fixture
def scrape() -> Iterator[Path]:
    """A scrape folder holding one of each awkward file (world-readable, see the permissions case)."""
    root = Path(tempfile.mkdtemp(prefix="scrape-"))
    os.chmod(root, 0o777)
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    base = _img(1)
    (src / "good.png").write_bytes(_png(base))
    (src / "sub" / "other.jpg").write_bytes(_jpeg(_img(2)))
    (src / "empty.png").write_bytes(b"")
    full = _jpeg(_img(3))
    (src / "truncated.jpg").write_bytes(full[: len(full) * 2 // 3])
    fullpng = _png(_img(4))
    (src / "truncated.png").write_bytes(fullpng[: len(fullpng) // 2])
    (src / "notes.png").write_text("this is not an image\n")
    deep = (np.asarray(_img(5).convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(src / "sixteen.png")
    (src / "cmyk.jpg").write_bytes(_jpeg(_img(6).convert("CMYK")))
    pal = _img(7).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.putpixel((0, 0), 0)
    (src / "palette.png").write_bytes(_png(pal, transparency=0))
    rot = _img(8, 160, 128)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait (rotate 90 clockwise)
    (src / "rotated.jpg").write_bytes(_jpeg(rot, exif=exif))
    frames = [_img(9), _img(10), _img(11)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    (src / "tiny.png").write_bytes(_png(_img(12, 80, 60)))
    (src / "zcopy.png").write_bytes(_png(base))  # same pixels as good.png
    (src / "zreencoded.jpg").write_bytes(
        _jpeg(_img(2), quality=80, subsampling=0)
    )  # near twin of sub/other.jpg
    (src / "secret.png").write_bytes(_png(_img(13)))
    os.chmod(src / "secret.png", 0)
    with open(os.path.join(os.fsencode(src), b"caf\xe9.png"), "wb") as f:
        f.write(_png(_img(14)))
    (src / "really_jpeg.png").write_bytes(_jpeg(_img(15)))
    (src / "readme.txt").write_text("hello")
    for dirpath, dirs, _ in os.walk(src):
        for d in [dirpath, *(os.path.join(dirpath, x) for x in dirs)]:
            os.chmod(d, 0o777)
    yield src
    os.chmod(src / "secret.png", 0o600)
    shutil.rmtree(root)


def _ingest(src: Path, out: Path, params: IngestParams = PARAMS) -> dict:
    """Run ingest; as root, in a child that drops to 'nobody' so that permissions bite."""
    if os.geteuid() != 0:
        return run(params, src, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(out.parent, 0o777)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = run(params, src, out)
            (out.parent / "child-summary.json").write_text(json.dumps(result))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "ingest failed in the unprivileged child"
    return json.loads((out.parent / "child-summary.json").read_text())


def test_every_bad_input_is_recorded_with_its_reason(scrape: Path) -> None:
    before = _tree_state(scrape)
    out = scrape.parent / "out"
    summary = _ingest(scrape, out)
    m = _manifest(out)

    def status(name: str) -> tuple[str, str]:
        return m[name]["status"], m[name]["reason"]

    assert status("good.png") == ("ok", "")
    assert status("sub/other.jpg") == ("ok", "")
    assert status("empty.png") == ("rejected", "zero_byte")
    assert status("truncated.jpg")[0] == "rejected"
    assert status("truncated.jpg")[1].startswith("truncated")
    assert status("truncated.png")[0] == "rejected"
    assert status("truncated.png")[1].startswith("truncated")
    assert status("notes.png") == ("rejected", "not_an_image")
    assert status("sixteen.png") == ("ok", "from I;16")
    assert status("cmyk.jpg") == ("ok", "from CMYK")
    assert status("palette.png") == ("ok", "from P")
    assert status("rotated.jpg") == ("ok", "exif rotated")
    assert (m["rotated.jpg"]["width"], m["rotated.jpg"]["height"]) == ("128", "160")
    assert status("anim.gif") == ("ok", "animated: first of 3 frames; from P")
    assert status("tiny.png") == ("rejected", "too_small: short side 60 < 96")
    assert status("zcopy.png") == ("duplicate", "duplicate of good.png")
    assert status("zreencoded.jpg")[0] == "near_duplicate"
    assert status("zreencoded.jpg")[1].startswith("near_duplicate of sub/other.jpg (distance ")
    assert status("secret.png") == ("rejected", "unreadable: Permission denied")
    assert status("caf\\xe9.png") == ("ok", "")
    assert status("really_jpeg.png") == ("ok", "wrong_extension: .png holds JPEG")
    assert status("readme.txt") == ("skipped", "unsupported_extension")
    assert summary["ok"] == 9
    assert summary["rejected"] == 6
    assert (summary["videos"], summary["frames"]) == (0, 0)
    assert all(r["video"] == r["time"] == r["pts"] == r["crop"] == "" for r in m.values())  # video columns
    assert (summary["duplicate"], summary["near_duplicate"], summary["skipped"]) == (1, 1, 1)
    pngs = sorted(p.name for p in (out / "images").iterdir())
    assert pngs == sorted(f"{r['hash']}.png" for r in m.values() if r["status"] == "ok")
    assert _tree_state(scrape) == before, "the source folder must not change"


def test_normalisation_is_correct(scrape: Path) -> None:
    out = scrape.parent / "out"
    _ingest(scrape, out)
    m = _manifest(out)

    def load(name: str) -> np.ndarray:
        with Image.open(out / "images" / f"{m[name]['hash']}.png") as im:
            assert im.mode == "RGB"
            return np.asarray(im)

    grey = np.asarray(_img(5).convert("L"), np.int32)
    assert np.abs(load("sixteen.png")[..., 0].astype(np.int32) - grey).max() <= 1
    assert tuple(load("palette.png")[0, 0]) == PARAMS.background
    gif = load("anim.gif").astype(np.int32)
    dist = [np.abs(gif - np.asarray(_img(seed), np.int32)).mean() for seed in (9, 10, 11)]
    assert dist[0] < 10 and dist[0] < min(dist[1:]) / 2, dist
    rotated = load("rotated.jpg")
    upright = np.asarray(_img(8, 160, 128).transpose(Image.Transpose.ROTATE_270), np.int32)
    assert rotated.shape == (160, 128, 3)
    assert np.abs(rotated.astype(np.int32) - upright).mean() < 6


def test_rerun_does_no_image_work_and_one_new_image_costs_one_decode(scrape: Path) -> None:
    out = scrape.parent / "out"
    first = _ingest(scrape, out)
    assert first["decoded"] == 17
    again = _ingest(scrape, out)
    assert again["decoded"] == 0
    assert _manifest(out).keys() == _manifest(out).keys()
    os.chmod(scrape, 0o777)
    (scrape / "new.png").write_bytes(_png(_img(40)))
    os.chmod(scrape / "new.png", 0o644)
    third = _ingest(scrape, out)
    assert third["decoded"] == 1
    assert third["ok"] == first["ok"] + 1


def test_decompression_bomb_limit() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        _img(1, 400, 300).save(src / "big.png")
        summary = run(IngestParams(min_side=96, max_pixels=100_000), src, Path(tmp) / "out")
        row = _manifest(Path(tmp) / "out")["big.png"]
        assert summary["rejected"] == 1
        assert row["reason"] == "too_large: 400x300 is over 100000 pixels"


def test_phash_separates_images_and_matches_reencodes() -> None:
    a, b = _img(1, 320, 256), _img(2, 320, 256)
    reenc = Image.open(io.BytesIO(_jpeg(a))).convert("RGB")
    assert bin(phash(a) ^ phash(reenc)).count("1") <= 4
    assert bin(phash(a) ^ phash(b)).count("1") > 12


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(PARAMS, tmp_path / "nope", tmp_path / "out")


def test_a_manifest_from_before_the_video_columns_is_not_used_as_a_cache(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a.png").write_bytes(_png(_img(1)))
    first = run(PARAMS, src, out)
    old_columns = "source,hash,width,height,status,reason,phash,size,mtime_ns"
    rows = (out / "manifest.csv").read_text().splitlines()
    (out / "manifest.csv").write_text(
        "\n".join([old_columns, *(",".join(r.split(",")[:9]) for r in rows[1:])])
    )
    state = json.loads((out / "state.json").read_text())
    (out / "state.json").write_text(
        json.dumps({"version": 1, "params": {**state["params"], "video": state["video"]}})
    )
    again = run(PARAMS, src, out)
    assert again["decoded"] == 1 and again["ok"] == first["ok"] == 1
    header = (out / "manifest.csv").read_text().splitlines()[0]
    assert header == f"{old_columns},video,time,pts,frame_type,packet_size,crop,deinterlaced,sar"


def test_the_near_duplicate_index_finds_what_a_full_scan_finds() -> None:
    """The banded index answers exactly as comparing every kept hash would: the nearest within the
    distance, the earliest on a tie, none beyond it."""
    import random

    from stages.ingest import NearDuplicates

    rng = random.Random(3)
    bases = [rng.getrandbits(64) for _ in range(40)]
    queries = [
        b ^ sum(1 << rng.randrange(64) for _ in range(rng.randrange(12))) for b in bases for _ in range(30)
    ]
    for max_distance in (0, 3, 6, 10):
        index, kept = NearDuplicates(max_distance), []
        for h in queries:
            dists = [(h ^ k).bit_count() for k in kept]
            best = min(range(len(kept)), key=lambda i: (dists[i], i), default=None)
            expected = (best, dists[best]) if best is not None and dists[best] <= max_distance else None
            assert index.nearest(h) == expected
            if expected is None:
                index.add(h)
                kept.append(h)
        assert 40 <= len(kept) < len(queries)
