//! Library errors -> gRPC statuses with details ([`crate::api::status`]), in one place.

use tonic::{Code, Status};

use crate::api::status::{self, Reason};
use crate::files::uploads::BlobError;
use crate::jobs::admission::AdmissionError;
use crate::jobs::tracked::TrackedError;
use crate::storage::StorageError;

/// Server-side failures are logged (by `status::internal`), where their detail is; the client
/// gets the message.
impl From<StorageError> for Status {
    fn from(e: StorageError) -> Self {
        status::internal(e.to_string())
    }
}

impl From<BlobError> for Status {
    fn from(e: BlobError) -> Self {
        let message = e.to_string();
        match e {
            BlobError::InvalidId(_) => status::invalid_argument(Reason::ArgumentInvalid, "id", message),
            BlobError::InvalidChecksum(_) => {
                status::invalid_argument(Reason::ArgumentInvalid, "header.sha256", message)
            }
            BlobError::OffsetBeyondSize { .. } => {
                status::invalid_argument(Reason::ArgumentInvalid, "header.offset", message)
            }
            BlobError::ResumeBeyond { .. } => {
                status::error(Code::FailedPrecondition, Reason::UploadResumeBeyond, message)
            }
            BlobError::NoChecksum | BlobError::ChecksumTwice => {
                status::invalid_argument(Reason::ArgumentInvalid, "checksum", message)
            }
            BlobError::Busy => status::error(Code::Aborted, Reason::UploadBusy, message),
            BlobError::TooLarge { .. } | BlobError::Truncated { .. } | BlobError::ChecksumMismatch { .. } => {
                status::error(Code::DataLoss, Reason::UploadCorrupt, message)
            }
            BlobError::Io(_) | BlobError::Store(_) => status::internal(message),
        }
    }
}

impl From<AdmissionError> for Status {
    fn from(e: AdmissionError) -> Self {
        let message = e.to_string();
        match e {
            AdmissionError::Spec(errors) => status::spec_invalid(message, &errors.0),
            AdmissionError::QueueFull { tenant, .. } => {
                status::quota(Reason::QueueFull, message, format!("tenant:{tenant}"))
            }
            AdmissionError::RequestIdReused { job_id } => {
                let metadata = [("job_id".to_string(), job_id)].into();
                status::detailed_with(Code::AlreadyExists, Reason::RequestIdReused, message, metadata, |_| {})
            }
            AdmissionError::Invalid { field, .. } => status::invalid_argument(Reason::ArgumentInvalid, &field, message),
            AdmissionError::Storage(e) => e.into(),
        }
    }
}

impl From<TrackedError> for Status {
    fn from(e: TrackedError) -> Self {
        let message = e.to_string();
        let job = |id: &str| ("job_id".to_string(), id.to_string());
        match e {
            TrackedError::Admission(e) => e.into(),
            TrackedError::Invalid { field, .. } => status::invalid_argument(Reason::ArgumentInvalid, &field, message),
            TrackedError::Finished { job_id, state } => {
                let metadata = [job(&job_id), ("state".to_string(), state.to_string())].into();
                status::detailed_with(Code::FailedPrecondition, Reason::RunFinished, message, metadata, |_| {})
            }
            TrackedError::Superseded { job_id, current, .. } => {
                let metadata = [job(&job_id), ("session".to_string(), current.to_string())].into();
                status::detailed_with(Code::FailedPrecondition, Reason::RunSuperseded, message, metadata, |_| {})
            }
            TrackedError::Ended { job_id, state } => {
                let metadata = [job(&job_id), ("state".to_string(), state.to_string())].into();
                status::detailed_with(Code::FailedPrecondition, Reason::RunEnded, message, metadata, |_| {})
            }
            TrackedError::NotFound(id) => job_not_found(&id),
            TrackedError::Storage(e) => e.into(),
        }
    }
}

pub fn job_not_found(id: &str) -> Status {
    let metadata = [("job_id".to_string(), id.to_string())].into();
    status::detailed_with(Code::NotFound, Reason::JobNotFound, format!("job {id} not found"), metadata, |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[test]
    fn codes() {
        let mismatch = BlobError::ChecksumMismatch { expected: "a".into(), got: "b".into() };
        assert_eq!(Status::from(mismatch).code(), Code::DataLoss);
        assert_eq!(Status::from(BlobError::InvalidId("x".into())).code(), Code::InvalidArgument);
        let missing = job_not_found("job-1");
        assert_eq!(missing.code(), Code::NotFound);
        assert_eq!(missing.get_error_details().error_info().unwrap().metadata["job_id"], "job-1");
    }
}
