"""A2N to ONNX (and the ONNX Runtime backend of the ``Upscaler``), or to a bare safetensors file,
the form the shipped weights take. The command is ``remaster export`` (``remaster.cli.export``).

The graph takes ``lr`` (N, 3, H, W) RGB in [0, 1] with N, H and W free, and gives ``sr``
(N, 3, H*s, W*s), unclamped, like ``A2N.forward``. Its metadata carries the A2N config, so the
backend needs nothing else. Each export is checked against torch on a small input before it is
kept. onnx and onnxruntime are an optional extra: ``pip install -e ".[onnx]"``.

ONNX Runtime runs the whole graph at once, so the exact block-by-block tiling of
``remaster.engine.upscaler`` is not available to it: it takes whole frames by default, and an explicit
``--tile`` gives feathered tiles that differ from the whole image by a few grey levels (the
attention dropout module pools over its input).
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.a2n import A2N, A2NConfig
from models.checkpoint import load_model, save_safetensors
from remaster.engine.cpu import cpu_cores
from remaster.files import atomic_path

log = logging.getLogger(__name__)

OPSET = 17
PARITY_ATOL = 1e-4


def export_onnx(model: A2N, dst: Path, *, opset: int = OPSET, source: str = "") -> float:
    """Write ``model`` to ``dst`` as ONNX (atomically); returns the max |ORT - torch| on a test input."""
    model = model.float().cpu().eval()
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    meta = {"config": json.dumps(model.config.to_dict()), "scale": str(model.scale), "source": source}
    with atomic_path(dst) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; it is 10x faster
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            dynamo=False,
            input_names=["lr"],
            output_names=["sr"],
            dynamic_axes={"lr": {0: "n", 2: "h", 3: "w"}, "sr": {0: "n", 2: "hs", 3: "ws"}},
            opset_version=opset,
        )
        import onnx

        proto = onnx.load(str(tmp))
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(tmp))
        diff = _parity(model, OnnxModel(tmp, torch.device("cpu")))
        if diff > PARITY_ATOL:
            raise RuntimeError(f"the ONNX graph differs from torch by {diff:.2e} (> {PARITY_ATOL})")
    return diff


def export_safetensors(
    model: A2N, dst: Path, *, source: str = "", step: int | None = None, data_hash: str | None = None
) -> None:
    """Write the fp32 weights and config of ``model`` to ``dst``, with where they came from; the
    file reloads bit for bit (checked before it is kept)."""
    meta = {"source": source, "step": str(step if step is not None else ""), "data_hash": data_hash or ""}
    model = model.float().cpu().eval()
    save_safetensors(dst, model, model.config, metadata=meta)
    again, _, _ = load_model(dst)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        if not torch.equal(a, b):
            dst.unlink()
            raise RuntimeError(f"{dst}: {name} did not reload bit for bit")


def _parity(model: A2N, onnx_model: OnnxModel) -> float:
    x = torch.rand(2, 3, 19, 27, generator=torch.Generator().manual_seed(1))  # odd sizes, batch 2
    with torch.inference_mode():
        return float((onnx_model(x) - model(x)).abs().max())


class OnnxModel:
    """An exported A2N on ONNX Runtime: (B, 3, H, W) float tensor -> (B, 3, H*s, W*s), like A2N."""

    def __init__(self, path: Path, device: torch.device) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu_cores()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        if "config" not in self.meta:
            raise ValueError(f"{path}: not an ONNX file written by remaster export (no config)")
        self.config = A2NConfig.from_dict(json.loads(self.meta["config"]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().cpu().contiguous().numpy()  # (B, 3, H, W) NCHW
        (out,) = self.session.run(["sr"], {"lr": arr})
        return torch.from_numpy(np.asarray(out)).to(x.device)


def load_onnx_runner(
    path: Path, scale: int, device: torch.device, precision: str, tile: int | None
) -> tuple[OnnxModel, dict[str, Any]]:
    """The model and its info for ``--backend onnx`` (``Upscaler.load`` wraps them); a checkpoint is
    exported to a temporary file first."""
    info: dict[str, Any] = {"source": "onnx", "path": str(path)}
    if path.suffix == ".onnx":
        runner = OnnxModel(path, device)
    else:  # the session holds the graph in memory: the file can go once it is loaded
        model, _, info = load_model(path, scale=scale if path.suffix != ".safetensors" else None)
        with tempfile.TemporaryDirectory(prefix="remaster-onnx-") as tmp:
            onnx_path = Path(tmp) / f"{path.stem}.onnx"
            export_onnx(model, onnx_path, source=str(path))
            runner = OnnxModel(onnx_path, device)
        info = {**info, "backend": "onnx"}
    if runner.config.scale != scale:
        raise ValueError(f"{path} is an x{runner.config.scale} model, not x{scale}")
    if precision not in ("auto", "fp32"):
        log.warning("the onnx backend runs in fp32; ignoring --precision %s", precision)
    if tile:
        log.warning("onnx backend: %d px tiles are feathered, not exact (see remaster/engine/onnx.py)", tile)
    return runner, info
