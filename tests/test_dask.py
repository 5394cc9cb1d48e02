"""``remaster video --runner dask`` against a real Dask cluster of two worker processes: the
segments upscale there (each worker loads the model itself) and the result verifies."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client, LocalCluster, get_task_stream
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows import runners
from models.a2n import A2N, A2NConfig
from models.checkpoint import save_checkpoint
from remaster.cli.video import main as video_main
from remaster.video import probe
from stages import demo


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dask_assets")
    cfg = A2NConfig(scale=2, n_feat=8, n_up_feat=8, n_blocks=1)
    save_checkpoint(folder / "tiny_x2.pt", A2N(cfg), cfg)
    clip = demo.write_clip(folder / "clip.mp4", seconds=1.2, width=96, height=72)
    # the demo clip has one keyframe; a keyframe every 0.4 s gives the split three segments
    keyed = folder / "clip_keyed.mp4"
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(clip), "-map", "0"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-sc_threshold", "0", "-c:a", "copy"]
    subprocess.run([*cmd, str(keyed)], check=True)
    (folder / "none.yaml").write_text("{}\n")
    return {"model": folder / "tiny_x2.pt", "clip": keyed, "none": folder / "none.yaml"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Client]]:
    scratch = tmp_path_factory.mktemp("dask_scratch")
    environ = dict(os.environ)
    cluster = runners.local_cluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        local_directory=str(scratch),
        scheduler_kwargs={"local_directory": str(scratch)},  # else it goes to /tmp/dask-scratch-space
    )
    # Dask's nanny sets its workers' variables (OMP_NUM_THREADS=1 among them) in this process's
    # environment before it spawns them; the flows' clusters, and so the tests after this
    # module, must not run their models on one thread
    assert dict(os.environ) == environ
    try:
        client = Client(cluster, set_as_default=False)
        try:
            yield cluster, client
        finally:
            client.close()
    finally:
        cluster.close()


def test_make_task_runner_picks_the_runner() -> None:
    assert isinstance(runners.make_task_runner("threads", None, 2), ThreadPoolTaskRunner)
    remote = runners.make_task_runner("dask", "tcp://sched:8786", 1)
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://sched:8786"
    local = runners.make_task_runner("dask", None, 2)
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_class is runners.local_cluster  # the one that keeps our environment
    kwargs = local.cluster_kwargs
    assert kwargs["n_workers"] == 2 and kwargs["threads_per_worker"] == 1 and kwargs["processes"]
    assert kwargs["dashboard_address"] is None and "dask-scratch-space" not in kwargs.get(
        "local_directory", ""
    )
    with pytest.raises(ValueError, match="runner must be one of"):
        runners.make_task_runner("ray", None, 1)
    with pytest.raises(ValueError, match="needs the dask runner"):
        runners.make_task_runner("threads", "tcp://sched:8786", 1)


def test_segments_upscale_on_dask_workers(
    api_url: str,
    assets: dict[str, Path],
    cluster: tuple[LocalCluster, Client],
    tmp_path: Path,
) -> None:
    local_cluster, client = cluster
    out, summary_path = tmp_path / "clip_x2.mkv", tmp_path / "summary.json"
    argv = [str(assets["clip"]), "-o", str(out), "--scale", "2", "--model", str(assets["model"])]
    argv += ["--segment-seconds", "0.4", "--preset", "ultrafast", "--no-track"]
    argv += ["--params", str(assets["none"]), "--summary", str(summary_path)]
    argv += ["--runner", "dask", "--dask-address", local_cluster.scheduler_address]
    with get_task_stream(client) as stream:
        assert video_main(argv) == 0

    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == 30 and summary["segments"] == 3
    assert all(check["ok"] for check in summary["verify"].values())
    assert summary["verify"]["size"]["actual"] == [192, 144]
    assert probe.probe(out).frames == 30
    assert probe.stream_hashes(out, "a") == probe.stream_hashes(assets["clip"], "a")

    # every segment ran as a Dask task on one of the cluster's worker processes, not in ours
    workers = set(local_cluster.scheduler_info["workers"])
    assert len(stream.data) == summary["segments"]
    assert {t["worker"] for t in stream.data} <= workers
    pids = client.run(os.getpid)
    assert set(pids) == workers and os.getpid() not in pids.values()
    # and the workers that ran one loaded the model themselves, once, from the spec
    sha = summary["model"]["sha256"]
    cached = client.run(lambda: [spec.sha256 for spec in runners._UPSCALERS])  # pickled by value
    ran = {t["worker"] for t in stream.data}
    assert all(cached[w] == [sha] for w in ran)


def test_pipeline_data_stages_fan_out_over_dask_workers(
    api_url: str,
    cluster: tuple[LocalCluster, Client],
    tiny_params: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import h5py
    import numpy as np

    from remaster.cli.pipeline import main as pipeline_main
    from remaster.config import load_params
    from stages import ingest, pack, tile

    scrape = tmp_path / "scrape"
    demo.write_images(scrape, 3, seed=1, width=560, height=520)
    first = sorted(scrape.iterdir())[0]
    (scrape / "copy.png").write_bytes(first.read_bytes())
    (scrape / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    local_cluster, client = cluster
    monkeypatch.chdir(tmp_path)  # the flow writes metrics/, plots/ and reports/ here
    data = tmp_path / "dask_data"
    argv = ["--params", str(tiny_params), "--source", str(scrape), "--data-dir", str(data)]
    argv += ["--runs-dir", str(tmp_path / "runs"), "--runner", "dask"]
    argv += ["--dask-address", local_cluster.scheduler_address]
    with get_task_stream(client) as stream:
        assert pipeline_main(argv) == 0

    # the decodes and the resizes ran as Dask tasks on the cluster's workers, one per item
    names = [t["key"][0] if isinstance(t["key"], tuple) else t["key"] for t in stream.data]
    assert sum(n.startswith("_examine_item") for n in names) == 5  # every file in the scrape
    assert sum(n.startswith("_cut_image") for n in names) == 3  # every kept image, across splits
    assert {t["worker"] for t in stream.data} <= set(local_cluster.scheduler_info["workers"])

    # and the outputs are the ones the serial stages make from the same scrape
    params = load_params(tiny_params, [])
    serial = tmp_path / "serial"
    summary = ingest.run(params.ingest, scrape, serial / "ingested")
    assert (summary["ok"], summary["duplicate"], summary["rejected"]) == (3, 1, 1)
    tile.run(params.tile, serial / "ingested", serial / "tiles")
    pack.run(params.pack, serial / "ingested", serial / "tiles", serial / "packed")
    manifest = (data / "ingested/manifest.csv").read_text()
    assert manifest == (serial / "ingested/manifest.csv").read_text()
    assert "broken.jpg" in manifest and ",rejected," in manifest
    for split in ("train", "val"):
        with h5py.File(data / f"packed/{split}.h5") as a, h5py.File(serial / f"packed/{split}.h5") as b:
            assert set(a) == set(b) and len(a["hr"]) > 0
            for name in a:
                assert np.array_equal(a[name][()], b[name][()]), f"{split}/{name}"
