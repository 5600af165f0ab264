"""`Pruner`: the service's scheduled magnitude pruning inside your own PyTorch training loop.

The rules (validation, selection, when a mask is due, the masks) are prune-core's, reached
through `prune._core`; this module only moves tensors and keeps the loop's state (step, masks).
"""

from __future__ import annotations

import json
import os
import warnings
import weakref
from typing import Any, Dict, Iterable, List, Optional

import torch

from . import _core
from ._tensors import bool_tensor, f32_bytes

STATE_FORMAT = "prune.Pruner/1"

# Live pruners by model, so that `prune.export(model)` multiplies the current masks in first.
_LIVE: "weakref.WeakKeyDictionary[torch.nn.Module, Pruner]" = weakref.WeakKeyDictionary()


class PruneWarning(UserWarning):
    """The service's submit-time warnings, and patterns that match no parameter."""


def _json_value(value: Any) -> Any:
    # numpy and torch scalars, tuples from Python code: what a job file could have said.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} cannot be written in a [pruning] table")


def _table_json(pruning: Dict[str, Any]) -> str:
    if not isinstance(pruning, dict):
        raise ValueError(f"pruning: expected a table (dict), got {type(pruning).__name__}")
    try:
        return json.dumps(pruning, default=_json_value, allow_nan=False)
    except ValueError as e:  # NaN / inf: not a number any field accepts
        raise ValueError(f"pruning: {e}") from None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose parameter names the service would use: DDP and DataParallel wrappers
    add a `module.` prefix. FSDP is refused: each rank holds only a shard of a parameter,
    while a magnitude mask ranks the whole tensor."""
    if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"Pruner needs a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        names = {c.__name__ for c in type(module).__mro__}
        if names & {"FullyShardedDataParallel", "FSDPModule"}:
            raise ValueError(
                "FSDP is not supported: every rank holds a shard of each parameter, but a magnitude mask "
                "ranks the whole tensor (and global scope all of them). Create the Pruner on the unwrapped "
                "model and train it with DistributedDataParallel, or prune one-shot before sharding."
            )
    dtensor = getattr(getattr(torch.distributed, "tensor", None), "DTensor", None)
    if dtensor is not None and any(isinstance(p, dtensor) for p in model.parameters()):
        raise ValueError("sharded (DTensor) parameters are not supported: see the FSDP note in docs/python.md")
    return model


class Pruner:
    """Prunes `model`'s parameters as a job with this `[pruning]` table would in the service.

    Call `step()` once per training step before the forward pass (tfmot's UpdatePruningStep),
    and `apply()` (or `attach(optimizer)`) after `optimizer.step()` so the model you evaluate
    and save is always masked.
    """

    def __init__(self, model: torch.nn.Module, pruning: Dict[str, Any], *, total_steps: Optional[int] = None):
        self._setup(model, _core.Spec.from_json(_table_json(pruning)), total_steps)

    @classmethod
    def from_job_file(cls, model: torch.nn.Module, path: "os.PathLike[str] | str", *, total_steps: Optional[int] = None) -> "Pruner":
        """The `[pruning]` table of a job file. A whole job (with `[model]`) is checked as
        `prunectl submit` checks it; a file with only `[pruning]` is fine too."""
        with open(path, encoding="utf-8") as f:
            text = f.read()
        pruner = cls.__new__(cls)
        pruner._setup(model, _core.Spec.from_toml(text), total_steps)
        return pruner

    def _setup(self, model: torch.nn.Module, spec: Any, total_steps: Optional[int]) -> None:
        self._model = unwrap(model)
        self._spec = spec
        params = list(self._model.named_parameters())
        described = [(n, list(p.shape), str(p.dtype).replace("torch.", ""), p.is_floating_point()) for n, p in params]
        # Warned first: a pattern that matches nothing is the likely reason when nothing is selected.
        for line in spec.unmatched([n for n, _ in params]) + spec.warnings(total_steps):
            warnings.warn(line, PruneWarning, stacklevel=3)
        self._targets = spec.select(described)
        self._names: List[str] = list(self._targets.names)
        self._params: List[torch.nn.Parameter] = [params[i][1] for i in self._targets.params]
        self._masks: List[torch.Tensor] = [torch.ones_like(p, dtype=torch.bool) for p in self._params]
        # A mask that is still all ones needs no multiply (the engine's `active`).
        self._active = [False] * len(self._params)
        self._step = 0
        # Target -> (its values as the optimizer left them, the parameter's version after they
        # were masked): see `apply`.
        self._unmasked: Dict[int, tuple] = {}
        self._hooks: list = []
        self._stripped = False
        self._total_steps = total_steps
        # Called as listener(pruner, masks_updated) after every step() and one_shot(): a tracked
        # run (tracking.py) reports from there. They only read the pruner.
        self._listeners: List[Any] = []
        _LIVE[self._model] = self

    # -- the loop ----------------------------------------------------------------------------

    @property
    def step_count(self) -> int:
        """Training steps taken: 0 before the first `step()`; the first batch is step 1."""
        return self._step

    def step(self) -> bool:
        """tfmot's UpdatePruningStep, before the forward pass: step += 1, the masks due at this
        step recomputed from the current weights, every mask multiplied in. Returns whether a
        mask was recomputed."""
        self._check_live("step")
        self._step += 1
        due = list(self._targets.due(self._step))
        with torch.no_grad():
            if due:
                self._restore_unmasked(due)
                self._recompute(due, self._step)
            self._unmasked.clear()
            for i in range(len(self._params)):
                if self._active[i]:
                    self._params[i].mul_(self._masks[i])
        self._notify(bool(due))
        return bool(due)

    def apply(self) -> None:
        """Multiplies the current masks in (e.g. right after `optimizer.step()`), so the model is
        masked whenever you evaluate or save it.

        It does not change which masks later steps compute: where the next `step()` recomputes a
        mask, the values the optimizer left are kept aside and ranked instead, as the service
        ranks weights that were only masked before each forward pass."""
        self._check_live("apply")
        due_next = set(self._targets.due(self._step + 1))
        with torch.no_grad():
            for i, p in enumerate(self._params):
                if not self._active[i]:
                    continue
                if i in due_next:
                    kept = self._unmasked.get(i)
                    if kept is None or not self._fresh(kept, p):
                        kept = (p.detach().clone(), None)
                    p.mul_(self._masks[i])
                    self._unmasked[i] = (kept[0], p._version)
                else:
                    p.mul_(self._masks[i])

    def attach(self, optimizer: torch.optim.Optimizer):
        """Calls `apply()` after every `optimizer.step()` (a post hook); `strip()` removes it.
        Returns the hook's handle."""
        self._check_live("attach")
        handle = optimizer.register_step_post_hook(lambda *_: self.apply())
        self._hooks.append(handle)
        return handle

    def one_shot(self) -> None:
        """The service's one-shot pruning (`epochs = 0`): every mask computed once from the
        current weights at its schedule's final sparsity (m-by-n by its own rule), applied."""
        self._check_live("one_shot")
        with torch.no_grad():
            self._recompute(list(range(len(self._params))), None)
            for i in range(len(self._params)):
                if self._active[i]:
                    self._params[i].mul_(self._masks[i])
        self._notify(True)

    def strip(self) -> torch.nn.Module:
        """Multiplies the masks in a last time and removes every hook: the model is a plain
        module again, its state_dict under its own names (no weight_orig / weight_mask). The
        pruner cannot step after this."""
        self._check_live("strip")
        with torch.no_grad():
            for i, p in enumerate(self._params):
                if self._active[i]:
                    p.mul_(self._masks[i])
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._unmasked.clear()
        self._stripped = True
        _LIVE.pop(self._model, None)
        return self._model

    # -- what it reports ---------------------------------------------------------------------

    @property
    def masks(self) -> Dict[str, torch.Tensor]:
        """{parameter name: bool mask on the parameter's device, True = kept}."""
        return dict(zip(self._names, self._masks))

    def sparsity(self) -> Dict[str, float]:
        """{parameter name: 1 - mean(mask)}, the service's `sparsity/<name>` (tfmot's
        PruningSummaries)."""
        return {n: 1.0 - m.float().mean().item() for n, m in zip(self._names, self._masks)}

    def schedule_sparsity(self, step: Optional[int] = None) -> Dict[str, float]:
        """{parameter name: the sparsity its schedule gives at `step` (default: the current
        step)}."""
        return dict(zip(self._names, self._targets.sparsities(self._step if step is None else step)))

    def describe(self) -> List[str]:
        """One line per target: its shape, method and schedule."""
        return list(self._targets.describe())

    # -- saving and resuming -----------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed loop needs to continue bit for bit (torch.save-able, and
        loadable with `torch.load(weights_only=True)`)."""
        unmasked = {
            self._names[i]: kept[0].detach().cpu().clone()
            for i, kept in self._unmasked.items()
            if self._fresh(kept, self._params[i])
        }
        return {
            "format": STATE_FORMAT,
            "pruning": self._spec.canonical,
            "step": self._step,
            "names": list(self._names),
            "masks": {n: m.detach().cpu().clone() for n, m in zip(self._names, self._masks)},
            "unmasked": unmasked,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores a `state_dict()` of a pruner with the same `[pruning]` table on the same
        model. Load the model's weights first."""
        self._check_live("load_state_dict")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a Pruner state (format {state.get('format')!r}, expected {STATE_FORMAT!r})")
        if state["pruning"] != self._spec.canonical:
            raise ValueError(
                "the saved state is of another [pruning] table:\n"
                f"  saved: {state['pruning']}\n  this:  {self._spec.canonical}"
            )
        if list(state["names"]) != self._names:
            raise ValueError(f"the saved state prunes {list(state['names'])}, this model's pruner {self._names}")
        masks = []
        for name, p in zip(self._names, self._params):
            m = state["masks"][name]
            if tuple(m.shape) != tuple(p.shape) or m.dtype != torch.bool:
                raise ValueError(f"saved mask of {name}: {m.dtype} {tuple(m.shape)}, parameter {tuple(p.shape)}")
            masks.append(m.to(p.device))
        self._masks = masks
        self._active = [not bool(m.all()) for m in masks]
        self._step = int(state["step"])
        index = {n: i for i, n in enumerate(self._names)}
        # Trusted until the weights change (None: no version to compare with yet).
        self._unmasked = {
            index[n]: (v.to(self._params[index[n]].device), None) for n, v in state.get("unmasked", {}).items()
        }

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _fresh(kept: tuple, p: torch.Tensor) -> bool:
        """Whether the parameter is unchanged since `apply()` masked it (its in-place version
        counter says so), so the kept values are still what the optimizer left."""
        return kept[1] is None or kept[1] == p._version

    def _restore_unmasked(self, due: Iterable[int]) -> None:
        for i in due:
            kept = self._unmasked.get(i)
            if kept is not None and self._fresh(kept, self._params[i]):
                self._params[i].copy_(kept[0])

    def _recompute(self, which: List[int], step: Optional[int]) -> None:
        weights = [f32_bytes(self._params[i]) for i in which]
        for i, mask in zip(which, self._targets.compute(which, weights, step)):
            p = self._params[i]
            self._masks[i] = bool_tensor(mask, p.shape, p.device)
            self._active[i] = not bool(self._masks[i].all())

    def _notify(self, updated: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(self, updated)
            except Exception as e:  # a report must never stop the loop
                warnings.warn(f"prune: a listener of the pruner failed: {e!r}", RuntimeWarning, stacklevel=3)

    def _check_live(self, what: str) -> None:
        if self._stripped:
            raise RuntimeError(f"Pruner.{what}(): this pruner was stripped; create a new Pruner to prune again")

    def __repr__(self) -> str:
        return f"Pruner(step={self._step}, targets={self._names})"
