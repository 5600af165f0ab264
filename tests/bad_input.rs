//! Bad-input corpus against ONE live `prune-server --workers 2`: every bad input must answer
//! an error status at submit (INVALID_ARGUMENT naming the field, or RESOURCE_EXHAUSTED /
//! NOT_FOUND / DATA_LOSS where the proto says so), or end its job FAILED with a one-line,
//! non-empty reason that names what is wrong. Meanwhile a good training job runs alongside and
//! must SUCCEED, the server must stay alive, and GetJob/ListJobs must keep working.
//!
//! Corpus categories:
//! 1. TorchScript model blobs: truncated, garbage behind a zip magic, random bytes, empty,
//!    a zip that is not TorchScript.
//! 2. safetensors with lying headers, as model blob, as dataset blob and as `model.weights`:
//!    data offsets out of range, overlapping offsets, byte length != shape x dtype size,
//!    header length near u64::MAX, header length > file, non-JSON header, a header that is
//!    not an object, a shape whose element count overflows, an unknown dtype, a file shorter
//!    than the 8-byte length prefix.
//! 3. Datasets that do not fit: x shape vs the model, labels out of range, negative labels,
//!    NaN/inf in x, NaN in float targets, 0 rows, x/y row mismatch, missing tensors, integer x,
//!    2-D integer y, a validation split that leaves nothing, batch size 0; state dicts that
//!    cannot be trained; weights that do not match the model.
//! 4. Every error branch of `Schedule::validate` (core/src/schedule.rs): begin_step < 0,
//!    polynomial end_step = -1, end_step < -1, end_step < begin_step, polynomial
//!    end_step == begin_step, frequency <= 0, sparsities < 0 / >= 1 / NaN, non-finite power;
//!    plus power < 0, unknown schedule kinds, missing keys, invalid override schedules.
//! 5. Layer selection: bad regexes in include / exclude / overrides, a regex over the size or
//!    nesting limit, a selection that matches no parameter.
//! 6. Unknown fields: top level, in tables, in the schedule, unknown tables, in the JSON form.
//! 7. Absurd sizes: epochs 10^12, batch size 10^12, huge layers, huge synthetic data sets,
//!    megabyte strings, spec texts of several MB.
//! 8. Blob ids: missing blobs, malformed ids (short, upper case, other algorithms, paths),
//!    for CreateJob, StatBlob, HasBlob and UploadBlob headers.
//!
//! Prints `bad inputs tried: N (rejected at submit: A, failed jobs: B)`.

use std::time::Duration;

use prune_proto as pb;
use prune_tests::*;
use safetensors::tensor::{Dtype, TensorView};
use tempfile::TempDir;
use tokio::time::Instant;
use tonic::Code;

