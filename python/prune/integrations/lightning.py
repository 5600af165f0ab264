"""`LightningCallback`: a Pruner driven by a Lightning `Trainer` (`lightning` or `pytorch_lightning`)."""

from __future__ import annotations

try:  # the unified package first: its Trainer only accepts its own Callback class
    from lightning.pytorch import Callback
except ImportError:
    from pytorch_lightning import Callback

from ..pruner import Pruner


class LightningCallback(Callback):
    """`step()` when a training batch starts a new optimizer step (`trainer.global_step` counts
    them, so gradient accumulation steps once per optimizer step), `apply()` after the optimizer
    stepped, and the pruner's state in Lightning's checkpoints (callback state), restored by
    `trainer.fit(ckpt_path=...)`."""

    def __init__(self, pruner: Pruner):
        self.pruner = pruner

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.pruner.step_count == trainer.global_step:
            self.pruner.step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.pruner.step_count == trainer.global_step:
            self.pruner.apply()

    def state_dict(self):
        return self.pruner.state_dict()

    def load_state_dict(self, state_dict):
        self.pruner.load_state_dict(state_dict)
