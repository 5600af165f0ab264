//! Who is calling: bearer tokens from the `--tokens` file, each naming a tenant.
//!
//! [`Authenticator`] is a tonic interceptor on the pruning service only (health checks and
//! reflection stay open). It puts the caller's [`Tenant`] into the request's extensions, where
//! every handler takes it from with [`tenant`]. Without a tokens file every caller is the
//! tenant `default`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::service::Interceptor;
use tonic::{Code, Request, Status};

use crate::api::status::{self, Reason};

/// The owner of jobs and blobs: a name from the tokens file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(Arc<str>);

impl Tenant {
    /// Everyone, when the server runs without `--tokens`.
    pub const DEFAULT: &'static str = "default";

    pub fn new(name: &str) -> Self {
        Tenant(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("tokens file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("tokens file {path}, line {line}: {reason}")]
    Line { path: String, line: usize, reason: String },
    #[error("tokens file {path}: no tokens in it (lines are `TOKEN TENANT`)")]
    Empty { path: String },
}

/// Token -> tenant. Tokens are kept as sha256 digests: the lookup's timing then says nothing
/// useful about how close a guess was, and the secrets are not in memory as text.
#[derive(Clone, Default)]
pub struct Tokens(HashMap<[u8; 32], Tenant>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} tokens)", self.0.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Tenant names end up in logs and (as owners) in the database: keep them plain.
fn valid_tenant(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read { path: shown.clone(), source })?;
        Self::parse(&text).map_err(|e| match e {
            TokensError::Line { line, reason, .. } => TokensError::Line { path: shown.clone(), line, reason },
            TokensError::Empty { .. } => TokensError::Empty { path: shown.clone() },
            other => other,
        })
    }

    /// One `TOKEN TENANT` pair per line; `#` starts a comment; blank lines are skipped.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut tokens = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let bad = |reason: &str| TokensError::Line { path: String::new(), line, reason: reason.to_string() };
            let content = raw.split_once('#').map_or(raw, |(before, _)| before).trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [token, tenant] = fields[..] else {
                return Err(bad("expected `TOKEN TENANT`"));
            };
            if token.len() < 16 {
                return Err(bad("the token is shorter than 16 characters"));
            }
            if !valid_tenant(tenant) {
                return Err(bad("the tenant must be 1-128 characters of letters, digits, `-_.@`"));
            }
            if tokens.insert(digest(token), Tenant::new(tenant)).is_some() {
                return Err(bad("this token is already listed"));
            }
        }
        if tokens.is_empty() {
            return Err(TokensError::Empty { path: String::new() });
        }
        Ok(Tokens(tokens))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn tenant(&self, token: &str) -> Option<&Tenant> {
        self.0.get(&digest(token))
    }
}

/// The interceptor: `None` tokens means an open server (everyone is [`Tenant::DEFAULT`]).
#[derive(Debug, Clone)]
pub struct Authenticator {
    tokens: Option<Arc<Tokens>>,
    default: Tenant,
}

impl Authenticator {
    pub fn new(tokens: Option<Tokens>) -> Self {
        Authenticator { tokens: tokens.map(Arc::new), default: Tenant::new(Tenant::DEFAULT) }
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<Tenant, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(self.default.clone());
        };
        let header = request.metadata().get("authorization").ok_or_else(|| {
            status::error(Code::Unauthenticated, Reason::Unauthenticated, "missing `authorization: Bearer <token>`")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| {
                status::error(
                    Code::Unauthenticated,
                    Reason::Unauthenticated,
                    "the authorization header must be `Bearer <token>`",
                )
            })?;
        tokens.tenant(token).cloned().ok_or_else(|| {
            let message = "the token is not accepted by this server (it is not in the server's --tokens file)";
            status::error(Code::Unauthenticated, Reason::Unauthenticated, message)
        })
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let tenant = self.authenticate(&request)?;
        request.extensions_mut().insert(tenant);
        Ok(request)
    }
}

/// The caller's tenant, as the interceptor found it.
pub fn tenant<T>(request: &Request<T>) -> Result<Tenant, Status> {
    // Missing only if the service were mounted without the interceptor: a bug, not the caller's.
    request.extensions().get::<Tenant>().cloned().ok_or_else(|| status::internal("request was not authenticated"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    const FILE: &str = "# ops team\n\
        alice-0123456789abcdef alice   # trailing comment\n\
        \n\
        bob-0123456789abcdef-x bob\n";

    fn with_header(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(v) = value {
            request.metadata_mut().insert("authorization", v.parse().unwrap());
        }
        request
    }

    #[test]
    fn parses_pairs_and_comments() {
        let tokens = Tokens::parse(FILE).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.tenant("alice-0123456789abcdef").unwrap().as_str(), "alice");
        assert_eq!(tokens.tenant("bob-0123456789abcdef-x").unwrap().as_str(), "bob");
        assert!(tokens.tenant("alice").is_none());
    }

    #[test]
    fn bad_lines_name_their_number() {
        let cases = [
            ("just-one-field-here-0123", "line 1: expected `TOKEN TENANT`"),
            ("# c\nshort alice", "line 2: the token is shorter than 16"),
            ("0123456789abcdef0 a b", "line 1: expected"),
            ("0123456789abcdef0 al/ice", "line 1: the tenant must be"),
            ("0123456789abcdef0 a\n0123456789abcdef0 b", "line 2: this token is already listed"),
            ("# nothing\n\n", "no tokens"),
        ];
        for (text, want) in cases {
            let e = Tokens::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn interceptor_maps_tokens_to_tenants() {
        let mut auth = Authenticator::new(Some(Tokens::parse(FILE).unwrap()));
        let request = auth.call(with_header(Some("Bearer bob-0123456789abcdef-x"))).unwrap();
        assert_eq!(tenant(&request).unwrap().as_str(), "bob");
        for header in [None, Some("Bearer nope-nope-nope-nope"), Some("Basic YWxpY2U6cHc="), Some("alice")] {
            assert_eq!(auth.call(with_header(header)).unwrap_err().code(), Code::Unauthenticated, "{header:?}");
        }
    }

    #[test]
    fn without_tokens_everyone_is_the_default_tenant() {
        let mut auth = Authenticator::new(None);
        let request = auth.call(with_header(Some("Bearer whatever"))).unwrap();
        assert_eq!(tenant(&request).unwrap().as_str(), Tenant::DEFAULT);
        assert_eq!(tenant(&Request::new(())).unwrap_err().code(), Code::Internal);
    }
}
