"""The A2N network and its checkpoints. Nothing here knows about image files or pipelines."""

from models.a2n import A2N, A2NConfig
from models.checkpoint import (
    load_body,
    load_model,
    read_checkpoint,
    save_checkpoint,
    save_safetensors,
)

__all__ = [
    "A2N",
    "A2NConfig",
    "load_body",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
    "save_safetensors",
]
