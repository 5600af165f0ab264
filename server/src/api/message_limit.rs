//! gRPC's status for a request message over the size limit is RESOURCE_EXHAUSTED; tonic answers
//! OUT_OF_RANGE. This response mapper rewrites exactly that status, so every client (grpcio,
//! grpc-go, ...) sees the code the gRPC spec gives for it.

use tonic::codegen::http::{HeaderValue, Response};

/// tonic's message for an oversized message, as it appears (percent-encoded) in `grpc-message`.
const TOO_LARGE: &str = "message%20length%20too%20large";

pub fn resource_exhausted_for_oversized<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
    let oversized = headers.get("grpc-message").and_then(|m| m.to_str().ok()).is_some_and(|m| m.contains(TOO_LARGE));
    if out_of_range && oversized {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
    }
    response
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
