//! CreateJob's checks: everything that can be wrong with a job is reported before anything is
//! queued, each problem as `field: reason`.

use std::io::Read;

use prune_core::validate::{self, FieldError, SpecErrors};
use prune_core::JobSpec;

use crate::api::auth::Tenant;
use crate::files::uploads::{BlobId, BlobStore};
use crate::jobs::ids::new_job_id;
use crate::storage::{now_ms, Db, JobRecord, NewJob, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("{}", joined(.0))]
    Spec(SpecErrors),
    /// The tenant's queue is full: RESOURCE_EXHAUSTED.
    #[error("{tenant} already has {max_queued} jobs QUEUED, the most this server queues per tenant: wait for some to start or cancel some")]
    QueueFull { tenant: String, max_queued: u32 },
    #[error(transparent)]
    Storage(#[from] StorageError),
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

/// Checks `spec` completely and queues it.
pub async fn admit(
    db: &Db,
    blobs: &BlobStore,
    defaults: Defaults,
    queue: Queue<'_>,
    spec: JobSpec,
) -> Result<JobRecord, AdmissionError> {
    let tenant = queue.tenant.as_str();
    let mut errors = client_side_paths(&spec);
    if let Err(SpecErrors(invalid)) = validate::validate(&spec) {
        errors.extend(invalid);
    }
    if errors.is_empty() {
        errors.extend(missing_blobs(db, tenant, &spec).await?);
    }
    if !errors.is_empty() {
        return Err(AdmissionError::Spec(SpecErrors(errors)));
    }
    let total_steps = total_steps(db, blobs, tenant, &spec).await;
    let warnings = validate::warnings(&spec, total_steps);
    let threads = if spec.training.threads > 0 { spec.training.threads as u32 } else { defaults.threads };
    let job = NewJob {
        id: new_job_id(),
        tenant: tenant.to_string(),
        name: spec.name.clone().unwrap_or_default(),
        spec_json: serde_json::to_string(&spec).expect("specs serialise"),
        warnings,
        max_attempts: defaults.max_attempts,
        threads,
        created_ms: now_ms(),
    };
    if !db.insert_job(&job, queue.max_queued).await? {
        return Err(AdmissionError::QueueFull { tenant: tenant.to_string(), max_queued: queue.max_queued });
    }
    let record = db.job(&job.id).await?;
    Ok(record.expect("the job was just inserted"))
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
        let job =
            admit(&db, &store(dir.path()), defaults, queue(&Tenant::new("t")), parse_text(MLP).unwrap()).await.unwrap();
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
