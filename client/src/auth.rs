//! Bearer-token authentication: every call carries `authorization: Bearer <token>` when a token
//! is configured, so the server can run with `--token` and reject anonymous clients.

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::error::{ClientError, Result};

#[derive(Clone, Default)]
pub(crate) struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    /// `None` or an empty token: calls go out without credentials.
    pub(crate) fn new(token: Option<&str>) -> Result<Self> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(BearerToken(None)),
            Some(t) => {
                let mut value: MetadataValue<_> = format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ClientError::BadToken("it must be printable ASCII without line breaks".into()))?;
                value.set_sensitive(true);
                Ok(BearerToken(Some(value)))
            }
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl std::fmt::Debug for BearerToken {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "BearerToken(<set>)" } else { "BearerToken(None)" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_header_only_when_a_token_is_set() {
        let mut with = BearerToken::new(Some("s3cret")).unwrap();
        let req = with.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer s3cret");

        let mut without = BearerToken::new(Some("  ")).unwrap();
        assert!(without.call(Request::new(())).unwrap().metadata().get("authorization").is_none());
    }

    #[test]
    fn rejects_a_token_that_cannot_be_a_header() {
        assert!(BearerToken::new(Some("bad\ntoken")).is_err());
    }
}