/// Every failing job must be FAILED within this; they fail at load time, so far less is usual.
const CORPUS_TIMEOUT: Duration = Duration::from_secs(240);
/// The good job alongside.
const GOOD_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
enum Expect {
    /// The submit call answers `code`, its message containing `text`.
    Rejected { code: Code, text: &'static str },
    /// The job is accepted and ends FAILED, its one-line reason containing `reason`.
    Fails { reason: &'static str },
}

use Expect::*;

fn rejected(code: Code, text: &'static str) -> Expect {
    Rejected { code, text }
}
fn invalid(text: &'static str) -> Expect {
    Rejected { code: Code::InvalidArgument, text }
}
fn fails(reason: &'static str) -> Expect {
    Fails { reason }
}

enum Input {
    /// CreateJob with `spec_toml` (TOML, or JSON when it starts with `{`).
    Text(String),
    /// CreateJob with a `JobSpec` message.
    Spec(Box<pb::JobSpec>),
    /// UploadBlob with this header and data.
    Upload {
        header: pb::BlobHeader,
        data: Vec<u8>,
    },
    StatBlob(String),
    HasBlob(String),
}

struct Case {
    name: String,
    input: Input,
    expect: Expect,
}

fn case(name: impl Into<String>, input: Input, expect: Expect) -> Case {
    Case { name: name.into(), input, expect }
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// The good job: a digits MLP, long enough to run through the whole corpus.
fn good_job() -> String {
    r#"
name = "good-alongside"
[model]
sequential = [{ type = "linear", in = 64, out = 256 }, { type = "relu" }, { type = "linear", in = 256, out = 10 }]
[data]
builtin = "digits"
validation_split = 0.1
[training]
epochs = 150
batch_size = 32
optimizer = "adam"
learning_rate = 0.01
checkpoint_every = 200
threads = 1
[pruning]
schedule = { kind = "polynomial_decay", initial_sparsity = 0.2, final_sparsity = 0.8, begin_step = 0, end_step = 1000, frequency = 100 }
"#
    .to_string()
}

/// A quick, valid training job on the digits; `replace` pairs turn it into a bad one.
const BASE: &str = r#"
name = "base"
[model]
sequential = [{ type = "linear", in = 64, out = 16 }, { type = "relu" }, { type = "linear", in = 16, out = 10 }]
[data]
builtin = "digits"
validation_split = 0.1
[training]
epochs = 1
batch_size = 32
threads = 1
[pruning]
schedule = { kind = "polynomial_decay", initial_sparsity = 0.2, final_sparsity = 0.8, begin_step = 0, end_step = 50, frequency = 10 }
"#;

fn base_with(pairs: &[(&str, &str)]) -> String {
    let mut text = BASE.to_string();
    for (from, to) in pairs {
        assert!(text.contains(from), "{from:?} not in the base job");
        text = text.replacen(from, to, 1);
    }
    text
}

fn with_schedule(schedule: &str) -> String {
    let original = BASE.lines().find(|l| l.starts_with("schedule = ")).unwrap();
    base_with(&[(original, &format!("schedule = {schedule}"))])
}

/// One-shot pruning of the model blob `id` (no data needed).
fn one_shot_blob(id: &str) -> String {
    format!(
        r#"
name = "one-shot"
[model]
blob = "{id}"
[pruning]
schedule = {{ kind = "constant_sparsity", target_sparsity = 0.5 }}
"#
    )
}

/// Training a 64 -> 10 linear model on the data blob `id`.
fn train_on_data(id: &str, extra_training: &str) -> String {
    format!(
        r#"
name = "data-blob"
[model]
sequential = [{{ type = "linear", in = 64, out = 10 }}]
[data]
blob = "{id}"
[training]
epochs = 1
batch_size = 8
threads = 1
{extra_training}
[pruning]
schedule = {{ kind = "constant_sparsity", target_sparsity = 0.5, frequency = 1 }}
"#
    )
}

/// The base model with initial weights from the blob `id`.
fn with_weights(id: &str) -> String {
    base_with(&[("[data]", &format!("weights = \"{id}\"\n[data]"))])
}

/// A safetensors file from a raw header (length prefix added) and body.
fn raw_safetensors(header: &str, body: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// A safetensors file whose length prefix is `len`, followed by `rest`.
fn prefixed(len: u64, rest: &[u8]) -> Vec<u8> {
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(rest);
    out
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn i64_bytes(values: impl IntoIterator<Item = i64>) -> Vec<u8> {
    values.into_iter().flat_map(i64::to_le_bytes).collect()
}

/// A well-formed safetensors file of `(name, dtype, shape, bytes)` tensors.
fn safetensors_of(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| (*name, TensorView::new(*dtype, shape.clone(), data).expect("tensor view")))
        .collect();
    safetensors::serialize(views, None).expect("serialising")
}

/// A digits-like dataset: `rows` samples of `features` f32 values, labels from `label(i)`.
fn dataset(rows: usize, features: usize, x: impl Fn(usize) -> f32, label: impl Fn(usize) -> i64) -> Vec<u8> {
    safetensors_of(&[
        ("x", Dtype::F32, vec![rows, features], f32_bytes((0..rows * features).map(x))),
        ("y", Dtype::I64, vec![rows], i64_bytes((0..rows).map(label))),
    ])
}

/// The lying safetensors headers: (name, bytes, what the reason must mention).
fn lying_safetensors() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let body = vec![0u8; 64];
    vec![
        (
            "offsets out of range",
            raw_safetensors(r#"{"x":{"dtype":"F32","shape":[4,64],"data_offsets":[0,1024]}}"#, &body),
            "safetensors",
        ),
        (
            "overlapping offsets",
            raw_safetensors(
                r#"{"x":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]},"y":{"dtype":"F32","shape":[2,4],"data_offsets":[16,48]}}"#,
                &body,
            ),
            "safetensors",
        ),
        (
            "byte length != shape x dtype size",
            raw_safetensors(r#"{"x":{"dtype":"F32","shape":[5,2],"data_offsets":[0,30]}}"#, &body),
            "safetensors",
        ),
        ("header length near u64::MAX", prefixed(u64::MAX - 7, br#"{"x":{}}"#), "safetensors"),
        (
            "header length > file",
            prefixed(4096, br#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#),
            "safetensors",
        ),
        ("non-JSON header", raw_safetensors("{not json at all}", &body), "safetensors"),
        ("header is not an object of tensors", raw_safetensors(r#"{"x":[1,2,3]}"#, &body), "safetensors"),
        (
            "element count overflows",
            raw_safetensors(
                r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,64]}}"#,
                &body,
            ),
            "safetensors",
        ),
        (
            "unknown dtype",
            raw_safetensors(r#"{"x":{"dtype":"Q3","shape":[4],"data_offsets":[0,12]}}"#, &body),
            "safetensors",
        ),
        ("shorter than the length prefix", vec![b'{', 0, 0], "safetensors"),
    ]
}

async fn python_torchscript(dir: &std::path::Path) -> Vec<u8> {
    let venv = std::env::var_os("PRUNE_VENV")
        .expect("PRUNE_VENV is not set: run `eval \"$(scripts/libtorch-env.sh)\"` (the Makefile does) for PyTorch");
    let path = dir.join("model.pt");
    let out = tokio::process::Command::new(std::path::PathBuf::from(venv).join("bin/python"))
        .arg("-c")
        .arg(
            "import sys, torch\n\
             torch.manual_seed(0)\n\
             m = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))\n\
             torch.jit.script(m).save(sys.argv[1])",
        )
        .arg(&path)
        .output()
        .await
        .expect("running python");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(&path).unwrap()
}

/// A zip archive that is not TorchScript: one stored file, `hello.txt`.
fn plain_zip() -> Vec<u8> {
    let name = b"hello.txt";
    let content = b"hello";
    let crc = crc32(content);
    let mut local = Vec::new();
    local.extend_from_slice(b"PK\x03\x04");
    local.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    local.extend_from_slice(&crc.to_le_bytes());
    local.extend_from_slice(&(content.len() as u32).to_le_bytes());
    local.extend_from_slice(&(content.len() as u32).to_le_bytes());
    local.extend_from_slice(&(name.len() as u16).to_le_bytes());
    local.extend_from_slice(&0u16.to_le_bytes());
    local.extend_from_slice(name);
    local.extend_from_slice(content);
    let central_at = local.len() as u32;
    let mut central = Vec::new();
    central.extend_from_slice(b"PK\x01\x02");
    central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    central.extend_from_slice(&crc.to_le_bytes());
    central.extend_from_slice(&(content.len() as u32).to_le_bytes());
    central.extend_from_slice(&(content.len() as u32).to_le_bytes());
    central.extend_from_slice(&(name.len() as u16).to_le_bytes());
    central.extend_from_slice(&[0; 12]);
    central.extend_from_slice(&0u32.to_le_bytes());
    central.extend_from_slice(name);
    let mut end = Vec::new();
    end.extend_from_slice(b"PK\x05\x06");
    end.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
    end.extend_from_slice(&(central.len() as u32).to_le_bytes());
    end.extend_from_slice(&central_at.to_le_bytes());
    end.extend_from_slice(&0u16.to_le_bytes());
    [local, central, end].concat()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Deterministic pseudo-random bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (s >> 33) as u8
        })
        .collect()
}

async fn put(client: &mut Client, data: Vec<u8>) -> String {
    upload(client, &data).await.expect("uploads take any bytes")
}

fn one_shot_proto(blob: &str) -> pb::JobSpec {
    pb::JobSpec { name: Some("proto".into()), ..one_shot_spec(blob) }
}

// ---------------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------------

async fn corpus(client: &mut Client, scratch: &std::path::Path) -> Vec<Case> {
    let mut cases = Vec::new();

    // 1. TorchScript.
    let script = python_torchscript(scratch).await;
    let models: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "truncated TorchScript (first half)",
            script[..script.len() / 2].to_vec(),
            fails("not a loadable TorchScript module"),
        ),
        (
            "truncated TorchScript (last byte missing)",
            script[..script.len() - 1].to_vec(),
            fails("not a loadable TorchScript module"),
        ),
        (
            "garbage TorchScript (zip magic, then noise)",
            [b"PK\x03\x04".to_vec(), noise(4096, 1)].concat(),
            fails("not a loadable TorchScript module"),
        ),
        (
            "TorchScript with its middle overwritten",
            {
                let mut s = script.clone();
                let mid = s.len() / 2;
                s[mid..mid + 256].copy_from_slice(&noise(256, 2));
                s
            },
            fails("model"),
        ),
        ("a zip that is not TorchScript", plain_zip(), fails("not a loadable TorchScript module")),
        ("random bytes as model", noise(1000, 3), fails("neither TorchScript")),
        ("empty model blob", Vec::new(), fails("neither TorchScript")),
    ];
    for (name, bytes, expect) in models {
        let id = put(client, bytes).await;
        cases.push(case(format!("model blob: {name}"), Input::Text(one_shot_blob(&id)), expect));
    }
    // A valid TorchScript model trained on data of the wrong width.
    let script_id = put(client, script.clone()).await;
    let narrow = put(client, dataset(20, 32, |i| (i % 7) as f32, |i| (i % 10) as i64)).await;
    let text = one_shot_blob(&script_id)
        .replace("[pruning]", &format!("[data]\nblob = \"{narrow}\"\n[training]\nepochs = 1\nthreads = 1\n[pruning]"));
    cases.push(case("TorchScript model, data of the wrong width", Input::Text(text), fails("does not fit the model")));

    // 2. Lying safetensors: as model, as data, as initial weights.
    for (name, bytes, reason) in lying_safetensors() {
        let id = put(client, bytes).await;
        cases.push(case(format!("safetensors model: {name}"), Input::Text(one_shot_blob(&id)), fails(reason)));
        cases.push(case(format!("safetensors data: {name}"), Input::Text(train_on_data(&id, "")), fails(reason)));
        cases.push(case(format!("safetensors weights: {name}"), Input::Text(with_weights(&id)), fails(reason)));
    }

    // 3. Data sets and models that do not fit.
    let datasets: Vec<(&str, Vec<u8>, &str, Expect)> = vec![
        (
            "x of 32 features for a 64-input model",
            dataset(20, 32, |i| i as f32, |i| (i % 10) as i64),
            "",
            fails("does not fit the model"),
        ),
        (
            "labels up to 12 for 10 outputs",
            dataset(20, 64, |_| 0.5, |i| (i % 13) as i64),
            "",
            fails("labels go up to 12"),
        ),
        ("negative labels", dataset(20, 64, |_| 0.5, |i| (i as i64 % 10) - 3), "", fails("negative class ids")),
        ("NaN in x", dataset(20, 64, |i| if i == 77 { f32::NAN } else { 0.5 }, |i| (i % 10) as i64), "", fails("NaN")),
        (
            "inf in x",
            dataset(20, 64, |i| if i == 5 { f32::NEG_INFINITY } else { 0.5 }, |i| (i % 10) as i64),
            "",
            fails("infinite"),
        ),
        (
            "NaN in float targets (mse)",
            safetensors_of(&[
                ("x", Dtype::F32, vec![20, 64], f32_bytes((0..20 * 64).map(|_| 0.5))),
                ("y", Dtype::F32, vec![20, 10], f32_bytes((0..200).map(|i| if i == 3 { f32::NAN } else { 0.0 }))),
            ]),
            "loss = \"mse\"",
            fails("y contains NaN"),
        ),
        ("0 rows", dataset(0, 64, |_| 0.0, |_| 0), "", fails("empty")),
        (
            "x and y row counts differ",
            safetensors_of(&[
                ("x", Dtype::F32, vec![20, 64], f32_bytes((0..20 * 64).map(|_| 0.5))),
                ("y", Dtype::I64, vec![19], i64_bytes(0..19)),
            ]),
            "",
            fails("x has 20 samples but y has 19"),
        ),
        (
            "no y tensor",
            safetensors_of(&[("x", Dtype::F32, vec![2, 64], f32_bytes((0..128).map(|_| 0.5)))]),
            "",
            fails("no tensor named \"y\""),
        ),
        (
            "integer x",
            safetensors_of(&[
                ("x", Dtype::I64, vec![2, 64], i64_bytes(0..128)),
                ("y", Dtype::I64, vec![2], i64_bytes(0..2)),
            ]),
            "",
            fails("x must be floating point"),
        ),
        (
            "2-D integer y",
            safetensors_of(&[
                ("x", Dtype::F32, vec![4, 64], f32_bytes((0..256).map(|_| 0.5))),
                ("y", Dtype::I64, vec![4, 2], i64_bytes(0..8)),
            ]),
            "",
            fails("class ids of shape [N]"),
        ),
        (
            "1-D x",
            safetensors_of(&[
                ("x", Dtype::F32, vec![4], f32_bytes([0.5; 4])),
                ("y", Dtype::I64, vec![4], i64_bytes(0..4)),
            ]),
            "",
            fails("does not fit the model"),
        ),
        (
            "boolean y",
            safetensors_of(&[
                ("x", Dtype::F32, vec![2, 64], f32_bytes((0..128).map(|_| 0.5))),
                ("y", Dtype::BOOL, vec![2], vec![0, 1]),
            ]),
            "",
            fails("y must be integer class ids or float targets"),
        ),
        (
            "validation split leaves no training rows",
            dataset(5, 64, |_| 0.5, |i| i as i64),
            "",
            fails("validation_split"),
        ),
        (
            "class ids for mse",
            dataset(4, 64, |_| 0.5, |i| i as i64),
            "loss = \"mse\"",
            fails("mse needs float targets"),
        ),
    ];
    for (name, bytes, extra, expect) in datasets {
        let id = put(client, bytes).await;
        let mut text = train_on_data(&id, extra);
        if name.starts_with("validation split") {
            text = text.replace(&format!("blob = \"{id}\""), &format!("blob = \"{id}\"\nvalidation_split = 0.9"));
        }
        cases.push(case(format!("dataset: {name}"), Input::Text(text), expect));
    }
    let state_dict = put(client, mlp_state_dict()).await;
    cases.push(case(
        "a safetensors state dict with epochs > 0",
        Input::Text(
            one_shot_blob(&state_dict)
                .replace("[pruning]", "[data]\nbuiltin = \"digits\"\n[training]\nepochs = 1\n[pruning]"),
        ),
        fails("cannot be trained"),
    ));
    cases.push(case("weights of another shape", Input::Text(with_weights(&state_dict)), fails("model.weights")));
    let nan_weight = put(
        client,
        safetensors_of(&[
            ("0.weight", Dtype::F32, vec![4, 4], f32_bytes((0..16).map(|i| if i == 9 { f32::NAN } else { i as f32 }))),
            ("0.bias", Dtype::F32, vec![4], f32_bytes([1.0; 4])),
        ]),
    )
    .await;
    cases.push(case(
        "state dict with a NaN weight",
        Input::Text(one_shot_blob(&nan_weight)),
        fails("parameter 0.weight holds NaN or infinite values"),
    ));
    // A 0-element weight is accepted (nothing to prune, nothing wrong): not in the corpus.
    let no_weights = put(client, safetensors_of(&[("0.bias", Dtype::F32, vec![4], f32_bytes([1.0; 4]))])).await;
    cases.push(case(
        "state dict without a weight of rank >= 2",
        Input::Text(one_shot_blob(&no_weights)),
        fails("no parameter is selected"),
    ));
    cases.push(case(
        "batch size 0",
        Input::Text(base_with(&[("batch_size = 32", "batch_size = 0")])),
        invalid("training.batch_size"),
    ));
    cases.push(case(
        "batch size -5",
        Input::Text(base_with(&[("batch_size = 32", "batch_size = -5")])),
        invalid("training.batch_size"),
    ));

    // 4. Schedules: every branch of Schedule::validate, and more.
    let schedules: Vec<(&str, &str, &str)> = vec![
        ("begin_step < 0", "{ kind = \"polynomial_decay\", initial_sparsity = 0.2, final_sparsity = 0.8, begin_step = -1, end_step = 50 }", "pruning.schedule.begin_step: begin_step should be >= 0"),
        ("polynomial end_step = -1", "{ kind = \"polynomial_decay\", initial_sparsity = 0.2, final_sparsity = 0.8, begin_step = 0, end_step = -1 }", "pruning.schedule.end_step: end_step cannot be -1."),
        ("end_step < -1", "{ kind = \"constant_sparsity\", target_sparsity = 0.5, end_step = -7 }", "pruning.schedule.end_step: end_step can be -1 or >= 0"),
        ("end_step < begin_step", "{ kind = \"polynomial_decay\", initial_sparsity = 0.2, final_sparsity = 0.8, begin_step = 60, end_step = 50 }", "pruning.schedule.end_step: begin_step should be <= end_step"),
        ("constant end_step < begin_step", "{ kind = \"constant_sparsity\", target_sparsity = 0.5, begin_step = 60, end_step = 50 }", "pruning.schedule.end_step: begin_step should be <= end_step"),
        ("polynomial begin_step == end_step", "{ kind = \"polynomial_decay\", initial_sparsity = 0.2, final_sparsity = 0.8, begin_step = 50, end_step = 50 }", "pruning.schedule.end_step: end_step should be > begin_step"),
        ("frequency 0", "{ kind = \"polynomial_decay\", initial_sparsity = 0.2, final_sparsity = 0.8, begin_step = 0, end_step = 50, frequency = 0 }", "pruning.schedule.frequency: frequency should be > 0"),
        ("frequency < 0", "{ kind = \"constant_sparsity\", target_sparsity = 0.5, frequency = -10 }", "pruning.schedule.frequency: frequency should be > 0"),
        ("initial_sparsity < 0", "{ kind = \"polynomial_decay\", initial_sparsity = -0.1, final_sparsity = 0.8, begin_step = 0, end_step = 50 }", "pruning.schedule.initial_sparsity: initial_sparsity must be in range [0,1)"),
        ("initial_sparsity >= 1", "{ kind = \"polynomial_decay\", initial_sparsity = 1.0, final_sparsity = 0.8, begin_step = 0, end_step = 50 }", "pruning.schedule.initial_sparsity"),
        ("final_sparsity < 0", "{ kind = \"polynomial_decay\", initial_sparsity = 0.0, final_sparsity = -0.5, begin_step = 0, end_step = 50 }", "pruning.schedule.final_sparsity"),
        ("final_sparsity >= 1", "{ kind = \"polynomial_decay\", initial_sparsity = 0.2, final_sparsity = 1.5, begin_step = 0, end_step = 50 }", "pruning.schedule.final_sparsity"),
        ("final_sparsity NaN", "{ kind = \"polynomial_decay\", initial_sparsity = 0.2, final_sparsity = nan, begin_step = 0, end_step = 50 }", "pruning.schedule.final_sparsity"),
        ("target_sparsity < 0", "{ kind = \"constant_sparsity\", target_sparsity = -0.01 }", "pruning.schedule.target_sparsity: target_sparsity must be in range [0,1)"),
        ("target_sparsity >= 1", "{ kind = \"constant_sparsity\", target_sparsity = 1.0 }", "pruning.schedule.target_sparsity"),
        ("target_sparsity inf", "{ kind = \"constant_sparsity\", target_sparsity = inf }", "pruning.schedule.target_sparsity"),
        ("power inf", "{ kind = \"polynomial_decay\", initial_sparsity = 0.2, final_sparsity = 0.8, begin_step = 0, end_step = 50, power = inf }", "pruning.schedule.power"),
        ("power NaN", "{ kind = \"polynomial_decay\", initial_sparsity = 0.2, final_sparsity = 0.8, begin_step = 0, end_step = 50, power = nan }", "pruning.schedule.power"),
        ("power < 0", "{ kind = \"polynomial_decay\", initial_sparsity = 0.2, final_sparsity = 0.8, begin_step = 0, end_step = 50, power = -2 }", "pruning.schedule.power"),
        ("every error at once", "{ kind = \"polynomial_decay\", initial_sparsity = 2.0, final_sparsity = -1.0, begin_step = -3, end_step = -1, frequency = 0, power = nan }", "pruning.schedule.begin_step"),
        ("unknown kind", "{ kind = \"cosine_decay\", target_sparsity = 0.5 }", "pruning.schedule"),
        ("missing final_sparsity", "{ kind = \"polynomial_decay\", initial_sparsity = 0.2, begin_step = 0, end_step = 50 }", "pruning.schedule.final_sparsity"),
        ("a string for a number", "{ kind = \"constant_sparsity\", target_sparsity = \"half\" }", "pruning.schedule"),
        ("begin_step beyond i64", "{ kind = \"constant_sparsity\", target_sparsity = 0.5, begin_step = 99999999999999999999 }", ""),
        ("end_step near i64::MAX, begin_step 0", "{ kind = \"polynomial_decay\", initial_sparsity = 0.2, final_sparsity = 0.8, begin_step = 9223372036854775807, end_step = 9223372036854775807 }", "pruning.schedule.end_step"),
    ];
    for (name, schedule, field) in schedules {
        cases.push(case(format!("schedule: {name}"), Input::Text(with_schedule(schedule)), invalid(field)));
    }
    cases.push(case(
        "override schedule: end_step < begin_step",
        Input::Text(format!(
            "{BASE}[[pruning.overrides]]\nmatch = \"^0\\\\.weight$\"\nschedule = {{ kind = \"constant_sparsity\", target_sparsity = 0.5, begin_step = 9, end_step = 3 }}\n"
        )),
        invalid("pruning.overrides[0].schedule.end_step"),
    ));
    let mut proto = one_shot_proto(&state_dict);
    proto.pruning.as_mut().unwrap().schedule = Some(pb::Schedule {
        kind: "polynomial_decay".into(),
        initial_sparsity: Some(0.9),
        final_sparsity: Some(0.1),
        begin_step: Some(5),
        end_step: Some(5),
        frequency: Some(0),
        power: Some(f64::NAN),
        ..Default::default()
    });
    cases.push(case(
        "schedule (proto): several errors",
        Input::Spec(Box::new(proto)),
        invalid("pruning.schedule.end_step"),
    ));
    let mut proto = one_shot_proto(&state_dict);
    proto.pruning.as_mut().unwrap().schedule = None;
    cases.push(case("schedule (proto): missing", Input::Spec(Box::new(proto)), invalid("pruning.schedule")));

    // 5. Layer selection.
    let regexes: Vec<(&str, String, &str)> = vec![
        ("include: unclosed group", "include = [\"(\"]".into(), "pruning.include[0]: regex parse error"),
        ("exclude: bad range", "exclude = [\"[z-a]\"]".into(), "pruning.exclude[0]"),
        ("include: bad escape", "include = [\"ok\", \"\\\\q\"]".into(), "pruning.include[1]"),
        ("include: repetition of nothing", "include = [\"*weight\"]".into(), "pruning.include[0]"),
        ("include: over the size limit", "include = [\"(a{1000}){1000}\"]".into(), "pruning.include[0]"),
        (
            "include: nested too deep",
            format!("include = [\"{}{}\"]", "(".repeat(1000), ")".repeat(1000)),
            "pruning.include[0]",
        ),
        ("include: backreference", "include = [\"(a)\\\\1\"]".into(), "pruning.include[0]"),
    ];
    for (name, line, field) in regexes {
        cases.push(case(format!("regex: {name}"), Input::Text(format!("{BASE}{line}\n")), invalid(field)));
    }
    cases.push(case(
        "regex: override match unclosed",
        Input::Text(format!("{BASE}[[pruning.overrides]]\nmatch = \"0.weight(\"\nskip = true\n")),
        invalid("pruning.overrides[0].match"),
    ));
    cases.push(case(
        "regex: include matches nothing",
        Input::Text(format!("{BASE}include = [\"^no_such_layer$\"]\n")),
        fails("no parameter is selected"),
    ));

    // 5b. Channel pruning.
    let channel: Vec<(&str, &str, &str)> = vec![
        ("with m_by_n", "structure = \"channel\"\nm_by_n = [2, 4]", "pruning.m_by_n: pruning.structure = \"channel\""),
        (
            "with blocks",
            "structure = \"channel\"\nblock_size = [2, 2]",
            "pruning.block_size: pruning.structure = \"channel\"",
        ),
        (
            "unknown structure",
            "structure = \"filters\"",
            "pruning.structure: `filters` is not one of: element, channel",
        ),
        ("unknown score", "structure = \"channel\"\nchannel_score = \"l0\"", "pruning.channel_score"),
    ];
    for (name, lines, text) in channel {
        cases.push(case(format!("channels: {name}"), Input::Text(format!("{BASE}{lines}\n")), invalid(text)));
    }
    cases.push(case(
        "channels: slim without channel structure",
        Input::Text(format!("{BASE}[export]\nslim = true\n")),
        invalid("export.slim: a slim export cuts out removed channels"),
    ));
    cases.push(case(
        "channels: slim of a TorchScript model",
        Input::Text(format!("{}structure = \"channel\"\n[export]\nslim = true\n", one_shot_blob(&script_id))),
        invalid("export.slim: only a model.sequential"),
    ));
    cases.push(case(
        "channels: only the classifier selected",
        Input::Text(format!("{BASE}structure = \"channel\"\ninclude = [\"^2\\\\.weight$\"]\n")),
        fails("no channel can be pruned"),
    ));

    // 5c. Sensitivity analyses and budgets.
    let analyses: Vec<(&str, String, &str)> = vec![
        ("empty levels", format!("{BASE}[sensitivity]\nlevels = []\n"), "sensitivity.levels: must list at least one"),
        ("level 1.0", format!("{BASE}[sensitivity]\nlevels = [0.5, 1.0]\n"), "sensitivity.levels[1]: a level is a sparsity in (0, 1)"),
        ("negative level", format!("{BASE}[sensitivity]\nlevels = [-0.1]\n"), "sensitivity.levels[0]"),
        ("a level twice", format!("{BASE}[sensitivity]\nlevels = [0.5, 0.5]\n"), "sensitivity.levels[1]: 0.5 is listed twice"),
        ("levels of strings", format!("{BASE}[sensitivity]\nlevels = [\"high\"]\n"), "sensitivity.levels"),
        ("bad include", format!("{BASE}[sensitivity]\ninclude = [\"(\"]\n"), "sensitivity.include[0]"),
        ("unknown field", format!("{BASE}[sensitivity]\nlevel = [0.5]\n"), "level"),
        ("max_bytes 0", format!("{BASE}budget = {{ max_bytes = 0 }}\n"), "pruning.budget.max_bytes: must be >= 1"),
        ("empty budget", format!("{BASE}budget = {{}}\n"), "pruning.budget: give max_bytes, max_accuracy_drop or both"),
        ("drop 2", format!("{BASE}budget = {{ max_accuracy_drop = 2.0 }}\n"), "pruning.budget.max_accuracy_drop"),
        (
            "budget with an override's schedule",
            format!(
                "{BASE}budget = {{ max_bytes = 5000 }}\n[[pruning.overrides]]\nmatch = \"^0\\\\.weight$\"\nschedule = {{ kind = \"constant_sparsity\", target_sparsity = 0.3 }}\n"
            ),
            "pruning.overrides[0].schedule: contradicts pruning.budget",
        ),
        ("budget with m_by_n", format!("{BASE}budget = {{ max_bytes = 5000 }}\nm_by_n = [2, 4]\n"), "pruning.m_by_n"),
        ("budget with global scope", format!("{BASE}budget = {{ max_bytes = 5000 }}\nscope = \"global\"\n"), "pruning.scope"),
        (
            "budget without data",
            format!("{}budget = {{ max_bytes = 5000 }}\n", one_shot_blob(&state_dict)),
            "pruning.budget: measures validation accuracy and loss",
        ),
    ];
    for (name, text, field) in analyses {
        cases.push(case(format!("analysis: {name}"), Input::Text(text), invalid(field)));
    }
    cases.push(case(
        "analysis: a state dict has no forward pass",
        Input::Text(format!("{}[data]\nbuiltin = \"digits\"\n[sensitivity]\n", one_shot_blob(&state_dict))),
        fails("no forward pass"),
    ));
    cases.push(case(
        "analysis: a budget too small for any sparsity",
        Input::Text(base_with(&[("epochs = 1", "epochs = 0")]) + "budget = { max_bytes = 10 }\n"),
        fails("pruning.budget.max_bytes = 10 cannot be met: the smallest"),
    ));

    // 6. Unknown fields.
    let unknown: Vec<(&str, String, &str)> = vec![
        ("top level", format!("colour = \"blue\"\n{BASE}"), "colour"),
        ("in [model]", base_with(&[("[model]", "[model]\nsequentail = []")]), "model.sequentail"),
        ("in a layer", base_with(&[("out = 16 }", "out = 16, activation = \"relu\" }")]), "activation"),
        ("in [data]", base_with(&[("[data]", "[data]\nshuffle = true")]), "data.shuffle"),
        (
            "in the schedule",
            with_schedule("{ kind = \"constant_sparsity\", target_sparsity = 0.5, warmup = 3 }"),
            "warmup",
        ),
        ("unknown table", format!("{BASE}[logging]\nlevel = \"debug\"\n"), "logging"),
        ("in [export]", format!("{BASE}[export]\nquantize = true\n"), "export.quantize"),
        ("in an override", format!("{BASE}[[pruning.overrides]]\nmatch = \"x\"\nsparsity = 0.3\n"), "sparsity"),
        (
            "JSON top level",
            format!(
                r#"{{"model": {{"blob": "{state_dict}"}}, "pruning": {{"schedule": {{"kind": "constant_sparsity", "target_sparsity": 0.5}}}}, "extra": 1}}"#
            ),
            "extra",
        ),
        ("JSON trailing text", format!(r#"{{"model": {{"blob": "{state_dict}"}}, "pruning": {{}}}} trailing"#), ""),
        ("not TOML at all", "\u{0}\u{1}binary\u{7f}".into(), ""),
        ("duplicate key", base_with(&[("epochs = 1", "epochs = 1\nepochs = 2")]), "epochs"),
        ("empty document", String::new(), "model"),
    ];
    for (name, text, field) in unknown {
        cases.push(case(format!("unknown field: {name}"), Input::Text(text), invalid(field)));
    }

    // 7. Absurd sizes.
    let absurd: Vec<(&str, String, Expect)> = vec![
        ("epochs 10^12", base_with(&[("epochs = 1", "epochs = 1000000000000")]), invalid("training.epochs")),
        (
            "batch size 10^12",
            base_with(&[("batch_size = 32", "batch_size = 1000000000000")]),
            invalid("training.batch_size"),
        ),
        ("hidden size 10^9", base_with(&[("out = 16 }", "out = 1000000000 }")]), invalid("model.sequential[0]")),
        (
            "hidden size i64::MAX",
            base_with(&[("out = 16 }", "out = 9223372036854775807 }")]),
            invalid("model.sequential[0]"),
        ),
        (
            "conv kernel 10^6",
            base_with(&[("{ type = \"relu\" }", "{ type = \"conv2d\", in = 1, out = 1, kernel = 1000000 }")]),
            invalid("model.sequential[1]"),
        ),
        (
            "synthetic data of 10^15 elements",
            base_with(&[(
                "builtin = \"digits\"",
                "builtin = \"synthetic\"\nshape = [1000000, 1000]\nclasses = 10\nsamples = 1000000000",
            )]),
            invalid("data.samples"),
        ),
        (
            "synthetic classes 10^12",
            base_with(&[(
                "builtin = \"digits\"",
                "builtin = \"synthetic\"\nshape = [64]\nclasses = 1000000000000\nsamples = 10",
            )]),
            invalid("data.classes"),
        ),
        ("threads 10^6", base_with(&[("threads = 1", "threads = 1000000")]), invalid("training.threads")),
        (
            "checkpoint_every 0",
            base_with(&[("threads = 1", "threads = 1\ncheckpoint_every = 0")]),
            invalid("training.checkpoint_every"),
        ),
        (
            "learning rate inf",
            base_with(&[("threads = 1", "threads = 1\nlearning_rate = inf")]),
            invalid("training.learning_rate"),
        ),
        (
            "reshape to 10^12 x 10^12",
            base_with(&[("{ type = \"relu\" }", "{ type = \"reshape\", shape = [1000000000000, 1000000000000] }")]),
            fails("does not fit the model"),
        ),
        (
            "name of 1 MB",
            base_with(&[("name = \"base\"", &format!("name = \"{}\"", "n".repeat(1 << 19)))]),
            invalid("name: must be at most 256 characters"),
        ),
        ("regex of 600 kB", format!("{BASE}include = [\"{}\"]\n", "a".repeat(600_000)), invalid("pruning.include[0]")),
        (
            "spec text of 3 MB",
            format!("# {}\n{BASE}", "x".repeat(3 << 20)),
            rejected(Code::ResourceExhausted, "job spec of"),
        ),
        (
            "spec text of 6 MB (over the message limit)",
            format!("# {}\n{BASE}", "x".repeat(6 << 20)),
            rejected(Code::ResourceExhausted, "decoded message length too large"),
        ),
    ];
    for (name, text, expect) in absurd {
        cases.push(case(format!("absurd: {name}"), Input::Text(text), expect));
    }
    let mut proto = one_shot_proto(&state_dict);
    proto.pruning.as_mut().unwrap().include = vec!["x".repeat(2 << 20)];
    cases.push(case(
        "absurd (proto): 2 MB include regex",
        Input::Spec(Box::new(proto)),
        rejected(Code::ResourceExhausted, "job spec of"),
    ));
    let mut proto = one_shot_proto(&state_dict);
    proto.model.as_mut().unwrap().blob = None;
    proto.model.as_mut().unwrap().sequential =
        vec![pb::LayerSpec { r#type: "linear".into(), r#in: Some(1 << 20), out: Some(1 << 20), ..Default::default() }];
    cases.push(case(
        "absurd (proto): 2^40-element linear layer",
        Input::Spec(Box::new(proto)),
        invalid("model.sequential[0]"),
    ));

    // 8. Blob ids.
    let missing = format!("sha256:{}", "0".repeat(64));
    let ids: Vec<(&str, String)> = vec![
        ("63 hex digits", format!("sha256:{}", "a".repeat(63))),
        ("upper case", format!("sha256:{}", "A".repeat(64))),
        ("another algorithm", format!("md5:{}", "a".repeat(32))),
        ("empty", String::new()),
        ("a path", "sha256:../../../etc/passwd".into()),
        ("no prefix", "a".repeat(64)),
        ("non-ASCII", format!("sha256:{}é", "a".repeat(62))),
    ];
    for (name, id) in &ids {
        cases.push(case(format!("blob id: model.blob {name}"), Input::Text(one_shot_blob(id)), invalid("model.blob")));
        cases.push(case(format!("blob id: StatBlob {name}"), Input::StatBlob(id.clone()), invalid("not a blob id")));
        cases.push(case(format!("blob id: HasBlob {name}"), Input::HasBlob(id.clone()), invalid("not a blob id")));
    }
    cases.push(case(
        "blob id: model.blob not uploaded",
        Input::Text(one_shot_blob(&missing)),
        invalid("model.blob: blob sha256:000"),
    ));
    cases.push(case(
        "blob id: data.blob not uploaded",
        Input::Text(train_on_data(&missing, "")),
        invalid("data.blob: blob sha256:000"),
    ));
    cases.push(case(
        "blob id: data.blob malformed",
        Input::Text(train_on_data("sha256:xyz", "")),
        invalid("data.blob"),
    ));
    cases.push(case(
        "blob id: weights not uploaded",
        Input::Text(with_weights(&missing)),
        invalid("model.weights: blob sha256:000"),
    ));
    cases.push(case(
        "blob id: weights malformed",
        Input::Text(with_weights("sha256:nothex")),
        invalid("model.weights"),
    ));
    cases.push(case(
        "blob id: StatBlob not uploaded",
        Input::StatBlob(missing.clone()),
        rejected(Code::NotFound, "not found"),
    ));
    let header = |size: u64, sha256: &str| pb::BlobHeader { size, sha256: sha256.into(), offset: 0 };
    cases.push(case(
        "upload: malformed sha256",
        Input::Upload { header: header(3, "xyz"), data: b"abc".to_vec() },
        invalid("is not a sha256"),
    ));
    cases.push(case(
        "upload: more data than announced",
        Input::Upload { header: header(2, &sha256_hex(b"ab")), data: b"abc".to_vec() },
        rejected(Code::DataLoss, "larger than"),
    ));
    cases.push(case(
        "upload: less data than announced",
        Input::Upload { header: header(10, &sha256_hex(b"abc")), data: b"abc".to_vec() },
        rejected(Code::DataLoss, "ended after 3 of the 10 bytes"),
    ));
    cases.push(case(
        "upload: announces u64::MAX bytes",
        Input::Upload { header: header(u64::MAX, &sha256_hex(b"abc")), data: b"abc".to_vec() },
        rejected(Code::ResourceExhausted, "bytes"),
    ));
    cases
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

async fn submit(client: &mut Client, input: &Input) -> Result<Option<pb::Job>, tonic::Status> {
    use pb::upload_blob_request::Part;
    match input {
        Input::Text(text) => create_toml(client, text).await.map(Some),
        Input::Spec(spec) => client
            .create_job(pb::CreateJobRequest {
                source: Some(pb::create_job_request::Source::Spec(spec.as_ref().clone())),
                ..Default::default()
            })
            .await
            .map(|r| Some(r.into_inner())),
        Input::Upload { header, data } => {
            let messages = [
                pb::UploadBlobRequest { part: Some(Part::Header(header.clone())) },
                pb::UploadBlobRequest { part: Some(Part::Data(data.clone())) },
            ];
            client.upload_blob(tokio_stream::iter(messages)).await.map(|_| None)
        }
        Input::StatBlob(id) => client.stat_blob(pb::StatBlobRequest { id: id.clone() }).await.map(|_| None),
        Input::HasBlob(id) => client.has_blob(pb::HasBlobRequest { id: id.clone() }).await.map(|_| None),
    }
}

/// The largest messages go out through a client that may send them.
fn big_client(client: &Client) -> Client {
    client.clone().max_encoding_message_size(64 << 20).max_decoding_message_size(64 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_rejected_or_fail_cleanly_while_a_good_job_succeeds() {
    let started = Instant::now();
    let tmp = TempDir::new().unwrap();
    let server = Server::start(&tmp.path().join("data"), &["--workers", "2"]).await;
    let mut client = big_client(&server.client().await);

    // Inputs first (PyTorch makes the TorchScript, blobs are uploaded), then the good job,
    // running before any bad job is submitted.
    let cases = corpus(&mut client, tmp.path()).await;
    let good = create_toml(&mut client, &good_job()).await.expect("the good job is accepted");
    watch_until(&mut client, &good.id, GOOD_TIMEOUT, |job, progress| {
        assert!(!is_terminal(job), "the good job ended early: {job:?}");
        progress.is_some_and(|p| p.step > 0)
    })
    .await;

    let mut problems: Vec<String> = Vec::new();
    let mut submitted: Vec<(usize, pb::Job)> = Vec::new();
    let mut rejected_at_submit = 0;
    for (i, c) in cases.iter().enumerate() {
        match (submit(&mut client, &c.input).await, &c.expect) {
            (Err(status), Rejected { code, text }) => {
                rejected_at_submit += 1;
                if status.code() != *code || !status.message().contains(text) {
                    problems.push(format!("{}: expected {code:?} containing {text:?}, got {status}", c.name));
                }
                if status.message().contains('\n') {
                    problems.push(format!("{}: multi-line status message {:?}", c.name, status.message()));
                }
            }
            (Ok(Some(job)), Fails { .. }) => submitted.push((i, job)),
            (Err(status), Fails { reason }) => {
                rejected_at_submit += 1;
                problems
                    .push(format!("{}: expected a FAILED job ({reason:?}), was rejected at submit: {status}", c.name));
            }
            (Ok(Some(job)), Rejected { code, text }) => {
                problems
                    .push(format!("{}: expected {code:?} ({text:?}) at submit, was accepted as {}", c.name, job.id));
                submitted.push((i, job));
            }
            (Ok(None), expect) => problems.push(format!("{}: expected {expect:?}, the call succeeded", c.name)),
        }
    }
    let good_now = client.get_job(pb::GetJobRequest { id: good.id.clone() }).await.expect("GetJob").into_inner();
    assert!(!is_terminal(&good_now), "the good job ended before the corpus was in: {good_now:?}");
    eprintln!(
        "all {} bad inputs submitted after {:.1?}; good job at step {}/{}",
        cases.len(),
        started.elapsed(),
        good_now.step,
        good_now.total_steps
    );

    // Every accepted bad job ends, FAILED, with a one-line reason naming the problem.
    let deadline = Instant::now() + CORPUS_TIMEOUT;
    let mut failed_jobs = 0;
    for (i, job) in &submitted {
        let c = &cases[*i];
        let left = deadline.saturating_duration_since(Instant::now());
        let (done, _) = wait_terminal(&mut client, &job.id, left).await;
        let reason = done.error.as_str();
        match (&c.expect, state(&done)) {
            (Fails { reason: want }, pb::JobState::Failed) => {
                failed_jobs += 1;
                if reason.trim().is_empty() || reason.contains('\n') || !reason.contains(want) {
                    problems.push(format!("{}: FAILED with {reason:?}, expected one line containing {want:?}", c.name));
                }
                if reason.contains("gave up after") {
                    problems.push(format!("{}: the worker crashed instead of failing: {reason:?}", c.name));
                }
            }
            (expect, got) => {
                problems.push(format!("{}: expected {expect:?}, the job ended {got:?} {reason:?}", c.name))
            }
        }
        eprintln!("  {:<60} -> {:?}: {}", c.name, state(&done), reason);
    }
    let corpus_done = started.elapsed();
    let good_after = client.get_job(pb::GetJobRequest { id: good.id.clone() }).await.expect("GetJob").into_inner();
    eprintln!(
        "every bad job ended after {corpus_done:.1?}; good job {:?} at step {}/{}",
        state(&good_after),
        good_after.step,
        good_after.total_steps
    );

    // The good job carries on to the end.
    let (good_done, _) = wait_terminal(&mut client, &good.id, GOOD_TIMEOUT).await;
    assert_eq!(state(&good_done), pb::JobState::Succeeded, "the good job: {}", good_done.error);
    assert_eq!(good_done.attempts, 1, "the good job was restarted");

    // The server is alive and answers.
    assert!(process_alive(server.pid()), "prune-server died");
    for (_, job) in &submitted {
        let again = client.get_job(pb::GetJobRequest { id: job.id.clone() }).await.expect("GetJob").into_inner();
        assert!(is_terminal(&again), "{again:?}");
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_jobs(pb::ListJobsRequest { page_size: 20, page_token: token.clone(), ..Default::default() })
            .await
            .expect("ListJobs")
            .into_inner();
        listed.extend(page.jobs);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // Only the accepted jobs were queued: nothing rejected at submit left a job behind.
    assert_eq!(listed.len(), submitted.len() + 1, "ListJobs: {} jobs", listed.len());
    let failed_listed = client
        .list_jobs(pb::ListJobsRequest { state: pb::JobState::Failed.into(), page_size: 1000, ..Default::default() })
        .await
        .expect("ListJobs by state")
        .into_inner()
        .jobs;
    assert_eq!(failed_listed.len(), failed_jobs, "FAILED jobs listed");
    for job in &failed_listed {
        assert!(!job.error.is_empty() && !job.error.contains('\n'), "{}: {:?}", job.id, job.error);
    }
    // And still runs new work: a one-shot job on a good state dict.
    let ok = upload(&mut client, &mlp_state_dict()).await.expect("upload");
    let after = create_toml(&mut client, &one_shot_blob(&ok)).await.expect("a good job after the corpus");
    let (after, _) = wait_terminal(&mut client, &after.id, Duration::from_secs(60)).await;
    assert_eq!(state(&after), pb::JobState::Succeeded, "{}", after.error);
    assert!(process_alive(server.pid()), "prune-server died");

    eprintln!(
        "bad inputs tried: {} (rejected at submit: {rejected_at_submit}, failed jobs: {failed_jobs}) in {:.1?}",
        cases.len(),
        started.elapsed()
    );
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}
