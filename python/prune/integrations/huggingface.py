"""`HuggingFaceCallback`: a Pruner driven by a transformers `Trainer`."""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..pruner import Pruner

STATE_FILE = "prune_pruner.pt"


class HuggingFaceCallback(TrainerCallback):
    """`step()` at on_step_begin (once per optimizer step, also under gradient accumulation),
    `apply()` at on_optimizer_step (after `optimizer.step()`), the pruner's state saved in every
    checkpoint folder (`prune_pruner.pt`) and restored when `trainer.train(resume_from_checkpoint=...)`
    resumes from a checkpoint under `args.output_dir`.

    With a tracked `run` (`prune.Client(...).track(pruner)`), every `on_log` goes to it: the
    numbers the Trainer logs (loss, learning_rate, grad_norm, eval_*) as points at the global
    step, `epoch` as the run's epoch; the run's total steps are the Trainer's max_steps."""

    def __init__(self, pruner: Pruner, run: Optional[Any] = None):
        self.pruner = pruner
        self.run = run

    def on_train_begin(self, args, state, control, **kwargs):
        self._start_run(state)
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

    def _start_run(self, state) -> None:
        if self.run is not None and state.max_steps and state.max_steps > 0:
            self.run.set_total_steps(state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.run is None or not logs:
            return
        values = {}
        for name, value in logs.items():
            if name == "epoch" and isinstance(value, (int, float)):
                self.run.epoch = int(math.floor(value))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                values[name] = value
        self.run.log(state.global_step, values)

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
