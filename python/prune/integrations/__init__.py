"""Callbacks for training loops you do not write yourself. Each imports its framework only
when asked for: `prune.integrations.HuggingFaceCallback` (transformers) and
`prune.integrations.LightningCallback` (Lightning: `lightning` or `pytorch_lightning`)."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "HuggingFaceCallback":
        from .huggingface import HuggingFaceCallback

        return HuggingFaceCallback
    if name == "LightningCallback":
        from .lightning import LightningCallback

        return LightningCallback
    raise AttributeError(f"module 'prune.integrations' has no attribute {name!r}")
