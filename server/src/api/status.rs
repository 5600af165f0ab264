//! Every error the API returns, with machine-readable details (AIP-193): a stable `reason` in
//! `google.rpc.ErrorInfo` on every status, one `google.rpc.BadRequest` field violation per
//! problem of an invalid spec, `google.rpc.QuotaFailure` on RESOURCE_EXHAUSTED and
//! `google.rpc.RetryInfo` on UNAVAILABLE. The message text is what it always was; clients that
//! only read messages see no change.

use std::collections::HashMap;
use std::time::Duration;

use prune_core::validate::FieldError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error.
pub const DOMAIN: &str = "prune.pruning.v1";

/// `ErrorInfo.reason`: stable, UPPER_SNAKE_CASE, documented in docs/api.md. Never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The job spec is invalid (with `BadRequest` field violations).
    SpecInvalid,
    SpecTooLarge,
    /// Another argument of the request is invalid (with a `BadRequest` field violation).
    ArgumentInvalid,
    FilterInvalid,
    PageTokenInvalid,
    QueueFull,
    UploadTooLarge,
    MessageTooLarge,
    /// The upload's bytes do not match its header (size or sha256).
    UploadCorrupt,
    UploadResumeBeyond,
    UploadBusy,
    /// An upload begun without its sha256 can resume a kept partial upload of that blob instead.
    UploadResumable,
    BlobNotFound,
    JobNotFound,
    /// The job has not SUCCEEDED yet (reports, artifacts): it is QUEUED or RUNNING.
    JobNotFinished,
    /// The job ended FAILED or CANCELLED: it has no report and no artifacts, and never will.
    JobHasNoResults,
    /// The job is QUEUED or RUNNING (delete).
    JobActive,
    FormatNotExported,
    /// DownloadArtifact names a file the export does not have.
    ArtifactFileNotFound,
    OffsetOutOfRange,
    ArtifactUnreadable,
    RequestIdReused,
    /// StartTrackedRun re-attaching a run that finished, is being exported or was cancelled.
    RunFinished,
    /// A tracked run's session was superseded by a re-attach.
    RunSuperseded,
    /// A tracked run takes no more reports (metadata `state`).
    RunEnded,
    Unauthenticated,
    ShuttingDown,
    Internal,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SpecInvalid => "SPEC_INVALID",
            Reason::SpecTooLarge => "SPEC_TOO_LARGE",
            Reason::ArgumentInvalid => "ARGUMENT_INVALID",
            Reason::FilterInvalid => "FILTER_INVALID",
            Reason::PageTokenInvalid => "PAGE_TOKEN_INVALID",
            Reason::QueueFull => "QUEUE_FULL",
            Reason::UploadTooLarge => "UPLOAD_TOO_LARGE",
            Reason::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Reason::UploadCorrupt => "UPLOAD_CORRUPT",
            Reason::UploadResumeBeyond => "UPLOAD_RESUME_BEYOND",
            Reason::UploadBusy => "UPLOAD_BUSY",
            Reason::UploadResumable => "UPLOAD_RESUMABLE",
            Reason::BlobNotFound => "BLOB_NOT_FOUND",
            Reason::JobNotFound => "JOB_NOT_FOUND",
            Reason::JobNotFinished => "JOB_NOT_FINISHED",
            Reason::JobHasNoResults => "JOB_HAS_NO_RESULTS",
            Reason::JobActive => "JOB_ACTIVE",
            Reason::FormatNotExported => "FORMAT_NOT_EXPORTED",
            Reason::ArtifactFileNotFound => "ARTIFACT_FILE_NOT_FOUND",
            Reason::OffsetOutOfRange => "OFFSET_OUT_OF_RANGE",
            Reason::ArtifactUnreadable => "ARTIFACT_UNREADABLE",
            Reason::RequestIdReused => "REQUEST_ID_REUSED",
            Reason::RunFinished => "RUN_FINISHED",
            Reason::RunSuperseded => "RUN_SUPERSEDED",
            Reason::RunEnded => "RUN_ENDED",
            Reason::Unauthenticated => "UNAUTHENTICATED",
            Reason::ShuttingDown => "SHUTTING_DOWN",
            Reason::Internal => "INTERNAL",
        }
    }
}

