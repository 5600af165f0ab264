"""prune: the prune service's scheduled magnitude pruning (tfmot's prune_low_magnitude
semantics) inside your own PyTorch training loop, on the service's own Rust core.

    pruner = prune.Pruner(model, pruning={"schedule": {...}})
    for batch in data:
        pruner.step()            # before the forward pass
        loss = ...; loss.backward(); optimizer.step()
        pruner.apply()           # or pruner.attach(optimizer) once
    pruner.strip()
    prune.export(model, "model.safetensors", format="bitmask", compression="zstd")

Tracked runs (the service shows your loop like its own jobs):

    run = prune.Client("http://prune:50051").track(pruner, name="digits", request_id="digits-1")

See docs/python.md.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from . import _core
from ._core import ArtifactError, SpecError, TrackingError
from ._tensors import bool_tensor, f32_bytes, from_raw, raw_bytes, safetensors_dtype
from .pruner import Pruner, PruneWarning, _LIVE, _table_json
from .tracking import Client, Run, TrackingWarning

__all__ = [
    "Pruner",
    "PruneWarning",
    "SpecError",
    "ArtifactError",
    "Client",
    "Run",
    "TrackingError",
    "TrackingWarning",
    "export",
    "load",
    "mask",
    "schedule_sparsity",
    "integrations",
]

_EXTENSIONS = {"none": "", "gzip": ".gz", "zstd": ".zst"}


def schedule_sparsity(schedule: Dict[str, Any], step: int, *, always: bool = False) -> Optional[float]:
    """The sparsity a schedule table (`{"kind": "polynomial_decay", ...}`, the job file's
    `pruning.schedule`) gives at `step`, bit for bit in f32 as the service and tfmot compute it;
    None when masks are not recomputed at that step (unless `always`)."""
    return _core.schedule_sparsity(_table_json(schedule), int(step), always)


def mask(
    weight: torch.Tensor,
    sparsity: float,
    block_size: Sequence[int] = (1, 1),
    block_pooling: str = "avg",
    m_by_n: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """The service's magnitude mask of one weight (PyTorch layout), True = kept, on the weight's
    device: exactly k = max(round_half_even(n (1 - sparsity)), 1) kept, ties to the lower index;
    blocks over a 2-D weight; m zeros in every n along the input channels (dim 1)."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"weight of dtype {weight.dtype} cannot be ranked by magnitude: give a floating-point tensor")
    m = _core.mask(
        f32_bytes(weight),
        list(weight.shape),
        float(sparsity),
        [int(d) for d in block_size],
        str(block_pooling),
        None if m_by_n is None else [int(d) for d in m_by_n],
    )
    return bool_tensor(m, weight.shape, weight.device)


def export(
    model_or_state_dict: Any,
    path: str,
    format: str = "bitmask",
    compression: str = "zstd",
    level: Optional[int] = None,
) -> Dict[str, Any]:
    """Writes a model's state_dict (or a state dict) as the service writes its safetensors
    artifact: `format` "bitmask" (compressed-tensors' sparse-bitmask layout) or "dense",
    `compression` "zstd", "gzip" or "none" over the whole file (`.zst` / `.gz` appended to `path`
    unless it ends so). A model with a live Pruner has its masks multiplied in first.
    `prunectl unpack`, `prune.load` and compressed-tensors read the file back.
    Returns {"path", "bytes", "sha256", "compression", "sparse_format"}."""
    if isinstance(model_or_state_dict, torch.nn.Module):
        from .pruner import unwrap

        model = unwrap(model_or_state_dict)
        live = _LIVE.get(model)
        if live is not None:
            live.apply()
        state = model.state_dict()
    elif isinstance(model_or_state_dict, dict):
        state = model_or_state_dict
    else:
        raise TypeError(f"export needs a torch.nn.Module or a state dict, got {type(model_or_state_dict).__name__}")
    tensors = []
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state dict entry `{name}` is a {type(t).__name__}, not a tensor")
        tensors.append((name, safetensors_dtype(name, t), list(t.shape), raw_bytes(t)))
    path = str(path)
    suffix = _EXTENSIONS.get(compression, "")
    if suffix and not path.endswith(suffix):
        path += suffix
    written = _core.export(tensors, path, format, compression, level)
    return {**written, "bytes": int(written["bytes"]), "path": path}


def load(path: str) -> Dict[str, torch.Tensor]:
    """An artifact read back as `prunectl unpack` reads it (compression detected, bitmask
    weights unpacked and checked): {name: dense tensor}, loadable with `load_state_dict`."""
    tensors, _metadata = _core.read_artifact(str(path))
    return {name: from_raw(dtype, shape, data) for name, dtype, shape, data in tensors}


def __getattr__(name: str) -> Any:
    # `prune.integrations` imports transformers / Lightning only when asked for.
    if name == "integrations":
        import importlib

        return importlib.import_module(".integrations", __name__)
    raise AttributeError(f"module 'prune' has no attribute {name!r}")
