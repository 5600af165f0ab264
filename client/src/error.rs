//! The client's error type. Every variant displays as a reason a user can act on, on one line
//! (local spec errors excepted: one line per field), because `prunectl` prints it as is.

use std::error::Error as _;
use std::fmt::Write as _;
use std::path::PathBuf;

use prune_core::validate::SpecErrors;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },

    #[error("invalid token: {0}")]
    BadToken(String),

    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },

    /// A call the server answered with an error (or that the transport broke). Not marked as
    /// the error's source: the message already says everything useful, and `Status`'s own
    /// display (code, message, details) would repeat it.
    #[error("{}", describe_status(.0))]
    Rpc(Status),

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// The job file does not parse or validate: one `FILE: field: reason` line per problem.
    #[error("{}", spec_lines(path, errors))]
    Spec { path: PathBuf, errors: SpecErrors },

    /// The local files a job file names do not fit it (checked before anything is uploaded):
    /// one `field: reason` line per problem, the reason naming the path.
    #[error("{}", field_lines(.0))]
    LocalFiles(SpecErrors),

    /// A local file that is not what it must be (safetensors, bitmask, a CA certificate).
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },

    /// Downloaded bytes do not hash to what the server announced.
    #[error("{0}")]
    Integrity(String),

    /// The server broke the API contract (e.g. a download that does not start with its info).
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Rpc(status)
    }
}

impl ClientError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ClientError::Io { path: path.into(), source }
    }

    /// The gRPC status code, for callers that branch on it (e.g. `NotFound`).
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc(status) => Some(status.code()),
            _ => None,
        }
    }

    /// The server's `google.rpc.ErrorInfo.reason` (e.g. `SPEC_INVALID`, `QUEUE_FULL`), when it sent one.
    pub fn reason(&self) -> Option<String> {
        match self {
            ClientError::Rpc(status) => status.get_error_details().error_info().map(|i| i.reason.clone()),
            _ => None,
        }
    }

    /// A value of the server's `google.rpc.ErrorInfo.metadata` (e.g. `state` of a RUN_ENDED).
    pub fn error_metadata(&self, key: &str) -> Option<String> {
        match self {
            ClientError::Rpc(status) => {
                status.get_error_details().error_info().and_then(|i| i.metadata.get(key).cloned())
            }
            _ => None,
        }
    }

    /// How long the server asked to wait before retrying (`google.rpc.RetryInfo`).
    pub fn retry_delay(&self) -> Option<std::time::Duration> {
        match self {
            ClientError::Rpc(status) => status.get_error_details().retry_info().and_then(|r| r.retry_delay),
            _ => None,
        }
    }

    /// Whether retrying the same call later may succeed: the server is restarting or the
    /// connection broke. Statuses the server itself chose (not found, invalid, ...) are final.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Rpc(status) => match status.code() {
                Code::Unavailable | Code::Unknown | Code::Cancelled => true,
                // h2 maps a torn-down connection (GOAWAY, reset) to INTERNAL with the h2 error as
                // source; an INTERNAL sent by the server carries no source.
                Code::Internal => status.source().is_some(),
                _ => false,
            },
            ClientError::Connect { .. } => true,
            _ => false,
        }
    }
}

/// Turns a status into a one-line reason. Application errors (not found, invalid argument,
/// failed precondition) carry the server's own sentence, e.g. "job job-x not found"; transport
/// and auth errors get a prefix saying what kind of failure it is.
fn describe_status(status: &Status) -> String {
    let mut out = describe_message(status);
    // The structured details, where the message alone does not say them.
    let details = status.get_error_details();
    if let Some(quota) = details.quota_failure() {
        let subjects: Vec<&str> = quota.violations.iter().map(|v| v.subject.as_str()).collect();
        if !subjects.is_empty() {
            let _ = write!(out, " (limit: {})", subjects.join(", "));
        }
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        let _ = write!(out, " (retry after {:.1} s)", delay.as_secs_f64());
    }
    if let Some(info) = details.error_info() {
        let _ = write!(out, " [{}]", info.reason);
    }
    out
}

