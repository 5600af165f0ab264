//! CreateJob's checks: everything that can be wrong with a job is reported before anything is
//! queued, each problem as `field: reason`.

use std::collections::BTreeMap;
use std::io::Read;

use prune_core::sharded::{self, ShardIndex};
use prune_core::validate::{self, FieldError, SpecErrors};
use prune_core::JobSpec;

use crate::api::auth::Tenant;
use crate::files::uploads::{BlobId, BlobStore};
use crate::jobs::ids::new_job_id;
use crate::storage::{now_ms, Db, JobRecord, NewJob, RequestKey, StorageError, Submitted};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("{}", joined(.0))]
    Spec(SpecErrors),
    /// The tenant's queue is full: RESOURCE_EXHAUSTED.
    #[error("{tenant} already has {max_queued} jobs QUEUED, the most this server queues per tenant: wait for some to start or cancel some")]
    QueueFull { tenant: String, max_queued: u32 },
    /// The request id named an earlier, different request: ALREADY_EXISTS.
    #[error("request_id was used before for a different request (job {job_id}): use a new request id per job")]
    RequestIdReused { job_id: String },
    /// A request field other than the spec (labels, request id, priority).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A CreateJob request, parsed: the spec and what comes with it.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub spec: JobSpec,
    pub request_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub validate_only: bool,
}

impl From<JobSpec> for Submission {
    fn from(spec: JobSpec) -> Self {
        Submission { spec, ..Submission::default() }
    }
}

/// What CreateJob did.
#[derive(Debug)]
pub enum Admitted {
    Queued(JobRecord),
    /// A retry of a request that already made this job.
    Existing(JobRecord),
    /// `validate_only`: the spec as it would run (every default filled in) and its warnings.
    Validated {
        spec: JobSpec,
        warnings: Vec<String>,
    },
}

impl Admitted {
    /// The job, unless only validated.
    pub fn record(&self) -> Option<&JobRecord> {
        match self {
            Admitted::Queued(r) | Admitted::Existing(r) => Some(r),
            Admitted::Validated { .. } => None,
        }
    }
}

const MAX_LABELS: usize = 64;
const MAX_REQUEST_ID: usize = 128;
const MAX_PRIORITY: i32 = 1000;

/// Labels as Kubernetes and GCP allow them (lowercase keys, short values), so that they can be
/// copied from one to the other.
pub(crate) fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), AdmissionError> {
    let invalid = |field: String, reason: &str| Err(AdmissionError::Invalid { field, reason: reason.to_string() });
    if labels.len() > MAX_LABELS {
        return invalid("labels".into(), "at most 64 labels");
    }
    for (key, value) in labels {
        let key_ok = (1..=63).contains(&key.len())
            && key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !key_ok {
            return invalid(
                format!("labels.{key}"),
                "keys are 1-63 characters: lowercase letters, digits, `-_./`, starting with a letter",
            );
        }
        let value_ok =
            value.len() <= 63 && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !value_ok {
            return invalid(format!("labels.{key}"), "values are at most 63 letters, digits, `-`, `_` or `.`");
        }
    }
    Ok(())
}

/// An idempotency key (AIP-155), when given.
pub(crate) fn check_request_id(request_id: Option<&str>) -> Result<(), AdmissionError> {
    if let Some(id) = request_id {
        let ok = !id.is_empty()
            && id.len() <= MAX_REQUEST_ID
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !ok {
            return Err(AdmissionError::Invalid {
                field: "request_id".into(),
                reason: format!("at most {MAX_REQUEST_ID} letters, digits, `-`, `_`, `.` or `:`"),
            });
        }
    }
    Ok(())
}

fn check_request(submission: &Submission) -> Result<(), AdmissionError> {
    check_request_id(submission.request_id.as_deref())?;
    if !(-MAX_PRIORITY..=MAX_PRIORITY).contains(&submission.priority) {
        return Err(AdmissionError::Invalid {
            field: "priority".into(),
            reason: format!("must be between -{MAX_PRIORITY} and {MAX_PRIORITY} (got {})", submission.priority),
        });
    }
    check_labels(&submission.labels)
}

