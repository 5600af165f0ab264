//! Library errors -> gRPC status codes, in one place.

use tonic::Status;

use crate::files::uploads::BlobError;
use crate::jobs::admission::AdmissionError;
use crate::storage::StorageError;

/// Server-side failures are logged here, where their detail is; the client gets the message.
impl From<StorageError> for Status {
    fn from(e: StorageError) -> Self {
        tracing::error!("{e}");
        Status::internal(e.to_string())
    }
}

impl From<BlobError> for Status {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::InvalidId(_) | BlobError::InvalidChecksum(_) | BlobError::OffsetBeyondSize { .. } => {
                Status::invalid_argument(e.to_string())
            }
            BlobError::ResumeBeyond { .. } => Status::failed_precondition(e.to_string()),
            BlobError::Busy => Status::aborted(e.to_string()),
            BlobError::TooLarge { .. } | BlobError::Truncated { .. } | BlobError::ChecksumMismatch { .. } => {
                Status::data_loss(e.to_string())
            }
            BlobError::Io(_) | BlobError::Store(_) => {
                tracing::error!("{e}");
                Status::internal(e.to_string())
            }
        }
    }
}

impl From<AdmissionError> for Status {
    fn from(e: AdmissionError) -> Self {
        match e {
            AdmissionError::Spec(_) => Status::invalid_argument(e.to_string()),
            AdmissionError::QueueFull { .. } => Status::resource_exhausted(e.to_string()),
            AdmissionError::Storage(e) => e.into(),
        }
    }
}

pub fn job_not_found(id: &str) -> Status {
    Status::not_found(format!("job {id} not found"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn codes() {
        let mismatch = BlobError::ChecksumMismatch { expected: "a".into(), got: "b".into() };
        assert_eq!(Status::from(mismatch).code(), Code::DataLoss);
        assert_eq!(Status::from(BlobError::InvalidId("x".into())).code(), Code::InvalidArgument);
        assert_eq!(job_not_found("job-1").code(), Code::NotFound);
    }
}