/// One line per field violation of an INVALID_ARGUMENT (`google.rpc.BadRequest`), for callers
/// that show them apart (the message already lists them on one line).
pub fn field_violations(error: &ClientError) -> Vec<(String, String)> {
    match error {
        ClientError::Rpc(status) => status
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| (v.field.clone(), v.description.clone())).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn describe_message(status: &Status) -> String {
    let msg = one_line(status.message());
    let prefix = match status.code() {
        Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists | Code::OutOfRange
            if !msg.is_empty() =>
        {
            return msg
        }
        Code::NotFound => "not found",
        Code::InvalidArgument => "invalid request",
        Code::FailedPrecondition => "not possible in the job's current state",
        // Only a missing token is helped by passing one; a refused one says so itself.
        Code::Unauthenticated if msg.starts_with("missing") => "unauthenticated (pass --token or set PRUNE_TOKEN)",
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission denied",
        Code::Unavailable => "server unavailable",
        Code::DeadlineExceeded => "timed out",
        Code::DataLoss => "data corrupted in transfer",
        Code::ResourceExhausted => "server out of resources",
        Code::Unimplemented => "the server does not implement this call",
        Code::Cancelled => "call cancelled",
        _ => "server error",
    };
    let mut out = String::from(prefix);
    if !msg.is_empty() {
        let _ = write!(out, ": {msg}");
    }
    // Transport errors say little at the top ("transport error"); their cause is the useful part.
    append_sources(&mut out, status.source());
    with_certificate_advice(out)
}

/// `text` with what to do in front where it is rustls refusing the server's certificate (its
/// own words, e.g. `invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))`, say what
/// is wrong only to those who know rustls).
fn with_certificate_advice(text: String) -> String {
    if !text.contains("invalid peer certificate") {
        return text;
    }
    let advice = if text.contains("CaUsedAsEndEntity") {
        "the server's TLS certificate is a CA certificate (what `openssl req -x509` makes with \
         OpenSSL 3), which TLS refuses as a server's own: give the server a certificate that a CA \
         signed (scripts/tls-certs.sh makes a CA and one) and trust that CA"
    } else if text.contains("UnknownIssuer") {
        "the server's TLS certificate is not signed by a CA this client trusts: pass the CA's \
         certificate (prunectl --ca-cert or PRUNE_CA_CERT; the Python package's `ca=`)"
    } else if text.contains("NotValidForName") {
        "the server's TLS certificate does not name the host of the address: connect by a name \
         or IP it lists, or issue it for this one"
    } else if text.contains("Expired") || text.contains("NotValidYet") {
        "the server's TLS certificate is outside its validity period: renew it (or check the clocks)"
    } else {
        return text;
    };
    format!("{advice} ({text})")
}

fn spec_lines(path: &std::path::Path, errors: &SpecErrors) -> String {
    errors
        .0
        .iter()
        .map(|e| {
            if e.field.is_empty() {
                format!("{}: {}", path.display(), e.reason)
            } else {
                format!("{}: {}: {}", path.display(), e.field, e.reason)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn field_lines(errors: &SpecErrors) -> String {
    errors.0.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect::<Vec<_>>().join("\n")
}

pub(crate) use prune_core::text::one_line;

/// The cause chain of a transport error as one line: tonic's own message is just
/// "transport error"; the useful part ("Connection refused") is in its sources.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = one_line(&err.to_string());
    append_sources(&mut out, err.source());
    with_certificate_advice(out)
}

/// Appends each cause in turn as `: cause`, skipping those already said.
fn append_sources(out: &mut String, mut source: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(err) = source {
        let text = one_line(&err.to_string());
        if !text.is_empty() && !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = err.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_keeps_the_servers_sentence() {
        let err = ClientError::from(Status::not_found("job job-x not found"));
        assert_eq!(err.to_string(), "job job-x not found");
        assert!(!err.is_transient());
    }

    #[test]
    fn unavailable_is_transient_and_prefixed() {
        let err = ClientError::from(Status::unavailable("shutting down"));
        assert_eq!(err.to_string(), "server unavailable: shutting down");
        assert!(err.is_transient());
    }

    #[test]
    fn server_internal_error_is_final() {
        assert!(!ClientError::from(Status::internal("boom")).is_transient());
    }

    #[test]
    fn refused_certificates_say_what_to_do() {
        let said = |reason: &str| {
            ClientError::from(Status::unavailable(format!("transport error: invalid peer certificate: {reason}")))
                .to_string()
        };
        let ca = said("Other(OtherError(CaUsedAsEndEntity))");
        assert!(ca.starts_with("the server's TLS certificate is a CA certificate"), "{ca}");
        assert!(
            ca.ends_with(
                "(server unavailable: transport error: invalid peer certificate: Other(OtherError(CaUsedAsEndEntity)))"
            ),
            "{ca}"
        );
        assert!(said("UnknownIssuer").contains("not signed by a CA this client trusts"));
        assert!(said("NotValidForNameContext { expected: DnsName(\"h\"), presented: [] }")
            .contains("does not name the host"));
        assert!(said("Expired").contains("validity period"));
        assert_eq!(said("BadSignature"), "server unavailable: transport error: invalid peer certificate: BadSignature");
        assert_eq!(ClientError::from(Status::unavailable("down")).to_string(), "server unavailable: down");
    }

    #[test]
    fn messages_are_one_line() {
        let err = ClientError::from(Status::invalid_argument("a: bad\nb: worse\n"));
        assert_eq!(err.to_string(), "a: bad; b: worse");
    }
}