/// What a request asked for, as a digest: a retry (same request id) must ask for the same.
fn fingerprint(spec_json: &str, submission: &Submission) -> String {
    let asked = serde_json::json!({ "spec": spec_json, "labels": submission.labels, "priority": submission.priority });
    hex::encode(Sha256::digest(asked.to_string().as_bytes()))
}

/// `field: reason; field: reason`: gRPC status messages are best kept to one line.
fn joined(errors: &SpecErrors) -> String {
    errors.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// What a job gets that is not in its spec.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub threads: u32,
    pub max_attempts: u32,
}

/// The job file as text: JSON when it starts with `{`, TOML otherwise.
pub fn parse_text(text: &str) -> Result<JobSpec, SpecErrors> {
    if text.trim_start().starts_with('{') {
        validate::parse_json(text)
    } else {
        validate::parse_toml(text)
    }
}

/// Whose queue a job joins, and how long that queue may be.
#[derive(Debug, Clone, Copy)]
pub struct Queue<'a> {
    pub tenant: &'a Tenant,
    pub max_queued: u32,
}

/// Checks the submission completely and queues it (or, for a retry, finds the job it made).
pub async fn admit(
    db: &Db,
    blobs: &BlobStore,
    defaults: Defaults,
    queue: Queue<'_>,
    submission: impl Into<Submission>,
) -> Result<Admitted, AdmissionError> {
    let submission = submission.into();
    let spec = &submission.spec;
    let tenant = queue.tenant.as_str();
    let mut errors = client_side_paths(spec);
    if let Err(SpecErrors(invalid)) = validate::validate(spec) {
        errors.extend(invalid);
    }
    if errors.is_empty() {
        errors.extend(missing_blobs(db, tenant, spec).await?);
    }
    if errors.is_empty() {
        errors.extend(index_problems(blobs, spec).await);
        errors.extend(config_problems(blobs, spec).await);
    }
    if !errors.is_empty() {
        return Err(AdmissionError::Spec(SpecErrors(errors)));
    }
    check_request(&submission)?;
    let total_steps = total_steps(db, blobs, tenant, spec).await;
    let warnings = validate::warnings(spec, total_steps);
    if submission.validate_only {
        return Ok(Admitted::Validated { spec: submission.spec, warnings });
    }
    let threads = if spec.training.threads > 0 { spec.training.threads as u32 } else { defaults.threads };
    // A job may ask for fewer attempts than the server allows, never more.
    let max_attempts = match u32::try_from(spec.training.max_attempts) {
        Ok(n) if n > 0 => n.min(defaults.max_attempts),
        _ => defaults.max_attempts,
    };
    let spec_json = serde_json::to_string(spec).expect("specs serialise");
    let request = submission.request_id.clone().map(|id| RequestKey { id, hash: fingerprint(&spec_json, &submission) });
    let job = NewJob {
        id: new_job_id(),
        tenant: tenant.to_string(),
        name: spec.name.clone().unwrap_or_default(),
        spec_json,
        warnings,
        max_attempts,
        threads,
        created_ms: now_ms(),
        request,
        priority: i64::from(submission.priority),
        labels: submission.labels.clone(),
    };
    let id = match db.submit_job(&job, queue.max_queued).await? {
        Submitted::Queued => job.id,
        Submitted::QueueFull => {
            return Err(AdmissionError::QueueFull { tenant: tenant.to_string(), max_queued: queue.max_queued })
        }
        Submitted::Existing(id) => {
            let record = db.job(&id).await?.expect("the job the request made exists");
            return Ok(Admitted::Existing(record));
        }
        Submitted::RequestIdReused(job_id) => return Err(AdmissionError::RequestIdReused { job_id }),
    };
    let record = db.job(&id).await?;
    Ok(Admitted::Queued(record.expect("the job was just inserted")))
}

