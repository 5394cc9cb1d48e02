"""Saving and loading A2N weights: our checkpoints, bare published state dicts, safetensors.

Our checkpoints carry their own config, so nothing downstream rebuilds the network from
params.yaml::

    {"format": "remaster-a2n/1", "model": state_dict, "config": {...}, "step": n,
     "data_hash": "...", "optimizer": ..., "scheduler": ..., "rng": ..., "extra": ...}

Everything in them is a tensor, dict, list, tuple, number, string or None, so they load with
``torch.load(weights_only=True)``: we never unpickle arbitrary objects, ours or anyone's.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from models.a2n import A2N, A2NConfig, is_upsampler_key

log = logging.getLogger(__name__)

FORMAT = "remaster-a2n/1"
_SAFE_LEAVES = (torch.Tensor, str, int, float, bool, type(None))
_FILENAME_SCALE = re.compile(r"(?:^|[^a-z0-9])x([234])(?![0-9])")


def _check_weights_only_safe(obj: Any, where: str) -> None:
    """Fail at save time, not at resume time, on anything weights_only=True would refuse."""
    if isinstance(obj, _SAFE_LEAVES):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where}: key {k!r} is not a str or int")
            _check_weights_only_safe(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_weights_only_safe(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where}: {type(obj).__name__} cannot be loaded with weights_only=True; "
        "store tensors, dicts, lists, numbers or strings"
    )


def _cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    config: A2NConfig,
    *,
    step: int = 0,
    data_hash: str = "",
    optimizer_state: Mapping[str, Any] | None = None,
    scheduler_state: Mapping[str, Any] | None = None,
    rng_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Save an atomic, weights_only-loadable checkpoint (see the module docstring)."""
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "model": _cpu_state_dict(model),
        "config": config.to_dict(),
        "step": int(step),
        "data_hash": str(data_hash),
        "optimizer": dict(optimizer_state) if optimizer_state is not None else None,
        "scheduler": dict(scheduler_state) if scheduler_state is not None else None,
        "rng": dict(rng_state) if rng_state is not None else None,
        "extra": dict(extra) if extra is not None else {},
    }
    _check_weights_only_safe(ckpt, "checkpoint")
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    _write_whole(Path(path), buffer.getbuffer())


def read_checkpoint(path: str | os.PathLike[str], *, device: str = "cpu") -> dict[str, Any]:
    """The whole dict of one of our checkpoints (for resuming training)."""
    obj = _torch_load(Path(path), device)
    if not _is_ours(obj):
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    ckpt: dict[str, Any] = obj
    return ckpt


