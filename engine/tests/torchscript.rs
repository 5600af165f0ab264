//! A TorchScript model made by PyTorch itself: pruned while fine-tuning, exported as
//! TorchScript, and loaded back with plain `torch.jit.load`. Also one-shot on a state dict.

mod common;

use std::process::Command;

use common::{inputs, one_job_at_a_time, spec, venv_python};
use prune_engine::{run_job, StopFlag, VecSink};

/// Runs a script from a file: `torch.jit.script` reads the source of the classes it compiles.
fn python(script: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.py");
    std::fs::write(&path, script).unwrap();
    let out = Command::new(venv_python()).arg(&path).output().expect("run the venv's python");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn torchscript_cnn_is_pruned_and_loads_in_pytorch() {
    let _one_job = one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cnn.pt");
    python(&format!(
        r#"
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)
    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(x, 1))
torch.manual_seed(0)
torch.jit.script(Net()).save(r"{}")
"#,
        model.display()
    ));
    let job = spec(
        r#"
[model]
file = "cnn.pt"
[data]
builtin = "digits"
validation_split = 0.1
[training]
epochs = 3
batch_size = 64
optimizer = "adam"
learning_rate = 0.003
[pruning]
schedule = { kind = "polynomial_decay", initial_sparsity = 0.2, final_sparsity = 0.6, begin_step = 0, end_step = 50, frequency = 10 }
[export]
formats = ["torchscript", "safetensors"]
compression = "none"
"#,
    );
    let mut inp = inputs(dir.path());
    inp.model_file = Some(model);
    let out = run_job(&job, &inp, &mut VecSink::default(), &StopFlag::default()).unwrap();
    let names: Vec<_> = out.report.tensors.iter().filter(|t| t.pruned).map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["conv.weight", "fc.weight"], "PyTorch's dotted names, rank >= 2 only");
    assert!(out.report.final_val_accuracy.unwrap() > 0.5);
    let ts = out.artifacts.iter().find(|a| a.format == "torchscript").unwrap();
    let printed = python(&format!(
        r#"
import torch
m = torch.jit.load(r"{}")
sd = dict(m.named_parameters())
for name in ["conv.weight", "fc.weight"]:
    w = sd[name]
    print(name, round(1 - (w != 0).float().mean().item(), 4))
print("out", tuple(m(torch.zeros(2, 64)).shape))
"#,
        common::artifact_path(dir.path(), ts).display()
    ));
    assert!(printed.contains("conv.weight 0.5972") || printed.contains("conv.weight 0.6"), "{printed}");
    assert!(printed.contains("fc.weight 0.6"), "{printed}");
    assert!(printed.contains("out (2, 10)"), "{printed}");
}

#[test]
fn one_shot_on_a_state_dict_with_overrides() {
    let _one_job = one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sd.safetensors");
    python(&format!(
        r#"
import torch
from safetensors.torch import save_file
torch.manual_seed(0)
save_file({{"enc.weight": torch.randn(32, 16), "enc.bias": torch.randn(32), "head.weight": torch.randn(4, 32)}}, r"{}")
"#,
        file.display()
    ));
    let job = spec(
        r#"
[model]
file = "sd.safetensors"
[training]
epochs = 0
[pruning]
schedule = { kind = "constant_sparsity", target_sparsity = 0.75 }
prune_bias = true
[[pruning.overrides]]
match = "^head\\."
schedule = { kind = "polynomial_decay", initial_sparsity = 0.1, final_sparsity = 0.5, begin_step = 0, end_step = 10 }
[export]
compression = "gzip"
sparse_format = "bitmask"
"#,
    );
    let mut inp = inputs(dir.path());
    inp.model_file = Some(file.clone());
    let out = run_job(&job, &inp, &mut VecSink::default(), &StopFlag::default()).unwrap();
    let sparsity = |n: &str| out.report.tensors.iter().find(|t| t.name == n).unwrap().sparsity;
    assert_eq!(sparsity("enc.weight"), 0.75);
    assert_eq!(sparsity("enc.bias"), 0.75);
    assert_eq!(sparsity("head.weight"), 0.5);
    // The packed, gzipped artifact decompresses and unpacks to exactly the stripped weights.
    let back = prune_engine::export::read_artifact(&common::artifact_path(dir.path(), &out.artifacts[0])).unwrap();
    let printed = python(&format!(
        r#"
import torch
from safetensors.torch import load_file
sd = load_file(r"{}")
print(sorted(sd))
"#,
        file.display()
    ));
    assert!(printed.contains("enc.weight"));
    assert_eq!(back.len(), 3);
    for (name, t) in back {
        let zeros = t.eq(0.0).to_kind(tch::Kind::Float).mean(tch::Kind::Float);
        assert!((f64::try_from(zeros).unwrap() - sparsity(&name)).abs() < 1e-9, "{name}");
    }
}

/// Channel pruning of a user TorchScript model: no layer graph is known, so each weight's rows
/// (and its bias entries) are zeroed, the last weight (the classifier) is kept, the report
/// lists what could be cut, and the TorchScript artifact still loads.
#[test]
fn torchscript_channels_are_zeroed_and_listed() {
    let _one_job = one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cnn.pt");
    python(&format!(
        r#"
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)
    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x.view(-1, 1, 8, 8))), 1))
torch.manual_seed(0)
torch.jit.script(Net()).save(r"{}")
"#,
        model.display()
    ));
    let job = spec(
        r#"
[model]
file = "cnn.pt"
[data]
builtin = "digits"
[training]
epochs = 1
batch_size = 64
[pruning]
structure = "channel"
schedule = { kind = "constant_sparsity", target_sparsity = 0.5, frequency = 5 }
[export]
formats = ["torchscript"]
compression = "none"
"#,
    );
    let mut job_inputs = inputs(dir.path());
    job_inputs.model_file = Some(model);
    let outcome = run_job(&job, &job_inputs, &mut VecSink::default(), &StopFlag::default()).unwrap();
    let report = outcome.report.channels.unwrap();
    assert!(report.note.as_deref().unwrap().contains("no layer graph"), "{report:?}");
    let layers: Vec<(&str, usize)> = report.layers.iter().map(|l| (l.layer.as_str(), l.removed.len())).collect();
    assert_eq!(layers, [("conv.weight", 4), ("fc.weight", 0)]);
    let artifact = common::artifact_path(dir.path(), &outcome.artifacts[0]);
    let out = python(&format!(
        r#"
import torch
m = torch.jit.load(r"{}")
w, b = m.conv.weight, m.conv.bias
rows = [int(i) for i in (w.flatten(1).abs().sum(1) == 0).nonzero().flatten()]
assert all(float(b[i]) == 0 for i in rows), "bias entries of removed channels"
print(rows)
"#,
        artifact.display()
    ));
    let removed = &report.layers[0].removed;
    assert_eq!(out.trim(), format!("{removed:?}"));
}