/// `file` fields name paths on the client's machine; over gRPC the content must be uploaded.
fn client_side_paths(spec: &JobSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if spec.model.file.is_some() {
        errors.push(FieldError::new("model.file", "upload the file and pass model.blob"));
    }
    if spec.model.weights.as_deref().is_some_and(|w| !validate::is_blob_id(w)) {
        errors.push(FieldError::new("model.weights", "upload the file and pass its blob id (sha256:...)"));
    }
    if spec.data.as_ref().is_some_and(|d| d.file.is_some()) {
        errors.push(FieldError::new("data.file", "upload the file and pass data.blob"));
    }
    if spec.model.dir.is_some() {
        errors.push(FieldError::new(
            "model.dir",
            "upload the weights (model.blob, or model.index and model.shards: file name -> blob id) and the \
             directory's other files (model.files: file name -> blob id)",
        ));
    }
    let texts = [
        ("calibration.text", spec.calibration.as_ref().and_then(|c| c.text.as_deref())),
        ("calibration.tokens", spec.calibration.as_ref().and_then(|c| c.tokens.as_deref())),
        ("evaluation.text", spec.evaluation.as_ref().and_then(|e| e.text.as_deref())),
    ];
    for (field, value) in texts {
        if value.is_some_and(|v| !v.starts_with("sha256:")) {
            errors.push(FieldError::new(field, "upload the file and pass its blob id (sha256:...)"));
        }
    }
    errors
}

/// Largest `config.json` read at admission: far beyond any real model's.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A language model's `config.json` must name an architecture the engine implements, and a
/// calibration or evaluation text needs its `tokenizer.json`: refused at submission, naming the
/// file, rather than by the worker after the upload of the weights.
async fn config_problems(blobs: &BlobStore, spec: &JobSpec) -> Vec<FieldError> {
    let Some(files) = &spec.model.files else { return Vec::new() };
    let mut errors = Vec::new();
    let needs_tokenizer = [
        ("calibration.text", spec.calibration.as_ref().is_some_and(|c| c.text.is_some())),
        ("evaluation.text", spec.evaluation.is_some()),
    ];
    for (field, text) in needs_tokenizer {
        if text
            && files.contains_key(prune_core::spec::CONFIG_FILE)
            && !files.contains_key(prune_core::spec::TOKENIZER_FILE)
        {
            errors.push(FieldError::new(
                field,
                format!("text needs the model's {} in model.files", prune_core::spec::TOKENIZER_FILE),
            ));
        }
    }
    let Some(config) = files.get(prune_core::spec::CONFIG_FILE) else { return errors };
    let Ok(id) = BlobId::parse(config) else { return errors };
    let key = BlobStore::key(&id);
    let store = blobs.store().clone();
    let field = format!("model.files.{}", prune_core::spec::CONFIG_FILE);
    let read = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut bytes = Vec::new();
        let reader = store.open(&key, 0).map_err(|e| e.to_string())?;
        reader.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(format!("more than the {MAX_CONFIG_BYTES} bytes a config may have"));
        }
        let text = String::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
        prune_core::llm::LlmConfig::from_json(&text).map(drop).map_err(|e| e.to_string())
    })
    .await;
    match read {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => errors.push(FieldError::new(field, reason)),
        Err(e) => errors.push(FieldError::new(field, format!("cannot read it: {e}"))),
    }
    errors
}

