"""Speed and memory of mining training frames out of a long 1080p episode (ingest on a video).

    python benchmarks/mining.py                    # 3 and 24 minutes: about 6 min on 2 cores
    python benchmarks/mining.py --minutes 24
    python benchmarks/mining.py --source EPISODE.mkv

The source is the shared 1080p clip (``tas_jjk_1080p_test.mp4``, 6.4 s) looped to the length
asked for by stream copy (``ffmpeg -stream_loop``), in a temporary folder. Each length runs the
ingest stage on a folder holding only that video, in a process of its own, so that its peak RSS
is its own: the same peak at 3 and at 24 minutes shows that memory does not grow with the length.

The clip's stream says its samples are 540:401 (2.39:1 on a 1920x1080 frame) but the picture is
plainly 16:9 with square pixels, so the benchmark sets ``ingest.video.square_pixels=keep`` (as a
user would for such a file); ``-S`` overrides any param.

One table row per source: minutes of video, frames kept (mined), of which ok after ingest's dedup
(few here: the loop repeats the same 6.4 s), frames decoded (the analysis pass decodes each one),
decoded frames per second of the whole run, seconds per source minute, the run's seconds, and
the peak RSS of the Python process and of its largest child (ffmpeg).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from remaster.config import load_params  # noqa: E402
from remaster.engine.cpu import cpu_line  # noqa: E402
from stages import ingest  # noqa: E402

CLIP = ROOT.parent / "shared" / "data" / "video" / "tas_jjk_1080p_test.mp4"
DEFAULT_SET = ["ingest.video.square_pixels=keep"]


def looped(clip: Path, minutes: float, out: Path) -> Path:
    """``clip`` repeated to ``minutes``, by stream copy."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-stream_loop", "-1"]
    cmd += ["-i", str(clip), "-t", f"{minutes * 60:.3f}", "-c", "copy", str(out)]
    subprocess.run(cmd, check=True)
    return out


def one(source: Path, overrides: list[str]) -> dict[str, float]:
    """Ingest a folder holding only ``source`` (linked); the numbers of the run."""
    params = load_params(ROOT / "params.yaml", overrides).ingest
    with tempfile.TemporaryDirectory(prefix="mining-bench-") as tmp:
        folder = Path(tmp) / "src"
        folder.mkdir()
        (folder / source.name).symlink_to(source.resolve())
        started = time.perf_counter()
        summary = ingest.run(params, folder, Path(tmp) / "out")
        seconds = time.perf_counter() - started
        with open(Path(tmp) / "out" / "manifest.csv", encoding="utf-8") as f:
            video_row = f.read().splitlines()[1]
    m = re.search(r"mined (\d+) frames? from (\d+) over ([\d.]+) s", video_row)
    if not m:
        raise SystemExit(f"the video was not mined: {video_row}")
    return {
        "minutes": float(m[3]) / 60,
        "kept": int(m[1]),
        "ok": summary["ok"],
        "decoded": int(m[2]),
        "seconds": seconds,
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "child_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[3, 24], help="looped source lengths")
    ap.add_argument("--source", type=Path, help="mine this video instead of the looped clip")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # the child: mine this file, print JSON
    args = ap.parse_args()
    overrides = DEFAULT_SET if args.overrides is None else args.overrides
    if args.one:
        print(json.dumps(one(args.one, overrides)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="mining-src-") as tmp:
        sources = (
            [args.source]
            if args.source
            else [looped(CLIP, m, Path(tmp) / f"loop_{m:g}min.mp4") for m in args.minutes]
        )
        for src in sources:
            cmd = [sys.executable, __file__, "--one", str(src)] + [f"-S{o}" for o in overrides]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"machine: {cpu_line()}; params: params.yaml with {', '.join(overrides) or 'no overrides'}\n")
    head = ["source min", "frames kept", "ok after dedup", "frames decoded", "frames/s decoded"]
    head += ["s per source min", "seconds", "peak RSS python", "peak RSS ffmpeg"]
    print("| " + " | ".join(head) + " |")
    print("|" + " ---: |" * len(head))
    for r in rows:
        cells = [f"{r['minutes']:.1f}", str(r["kept"]), str(r["ok"]), str(r["decoded"])]
        cells += [f"{r['decoded'] / r['seconds']:.0f}", f"{r['seconds'] / r['minutes']:.1f}"]
        cells += [f"{r['seconds']:.0f}", f"{r['rss']:.0f} MiB", f"{r['child_rss']:.0f} MiB"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
