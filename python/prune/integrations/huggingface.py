"""`HuggingFaceCallback`: a Pruner driven by a transformers `Trainer`."""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..pruner import Pruner

STATE_FILE = "prune_pruner.pt"


class HuggingFaceCallback(TrainerCallback):
    """`step()` at on_step_begin (once per optimizer step, also under gradient accumulation),
    `apply()` at on_optimizer_step (after `optimizer.step()`), the pruner's state saved in every
    checkpoint folder (`prune_pruner.pt`) and restored when `trainer.train(resume_from_checkpoint=...)`
    resumes from a checkpoint under `args.output_dir`."""

    def __init__(self, pruner: Pruner):
        self.pruner = pruner

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == self.pruner.step_count:
            return
        path = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", STATE_FILE)
        if not os.path.isfile(path):
            raise RuntimeError(
                f"the Trainer resumes at step {state.global_step}, but the pruner is at step "
                f"{self.pruner.step_count} and {path} does not exist: load the pruner's state "
                "(pruner.load_state_dict) before train(), or resume from a checkpoint this callback saved"
            )
        self.pruner.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def on_step_begin(self, args, state, control, **kwargs):
        self.pruner.step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.pruner.apply()

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(folder):
            torch.save(self.pruner.state_dict(), os.path.join(folder, STATE_FILE))
