"""Stop when told, fail loudly, never hang: real `remaster video` processes signalled mid-run,
ffmpeg children that die, a second run on the same output, and the child registry itself."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_video import make_episode

from models.a2n import A2N, A2NConfig
from models.checkpoint import save_checkpoint
from remaster import stopping
from remaster.video import ffmpeg, probe

ROOT = Path(__file__).resolve().parents[1]


def signal_and_wait(proc: subprocess.Popen[bytes], signum: int) -> tuple[list[int], int, float, float]:
    """Send ``signum`` to a running command: (its children just before, its exit status, when the
    signal went, how long it took to exit)."""
    children = stopping.descendants(proc.pid)
    sent = time.monotonic()
    proc.send_signal(signum)
    rc = proc.wait(timeout=30)
    return children, rc, sent, time.monotonic() - sent


def stopping_cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()[:200]
    except OSError:
        return b"(gone)"


def alive(pid: int) -> bool:
    """Running (a zombie does not count: it holds no resources and its parent reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("stop")
    # wide enough that a frame spends a while in the model: most of a run is "in the model"
    cfg = A2NConfig(scale=2, n_feat=16, n_up_feat=16, n_blocks=6)
    save_checkpoint(folder / "model.pt", A2N(cfg), cfg)
    (folder / "none.yaml").write_text("tracking: {enabled: false}\n")
    episode = make_episode(folder, size="256x192", seconds=2.0, on_twos=True)  # held frames: reuse is on
    return {"model": folder / "model.pt", "episode": episode, "params": folder / "none.yaml"}


def command(assets: dict[str, Path], out: Path) -> list[str]:
    return [sys.executable, "-m", "remaster.cli.video", str(assets["episode"]), "-o", str(out), "--scale",
            "2", "--model", str(assets["model"]), "--segment-seconds", "0.5", "--preset", "ultrafast",
            "--workers", "1", "--batch", "1", "--params", str(assets["params"]), "--no-track"]  # fmt: skip


def start(cmd: list[str], log: Path, api_url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PREFECT_API_URL": api_url}
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"never saw {text!r}"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("signum", "code", "when"),
    [
        (signal.SIGTERM, 143, "in the model"),
        (signal.SIGINT, 130, "in the model"),
        (signal.SIGTERM, 143, "splitting"),
        (signal.SIGINT, 130, "joining"),
        (signal.SIGTERM, 143, "waiting on a Dask worker"),
    ],
)
def test_a_signal_stops_the_run_within_10_s_and_it_resumes(
    api_url: str, assets: dict[str, Path], tmp_path: Path, signum: int, code: int, when: str
) -> None:
    out = tmp_path / "episode_x2.mkv"
    log = tmp_path / "run.log"
    dask = ["--runner", "dask", "--workers", "1"] if "Dask" in when else []
    proc = start([*command(assets, out), *dask], log, api_url)
    try:
        if when == "splitting":
            wait_for(log, "Beginning flow run", proc)
        elif when == "joining":  # the last segment is done: concat, mux and verify follow
            wait_for(log, "upscale-segment-3' - Finished", proc)
        else:  # in the model: here, or in a Dask worker process that this one waits on
            wait_for(log, "to upscale", proc)
            time.sleep(2.0 if dask else 1.0)
        children, rc, sent, took = signal_and_wait(proc, signum)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    text = log.read_text(errors="replace")
    assert rc == code, text[-3000:]
    assert took < 10.0, f"took {took:.1f} s to stop"
    name = signal.Signals(signum).name
    assert text.count(f"remaster video: stopped by {name}; the finished segments stay in {out}.parts; "
                      "run the same command to resume") == 1  # fmt: skip
    while [pid for pid in children if alive(pid)] and time.monotonic() < sent + 10.0:
        time.sleep(0.1)  # a Dask worker process winds down on its own once its nanny is gone
    left = {pid: stopping_cmdline(pid) for pid in children if alive(pid)}
    assert not left, f"children outlived the run by more than 10 s: {left}"
    assert not out.exists()  # nothing looks finished: segments are renamed only when whole
    parts = out.with_name(out.name + ".parts")
    finished = sorted(parts.glob("*/out/seg_*.mkv"))
    for seg in finished:
        assert probe.count_packets(seg) > 0
    if when == "in the model" and signum == signal.SIGTERM:
        again = subprocess.run(command(assets, out), cwd=ROOT, env={**os.environ, "PREFECT_API_URL": api_url},
                               capture_output=True, text=True, timeout=300)  # fmt: skip
        logs = again.stdout + again.stderr
        assert again.returncode == 0, logs[-3000:]
        assert f"4 segments: {len(finished)} reused from an earlier run" in logs
        assert out.exists() and probe.count_packets(out) == 48 and "verified: frames ok" in logs
        # drawn on twos: the resumed segments computed only every other frame
        left = 48 - 12 * len(finished)
        assert f"{left} frames upscaled: {left // 2} computed by the model, {left // 2} reused" in logs


def test_a_truncated_source_is_refused_with_the_reason(small: dict, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(small["src"].read_bytes()[: small["src"].stat().st_size // 2])
    with pytest.raises(probe.VideoError, match=r"cut.mkv: truncated or damaged: \d+ frames decode"):
        probe.probe(cut)


def test_children_are_terminated_and_reaped_and_a_stop_refuses_new_ones() -> None:
    sleeper = stopping.spawn(["sleep", "30"])
    assert sleeper in stopping.live_children()
    assert stopping.terminate_children(timeout=1.0) == 1
    assert sleeper.returncode is not None and not stopping.live_children()
    done = stopping.run(["sh", "-c", "echo out; echo err >&2; exit 3"], text=True)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    assert stopping.exit_code_of(RuntimeError("x")) is None
    try:
        raise RuntimeError("segment failed") from stopping.Stopped(signal.SIGTERM)
    except RuntimeError as e:
        assert stopping.exit_code_of(e) == 143
    assert stopping.exit_code_of(KeyboardInterrupt()) == 130


def test_a_signal_that_only_prefect_caught_still_says_the_stop_line_once() -> None:
    # SIGTERM while a flow run starts lands in Prefect's handler, not ours: the command sees a
    # ValueError raised while handling Prefect's TerminationSignal, and must still say the one line
    code = """
import signal
from prefect.exceptions import TerminationSignal
from remaster import stopping
with stopping.stop_on_signals("remaster video", "run the same command to resume"):
    pass
try:
    try:
        raise TerminationSignal(signal=signal.SIGTERM)
    except TerminationSignal:
        raise ValueError("Task run is not set")
except ValueError as e:
    print(stopping.stopped(e), stopping.stopped(e), stopping.stopped(RuntimeError("x")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["143", "143", "None"]
    assert done.stderr.count("remaster video: stopped by SIGTERM; run the same command to resume") == 1


# --- faults: each ends in a clear error that names what failed, and never a hang ----------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("faults")
    src = make_episode(folder, size="96x72", seconds=1.0)
    info = probe.probe(src)
    return {"folder": folder, "src": src, "info": info, "segments": ffmpeg.split(info, folder / "src", 0)}


def _child(word: str) -> subprocess.Popen[bytes]:
    """The live ffmpeg whose command line holds ``word`` (the decoder reads a file, the encoder stdin)."""
    return next(p for p in stopping.live_children() if word in p.args)  # type: ignore[operator]


@pytest.mark.parametrize(("who", "word"), [("encoding", "libx264"), ("decoding", "-noautorotate")])
def test_a_dying_ffmpeg_fails_the_segment_with_its_name(
    small: dict, tmp_path: Path, who: str, word: str
) -> None:
    calls = []

    def up(frames):  # type: ignore[no-untyped-def]
        calls.append(len(frames))
        if len(calls) == 3:
            _child(word).kill()
            time.sleep(0.2)
        return frames.repeat(2, axis=1).repeat(2, axis=2)

    dst = tmp_path / "seg.mkv"
    with pytest.raises(
        RuntimeError,
        match=rf"({who} segment 0 failed \(exit -9\)|segment 0: \d+ frames decoded, 24 expected)",
    ):
        enc = ffmpeg.Encode(preset="ultrafast")
        ffmpeg.upscale_segment(small["segments"][0], dst, small["info"], up, 2, enc, batch=2)
    assert not dst.exists() and not list(tmp_path.iterdir())  # no partial output
    assert not stopping.live_children()


def test_a_full_disk_fails_the_segment_and_leaves_no_file(
    small: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @contextlib.contextmanager
    def full(target):  # type: ignore[no-untyped-def]
        yield Path("/dev/full")  # every write: ENOSPC

    monkeypatch.setattr(ffmpeg, "atomic_path", full)
    with pytest.raises(
        RuntimeError, match=r"encoding segment 0 wrote 0 of 24 frames to seg.mkv \(a full disk"
    ):
        ffmpeg.upscale_segment(small["segments"][0], tmp_path / "seg.mkv", small["info"],
                              lambda f: f.repeat(2, axis=1).repeat(2, axis=2), 2,
                              ffmpeg.Encode(preset="ultrafast"))  # fmt: skip
    assert not list(tmp_path.iterdir()) and not stopping.live_children()


def test_a_changed_model_file_stops_the_next_segment(small: dict, tmp_path: Path) -> None:
    from flows.runners import ModelSpec
    from flows.segments import upscale_segment
    from remaster.files import sha256_file

    cfg = A2NConfig(scale=2, n_feat=8, n_up_feat=8, n_blocks=1)
    model = save_checkpoint(tmp_path / "m.pt", A2N(cfg), cfg) or tmp_path / "m.pt"
    spec = ModelSpec(str(model), sha256_file(model), 2)
    seg = small["segments"][0]
    assert (
        upscale_segment(
            seg, tmp_path / "a.mkv", small["info"], spec, ffmpeg.Encode(preset="ultrafast")
        ).frames
        == 24
    )
    save_checkpoint(model, A2N(cfg), cfg, step=2)  # replaced between segments
    with pytest.raises(RuntimeError, match=r"the model file .*m\.pt changed during the run"):
        upscale_segment(seg, tmp_path / "b.mkv", small["info"], spec, ffmpeg.Encode(preset="ultrafast"))
    assert not (tmp_path / "b.mkv").exists()


def test_a_second_run_on_the_same_output_names_the_first(small: dict, tmp_path: Path) -> None:
    from flows.segments import locked

    parts = tmp_path / "out.mkv.parts"
    held = rf"another remaster run is writing {tmp_path}/out.mkv: pid {os.getpid()} on .*, started 20\d\d-"
    with locked(parts):
        with pytest.raises(RuntimeError, match=held), locked(parts):
            pass
        # another process, the way a second `remaster video` would see it
        probe = subprocess.run([sys.executable, "-c", "import fcntl,sys; f=open(sys.argv[1]); "
                                "fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB)", str(parts / ".lock")],
                               capture_output=True, text=True)  # fmt: skip
        assert probe.returncode != 0 and "BlockingIOError" in probe.stderr
    # a killed run's note stays, but its lock went with it: the next run goes ahead
    (parts / ".lock").write_text("pid 999999 on gone, started 2020-01-01 00:00:00: remaster video ...\n")
    with locked(parts):
        assert f"pid {os.getpid()}" in (parts / ".lock").read_text()


def test_media_roots_refuse_paths_outside_them(tmp_path: Path) -> None:
    from flows.episode import check_roots
    from remaster.config import RemasterParams

    inside = tmp_path / "media"
    (inside / "in").mkdir(parents=True)
    p = RemasterParams(media_roots=(str(inside),))
    check_roots(p, [inside / "in" / "a.mkv", inside / "b.mkv"])
    check_roots(RemasterParams(), [Path("/anywhere/a.mkv")])  # no roots: anything goes
    (inside / "escape").symlink_to(tmp_path)
    for bad in (tmp_path / "a.mkv", inside / ".." / "a.mkv", inside / "escape" / "a.mkv"):
        with pytest.raises(PermissionError, match=r"is outside remaster.media_roots"):
            check_roots(p, [inside / "in" / "ok.mkv", bad])


def test_watch_records_every_bad_file_and_goes_on(api_url: str, small: dict, tmp_path: Path) -> None:
    import json
    import shutil

    from flows import episode, watch
    from remaster.config import RemasterParams

    cfg = A2NConfig(scale=2, n_feat=8, n_up_feat=8, n_blocks=1)
    save_checkpoint(tmp_path / "tiny.pt", A2N(cfg), cfg)
    p = RemasterParams(
        scale=2, model=str(tmp_path / "tiny.pt"), segment_seconds=0, preset="ultrafast", workers=1
    )
    flow = episode.with_workers(p)
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(small["src"], inbox / "a_good.mkv")
    shutil.copy(small["src"], inbox / "b_vanishes.mkv")
    (inbox / "c_text.mp4").write_text("not a video at all\n")
    (inbox / "d_notes.txt").write_text("episode list\n")
    growing = inbox / "e_growing.mkv"
    growing.write_bytes(small["src"].read_bytes()[:1000])

    def process(src: Path, dst: Path) -> dict:
        if src.name == "b_vanishes.mkv":
            src.unlink()  # gone between the listing and the run
        return dict(flow(str(src), str(dst), p, True))

    polls = []

    def sleep(_: float) -> None:  # a copy still going on for the first polls, then done
        polls.append(1)
        if len(polls) < 4:
            with open(growing, "ab") as f:
                f.write(b"\0" * 1000)
        elif len(polls) == 4:
            shutil.copy(small["src"], growing)

    handled = watch.watch(inbox, out, process, interval=0, settle=2, once=True, sleep=sleep)
    state = json.loads((out / watch.STATE).read_text())
    status = {name: entry["status"] for name, entry in state.items()}
    assert status == {"a_good.mkv": "done", "b_vanishes.mkv": "failed", "c_text.mp4": "failed",
                      "d_notes.txt": "skipped", "e_growing.mkv": "done"}  # fmt: skip
    assert state["b_vanishes.mkv"]["error"].endswith("b_vanishes.mkv: no such file")
    assert "c_text.mp4" in state["c_text.mp4"]["error"]
    assert handled.count("e_growing.mkv") == 1 and len(polls) >= 4  # taken only once it settled
    assert probe.count_packets(out / "e_growing_remastered.mkv") == 24
    assert not stopping.live_children()


def test_sigterm_stops_watch_mid_run_and_keeps_its_record(
    api_url: str, assets: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(assets["episode"], inbox / "ep.mkv")
    cmd = [sys.executable, "-m", "remaster.cli.watch", str(inbox), "-o", str(out), "--once", "--settle", "1",
           "--interval", "0", "--scale", "2", "--model", str(assets["model"]), "--segment-seconds", "0.5",
           "--preset", "ultrafast", "--workers", "1", "--batch", "1", "--params", str(assets["params"]),
           "--no-track"]  # fmt: skip
    log = tmp_path / "watch.log"
    proc = start(cmd, log, api_url)
    try:
        wait_for(log, "to upscale", proc)
        time.sleep(1.0)
        children, rc, _, took = signal_and_wait(proc, signal.SIGTERM)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    text = log.read_text(errors="replace")
    assert rc == 143 and took < 10.0, text[-3000:]
    assert (
        f"remaster watch: stopped by SIGTERM; what is done is recorded in {out}/.remaster-watch.json" in text
    )
    assert not [pid for pid in children if alive(pid)]
    assert not (out / "ep_x2.mkv").exists()


def test_a_full_disk_while_writing_the_final_file_keeps_the_segments(
    api_url: str, small: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC in the last step (the mux): a clear error, no OUTPUT, the finished segments kept, and
    the same run then finishes from them without upscaling anything again."""
    from flows import episode
    from remaster.config import RemasterParams

    cfg = A2NConfig(scale=2, n_feat=8, n_up_feat=8, n_blocks=1)
    save_checkpoint(tmp_path / "tiny.pt", A2N(cfg), cfg)
    p = RemasterParams(
        scale=2, model=str(tmp_path / "tiny.pt"), segment_seconds=0.5, preset="ultrafast", workers=1
    )
    out = tmp_path / "out.mkv"
    full = tmp_path / "full.mkv"
    full.symlink_to("/dev/full")  # every write: ENOSPC
    mux_cmd = ffmpeg.mux_cmd
    monkeypatch.setattr(
        ffmpeg, "mux_cmd", lambda video, info, dst, codec="libx264": mux_cmd(video, info, full, codec)
    )
    with pytest.raises(
        RuntimeError,
        match=r"muxing failed: the output could not be written in full: .*No space left on device",
    ):
        episode.with_workers(p)(str(small["src"]), str(out), p, False)
    parts = sorted((out.parent / (out.name + ".parts")).glob("*/out/seg_*.mkv"))  # the upscaled ones
    assert not out.exists() and parts
    assert not stopping.live_children()
    monkeypatch.setattr(ffmpeg, "mux_cmd", mux_cmd)
    summary = episode.with_workers(p)(str(small["src"]), str(out), p, False)
    assert summary["run"]["segments_reused"] == len(parts) and probe.count_packets(out) == 24
