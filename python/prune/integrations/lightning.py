"""`LightningCallback`: a Pruner driven by a Lightning `Trainer` (`lightning` or `pytorch_lightning`)."""

from __future__ import annotations

from typing import Any, Optional

import torch

try:  # the unified package first: its Trainer only accepts its own Callback class
    from lightning.pytorch import Callback
except ImportError:
    from pytorch_lightning import Callback

from ..pruner import Pruner


class LightningCallback(Callback):
    """`step()` when a training batch starts a new optimizer step (`trainer.global_step` counts
    them, so gradient accumulation steps once per optimizer step), `apply()` after the optimizer
    stepped, and the pruner's state in Lightning's checkpoints (callback state), restored by
    `trainer.fit(ckpt_path=...)`.

    With a tracked `run` (`prune.Client(...).track(pruner)`): the batch loss every
    `log_every_n_steps` optimizer steps (as Lightning's own loggers), and what the module logged
    (`trainer.callback_metrics`: `self.log(...)` values) at the end of every training and
    validation epoch, as points at the global step; the epoch; the total steps when known."""

    def __init__(self, pruner: Pruner, run: Optional[Any] = None):
        self.pruner = pruner
        self.run = run

    def on_train_start(self, trainer, pl_module):
        total = getattr(trainer, "estimated_stepping_batches", None)
        if self.run is not None and isinstance(total, int) and total > 0:
            self.run.set_total_steps(total)

    def on_train_epoch_start(self, trainer, pl_module):
        if self.run is not None:
            self.run.epoch = trainer.current_epoch

    def _log_metrics(self, trainer) -> None:
        values = {}
        for name, value in trainer.callback_metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                values[name] = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                values[name] = value
        if values:
            self.run.log(trainer.global_step, values)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.run is not None:
            self._log_metrics(trainer)

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.run is not None and not trainer.sanity_checking:
            self._log_metrics(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.pruner.step_count == trainer.global_step:
            self.pruner.step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.pruner.step_count == trainer.global_step:
            self.pruner.apply()
            if self.run is not None and trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
                loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
                if isinstance(loss, torch.Tensor) and loss.numel() == 1:
                    self.run.log(trainer.global_step, {"loss": loss})

    def state_dict(self):
        return self.pruner.state_dict()

    def load_state_dict(self, state_dict):
        self.pruner.load_state_dict(state_dict)