/// A sharded model's index must name exactly the shards given: checked here from the index
/// alone (cheap), so that a missing or extra shard is refused at submission. Whether each
/// shard holds what the index says is for the worker, which reads their headers.
async fn index_problems(blobs: &BlobStore, spec: &JobSpec) -> Vec<FieldError> {
    let (Some(index), Some(shards)) = (&spec.model.index, &spec.model.shards) else { return Vec::new() };
    let Ok(id) = BlobId::parse(index) else { return Vec::new() };
    let key = BlobStore::key(&id);
    let store = blobs.store().clone();
    let read = tokio::task::spawn_blocking(move || -> Result<ShardIndex, String> {
        let mut bytes = Vec::new();
        let reader = store.open(&key, 0).map_err(|e| e.to_string())?;
        reader.take(sharded::MAX_INDEX_BYTES + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        if bytes.len() as u64 > sharded::MAX_INDEX_BYTES {
            return Err(format!("more than the {} bytes an index may have", sharded::MAX_INDEX_BYTES));
        }
        ShardIndex::parse(&bytes).map_err(|e| e.to_string())
    })
    .await;
    let index = match read {
        Ok(Ok(index)) => index,
        Ok(Err(reason)) => return vec![FieldError::new("model.index", reason)],
        Err(e) => return vec![FieldError::new("model.index", format!("cannot read the index: {e}"))],
    };
    let named = index.shards();
    let mut errors: Vec<FieldError> = named
        .iter()
        .filter(|name| !shards.contains_key(**name))
        .map(|name| FieldError::new("model.shards", format!("the index names shard `{name}`, which is not given")))
        .collect();
    errors.extend(
        shards
            .keys()
            .filter(|name| !named.contains(&name.as_str()))
            .map(|name| FieldError::new(format!("model.shards.{name}"), "not named by the index")),
    );
    errors
}

/// Blobs the tenant has not uploaded (another tenant's count as missing).
async fn missing_blobs(db: &Db, tenant: &str, spec: &JobSpec) -> Result<Vec<FieldError>, StorageError> {
    let mut errors = Vec::new();
    for (field, id) in spec.blob_refs() {
        if db.tenant_blob(tenant, id).await?.is_none() {
            errors.push(FieldError::new(field, format!("blob {id} not found: upload it first")));
        }
    }
    Ok(errors)
}

/// Training steps of the whole job when the data set's size is known without loading it.
async fn total_steps(db: &Db, blobs: &BlobStore, tenant: &str, spec: &JobSpec) -> Option<i64> {
    let t = &spec.training;
    if t.epochs == 0 {
        return Some(0);
    }
    let data = spec.data.as_ref()?;
    let samples = match (data.builtin.as_deref(), data.blob.as_deref()) {
        (Some("digits"), _) => prune_core::datasets::DIGITS_SAMPLES,
        (Some("synthetic"), _) => data.samples?,
        (None, Some(id)) => {
            let key = BlobStore::key(&BlobId::parse(id).ok()?);
            db.tenant_blob(tenant, id).await.ok()??;
            let store = blobs.store().clone();
            tokio::task::spawn_blocking(move || {
                let mut reader = store.open(&key, 0).map_err(|e| e.to_string())?;
                safetensors_first_dim(&mut reader, "x")
            })
            .await
            .ok()?
            .ok()?
        }
        _ => return None,
    };
    // Keras' split, as the engine does it: the last fraction is held out.
    let train = ((samples as f64) * (1.0 - data.validation_split)).floor() as i64;
    Some(t.epochs * validate::steps_per_epoch(train, t.batch_size))
}

/// Largest safetensors header read: far beyond any real data file's.
const MAX_HEADER: u64 = 100 << 20;

/// The first dimension of tensor `name`, from the file's header alone.
fn safetensors_first_dim(file: &mut dyn Read, name: &str) -> Result<i64, String> {
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(format!("safetensors header of {len} bytes"));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| e.to_string())?;
    header
        .get(name)
        .and_then(|t| t.get("shape"))
        .and_then(|s| s.get(0))
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| format!("no tensor `{name}` with a shape"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_support::db;
    use crate::storage::BlobRecord;

    const MLP: &str = r#"
[model]
sequential = [{ type = "linear", in = 64, out = 10 }]
[data]
builtin = "digits"
validation_split = 0.1
[training]
epochs = 2
batch_size = 32
[pruning]
schedule = { kind = "polynomial_decay", initial_sparsity = 0.0, final_sparsity = 0.5, begin_step = 0, end_step = 1000, frequency = 10 }
"#;

    fn fields(e: AdmissionError) -> Vec<String> {
        match e {
            AdmissionError::Spec(errors) => errors.0.into_iter().map(|e| e.field).collect(),
            other => panic!("{other}"),
        }
    }

    fn queue(tenant: &Tenant) -> Queue<'_> {
        Queue { tenant, max_queued: 100 }
    }

    fn store(dir: &std::path::Path) -> BlobStore {
        BlobStore::new(std::sync::Arc::new(prune_store::LocalStore::new(dir.to_path_buf())), dir.to_path_buf())
    }

    #[tokio::test]
    async fn admits_with_warnings_from_the_data_size() {
        let (db, dir) = db().await;
        let defaults = Defaults { threads: 3, max_attempts: 2 };
        let admitted =
            admit(&db, &store(dir.path()), defaults, queue(&Tenant::new("t")), parse_text(MLP).unwrap()).await.unwrap();
        let Admitted::Queued(job) = admitted else { panic!("{admitted:?}") };
        // 1617 training samples / 32 = 51 steps per epoch, 102 in all: end_step 1000 is never reached.
        assert!(job.warnings.iter().any(|w| w.contains("102 training steps")), "{:?}", job.warnings);
        assert_eq!((job.threads, job.max_attempts), (3, 2));
    }

    #[tokio::test]
    async fn rejects_client_paths_and_unknown_blobs_by_field() {
        let (db, dir) = db().await;
        let defaults = Defaults { threads: 1, max_attempts: 3 };
        let mut spec = parse_text(MLP).unwrap();
        spec.model.sequential = None;
        spec.model.file = Some("model.pt".into());
        let e = admit(&db, &store(dir.path()), defaults, queue(&Tenant::new("t")), spec.clone()).await.unwrap_err();
        assert!(e.to_string().contains("model.file: upload the file and pass model.blob"), "{e}");
        spec.model.file = None;
        spec.model.blob = Some(format!("sha256:{}", "a".repeat(64)));
        assert_eq!(
            fields(admit(&db, &store(dir.path()), defaults, queue(&Tenant::new("t")), spec).await.unwrap_err()),
            ["model.blob"]
        );
    }

    /// A language model's companion files and texts are blobs like its weights: each one the
    /// tenant has not uploaded is refused by its own field path.
    #[tokio::test]
    async fn language_model_files_and_texts_must_be_uploaded() {
        let (db, dir) = db().await;
        let defaults = Defaults { threads: 1, max_attempts: 3 };
        let id = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let toml = format!(
            r#"
[model]
blob = "{weights}"
files = {{ "config.json" = "{config}", "tokenizer.json" = "{tokenizer}" }}
[training]
epochs = 0
[pruning]
schedule = {{ kind = "constant_sparsity", target_sparsity = 0.5 }}
method = "wanda"
[calibration]
text = "{calibration}"
[evaluation]
text = "{evaluation}"
"#,
            weights = id('a'),
            config = id('b'),
            tokenizer = id('c'),
            calibration = id('d'),
            evaluation = id('e'),
        );
        let spec = parse_text(&toml).unwrap();
        let upload = |c: char| {
            let db = db.clone();
            async move {
                let blob = BlobRecord { id: id(c), size: 1, path: format!("blobs/{c}") };
                db.insert_blob("t", &blob).await.unwrap();
            }
        };
        upload('a').await;
        upload('b').await;
        let only = |spec: &JobSpec| Submission { spec: spec.clone(), validate_only: true, ..Submission::default() };
        let e = admit(&db, &store(dir.path()), defaults, queue(&Tenant::new("t")), only(&spec)).await.unwrap_err();
        assert_eq!(fields(e), ["calibration.text", "evaluation.text", "model.files.tokenizer.json"]);
        for c in ['c', 'd', 'e'] {
            upload(c).await;
        }
        // The config is read: an architecture the engine lacks is refused naming the file.
        let config = |architecture: &str| {
            let text = format!(
                r#"{{"architectures": ["{architecture}"], "hidden_size": 64, "intermediate_size": 96,
                    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 320}}"#
            );
            let path = dir.path().join("blobs").join("b".repeat(64));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        config("GPT2LMHeadModel");
        let e = admit(&db, &store(dir.path()), defaults, queue(&Tenant::new("t")), only(&spec)).await.unwrap_err();
        assert!(e.to_string().contains("model.files.config.json") && e.to_string().contains("GPT2LMHeadModel"), "{e}");
        config("LlamaForCausalLM");
        let admitted = admit(&db, &store(dir.path()), defaults, queue(&Tenant::new("t")), only(&spec)).await.unwrap();
        assert!(matches!(admitted, Admitted::Validated { .. }), "{admitted:?}");
        // Another tenant's uploads do not count.
        let e = admit(&db, &store(dir.path()), defaults, queue(&Tenant::new("u")), only(&spec)).await.unwrap_err();
        assert_eq!(fields(e).len(), 5);
    }

    #[tokio::test]
    async fn a_full_queue_is_its_own_error() {
        let (db, dir) = db().await;
        let defaults = Defaults { threads: 1, max_attempts: 3 };
        let alice = Tenant::new("alice");
        let one = Queue { tenant: &alice, max_queued: 1 };
        admit(&db, &store(dir.path()), defaults, one, parse_text(MLP).unwrap()).await.unwrap();
        let e = admit(&db, &store(dir.path()), defaults, one, parse_text(MLP).unwrap()).await.unwrap_err();
        assert!(matches!(e, AdmissionError::QueueFull { max_queued: 1, .. }), "{e}");
        assert!(e.to_string().starts_with("alice already has 1 jobs QUEUED"), "{e}");
    }

    #[tokio::test]
    async fn a_request_id_makes_one_job_and_names_a_different_request() {
        let (db, dir) = db().await;
        let defaults = Defaults { threads: 1, max_attempts: 3 };
        let alice = Tenant::new("alice");
        let submission = |name: &str| {
            let mut spec = parse_text(MLP).unwrap();
            spec.name = Some(name.into());
            spec.training.max_attempts = 9;
            Submission {
                spec,
                request_id: Some("req-1".into()),
                labels: [("team".to_string(), "vision".to_string())].into(),
                ..Submission::default()
            }
        };
        let first = admit(&db, &store(dir.path()), defaults, queue(&alice), submission("a")).await.unwrap();
        let Admitted::Queued(job) = first else { panic!("{first:?}") };
        assert_eq!(job.max_attempts, 3, "capped at the server's");
        assert_eq!(job.labels["team"], "vision");
        let again = admit(&db, &store(dir.path()), defaults, queue(&alice), submission("a")).await.unwrap();
        assert!(matches!(&again, Admitted::Existing(r) if r.id == job.id), "{again:?}");
        let other = admit(&db, &store(dir.path()), defaults, queue(&alice), submission("b")).await.unwrap_err();
        assert!(matches!(&other, AdmissionError::RequestIdReused { job_id } if *job_id == job.id), "{other}");
        // Another tenant's request ids are its own.
        let bob = Tenant::new("bob");
        assert!(matches!(
            admit(&db, &store(dir.path()), defaults, queue(&bob), submission("b")).await,
            Ok(Admitted::Queued(_))
        ));
        let mut bad = submission("c");
        bad.labels.insert("Team".into(), "x".into());
        bad.request_id = Some("req-2".into());
        let e = admit(&db, &store(dir.path()), defaults, queue(&alice), bad).await.unwrap_err();
        assert!(matches!(&e, AdmissionError::Invalid { field, .. } if field == "labels.Team"), "{e}");
        let only = Submission { validate_only: true, ..submission("d") };
        let validated = admit(&db, &store(dir.path()), defaults, queue(&alice), only).await.unwrap();
        assert!(matches!(validated, Admitted::Validated { .. }));
    }

    #[test]
    fn reads_the_first_dimension_from_the_header() {
        let header = br#"{"x":{"dtype":"F32","shape":[5,2],"data_offsets":[0,40]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 40]);
        assert_eq!(safetensors_first_dim(&mut bytes.as_slice(), "x"), Ok(5));
        assert!(safetensors_first_dim(&mut bytes.as_slice(), "y").is_err());
        assert_eq!(parse_text("{\"model\": {}}").unwrap_err().0[0].field, "pruning");
    }
}
