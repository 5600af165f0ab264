//! gRPC's status for a request message over the size limit is RESOURCE_EXHAUSTED; tonic answers
//! OUT_OF_RANGE. This response mapper rewrites exactly that status, so every client (grpcio,
//! grpc-go, ...) sees the code the gRPC spec gives for it.

use tonic::codegen::http::Response;

use crate::api::status::{self, Reason};

/// tonic's message for an oversized message, as it appears (percent-encoded) in `grpc-message`.
const TOO_LARGE: &str = "message%20length%20too%20large";

pub fn resource_exhausted_for_oversized<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
    let oversized = headers.get("grpc-message").and_then(|m| m.to_str().ok()).is_some_and(|m| m.contains(TOO_LARGE));
    if out_of_range && oversized {
        let message = headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .map(percent_decoded)
            .unwrap_or_else(|| "message length too large".to_string());
        let status = status::quota(Reason::MessageTooLarge, message, "grpc-message-size");
        if let Err(e) = status.add_header(headers) {
            tracing::warn!("rewriting an oversized message's status: {e}");
        }
    }
    response
}

/// `grpc-message` is percent-encoded (gRPC's HTTP/2 mapping).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    fn code_after_mapping(status: Status) -> Code {
        let response = resource_exhausted_for_oversized(status.into_http::<()>());
        Status::from_header_map(response.headers()).unwrap().code()
    }

    #[test]
    fn only_the_size_error_changes() {
        let limit = "Error, decoded message length too large: found 102405 bytes, the limit is: 65536 bytes";
        assert_eq!(code_after_mapping(Status::out_of_range(limit)), Code::ResourceExhausted);
        assert_eq!(code_after_mapping(Status::out_of_range("step 5 is out of range")), Code::OutOfRange);
        assert_eq!(code_after_mapping(Status::invalid_argument(limit)), Code::InvalidArgument);
    }
}