/// A status with `ErrorInfo { reason, domain }` and whatever else `more` adds.
pub fn detailed(
    code: Code,
    reason: Reason,
    message: impl Into<String>,
    more: impl FnOnce(&mut ErrorDetails),
) -> Status {
    detailed_with(code, reason, message, HashMap::new(), more)
}

/// [`detailed`] with `ErrorInfo.metadata` (e.g. the job id).
pub fn detailed_with(
    code: Code,
    reason: Reason,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
    more: impl FnOnce(&mut ErrorDetails),
) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason.as_str(), DOMAIN, metadata);
    more(&mut details);
    Status::with_error_details(code, message, details)
}

/// FAILED_PRECONDITION for a report or artifact of a job that has none: not yet (QUEUED,
/// RUNNING: `JOB_NOT_FINISHED`) or never (FAILED, CANCELLED: `JOB_HAS_NO_RESULTS`).
pub fn no_results(id: &str, state: prune_core::domain::JobState, what: &str) -> Status {
    if state.is_terminal() {
        let message = format!("job {id} was {state}: it has no {what} (only a SUCCEEDED job has)");
        error(Code::FailedPrecondition, Reason::JobHasNoResults, message)
    } else {
        let message = format!("job {id} is {state}: its {what} exist once it has SUCCEEDED");
        error(Code::FailedPrecondition, Reason::JobNotFinished, message)
    }
}

/// A status with only `ErrorInfo`.
pub fn error(code: Code, reason: Reason, message: impl Into<String>) -> Status {
    detailed(code, reason, message, |_| {})
}

/// INVALID_ARGUMENT for one bad request field (`field` as the request names it).
pub fn invalid_argument(reason: Reason, field: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    let description = message.clone();
    detailed(Code::InvalidArgument, reason, message, |d| {
        d.add_bad_request_violation(field, description);
    })
}

/// INVALID_ARGUMENT for a job spec: the one-line message lists every problem; `BadRequest`
/// has one field violation per problem, `field` being the spec path.
pub fn spec_invalid(message: impl Into<String>, errors: &[FieldError]) -> Status {
    detailed(Code::InvalidArgument, Reason::SpecInvalid, message, |d| {
        for e in errors {
            d.add_bad_request_violation(e.field.clone(), e.reason.clone());
        }
    })
}

/// RESOURCE_EXHAUSTED with a `QuotaFailure` violation of `subject` (what is limited: the
/// tenant's queue, the upload size).
pub fn quota(reason: Reason, message: impl Into<String>, subject: impl Into<String>) -> Status {
    let message = message.into();
    let description = message.clone();
    detailed(Code::ResourceExhausted, reason, message, |d| {
        d.add_quota_failure_violation(subject, description);
    })
}

/// UNAVAILABLE with `RetryInfo`: try again after `retry`.
pub fn unavailable(reason: Reason, message: impl Into<String>, retry: Duration) -> Status {
    detailed(Code::Unavailable, reason, message, |d| {
        d.set_retry_info(Some(retry));
    })
}

/// INTERNAL, logged here where the detail is.
pub fn internal(message: impl Into<String>) -> Status {
    let message = message.into();
    tracing::error!("{message}");
    error(Code::Internal, Reason::Internal, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_travel_with_the_status() {
        let errors = [
            FieldError::new("pruning.schedule.final_sparsity", "must be in [0, 1)"),
            FieldError::new("name", "too long"),
        ];
        let status = spec_invalid("a; b", &errors);
        assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "a; b"));
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("SPEC_INVALID", DOMAIN));
        let fields: Vec<&str> =
            details.bad_request().expect("BadRequest").field_violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["pruning.schedule.final_sparsity", "name"]);

        let full = quota(Reason::QueueFull, "alice has 10 QUEUED", "tenant:alice");
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert_eq!(full.get_error_details().quota_failure().unwrap().violations[0].subject, "tenant:alice");
        let down = unavailable(Reason::ShuttingDown, "later", Duration::from_secs(1));
        assert_eq!(down.get_error_details().retry_info().unwrap().retry_delay, Some(Duration::from_secs(1)));
        assert_eq!(
            error(Code::NotFound, Reason::JobNotFound, "x").get_error_details().error_info().unwrap().reason,
            "JOB_NOT_FOUND"
        );
    }
}