def capture_rng_state() -> dict[str, Any]:
    """The Python, numpy and torch RNG states, as tensors and numbers only."""
    version, py_state, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)
    state: dict[str, Any] = {
        "python": [version, list(py_state), gauss],
        "numpy": {
            "state": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "cached_gaussian": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    nps = state["numpy"]
    key = nps["state"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, nps["pos"], nps["has_gauss"], nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_safetensors(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    config: A2NConfig,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save the weights as safetensors; the config goes in the metadata as JSON."""
    meta = {"format": FORMAT, "config": json.dumps(config.to_dict(), sort_keys=True)}
    for k, v in (metadata or {}).items():
        if not isinstance(v, str):
            raise TypeError(f"safetensors metadata values must be str; {k!r} is {type(v)}")
        if k in meta:
            raise ValueError(f"metadata key {k!r} is reserved")
        meta[k] = v
    sd = _cpu_state_dict(model)
    _write_whole(Path(path), safetensors.torch.save(sd, metadata=meta))


def _write_whole(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` under a temporary name beside ``path`` and rename it over ``path``, so a
    killed save never leaves a half-written file. (The models package stands alone: it does not
    import the library's ``remaster.files``.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _torch_load(path: Path, device: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # the many ways a non-checkpoint fails to unpickle
        raise ValueError(f"{path}: not a loadable PyTorch checkpoint ({e})") from e


def _is_ours(obj: Any) -> bool:
    return isinstance(obj, dict) and str(obj.get("format", "")).startswith("remaster-a2n/")


def _scale_from_name(name: str) -> int | None:
    found = {int(m) for m in _FILENAME_SCALE.findall(name.lower())}
    return found.pop() if len(found) == 1 else None


def infer_config(
    state_dict: Mapping[str, torch.Tensor], *, scale: int | None = None, name: str = ""
) -> A2NConfig:
    """The config of a bare A2N state dict, from its key names and shapes.

    x2 and x3 have identical shapes, so their scale comes from ``scale`` or, failing that,
    from an ``x2``/``x3`` in ``name`` (the file name).
    """
    where = name or "state dict"
    try:
        n_feat = state_dict["conv_first.weight"].shape[0]
        n_up_feat = state_dict["upconv1.weight"].shape[0]
        adm_hidden = state_dict["AAB_trunk.0.ADM.0.weight"].shape[0]
        kernel = state_dict["AAB_trunk.0.non_attention.weight"].shape[-1]
    except KeyError as e:
        raise ValueError(f"{where}: not an A2N state dict (missing {e})") from e
    blocks = [int(m.group(1)) for k in state_dict if (m := re.match(r"AAB_trunk\.(\d+)\.", k))]
    if "upconv2.weight" in state_dict:
        if scale not in (None, 4):
            raise ValueError(f"{where}: the weights are x4 (upconv2 present), not x{scale}")
        scale = 4
    elif scale == 4:
        raise ValueError(f"{where}: the weights are x2 or x3 (no upconv2), not x4")
    elif scale is None:
        scale = _scale_from_name(Path(name).name)
        if scale is None:
            raise ValueError(
                f"{where}: cannot tell x2 from x3 weights by their shapes; pass scale= "
                "or put x2/x3 in the file name"
            )
    return A2NConfig(
        scale=scale,
        n_feat=n_feat,
        n_up_feat=n_up_feat,
        n_blocks=max(blocks) + 1,
        non_attention_kernel=kernel,
        adm_reduction=n_feat // adm_hidden,
    )


def _strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Weights saved from DataParallel carry a "module." prefix on every key.
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def load_model(
    path_or_state: str | os.PathLike[str] | Mapping[str, Any],
    *,
    scale: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[A2N, A2NConfig, dict[str, Any]]:
    """Build an A2N in eval mode from a checkpoint, a bare state dict or a safetensors file.

    ``info`` says where the weights came from: ``source`` ("checkpoint", "state_dict" or
    "safetensors"), ``path``, ``step``, ``data_hash`` and ``metadata`` where known.
    """
    dev = str(device)
    info: dict[str, Any] = {"path": None, "step": None, "data_hash": None, "metadata": {}}
    if isinstance(path_or_state, Mapping):
        name = ""
        sd, config = _from_object(dict(path_or_state), name, scale, info)
    else:
        path = Path(path_or_state)
        name = info["path"] = str(path)
        if path.suffix == ".safetensors":
            sd, config = _load_safetensors(path, dev, scale, info)
        else:
            sd, config = _from_object(_torch_load(path, dev), name, scale, info)

    model = A2N(config)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{name or 'state dict'}: weights do not fit {config}: {e}") from e
    return model.to(dev).eval(), config, info


def _from_object(
    obj: Any, name: str, scale: int | None, info: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], A2NConfig]:
    """The state dict and config of a loaded object: our checkpoint or a bare state dict."""
    if _is_ours(obj):
        config = A2NConfig.from_dict(obj["config"])
        info.update(source="checkpoint", step=obj.get("step"), data_hash=obj.get("data_hash"))
        if scale is not None and scale != config.scale:
            raise ValueError(f"{name}: checkpoint is x{config.scale}, asked for x{scale}")
        return dict(obj["model"]), config
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = _strip_prefix(obj)
        info["source"] = "state_dict"
        return sd, infer_config(sd, scale=scale, name=name)
    raise ValueError(f"{name or 'object'}: not an A2N checkpoint or state dict")


def _load_safetensors(
    path: Path, device: str, scale: int | None, info: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], A2NConfig]:
    try:
        with safetensors.safe_open(str(path), framework="pt", device=device) as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    info.update(source="safetensors", metadata=meta)
    if "config" in meta:
        config = A2NConfig.from_dict(json.loads(meta["config"]))
        if scale is not None and scale != config.scale:
            raise ValueError(f"{path}: weights are x{config.scale}, asked for x{scale}")
    else:
        config = infer_config(sd, scale=scale, name=str(path))
    return _strip_prefix(sd), config


def load_body(model: A2N, state_dict: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load the trunk of ``state_dict`` into ``model``, leaving its upsampler as it is.

    For initialising a model of one scale from weights of another. Returns (loaded keys,
    skipped keys of ``state_dict``). Raises ValueError if the trunks do not match.
    """
    sd = _strip_prefix(state_dict)
    body = {k: v for k, v in sd.items() if not is_upsampler_key(k)}
    skipped = sorted(k for k in sd if is_upsampler_key(k))
    own = model.state_dict()
    missing = sorted(k for k in own if not is_upsampler_key(k) and k not in body)
    unexpected = sorted(k for k in body if k not in own)
    if missing or unexpected:
        raise ValueError(f"trunks differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k, v in body.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"trunk shapes differ at {bad[:5]}")
    model.load_state_dict(body, strict=False)
    log.info("loaded %d trunk tensors, skipped %d upsampler tensors", len(body), len(skipped))
    return sorted(body), skipped
