"""Bad input: the service's validation by field path, its warnings, and the package's own refusals."""

import os
import warnings

import pytest
import torch

import prune
from conftest import ROOT
from common import mlp

OK = {"kind": "constant_sparsity", "target_sparsity": 0.5, "begin_step": 1, "frequency": 1}


@pytest.mark.parametrize(
    "table, text",
    [
        ({"schedule": OK, "scop": "global"}, "pruning.scop: unknown field `scop`"),
        ({"schedule": {**OK, "target_sparsity": 1.5}}, "pruning.schedule.target_sparsity: target_sparsity must be in range [0,1)"),
        ({"schedule": {**OK, "frequency": 0}}, "pruning.schedule.frequency: frequency should be > 0"),
        ({"schedule": {"kind": "polynomial_decay", "initial_sparsity": 0.1, "final_sparsity": 0.5, "begin_step": 5, "end_step": 5}}, "pruning.schedule.end_step"),
        ({"schedule": OK, "block_size": [0, 2]}, "pruning.block_size[0]: must be >= 1"),
        ({"schedule": OK, "m_by_n": [4, 4]}, "pruning.m_by_n"),
        ({"schedule": OK, "scope": "everywhere"}, "pruning.scope"),
        ({"schedule": OK, "include": ["("]}, "pruning.include[0]: regex parse error"),
        ({"schedule": OK, "overrides": [{"match": "x", "skip": True, "block_size": [2, 2]}]}, "pruning.overrides[0].skip"),
        ({"schedule": OK, "structure": "channel"}, "pruning.structure: channel pruning follows a model's layer graph"),
        ({"schedule": OK, "budget": {"max_bytes": 100}}, "pruning.budget"),
        ({}, "pruning.schedule"),
    ],
)
def test_a_bad_table_is_a_value_error_naming_the_field(table, text):
    with pytest.raises(ValueError) as e:
        prune.Pruner(mlp(hidden=8), table)
    assert text in str(e.value)
    assert isinstance(e.value, prune.SpecError)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError) as e:
        prune.Pruner(mlp(hidden=8), {"schedule": {**OK, "frequency": 0}, "block_size": [0, 1], "include": ["["]})
    lines = str(e.value).splitlines()
    assert [l.split(":")[0] for l in lines] == ["pruning.schedule.frequency", "pruning.block_size[0]", "pruning.include[0]"]


def test_a_pattern_that_selects_nothing_warns_and_nothing_selected_is_the_service_error():
    model = mlp(hidden=8)
    with pytest.warns(prune.PruneWarning, match=r"pruning.exclude\[0\]: `\^fc` matches no parameter"):
        prune.Pruner(model, {"schedule": OK, "exclude": ["^fc"]})
    with pytest.warns(prune.PruneWarning, match=r"pruning.include\[0\]"), pytest.raises(
        ValueError, match=r"^pruning: no parameter is selected for pruning \(check include/exclude/overrides\)$"
    ):
        prune.Pruner(model, {"schedule": OK, "include": ["^encoder"]})


def test_the_services_schedule_warnings_are_given():
    schedule = {"kind": "polynomial_decay", "initial_sparsity": 0.1, "final_sparsity": 0.5, "begin_step": 0, "end_step": 250, "frequency": 100}
    with pytest.warns(prune.PruneWarning, match="pruning.schedule: ") as record:
        prune.Pruner(mlp(hidden=8), {"schedule": schedule}, total_steps=120)
    assert len(record) >= 1


def test_an_included_parameter_that_is_not_floating_point_is_named():
    model = mlp(hidden=8)
    model.register_parameter("codes", torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.int64), requires_grad=False))
    # By default it is skipped, as in the service.
    assert "codes" not in prune.Pruner(model, {"schedule": OK}).masks
    with pytest.raises(ValueError, match=r"pruning.include\[0\]: selects parameter `codes` of dtype int64"):
        prune.Pruner(model, {"schedule": OK, "include": ["codes|weight"]})
    with pytest.raises(TypeError, match="int64"):
        prune.mask(torch.ones(4, 4, dtype=torch.int64), 0.5)


def test_a_method_that_cannot_apply_to_a_shape_names_the_parameter():
    with pytest.raises(ValueError, match=r"pruning.block_size \[2, 2\] needs 2-D weights .* 0.bias"):
        prune.Pruner(mlp(hidden=8), {"schedule": OK, "block_size": [2, 2], "prune_bias": True})
    with pytest.raises(ValueError, match="needs 2-D weights"):
        prune.mask(torch.ones(2, 2, 2), 0.5, block_size=(2, 2))
    with pytest.raises(ValueError, match=r"block_pooling: `mean` is not one of"):
        prune.mask(torch.ones(4, 4), 0.5, block_size=(2, 2), block_pooling="mean")
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\]"):
        prune.mask(torch.ones(4, 4), 1.5)


def test_step_after_strip_is_an_error():
    model = mlp(hidden=8)
    pruner = prune.Pruner(model, {"schedule": OK})
    pruner.step()
    assert pruner.strip() is model
    for call in (pruner.step, pruner.apply, pruner.strip):
        with pytest.raises(RuntimeError, match="stripped"):
            call()


def test_fsdp_is_refused():
    from torch.distributed.fsdp import FullyShardedDataParallel

    class Sharded(FullyShardedDataParallel):
        def __init__(self):  # no process group needed to be recognised
            torch.nn.Module.__init__(self)
            self.inner = torch.nn.Linear(4, 4)

    with pytest.raises(ValueError, match="FSDP is not supported"):
        prune.Pruner(Sharded(), {"schedule": OK})


def test_job_files(tmp_path):
    # A whole job file of the repository: checked as prunectl submit checks it.
    job = os.path.join(ROOT, "examples", "global.toml")
    pruner = prune.Pruner.from_job_file(mlp(), job)
    assert pruner.masks
    only = tmp_path / "pruning.toml"
    only.write_text('[pruning]\nschedule = { kind = "constant_sparsity", target_sparsity = 0.5 }\nscope = "global"\n')
    assert prune.Pruner.from_job_file(mlp(), only).describe()[0].endswith("global")
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nfile = "m.pt"\n[pruning]\nschedule = { kind = "constant_sparsity", target_sparsity = 0.5 }\nblock_sise = [1, 2]\n')
    with pytest.raises(ValueError, match=r"pruning.block_sise: unknown field .*\(line 5, column 1\)"):
        prune.Pruner.from_job_file(mlp(), bad)


def test_export_refuses_names_compressed_tensors_would_misread(tmp_path):
    with pytest.raises(prune.ArtifactError, match="0.shape"):
        prune.export({"0.shape": torch.zeros(3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="compression"):
        prune.export({"w": torch.zeros(3)}, str(tmp_path / "x.safetensors"), compression="lz4")
